"""Both wire formats against the local upstream over real sockets: requests, answers,
streams, usage, and the mapping of every failure to the errors.py classes."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from satisfice import Router
from satisfice.errors import (
    AuthError,
    BadRequestError,
    ConfigError,
    ContextLengthError,
    ProviderError,
    RetryableError,
    UpstreamTimeoutError,
)
from satisfice.providers import (
    AnthropicProvider,
    ChatRequest,
    ChatResponse,
    OpenAIProvider,
    make_provider,
)
from satisfice.providers.anthropic import anthropic_wire, to_anthropic
from satisfice.providers.base import parse_retry_after
from satisfice.registry import Deployment
from satisfice.testing import (
    LocalUpstream,
    context_length,
    hang,
    malformed,
    reply,
    reset,
    status,
)
from satisfice.transport import PooledTransport

SECRET = "sk-test-SECRET-4242"
T = httpx.Timeout(2.0)
MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


@pytest.fixture(params=["pooled", "httpx"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """Every test runs on satisfice's transport and on httpx's default one."""
    transport = PooledTransport() if request.param == "pooled" else None
    async with httpx.AsyncClient(transport=transport) as c:
        yield c


def oai(c: httpx.AsyncClient, up: LocalUpstream, model: str = "m-oai") -> OpenAIProvider:
    return OpenAIProvider(c, base_url=up.url + "/v1", model=model, api_key=SECRET)


def ant(c: httpx.AsyncClient, up: LocalUpstream, model: str = "m-ant") -> AnthropicProvider:
    return AnthropicProvider(c, base_url=up.url, model=model, api_key=SECRET)


async def collect(it: AsyncIterator[Any]) -> tuple[list[str], ChatResponse]:
    """A provider stream's text pieces (not its progress or thinking) and its answer."""
    pieces: list[str] = []
    async for x in it:
        if isinstance(x, ChatResponse):
            return pieces, x
        if isinstance(x, str):
            pieces.append(x)
    raise AssertionError("a provider stream must end with a ChatResponse")


# -- OpenAI --------------------------------------------------------------------------------
async def test_openai_complete_sends_the_request_and_reads_the_answer(
    client: httpx.AsyncClient, up: LocalUpstream
) -> None:
    up.script("m-oai", reply("four words right here", usage=(12, 4, 3)))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    req = ChatRequest(
        MSGS, max_tokens=50, temperature=0.2, tools=tools, tool_choice="auto", extra={"seed": 7}
    )
    r = await oai(client, up).complete(req, T)
    assert r.text == "four words right here"
    assert r.finish_reason == "stop"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.cached_tokens) == (12, 4, 3)
    seen = up.seen("m-oai")[-1]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {SECRET}"
    assert seen.body == {
        "model": "m-oai",
        "messages": MSGS,
        "max_tokens": 50,
        "temperature": 0.2,
        "tools": tools,
        "tool_choice": "auto",
        "seed": 7,
    }


async def test_openai_reasoning_models_get_max_completion_tokens(
    client: httpx.AsyncClient, up: LocalUpstream
) -> None:
    await oai(client, up, "o4-mini").complete(ChatRequest(MSGS, max_tokens=9), T)
    body = up.seen("o4-mini")[-1].body
    assert body["max_completion_tokens"] == 9 and "max_tokens" not in body


async def test_openai_tool_calls_and_missing_usage(
    client: httpx.AsyncClient, up: LocalUpstream
) -> None:
    up.script("m-oai", reply("", tool_call=("get_weather", '{"city": "Paris"}'), usage=False))
    r = await oai(client, up).complete(ChatRequest(MSGS), T)
    assert r.usage is None
    assert r.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in r.tool_calls] == [("get_weather", '{"city": "Paris"}')]


