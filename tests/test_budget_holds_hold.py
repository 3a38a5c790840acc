"""Adversarial review of 9e092af / e16766e: a budget's hold as the request's cost cap
(`Decision.hold_usd`, `executor.Run.cap`) and what a stream generated kept per call
(`providers.base.Generated`). Each test drives the real `satisfice serve` (in a thread, on
127.0.0.1) against the project's `LocalUpstream` and/or a `RawUpstream` whose bytes the test
writes, and compares what a key with a budget gets with what the same request got before the
change (and still gets without a budget). Each FAILS on the current code because of the
defect its docstring names."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from satisfice import Policy, Registry, Router
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, RawUpstream, reply

from .chat_support import move_alpha, registry, wire
from .server_support import running
from .test_served_money_holds import MASTER, _key, _on_raw
from .test_streams_hold import an, oa, oa_tool_pieces, sse_head, then_reset

END = b"0\r\n\r\n"
WRITE = [{"type": "function", "function": {"name": "write", "parameters": {"type": "object"}}}]


@pytest.fixture
def master(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's master key (admin API), and the tokenizers built before the clock runs."""
    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    from satisfice import _core

    _core.wait_for_tokenizers()


def _post(url: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json=body,
        timeout=30,
    )


def _streamed_text(res: httpx.Response) -> str:
    """The text a served OpenAI stream said, its content pieces joined (a piece may end
    anywhere: with a key registered by an earlier test, the scrubber holds a tail back)."""
    pieces = [json.loads(ln[6:]) for ln in res.text.split("\n") if ln.startswith("data: {")]
    return "".join(c["delta"].get("content") or "" for p in pieces for c in p["choices"])


def _served_stream(reg: Any, model: str, tmp_path: Path) -> httpx.Response:
    """A budgeted key's streamed request for `model`, served on `reg` with no fallback."""
    r = Router(reg, Policy(quality_floor=0.5, max_fallbacks=0))
    with running(ServerConfig(ledger=str(tmp_path / "l.db")), r) as (url, _app):
        return _post(url, _key(url), {
            "model": model, "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "hello there"}],
        })  # fmt: skip


def _limits(seen: list[Any]) -> list[int | None]:
    return [s.body.get("max_tokens") or s.body.get("max_completion_tokens") for s in seen]


# 1 ------------------------------------------------------------------------------------------
def test_a_budgeted_request_is_sent_the_max_tokens_it_asked_for(
    master: None, tmp_path: Path
) -> None:
    """Promised: 9e092af holds a request's calls to its budget's reservation "as to a cost
    cap"; the reservation (`Service.worst_case`, app.py:775-832) is, by construction, the
    prompt(s) plus the whole answer at the caller's max_tokens, so the first call fits it
    exactly and must go out with the max_tokens the caller asked (as it did before, and as
    it does for the master key).

    What happens: the executor turns the hold back into tokens with
    `Price.output_within` (registry.py:319: `room = (usd - prompt) // per_token`). The
    hold was summed as prompt + (full - prompt) in floats; floor-dividing that back by the
    per-token price lands a hair under the integer for about half of all (price, prompt,
    max_tokens) combinations (1,684 of 3,654 in a scan), so `Run.wire` (executor.py:~565)
    sends max_tokens - 1: here the caller asks 1000 on alpha and the upstream is sent 999.
    Every budgeted request pays a truncated answer for a rounding error (and a strict
    client that checks `usage.completion_tokens == max_tokens` for `length` sees it).

    Fix: give `output_within` a relative epsilon (e.g. floor((usd - prompt) / per_token +
    1e-9)), or have `Run.output_cap` pass through the caller's max_tokens whenever
    `self._worst(t, max_tokens) <= usd * (1 + 1e-12)`."""
    with LocalUpstream() as up:
        up.script(wire("alpha"), reply("ok"), reply("ok"))
        r = Router(registry(up.url), Policy(quality_floor=0.5, max_fallbacks=0))
        with running(ServerConfig(ledger=str(tmp_path / "l.db")), r) as (url, _app):
            key = _key(url)
            for k in (MASTER, key):  # no budget, then a key with $5 of budget
                res = _post(url, k, {
                    "model": "alpha", "max_tokens": 1000,
                    "messages": [{"role": "user", "content": "hello there " * 7}],
                })  # fmt: skip
                assert res.status_code == 200, res.text
        sent = _limits(up.seen(wire("alpha")))
    assert sent == [1000, 1000], sent


