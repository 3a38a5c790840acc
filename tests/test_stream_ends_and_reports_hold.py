"""A stream's end marker without its reason, usage reported more than once, and tool-call
arguments that hold no JSON object, from raw-socket upstreams whose every byte the test
sets: through `router.stream()` and through `satisfice serve` to the official SDKs. Each
test failed before its fix: a stream cut by a proxy that ended it with `[DONE]` (or
`message_stop`) and no finish reason had been a whole answer, served as "stop"/"end_turn";
a later, smaller usage had lowered the bill; NaN in a call's arguments had been served
as `null` (or streamed as `NaN`), and arguments that are JSON but no object had been sent
to Anthropic's API as the call's input."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from satisfice import Policy, Router
from satisfice.errors import StreamInterruptedError
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, RawUpstream

from .chat_support import WEATHER_TOOLS, move_alpha, registry, router
from .server_support import running
from .test_round15_wire import an_event, oa_chunk, sse
from .test_round15_wire import registry as served_registry

MSGS = [{"role": "user", "content": "hello there"}]
REPORTED = {"prompt_tokens": 10, "completion_tokens": 3000}


@pytest.fixture
def raw() -> Iterator[RawUpstream]:
    with RawUpstream() as r:
        yield r


async def _stream(raw: RawUpstream, up: LocalUpstream, api: str, **kw: Any) -> Any:
    """alpha (wire `api`) on `raw`, the others on `up`: the result, or the error raised."""
    async with router(up.url, max_retries=0) as r:
        r.update(move_alpha(registry(up.url), raw.url, api))
        try:
            return await asyncio.wait_for(r.stream(MSGS, timeout=10, **kw).result(), 20)
        except StreamInterruptedError as e:
            return e


# -- 1. an end marker with no reason is a cut, not an answer ----------------------------------
# What a proxy sends when its upstream fails mid-answer: the text so far, maybe the usage, and
# its own `[DONE]`. A stream cut before [DONE] fails (retryable, billed at an estimate and at
# least the reported usage); one that reached a [DONE] no finish came before had been taken
# as whole, finish_reason None, recorded a success.
OA_CUT = sse(
    oa_chunk({"role": "assistant", "content": "The answer is"}),
    oa_chunk(None, usage=REPORTED),
    b"data: [DONE]\n\n",
)
AN_CUT = sse(
    an_event("message_start", message={"usage": {"input_tokens": 10, "output_tokens": 1}}),
    an_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
    an_event("content_block_delta", index=0, delta={"type": "text_delta", "text": "The answer"}),
    an_event("message_stop"),
)


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_an_end_marker_without_a_finish_reason_is_a_cut_stream(
    raw: RawUpstream, up: LocalUpstream, api: str
) -> None:
    raw.push(OA_CUT if api == "openai" else AN_CUT)
    got = await _stream(raw, up, api)
    assert isinstance(got, StreamInterruptedError), got  # text had reached the caller
    (a,) = got.attempts
    assert a.outcome == "error" and "no finish_reason" in (a.error or "").replace(
        "stop_reason", "finish_reason"
    ), a.error
    assert a.usage is not None and a.cost_estimated
    if api == "openai":  # billed at least what the upstream reported before the cut
        assert a.usage.completion_tokens >= REPORTED["completion_tokens"], a.usage


async def test_a_tool_call_ended_by_done_without_a_finish_falls_back(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    """Nothing reached the caller yet (a tool call comes whole at the end): the next model
    answers, where the half call had been the answer."""
    call = {"index": 0, "id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Os'}}  # fmt: skip
    raw.push(sse(oa_chunk({"role": "assistant", "tool_calls": [call]}), b"data: [DONE]\n\n"))
    res = await _stream(raw, up, "openai", tools=WEATHER_TOOLS)
    assert res.model != "alpha" and not res.tool_calls, res
    assert "no finish_reason" in (res.attempts[0].error or ""), res.attempts


# -- ... and what `satisfice serve` sends its clients then -------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[RawUpstream, str]]:
    import os

    from .test_round15_wire import ENV, KEY

    os.environ[ENV] = KEY
    try:
        with RawUpstream(keep_alive=True) as upstream:
            r = Router(served_registry(upstream.url), Policy(quality_floor=0.5, max_fallbacks=0))
            with running(ServerConfig(), r) as (base, _app):
                yield upstream, base
    finally:
        del os.environ[ENV]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_served_a_cut_stream_ends_in_an_error_event_not_a_finish(
    served: tuple[RawUpstream, str], path: str, api: str
) -> None:
    """The half answer had been served as whole: finish_reason "stop" and [DONE] on
    /v1/chat/completions, stop_reason "end_turn" and message_stop on /v1/messages."""
    upstream, base = served
    upstream.push(OA_CUT if api == "openai" else AN_CUT)
    model = "oa" if api == "openai" else "an"
    body = {"model": model, "max_tokens": 50, "stream": True, "messages": MSGS}
    with httpx.stream("POST", base + path, json=body, headers={"x-api-key": "x"},
                      timeout=20) as resp:  # fmt: skip
        assert resp.status_code == 200
        text = resp.read().decode()
    assert "The answer" in text  # the text came, then the error
    assert '"finish_reason":"stop"' not in text and "data: [DONE]" not in text, text
    assert "end_turn" not in text and "event: message_stop" not in text, text
    assert ("event: error" if path == "/v1/messages" else '"error"') in text, text
