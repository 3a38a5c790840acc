"""What clients see of an upstream's answer, and what it is billed: usage that leaves out the
output count, a stream cut after its 200 head, prompt-cache writes in OpenAI-format usage, a
key hidden in JSON behind an escape, tool arguments that are not an object, JSON mode cut by
max_tokens, /v1/messages errors, streamed tool calls without an index, refusals."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from satisfice import Policy, Registry, Router
from satisfice.errors import AllAttemptsFailedError
from satisfice.executor import ExecutionConfig
from satisfice.server import ServerConfig
from satisfice.testing import RawUpstream, http_response

from .server_support import running

KEY = "sk-round15-" + "4c2e8a" * 6
ENV = "SATISFICE_ROUND15_KEY"
PRICE = {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75}
U = [{"role": "user", "content": "hello"}]
ANTHROPIC_ERRORS = {
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "request_too_large", "rate_limit_error", "api_error", "overloaded_error", "timeout_error",
}  # fmt: skip


def registry(url: str) -> Registry:
    """`oa` answers in OpenAI's format, `an` in Anthropic's, both from `url`."""
    return Registry.from_dict({"model": [{
        "id": mid, "provider": api, "context_window": 100_000, "max_output": 4000,
        "tokenizer": "o200k_base" if api == "openai" else "claude", "price": PRICE,
        "capabilities": ["json", "tools", "streaming", "system_prompt"],
        "quality": {"general": 0.9},
        "deployments": [{"name": f"{mid}-dep", "api": api, "api_key_env": ENV, "model": "w",
                         "base_url": url + ("/v1" if api == "openai" else "")}],
    } for mid, api in (("oa", "openai"), ("an", "anthropic"))]})  # fmt: skip


def router(url: str) -> Router:
    return Router(registry(url), Policy(quality_floor=0.5, max_fallbacks=0))


@pytest.fixture(scope="module")
def raw() -> Iterator[RawUpstream]:
    os.environ[ENV] = KEY
    try:
        with RawUpstream(keep_alive=True) as r:
            yield r
    finally:
        del os.environ[ENV]


@pytest.fixture(scope="module")
def url(raw: RawUpstream) -> Iterator[str]:
    with running(ServerConfig(), router(raw.url)) as (base, _app):
        yield base


@pytest.fixture
def oa(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=20) as c:
        yield c


@pytest.fixture
def an(url: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=20) as c:
        yield c


def sse(*events: bytes) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    return head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


def oa_chunk(delta: dict[str, Any] | None, finish: str | None = None, **more: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + json.dumps({"choices": choices, **more}).encode() + b"\n\n"


def oa_body(message: dict[str, Any], usage: dict[str, Any], finish: str = "stop") -> bytes:
    return http_response(json.dumps({
        "id": "c", "object": "chat.completion", "created": 1, "model": "w",
        "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": None, **message}}],
        "usage": usage,
    }).encode())  # fmt: skip


def oa_tool_call(arguments: str) -> bytes:
    call = {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": arguments}}
    usage = {"prompt_tokens": 5, "completion_tokens": 5}
    return oa_body({"tool_calls": [call]}, usage, "tool_calls")


def an_event(kind: str, **data: Any) -> bytes:
    return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, **data}).encode() + b"\n\n"


def an_stream(blocks: list[bytes], stop: str) -> bytes:
    start = {"role": "assistant", "content": [], "usage": {"input_tokens": 10, "output_tokens": 1}}
    return sse(
        an_event("message_start", message=start),
        *blocks,
        an_event("message_delta", delta={"stop_reason": stop}, usage={"output_tokens": 5}),
        an_event("message_stop"),
    )


def an_tool_use(name: str, *partial_json: str) -> list[bytes]:
    block = {"type": "tool_use", "id": "tu_1", "name": name, "input": {}}
    return [
        an_event("content_block_start", index=0, content_block=block),
        *(
            an_event("content_block_delta", index=0,
                     delta={"type": "input_json_delta", "partial_json": p})
            for p in partial_json
        ),
        an_event("content_block_stop", index=0),
    ]  # fmt: skip


def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=20)


# -- money ----------------------------------------------------------------------------------

ANSWER = "word " * 400
NO_OUTPUT_COUNT = {
    "oa": oa_body({"content": ANSWER}, {"prompt_tokens": 10, "total_tokens": 410}),
    "an": http_response(
        json.dumps(
            {
                "type": "message",
                "role": "assistant",
                "stop_reason": "end_turn",
                "content": [{"type": "text", "text": ANSWER}],
                "usage": {"input_tokens": 10},
            }
        ).encode()
    ),
}


@pytest.mark.parametrize("model", ["oa", "an"])
def test_usage_without_an_output_count_is_counted_not_free(
    raw: RawUpstream, url: str, model: str
) -> None:
    """A missing completion_tokens (output_tokens) read as 0: the answer's ~400 tokens were
    billed as free and the client told completion_tokens 0."""
    raw.push(NO_OUTPUT_COUNT[model])
    r = post(url, "/v1/chat/completions", {"model": model, "messages": U})
    assert r.json()["usage"]["completion_tokens"] >= 300
    assert float(r.headers["x-satisfice-cost-usd"]) >= 300 * 15.0 / 1e6


def _cut_stream(model: str) -> Any:
    async def reply(w: asyncio.StreamWriter) -> None:
        if model == "an":
            start = {"role": "assistant", "content": [], "usage": {"input_tokens": 2000}}
            event = an_event("message_start", message=start)
        else:
            event = oa_chunk({"role": "assistant", "content": ""})
        w.write(sse(event)[: -len(b"0\r\n\r\n")])  # the 200 head and one event, no end
        await w.drain()
        await asyncio.sleep(0.05)
        w.transport.abort()  # the upstream dies before the answer's first text

    return reply


@pytest.mark.parametrize("model", ["oa", "an"])
async def test_a_stream_cut_after_its_200_head_is_billed_as_its_twin(
    raw: RawUpstream, model: str
) -> None:
    """The stream's transport error had no `answered`: recorded at $0 where the same cut
    of a non-streamed answer is billed at the prompt's estimate."""
    raw.push(_cut_stream(model))
    async with router(raw.url).configure(execution=ExecutionConfig(max_retries=0)) as r:
        with pytest.raises(AllAttemptsFailedError) as e:
            await r.stream(U, allow=[model], timeout=10).result()
    (attempt,) = e.value.attempts
    assert attempt.cost_estimated and attempt.cost_usd is not None and attempt.cost_usd > 0


