"""Budgets and rate limits of `satisfice serve`, as reviewed. Each test starts the
real server (a thread of this process, on 127.0.0.1) and drives it with the official
`openai` SDK (or a raw socket where a client must leave mid-request) against the project's
scripted `LocalUpstream`. Each fails on the code it was written against because of the
defect its docstring names."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from satisfice import Policy, Router
from satisfice import validators as v
from satisfice.cascade import Cascade, Step
from satisfice.testing import LocalUpstream, reply

from .chat_support import registry, wire
from .polling import until
from .server_support import ADMIN, post_chat, serving


def _key(url: str, **body: Any) -> tuple[str, str]:
    """(secret, id) of a new key."""
    k = httpx.post(url + "/admin/keys", headers=ADMIN, json={"name": "k", **body})
    assert k.status_code in (200, 201), k.text
    return str(k.json()["key"]), str(k.json()["id"])


def _rows(url: str, svc: Any) -> list[dict[str, Any]]:
    """The budget rows once nothing is in flight or held (polled, at most 10 s)."""
    limit = time.monotonic() + 10
    while True:
        rows = httpx.get(url + "/admin/spend", headers=ADMIN).json()["budgets"]
        idle = svc.in_flight == 0 and all(r["held_usd"] == 0 for r in rows)
        if idle or time.monotonic() > limit:
            return rows  # type: ignore[no-any-return]
        time.sleep(0.05)


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def _usage_sum(up: LocalUpstream, models: list[str]) -> int:
    """Tokens the upstream was sent and wrote, as its usage reports them (words + 1 in,
    words out: `satisfice.testing.wire`)."""
    total = 0
    for m in models:
        for s in up.seen(wire(m)):
            words = sum(len(str(x.get("content", "")).split(" ")) for x in s.body["messages"])
            text = s.behavior.text or ""
            total += words + 1 + len(text.split(" "))
    return total


# 1 ------------------------------------------------------------------------------------------
def test_a_cascade_counts_every_call_against_the_keys_tpm(
    master: None, up: LocalUpstream, tmp_path: Path
) -> None:
    """Defect: a key with tpm=1000 sends one `cascade: "auto"` request (ladder alpha ->
    gamma -> delta, both checks reject, prompt ~200 tokens, max_tokens=300). Admission
    counts ONE call (prompt + max_tokens of d.model, ~500 tokens, app.py `tokens = ...`)
    and the request is served: the ladder makes 3 upstream calls of ~500 tokens each,
    1,476 tokens by the upstream's usage in one request, 1.5x the key's tpm. (The
    budget's worst case sums the ladder; the tpm count does not.)
    Expected: the tpm count covers every call the ladder may make (prompt + max_tokens per
    step): such a request is refused with a 429 as larger than the key's tpm, and no
    minute's upstream traffic exceeds the key's tpm."""
    ladder = Cascade([Step(("alpha",), v.regex("NEVER")), Step(("gamma",), v.regex("NEVER")),
                      Step(("delta",))])  # fmt: skip
    router = Router(registry(up.url), Policy(quality_floor=0.0, cascades={"*": ladder}))
    text = " ".join(["w"] * 290)
    for m in ("alpha", "gamma", "delta"):
        up.script(wire(m), reply(text))
    with serving(router, tmp_path) as (url, _svc):
        key, _ = _key(url, tpm=1000)
        c = _client(url, key)
        with c:
            try:
                r = c.chat.completions.create(
                    model="auto", max_tokens=300,
                    messages=[{"role": "user", "content": "hi " * 200}],
                    extra_body={"cascade": "auto"},
                )  # fmt: skip
            except openai.RateLimitError:
                return  # refused up front: the count covered the ladder
    calls = [m for m in ("alpha", "gamma", "delta") if up.seen(wire(m))]
    used = _usage_sum(up, ["alpha", "gamma", "delta"])
    steps = [s["models"] for s in (r.model_extra or {})["satisfice"]["cascade"]["steps"]]
    assert used <= 1000, (
        f"key tpm=1000 admitted one cascade request that made {len(calls)} upstream calls "
        f"({calls}, steps {steps}) totalling {used} tokens (upstream usage)"
    )


def _plain(up: LocalUpstream, fallbacks: int = 0) -> Router:
    return Router(registry(up.url), Policy(quality_floor=0.5, max_fallbacks=fallbacks))


# 3 ------------------------------------------------------------------------------------------
def test_a_stream_left_before_its_first_piece_is_settled_at_its_prompt_not_the_whole_hold(
    master: None, up: LocalUpstream, tmp_path: Path
) -> None:
    """Defect: a streamed request (alpha, max_tokens=4000, ~60-token prompt, key budget $1)
    whose client hangs up after the upstream got the call but before its first piece is
    settled at the WHOLE hold (~$0.0016: 4,000 output tokens never generated, 100x the
    prompt's ~$0.000006): `_stream` settles `_billed(CancelledError, hold)`, which is the
    hold for any non-satisfice exception. A stream left after its first piece is settled
    at its prompt and the text sent (README: "a stream the client leaves is settled at
    what its call may cost so far (prompt and text sent)").
    Expected: the key's spend is what the cut call may have cost so far: its prompt (and
    no text), well under the hold."""
    up.script(wire("alpha"), reply("late answer", latency=30.0))
    with serving(_plain(up), tmp_path) as (url, svc):
        key, _ = _key(url, budget_usd=1.0, period="day")
        body = json.dumps({
            "model": "alpha", "max_tokens": 4000, "stream": True,
            "messages": [{"role": "user", "content": "say hi " * 20}],
        }).encode()  # fmt: skip
        with post_chat(url, key, body):
            assert until(lambda: len(up.seen(wire("alpha"))) == 1, 10), "alpha never called"
            time.sleep(0.3)
        # the socket is closed: the client is gone, before any piece
        assert until(lambda: svc.in_flight == 0, 15)
        (row,) = _rows(url, svc)
    prompt_usd = 80 * 0.10e-6  # a generous bound on the prompt's bill (~60 tokens)
    hold_usd = 4000 * 0.40e-6
    assert row["held_usd"] == 0, row
    assert row["spent_usd"] <= prompt_usd, (
        f"a stream cut before its first piece was settled at ${row['spent_usd']:.6f} "
        f"(its hold ~${hold_usd:.6f}); its prompt costs under ${prompt_usd:.6f}"
    )


# 4 ------------------------------------------------------------------------------------------
def test_the_admin_api_refuses_a_model_list_naming_an_unknown_model(
    master: None, up: LocalUpstream, tmp_path: Path
) -> None:
    """Defect: POST /admin/keys {"models": ["alpha", "no-such-model"]} is a 201 and PATCH
    /admin/keys/ID {"models": ["gpt-typo"]} a 200: `admin.checked` tests each entry's
    type and length only. A typo is stored silently and every request for it is then
    refused (a 404 unknown model), while an alias that names a model the registry lacks
    is refused at start and at /admin/reload (README).
    Expected: a 400 naming the unknown id(s), as for an alias; the key not created or
    left unchanged."""
    with serving(_plain(up), tmp_path) as (url, _svc):
        k = httpx.post(url + "/admin/keys", headers=ADMIN,
                       json={"name": "x", "models": ["alpha", "no-such-model"]})  # fmt: skip
        good = httpx.post(url + "/admin/keys", headers=ADMIN,
                          json={"name": "y", "models": ["alpha"]})  # fmt: skip
        assert good.status_code == 201, good.text
        p = httpx.patch(url + f"/admin/keys/{good.json()['id']}", headers=ADMIN,
                        json={"models": ["gpt-typo"]})  # fmt: skip
        listed = {x["name"]: x["models"] for x in
                  httpx.get(url + "/admin/keys", headers=ADMIN).json()["keys"]}  # fmt: skip
    assert (k.status_code, p.status_code) == (400, 400), (
        f"POST models=['alpha','no-such-model'] -> {k.status_code}; PATCH models=['gpt-typo']"
        f" -> {p.status_code}; stored model lists: {listed}"
    )
    assert "no-such-model" in k.text and "gpt-typo" in p.text


# 5 ------------------------------------------------------------------------------------------
def test_a_served_ladders_judge_calls_stay_within_the_keys_budget(
    master: None, up: LocalUpstream, tmp_path: Path
) -> None:
    """Defect: a served policy ladder [alpha, checked by an LLM judge routed through the
    same router to delta] -> [gamma]; a key with a $0.005 budget. Admission holds the
    ladder's calls alone (under $0.001: alpha and gamma, max_tokens=100); the judge's call is
    neither in the hold nor capped by it (executor `Run.room` caps the ladder's calls, the
    judge's chat() is a run of its own), writes 3,000 tokens on delta ($0.012), and the
    settlement (which includes it, as README says) puts the key's spend at $0.012025,
    2.4x its $0.005 limit, from ONE request admitted within it. README: a budget ends past
    its limit only by what upstreams report beyond the counts holds were made on.
    Expected: the key's spend never exceeds its budget by more than that (here: spend <=
    $0.005): a judge's calls are held (or capped by what the hold leaves), or the request
    is refused."""
    router: Router

    async def ask(msgs: list[dict[str, Any]]) -> v.Answer:
        r = await router.chat(msgs, allow=("delta",), max_tokens=3500)
        return v.Answer(r.model, r.text)

    ladder = Cascade([Step(("alpha",), v.judge(ask, "is it right")), Step(("gamma",))])
    router = Router(registry(up.url), Policy(quality_floor=0.0, cascades={"*": ladder}))
    up.script(wire("alpha"), reply("4"))
    up.script(wire("delta"), reply("VERDICT: FAIL\nCONFIDENCE: 90\n" + " ".join(["x"] * 3000)))
    up.script(wire("gamma"), reply("4"))
    with serving(router, tmp_path) as (url, svc):
        key, _ = _key(url, budget_usd=0.005, period="day")
        with _client(url, key) as c:
            r = c.chat.completions.create(
                model="auto", max_tokens=100, extra_body={"cascade": "auto"},
                messages=[{"role": "user", "content": "What is 2+2?"}],
            )  # fmt: skip
        (row,) = _rows(url, svc)
    cost = (r.model_extra or {})["satisfice"].get("cost_usd")
    assert row["spent_usd"] <= 0.005 + 1e-9, (
        f"one request admitted under a $0.005 budget left it at ${row['spent_usd']:.6f} "
        f"spent (the answer's cost_usd ${cost}); judge called on delta: "
        f"{len(up.seen(wire('delta')))} time(s)"
    )


def test_a_keys_tpm_counts_the_prompt_by_the_tokenizer_of_any_model_it_may_go_to(
    master: None, up: LocalUpstream, tmp_path: Path
) -> None:
    """Defect: a key's tpm count took the prompt by the primary model's count only (alpha,
    OpenAI's exact tokenizer), though a fallback (beta, a Claude model, whose tokens are
    estimated at an upper bound) may answer it and bill more prompt tokens. Expected: the
    count is the most any model the request may go to counts (the same request routed
    with fallbacks takes a larger count than without), as a budget's hold takes its
    priciest fallback."""
    said = {}
    for fallbacks in (0, 1):
        router = Router(registry(up.url), Policy(quality_floor=0.5, max_fallbacks=fallbacks))
        (tmp_path / str(fallbacks)).mkdir()
        with serving(router, tmp_path / str(fallbacks)) as (url, _svc):
            key, _ = _key(url, tpm=1)
            with _client(url, key) as c, pytest.raises(openai.RateLimitError) as e:
                c.chat.completions.create(
                    model="auto", max_tokens=10,
                    messages=[{"role": "user", "content": "数据 " * 300}],
                )  # fmt: skip
            said[fallbacks] = str(e.value)
    import re

    taken = {k: int(re.search(r"may take (\d+) tokens", v).group(1)) for k, v in said.items()}  # type: ignore[union-attr]
    assert taken[1] > taken[0], (taken, said)
