"""Malformed and lying replies, byte for byte from a raw socket: each ends in a fallback
success or a counted usage, with every attempt recorded, never a raw Python exception."""

from __future__ import annotations

import json

import pytest

from satisfice import Registry
from satisfice.testing import LocalUpstream, RawUpstream, http_response

from .chat_support import move_alpha, registry, router

MSGS = [{"role": "user", "content": "hello there"}]


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
    # not the upstream's figures: the record says the cost is not the bill's own (it had
    # said cost_estimated false, and the report counted no estimated request)
    assert res.attempts[-1].cost_estimated and res.to_record()["cost_estimated"]


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


def sse(*events: bytes, sep: bytes = b"\n\n", bom: bool = False) -> bytes:
    body = (b"\xef\xbb\xbf" if bom else b"") + b"".join(b"data: " + e + sep for e in events)
    return http_response(body, ctype="text/event-stream")


def piece(text: str, finish: str | None = None) -> bytes:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": text},
                                    "finish_reason": finish}]}).encode()  # fmt: skip


async def _streamed(
    raw: RawUpstream, up: LocalUpstream, reply: bytes, n: int = 1
) -> tuple[str, object]:
    raw.push(*[reply] * n)
    async with router(up.url) as r:
        r.update(with_alpha_on(raw, up))
        text, res = "", None
        async with r.stream(MSGS) as s:
            async for d in s:
                text += d.text
                res = d.result if d.done else res
        return text, res


async def test_a_stream_read_as_its_spec_says(raw: RawUpstream, up: LocalUpstream) -> None:
    """A byte-order mark first hid the first event (the answer came back without it, as a
    success); CR alone ends a line as CRLF and LF do, and had failed the stream; an
    `"error": null` in a chunk is no error."""
    events = (piece("The answer "), piece("is 42.", "stop"), b"[DONE]")
    for reply in (sse(*events, bom=True), sse(*events, sep=b"\r\r"), sse(*events, sep=b"\r\n\r\n")):
        text, res = await _streamed(raw, up, reply)
        assert text == "The answer is 42." and res.model == "alpha", res.attempts  # type: ignore[attr-defined]
    nulled = json.dumps({"error": None, **json.loads(piece("ok", "stop"))}).encode()
    text, res = await _streamed(raw, up, sse(nulled, b"[DONE]"))
    assert text == "ok" and res.model == "alpha"  # type: ignore[attr-defined]


async def test_an_answer_with_nothing_in_it_falls_back(raw: RawUpstream, up: LocalUpstream) -> None:
    """A stream of `[DONE]` alone, or a message with no content, tool call, refusal or
    finish_reason, had been a successful answer of nothing, with no fallback tried."""
    text, res = await _streamed(raw, up, sse(b"[DONE]"), n=2)
    assert res.model == "beta" and text  # type: ignore[attr-defined]
    assert "without an answer" in (res.attempts[0].error or "")  # type: ignore[attr-defined]
    empty = http_response(openai_body({"role": "assistant"}, finish=None))
    raw.push(empty, empty)
    async with router(up.url) as r:
        r.update(with_alpha_on(raw, up))
        assert (await r.chat(MSGS)).model == "beta"
    # Anthropic's wire alike: no content and no stop_reason, streamed or not
    usage = {"input_tokens": 3, "output_tokens": 0}
    nothing = http_response(json.dumps({"type": "message", "content": [], "stop_reason": None,
                                        "usage": usage}).encode())  # fmt: skip
    bare = b"".join(b"event: %s\ndata: %s\n\n" % (k, json.dumps(v).encode()) for k, v in (
        (b"message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 3}}}),
        (b"message_stop", {"type": "message_stop"})))  # fmt: skip
    streamed = http_response(bare, ctype="text/event-stream")
    empty_delta = b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ""}}\n\n'  # noqa: E501
    stop = b"event: message_stop"
    with_empty = http_response(bare.replace(stop, empty_delta + stop), ctype="text/event-stream")
    raw.push(nothing, nothing, streamed, streamed, with_empty, with_empty)
    async with router(up.url) as r:
        r.update(with_alpha_on(raw, up, "anthropic"))
        assert (await r.chat(MSGS)).model == "beta"
        for _ in range(2):  # and with an empty text_delta, which had counted as an answer
            async with r.stream(MSGS) as s:
                out = [d async for d in s]
            assert out[-1].result.model == "beta"