def test_cache_writes_in_openai_usage_are_billed_and_reported(raw: RawUpstream, url: str) -> None:
    """prompt_tokens_details.cache_write_tokens was billed at the input rate, and never told."""
    usage = {
        "prompt_tokens": 10_000,
        "completion_tokens": 100,
        "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 9000},
    }
    raw.push(oa_body({"content": "hi"}, usage))
    r = post(url, "/v1/chat/completions", {"model": "oa", "messages": U})
    expected = (1000 * 3.0 + 9000 * 3.75 + 100 * 15.0) / 1e6
    assert float(r.headers["x-satisfice-cost-usd"]) == pytest.approx(expected)
    assert r.json()["usage"]["prompt_tokens_details"]["cache_write_tokens"] == 9000


# -- secrets ---------------------------------------------------------------------------------

# the key with one character escaped, as any JSON string may write it
ESCAPED = KEY[:5] + f"\\u{ord(KEY[5]):04x}" + KEY[6:]


def test_a_key_escaped_in_tool_arguments_is_scrubbed(
    raw: RawUpstream, oa: openai.OpenAI, an: anthropic.Anthropic
) -> None:
    """Arguments are JSON decoded by the client (or by /v1/messages): the escaped key was
    whole there."""
    arguments = '{"k": "' + ESCAPED + '"}'
    tools = [{"type": "function", "function": {"name": "get"}}]
    raw.push(oa_tool_call(arguments))
    r = oa.chat.completions.create(model="oa", messages=U, tools=tools)
    calls = r.choices[0].message.tool_calls
    assert calls and json.loads(calls[0].function.arguments) == {"k": "[redacted]"}
    raw.push(oa_tool_call(arguments))
    m = an.messages.create(
        model="oa", max_tokens=50, messages=U, tools=[{"name": "get", "input_schema": {}}]
    )
    assert [b.input for b in m.content if b.type == "tool_use"] == [{"k": "[redacted]"}]