async def test_openai_stream_yields_pieces_then_the_whole_answer(
    client: httpx.AsyncClient, up: LocalUpstream
) -> None:
    up.script("m-oai", reply("one two three", tool_call=("f", '{"k": [1, 2]}')))
    pieces, final = await collect(oai(client, up).stream(ChatRequest(MSGS), T))
    assert pieces == ["one ", "two ", "three"]
    assert final.text == "one two three"
    assert final.usage is not None and final.usage.completion_tokens == 3
    assert [(c.id, c.name, c.arguments) for c in final.tool_calls] == [
        ("call_1", "f", '{"k": [1, 2]}')
    ]
    body = up.seen("m-oai")[-1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_openai_stream_without_usage(client: httpx.AsyncClient, up: LocalUpstream) -> None:
    up.script("m-oai", reply("x y", usage=False))
    _, final = await collect(oai(client, up).stream(ChatRequest(MSGS), T))
    assert final.usage is None and final.text == "x y" and final.finish_reason == "stop"


# -- Anthropic -----------------------------------------------------------------------------
def test_to_anthropic_translates_roles_tools_images_and_json_mode() -> None:
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "sys one"},
        {"role": "developer", "content": "sys two"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {
            "role": "assistant",
            "content": "let me check",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "look", "arguments": '{"q": 1}'},
                },
                {"id": "c2", "type": "function", "function": {"name": "look", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
        {"role": "tool", "tool_call_id": "c2", "content": "a hat"},
    ]
    tools = [
        {
            "type": "function",
            "function": {"name": "look", "description": "d", "parameters": {"type": "object"}},
        }
    ]
    p = to_anthropic(ChatRequest(msgs, tools=tools, tool_choice="required"), "claude-x")
    assert p["system"] == "sys one\n\nsys two"
    assert p["max_tokens"] == 4096
    assert p["messages"][0] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
            },
        ],
    }
    assert p["messages"][1]["content"] == [
        {"type": "text", "text": "let me check"},
        {"type": "tool_use", "id": "c1", "name": "look", "input": {"q": 1}},
        {"type": "tool_use", "id": "c2", "name": "look", "input": {}},
    ]
    # both results of one assistant turn go in one user turn
    assert p["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "c1", "content": "a cat"},
            {"type": "tool_result", "tool_use_id": "c2", "content": "a hat"},
        ],
    }
    assert len(p["messages"]) == 3
    assert p["tools"] == [{"name": "look", "description": "d", "input_schema": {"type": "object"}}]
    assert p["tool_choice"] == {"type": "any"}

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    j = to_anthropic(
        ChatRequest(
            MSGS,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        ),
        "claude-x",
    )
    assert j["tools"][0]["input_schema"] == schema
    assert j["tool_choice"] == {"type": "tool", "name": j["tools"][0]["name"]}
    with pytest.raises(BadRequestError, match="cannot be combined with tools"):
        to_anthropic(ChatRequest(MSGS, tools=tools, response_format={"type": "json_object"}), "c")
    with pytest.raises(BadRequestError, match="not JSON"):
        to_anthropic(
            ChatRequest(
                [
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {"id": "c", "function": {"name": "f", "arguments": "{oops"}}
                        ],
                    }
                ]
            ),
            "c",
        )


async def test_anthropic_complete_maps_usage_with_cache_and_stop_reasons(
    client: httpx.AsyncClient, up: LocalUpstream
) -> None:
    up.script("m-ant", reply("hi there", usage=(100, 7, 40)))
    r = await ant(client, up).complete(ChatRequest(MSGS, max_tokens=64), T)
    assert r.text == "hi there" and r.finish_reason == "stop"
    assert r.usage is not None
    # Anthropic's input_tokens excludes cache reads; prompt_tokens includes them
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.cached_tokens) == (100, 7, 40)
    assert r.raw["usage"]["input_tokens"] == 60
    seen = up.seen("m-ant")[-1]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == SECRET and seen.headers["anthropic-version"]
    assert seen.body["system"] == "be brief" and seen.body["max_tokens"] == 64
    assert seen.body["messages"] == [{"role": "user", "content": "hello there"}]


async def test_anthropic_tool_use_and_json_mode(
    client: httpx.AsyncClient, up: LocalUpstream
) -> None:
    p = ant(client, up)
    up.script("m-ant", reply("", tool_call=("look", '{"q": 2}')))
    r = await p.complete(ChatRequest(MSGS), T)
    assert r.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in r.tool_calls] == [("toolu_1", "look", '{"q":2}')]

    up.script("m-ant", reply('{"a": 1}'), reply('{"a": 2}'))
    json_req = ChatRequest(MSGS, response_format={"type": "json_object"})
    r = await p.complete(json_req, T)
    assert r.text == '{"a":1}' and r.tool_calls == [] and r.finish_reason == "stop"
    pieces, final = await collect(p.stream(json_req, T))
    assert "".join(pieces) == final.text == '{"a": 2}'


