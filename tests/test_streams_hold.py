"""Adversarial review of streaming, end to end, on both wire formats (OpenAI chat
completions SSE, Anthropic Messages SSE): `router.stream()` and `satisfice serve` against
raw-socket upstreams whose every byte the test writes. Each test fails on the code it was
written against because of the defect its docstring names."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from satisfice import Policy, Registry, Router
from satisfice.errors import SatisficeError, StreamInterruptedError
from satisfice.result import Attempt
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, RawUpstream

from .chat_support import move_alpha, registry, router
from .polling import until_async
from .server_support import running
from .test_hostile_streams import an, chunk, oa, sse_head, then_reset

MSGS = [{"role": "user", "content": "hello there"}]
TOOLS = [
    {"type": "function", "function": {"name": "write", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}},
]
# ~21,600 characters of tool-call arguments (several thousand tokens in any tokenizer)
BIG_ARGS = json.dumps({"content": "lorem ipsum dolor sit amet " * 800})


# -- raw SSE helpers (tests/test_hostile_streams.py's) ------------------------------------------
END = b"0\r\n\r\n"
OA_DONE = chunk(b"data: [DONE]\n\n") + END


def oa_tool_pieces(text: str = "", args: str = BIG_ARGS) -> bytes:
    """An OpenAI stream's tool call (after `text`, if any), `args` in 500-character pieces
    (no finish)."""
    out = oa({"choices": [{"delta": {"role": "assistant", "content": text}}]}) if text else b""
    out += oa({"choices": [{"delta": {"role": "assistant", "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function",
         "function": {"name": "write", "arguments": ""}}]}}]})  # fmt: skip
    for i in range(0, len(args), 500):
        out += oa({"choices": [{"delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": args[i : i + 500]}}]}}]})  # fmt: skip
    return out


def an_tool_pieces(text: str = "", input_tokens: int = 10) -> bytes:
    """An Anthropic stream's tool_use block (after a text block of `text`, if any), BIG_ARGS
    in 500-character pieces (not stopped); its message_start reports `input_tokens`."""
    usage = {"input_tokens": input_tokens, "output_tokens": 1}
    out = an("message_start", message={"usage": usage})
    at = 0
    if text:
        out += an("content_block_start", index=0, content_block={"type": "text", "text": ""})
        out += an("content_block_delta", index=0, delta={"type": "text_delta", "text": text})
        out += an("content_block_stop", index=0)
        at = 1
    use = {"type": "tool_use", "id": "toolu_1", "name": "write", "input": {}}
    out += an("content_block_start", index=at, content_block=use)
    for i in range(0, len(BIG_ARGS), 500):
        piece = {"type": "input_json_delta", "partial_json": BIG_ARGS[i : i + 500]}
        out += an("content_block_delta", index=at, delta=piece)
    return out


def oa_reasoning_pieces() -> bytes:
    """An OpenAI-compatible reasoning model (DeepSeek-style `reasoning_content`) thinking."""
    out = oa({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    for i in range(0, len(BIG_ARGS), 500):
        out += oa({"choices": [{"delta": {"reasoning_content": BIG_ARGS[i : i + 500]}}]})
    return out


def _billed_out(attempts: list[Attempt]) -> int:
    return sum(a.usage.completion_tokens for a in attempts if a.usage is not None)


async def _one(up: LocalUpstream, raw: RawUpstream, api: str, **kw: Any) -> Any:
    """alpha (on `raw`, wire `api`) alone, streamed to its end."""
    async with router(up.url) as r:
        r.update(move_alpha(registry(up.url), raw.url, api))
        return await asyncio.wait_for(r.stream(MSGS, allow=["alpha"], timeout=5, **kw).result(), 15)


# 1 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["openai-tool-call", "anthropic-tool-use", "openai-reasoning"])
async def test_a_cut_stream_bills_the_output_it_had_streamed_besides_text(
    up: LocalUpstream, raw: RawUpstream, what: str
) -> None:
    """Promised: README "What holds" -- calls that "broke mid-stream, are billed at an
    estimate" (and "a call its caller cut off ... a stream left before its first text");
    the executor's own `_prompt_usage` (executor.py:1154) says it bills "the prompt as routed
    ... plus any text that already streamed, the thinking it expects or ... that".

    What happens: only *text* that reached the caller counts. A model that wrote several
    thousand tokens of a tool call's arguments (a coding agent's file), or of
    `reasoning_content` (DeepSeek-style OpenAI-compatible reasoning), then had its stream
    cut, is recorded at the prompt alone: `completion_tokens=0`. Those pieces come through
    the providers as PROGRESS (providers/openai.py:503-505, providers/anthropic.py:788-794)
    and are never accumulated: `open_` (executor.py:1501) drops them, `delivered`
    (executor.py:1555) holds text only, and `_failed(run, t, e, started)`
    (executor.py:1077) is called with no streamed output at all. The same hole bills a
    client that leaves `satisfice serve` while a tool call is being written (the budget is
    settled at the prompt alone), however long the call had been streaming.

    Fix: have the providers expose what they accumulated so far (tool-call argument
    pieces, reasoning pieces, refusal pieces) -- e.g. on the error they raise, or as a
    counter the executor reads -- and pass it to `_prompt_usage` in `_failed`, the
    cancelled path (executor.py:1657) and `_cut_off`, as is done for text and thinking."""
    body = {
        "openai-tool-call": oa_tool_pieces,
        "anthropic-tool-use": an_tool_pieces,
        "openai-reasoning": oa_reasoning_pieces,
    }[what]()
    api = "anthropic" if what.startswith("anthropic") else "openai"
    raw.push(then_reset(sse_head() + body))
    async with router(up.url, max_retries=0) as r:
        r.update(move_alpha(registry(up.url), raw.url, api))
        try:
            res = await asyncio.wait_for(
                r.stream(MSGS, tools=TOOLS, allow=["alpha", "beta"], timeout=10).result(), 15
            )
            attempts = res.attempts
        except SatisficeError as e:
            attempts = e.attempts  # type: ignore[attr-defined]
    cut = attempts[0]
    assert cut.model == "alpha" and cut.usage is not None, attempts
    # thousands of output tokens were generated and streamed before the cut
    assert cut.usage.completion_tokens >= 2000, cut.usage


# 2 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_an_error_event_after_streamed_output_is_not_billed_at_zero(
    up: LocalUpstream, raw: RawUpstream, api: str
) -> None:
    """Promised: README "What holds" -- calls that "broke mid-stream, are billed at an
    estimate", and so is "a 200 whose body was cut or malformed (the upstream generated
    it)". An error event after *text* is billed (executor.py:1667 passes the delivered
    text to `_failed`).

    What happens: a 200 stream in which the model wrote a ~5,000-token tool call and then
    the upstream sent an error event (OpenAI's `{"error": ...}` chunk, Anthropic's
    `event: error` overloaded_error) fails before the first *text*, so `_first_success`
    records it via `_failed(run, t, e, started)` (executor.py:1077) with nothing streamed,
    and the error (`stream_error`, providers/base.py:447, and the Anthropic provider's
    own, providers/anthropic.py:852-864) is not marked `answered`: the attempt is on record
    with `usage=None, cost_usd=None, cost_estimated=False`, which `billed_cost`
    (result.py:22-31) skips -- $0 for a call that generated thousands of tokens.

    Fix: mark a stream error `answered` once any output (text, tool-call pieces,
    thinking) had arrived, and bill it as a cut stream (`_prompt_usage` with what was
    streamed, see test 1)."""
    if api == "openai":
        body = oa_tool_pieces() + oa({"error": {"message": "server had an error"}}) + END
    else:
        body = an_tool_pieces() + an(
            "error", error={"type": "overloaded_error", "message": "Overloaded"}
        ) + END  # fmt: skip
    raw.push(sse_head() + body)
    async with router(up.url, max_retries=0) as r:
        r.update(move_alpha(registry(up.url), raw.url, api))
        res = await asyncio.wait_for(
            r.stream(MSGS, tools=TOOLS, allow=["alpha", "beta"], timeout=10).result(), 15
        )
    failed = res.attempts[0]
    assert failed.model == "alpha" and failed.outcome == "error", res.attempts
    assert failed.cost_usd, (failed.usage, failed.cost_usd, failed.cost_estimated)
    assert failed.usage is not None and failed.usage.completion_tokens >= 2000, failed.usage


# 3 --------------------------------------------------------------------------------------------
async def test_a_usage_reported_with_the_finish_is_billed_when_the_stream_is_then_cut(
    up: LocalUpstream, raw: RawUpstream
) -> None:
    """Promised: README "What holds" -- "A reported usage is checked before it is a bill";
    tests/test_hostile_streams.py's own rule, "a usage the upstream reported, then a cut:
    [must never be] billed below what it reported" (a 3000x under-report).

    What happens: many OpenAI-compatible upstreams (DeepSeek, Mistral, Together) put the
    usage on the *finish* chunk itself, not on a separate `choices: []` chunk. Here the
    whole answer and its usage (3,000 output tokens, 2,990 of them reasoning) arrive, then
    the connection is reset before [DONE]. The provider keeps `usage` (providers/openai.py:
    467) but ends only on a usage chunk *without* choices (openai.py:507), so the reset is
    an `_answer_lost` (openai.py:543-548) that carries no usage, and `_failed` bills
    `_prompt_usage`'s estimate of the 5 characters delivered: 1 output token instead of the
    3,000 the upstream reported (and the caller gets StreamInterruptedError for a whole
    answer).

    Fix: carry the last reported usage on the error a provider raises after it (or on the
    attempt), and bill max(reported, estimate) in `_failed`; and/or treat a finish chunk
    that carries a usage like the usage-only chunk (read briefly for [DONE], then end)."""
    body = (
        sse_head()
        + oa({"choices": [{"delta": {"content": "Hello"}, "finish_reason": None}]})
        + oa({
            "choices": [{"delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3000,
                      "completion_tokens_details": {"reasoning_tokens": 2990}},
        })
    )  # fmt: skip
    raw.push(then_reset(body))
    try:
        res = await _one(up, raw, "openai")
        attempts = res.attempts
    except StreamInterruptedError as e:
        attempts = e.attempts
    assert _billed_out(attempts) >= 3000, [(a.outcome, a.usage) for a in attempts]


# 4 --------------------------------------------------------------------------------------------
_AN_PRELUDE = an("message_start", message={
    "id": "msg_1", "type": "message", "role": "assistant", "model": "alpha-wire", "content": [],
    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1},
})  # fmt: skip


def _an_with_start_content(kind: str) -> bytes:
    if kind == "text":
        blocks = (
            an("content_block_start", index=0, content_block={"type": "text", "text": "Hello "})
            + an("content_block_delta", index=0, delta={"type": "text_delta", "text": "world"})
            + an("content_block_stop", index=0)
        )
        stop = "end_turn"
    else:
        blocks = (
            an("content_block_start", index=0, content_block={
                "type": "tool_use", "id": "toolu_1", "name": "write", "input": {"path": "a.txt"}})
            + an("content_block_stop", index=0)
        )  # fmt: skip
        stop = "tool_use"
    return (
        sse_head() + _AN_PRELUDE + blocks
        + an("message_delta", delta={"stop_reason": stop}, usage={"output_tokens": 3})
        + an("message_stop") + END
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["text", "tool_use"])
async def test_content_given_in_an_anthropic_content_block_start_is_kept(
    up: LocalUpstream, raw: RawUpstream, kind: str
) -> None:
    """Promised: the Anthropic provider reads a Messages stream as the API defines it;
    `content_block_start.content_block` is a whole content block (the official `anthropic`
    SDK's MessageStream starts each block from it: against these exact bytes it reads
    "Hello world" and a tool_use with input {"path": "a.txt"}). The provider itself honours
    it for thinking blocks (providers/anthropic.py:799-804: a first piece of thinking in the
    start is kept).

    What happens: for a text block the start's `text` is dropped (anthropic.py:809-812 only
    yields an empty block marker when server tools are on; otherwise nothing), so the
    answer is "world"; for a tool_use block whose `input` comes in the start with no
    `input_json_delta` (as Anthropic-compatible gateways and the non-streamed shape give
    it) the input is dropped and the call reaches the caller as "{}"
    (anthropic.py:820-826, 888). Silently wrong answers, with no error.

    Fix: on content_block_start, take a text block's non-empty `text` as its first piece,
    and a tool_use block's non-empty `input` as its arguments unless input_json_delta
    pieces follow."""
    raw.push(_an_with_start_content(kind))
    res = await _one(up, raw, "anthropic", tools=TOOLS)
    if kind == "text":
        assert res.text == "Hello world", res.text
    else:
        assert [json.loads(c.arguments) for c in res.tool_calls] == [{"path": "a.txt"}], (
            res.tool_calls
        )


# 5 --------------------------------------------------------------------------------------------
async def test_streamed_tool_calls_without_index_or_id_are_not_merged(
    up: LocalUpstream, raw: RawUpstream
) -> None:
    """Promised: the provider's own comment (providers/openai.py:483-484): "Some
    upstreams stream each call whole, with no index: a new id starts the next call, no id
    continues one."

    What happens: an upstream that streams two whole calls with neither `index` nor `id`
    (ids are optional there: satisfice makes one, providers/base.py:107-112) has the
    second call folded into the first (with no index the call is `max(tools)`,
    openai.py:485-487): one call named "read" (the second name overwrites the first,
    openai.py:499) whose arguments are `{"path": "a"}{"path": "b"}` -- invalid JSON, a
    call the model never made, given to the caller without a word.

    Fix: with no index, start a new call also when a piece carries a function `name` and
    the current call already has one (a continuation never repeats the name), or when the
    current call's arguments already parse as a whole JSON value."""
    body = (
        sse_head()
        + oa({"choices": [{"delta": {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "write", "arguments": '{"path": "a"}'}}]}}]})
        + oa({"choices": [{"delta": {"tool_calls": [
            {"type": "function", "function": {"name": "read", "arguments": '{"path": "b"}'}}]}}]})
        + oa({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})
        + OA_DONE
    )  # fmt: skip
    raw.push(body)
    res = await _one(up, raw, "openai", tools=TOOLS)
    assert [(c.name, c.arguments) for c in res.tool_calls] == [
        ("write", '{"path": "a"}'),
        ("read", '{"path": "b"}'),
    ], res.tool_calls