async def test_a_key_escaped_in_tool_arguments_is_not_left_in_raw(raw: RawUpstream) -> None:
    """ChatResult.raw (the upstream's JSON, for Python callers) kept the arguments string
    with the escaped key, whole once a caller decoded it."""
    raw.push(oa_tool_call('{"k": "' + ESCAPED + '"}'))
    tools = [{"type": "function", "function": {"name": "get"}}]
    async with router(raw.url) as r:
        res = await r.chat(U, allow=("oa",), tools=tools)
    assert res.tool_calls and json.loads(res.tool_calls[0].arguments) == {"k": "[redacted]"}
    assert KEY not in json.dumps(res.raw, ensure_ascii=False)
    args = res.raw["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert KEY not in json.dumps(json.loads(args), ensure_ascii=False)


def test_a_key_escaped_in_a_json_answer_is_scrubbed(raw: RawUpstream, oa: openai.OpenAI) -> None:
    raw.push(
        oa_body(
            {"content": '{"k": "' + ESCAPED + '"}'}, {"prompt_tokens": 5, "completion_tokens": 5}
        )
    )
    r = oa.chat.completions.create(model="oa", messages=U, response_format={"type": "json_object"})
    assert json.loads(r.choices[0].message.content or "") == {"k": "[redacted]"}


@pytest.mark.parametrize("width", [1, 4, 9])
def test_a_key_escaped_in_a_streamed_json_answer_is_scrubbed(
    raw: RawUpstream, oa: openai.OpenAI, width: int
) -> None:
    """A streamed answer's pieces went out as they came: only the whole answer was
    JSON-decoded for scrubbing, after its pieces (the key spelled with escapes, split
    across them) had reached the caller."""
    hidden = "".join(f"\\u{ord(c):04x}" for c in KEY)
    text = '{"k": "' + hidden + '", "n": "' + ESCAPED + ' and more"}'
    pieces = [text[i : i + width] for i in range(0, len(text), width)]
    raw.push(
        sse(
            *(oa_chunk({"content": p}) for p in pieces),
            oa_chunk({}, "stop"),
            oa_chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 50}),
        )
    )
    got = "".join(
        c.choices[0].delta.content or ""
        for c in oa.chat.completions.create(
            model="oa", messages=U, response_format={"type": "json_object"}, stream=True
        )
        if c.choices
    )
    assert json.loads(got) == {"k": "[redacted]", "n": "[redacted] and more"}


# -- fidelity --------------------------------------------------------------------------------


@pytest.mark.parametrize("arguments", ["not json", "[1, 2]", '"text"', '{"city": "Os'])
def test_tool_arguments_not_an_object_reach_anthropic_clients_as_one(
    raw: RawUpstream, an: anthropic.Anthropic, arguments: str
) -> None:
    """tool_use.input is an object: other arguments are kept whole as {"_raw": ...}, the
    same streamed (where the SDK raised on invalid JSON) and not."""
    tools: Any = [{"name": "get", "input_schema": {"type": "object"}}]
    raw.push(
        sse(
            oa_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                      "function": {"name": "get", "arguments": arguments}}]}),
            oa_chunk({}, "tool_calls"),
            oa_chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 5}),
            b"data: [DONE]\n\n",
        )
    )  # fmt: skip
    with an.messages.stream(model="oa", max_tokens=50, messages=U, tools=tools) as s:
        streamed = s.get_final_message()
    raw.push(oa_tool_call(arguments))
    plain = an.messages.create(model="oa", max_tokens=50, messages=U, tools=tools)
    for m in (streamed, plain):
        assert [b.input for b in m.content if b.type == "tool_use"] == [{"_raw": arguments}]


def test_an_empty_tool_input_streams_as_an_empty_object(
    raw: RawUpstream, oa: openai.OpenAI
) -> None:
    """A tool_use with input {} streams no JSON: the OpenAI client got arguments ""."""
    raw.push(an_stream(an_tool_use("now", ""), "tool_use"))
    tools: Any = [{"type": "function", "function": {"name": "now"}}]
    args = ""
    for ch in oa.chat.completions.create(model="an", messages=U, tools=tools, stream=True):
        for tc in ch.choices[0].delta.tool_calls or () if ch.choices else ():
            args += (tc.function and tc.function.arguments) or ""
    assert args == "{}"


def test_json_mode_cut_by_max_tokens_says_length(raw: RawUpstream, oa: openai.OpenAI) -> None:
    """response_format on an Anthropic upstream is a forced tool; its "max_tokens" stop was
    overwritten with "stop", so a cut JSON answer looked whole."""
    fmt: Any = {"type": "json_object"}
    raw.push(an_stream(an_tool_use("satisfice_json_answer", '{"answer": "the qu'), "max_tokens"))
    finish = None
    for ch in oa.chat.completions.create(model="an", messages=U, response_format=fmt, stream=True):
        finish = (ch.choices[0].finish_reason if ch.choices else None) or finish
    raw.push(http_response(json.dumps({
        "type": "message", "role": "assistant", "stop_reason": "max_tokens",
        "content": [{"type": "tool_use", "id": "t", "name": "satisfice_json_answer", "input": {}}],
        "usage": {"input_tokens": 10, "output_tokens": 20},
    }).encode()))  # fmt: skip
    plain = oa.chat.completions.create(model="an", messages=U, response_format=fmt)
    assert (finish, plain.choices[0].finish_reason) == ("length", "length")


