"""A limit that holds the thinking (Anthropic's max_tokens, OpenAI's max_completion_tokens,
`Constraints.output_includes_thinking`): a Claude row's thinking budget is sent within the
caller's limit, not on top of it. Before, /v1/messages sent 32,000 as 34,048 (the caller's
bound on billed output broken by the budget), and refused max_tokens 64,000 with thinking on
Claude Haiku 4.5 ("exceeds the model's max output 61952"), which Anthropic's API takes."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import httpx
import openai
import pytest

from satisfice import (
    AllAttemptsFailedError,
    NoRouteError,
    Policy,
    Registry,
    Router,
    UnsupportedRequestError,
)
from satisfice import validators as v
from satisfice.cascade import Cascade, Step
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, context_length, hang, malformed, reply

from .server_support import running

H = {"anthropic-version": "2023-06-01", "x-api-key": "anything"}
HI = [{"role": "user", "content": "hi"}]


def _router(up: LocalUpstream) -> Router:
    return Router(up.patch(Registry.default()))


def _messages(url: str, **body: Any) -> httpx.Response:
    return httpx.post(url + "/v1/messages", headers=H, json={"messages": HI, **body}, timeout=30)


@pytest.mark.parametrize("max_tokens", [32000, 64000])
def test_v1_messages_sends_the_thinking_budget_within_max_tokens(max_tokens: int) -> None:
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        c = anthropic.Anthropic(base_url=url, api_key="anything", max_retries=0)
        try:
            with c.messages.stream(
                model="claude-haiku-4-5", max_tokens=max_tokens, messages=HI,  # type: ignore[arg-type]
                thinking={"type": "enabled", "budget_tokens": 31999},
            ) as s:  # fmt: skip
                res = s.get_final_message()
        finally:
            c.close()
        sent = up.requests[-1].body
    assert res.model.startswith("claude-haiku-4-5@")
    assert sent["max_tokens"] == max_tokens  # the caller's bound, the thinking inside it
    assert 0 < sent["thinking"]["budget_tokens"] < max_tokens


def test_v1_messages_with_a_limit_the_thinking_fills_says_so() -> None:
    """Haiku's low effort thinks for 2,048 tokens: within max_tokens 2,000 it has no room
    to answer. A 400 that says why (it had been sent as 2,000 + the budget)."""
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        r = _messages(url, model="claude-haiku-4-5", max_tokens=2000,
                      output_config={"effort": "low"})  # fmt: skip
        assert not up.requests
    assert r.status_code == 400, r.text
    assert "leaves no room for an answer" in r.json()["error"]["message"]


def test_v1_messages_routes_a_thinking_row_within_max_tokens_unasked() -> None:
    """No `thinking` sent, routed by "auto" to a row that thinks: Anthropic's max_tokens
    holds what that row thinks too (the caller's bound on the answer's tokens)."""
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        r = _messages(url, model="claude-sonnet-4-6", max_tokens=20000,
                      output_config={"effort": "high"})  # fmt: skip
        assert r.status_code == 200, r.text
        sent = up.requests[-1].body
    assert r.json()["model"] == "claude-sonnet-4-6@high"
    assert sent["max_tokens"] == 20000


def test_openai_max_completion_tokens_holds_a_claude_rows_thinking() -> None:
    """OpenAI's max_completion_tokens is the reasoning and the answer together; its legacy
    max_tokens is the answer's (a Claude row's budget comes on top of it, billed)."""
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="anything", max_retries=0)
        try:
            for key in ("max_completion_tokens", "max_tokens"):
                c.chat.completions.create(
                    model="claude-haiku-4-5@high",
                    messages=HI,
                    **{key: 20000},  # type: ignore[arg-type]
                )
        finally:
            c.close()
        total, answer = (q.body for q in up.requests[-2:])
    assert total["max_tokens"] == 20000
    assert answer["max_tokens"] == 20000 + answer["thinking"]["budget_tokens"]


def test_the_python_api_takes_the_limit_either_way() -> None:
    router = Router(Registry.default())
    asked = {"allow": ["claude-haiku-4-5@high"], "max_output_tokens": 60000}
    with pytest.raises(NoRouteError, match="max output 47616"):
        router.route(HI, **asked)  # the answer's 60,000 and the 16,384 budget on top
    d = router.route(HI, **asked, output_includes_thinking=True)
    assert d.model == "claude-haiku-4-5@high"
    with pytest.raises(NoRouteError, match="thinks for 16384 tokens within max_tokens 16000"):
        router.route(HI, allow=["claude-haiku-4-5@high"], max_output_tokens=16000,
                     output_includes_thinking=True)  # fmt: skip

    async def sent(**kw: Any) -> dict[str, Any]:
        with LocalUpstream() as up:
            r = Router(up.patch(Registry.default()))
            async with r:
                await r.chat(HI, allow=["claude-haiku-4-5@high"], max_tokens=30000, **kw)
            return up.requests[-1].body

    assert asyncio.run(sent())["max_tokens"] == 30000 + 16384
    assert asyncio.run(sent(output_includes_thinking=True))["max_tokens"] == 30000


# -- found by review: adaptive room, cost caps, decision=, a limit in extra ----------------------


def _free_output(url: str) -> Registry:
    """A Claude model whose output is free (input priced): a cost cap then bounds the
    prompt only, and leaves the answer whatever the caller's limit allows."""
    return Registry.from_dict({"model": [{
        "id": "beta", "provider": "anthropic", "tokenizer": "claude",
        "context_window": 100_000, "max_output": 40_000,
        "capabilities": ["json", "tools", "streaming", "system_prompt", "reasoning"],
        "price": {"input": 0.1, "output": 0.0}, "quality": {"general": 0.5},
        "efforts": {"high": {"reasoning_tokens": 16384, "quality": 0.45}},
        "deployments": [{"name": "beta-dep", "api": "anthropic", "model": "beta-wire",
                         "base_url": url}],
    }]})  # fmt: skip