# 6 --------------------------------------------------------------------------------------------
async def test_a_second_choice_is_not_spliced_into_the_streamed_answer(
    up: LocalUpstream, raw: RawUpstream
) -> None:
    """Promised: one answer per request, never two models' (or two answers') text spliced
    silently; README: `extra={"n": 2}` is refused because "a stream had run two into one
    text". The non-streamed path reads `choices[0]` alone (providers/openai.py:428).

    What happens: an upstream that sends choices beside index 0 anyway (a gateway with a
    server-side `n`, a buggy proxy) has every choice's `delta.content` appended to the same
    text in arrival order (openai.py:469-477 iterates all choices and ignores `index`), so
    "Yes, always." and "No, never." come back as "Yes, No, never.always.", streamed to the
    caller piece by piece; tool calls of different choices would merge by their index too.

    Fix: read only the choice whose `index` is 0 (as the non-streamed path does); ignore, or
    fail as malformed, the others."""
    body = (
        sse_head()
        + oa({"choices": [{"index": 0, "delta": {"content": "Yes, "}},
                          {"index": 1, "delta": {"content": "No, "}}]})
        + oa({"choices": [{"index": 1, "delta": {"content": "never."}, "finish_reason": "stop"}]})
        + oa({"choices": [{"index": 0, "delta": {"content": "always."}, "finish_reason": "stop"}]})
        + OA_DONE
    )  # fmt: skip
    raw.push(body)
    res = await _one(up, raw, "openai")
    assert res.text == "Yes, always.", res.text