def test_streamed_tool_calls_without_an_index_are_kept_apart(
    raw: RawUpstream, oa: openai.OpenAI
) -> None:
    """Upstreams that stream each call whole send no index: both read as index 0, merged."""

    def call(cid: str, city: str) -> dict[str, Any]:
        args = json.dumps({"city": city})
        return {"id": cid, "type": "function", "function": {"name": "get", "arguments": args}}

    raw.push(
        sse(
            oa_chunk({"role": "assistant", "tool_calls": [call("call_a", "Oslo")]}),
            oa_chunk({"tool_calls": [call("call_b", "Rome")]}),
            oa_chunk({}, "tool_calls"),
            b"data: [DONE]\n\n",
        )
    )
    tools: Any = [{"type": "function", "function": {"name": "get"}}]
    calls = {}
    for ch in oa.chat.completions.create(model="oa", messages=U, tools=tools, stream=True):
        for tc in ch.choices[0].delta.tool_calls or () if ch.choices else ():
            assert tc.function is not None
            calls[tc.index] = (tc.id, tc.function.arguments)
    assert calls == {0: ("call_a", '{"city": "Oslo"}'), 1: ("call_b", '{"city": "Rome"}')}


def test_a_custom_tool_call_reaches_openai_clients(raw: RawUpstream, oa: openai.OpenAI) -> None:
    # OpenAI's custom tools answer with free text under custom.input: the answer had been
    # refused as malformed (no "function"), the request failing on every model
    call = {"id": "call_c", "type": "custom", "custom": {"name": "shell", "input": "ls -la /"}}
    usage = {"prompt_tokens": 5, "completion_tokens": 5}
    tools: Any = [{"type": "custom", "custom": {"name": "shell"}}]
    raw.push(oa_body({"tool_calls": [call]}, usage, "tool_calls"))
    got = oa.chat.completions.create(model="oa", messages=U, tools=tools)
    (tc,) = got.choices[0].message.tool_calls or ()
    assert tc.type == "custom" and (tc.id, tc.custom.name, tc.custom.input) == (
        "call_c", "shell", "ls -la /"
    )  # fmt: skip
    assert got.choices[0].finish_reason == "tool_calls"
    # streamed: its input in pieces
    pieces = [{"index": 0, "id": "call_c", "type": "custom",
               "custom": {"name": "shell", "input": "ls "}},
              {"index": 0, "custom": {"input": "-la /"}}]  # fmt: skip
    raw.push(
        sse(
            oa_chunk({"role": "assistant", "tool_calls": pieces[:1]}),
            oa_chunk({"tool_calls": pieces[1:]}),
            oa_chunk({}, "tool_calls"),
            b"data: [DONE]\n\n",
        )
    )
    seen = [
        tc.model_dump(exclude_none=True)
        for ch in oa.chat.completions.create(model="oa", messages=U, tools=tools, stream=True)
        for tc in (ch.choices[0].delta.tool_calls or () if ch.choices else ())
    ]
    assert seen == [{"index": 0, "id": "call_c", "type": "custom",
                     "custom": {"name": "shell", "input": "ls -la /"}}]  # fmt: skip


async def test_a_function_call_delta_with_custom_null_stays_a_function_call(
    raw: RawUpstream,
) -> None:
    # a server writing out every optional field sends "custom": null beside a function:
    # streamed, it had come out as a custom call with no name and no input
    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get", "arguments": '{"city":'},
        "custom": None,
    }
    more = {"index": 0, "function": {"arguments": ' "Oslo"}'}, "custom": None}
    raw.push(sse(oa_chunk({"tool_calls": [first]}), oa_chunk({"tool_calls": [more]}),
                 oa_chunk({}, "tool_calls"), b"data: [DONE]\n\n"))  # fmt: skip
    # a custom call named by its object alone, unstreamed
    call = {"id": "call_2", "custom": {"name": "shell", "input": "ls"}, "function": None}
    raw.push(oa_body({"tool_calls": [call]}, {"prompt_tokens": 5, "completion_tokens": 5}))
    async with router(raw.url) as r:
        streamed = await r.stream("hi", allow=["oa"], timeout=5).result()
        whole = await r.chat("hi", allow=["oa"], timeout=5)
    (s,) = streamed.tool_calls
    assert (s.type, s.name, s.arguments) == ("function", "get", '{"city": "Oslo"}')
    (w,) = whole.tool_calls
    assert (w.type, w.name, w.arguments) == ("custom", "shell", "ls")


