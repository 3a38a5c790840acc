"""What JSON escapes hide until decoded. A key the upstream echoes in escapes (\\u0041, or \\/
in a base64 key) is whole only once decoded: it must be scrubbed after decoding, in bodies and
in stream events, and before any message is cut to a length (a cut key no longer matches the
scrub). Half a surrogate pair (\\ud800) decodes to a str no UTF-8 writer accepts: it becomes
U+FFFD, as invalid UTF-8 bytes do."""

from __future__ import annotations

import json

import pytest

from satisfice import Policy, Registry, Router
from satisfice.testing import RawUpstream, http_response

KEY = "sk-canary-" + "7f3a9c" * 6
ESC = "".join(f"\\u{ord(c):04x}" for c in KEY)  # the key, every character escaped


def registry(url: str, api: str, env: str) -> Registry:
    return Registry.from_dict({"model": [{
        "id": "m", "provider": api, "context_window": 8000, "max_output": 1000,
        "tokenizer": "o200k_base", "price": {"input": 1.0, "output": 2.0},
        "deployments": [{"name": "d", "api": api, "api_key_env": env, "model": "m",
                         "base_url": url + ("/v1" if api == "openai" else "")}],
    }]})  # fmt: skip


def router(url: str, api: str, env: str) -> Router:
    return Router(registry(url, api, env), Policy(quality_floor=0.0))


def sse(*events: bytes) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    return head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


STREAMS = {
    "openai": sse(
        b'data: {"choices":[{"index":0,"delta":{"content":"hello"},"finish_reason":"stop"}]}\n\n',
        b'data: {"choices":[],"echo":"' + ESC.encode() + b'","usage":'
        b'{"prompt_tokens":1,"completion_tokens":1}}\n\n',
        b"data: [DONE]\n\n",
    ),
    "anthropic": sse(
        b'event: message_start\ndata: {"type":"message_start","message":'
        b'{"usage":{"input_tokens":1}}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"hi"}}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
        b'"end_turn"},"usage":{"output_tokens":1}}\n\n',
        b'event: message_stop\ndata: {"type":"message_stop","echo":"' + ESC.encode() + b'"}\n\n',
    ),
}


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_escaped_key_in_a_stream_event_is_scrubbed(
    api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SATISFICE_ESC_KEY", KEY)
    with RawUpstream() as raw:
        raw.push(STREAMS[api])
        async with router(raw.url, api, "SATISFICE_ESC_KEY") as r:
            res = await r.stream("hi", timeout=5).result()
    assert KEY not in str(res.raw) and "[redacted]" in str(res.raw)


async def test_slash_escaped_base64_key_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "AbCdEf/GhIjKl+MnOpQr/StUvWx0123=="
    monkeypatch.setenv("SATISFICE_SLASH_KEY", key)
    body = json.dumps({
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "you sent " + key}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3},
    }).replace("/", "\\/")  # fmt: skip
    with RawUpstream() as raw:
        raw.push(http_response(body.encode()))
        async with router(raw.url, "openai", "SATISFICE_SLASH_KEY") as r:
            res = await r.chat("hi", timeout=5)
    assert f"Bearer {key}" in raw.requests[0].decode(errors="replace")  # it was sent
    assert key not in res.text and key not in str(res.raw)
    assert res.text == "you sent [redacted]"


CUT = [
    ("500 body, key past the 300-character cut", "openai", False,
     http_response(('{"error":{"message":"' + "x" * 258 + ESC + '"}}').encode(),
                   status="500 Internal Server Error")),
    ("400 body, key past the cut", "openai", False,
     http_response(('{"error":{"message":"' + "x" * 258 + ESC + '"}}').encode(),
                   status="400 Bad Request")),
    ("stream tool_calls index holding the key", "openai", True,
     sse(b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":"' + ESC.encode()
         + b'"}]}}]}\n\n')),
    ("anthropic stream error event", "anthropic", True,
     sse(b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"'
         + b"y" * 258 + ESC.encode() + b'"}}\n\n')),
]  # fmt: skip