async def test_anthropic_stream_text_tools_and_usage(
    client: httpx.AsyncClient, up: LocalUpstream
) -> None:
    up.script("m-ant", reply("a b c", usage=(10, 3, 4), tool_call=("look", '{"q": [1]}')))
    pieces, final = await collect(ant(client, up).stream(ChatRequest(MSGS), T))
    assert pieces == ["a ", "b ", "c"] and final.text == "a b c"
    assert final.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in final.tool_calls] == [("look", '{"q": [1]}')]
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (10, 3)
    assert final.usage.cached_tokens == 4
    up.script("m-ant", reply("no usage", usage=False))
    _, final = await collect(ant(client, up).stream(ChatRequest(MSGS), T))
    assert final.usage is None and final.text == "no usage"


# -- failures ------------------------------------------------------------------------------
FAULTS = [
    (status(429, retry_after=1.5), RetryableError, 429, 1.5),
    (status(408), RetryableError, 408, None),
    (status(500), RetryableError, 500, None),
    (status(503, retry_after=2), RetryableError, 503, 2.0),
    (status(529), RetryableError, 529, None),
    (status(401), AuthError, 401, None),
    (status(403), AuthError, 403, None),
    (context_length(), ContextLengthError, 400, None),
    (status(400, message="messages[0].role is invalid"), BadRequestError, 400, None),
    (status(404, message="model not found"), ProviderError, 404, None),
    (malformed(), RetryableError, 200, None),
    (reset(), RetryableError, None, None),
    (reset(after_chunks=3), RetryableError, None, None),
    (hang(), UpstreamTimeoutError, None, None),
]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize(("fault", "cls", "code", "retry_after"), FAULTS)
@pytest.mark.parametrize("stream", [False, True])
async def test_failures_map_to_the_error_tree(
    client: httpx.AsyncClient,
    up: LocalUpstream,
    api: str,
    fault: Any,
    cls: type,
    code: int | None,
    retry_after: float | None,
    stream: bool,
) -> None:
    p = oai(client, up) if api == "openai" else ant(client, up)
    up.script(p.model, fault)
    # a short read timeout only for the hang, which waits it out: the other faults end on
    # their own, and a stalled CI machine must not turn them into timeouts
    timeout = httpx.Timeout(0.3 if cls is UpstreamTimeoutError else 2.0)
    t = time.perf_counter()
    with pytest.raises(ProviderError) as info:
        if stream:
            await collect(p.stream(ChatRequest(MSGS), timeout))
        else:
            await p.complete(ChatRequest(MSGS), timeout)
    assert time.perf_counter() - t < 1.5
    e = info.value
    assert type(e) is cls, f"{type(e).__name__}: {e}"
    assert e.status == code and e.retry_after == retry_after
    assert e.model == p.model and e.deployment == p.deployment
    assert SECRET not in str(e) and SECRET not in repr(e) and SECRET not in repr(p)


def test_retry_after_forms() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after": "3"})) == 3.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    ra = parse_retry_after(httpx.Headers({"retry-after": date}))
    assert ra is not None and 25 < ra <= 31
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None


async def test_connection_refused_is_retryable(client: httpx.AsyncClient) -> None:
    with LocalUpstream() as gone:
        url = gone.url
    p = OpenAIProvider(client, base_url=url + "/v1", model="m")
    with pytest.raises(RetryableError, match="connection failed"):
        await p.complete(ChatRequest(MSGS), T)


def test_make_provider_reads_the_key_and_never_shows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dep = Deployment("d", "anthropic", "http://127.0.0.1:9", "claude-x", "SATISFICE_TEST_KEY")
    monkeypatch.delenv("SATISFICE_TEST_KEY", raising=False)
    client = httpx.AsyncClient()
    with pytest.raises(AuthError, match="SATISFICE_TEST_KEY is not set"):
        make_provider(client, "claude", dep)
    monkeypatch.setenv("SATISFICE_TEST_KEY", SECRET)
    p = make_provider(client, "claude", dep)
    assert isinstance(p, AnthropicProvider) and SECRET not in repr(p)