async def test_a_key_split_across_stream_events_is_not_kept_in_raw(
    raw: RawUpstream, up: LocalUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each event is scrubbed on its own, so a key split across two kept its tail in the
    last event, which was the answer's `raw`."""
    key = "sk-canary-" + "7f3a9c" * 6
    monkeypatch.setenv("SATISFICE_CANARY_KEY", key)
    reg = with_alpha_on(raw, up)
    alpha = reg["alpha"]
    reg = reg.replace(alpha.replace(deployments=(
        alpha.deployments[0].replace(api_key_env="SATISFICE_CANARY_KEY"),)))  # fmt: skip
    raw.push(sse(piece("your key: " + key[:7]), piece(key[7:] + " .", "stop"), b"[DONE]"))
    async with router(up.url) as r:
        r.update(reg)
        async with r.stream(MSGS) as s:
            out = [d async for d in s]
    res = out[-1].result
    assert res.model == "alpha" and "[redacted]" in res.text, res.attempts
    assert key[7:20] not in res.text and key[7:20] not in json.dumps(res.raw)


async def test_n_above_one_is_refused(up: LocalUpstream) -> None:
    """extra={"n": 2}: a stream ran both answers' pieces into one text."""
    from satisfice import ConfigError

    async with router(up.url) as r:
        with pytest.raises(ConfigError, match="n=2"):
            await r.chat(MSGS, extra={"n": 2})
        with pytest.raises(ConfigError, match="n=2"):
            async with r.stream(MSGS, extra={"n": 2}) as s:
                [p async for p in s]


async def test_no_first_text_within_the_idle_timeout_names_that_limit(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    """The idle timeout fired, and the error blamed the attempt's budget (600 s by default),
    the setting a user would then raise in vain."""
    import asyncio

    async def comments(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")  # fmt: skip
        for _ in range(15):
            writer.write(b"3\r\n:\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)

    raw.push(comments)
    async with router(up.url, stream_idle_timeout_s=0.5) as r:
        r.update(with_alpha_on(raw, up))
        async with r.stream(MSGS) as s:
            out = [d async for d in s]
    res = out[-1].result
    assert res.model == "beta"
    assert "stream_idle_timeout_s" in (res.attempts[0].error or ""), res.attempts[0].error


async def test_a_reported_usage_past_what_the_call_allowed_is_counted_instead(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    """A 2-token prompt sent with max_tokens=16 reported as 50M prompt and 9M completion
    tokens was billed as is: $285, under a cap of $0.01 as well."""
    for big in ({"prompt_tokens": 50_000_000, "completion_tokens": 2},
                {"prompt_tokens": 9, "completion_tokens": 9_000}):  # fmt: skip
        lying = http_response(openai_body({"content": "hi"}, usage=big))
        raw.push(lying)
        async with router(up.url) as r:
            r.update(with_alpha_on(raw, up))
            res = await r.chat(MSGS, max_tokens=16)
        assert res.model == "alpha" and res.usage is not None
        assert res.usage.prompt_tokens < 100 and res.usage.completion_tokens <= 16
        assert res.usage.source != "provider" and (res.cost_usd or 0) < 0.001
    # a limit in extra replaces max_tokens on the wire: what it let the call write is real
    raw.push(http_response(openai_body({"content": "hi"}, usage={
        "prompt_tokens": 50, "completion_tokens": 300})))  # fmt: skip
    async with router(up.url) as r:
        r.update(with_alpha_on(raw, up))
        res = await r.chat(MSGS, max_tokens=16, extra={"max_tokens": 500})
    assert res.usage is not None and res.usage.source == "provider"
    assert res.usage.completion_tokens == 300
    # a limit in extra is not cut to the model's max_output, as the wire does not cut it;
    # with no limit sent at all, the model's max_output bounds what it could write (the
    # usual call had trusted any figure)
    for kw, said, kept in (({"max_tokens": 16, "extra": {"max_tokens": 8000}}, 6000, True),
                           ({}, 9_000_000, False)):  # fmt: skip
        raw.push(http_response(openai_body({"content": "hi"}, usage={
            "prompt_tokens": 9, "completion_tokens": said})))  # fmt: skip
        async with router(up.url) as r:
            r.update(with_alpha_on(raw, up))
            res = await r.chat(MSGS, **kw)  # type: ignore[arg-type]
        assert res.usage is not None and (res.usage.source == "provider") is kept, kw
    # a limit in extra that is no integer >= 1 is refused: -1 had been billed as -1 tokens,
    # a float cut from the wire under a cap, a string switched the check off
    from satisfice import ConfigError

    async with router(up.url) as r:
        for bad in (-1, 0, 16.5, "16", True, None):
            with pytest.raises(ConfigError, match="extra max_tokens must be an integer"):
                await r.chat(MSGS, extra={"max_tokens": bad})
    # a numpy integer is taken, as numbers are everywhere else (it had been refused as no
    # JSON), and sent as the number it holds
    import numpy as np

    raw.push(http_response(openai_body({"content": "hi"})))
    async with router(up.url) as r:
        r.update(with_alpha_on(raw, up))
        res = await r.chat(MSGS, extra={"max_tokens": np.int64(40), "top_p": np.float32(0.5)})
    assert res.model == "alpha"
    assert b'"max_tokens":40' in raw.requests[-1] and b'"top_p":0.5' in raw.requests[-1]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_surrogate_pair_split_between_two_stream_events_is_one_character(
    raw: RawUpstream, up: LocalUpstream, api: str
) -> None:
    """`"\\ud83d"` in one event and `"\\ude00"` in the next each became U+FFFD: the emoji
    came out as two replacement characters. Half a pair left alone at the end still is."""
    if api == "openai":
        events = [b'data: {"choices":[{"index":0,"delta":{"content":"' + t + b'"},'
                  b'"finish_reason":' + f + b"}]}\n\n"
                  for t, f in ((b"a\\ud83d", b"null"),
                               (b"\\ude00b\\ud83d", b'"stop"'))]  # fmt: skip
        events.append(b"data: [DONE]\n\n")
    else:

        def ev(kind: bytes, doc: dict[str, object]) -> bytes:
            return b"event: " + kind + b"\ndata: " + json.dumps(doc).encode() + b"\n\n"

        def text(t: str) -> bytes:
            return ev(b"content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": "X"}}
                      ).replace(b'"X"', t.encode())  # fmt: skip

        events = [
            ev(
                b"message_start",
                {"type": "message_start", "message": {"usage": {"input_tokens": 3}}},
            ),
            ev(
                b"content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            text('"a\\ud83d"'),
            text('"\\ude00b\\ud83d"'),
            ev(b"content_block_stop", {"type": "content_block_stop", "index": 0}),
            ev(
                b"message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": 4},
                },
            ),
            ev(b"message_stop", {"type": "message_stop"}),
        ]
    raw.push(http_response(b"".join(events), ctype="text/event-stream"))
    async with router(up.url) as r:
        r.update(with_alpha_on(raw, up, api))
        async with r.stream(MSGS) as s:
            out = [d async for d in s]
    res = out[-1].result
    assert res.model == "alpha", res.attempts
    assert "".join(d.text for d in out) == res.text == "a\U0001f600b\ufffd"


async def test_a_flood_of_buffered_events_lets_the_loop_run() -> None:
    """Pieces already buffered are read without a wait: 8 MB of comments and empty events
    held the event loop, every other request on it, for up to a second. The reader now
    yields every 64 KB; counted here in turns of the loop, not in time."""
    import asyncio

    import httpx

    from satisfice.providers.base import sse_events

    class Buffered(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            for _ in range(128):  # 8 MB in 64 KB pieces, none of them awaited
                yield b": keep-alive\n\n" * 4681
            yield b'data: {"x": 1}\n\n'

    turns = 0

    async def tick() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0)
    before = turns
    events = [e async for e in sse_events(httpx.Response(200, stream=Buffered()))]
    ticker.cancel()
    assert events == [("", '{"x": 1}')] and turns - before >= 64, turns - before


async def test_split_pairs_in_tool_arguments_and_a_half_held_at_a_cut(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    """Tool-call arguments and refusals had kept the two U+FFFD; a high half held when the
    stream then broke had vanished from the text delivered and billed."""
    from satisfice.errors import StreamInterruptedError

    def tool(args: bytes, finish: bytes = b"null") -> bytes:
        return (b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1",'
                b'"function":{"name":"f","arguments":"' + args + b'"}}]},"finish_reason":'
                + finish + b"}]}\n\n")  # fmt: skip

    body = (
        tool(b'{\\"q\\": \\"\\ud83d') + tool(b'\\ude00\\"}', b'"tool_calls"') + b"data: [DONE]\n\n"
    )
    raw.push(http_response(body, ctype="text/event-stream"))
    async with router(up.url) as r:
        r.update(with_alpha_on(raw, up))
        async with r.stream(MSGS) as s:
            out = [d async for d in s]
    assert out[-1].result.tool_calls[0].arguments == '{"q": "\U0001f600"}'
    cut = (b'data: {"choices":[{"index":0,"delta":{"content":"ab\\ud83d"},"finish_reason":null}]}'
           b'\n\ndata: {"error": {"message": "boom", "type": "server_error"}}\n\n')  # fmt: skip
    raw.push(*[http_response(cut, ctype="text/event-stream")] * 3)
    async with router(up.url, max_retries=0) as r:
        r.update(with_alpha_on(raw, up))
        got = ""
        with pytest.raises(StreamInterruptedError) as e:
            async with r.stream(MSGS) as s:
                async for d in s:
                    got += d.text
    assert got == e.value.partial_text == "ab\ufffd"
    assert e.value.attempts[0].status is None  # an event after a 200: not an HTTP status
    assert "error event in the stream: boom" in e.value.attempts[0].error
    assert "HTTP 500" not in str(e.value)