# 7 --------------------------------------------------------------------------------------------
def _thinking_registry(url: str, raw_url: str) -> Registry:
    d = registry(url).to_dict()
    for m in d["model"]:
        if m["id"] == "beta":
            m["thinking"] = "adaptive"
            m["efforts"] = {"low": {"reasoning_tokens": 100, "quality": 0.0}}
            m["deployments"][0]["base_url"] = raw_url
    return Registry.from_dict(d)


async def test_a_whole_streamed_answer_without_usage_bills_the_thinking_it_streamed(
    up: LocalUpstream, raw: RawUpstream
) -> None:
    """Promised: README: "an answer whose usage the upstream did not report ... is
    counted here and marked so";
    `_with_reasoning`'s docstring (executor.py:1871-1878): the estimate takes "the `seen`
    tokens of thinking it streamed where those are more (a stream left after 46,000 tokens
    of thinking had been billed the 6,144 its row expects)".

    What happens: that was fixed for a stream that is *cut*; a stream that ends whole but
    whose message_delta carries no usage is counted by `Executor._usage`
    (executor.py:1112-1131), whose line 1131 calls `_with_reasoning(counted, t, ...)`
    without `seen`:
    ~3,000+ tokens of thinking the caller received (a signed block on the result) are billed
    as the row's expected 1,024. (The non-streamed `chat()` has the same hole.)

    Fix: in `_usage`, when the count is ours, pass the tokens of `resp.thinking`'s text as
    `seen` (as `_prompt_usage` does for a cut stream)."""
    thought = "ponder " * 3000
    body = (
        sse_head()
        + an("message_start", message={"usage": {"input_tokens": 10}})
        + an("content_block_start", index=0,
             content_block={"type": "thinking", "thinking": "", "signature": ""})
        + an("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": thought})
        + an("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "s"})
        + an("content_block_stop", index=0)
        + an("content_block_start", index=1, content_block={"type": "text", "text": ""})
        + an("content_block_delta", index=1, delta={"type": "text_delta", "text": "Hello"})
        + an("content_block_stop", index=1)
        + an("message_delta", delta={"stop_reason": "end_turn"})
        + an("message_stop")
        + END
    )  # fmt: skip
    raw.push(body)
    async with router(up.url) as r:
        r.update(_thinking_registry(up.url, raw.url))
        res = await asyncio.wait_for(r.stream(MSGS, allow=["beta@low"], timeout=10).result(), 15)
    assert res.text == "Hello" and res.thinking and len(res.thinking[0]["thinking"]) > 20_000
    assert res.usage.completion_tokens >= 2500, res.usage


