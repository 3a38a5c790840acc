"""Hostile upstreams against `router.chat()` and `router.stream()` (OpenAI and Anthropic
wire formats, hedge and race), as a byte-level adversarial review from a separate clone
found them. Every test here failed on the code it was written against: a race cut off by its
deadline raised an error listing no attempt; a stream timed out before or during its text
was billed at the prompt alone, the tool call it wrote and the prompt Anthropic reported
left out; a key echoed in a UTF-16 or UTF-32 answer got past the scrubbing (such a body is
now refused: JSON is UTF-8); a 200 whose head named a framing the transport refuses was
billed $0. Every server is a raw socket on 127.0.0.1 that stops by itself."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from satisfice.errors import AllAttemptsFailedError, SatisficeError
from satisfice.testing import RawUpstream, http_response

from .chat_support import move_alpha, registry, router
from .test_hostile_streams import an, sse_head, then_hold
from .test_streams_hold import an_tool_pieces, oa_tool_pieces

MSGS = [{"role": "user", "content": "hello there"}]
CANARY = "sk-canary-" + "5e1d2b" * 6


TOOL_PIECES = {"openai": oa_tool_pieces, "anthropic": an_tool_pieces}


async def _streamed(raw: RawUpstream, api: str, timeout: float, **config: Any) -> list[Any]:
    """alpha alone (wire `api`, on `raw`), streamed; the attempts on the result or error."""
    async with router(raw.url, **config) as r:
        r.update(move_alpha(registry(raw.url), raw.url, api))
        try:
            res = await asyncio.wait_for(
                r.stream(MSGS, allow=["alpha"], timeout=timeout).result(), 20
            )
            return list(res.attempts)
        except SatisficeError as e:
            return list(e.attempts)  # type: ignore[attr-defined]


# -- 1. a race cut off by its deadline names no attempt ---------------------------------------
# README ("Hostile upstreams"): "Each request ends in a fallback's answer or an error listing
# every attempt". With race=2 and the racer hung, `Executor._concurrent` (executor.py, the
# `if not done: if run.deadline ... >= run.deadline: break`) leaves its wait at the deadline
# and builds AllAttemptsFailedError from `run.attempts` *before* its `finally: _cancel(...)`
# records the call it cuts off; the error copies the (empty) list (ProviderError.__init__:
# `list(attempts or [])`), so its message lists nothing and `.attempts` is [].
async def test_a_race_cut_off_by_its_deadline_lists_every_attempt() -> None:
    # (one candidate: the deadline's timer and the racer's come due together, and the wait's
    # is handled first every time; with two racers it goes either way from run to run)
    allow = ["alpha"]
    with RawUpstream() as raw:
        raw.push(*[then_hold(b"", 5.0)] * 4)
        async with router(raw.url, read_timeout_s=10.0, attempt_timeout_s=20.0) as r:
            with pytest.raises(AllAttemptsFailedError) as e:
                await asyncio.wait_for(r.chat(MSGS, allow=allow, race=2, timeout=0.6), 10)
    err = e.value
    assert {a.model for a in err.attempts} == set(allow), (str(err), err.attempts)
    listed = str(err).split(":\n", 1)[-1]
    assert all(m in listed for m in allow), str(err)


# -- 2. a stream timed out before its first text loses what it generated ----------------------
# README ("A stream is billed for what it generated, not only for the text you saw"): "A
# stream cut, ended by an error event, or left by its caller ... is billed at least that, and
# at least the prompt and output the upstream reported before the end", and "silence
# anywhere before that chunk is a cut answer, billed at an estimate". Cut by a reset, the
# ~2,000 tokens of a tool call's arguments are billed (tests/test_streams_hold.py); cut by the
# request's deadline or the idle timeout while no text has come yet (`open_` in
# `Executor._stream`), the call is billed the 9-token prompt estimate and 0 output:
# `Executor._bounded` turns the TimeoutError into an UpstreamTimeoutError that carries none of
# the call's `Generated` (its `out`, `thought`, `usage`), and `_failed` bills e.generated="".
@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize(
    "limit",
    [
        pytest.param({"timeout": 1.5}, id="deadline"),
        pytest.param({"timeout": 20.0, "stream_idle_timeout_s": 1.0}, id="idle"),
    ],
)
async def test_a_stream_timed_out_before_its_text_bills_the_tool_call_it_wrote(
    api: str, limit: dict[str, Any]
) -> None:
    cfg = {"read_timeout_s": 30.0, "attempt_timeout_s": 40.0, "max_retries": 0, **limit}
    timeout = cfg.pop("timeout")
    with RawUpstream() as raw:
        raw.push(then_hold(sse_head() + TOOL_PIECES[api]()))
        attempts = await _streamed(raw, api, timeout, **cfg)
    (a,) = [a for a in attempts if a.model == "alpha"]
    assert a.usage is not None and a.usage.completion_tokens >= 1500, (a.error, a.usage)


async def test_a_stream_timed_out_before_its_text_bills_the_prompt_anthropic_reported() -> None:
    # message_start says the prompt was 6,000 tokens (a cached system prompt, images, ...);
    # then nothing: billed at satisfice's own 9-token estimate of the prompt.
    body = sse_head() + an(
        "message_start", message={"usage": {"input_tokens": 6000, "output_tokens": 1}}
    )
    with RawUpstream() as raw:
        raw.push(then_hold(body))
        attempts = await _streamed(
            raw, "anthropic", 1.5, read_timeout_s=30.0, attempt_timeout_s=40.0, max_retries=0
        )
    (a,) = [a for a in attempts if a.model == "alpha"]
    assert a.usage is not None and a.usage.prompt_tokens >= 6000, (a.error, a.usage)


# -- 3. ... and so does one timed out after its first text ------------------------------------
# The same hole after the stream became the caller's: the main loop of `Executor._stream`
# raises its own UpstreamTimeoutError ("the request's deadline passed mid-stream") and
# `_failed(run, t, e, started, text, ...)` bills the text delivered ("Hi") plus
# `e.generated`, which is empty: `made.out` (the tool call's ~2,000 tokens), in scope there,
# is never used. (A transport ReadTimeout, raised through the provider, is billed right.)
@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_stream_timed_out_mid_tool_call_bills_the_tool_call(api: str) -> None:
    with RawUpstream() as raw:
        raw.push(then_hold(sse_head() + TOOL_PIECES[api](text="Hi")))
        attempts = await _streamed(
            raw, api, 1.5, read_timeout_s=30.0, attempt_timeout_s=40.0, max_retries=0
        )
    (a,) = [a for a in attempts if a.model == "alpha"]
    assert a.error_type == "UpstreamTimeoutError", a.error
    assert a.usage is not None and a.usage.completion_tokens >= 1500, (a.error, a.usage)


# -- 4. a key in an answer encoded as UTF-16 or UTF-32 ----------------------------------------
# README ("Keys never shown"): "every configured key is scrubbed from what an upstream sends
# back — error bodies, answers, ...". `json.loads(bytes)` detects UTF-16/32 on its own, so a
# 200 body in either encoding is read; but `scrub_bytes` scans the raw bytes (the key's UTF-8
# bytes are not there) and `providers.base._scrub` scrubs decoded values only when the bytes
# hold a backslash: the key reaches ChatResult.text and .raw untouched.
@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
@pytest.mark.parametrize("mode", [{}, {"race": 2}, {"hedge": True}], ids=["plain", "race", "hedge"])
async def test_a_key_echoed_in_a_utf16_or_utf32_answer_is_scrubbed(
    monkeypatch: pytest.MonkeyPatch, api: str, encoding: str, mode: dict[str, Any]
) -> None:
    monkeypatch.setenv("SATISFICE_REVIEW_KEY", CANARY)
    said = f"your key is {CANARY}"
    if api == "openai":
        answer: Any = {"choices": [{"message": {"content": said}, "finish_reason": "stop"}]}
    else:
        answer = {"type": "message", "content": [{"type": "text", "text": said}],
                  "stop_reason": "end_turn"}  # fmt: skip
    with RawUpstream() as raw:
        raw.push(http_response(json.dumps(answer).encode(encoding)))
        reg = move_alpha(registry(raw.url), raw.url, api)
        alpha = reg["alpha"]
        dep = alpha.deployments[0].replace(api_key_env="SATISFICE_REVIEW_KEY")
        reg = reg.replace(alpha.replace(deployments=(dep,)))
        async with router(raw.url) as r:
            r.update(reg)
            try:
                res = await asyncio.wait_for(r.chat(MSGS, allow=["alpha"], timeout=5, **mode), 10)
            except SatisficeError as e:  # refused as no JSON (RFC 8259: UTF-8), clearly
                assert "UTF-8" in str(e), e
                assert CANARY not in str(e) and CANARY not in repr(e.attempts)
                res = None
    assert CANARY in raw.requests[0].decode()  # (it was sent)
    if res is not None:
        assert CANARY not in res.text, res.text
        assert CANARY not in repr(res.raw) and CANARY not in repr(res)


# -- 5. a 200 whose framing is refused is billed at $0, not at an estimate ---------------------
# README: "a 200 whose body was cut or malformed (the upstream generated it)" is billed at an
# estimate, and so it is when a gzip body is corrupt or cut. But when the 200's *head* names a
# framing the transport refuses (Content-Encoding: br, a Content-Length that is not a number,
# Transfer-Encoding: gzip), `PooledTransport._exchange` raises RemoteProtocolError from
# `_body_length`/`_decoder` before returning the status, so the provider maps it with
# `_transport_error` ("connection failed", status None, answered=False): the attempt is on
# record with no usage and cost None, though the upstream answered 200 and bills the answer.
ANSWER = json.dumps(
    {"choices": [{"message": {"content": "yo"}, "finish_reason": "stop"}],
     "usage": {"prompt_tokens": 5, "completion_tokens": 500}}
).encode()  # fmt: skip
_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(_HEAD + b"content-encoding: br\r\ncontent-length: %d\r\n\r\n" % len(ANSWER)
                     + ANSWER, id="brotli"),
        pytest.param(_HEAD + b"content-length: 12abc\r\n\r\n" + ANSWER, id="bad-length"),
        pytest.param(_HEAD + b"transfer-encoding: gzip\r\n\r\n" + ANSWER, id="te-gzip"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("stream", [False, True])
async def test_a_200_with_a_refused_framing_is_billed_at_an_estimate(
    reply: bytes, stream: bool
) -> None:
    with RawUpstream() as raw:
        raw.push(reply)
        async with router(raw.url, max_retries=0) as r:
            r.update(move_alpha(registry(raw.url), raw.url, "openai"))
            call = (
                r.stream(MSGS, allow=["alpha"], timeout=5).result()
                if stream
                else r.chat(MSGS, allow=["alpha"], timeout=5)
            )
            with pytest.raises(AllAttemptsFailedError) as e:
                await asyncio.wait_for(call, 10)
    (a,) = e.value.attempts
    assert a.usage is not None and a.cost_estimated and a.cost_usd, (a.error, a.usage, a.cost_usd)