@pytest.mark.parametrize(("what", "api", "stream", "answer"), CUT, ids=[c[0] for c in CUT])
async def test_no_part_of_a_key_survives_a_cut_message(
    what: str, api: str, stream: bool, answer: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SATISFICE_ESC_KEY", KEY)
    with RawUpstream() as raw:
        raw.push(answer)
        async with router(raw.url, api, "SATISFICE_ESC_KEY") as r:
            with pytest.raises(Exception) as e:
                await (r.stream("hi", timeout=5).result() if stream else r.chat("hi", timeout=5))
            health = json.dumps(r.health())
    attempts = json.dumps([a.to_dict() for a in getattr(e.value, "attempts", [])])
    body = str(getattr(e.value, "body", ""))
    text = " ".join([str(e.value), repr(e.value), body, attempts, health])
    assert KEY[:12] not in text, what


@pytest.mark.parametrize("stream", [False, True])
async def test_a_lone_surrogate_in_an_answer_becomes_a_replacement_char(
    stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SATISFICE_ESC_KEY", KEY)
    if stream:
        answer = sse(
            b'data: {"choices":[{"index":0,"delta":{"content":"a\\ud800b \\ud83d\\ude00"}}]}\n\n',
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
            b"data: [DONE]\n\n",
        )
    else:
        answer = http_response(
            b'{"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant",'
            b'"content":"a\\ud800b \\ud83d\\ude00"}}]}'
        )
    with RawUpstream() as raw:
        raw.push(answer)
        async with router(raw.url, "openai", "SATISFICE_ESC_KEY") as r:
            res = await (r.stream("hi", timeout=5).result() if stream else r.chat("hi", timeout=5))
    assert res.text == "a\ufffdb \U0001f600"  # the pair decodes; the lone half does not
    res.text.encode("utf-8")


def test_a_lone_surrogate_in_raw_utf8_is_replaced_too() -> None:
    """json.loads(bytes) passes a surrogate's raw UTF-8 form (ED A0 80) through."""
    from satisfice.providers.base import parse_json

    assert parse_json(b'{"a":"x\xed\xa0\x80y","b":"\xed\x9f\xbf"}') == {
        "a": "x\ufffdy",
        "b": "\ud7ff",
    }


# -- the stream scrubber, piece by piece -----------------------------------------------------

SLASHED = "AKIAtest/Secret+Key0123"  # a key with a "/", which JSON may write as \/


def _streamed(text: str, width: int) -> str:
    from satisfice._redact import StreamScrubber

    s = StreamScrubber()
    out = [s.feed(text[i : i + width]) for i in range(0, len(text), width)]
    return "".join(out) + s.flush()


@pytest.mark.parametrize("width", [1, 3, 100])
def test_the_stream_scrubber_reads_every_escape_a_key_may_hide_behind(width: int) -> None:
    """A key written with \\/ went out whole (only \\uXXXX was read); an escaped backslash
    before "u0073..." was read as an escape and redacted into invalid JSON; an emoji's
    escapes beside a key came back as raw lone surrogates, which no UTF-8 writer takes."""
    from satisfice._redact import register

    register(KEY)
    register(SLASHED)
    slashed = json.dumps({"k": SLASHED}).replace("/", "\\/")
    assert json.loads(_streamed(slashed, width)) == {"k": "[redacted]"}
    not_a_key = '{"k": "\\\\' + ESC[1:] + '"}'  # a backslash, then the text "u0073k-..."
    assert _streamed(not_a_key, width) == not_a_key
    emoji = '{"k": "\\ud83d\\ude00' + ESC + '"}'
    out = _streamed(emoji, width)
    out.encode("utf-8")  # no lone surrogate
    assert json.loads(out) == {"k": "\U0001f600[redacted]"}


def test_the_stream_scrubber_holds_only_what_may_start_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Text of escapes that read as no key's start was held whole, as far back as a key's
    escaped length, and read again with every piece: 250 KB in 4-character pieces took
    seconds. Now only an escape cut off at a piece's end is held. (With this key alone
    registered: a key another test registers may rightly start where this text ends, a
    base64 spelling beginning "1" at an escape's last character.)"""
    from satisfice import _redact
    from satisfice._redact import StreamScrubber, register

    for name in ("_secrets", "_folded", "_folded_b", "_exact", "_exact_b", "_spellings"):
        monkeypatch.setattr(_redact, name, None if name == "_spellings" else ())
    register(KEY)
    s = StreamScrubber()
    text = "\\u0021" * 2000  # "!": the start of no spelling of the key (base64's included)
    for i in range(0, len(text), 4):
        s.feed(text[i : i + 4])
        assert len(s._held) < 6