# 8 --------------------------------------------------------------------------------------------
async def test_pings_after_the_last_message_delta_do_not_fail_a_whole_answer(
    up: LocalUpstream, raw: RawUpstream
) -> None:
    """Promised: README "What holds": a stream whose upstream sends the last piece before
    its end marker "and then neither [DONE] nor the body's end, holding the connection
    open, ends as the answer half a second after that chunk ... so for Anthropic's
    message_delta, which comes last before message_stop"; and "keep-alive pings" are
    listed among the hostile upstreams handled.

    What happens: an Anthropic upstream that sends message_delta (stop reason and 3,000
    output tokens) and then keeps the connection alive with `ping` events but never sends
    message_stop: `quiet_after` (providers/base.py:894-913) restarts its END_GRACE_S wait
    at every event it yields, pings included (anthropic.py:738 keeps `at_end` across a
    ping but the ping still resets the grace), so the grace never runs out; the executor's
    idle timeout then fails the whole answer as a StreamInterruptedError, billed at an
    estimate of 1 output token instead of the 3,000 reported. The OpenAI path does not
    have this: `finish_stream` bounds the whole tail at 0.5 s.

    Fix: in `quiet_after`, measure END_GRACE_S from the moment `at_end` became true (one
    deadline for the tail), not per event; or bound the tail as `finish_stream` does."""
    whole = (
        sse_head()
        + an("message_start", message={"usage": {"input_tokens": 10, "output_tokens": 1}})
        + an("content_block_start", index=0, content_block={"type": "text", "text": ""})
        + an("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hello"})
        + an("content_block_stop", index=0)
        + an("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 3000})
    )  # fmt: skip

    async def pinging(w: asyncio.StreamWriter) -> None:
        w.write(whole)
        await w.drain()
        with contextlib.suppress(Exception):
            for _ in range(40):  # 4 s of pings, never message_stop
                await asyncio.sleep(0.1)
                w.write(an("ping"))
                await w.drain()

    raw.push(pinging)
    async with router(up.url, stream_idle_timeout_s=1.5, read_timeout_s=1.5) as r:
        r.update(move_alpha(registry(up.url), raw.url, "anthropic"))
        try:
            res = await asyncio.wait_for(r.stream(MSGS, allow=["alpha"]).result(), 15)
        except StreamInterruptedError as e:
            pytest.fail(f"a whole answer failed: {e}; billed {_billed_out(e.attempts)} tokens")
    assert res.text == "Hello" and res.usage.completion_tokens == 3000