def _sent(reg_of: Any, **kw: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        with LocalUpstream() as up:
            async with Router(reg_of(up)) as r:
                await r.chat(HI, **kw)
            return up.requests[-1].body

    return asyncio.run(go())


def test_free_output_under_a_cap_sends_the_callers_limit_when_it_holds_thinking() -> None:
    """Output free: the cap leaves the call all the caller allowed (20,000 with the
    thinking in it). Without the cap it goes out as 20,000; with a $1 cap it must too."""
    kw: Any = dict(allow=["beta@high"], max_tokens=20000, output_includes_thinking=True)
    assert _sent(lambda up: _free_output(up.url), **kw)["max_tokens"] == 20000
    sent = _sent(lambda up: _free_output(up.url), **kw, max_cost_usd=1.0)
    assert sent["max_tokens"] == 20000


def test_a_cap_too_large_to_bound_the_output_changes_nothing() -> None:
    """A cap so large that output_within overflows (None, "no bound") takes the same path
    as free output: the answer limit must be the caller's, not less the budget twice."""
    kw: Any = dict(allow=["claude-haiku-4-5@high"], max_tokens=40000,
                   output_includes_thinking=True)  # fmt: skip
    reg = lambda up: up.patch(Registry.default())  # noqa: E731
    assert _sent(reg, **kw)["max_tokens"] == 40000
    assert _sent(reg, **kw, max_cost_usd=1e308)["max_tokens"] == 40000


def test_a_decision_that_holds_thinking_called_with_a_smaller_limit_keeps_it() -> None:
    """decide() with output_includes_thinking and max_output_tokens 20,000, then called
    with max_tokens=1,000 (a call field decision= takes): the call's limit holds the
    thinking too, but the wire had sent 1 + the 16,384 budget = 16,385 (billed up to that)."""

    async def go() -> dict[str, Any]:
        with LocalUpstream() as up:
            async with Router(up.patch(Registry.default())) as r:
                d = await r.decide(
                    HI, allow=["claude-haiku-4-5@high"], max_output_tokens=20000,
                    output_includes_thinking=True,
                )  # fmt: skip
                await r.chat(HI, decision=d, max_tokens=1000)
            return up.requests[-1].body

    with pytest.raises(UnsupportedRequestError, match="max_tokens 1000 must exceed"):
        asyncio.run(go())  # refused, as routing refuses it (it had sent 1 + 16,384)


def test_a_limit_in_extra_holds_the_thinking_too() -> None:
    """A limit in `extra` replaces max_tokens on the wire (README); with the caller's limit
    holding the thinking, extra={"max_tokens": 20000} still goes out as 20,000 + the
    16,384 budget = 36,384 (max_tokens=20000 alone goes out as 20,000)."""
    reg = lambda up: up.patch(Registry.default())  # noqa: E731
    kw: Any = dict(allow=["claude-haiku-4-5@high"], max_tokens=20000,
                   output_includes_thinking=True)  # fmt: skip
    assert _sent(reg, **kw)["max_tokens"] == 20000
    assert _sent(reg, **kw, extra={"max_tokens": 20000})["max_tokens"] == 20000


MASTER = "master-test-key-0123456789abcdef"


@pytest.mark.parametrize(("tpm", "admitted"), [(5000, False), (30000, True)])
def test_a_tpm_count_covers_the_thinking_a_legacy_max_tokens_adds(
    monkeypatch: pytest.MonkeyPatch, tpm: int, admitted: bool
) -> None:
    """OpenAI's legacy max_tokens is the answer's: a Claude row's budget goes on top of it.
    A key's tpm count had been the prompt and max_tokens alone, and a key of 5,000 tokens a
    minute let a call out that may write 2,000 + 16,384 (found by review)."""
    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    admin = {"authorization": f"Bearer {MASTER}"}
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        k = httpx.post(url + "/admin/keys", headers=admin,
                       json={"name": "t", "tpm": tpm}).json()  # fmt: skip
        r = httpx.post(url + "/v1/chat/completions", timeout=30,
                       headers={"authorization": f"Bearer {k['key']}"},
                       json={"model": "claude-haiku-4-5@high", "max_tokens": 2000,
                             "messages": HI})  # fmt: skip
        sent = [q.body for q in up.requests]
    if admitted:
        assert r.status_code == 200, r.text
        assert sent[-1]["max_tokens"] == 2000 + 16384
    else:
        assert r.status_code == 429 and not sent, r.text
        assert "tpm" in r.json()["error"]["message"]


# -- found by a second review: estimates of failed calls, retries under a cap, cascades -------
async def _sonnet_max_first(malformed_answers: int, **kw: Any) -> tuple[Any, list[Any]]:
    """1,000 tokens holding the thinking, decided for claude-sonnet-4-6@max first (which
    answers `malformed_answers` unreadable 2xx) and gpt-5.4-mini after: the result (or the
    error) and what the upstream was sent."""
    with LocalUpstream() as up:
        up.script("claude-sonnet-4-6", *(malformed() for _ in range(malformed_answers)))
        up.script("gpt-5.4-mini", reply("ok"))
        async with Router(up.patch(Registry.default())) as r:
            d = await r.decide(
                HI, allow=["claude-sonnet-4-6@max", "gpt-5.4-mini"], max_output_tokens=1000,
                output_includes_thinking=True, prefer="claude-sonnet-4-6@max", **kw,
            )  # fmt: skip
            assert d.model == "claude-sonnet-4-6@max", d.model
            try:
                res: Any = await r.chat(HI, decision=d)
            except AllAttemptsFailedError as e:
                res = e
        return res, [q.body for q in up.requests]


def test_a_failed_call_is_not_estimated_past_what_it_was_allowed_to_write() -> None:
    """claude-sonnet-4-6@max sent max_tokens 1,000 (the limit holds its thinking): a 2xx the
    provider cannot read may be billed, estimated at its prompt and expected reasoning, but
    never more output than the wire allowed (1,000), as `_usage` caps a counted answer."""
    res, sent = asyncio.run(_sonnet_max_first(1))
    assert sent[0]["max_tokens"] == 1000
    failed = res.attempts[0]
    assert failed.model == "claude-sonnet-4-6@max" and failed.usage is not None
    assert failed.usage.completion_tokens <= 1000, failed.usage


def test_a_failed_call_settles_within_its_budget_hold(monkeypatch: Any) -> None:
    """/v1/messages, max_tokens 1,000 at effort max on Sonnet 4.6 (adaptive: the limit
    holds the thinking), a key with a budget: the reservation is the prompt and 1,000
    output tokens; a call that timed out (which the upstream may bill) is settled at the
    prompt plus 32,768 expected reasoning tokens, $0.49 over a $0.015 hold."""
    import time

    master = "master-test-key-0123456789abcdef"
    monkeypatch.setenv("SATISFICE_MASTER_KEY", master)
    admin = {"authorization": f"Bearer {master}"}
    with LocalUpstream() as up:
        up.script("claude-sonnet-4-6", hang())
        with running(ServerConfig(), Router(up.patch(Registry.default()))) as (url, app):
            k = httpx.post(url + "/admin/keys", headers=admin,
                           json={"name": "b", "budget_usd": 10.0}).json()  # fmt: skip
            r = httpx.post(url + "/v1/messages", timeout=30,
                           headers={"x-api-key": k["key"], "anthropic-version": "2023-06-01"},
                           json={"model": "claude-sonnet-4-6", "max_tokens": 1000,
                                 "output_config": {"effort": "max"}, "messages": HI,
                                 "timeout": 1.0})  # fmt: skip
            assert up.requests and up.requests[0].body["max_tokens"] == 1000, r.text
            reg = app.state.service.metrics.registry
            deadline = time.monotonic() + 5
            over = 0.0
            while time.monotonic() < deadline and not over:
                over = reg.get_sample_value("satisfice_settled_over_hold_usd_total") or 0.0
                time.sleep(0.02)
    assert over == 0.0, f"settled ${over:.6f} over its hold ({r.status_code})"


def test_a_malformed_answer_under_a_cap_leaves_the_fallback_its_room() -> None:
    """max_cost_usd $0.05, max_tokens 1,000 holding the thinking: Sonnet 4.6 at effort max
    may cost at most ~$0.015 (1,000 output tokens); its malformed 2xx had been estimated
    at $0.49 (32,768 reasoning tokens), over the request's own cap, and the fallback
    (gpt-5.4-mini, well within what is left) was skipped for the cap."""
    res, _ = asyncio.run(_sonnet_max_first(2, max_cost_usd=0.05))
    assert not isinstance(res, Exception), str(res)
    assert res.model == "gpt-5.4-mini"
    assert res.total_cost_usd is not None and res.total_cost_usd <= 0.05, res.total_cost_usd


def test_a_retry_after_the_cap_is_spent_is_not_sent_past_it() -> None:
    """A retry on the same deployment was not checked against the cost cap again: after a
    malformed 2xx (billed, estimated), the cap left nothing, the retry went out with
    max_tokens 0, which the Anthropic wire reads as its 4,096 default (+ the budget)."""

    async def go() -> tuple[list[Any], list[int]]:
        with LocalUpstream() as up:
            up.script("claude-haiku-4-5", malformed(), malformed())
            async with Router(up.patch(Registry.default())) as r:
                try:
                    res = await r.chat(HI, allow=["claude-haiku-4-5@high"], max_tokens=1000,
                                       max_cost_usd=0.09)  # fmt: skip
                    attempts = res.attempts
                except AllAttemptsFailedError as e:
                    attempts = e.attempts
            return attempts, [q.body["max_tokens"] for q in up.requests]

    attempts, sent = asyncio.run(go())
    billed = sum(a.cost_usd or 0.0 for a in attempts)
    # the first call: 1,000 + 16,384; a second one only within what the cap leaves
    assert sent[0] == 1000 + 16384
    assert all(n <= 1000 + 16384 for n in sent), sent  # had been [17384, 20480]
    assert billed <= 0.09 + 1e-12, (billed, [(a.outcome, a.cost_usd) for a in attempts])


def test_a_tpm_count_under_cascade_auto_holds_a_ladder_models_thinking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenAI's legacy max_tokens 2,000, a 5,000-token key: the tuned ladder's second step
    (claude-haiku-4-5@high) is sent 2,000 + 16,384. Routed plainly, the same key is
    refused that call (test_a_tpm_count_covers_the_thinking_a_legacy_max_tokens_adds);
    under cascade "auto" it is let out, as the routed model (gpt-5.4-nano, no fallbacks)
    adds no thinking."""
    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    admin = {"authorization": f"Bearer {MASTER}"}
    ladder = Cascade([Step(("gpt-5.4-nano",), v.regex("NEVER", fullmatch=True)),
                      Step(("claude-haiku-4-5@high",))])  # fmt: skip
    policy = Policy(max_fallbacks=0, cascades={"*": ladder})
    with LocalUpstream() as up:
        up.script("gpt-5.4-nano", reply("I am not sure."))
        router = Router(up.patch(Registry.default()), policy)
        with running(ServerConfig(), router) as (url, _):
            k = httpx.post(url + "/admin/keys", headers=admin,
                           json={"name": "t", "tpm": 5000}).json()  # fmt: skip
            r = httpx.post(url + "/v1/chat/completions", timeout=30,
                           headers={"authorization": f"Bearer {k['key']}"},
                           json={"model": "auto", "cascade": "auto", "max_tokens": 2000,
                                 "allow": ["gpt-5.4-nano", "claude-haiku-4-5@high"],
                                 "messages": HI})  # fmt: skip
            sent = [(q.body["model"], q.body.get("max_tokens")) for q in up.requests]
    # a call that may write 2,000 + 16,384 tokens must not pass a 5,000-token-a-minute key
    assert ("claude-haiku-4-5", 18384) not in sent, (r.status_code, sent)
    assert r.status_code == 429, r.text


def test_a_context_length_retry_beyond_the_fallbacks_stays_within_the_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a context-length error the executor had looked past the decision's fallbacks,
    down the ranked candidates; a key's budget reserves for the primary and its fallbacks
    only, and a pricier model tried that way was settled over the hold (found by review)."""
    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    admin = {"authorization": f"Bearer {MASTER}"}
    with LocalUpstream() as up:
        up.script("gpt-5.4-nano", context_length())
        up.script("claude-opus-4-7", reply("ok", usage=(3, 2000, 0)))
        router = Router(up.patch(Registry.default()), Policy(max_fallbacks=0))
        with running(ServerConfig(), router) as (url, _):
            k = httpx.post(
                url + "/admin/keys", headers=admin, json={"name": "b", "budget_usd": 100.0}
            ).json()
            r = httpx.post(
                url + "/v1/messages",
                timeout=30,
                headers={"x-api-key": k["key"], "anthropic-version": "2023-06-01"},
                json={
                    "model": "auto",
                    "max_tokens": 2000,
                    "messages": HI,
                    "allow": ["gpt-5.4-nano", "claude-opus-4-7@max"],
                },
            )
            sent = [q.body["model"] for q in up.requests]
    # the reserved models alone: an answer that says why, not a call to Opus (settled
    # $0.042 over a $0.0076 hold)
    assert r.status_code >= 400 and "context" in r.text.lower(), r.text
    assert sent == ["gpt-5.4-nano"], sent  # the reserved models alone (it had gone to Opus)


async def test_a_given_decision_with_cascade_true_is_refused_not_climbed_past() -> None:
    """chat(decision=d) calls where d says (a caller bounded a budget on it); with
    cascade=True the ladder built from d's candidates had escalated to a model d never
    named (alpha, beta named; delta called). Refused now, with how to name the ladder; a
    ladder passed whole is the caller's own naming and runs."""
    from satisfice import ConfigError, Policy

    from .chat_support import registry, wire

    hi = [{"role": "user", "content": "hi"}]
    with LocalUpstream() as up:
        reg = registry(up.url)
        r = Router(reg, Policy(quality_floor=0.0, max_fallbacks=1))
        async with r:
            d = await r.decide(hi)
            assert [d.model, *d.fallbacks] == ["alpha", "beta"]
            says_4 = v.check(lambda text: "4" in text, name="says 4")
            with pytest.raises(ConfigError, match="Cascade.from_decision"):
                await r.chat(hi, decision=d, cascade=True, accept=says_4)
            assert not up.requests
            up.default = reply("4")
            ladder = Cascade([Step(("alpha",), says_4)])
            res = await r.chat(hi, decision=d, cascade=ladder)
            assert res.model == "alpha" and [s.model for s in up.requests] == [wire("alpha")]