@pytest.mark.parametrize(
    ("messages", "tools"),
    [
        ([{"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}]}], None),
        ([{"role": "user", "content": "hi"}], [{"type": "function", "function": {}}]),
        (["not a message"], None),
    ],
)
def test_to_anthropic_rejects_malformed_requests_as_bad_requests(
    messages: list[Any], tools: list[dict[str, Any]] | None
) -> None:
    with pytest.raises(BadRequestError, match="cannot be translated"):
        to_anthropic(ChatRequest(messages, tools=tools), "claude")


def test_to_anthropic_refuses_tool_arguments_too_deep_to_parse() -> None:
    """A raw RecursionError escaped chat() (and missed the ledger): now refused as any
    arguments that hold no JSON object are (UnsupportedRequestError, a BadRequestError)."""
    from satisfice.errors import BadRequestError

    deep = "[" * 100_000 + "]" * 100_000
    msgs = [
        {"role": "user", "content": "call f"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": deep}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]  # fmt: skip
    with pytest.raises(BadRequestError, match="not JSON"):
        to_anthropic(ChatRequest(msgs), "claude-x")


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_the_router_client_request_is_the_one_httpx_would_build(api: str) -> None:
    """The router's client builds a provider's request itself (headers merged once, the
    body as a stream): byte for byte what httpx's `build_request(content=...)` makes."""
    from satisfice.executor import ExecutionConfig, make_client

    async with make_client(ExecutionConfig()) as c:
        p = (OpenAIProvider if api == "openai" else AnthropicProvider)(
            c, base_url="http://127.0.0.1:9/v1", model="m", api_key=SECRET
        )
        body = '{"messages":[{"role":"user","content":"héllo"}]}'.encode()
        mine = p._request(body, T)
        theirs = c.build_request("POST", p._url, content=body, headers=p._headers, timeout=T)
        assert (mine.method, mine.url) == (theirs.method, theirs.url)
        assert mine.headers.raw == theirs.headers.raw
        assert mine.content == theirs.content == body
        assert mine.extensions == theirs.extensions


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_pooled_post_sends_the_bytes_httpx_would_send(api: str) -> None:
    """On the router's own PooledTransport a provider POSTs without httpx's request object
    (`Poster`): the bytes on the wire are those of the request httpx's `build_request`
    makes, sent through the same transport, and the answer is read the same."""
    from satisfice.executor import ExecutionConfig, make_client
    from satisfice.testing import RawUpstream, http_response

    answer = (
        b'{"choices": [{"message": {"role": "assistant", "content": "hi"}, '
        b'"finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}'
        if api == "openai"
        else b'{"type": "message", "role": "assistant", "content": [{"type": "text", '
        b'"text": "hi"}], "stop_reason": "end_turn", '
        b'"usage": {"input_tokens": 3, "output_tokens": 1}}'
    )
    with RawUpstream(keep_alive=True) as raw:
        raw.push(*[http_response(answer).replace(b"connection: close", b"x-n: 1")] * 2)
        async with make_client(ExecutionConfig()) as c:
            p = (OpenAIProvider if api == "openai" else AnthropicProvider)(
                c, base_url=raw.url + "/v1", model="m", api_key=SECRET
            )
            assert p._poster is not None  # the pooled path is the one taken
            payload = {"messages": [{"role": "user", "content": "héllo"}]}
            body = '{"messages":[{"role":"user","content":"héllo"}]}'.encode()
            got = await p._post(payload, T)  # (encoded there: these bytes)
            theirs = c.build_request("POST", p._url, content=body, headers=p._headers, timeout=T)
            resp = await c.send(theirs)
        assert resp.content == answer and got.raw == json.loads(answer) and got.text == "hi"
        assert len(raw.requests) == 2 and raw.connections == 1  # and the connection kept
        assert raw.requests[0] == raw.requests[1]
        assert raw.requests[0].endswith(b"Content-Length: %d\r\n\r\n" % len(body) + body)


def test_anthropic_wire_takes_what_it_can_and_refuses_the_rest_by_name() -> None:
    """OpenAI's allowed_tools becomes the allowed tools alone; a temperature past Anthropic's
    1, a tool_choice it has no form for and an empty stop sequence are refused (they had
    been sent as they came, and Anthropic's 400 ended the request)."""
    from satisfice.errors import UnsupportedRequestError
    from satisfice.providers.anthropic import anthropic_wire

    def fn(name: str) -> dict[str, Any]:
        return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}

    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "b"}}]}}  # fmt: skip
    p = to_anthropic(ChatRequest(MSGS, tools=[fn("a"), fn("b")], tool_choice=allowed), "c")
    assert [t["name"] for t in p["tools"]] == ["b"]
    assert p["tool_choice"] == {"type": "any"}
    allowed["allowed_tools"]["mode"] = "auto"
    p = to_anthropic(ChatRequest(MSGS, tools=[fn("a"), fn("b")], tool_choice=allowed), "c")
    assert p["tool_choice"] == {"type": "auto"}
    assert to_anthropic(ChatRequest(MSGS, temperature=1.0), "c")["temperature"] == 1.0
    with pytest.raises(UnsupportedRequestError, match="0 to 1, not 1.7"):
        to_anthropic(ChatRequest(MSGS, temperature=1.7), "c")
    with pytest.raises(UnsupportedRequestError, match="no Anthropic form"):
        to_anthropic(ChatRequest(MSGS, tools=[fn("a")], tool_choice={"type": "custom"}), "c")
    with pytest.raises(BadRequestError, match="non-empty"):
        anthropic_wire(ChatRequest(MSGS, extra={"stop": ""}), "c", False, 0)
    assert anthropic_wire(ChatRequest(MSGS, extra={"stop": "x"}), "c", False, 0)[
        "stop_sequences"
    ] == ["x"]