REFUSAL = "I can't help with that."


def test_a_refusal_reaches_openai_and_anthropic_clients(
    raw: RawUpstream, oa: openai.OpenAI, an: anthropic.Anthropic
) -> None:
    """message.refusal (delta.refusal) was dropped: an empty answer, "stop"/"end_turn"."""
    usage = {"prompt_tokens": 5, "completion_tokens": 6}
    raw.push(oa_body({"refusal": REFUSAL}, usage))
    m = oa.chat.completions.create(model="oa", messages=U).choices[0].message
    assert (m.content, m.refusal) == (None, REFUSAL)
    raw.push(
        sse(
            oa_chunk({"role": "assistant", "content": None, "refusal": ""}),
            oa_chunk({"refusal": REFUSAL[:5]}),
            oa_chunk({"refusal": REFUSAL[5:]}, "stop"),
            oa_chunk(None, usage=usage),
            b"data: [DONE]\n\n",
        )
    )
    refusal = ""
    for ch in oa.chat.completions.create(model="oa", messages=U, stream=True):
        refusal += (ch.choices[0].delta.refusal if ch.choices else None) or ""
    assert refusal == REFUSAL
    raw.push(oa_body({"refusal": REFUSAL}, usage))
    a = an.messages.create(model="oa", max_tokens=50, messages=U)
    assert a.stop_reason == "refusal"
    assert [b.text for b in a.content if b.type == "text"] == [REFUSAL]


# -- /v1/messages errors ---------------------------------------------------------------------


def _anthropic_error(body: Any, kind: str) -> dict[str, Any]:
    assert body["type"] == "error" and body["error"]["type"] == kind, body
    assert body["error"]["message"]
    return dict(body["error"])


def test_messages_errors_are_in_anthropic_shape(raw: RawUpstream, url: str) -> None:
    """/v1/messages answered OpenAI's error shape and types ("upstream_error")."""
    ask = {"max_tokens": 5, "messages": U}
    r = post(url, "/v1/messages", {"model": "nope", **ask})
    assert r.status_code == 404
    _anthropic_error(r.json(), "not_found_error")
    r = post(url, "/v1/messages", {"model": "oa", "max_tokens": 0, "messages": U})
    assert r.status_code == 400
    _anthropic_error(r.json(), "invalid_request_error")
    raw.push(http_response(b'{"error":{"message":"busy"}}', status="503 Service Unavailable"))
    r = post(url, "/v1/messages", {"model": "oa", **ask})
    assert r.status_code == 502
    assert _anthropic_error(r.json(), "api_error")["attempts"]  # satisfice's own extras kept
    r = post(url, "/v1/chat/completions", {"model": "nope", "messages": U})
    assert r.json()["error"]["type"] == "invalid_request_error"  # OpenAI's, unchanged


def test_a_streamed_messages_error_event_is_in_anthropic_shape(raw: RawUpstream, url: str) -> None:
    async def cut_after_text(w: asyncio.StreamWriter) -> None:
        w.write(sse(oa_chunk({"role": "assistant", "content": "partial"}))[: -len(b"0\r\n\r\n")])
        await w.drain()
        await asyncio.sleep(0.05)
        w.transport.abort()

    raw.push(cut_after_text)
    r = post(url, "/v1/messages", {"model": "oa", "max_tokens": 5, "messages": U, "stream": True})
    events = [e for e in r.text.split("\n\n") if e.startswith("event: error")]
    assert len(events) == 1
    error = _anthropic_error(json.loads(events[0].split("data: ", 1)[1]), "api_error")
    assert error["type"] in ANTHROPIC_ERRORS


def test_integers_past_64_bits_in_a_body_stay_integers() -> None:
    """orjson reads them as floats without an error: a tool schema's maximum of 2**64 had
    reached the provider as 1.8446744073709552e+19."""
    from satisfice._json import loads as _loads

    for body in (b'{"maximum":18446744073709551616}', b'{"t":-9999999999999999999}'):
        assert repr(_loads(body)) == repr(json.loads(body))
