"""Broken upstreams, byte for byte from a raw socket: what the upstream said (its status, a
JSON error or answer in place of an event stream) is what the attempt records, however
broken the bytes around it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from satisfice.errors import ProviderError
from satisfice.testing import RawUpstream, http_response

from .chat_support import move_alpha, registry, router

MSGS = [{"role": "user", "content": "hello there"}]

# The head says the status; the body after it cannot be read (cut by a close, or a gzip
# body that is not gzip).
UNREADABLE = {
    "cut": lambda status: (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 7\r\n"
        'content-length: 500\r\nconnection: close\r\n\r\n{"error": {"mess'
    ).encode(),
    "corrupt-gzip": lambda status: (
        (
            f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 7\r\n"
            "content-encoding: gzip\r\ncontent-length: 18\r\nconnection: close\r\n\r\n"
        ).encode()
        + b"\x1f\x8b\x08\x00not gzip at all!"
    ),
}


@pytest.mark.parametrize("body", list(UNREADABLE))
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "error_type", "retry_after"),
    [
        ("401 Unauthorized", "AuthError", None),
        ("429 Too Many Requests", "RetryableError", 7.0),
        ("400 Bad Request", "BadRequestError", None),
    ],
)
async def test_an_error_status_whose_body_cannot_be_read_is_still_that_status(
    body: str, stream: bool, status: str, error_type: str, retry_after: float | None
) -> None:
    # The status had been lost with the body: a "connection failed" RetryableError with no
    # status, so a 401 was retried (and its deployment not disabled), a 400 retried, and a
    # 429's Retry-After ignored.
    with RawUpstream() as raw:
        raw.push(UNREADABLE[body](status))
        async with router(raw.url, max_retries=0) as r:
            r.update(move_alpha(registry(raw.url), raw.url, "openai"))

            async def call() -> None:
                if stream:
                    async for _ in r.stream(MSGS, allow=["alpha"]):
                        pass
                else:
                    await r.chat(MSGS, allow=["alpha"])

            with pytest.raises(ProviderError) as info:
                await asyncio.wait_for(call(), 10)
    # (a 400 is the caller's to fix: raised as itself, the attempt on it)
    (a,) = [a for a in info.value.attempts if a.outcome == "error"]
    assert a.error_type == error_type, a
    assert a.status == int(status[:3]), a
    assert a.retry_after == retry_after, a
    assert "its body could not be read" in (a.error or ""), a.error
    assert len(raw.requests) == 1  # not retried by the transport either


def _whole_answer(api: str) -> dict[str, Any]:
    if api == "openai":
        return {
            "choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 300},
        }
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "whole"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 9, "output_tokens": 300},
    }


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_json_error_in_place_of_an_event_stream_says_the_error(api: str) -> None:
    # A gateway that answers a stream request 200 with {"error": ...} as JSON: read as an
    # event stream, its message was lost behind "the stream ended before [DONE]" (or
    # message_stop), and the error billed as a cut answer at an estimate.
    said = {"error": {"message": "quota exceeded for this organization"}}
    with RawUpstream() as raw:
        raw.push(http_response(json.dumps(said).encode()))
        async with router(raw.url, max_retries=0) as r:
            r.update(move_alpha(registry(raw.url), raw.url, api))
            with pytest.raises(ProviderError) as info:
                await asyncio.wait_for(_drain(r.stream(MSGS, allow=["alpha"])), 10)
    (a,) = [a for a in info.value.attempts if a.outcome == "error"]
    assert "quota exceeded for this organization" in (a.error or ""), a.error
    assert not a.cost_estimated and not a.cost_usd, a  # an error said: nothing generated


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_whole_json_answer_in_place_of_an_event_stream_is_the_answer(api: str) -> None:
    # A proxy that ignores `stream: true` and answers with the whole completion as JSON: it
    # had been refused as a malformed stream, billed at an estimate and asked again.
    with RawUpstream() as raw:
        raw.push(http_response(json.dumps(_whole_answer(api)).encode()))
        async with router(raw.url, max_retries=0) as r:
            r.update(move_alpha(registry(raw.url), raw.url, api))
            pieces: list[str] = []
            result = None
            async with asyncio.timeout(10):
                async for d in r.stream(MSGS, allow=["alpha"]):
                    pieces.append(d.text)
                    if d.done:
                        result = d.result
    assert result is not None and "".join(pieces) == "whole" == result.text
    assert result.usage.completion_tokens == 300 and result.usage.source == "provider"
    assert len(raw.requests) == 1 and [a.outcome for a in result.attempts] == ["ok"]


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


@pytest.mark.parametrize("ctype", ["application/json", "text/plain", ""])
async def test_an_event_stream_labelled_otherwise_is_still_read_as_events(ctype: str) -> None:
    # What the SDKs read as events whatever its label: read so still, as it comes.
    def event(doc: dict[str, Any]) -> bytes:
        data = b"data: " + json.dumps(doc).encode() + b"\n\n"
        return b"%x\r\n%s\r\n" % (len(data), data)

    async def send(w: asyncio.StreamWriter) -> None:
        label = f"content-type: {ctype}\r\n" if ctype else ""
        w.write(f"HTTP/1.1 200 OK\r\n{label}transfer-encoding: chunked\r\n\r\n".encode())
        w.write(event({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}))
        await w.drain()
        await asyncio.sleep(1.0)  # the first piece reaches the caller before the rest
        w.write(event({"choices": [{"index": 0, "delta": {"content": "lo"}}]}))
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        w.write(event(done) + b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
        await w.drain()

    with RawUpstream() as raw:
        raw.push(send)
        async with router(raw.url, max_retries=0) as r:
            r.update(move_alpha(registry(raw.url), raw.url, "openai"))
            seen: list[tuple[str, float]] = []
            t = asyncio.get_running_loop().time()
            async with asyncio.timeout(10):
                async for d in r.stream(MSGS, allow=["alpha"]):
                    if d.text:
                        seen.append((d.text, asyncio.get_running_loop().time() - t))
    assert "".join(s for s, _ in seen) == "Hello", seen
    assert seen[0][1] < 0.8 < seen[-1][1], seen  # as it came, not once the body was whole


_ANSWER = json.dumps(
    {"choices": [{"message": {"content": "right"}, "finish_reason": "stop"}]}
).encode()


@pytest.mark.parametrize(
    "size",
    [b"0x%x", b"+%x", b" %x", b"%x_", b"-%x", b"0_%x"],
    ids=["0x", "plus", "leading-space", "underscore", "minus", "leading-underscore"],
)
async def test_a_chunk_size_is_hex_digits_and_nothing_else(size: bytes) -> None:
    # int(..., 16) took each of these for a size (as it had taken -1, 0200 and 2_00 for a
    # status): a body framed as no HTTP/1.1 parser reads it ("-0" ended it at once).
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n"
    reply = head + b"connection: close\r\n\r\n" + size % len(_ANSWER) + b"\r\n"
    with RawUpstream() as raw:
        raw.push(reply + _ANSWER + b"\r\n0\r\n\r\n")
        async with router(raw.url, max_retries=0) as r:
            r.update(move_alpha(registry(raw.url), raw.url, "openai"))
            with pytest.raises(ProviderError) as info:
                await asyncio.wait_for(r.chat(MSGS, allow=["alpha"]), 10)
    (a,) = [a for a in info.value.attempts if a.outcome == "error"]
    assert "a chunk size that is not a number" in (a.error or ""), a.error


@pytest.mark.parametrize("size", [b"%x", b"%X", b"00%x", b"%x ", b"%x;name=value", b"%x \t;ext"])
async def test_a_chunk_size_as_the_spec_writes_it_is_read(size: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n"
    reply = head + b"connection: close\r\n\r\n" + size % len(_ANSWER) + b"\r\n"
    with RawUpstream() as raw:
        raw.push(reply + _ANSWER + b"\r\n0;last\r\n\r\n")
        async with router(raw.url, max_retries=0) as r:
            r.update(move_alpha(registry(raw.url), raw.url, "openai"))
            res = await asyncio.wait_for(r.chat(MSGS, allow=["alpha"]), 10)
    assert res.text == "right"


async def test_a_connection_switched_by_a_101_is_not_reused() -> None:
    # After a 101 Switching Protocols the connection speaks another protocol: it had gone
    # back to the pool, and the next request was written into it.
    switched = (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    )
    with RawUpstream(keep_alive=True) as raw:
        raw.push(switched, http_response(_ANSWER).replace(b"connection: close\r\n", b""))
        raw.push(http_response(_ANSWER).replace(b"connection: close\r\n", b""))
        async with router(raw.url, max_retries=0) as r:
            r.update(move_alpha(registry(raw.url), raw.url, "openai"))
            with pytest.raises(ProviderError, match="HTTP 101"):
                await asyncio.wait_for(r.chat(MSGS, allow=["alpha"]), 10)
            res = await asyncio.wait_for(r.chat(MSGS, allow=["alpha"]), 10)
    assert res.text == "right"
    assert raw.connections == 2  # the next request on a connection of its own


@pytest.mark.parametrize("body", [b"{}", b'{"a": "\r\n\r\n"}'], ids=["json", "crlf-in-body"])
async def test_a_head_of_bare_lf_lines_is_said_at_once(body: bytes) -> None:
    """A response head whose lines end in a bare LF, its connection kept open, had been
    waited on for the CRLF that never came: the whole read timeout, then "no answer in
    time" for an answer that was there. It is a protocol error, said when it comes (and
    when its body holds a CRLF CRLF, not read as the end of a garbled head)."""
    head = b"HTTP/1.1 200 OK\ncontent-type: application/json\ncontent-length: %d\n\n%s" % (
        len(body),
        body,
    )
    with RawUpstream(keep_alive=True) as raw:  # the connection stays open after it
        raw.push(head)
        async with router(raw.url, max_retries=0) as r:
            r.update(move_alpha(registry(raw.url), raw.url, "openai"))
            with pytest.raises(ProviderError) as info:
                await asyncio.wait_for(r.chat(MSGS, allow=["alpha"]), 10)
    (a,) = [a for a in info.value.attempts if a.outcome == "error"]
    assert "bare LF" in (a.error or ""), a.error
    assert a.duration_s < 2.0, a  # said at once, not after the read timeout


@pytest.mark.parametrize("error", ["upstream exploded", 42, ["upstream exploded"]])
async def test_an_anthropic_error_event_said_as_no_object_says_what_it_said(error: Any) -> None:
    """An Anthropic stream's `error` event whose `error` is not an object (a bare string)
    had been "bad stream event (AttributeError: 'str' object has no attribute 'get')",
    what the upstream said lost. It is the error event it is, its words in the message."""
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 5}}}
    body = (
        b"event: message_start\ndata: " + json.dumps(start).encode() + b"\n\n"
        b"event: error\ndata: " + json.dumps({"type": "error", "error": error}).encode()
        + b"\n\n"
    )  # fmt: skip
    with RawUpstream() as raw:
        raw.push(http_response(body, ctype="text/event-stream"))
        async with router(raw.url, max_retries=0) as r:
            r.update(move_alpha(registry(raw.url), raw.url, "anthropic"))
            with pytest.raises(ProviderError) as info:
                await asyncio.wait_for(_drain(r.stream(MSGS, allow=["alpha"])), 10)
    (a,) = [a for a in info.value.attempts if a.outcome == "error"]
    assert "error event in the stream: " in (a.error or ""), a.error
    assert str(error if not isinstance(error, list) else error[0]) in (a.error or ""), a.error
    assert "AttributeError" not in (a.error or ""), a.error