def test_beside_thinking_what_anthropic_documents_it_refuses_is_refused() -> None:
    """top_k, a prefilled assistant turn and a tool loop whose assistant turn has no
    thinking block (OpenAI's messages cannot carry one) had been sent with thinking on;
    without thinking each is sent as it is."""
    from satisfice.errors import UnsupportedRequestError
    from satisfice.providers.anthropic import anthropic_wire

    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    loop = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    cases = [
        (ChatRequest(MSGS, extra={"top_k": 5}), "top_k"),
        (ChatRequest([*MSGS, {"role": "assistant", "content": "Sure"}]), "prefilled"),
        (ChatRequest(loop, tools=tools), "tool loop"),
    ]
    for req, why in cases:
        with pytest.raises(UnsupportedRequestError, match=why):
            anthropic_wire(req, "c", False, 2048)
        assert "thinking" not in anthropic_wire(req, "c", False, 0)
    done = [*loop, {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "ok"}]
    assert anthropic_wire(ChatRequest(done, tools=tools), "c", False, 2048)["thinking"]


def test_openai_alone_is_sent_the_end_user_and_cache_key() -> None:
    """`user` and `prompt_cache_key` go to OpenAI's own API, whose documentation has them;
    other OpenAI-compatible hosts are sent neither; Anthropic gets the user as
    `metadata.user_id`. A bad value is refused before anything is sent."""
    r = ChatRequest([{"role": "user", "content": "hi"}], user="u-1", prompt_cache_key="c-1")
    client = httpx.AsyncClient()
    own = OpenAIProvider(client, base_url="https://api.openai.com/v1", model="gpt-5")
    other = OpenAIProvider(client, base_url="https://api.mistral.ai/v1", model="m")
    assert own._payload(r, False)["user"] == "u-1"
    assert own._payload(r, True)["prompt_cache_key"] == "c-1"
    assert {"user", "prompt_cache_key"}.isdisjoint(other._payload(r, False))
    assert anthropic_wire(r, "claude", False, 0)["metadata"] == {"user_id": "u-1"}
    # what the upstream would refuse is not sent: empty, a lone surrogate, over Anthropic's 256
    for odd in ("", "a\ud800", "x" * 257):
        r = ChatRequest([{"role": "user", "content": "hi"}], user=odd, prompt_cache_key=odd)
        assert "metadata" not in anthropic_wire(r, "claude", False, 0)
        if odd != "x" * 257:
            assert {"user", "prompt_cache_key"}.isdisjoint(own._payload(r, False))
    router = Router()
    for bad in ({"user": 5}, {"prompt_cache_key": b"k"}):
        with pytest.raises(ConfigError, match="must be a string"):
            asyncio.run(router.chat("hi", **bad))