# 2 ------------------------------------------------------------------------------------------
_AN_START = an("message_start", message={
    "id": "msg_1", "type": "message", "role": "assistant", "model": "beta-wire", "content": [],
    "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 1},  # as Anthropic's API always sends it
})  # fmt: skip
_AN_OVERLOADED = (
    sse_head() + _AN_START
    + an("error", error={"type": "overloaded_error", "message": "Overloaded"}) + END
)  # fmt: skip
_AN_WHOLE = (
    sse_head() + _AN_START
    + an("content_block_start", index=0, content_block={"type": "text", "text": ""})
    + an("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hello world"})
    + an("content_block_stop", index=0)
    + an("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 3})
    + an("message_stop") + END
)  # fmt: skip


def test_an_anthropic_overload_right_after_message_start_is_retried_under_a_budget(
    master: None, tmp_path: Path
) -> None:
    """Promised: `executor._rebills` (executor.py:159-165) stops a retry on the same
    deployment only for "an answer the upstream may bill (a 2xx cut or malformed)"; 9e092af
    says "a usage of 0 output is no output". An Anthropic stream that is overloaded before
    its first content block generated nothing: it is retried (as it still is for a key
    without a budget, and was under a budget before 9e092af).

    What happens: every Anthropic stream opens with `message_start` carrying
    `usage: {"input_tokens": N, "output_tokens": 1}` (a placeholder: nothing is written
    yet). 9e092af now keeps it as `made.usage` (providers/anthropic.py:854) and
    `_stream_failed` (providers/base.py:718) marks the error `answered` when the kept usage
    has `completion_tokens > 0` -- true for that placeholder. The `overloaded_error` event
    that follows is thus an "answer the upstream may bill", and under a budget
    (`Decision.held`) `_rebills` forbids the retry: the key's client gets a 502 ("every
    attempt failed") where the same request with the master key, or before the change, got
    "Hello world" from the retry. Anthropic's overloaded errors come exactly there.

    Fix: do not count message_start's output_tokens as output (mark answered only on a
    message_delta usage, or on `completion_tokens` past message_start's), or require real
    generated content (`made.out`/`made.thought`/text) for `answered`."""
    with LocalUpstream() as up, RawUpstream() as raw:
        raw.push(_AN_OVERLOADED, _AN_WHOLE)
        reg = _on_raw(registry(up.url), "beta", raw.url)
        res = _served_stream(reg, "beta", tmp_path)
    assert res.status_code == 200 and "Hello world" in _streamed_text(res), res.text[-700:]


