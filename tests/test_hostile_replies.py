"""Malformed and lying replies, byte for byte from a raw socket: each ends in a fallback
success or a counted usage, with every attempt recorded, never a raw Python exception."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from satisfice import Registry
from satisfice.testing import LocalUpstream, RawUpstream, http_response

from .chat_support import move_alpha, registry, router

MSGS = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def raw() -> Iterator[RawUpstream]:
    with RawUpstream() as r:
        yield r


def openai_body(message: object, usage: object = None, finish: object = "stop") -> bytes:
    doc: dict[str, object] = {"choices": [{"message": message, "finish_reason": finish}]}
    if usage is not None:
        doc["usage"] = usage
    return json.dumps(doc).encode()


def with_alpha_on(raw: RawUpstream, up: LocalUpstream, api: str = "openai") -> Registry:
    return move_alpha(registry(up.url), raw.url, api)


# Replies alpha cannot be taken at its word on: the request must fall back to beta.
MALFORMED = {
    "content is a number": openai_body({"content": 42}),
    "content is a list": openai_body({"content": ["a"]}),
    "tool name is a number": openai_body(
        {"content": None, "tool_calls": [{"id": "1", "function": {"name": 7, "arguments": "{}"}}]}
    ),
    "finish_reason is an object": openai_body({"content": "hi"}, finish={"x": 1}),
    "choices is a string": b'{"choices": "nope"}',
    "not JSON": b"<html>502 Bad Gateway</html>",
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "truncated": b'{"choices": [{"message": {"content": "hi',
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_replies_fall_back(raw: RawUpstream, up: LocalUpstream, case: str) -> None:
    raw.push(http_response(MALFORMED[case]), http_response(MALFORMED[case]))
    async with router(up.url) as r:
        r.update(with_alpha_on(raw, up))
        res = await r.chat(MSGS)
    assert res.model == "beta"
    errors = [a for a in res.attempts if a.model == "alpha"]
    assert errors and all(a.outcome == "error" for a in errors)
    assert all(a.error_type == "RetryableError" and "malformed" in (a.error or "") for a in errors)


# Replies whose text is fine but whose usage is not believable: counted instead, never $<0.
IMPLAUSIBLE_USAGE = {
    "negative": {"prompt_tokens": -1_000_000, "completion_tokens": 5},
    "infinity": "INF",
    "400 digits": {"prompt_tokens": int("9" * 400), "completion_tokens": 1},
    "a string": {"prompt_tokens": "12", "completion_tokens": 1},
    "more cached than sent": {
        "prompt_tokens": 10,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 50},
    },
    "a bool": {"prompt_tokens": True, "completion_tokens": 1},
}


@pytest.mark.parametrize("case", list(IMPLAUSIBLE_USAGE))
async def test_implausible_usage_is_counted(raw: RawUpstream, up: LocalUpstream, case: str) -> None:
    usage = IMPLAUSIBLE_USAGE[case]
    if usage == "INF":
        body = b'{"choices":[{"message":{"content":"fine"},"finish_reason":"stop"}],' + (
            b'"usage":{"prompt_tokens":Infinity,"completion_tokens":1}}'
        )
    else:
        body = openai_body({"content": "fine"}, usage)
    raw.push(http_response(body))
    async with router(up.url) as r:
        r.update(with_alpha_on(raw, up))
        res = await r.chat(MSGS)
    assert res.model == "alpha" and res.text == "fine"
    assert res.usage.source == "counted" and 0 < res.usage.prompt_tokens < 100
    assert res.cost_usd is not None and res.cost_usd > 0


ANTHROPIC_MALFORMED = {
    "text is a number": {"content": [{"type": "text", "text": 5}], "stop_reason": "end_turn"},
    "tool id is a list": {
        "content": [{"type": "tool_use", "id": [1], "name": "f", "input": {}}],
        "stop_reason": "tool_use",
    },
    "content missing": {"stop_reason": "end_turn"},
}


@pytest.mark.parametrize("case", list(ANTHROPIC_MALFORMED))
async def test_anthropic_malformed_replies_fall_back(
    raw: RawUpstream, up: LocalUpstream, case: str
) -> None:
    body = json.dumps(ANTHROPIC_MALFORMED[case]).encode()
    raw.push(http_response(body), http_response(body))
    async with router(up.url) as r:
        r.update(with_alpha_on(raw, up, "anthropic"))
        res = await r.chat(MSGS)
    assert res.model == "beta"
    assert all(a.outcome == "error" for a in res.attempts if a.model == "alpha")


async def test_anthropic_negative_usage_is_counted(raw: RawUpstream, up: LocalUpstream) -> None:
    body = {
        "content": [{"type": "text", "text": "fine"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": -5, "output_tokens": 3},
    }
    raw.push(http_response(json.dumps(body).encode()))
    async with router(up.url) as r:
        r.update(with_alpha_on(raw, up, "anthropic"))
        res = await r.chat(MSGS)
    assert res.model == "alpha" and res.usage.source == "counted"
    assert res.cost_usd is not None and res.cost_usd > 0


async def test_a_stream_that_trickles_forever_ends_at_attempt_timeout(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    """No deadline: attempt_timeout_s bounds the whole streamed attempt, not only its
    opening (a piece every 0.2 s kept a stream open forever)."""
    import asyncio
    import time

    from satisfice.errors import StreamInterruptedError

    async def endless(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")  # fmt: skip
        ev = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
        while True:
            writer.write(b"%x\r\n%s\r\n" % (len(ev), ev))
            await writer.drain()
            await asyncio.sleep(0.2)

    raw.push(endless)
    t0 = time.perf_counter()
    async with router(up.url, attempt_timeout_s=1.5, stream_idle_timeout_s=1.0) as r:
        r.update(with_alpha_on(raw, up))
        with pytest.raises(StreamInterruptedError, match="attempt_timeout_s"):
            async with asyncio.timeout(10):
                async with r.stream(MSGS) as s:
                    async for _ in s:
                        pass
    assert time.perf_counter() - t0 < 5