# 9 --------------------------------------------------------------------------------------------
@pytest.fixture
def served_on_raw(up: LocalUpstream, tmp_path: Path) -> Iterator[tuple[str, RawUpstream]]:
    """`satisfice serve` with alpha (Anthropic wire) on a raw upstream; no fallback."""
    with RawUpstream(keep_alive=True) as r:
        reg = move_alpha(registry(up.url), r.url, "anthropic")
        path = tmp_path / "r.toml"
        path.write_text(reg.to_toml())
        cfg = ServerConfig(registry_path=str(path))
        with running(cfg, Router(reg, Policy(quality_floor=0.5, max_fallbacks=0))) as (url, _):
            yield url, r


@pytest.mark.parametrize("client", ["anthropic-sdk", "openai-sdk (cross-wire)"])
def test_served_streams_keep_text_given_in_a_content_block_start(
    served_on_raw: tuple[str, RawUpstream], client: str
) -> None:
    """Test 4 end to end, through `satisfice serve` to the official SDKs: the upstream's
    bytes read "Hello world" with the `anthropic` SDK pointed at it directly; served by
    satisfice, an Anthropic client (`/v1/messages`, stream) and an OpenAI client
    (`/v1/chat/completions`, stream with include_usage, cross-wire) both receive "world".
    Cause and fix: as test 4 (providers/anthropic.py:809-812)."""
    url, upstream = served_on_raw
    upstream.push(_an_with_start_content("text"))
    if client == "anthropic-sdk":
        with (
            anthropic.Anthropic(base_url=url, api_key="x", max_retries=0) as c,
            c.messages.stream(model="alpha", max_tokens=50, messages=MSGS) as s,  # type: ignore[arg-type]
        ):
            text = s.get_final_message().content[0].text  # type: ignore[union-attr]
    else:
        with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as o:
            chunks = list(o.chat.completions.create(
                model="alpha", messages=MSGS, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
            ))  # fmt: skip
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "Hello world", text


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_caller_that_leaves_while_a_tool_call_streams_is_billed_for_it(
    up: LocalUpstream, raw: RawUpstream, api: str
) -> None:
    """A caller that leaves (its task cancelled, as a server's is when its client hangs up)
    while the model writes a tool call had its attempt settled at the prompt alone, however
    many thousand tokens of arguments had streamed: the pieces never reached the executor.
    The attempt is billed for them too."""
    body = sse_head() + (oa_tool_pieces() if api == "openai" else an_tool_pieces())

    async def send(w: asyncio.StreamWriter) -> None:
        w.write(body)
        await w.drain()
        await asyncio.sleep(30)  # writing on: the caller leaves first

    raw.push(send)
    async with router(up.url) as r:
        r.update(move_alpha(registry(up.url), raw.url, api))
        s = r.stream(MSGS, allow=["alpha"], timeout=20)
        task = asyncio.create_task(s.result())

        def written() -> int:  # what the call in flight has generated so far
            return sum(len("".join(c[2].out)) for run in s._runs for c in run.calling.values())

        assert await until_async(lambda: written() >= len(BIG_ARGS)), written()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    (a,) = s.attempts
    assert a.outcome == "cancelled" and a.cost_estimated
    # alpha's output is $0.40 a million tokens: more than 1,000 of them (the prompt's ~10
    # input tokens had been the whole bill)
    assert a.cost_usd is not None and a.cost_usd > 1000 * 0.40 / 1e6, a


async def test_the_end_grace_counts_the_upstreams_silence_not_its_readers_pauses() -> None:
    """Once an answer is whole but for its end marker, `quiet_after` waits END_GRACE_S of
    the upstream's silence for more. Made a fixed deadline (so that pings cannot put it
    off), it had counted the time its reader spent between events too: a reader that took
    longer than the grace over one event cut off the next, a `message_delta` whose usage
    grew. Pings still use the grace up; the reader's own time does not."""
    from satisfice.providers.base import END_GRACE_S, quiet_after

    async def events() -> Any:
        for i in range(3):
            await asyncio.sleep(0.05)
            yield i

    at_end = [False]
    q = quiet_after(events(), at_end)
    got = [await anext(q)]
    at_end[0] = True  # the answer is whole: the grace runs
    got.append(await anext(q))
    await asyncio.sleep(END_GRACE_S + 0.2)  # the reader's own work
    got.append(await anext(q))
    assert got == [0, 1, 2]