# 3 ------------------------------------------------------------------------------------------
def test_an_empty_reasoning_field_does_not_stop_a_retry_under_a_budget(
    master: None, tmp_path: Path
) -> None:
    """Promised: as in test 2 -- only a stream that generated something is an answer the
    upstream bills, and only that is not retried under a budget's hold (`_rebills`).

    What happens: an OpenAI-compatible stream's first chunk carries an empty reasoning
    field (`"reasoning": ""`, as gateways that stream reasoning apart send beside the role)
    and then an error chunk. providers/openai.py:484-486 appends the "" to `made.thought`
    (a list now, e16766e); `_stream_failed` (providers/base.py:718) tests the *list*
    `made.thought` for truth, so [""] marks the error `answered` -- before e16766e it
    tested the joined string, "" and falsy. Under a budget the retry is refused (502 to
    the client, billed nothing); the master key's identical request is retried and
    answered. (The same happens with a first tool-call chunk whose `arguments` is "":
    `made.out == [""]`.)

    Fix: append only non-empty pieces to `Generated.out`/`thought`, or test
    `any(made.out)`/`any(made.thought)` (or the joined text) in `_stream_failed`."""
    bad = (
        sse_head()
        + oa({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "",
                                                 "reasoning": ""}}]})
        + oa({"error": {"message": "server had an error", "type": "server_error"}}) + END
    )  # fmt: skip
    good = (
        sse_head()
        + oa({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello world"}}]})
        + oa({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + END
    )  # fmt: skip
    with LocalUpstream() as up, RawUpstream() as raw:
        raw.push(bad, good)
        reg = move_alpha(registry(up.url), raw.url, "openai")
        res = _served_stream(reg, "alpha", tmp_path)
    assert res.status_code == 200 and "Hello world" in _streamed_text(res), res.text[-700:]


# 4 ------------------------------------------------------------------------------------------
async def _silent(w: asyncio.StreamWriter) -> None:
    """Take the request and say nothing (until the upstream stops)."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.sleep(30)


def test_a_thinking_rows_second_deployment_is_not_capped_out_after_a_timeout(
    master: None, tmp_path: Path
) -> None:
    """Promised: `Service.worst_case` (app.py:783-796) reserves "the prompt of every
    deployment that may be tried: a call that times out after reaching its upstream may be
    billed for the prompt, and is settled at that estimate before the next is tried",
    plus one whole answer; 9e092af then holds the calls to that reservation. So a request
    whose first deployment times out still has its whole answer reserved for the next one,
    and gets it (the master key's request does; so did this one before 9e092af).

    What happens: the row is an Anthropic thinking row (claude-haiku-4-5@low, a 2,048-token
    budget on top of max_tokens). Its first deployment times out without a byte. `_failed`
    settles it at `_prompt_usage` (executor.py:1172-1192), which via `_with_reasoning`
    adds the row's *expected* thinking (2,048 output tokens) to a call that wrote nothing
    -- while the reservation held only its prompt (app.py:823, `worst_bill(..., 0, ...)`).
    What the hold leaves the second deployment is then 2,048 tokens short of its thinking
    budget, `Run.output_cap` returns 0 and `_capped_out` skips it: the client, whose key
    has $5 left, gets a 502 "every attempt failed ... the cost cap ($0.015258) leaves
    nothing for its answer" -- a cost cap it never set. Worse at @high (16,384).

    Fix: make the two agree: reserve, for each deployment that may fail, what the executor
    settles a failed call at (prompt plus the row's expected reasoning/thinking), or settle
    a timed-out call that streamed nothing at its prompt alone, as worst_case assumes; and
    say "the budget's hold" in the skip when the cap is the hold."""
    row, base = "claude-haiku-4-5@low", "claude-haiku-4-5"
    with LocalUpstream() as up, RawUpstream() as raw:
        raw.push(_silent)
        up.default = reply("done")
        reg = up.patch(Registry.default())
        dep = reg[base].deployments[0]
        deps = (dep.replace(name="slow", p95_latency_ms=100.0, base_url=raw.url), dep)
        for mid in [m.id for m in reg if (m.base or m.id) == base]:
            reg = reg.replace(reg[mid].replace(deployments=deps))
        r = Router(reg, Policy(max_fallbacks=0))
        with running(ServerConfig(), r) as (url, _app):
            res = _post(url, _key(url, budget=5.0), {
                "model": row, "max_tokens": 1000, "timeout": 6,
                "messages": [{"role": "user", "content": "hello there"}],
            })  # fmt: skip
            sent = _limits(up.requests)
    assert res.status_code == 200, res.text[-900:]
    assert sent and sent[-1] is not None and sent[-1] >= 1000, sent


# 5 ------------------------------------------------------------------------------------------
def _cut_tool_call(args: str) -> bytes:
    return sse_head() + oa_tool_pieces(args=args)


def test_a_fallback_the_budget_hold_leaves_no_room_for_is_said_as_the_hold(
    master: None, tmp_path: Path
) -> None:
    """A call cut mid-answer is billed (its tool call's arguments), and the request's
    budget hold, which bounds its calls as a cost cap, may then leave a fallback no room:
    the fallback is skipped rather than run the key past the hold (a billed cut and a
    fallback's answer had ended 44% over a key's budget). The client was told of "the cost
    cap ($0.000406)", which it never set, and nothing of its budget: the skip names the
    budget hold. (Growing the hold from the key's budget for the fallback, instead of
    skipping it, is not done.)"""
    args = json.dumps({"content": "lorem ipsum dolor sit amet " * 800})
    with LocalUpstream() as up, RawUpstream() as raw:
        raw.push(then_reset(_cut_tool_call(args)))
        up.script(wire("alpha"), reply("done"))
        reg = registry(up.url)
        alpha = reg["alpha"]
        dep = alpha.deployments[0]
        cut = dep.replace(name="alpha-cut", base_url=raw.url + "/v1")
        reg = reg.replace(alpha.replace(deployments=(cut, dep)))
        r = Router(reg, Policy(quality_floor=0.5, max_fallbacks=0))
        with running(ServerConfig(ledger=str(tmp_path / "l.db")), r) as (url, _app):
            res = _post(url, _key(url, budget=5.0), {
                "model": "alpha", "max_tokens": 1000, "stream": True, "tools": WRITE,
                "messages": [{"role": "user", "content": "write the file"}],
            })  # fmt: skip
        sent = _limits(up.seen(wire("alpha")))
    assert res.status_code == 502, res.text[-900:]
    assert "the budget hold" in res.text and "the cost cap" not in res.text, res.text[-900:]
    assert sent == [], sent  # the fallback was not sent past the hold
