"""`satisfice serve` driven by the official openai and anthropic clients over a real socket,
the upstreams being the project's local test upstream."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from satisfice import Policy, Registry, Router
from satisfice.ledger import read_records
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, reply, status

from .chat_support import TOOLS, registry, wire
from .polling import until
from .server_support import post_chat, running

MASTER = "master-test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def upstream() -> Iterator[LocalUpstream]:
    with LocalUpstream() as up:
        yield up


@pytest.fixture
def served(upstream: LocalUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    upstream.wait_idle()
    upstream.reset_script()
    reg = tmp_path / "r.toml"
    reg.write_text(registry(upstream.url).to_toml())
    cfg = ServerConfig(
        registry_path=str(reg),
        ledger=str(tmp_path / "l.db"),
        aliases={"auto-cheap": {"quality_floor": 0.5}},
    )
    router = Router(registry(upstream.url), Policy(quality_floor=0.5, max_fallbacks=3))
    from satisfice import _core

    _core.wait_for_tokenizers()  # which Router() builds: /ready says 503 until then
    with running(cfg, router) as (url, app):
        yield url, app, upstream, tmp_path
        while _OPEN:
            _OPEN.pop().close()


_OPEN: list[Any] = []  # clients to close when the test's server stops


#: an Anthropic request offering a tool, on alpha
_TOOL_ASK: dict[str, Any] = {
    "model": "alpha",
    "max_tokens": 50,
    "tools": [{"name": "f", "input_schema": {"type": "object"}}],
    "messages": [{"role": "user", "content": "hi"}],
}


def _anthropic(url: str) -> anthropic.Anthropic:
    c = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    _OPEN.append(c)
    return c


def _client(url: str, key: str = "anything") -> openai.OpenAI:
    c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    _OPEN.append(c)
    return c


def test_openai_client_plain_call_carries_the_decision(served: Any) -> None:
    url, app, _, tmp = served
    raw = _client(url).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Say hello"}], max_tokens=50
    )
    resp = raw.parse()
    assert resp.choices[0].message.content and resp.model == "alpha"
    assert resp.usage is not None and resp.usage.total_tokens > 0
    extra = resp.model_extra or {}
    assert extra["satisfice"]["model"] == "alpha" and extra["satisfice"]["why"]
    assert raw.headers["x-satisfice-model"] == "alpha"
    assert float(raw.headers["x-satisfice-cost-usd"]) > 0
    app.state.service.router.ledger.flush()
    (rec,) = list(read_records(tmp / "l.db"))
    assert rec["metadata"]["api"] == "openai"


async def test_async_openai_client_streams_with_usage(served: Any) -> None:
    url, *_ = served
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    stream = await client.chat.completions.create(
        model="auto-cheap",
        messages=[{"role": "user", "content": "Say hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    await client.close()
    assert text and finish == "stop" and usage is not None and usage.completion_tokens > 0


def test_tools_and_response_format(served: Any) -> None:
    url, _, up, _ = served
    up.script(wire("alpha"), reply(tool_call=("get_weather", '{"city": "Oslo"}')))
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    r = _client(url).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=tools
    )
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)
    assert up.seen(wire("alpha"))[-1].body["tools"][0]["function"]["name"] == "get_weather"
    up.script(wire("alpha"), reply('{"a": 1}'))
    r = _client(url).chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "JSON please"}],
        response_format={"type": "json_object"},
    )
    assert json.loads(r.choices[0].message.content or "") == {"a": 1}


def test_constraints_through_extra_body_and_clear_errors(served: Any) -> None:
    url, *_ = served
    c = _client(url)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"max_cost_usd": 1e-12},
        )
    assert e.value.body["code"] == "no_route" and "max_cost" in e.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="unsupported parameter.*seed"):
        c.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], seed=3
        )
    with pytest.raises(openai.NotFoundError, match="unknown model 'gpt-99'"):
        c.chat.completions.create(model="gpt-99", messages=[{"role": "user", "content": "hi"}])
    r = c.chat.completions.create(model="gamma", messages=[{"role": "user", "content": "hi"}])
    assert r.model == "gamma"  # a concrete model id goes to that model
    ids = [m.id for m in c.models.list()]
    assert ids[:2] == ["auto", "auto-cheap"] and {"alpha", "delta"} <= set(ids)


def test_upstream_failure_is_an_openai_error_listing_attempts(served: Any) -> None:

    url, _, up, _ = served
    for m in ("alpha", "beta", "gamma", "delta"):
        up.script(wire(m), *[status(500)] * 3)
    with pytest.raises(openai.APIStatusError) as e:
        _client(url).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 502
    body: Any = e.value.body
    assert body["type"] == "upstream_error" and len(body["attempts"]) >= 4


def test_bad_bodies(served: Any) -> None:
    url, app, *_ = served
    app.state.service.config.max_body_bytes = 2048
    r = httpx.post(url + "/v1/chat/completions", content=b"x" * 5000)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = httpx.post(url + "/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(url + "/v1/chat/completions", json={"model": "auto", "messages": []})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    for calls in ("true", "1.5", "-1", "1180591620717411303424"):  # had been 500s
        body = (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}, '
                b'{"role": "assistant", "content": null, "tool_calls": ' + calls.encode()
                + b"}]}")  # fmt: skip
        r = httpx.post(url + "/v1/chat/completions", content=body)
        assert r.status_code == 400 and "tool_calls must be a list" in r.text, r.text


def _raw_request(url: str, head: bytes, wait: float = 10.0) -> tuple[bytes, float, bool]:
    """Sends `head` (and whatever body part it holds) on a raw socket and reads until the
    server closes or `wait` passes: (what came back, seconds to the first byte, closed)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        t = time.monotonic()
        s.sendall(head)
        got, first, closed = b"", 0.0, False
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            if not got:
                first = time.monotonic() - t
            got += chunk
        return got, first, closed


def test_a_body_sent_too_slowly_gets_408_and_the_connection_closed(served: Any) -> None:
    # uvicorn has no bound on a request body's arrival: a client that sent its head and part
    # of its body (or none of it) held the request, and its connection, for good
    url, app, *_ = served
    app.state.service.config.read_timeout_s = 0.5
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
        b"\r\ncontent-length: 100\r\n\r\n"
    )
    for sent in (head, head + b'{"model": "a'):
        got, first, closed = _raw_request(url, sent)
        assert got.startswith(b"HTTP/1.1 408 "), got[:200]
        assert 0.4 < first < 5.0 and closed
        body = json.loads(got.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "request_timeout"
        assert "within 0.5 s" in body["error"]["message"]
    # a body sent in parts within the bound is read whole
    r = httpx.post(
        url + "/v1/chat/completions",
        content=iter([b'{"model": "auto", ', b'"messages": [{"role": "user", "content": "hi"}]}']),
    )
    assert r.status_code == 200, r.text


def test_a_head_that_does_not_arrive_in_time_closes_its_connection(
    upstream: LocalUpstream,
) -> None:
    """uvicorn bounds only the idle time between requests (its keep-alive timeout, which
    the first byte of a head cancels): a client that connected and sent nothing, or a head
    a byte at a time, held its connection for good."""
    import socket

    router = Router(registry(upstream.url), Policy(quality_floor=0.5))
    with running(ServerConfig(read_timeout_s=1.0), router) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n"
        for trickle in (b"", head):
            with socket.create_connection((host, int(port)), timeout=10) as s:
                t = time.monotonic()
                closed = False
                for i in range(len(trickle) or 1):
                    try:
                        s.sendall(trickle[i : i + 1])
                        s.settimeout(0.1)
                        closed = s.recv(1024) == b""
                    except TimeoutError:
                        pass
                    except OSError:
                        closed = True
                    if closed:
                        break
                    time.sleep(0.1)
                s.settimeout(5)
                if not closed:
                    closed = s.recv(1024) == b""
                assert closed and 0.9 < time.monotonic() - t < 4.0
        # a head in time is served as ever
        r = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200, r.text


def test_a_pipelined_head_waiting_behind_a_stream_does_not_cut_it() -> None:
    """A pipelined head that arrived in part waits unread while a stream before it is
    answered (uvicorn pauses reading): the head's clock had run meanwhile, and the sweep
    closed the connection in the middle of the stream."""
    import socket

    from satisfice.testing.behaviors import reply as slow_reply

    body = json.dumps(
        {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    first = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
        b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    health = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
    with LocalUpstream(default=slow_reply(" ".join(["word"] * 15), chunk_delay=0.2)) as up:
        router = Router(registry(up.url), Policy(quality_floor=0.5))
        with running(ServerConfig(read_timeout_s=1.0), router) as (url, _):
            host, port = url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(first)
                time.sleep(0.3)
                s.sendall(health + health[:5])
                time.sleep(0.1)
                s.sendall(health[5:])
                got = b""
                while got.count(b"HTTP/1.1 200") < 3 or not got.endswith(b"}"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
    assert b"data: [DONE]" in got and got.count(b"HTTP/1.1 200") == 3, got[-300:]


def test_a_key_revoked_while_its_body_arrives_is_refused(served: Any) -> None:
    """The key is read before the body (a caller without one is refused unread); a body that
    takes its time has the key read again once it is in, so a revoke meanwhile holds."""
    import socket

    url, *_ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    k = httpx.post(url + "/admin/keys", headers=admin, json={"name": "slow-body"}).json()
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {k['key']}"
        f"\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head + body[:10].encode())
        time.sleep(0.2)
        r = httpx.delete(url + f"/admin/keys/{k['id']}", headers=admin)
        assert r.json()["revoked"]
        s.sendall(body[10:].encode())
        got = s.recv(65536)
    assert got.startswith(b"HTTP/1.1 401 ") and b"key_revoked" in got, got[:300]


def test_an_unknown_satisfice_key_is_refused_where_keys_are_optional(served: Any) -> None:
    """With require_keys = false a caller may come without a key, but a satisfice key nobody
    holds (a typo, a deleted one) had been served anonymously, outside the budget and model
    list its holder meant to be under. Any other secret (an SDK's placeholder) still serves."""
    url, *_ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    k = httpx.post(url + "/admin/keys", headers=admin, json={"name": "typo"}).json()
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    for secret in (k["key"][:-1], "sk-sat-"):
        r = httpx.post(url + "/v1/chat/completions", json=body,
                       headers={"authorization": f"Bearer {secret}"})  # fmt: skip
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
        assert secret not in r.text
    r = httpx.post(url + "/v1/messages", headers={"x-api-key": k["key"] + "x"},
                   json={**body, "max_tokens": 16})  # fmt: skip
    assert r.status_code == 401, r.text
    r = httpx.post(url + "/v1/chat/completions", json=body, headers={"authorization": "Bearer x"})
    assert r.status_code == 200, r.text


def test_anthropic_client_plain_and_streamed(served: Any) -> None:
    url, *_ = served
    c = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    _OPEN.append(c)
    m = c.messages.create(
        model="auto",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say hello"}],
    )
    assert m.content[0].type == "text" and m.content[0].text and m.model == "alpha"
    assert m.usage.output_tokens > 0 and m.stop_reason == "end_turn"
    with c.messages.stream(
        model="auto", max_tokens=100, messages=[{"role": "user", "content": "Say hello"}]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text and final.stop_reason == "end_turn"


def test_a_lone_surrogate_in_tool_arguments_is_answered(served: Any) -> None:
    """An OpenAI-wire model's tool arguments holding "\\ud800" became, as Anthropic's tool
    input, a lone surrogate UTF-8 cannot encode: the answer was a 500. (Streamed, the
    arguments go out as their JSON text, which the server writes as it came; the anthropic
    SDK's partial-JSON parser refuses the escape, httpx reads the stream whole.)"""
    url, _, up, _ = served
    c = _anthropic(url)
    kw: Any = dict(_TOOL_ASK)
    up.script(wire("alpha"), *[reply(tool_call=("f", '{"a": "\\ud800 é"}'))] * 2)
    m = c.messages.create(**kw)
    (block,) = [b for b in m.content if b.type == "tool_use"]
    assert block.name == "f" and block.input == {"a": "\ud800 é"}
    with httpx.stream("POST", url + "/v1/messages", json={**kw, "stream": True}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200 and events[-1]["type"] == "message_stop"


def test_an_anthropic_tool_choice_that_says_nothing_without_tools_is_answered(
    served: Any,
) -> None:
    """{"type": "auto"} with no tools (Anthropic's API takes it) was refused once the router
    required tools beside any tool_choice; it is a no-op, and is not sent on."""
    url, _, up, _ = served
    c = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    _OPEN.append(c)
    for kind in ("auto", "none"):
        m = c.messages.create(
            model="alpha", max_tokens=20, tool_choice={"type": kind},  # type: ignore[misc,arg-type]
            messages=[{"role": "user", "content": "hi"}],
        )  # fmt: skip
        assert m.content[0].type == "text"
        assert "tool_choice" not in up.seen(wire("alpha"))[-1].body


def test_an_unknown_path_or_method_is_an_error_in_the_apis_shape(served: Any) -> None:
    """Starlette's plain-text "Not Found" / "Method Not Allowed" had answered them."""
    url, app, *_ = served
    c = _client(url)
    with pytest.raises(openai.NotFoundError, match="no such endpoint: POST /v1/completions"):
        c.completions.create(model="auto", prompt="hi")
    r = httpx.get(url + "/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.get(url + "/v1/messages")  # Anthropic's shape on its endpoint
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.delete(url + "/admin/nothing")
    assert r.status_code == 404 and "no such endpoint" in r.json()["error"]["message"]
    # the handler is the app's own from its creation: chat requests still skip Starlette
    assert app.exception_handlers == app._handlers and not app.user_middleware


def test_keys_budgets_allow_lists_and_rate_limits(served: Any) -> None:
    url, *_ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    assert httpx.post(url + "/admin/keys", json={"name": "x"}).status_code == 401
    k = httpx.post(
        url + "/admin/keys",
        headers=admin,
        json={
            "name": "team-a",
            "budget_usd": 0.01,
            "period": "day",
            "models": ["auto"],
            "rpm": 1000,
        },
    ).json()
    assert k["key"].startswith("sk-sat-") and "key_hash" not in k
    c = _client(url, k["key"])
    spent = 0
    with pytest.raises(openai.RateLimitError) as e:
        # ~$0.0002 each on alpha; reserved: every model's prompt (~$0.0036: a timed-out
        # call may be billed for it) plus the dearest answer's output (delta: $0.0004)
        for _ in range(200):
            c.chat.completions.create(
                model="auto", max_tokens=100, messages=[{"role": "user", "content": "word " * 2000}]
            )
            spent += 1
    body: Any = e.value.body
    assert body["code"] == "budget_exceeded" and body["budget"] == f"key:{k['id']}"
    assert "($0.010000 per day)" in body["message"]  # as its other figures ($1e-05 had been)
    assert e.value.response.headers["x-should-retry"] == "false"  # the SDKs had sent it 3x
    assert 0 <= body["remaining_usd"] < 0.0041 and 25 < spent < 40
    s = httpx.get(url + "/admin/spend", headers=admin).json()["budgets"][0]
    assert 0.0039 < s["spent_usd"] <= 0.01 and s["held_usd"] == 0
    with pytest.raises(openai.PermissionDeniedError, match="may not use 'gamma'"):
        c.chat.completions.create(model="gamma", messages=[{"role": "user", "content": "hi"}])
    # rate limit: 2 requests per minute
    k2 = httpx.post(url + "/admin/keys", headers=admin, json={"name": "slow", "rpm": 2}).json()
    c2 = _client(url, k2["key"])
    for _ in range(2):
        c2.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError, match="rate limit of key 'slow'") as e:
        c2.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert "x-should-retry" not in e.value.response.headers  # a minute later it fits
    # revoked
    assert httpx.delete(url + f"/admin/keys/{k2['id']}", headers=admin).json()["revoked"]
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        c2.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])


def test_malformed_requests_are_refused_before_they_count_against_a_key(served: Any) -> None:
    """A lone surrogate in `stop` or a tool's description, or `thinking_blocks`
    that is not a list, passed the server's checks and routing: the request was admitted
    (the key's rpm counted) and refused only by the provider's encoder, so three of them
    locked a key of rpm 3 out for a minute, with no call made."""
    url, _, upstream, _ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    k = httpx.post(url + "/admin/keys", headers=admin, json={"name": "strict", "rpm": 3}).json()
    h = {"authorization": f"Bearer {k['key']}", "content-type": "application/json"}
    hi = ', "messages": [{"role": "user", "content": "hi"}]}'
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x",
             "thinking_blocks": "x"}, {"role": "user", "content": "hi"}]  # fmt: skip
    bad = [
        '{"model": "auto", "stop": "\\ud800"' + hi,
        '{"model": "auto", "tools": [{"type": "function", "function": {"name": "f", '
        '"description": "\\ud800", "parameters": {"type": "object"}}}]' + hi,
        json.dumps({"model": "auto", "messages": turns}),
    ]
    calls = len(upstream.requests)
    for raw in bad:
        r = httpx.post(url + "/v1/chat/completions", content=raw.encode(), headers=h)
        assert r.status_code == 400, (raw, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert len(upstream.requests) == calls  # nothing sent
    for _ in range(3):  # the key's whole rpm is left
        r = httpx.post(url + "/v1/chat/completions", content=('{"model": "auto"' + hi).encode(),
                       headers=h)  # fmt: skip
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("text", [None, 5, {"a": 1}], ids=["null", "number", "object"])
@pytest.mark.parametrize("where", ["system", "messages"])
def test_a_messages_text_block_whose_text_is_no_string_is_refused(
    served: Any, text: Any, where: str
) -> None:
    """/v1/messages took a text block's "text" through str(): null, 5 or {"a": 1} went to
    the model as the prompt "None", "5" or "{'a': 1}" (as /v1/chat/completions refuses it)."""
    url, _, upstream, _ = served
    block = [{"type": "text", "text": text}]
    body: dict[str, Any] = {"model": "beta", "max_tokens": 10,
                            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    if where == "system":
        body["system"] = block
    else:
        body["messages"] = [{"role": "user", "content": block}]
    calls = len(upstream.requests)
    r = httpx.post(url + "/v1/messages", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and "'text' must be a string" in r.json()["error"]["message"]
    assert len(upstream.requests) == calls


def test_the_servers_keys_pasted_into_a_request_never_reach_the_log_or_the_ledger(
    served: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The master key or a virtual key sent as a model id (`allow`) was quoted whole by the
    UnknownModelError it made, in the server's log and the ledger's record; one sent in
    `metadata` was recorded whole (the upstream keys were scrubbed, once a provider had
    read them: the server's own never)."""
    url, app, _, tmp = served
    admin = {"authorization": f"Bearer {MASTER}"}
    vk = httpx.post(url + "/admin/keys", headers=admin, json={"name": "paste"}).json()["key"]
    h = {"authorization": f"Bearer {vk}"}
    hi = [{"role": "user", "content": "hi"}]
    with caplog.at_level(logging.INFO):
        for secret in (MASTER, vk):
            r = httpx.post(url + "/v1/chat/completions", headers=h,
                           json={"model": "auto", "allow": [secret], "messages": hi})  # fmt: skip
            assert r.status_code in (400, 404), r.text
        r = httpx.post(url + "/v1/chat/completions", headers=h,
                       json={"model": "auto", "metadata": {"k": vk}, "messages": hi})  # fmt: skip
        assert r.status_code == 200, r.text
        assert app.state.service.router.ledger.flush()
    records = json.dumps(list(read_records(tmp / "l.db")))
    assert records.count("[redacted]") >= 3  # both errors and the metadata, recorded
    for secret in (MASTER, vk):
        assert secret not in caplog.text and secret not in records


def test_an_upstream_key_is_scrubbed_from_the_start_not_from_its_first_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider registered its key when it first read it, at its deployment's first
    call: until then a client that pasted the key into a field had it quoted whole into
    the log. The server registers every key its registry names as it starts, as its
    provider sends it (trimmed: a key in a secret file ends in a newline)."""
    from satisfice._redact import scrub
    from satisfice.server.app import Service

    secret = "sk-upstream-eager-" + "Zq7" * 8
    monkeypatch.setenv("SATISFICE_TEST_EAGER_KEY", secret + "\n")  # read from a file
    reg = registry("http://127.0.0.1:9").to_dict()
    reg["model"][0]["deployments"][0]["api_key_env"] = "SATISFICE_TEST_EAGER_KEY"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(reg))
    assert secret in scrub(f"unknown model {secret!r}")  # (not registered yet)
    Service(ServerConfig(registry_path=str(path))).router.close()
    assert secret not in scrub(f"unknown model {secret!r}")


def test_admin_health_disable_and_reload(served: Any) -> None:
    url, *_ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    r = httpx.post(url + "/admin/deployments/alpha/disable", headers=admin, json={})
    assert r.status_code == 200
    out = _client(url).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert out.model == "beta"  # alpha is out of service
    httpx.post(url + "/admin/deployments/alpha/enable", headers=admin, json={})
    r = httpx.post(url + "/admin/reload", headers=admin)
    assert r.status_code == 200 and r.json()["models"] == 4
    assert httpx.get(url + "/ready").json()["ready"] is True
    assert b"satisfice_requests_total" in httpx.get(url + "/metrics").content


def test_the_admin_api_reads_bodies_as_v1_does(served: Any) -> None:
    """A 5.9 MB POST /admin/keys was read and stored (a key with 30,000 models), and a body
    sent a byte every half second held the request for 20 s: 413 and 408 now, as on /v1."""
    url, app, *_ = served
    cfg = app.state.service.config
    cfg.max_body_bytes, cfg.read_timeout_s = 10_000, 1.0
    admin = {"authorization": f"Bearer {MASTER}"}
    big = {"name": "big", "models": [f"m{i}" for i in range(3000)]}
    r = httpx.post(url + "/admin/keys", headers=admin, json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", r.text
    body = b'{"name": "slow"}'
    got, first, _ = _raw_request(url, (
        f"POST /admin/keys HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {MASTER}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body[:3], wait=4.0)  # fmt: skip
    assert got.startswith(b"HTTP/1.1 408 ") and first < 3, got[:200]
    cfg.max_body_bytes = 10_000_000
    r = httpx.post(url + "/admin/keys", headers=admin, json={**big, "models": ["m"] * 5000})
    assert r.status_code == 400 and "at most 4096" in r.text
    r = httpx.post(url + "/admin/keys", headers=admin, json=big)  # m0... are no models here
    assert r.status_code == 400 and "neither has nor routes by" in r.text, r.text
    many = {**big, "models": ["auto"] * 3000}
    assert httpx.post(url + "/admin/keys", headers=admin, json=many).status_code == 201


def test_an_upstream_429_beside_a_disabled_model_is_still_a_429() -> None:
    """The no-retry 503 is for every model disabled or keyless alone: a 429 with no
    Retry-After beside them had become a 503 the SDKs do not retry."""
    from satisfice.errors import AllAttemptsFailedError
    from satisfice.result import Attempt
    from satisfice.server.app import _all_failed

    limited = Attempt("a", "d", "error", error_type="RetryableError", status=429)
    off = Attempt("b", "d", "skipped", error_type="unavailable", error="disabled: x")
    keyless = Attempt("c", "d", "skipped", error_type="no_api_key")
    long = Attempt("d", "d", "error", error_type="ContextLengthError", status=400)
    slow = Attempt("e", "d", "error", error_type="UpstreamTimeoutError")
    cases = (([limited, off], 429), ([limited], 429), ([keyless, limited], 429),
             ([off, keyless], 503), ([off, long], 400), ([keyless, slow], 504))  # fmt: skip
    for atts, code in cases:
        e = AllAttemptsFailedError("all failed", attempts=atts)
        he = _all_failed(e, "all failed", {})
        assert he.status == code, atts
        assert (he.headers.get("x-should-retry") == "false") is (code == 503)
    # every upstream refused the key or knew no such model: a 502 no retry changes
    unknown = Attempt("a", "d", "error", error_type="ProviderError", status=404)
    denied = Attempt("b", "d", "error", error_type="AuthError", status=401)
    broken = Attempt("c", "d", "error", error_type="ProviderError", status=500)
    for atts, final in (([unknown], True), ([denied, off], True), ([unknown, broken], False)):
        he = _all_failed(AllAttemptsFailedError("x", attempts=atts), "x", {})
        assert he.status == 502 and (he.headers.get("x-should-retry") == "false") is final


def _asked_with_retries(url: str) -> tuple[openai.APIStatusError, list[str]]:
    """A call to alpha by an openai client that retries twice: its error, and the paths
    of every request it sent."""
    sent: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda r: sent.append(r.url.path)]})
    c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=2, http_client=http)
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}])
    c.close()
    return e.value, sent


def test_a_model_an_admin_disabled_is_a_503_the_sdks_do_not_retry(served: Any) -> None:
    """It had been a 502, which the SDKs retried (three requests for one call, each
    refused again, no upstream called)."""
    url, *_ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    assert httpx.post(url + "/admin/deployments/alpha/disable", headers=admin).status_code == 200
    e, sent = _asked_with_retries(url)
    assert e.status_code == 503 and "disabled" in e.message
    assert e.response.headers["x-should-retry"] == "false"
    assert sent == ["/v1/chat/completions"]  # once
    httpx.post(url + "/admin/deployments/alpha/enable", headers=admin)


def test_where_keys_are_required_metrics_need_the_master_key(
    upstream: LocalUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/metrics had answered anyone, with every key's and team's name and spend in it."""
    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    router = Router(registry(upstream.url), Policy(quality_floor=0.5))
    with running(ServerConfig(require_keys=True), router) as (url, _):
        admin = {"authorization": f"Bearer {MASTER}"}
        k = httpx.post(url + "/admin/keys", headers=admin, json={"name": "team-secret"}).json()
        _client(url, k["key"]).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}]
        )
        # a caller without a key is refused before its body is read: it need not send one
        got, first, closed = _raw_request(url, (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 4000000"
            b"\r\n\r\n"), wait=3.0)  # fmt: skip
        assert got.startswith(b"HTTP/1.1 401 ") and first < 2.5, got[:200]
        # and the connection closed: it is not left to carry (or wait for) that body
        assert b"connection: close" in got.lower() and closed
        for headers in ({}, {"authorization": f"Bearer {k['key']}"}):
            r = httpx.get(url + "/metrics", headers=headers)
            assert r.status_code == 401 and "team-secret" not in r.text
            assert r.json()["error"]["message"] == "/metrics needs the master key"
        for _ in range(100):  # counted by the ledger's writer, a flush interval later
            r = httpx.get(url + "/metrics", headers=admin)
            if r.status_code != 200 or 'key="team-secret"' in r.text:
                break
            time.sleep(0.05)
        assert r.status_code == 200 and 'key="team-secret"' in r.text


def test_a_reload_that_would_break_an_alias_is_refused_and_changes_nothing(
    upstream: LocalUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Aliases were checked against the registry at start only: a reload that dropped a
    model an alias allows left the alias failing every request."""
    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    reg = tmp_path / "r.toml"
    reg.write_text(registry(upstream.url).to_toml())
    cfg = ServerConfig(registry_path=str(reg), aliases={"fast": {"allow": ["beta"]}})
    admin = {"authorization": f"Bearer {MASTER}"}
    with running(cfg, Router(registry(upstream.url))) as (url, app):
        full = registry(upstream.url)
        reg.write_text(Registry([m for m in full if m.id != "beta"], full.meta).to_toml())
        r = httpx.post(url + "/admin/reload", headers=admin)
        assert r.status_code == 400, r.text
        assert "[aliases].fast.allow" in r.json()["error"]["message"]
        assert "beta" in app.state.service.router.registry
        out = _client(url).chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hi"}]
        )
        assert out.model == "beta"


def test_session_pins_and_switches(served: Any) -> None:
    from satisfice.server.wire import session_key

    url, app, _, tmp = served
    svc = app.state.service
    s1, s2 = (f"anon:{session_key(s)}" for s in ("s1", "s2"))  # stored per key, hashed
    svc.state._pins[s1] = ("gamma", 1e12)  # as an earlier turn would have left it
    c = _client(url)
    r = c.chat.completions.create(
        model="auto", user="s1", messages=[{"role": "user", "content": "hi"}]
    )
    assert r.model == "gamma"  # kept on its pinned model, not re-routed to alpha
    svc.state._pins[s2] = ("alpha", 1e12)
    big = "word " * 9000  # over alpha's 8k window: the pin cannot hold
    r = c.chat.completions.create(
        model="auto", user="s2", messages=[{"role": "user", "content": big}]
    )
    assert r.model != "alpha"
    svc.router.ledger.flush()
    recs = [x for x in read_records(tmp / "l.db") if x["metadata"].get("session") == s2]
    assert "no longer fits" in recs[0]["metadata"]["session_switch"]


def test_scheduled_probes_and_latencies_kept_across_a_restart(
    upstream: LocalUpstream, tmp_path: Path
) -> None:
    import time

    reg = tmp_path / "r.toml"
    reg.write_text(registry(upstream.url).to_toml())
    health = tmp_path / "health.json"
    cfg = ServerConfig(registry_path=str(reg), probe_interval_s=0.05, probe_budget_usd=1.0,
                       health_file=str(health))  # fmt: skip
    with running(cfg) as (_, app):
        deadline = time.monotonic() + 30
        while app.state.service.probe_runs < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.service.probe_runs >= 1
    seen = json.loads(health.read_text())["latency"]
    assert seen and all(v["n_ok"] > 0 for v in seen.values())
    again = ServerConfig(registry_path=str(reg), health_file=str(health))  # no probes now
    with running(again) as (_, app):  # a restart remembers what was measured
        snap = app.state.service.router.health()
        assert any(d["successes"] for d in snap.values())


def test_an_answer_does_not_wait_for_its_settlement(served: Any) -> None:
    """The settlement (a round trip to Redis on a shared store) had held every budgeted
    answer; it lands after it now, and /admin/spend waits for it."""
    url, app, *_ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    k = httpx.post(url + "/admin/keys", headers=admin, json={"name": "s", "budget_usd": 1.0})
    state = app.state.service.state
    settle = state.settle

    async def slow(*a: Any) -> None:
        await asyncio.sleep(1.0)
        await settle(*a)

    state.settle = slow
    c = _client(url, k.json()["key"])  # built before the timed part: a stalled CI machine
    try:
        t = time.monotonic()
        r = c.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hi"}]
        )
        assert time.monotonic() - t < 0.9
        cost = float(r.headers["x-satisfice-cost-usd"])
        (b,) = httpx.get(url + "/admin/spend", headers=admin).json()["budgets"]
        assert b["spent_usd"] == pytest.approx(cost, abs=1e-8) and b["held_usd"] == 0
    finally:
        state.settle = settle


def test_tool_definitions_count_in_the_budget_reservation(served: Any) -> None:
    """Providers bill tool definitions as prompt tokens: a request whose tools alone cost
    more than the key has left is refused before any upstream call (it used to reserve
    for its messages only, and one request overspent a $0.002 budget 33 times)."""
    url, _, upstream, _ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    k = httpx.post(url + "/admin/keys", headers=admin,
                   json={"name": "tools", "budget_usd": 0.002, "period": "day"}).json()  # fmt: skip
    before = len(upstream.seen(wire("gamma"))) + len(upstream.seen(wire("delta")))
    with pytest.raises(openai.RateLimitError) as e:
        _client(url, k["key"]).chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            tools=TOOLS,  # type: ignore[arg-type]
        )
    body: Any = e.value.body
    assert body["code"] == "budget_exceeded"
    assert len(upstream.seen(wire("gamma"))) + len(upstream.seen(wire("delta"))) == before
    ok = _client(url, k["key"]).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert ok.model == "alpha"  # the same request without the tools fits the budget


def test_admin_refuses_names_it_could_not_show_again(served: Any) -> None:
    """A lone surrogate in a key's or team's name was stored, and every later listing and
    /metrics failed with a 500; a boolean rpm was taken as 1 (and broke Redis)."""
    url, *_ = served
    admin = {"authorization": f"Bearer {MASTER}", "content-type": "application/json"}
    bad = [
        ("/admin/keys", b'{"name": "\\ud800"}', "name"),
        ("/admin/keys", b'{"name": "k", "team": "\\udc00x"}', "team"),
        ("/admin/keys", b'{"name": "k", "team": ""}', "team"),
        ("/admin/keys", b'{"name": "k", "models": ["\\ud800"]}', "models[0]"),
        ("/admin/keys", b'{"name": "k", "rpm": true}', "rpm"),
        ("/admin/keys", b'{"name": "k\\n2"}', "name"),
        ("/admin/teams", b'{"name": "\\ud800", "budget_usd": 1}', "name"),
    ]
    for path, raw, field in bad:
        r = httpx.post(url + path, content=raw, headers=admin)
        assert r.status_code == 400 and field in r.json()["error"]["message"], (raw, r.text)
    assert httpx.get(url + "/admin/keys", headers=admin).status_code == 200
    assert httpx.get(url + "/admin/spend", headers=admin).status_code == 200
    assert httpx.get(url + "/metrics").status_code == 200


def test_the_reservation_covers_prompts_billed_by_timed_out_calls(served: Any) -> None:
    """Three models hang, the fourth answers: each timed-out call may be billed for its
    prompt and is settled at that estimate, so the reservation holds those prompts too (it
    held the dearest single answer, and this request settled 1.56x a budget it was let in
    under)."""
    from satisfice.testing import hang

    url, _, upstream, _ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    body = {"model": "auto", "messages": [{"role": "user", "content": "word " * 6000}],
            "max_tokens": 1, "timeout": 2}  # fmt: skip
    small = httpx.post(url + "/admin/keys", headers=admin,
                       json={"name": "small", "budget_usd": 0.0065}).json()  # fmt: skip
    r = httpx.post(url + "/v1/chat/completions", json=body,
                   headers={"authorization": f"Bearer {small['key']}"})  # fmt: skip
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
    for m in ("alpha", "beta", "gamma"):
        upstream.script(wire(m), hang())
    big = httpx.post(url + "/admin/keys", headers=admin,
                     json={"name": "big", "budget_usd": 0.02}).json()  # fmt: skip
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30,
                   headers={"authorization": f"Bearer {big['key']}"})  # fmt: skip
    assert r.status_code == 200 and r.json()["model"] == "delta"
    spend = httpx.get(url + "/admin/spend", headers=admin).json()["budgets"]
    b = next(x for x in spend if x["scope"] == f"key:{big['id']}")
    assert 0.01 < b["spent_usd"] <= 0.02 and b["held_usd"] == 0  # three prompts were billed


def test_messages_beside_tool_blocks_are_carried_or_refused(served: Any) -> None:
    """In a message with tool blocks, every block reaches the upstream or the request is a
    400 naming it: images and is_error were dropped and the request answered 200."""
    url, _, upstream, _ = served
    c = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    _OPEN.append(c)
    history: list[Any] = [
        {"role": "user", "content": "what did the camera see?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "call it", "signature": "sig"},
            {"type": "tool_use", "id": "t1", "name": "snap", "input": {}}]},
    ]  # fmt: skip
    tool_result = {"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                   "content": [{"type": "text", "text": "lens cap on"}]}  # fmt: skip
    m = c.messages.create(
        model="auto",
        max_tokens=50,
        messages=[
            *history,
            {"role": "user", "content": [tool_result, {"type": "text", "text": "and this?"}]},
        ],
    )
    sent = upstream.seen(wire(m.model))[-1].body["messages"]
    dumped = json.dumps(sent)
    assert "Error: lens cap on" in dumped and "and this?" in dumped
    assert "call it" not in dumped  # the assistant's thinking: Anthropic's alone, left out
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
    # (an image inside a tool result is taken: tests/test_tool_result_images.py)
    with pytest.raises(anthropic.BadRequestError, match="'document'"):
        c.messages.create(model="auto", max_tokens=50, messages=[*history, {
            "role": "user", "content": [tool_result, doc]}])  # fmt: skip


def test_thinking_is_kept_apart_in_any_assistant_turn() -> None:
    """With a tool_use or without: an agent's history with extended thinking is accepted,
    its thinking kept apart as the message's thinking_blocks (sent back to a model that
    thinks, left out for any other: tests/test_thinking_blocks.py)."""
    from satisfice.server import wire

    user = {"role": "user", "content": "hi"}
    thought = [{"type": "thinking", "thinking": "x", "signature": "s"},
               {"type": "redacted_thinking", "data": "y"}]  # fmt: skip
    turn = {"role": "assistant", "content": [*thought, {"type": "text", "text": "hello"}]}
    r = wire.anthropic_request(
        {"model": "auto", "max_tokens": 9, "messages": [user, turn, user]}, {}
    )
    assert r.messages[1] == {
        "role": "assistant", "content": [{"type": "text", "text": "hello"}],
        "thinking_blocks": thought,
    }  # fmt: skip
    use = {"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}
    turn = {"role": "assistant", "content": [*thought, use]}
    r = wire.anthropic_request(
        {"model": "auto", "max_tokens": 9, "messages": [user, turn, user]}, {}
    )
    assert r.messages[1]["thinking_blocks"] == thought
    assert r.messages[1]["tool_calls"][0]["id"] == "t1"


def test_a_revoked_key_cannot_be_patched_back(served: Any) -> None:
    url, *_ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    k = httpx.post(url + "/admin/keys", headers=admin, json={"name": "gone"}).json()
    assert httpx.delete(url + f"/admin/keys/{k['id']}", headers=admin).json()["revoked"]
    r = httpx.patch(url + f"/admin/keys/{k['id']}", headers=admin, json={"rpm": 5})
    assert r.status_code == 409 and "revoked" in r.json()["error"]["message"]
    auth = {"authorization": f"Bearer {k['key']}"}
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(url + "/v1/chat/completions", json=body, headers=auth).status_code == 401


def test_tpm_counts_the_output_a_request_may_take(served: Any) -> None:
    """tpm counted prompts only: a key with tpm=200 took 25 requests and 15,050 tokens in a
    minute. Now each request counts its prompt and its max_tokens."""
    url, *_ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    k = httpx.post(url + "/admin/keys", headers=admin, json={"name": "t", "tpm": 200}).json()
    c = _client(url, k["key"])
    msgs = [{"role": "user", "content": "hi"}]
    for _ in range(3):  # ~10 prompt tokens + 50 each
        c.chat.completions.create(model="auto", messages=msgs, max_tokens=50)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError, match="rate limit"):
        c.chat.completions.create(model="auto", messages=msgs, max_tokens=50)  # type: ignore[arg-type]


def test_anthropic_usage_and_cache_marks_reach_both_ends(served: Any) -> None:
    """A streamed answer's input tokens reached the SDK as 0, and cache_control on system
    and content blocks never reached the upstream (prompt caching lost)."""
    url, _, upstream, _ = served
    c = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    _OPEN.append(c)
    mark = {"type": "ephemeral"}
    system = [{"type": "text", "text": "Be brief.", "cache_control": mark}]
    content = [{"type": "text", "text": "Say hello", "cache_control": mark}]
    kw: Any = {"model": "auto", "max_tokens": 100, "system": system,
               "messages": [{"role": "user", "content": content}]}  # fmt: skip
    plain = c.messages.create(**kw)
    with c.messages.stream(**kw) as s:
        final = s.get_final_message()
    assert final.usage.input_tokens == plain.usage.input_tokens > 0
    seen = upstream.seen(wire(plain.model))[-1].body
    assert "cache_control" in json.dumps(seen)


def test_an_absurd_cost_cap_is_no_internal_error(served: Any) -> None:
    url, *_ = served
    r = httpx.post(url + "/v1/chat/completions", json={
        "model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_cost_usd": 1e308,
    })  # fmt: skip
    assert r.status_code == 200, r.text


def test_the_reservation_prices_a_cache_write_and_a_shutdown_keeps_it() -> None:
    import asyncio

    from satisfice.server.app import Service, _billed

    reg = registry("http://127.0.0.1:9")
    beta = reg["beta"]
    assert beta.price is not None
    reg = reg.replace(beta.replace(price=beta.price.replace(cache_write_1h=0.4)))
    svc = Service(ServerConfig(), Router(reg, Policy(quality_floor=0.5, max_fallbacks=0)))
    d = svc.router.route("word " * 3000, allow=("beta",))
    plain, _ = svc.worst_case(d, 10)
    cached, _ = svc.worst_case(d, 10, write="1h")
    assert cached > plain * 1.5  # the prompt is most of it, billed at twice the rate
    # a request a shutdown cancels may have a call in flight: its hold stands
    assert _billed(asyncio.CancelledError(), 0.5) == 0.5


def test_a_pinned_session_keeps_failover(served: Any) -> None:
    """A pin restricted the call to its model: a session whose model failed or was disabled
    got 502 until the pin expired, where a request without a session fell back."""
    from satisfice.server.wire import session_key

    url, app, upstream, _ = served
    svc = app.state.service
    svc.state._pins[f"anon:{session_key('s3')}"] = ("gamma", 1e12)
    c = _client(url)
    msgs: Any = [{"role": "user", "content": "hi"}]
    upstream.script(wire("gamma"), *[status(500)] * 4)
    r = c.chat.completions.create(model="auto", user="s3", messages=msgs)
    assert r.model != "gamma"  # failed over
    svc.state._pins[f"anon:{session_key('s4')}"] = ("gamma", 1e12)
    admin = {"authorization": f"Bearer {MASTER}"}
    assert httpx.post(url + "/admin/deployments/gamma/disable", headers=admin).status_code < 300
    r = c.chat.completions.create(model="auto", user="s4", messages=msgs)
    assert r.model != "gamma"  # routed around the disabled model


def test_chat_calls_where_the_decision_it_was_bounded_on_says() -> None:
    """A reload between a budget's reservation and the call repriced the call (a key spent
    past its budget); so could a cooldown, or the server's own max_tokens filtering the
    bounded model out: chat(decision=d) calls where the decision says."""
    import asyncio

    reg = registry("http://127.0.0.1:9")
    r = Router(reg, Policy(quality_floor=0.5, max_fallbacks=0))

    async def main() -> Any:
        d = await r.decide("hi")
        alpha = reg["alpha"]
        assert alpha.price is not None and d.model == "alpha"
        r.update(reg.replace(alpha.replace(price=alpha.price.replace(input=1000.0))))
        assert (await r.decide("hi")).model != "alpha"  # repriced: routed away now
        try:  # nothing listens on port 9: the attempts say where the call went
            await r.chat("hi", decision=d, max_tokens=10**6, timeout=0.5)
        except Exception as e:
            return e
        return None

    e = asyncio.run(main())
    assert e is not None and getattr(e, "attempts", None)
    assert e.attempts[0].model == "alpha"


def test_messages_what_a_routed_model_cannot_honour_is_refused_not_rewritten(served: Any) -> None:
    """A server tool, parallel tool use turned off, an image by file id and an image in
    `system` had been rewritten (a client tool with no schema, the flag dropped, the URL
    "None", an empty text block) and answered 200: each is a 400 naming it now."""
    url, _, upstream, _ = served
    c = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    _OPEN.append(c)
    msgs: list[Any] = [{"role": "user", "content": "hello"}]
    tool = {"name": "look", "input_schema": {"type": "object", "properties": {}}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]},
         "one of Anthropic's own tools"),  # (web search and web fetch: test_server_tools.py)
        ({"tools": [tool], "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
         "disable_parallel_tool_use"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "file", "file_id": "f1"}}]}]},
         "image source type 'file'"),
        ({"system": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
         "'system' blocks must be text"),
        # a tool choice that is not Anthropic's shape had been read as "auto", one naming
        # no tool sent the name None
        ({"tools": [tool], "tool_choice": "any"}, "tool_choice.* must be an object"),
        ({"tools": [tool], "tool_choice": {"type": "forced"}}, "tool_choice.* must be an object"),
        ({"tools": [tool], "tool_choice": {"type": "tool"}}, "tool_choice.* must be an object"),
        ({"tools": [tool], "tool_choice": {"type": "tool", "name": "nope"}},
         "does not define"),
        ({"tool_choice": {"type": "any"}}, "needs .tools"),
    ]  # fmt: skip
    for extra, word in cases:
        kw: dict[str, Any] = {"model": "auto", "max_tokens": 20, "messages": msgs, **extra}
        with pytest.raises(anthropic.BadRequestError, match=word):
            c.messages.create(**kw)
    # a custom tool's prompt-cache mark reaches an Anthropic upstream (beta speaks it)
    cached = {**tool, "cache_control": {"type": "ephemeral"}}
    c.messages.create(model="beta", max_tokens=20, messages=msgs, tools=[cached])  # type: ignore[list-item]
    assert upstream.seen(wire("beta"))[-1].body["tools"][0]["cache_control"] == {
        "type": "ephemeral"
    }


def test_openai_usage_details_cached_and_reasoning_tokens(served: Any) -> None:
    url, _, upstream, _ = served
    upstream.script(wire("alpha"), reply("hi", usage=(100, 5, 40)))
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    r = client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "hello"}]
    )
    client.close()
    assert r.usage is not None and r.usage.prompt_tokens_details is not None
    assert r.usage.prompt_tokens_details.cached_tokens == 40


def test_a_stream_names_the_model_called_not_the_alias(served: Any) -> None:
    """Streams said model "auto" (every chunk but the last; Anthropic's message_start,
    which the SDK keeps) where the answer said which model it came from."""
    url, _, _, _ = served
    c = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    _OPEN.append(c)
    msgs: list[Any] = [{"role": "user", "content": "hello"}]
    plain = c.messages.create(model="auto", max_tokens=20, messages=msgs)
    with c.messages.stream(model="auto", max_tokens=20, messages=msgs) as s:
        streamed = s.get_final_message()
    assert streamed.model == plain.model != "auto"
    body = {"model": "auto", "messages": msgs, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.headers["x-satisfice-model"] == plain.model
        models = {
            json.loads(line[6:])["model"] for line in r.iter_lines() if line.startswith("data: {")
        }
    assert models == {plain.model}


def test_file_and_audio_parts_are_never_admitted_as_free_under_a_budget_or_tpm(
    served: Any,
) -> None:
    """A file or audio part added nothing to the reservation or the tpm count: a 2.5 MB PDF
    went through a key with tpm 1000, and a $0.002 budget ended at 3x its limit. Their
    tokens cannot be counted, so a key with a budget or a tpm limit is refused them with a
    429 that says so; a key without limits is served."""
    url, _, _, _ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    pdf = {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64," + "A" * 4000},
    }
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    for part in (pdf, audio):
        body = {
            "model": "auto",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}],
        }
        for limits, word in (({"budget_usd": 5.0}, "cannot be bounded"),
                             ({"tpm": 100_000}, "tpm limit cannot be checked")):  # fmt: skip
            k = httpx.post(url + "/admin/keys", headers=admin,
                           json={"name": "k", **limits}).json()  # fmt: skip
            r = httpx.post(url + "/v1/chat/completions", json=body,
                           headers={"authorization": f"Bearer {k['key']}"})  # fmt: skip
            assert r.status_code == 429 and word in r.json()["error"]["message"], r.text
        free = httpx.post(url + "/admin/keys", headers=admin, json={"name": "free"}).json()
        r = httpx.post(url + "/v1/chat/completions", json=body,
                       headers={"authorization": f"Bearer {free['key']}"})  # fmt: skip
        assert r.status_code == 200, r.text
    spend = httpx.get(url + "/admin/spend", headers=admin).json()["budgets"]
    assert all(b["held_usd"] == 0 and b["spent_usd"] == 0 for b in spend)


def test_serve_freezes_its_heap_once_ready_and_a_mounted_app_leaves_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`satisfice serve` owns its process: once ready it collects and freezes what startup
    built, so the cyclic collector stops walking it. The app as a library (mounted in a
    user's app) leaves the process's collector alone."""
    import asyncio
    import gc

    import uvicorn

    from satisfice.server import create_app, listen, serve

    made: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, **kw: made.append(self.config.app))
    serve(ServerConfig(), sockets=listen("127.0.0.1", 0))
    assert made[0].state.service.freeze_heap is True
    assert create_app(ServerConfig()).state.service.freeze_heap is False

    async def ready(app: Any) -> int:
        async with app.router.lifespan_context(app):
            for _ in range(2000):
                if app.state.service.ready:
                    return gc.get_freeze_count()
                await asyncio.sleep(0.01)
        raise AssertionError("the service never became ready")

    gc.unfreeze()
    try:
        assert asyncio.run(ready(create_app(ServerConfig()))) == 0
        assert asyncio.run(ready(made[0])) > 10_000
    finally:
        gc.unfreeze()  # the rest of the test session collects as before


async def test_a_cancelled_wait_for_settlements_leaves_them_running() -> None:
    """`Service.settled()` (which /admin/spend and shutdown await) had gathered the
    settlement tasks: cancelling the wait cancelled them, and their spend was never counted
    while their hold stayed."""
    from satisfice.server import Service
    from satisfice.server.state import Budget

    svc = Service(ServerConfig())
    state = svc.state
    b = Budget("key:k1", 1.0, "total").pinned(hold="h1")
    assert await state.admit([b], 0.5) is None
    settle = state.settle

    async def slow(*a: Any) -> None:
        await asyncio.sleep(0.2)
        await settle(*a)

    state.settle = slow  # type: ignore[method-assign]
    svc.settle_soon([b], 0.5, 0.3)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(svc.settled(), 0.05)
    await asyncio.sleep(0.4)
    assert await state.spent(b) == pytest.approx((0.3, 0.0))


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_cancels_the_call(
    stream: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-streamed request whose client closed its connection went on waiting for the
    upstream's answer (and paying for it), its request in flight, until the call's own
    timeout: uvicorn notes the disconnect but never tells the app. The call is cancelled
    now, the request on record as cancelled, its budget's hold settled. A stream is written
    on its request's own task, which the connection cancels the same way (Starlette's
    response had run a second task and a task group for each stream to notice)."""

    from satisfice.testing.behaviors import hang

    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    # a stream under way (about 8 s of events), or an answer that never comes
    behavior = reply("word " * 400, chunk_delay=0.02) if stream else hang()
    with LocalUpstream(default=behavior) as up:
        router = Router(registry(up.url), Policy(quality_floor=0.5))
        cfg = ServerConfig(ledger=str(tmp_path / "l.db"))
        with running(cfg, router) as (url, app):
            svc = app.state.service
            admin = {"authorization": f"Bearer {MASTER}"}
            k = httpx.post(url + "/admin/keys", headers=admin,
                           json={"name": "leaver", "budget_usd": 5.0}).json()  # fmt: skip
            body = json.dumps(
                {"model": "auto", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
            ).encode()
            with post_chat(url, k["key"], body) as s:
                deadline = time.monotonic() + 10
                if stream:
                    got = b""
                    while got.count(b"data: ") < 3:  # the stream is under way
                        got += s.recv(65536)
                while not up.requests and time.monotonic() < deadline:
                    time.sleep(0.02)  # the call is out: the upstream has read the request
                assert up.open_connections == 1 and svc.in_flight == 1
            deadline = time.monotonic() + 5
            while (svc.in_flight or up.open_connections) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert svc.in_flight == 0, "the request still runs for a client that left"
            assert up.open_connections == 0, "the upstream call was left open"
            svc.router.ledger.flush()
            spend = httpx.get(url + "/admin/spend", headers=admin).json()
            # the hold is settled: whole when cancelled (the call may be billed, its size
            # unknown), at the text sent so far for a stream
            (row,) = spend["budgets"]
            assert row["spent_usd"] > 0 and row["held_usd"] == 0, row
    if not stream:
        recs = read_records(str(tmp_path / "l.db"))
        assert [r["error_type"] for r in recs] == ["RequestCancelled"], recs


def test_a_budget_and_a_tpm_limit_read_the_prompts_count_not_its_estimate(served: Any) -> None:
    """The reservation and the tpm count took the routing's estimate of the prompt, which
    for punctuation, CJK or base64 is several times under its count: 40 concurrent
    requests overspent a $0.01 budget 4.9x against an upstream billing the counted prompt,
    and a tpm of 3,000 let 14,210 counted tokens through in a minute."""
    import random
    import re

    from satisfice import _core

    url, *_ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    rnd = random.Random(7)
    text = "".join(rnd.choice("!@#$%^&*(){}[]<>?/\\|~`") for _ in range(4000))
    msgs = [{"role": "user", "content": text}]
    counted = _core.count_message_tokens(msgs, "o200k_base")
    assert counted > 2000  # the estimate was ~550
    zero = httpx.post(url + "/admin/keys", headers=admin,
                      json={"name": "zero", "budget_usd": 0}).json()  # fmt: skip
    r = httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {zero['key']}"},
                   json={"model": "alpha", "max_tokens": 1, "messages": msgs})  # fmt: skip
    assert r.status_code == 429, r.text
    m = re.search(r"may cost up to \$([0-9.]+)", r.json()["error"]["message"])
    assert m is not None, r.text
    assert float(m.group(1)) >= counted * 0.10 / 1e6, (m.group(1), counted)
    tpm = httpx.post(url + "/admin/keys", headers=admin,
                     json={"name": "tpm", "tpm": counted + 100}).json()  # fmt: skip
    if time.time() % 60 > 50:  # the windows are clock minutes: all three in one of them
        time.sleep(60.5 - time.time() % 60)
    codes = [
        httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {tpm['key']}"},
                   json={"model": "alpha", "max_tokens": 1, "messages": msgs}).status_code
        for _ in range(3)
    ]  # fmt: skip
    assert codes == [200, 429, 429], codes


def test_every_attempt_failing_alike_gets_the_status_of_its_cause(served: Any) -> None:
    """Every attempt failed was always a 502, which the SDKs retry as a server error: a
    prompt too long for the model (three calls for one request), an upstream's 429 with
    its Retry-After dropped, and the models cooling after it, each a 502."""
    from satisfice.testing.behaviors import context_length, status

    url, app, up, _ = served
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}]}
    up.script(wire("alpha"), context_length())
    r = httpx.post(url + "/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    up.script(wire("alpha"), status(429, retry_after=7))
    r = httpx.post(url + "/v1/chat/completions", json=body)
    assert r.status_code == 429 and r.headers["retry-after"] == "7", (r.status_code, r.text)
    assert r.json()["error"]["code"] == "upstream_rate_limited"
    r = httpx.post(url + "/v1/chat/completions", json=body)  # alpha cools meanwhile
    assert r.status_code == 503 and 1 <= int(r.headers["retry-after"]) <= 7, r.text
    assert r.json()["error"]["code"] == "models_cooling_down"
    app.state.service.router.enable("alpha")
    up.script(wire("alpha"), *[status(500)] * 5)
    r = httpx.post(url + "/v1/chat/completions", json=body)
    assert r.status_code == 502, r.text
    up.reset_script()


def test_odd_tool_choices_and_deep_json_are_400s_and_messages_paths_speak_anthropic(
    served: Any,
) -> None:
    """A tool_choice whose type was a list or object was a 500 (an unhashable key); one
    naming a tool that tools does not define went upstream; JSON nested ~1,000 deep in a
    field read as an object was a 500 (RecursionError); /v1/messages/count_tokens got a
    404 in OpenAI's shape, which the anthropic SDK does not read."""
    url, *_ = served
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    base = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "tools": tools}
    undefined = {"mode": "auto", "tools": [{"type": "function", "function": {"name": "g"}}]}
    for choice in ({"type": []}, {"type": {}}, {"type": "function", "function": {"name": "g"}},
                   {"type": "allowed_tools", "allowed_tools": undefined}):  # fmt: skip
        r = httpx.post(url + "/v1/chat/completions", json={**base, "tool_choice": choice})
        assert r.status_code == 400 and "tool_choice" in r.text, (choice, r.text)
    named = {"type": "function", "function": {"name": "f"}}
    r = httpx.post(url + "/v1/chat/completions", json={**base, "tool_choice": named})
    assert r.status_code == 200, r.text
    deep = '{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "user": '
    r = httpx.post(url + "/v1/chat/completions", content=deep + "[" * 1000 + "]" * 1000 + "}",
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400, r.text
    r = httpx.post(url + "/v1/messages/batches", json={"model": "auto", "messages": []})
    assert r.status_code == 404 and r.json()["type"] == "error", r.text


def test_a_client_that_leaves_during_admission_or_behind_a_pipelined_request_costs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that left while its request was admitted (before the call) still had the
    call made, and answered for nobody; and a request pipelined behind another hid the
    first from the disconnect (uvicorn's current cycle was the second's)."""
    import socket

    from satisfice.testing.behaviors import hang

    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}).encode()

    def request(key: str = "") -> bytes:
        auth = f"authorization: Bearer {key}\r\n".encode() if key else b""
        return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                b"application/json\r\n%scontent-length: %d\r\n\r\n%s"
                % (auth, len(body), body))  # fmt: skip

    with LocalUpstream(default=hang()) as up:
        router = Router(registry(up.url), Policy(quality_floor=0.5))
        with running(ServerConfig(ledger=str(tmp_path / "l.db")), router) as (url, app):
            svc = app.state.service
            host, port = url.removeprefix("http://").split(":")
            admin = {"authorization": f"Bearer {MASTER}"}
            k = httpx.post(url + "/admin/keys", headers=admin,
                           json={"name": "slow", "budget_usd": 5.0}).json()  # fmt: skip
            admit = svc.state.admit

            async def slow_admit(*a: Any, **kw: Any) -> Any:
                await asyncio.sleep(0.5)  # the client leaves meanwhile
                return await admit(*a, **kw)

            svc.state.admit = slow_admit
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(request(k["key"]))
                time.sleep(0.2)
            deadline = time.monotonic() + 5
            while svc.in_flight and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.2)
            assert svc.in_flight == 0 and up.open_connections == 0, "the call was made"
            (row,) = httpx.get(url + "/admin/spend", headers=admin).json()["budgets"]
            assert row["spent_usd"] == 0 and row["held_usd"] == 0, row
            svc.state.admit = admit
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(request() + request())  # the second waits behind the first
                deadline = time.monotonic() + 10
                while up.open_connections == 0 and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert svc.in_flight == 1
            deadline = time.monotonic() + 5
            while (svc.in_flight or up.open_connections) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert svc.in_flight == 0 and up.open_connections == 0, "the call was left open"


def test_a_mix_of_causes_maps_to_the_capable_models_status(served: Any) -> None:
    """A prompt too long for every model, one of them skipped for its window after the
    first said so, was a 502; an upstream 503 with Retry-After lost both; models that
    could not take the request's shape made the others' 429 a 502."""
    from satisfice.testing.behaviors import context_length, status

    url, app, up, _ = served
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    for m in ("alpha", "beta", "gamma", "delta"):
        up.script(wire(m), context_length())
    r = httpx.post(url + "/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    up.reset_script()
    svc = app.state.service
    for m in ("alpha", "beta", "gamma", "delta"):
        svc.router.enable(m)
        up.script(wire(m), *[status(503, retry_after=20)] * 3)
    r = httpx.post(url + "/v1/chat/completions", json=body)
    assert r.status_code == 503 and r.headers.get("retry-after") == "20", (r.status_code, r.text)
    up.reset_script()
    for m in ("alpha", "beta", "gamma", "delta"):
        svc.router.enable(m)
    for m in ("alpha", "gamma"):  # the OpenAI-wire models: the only ones that take it
        up.script(wire(m), *[status(429, retry_after=5)] * 3)
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    r = httpx.post(url + "/v1/chat/completions",
                   json={**body, "tools": tools, "response_format": rf})  # fmt: skip
    assert r.status_code == 429 and r.headers.get("retry-after") == "5", (r.status_code, r.text)
    up.reset_script()
    for m in ("alpha", "beta", "gamma", "delta"):
        svc.router.enable(m)


def test_an_upstream_that_knows_no_such_model_is_asked_once(served: Any) -> None:
    """Its 404 had become a 502 the SDKs sent three times."""
    url, _, up, _ = served
    up.script(wire("alpha"), status(404, message="no such model"))
    e, sent = _asked_with_retries(url)
    assert e.status_code == 502 and e.response.headers["x-should-retry"] == "false"
    assert sent == ["/v1/chat/completions"]


def test_a_streamed_answer_of_tool_calls_alone_names_its_role(served: Any) -> None:
    """OpenAI's first chunk names the role: a stream with no text had named none, and the
    SDK's streamed message (role None) was refused when sent back as the next turn."""
    url, _, up, _ = served
    up.script(wire("alpha"), reply("", tool_call=("get_weather", '{"city": "Oslo"}')))
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
    chunks = list(
        _client(url).chat.completions.create(
            model="alpha",
            messages=[{"role": "user", "content": "Oslo?"}],
            tools=tools,
            stream=True,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.role for c in chunks[1:] if c.choices] == [None] * (len(chunks) - 1)
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
    assert calls[0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_the_callers_metadata_is_recorded_and_store_is_refused(served: Any) -> None:
    """OpenAI's `metadata` and `store` had been accepted and dropped without a word."""
    url, app, _, tmp = served
    c = _client(url)
    msgs: Any = [{"role": "user", "content": "hi"}]
    c.chat.completions.create(model="auto", messages=msgs, metadata={"ticket": "T-1", "key": "x"})
    app.state.service.router.ledger.flush()
    (rec,) = list(read_records(tmp / "l.db"))
    assert rec["metadata"]["caller"] == {"ticket": "T-1", "key": "x"}
    assert "key" not in rec["metadata"]  # the caller's own, apart from the server's
    with pytest.raises(openai.BadRequestError, match="'store' must be false"):
        c.chat.completions.create(model="auto", messages=msgs, store=True)
    c.chat.completions.create(model="auto", messages=msgs, store=False)
    for bad in ({"k": 1}, {f"k{i}": "v" for i in range(17)}, {"k": "v" * 513}):
        with pytest.raises(openai.BadRequestError, match="'metadata' must be"):
            c.chat.completions.create(model="auto", messages=msgs, metadata=bad)  # type: ignore[arg-type]


def test_anthropic_blocks_are_alike_streamed_or_not(served: Any) -> None:
    """An answer of tool calls alone had streamed an empty text block before them (not
    there unstreamed: Anthropic refuses empty text blocks in a history sent back)."""
    url, _, up, _ = served
    c = _anthropic(url)
    kw: Any = dict(_TOOL_ASK)
    for text, kinds in (("", ["tool_use"]), ("Let me look.", ["text", "tool_use"])):
        up.script(wire("alpha"), *[reply(text, tool_call=("f", '{"a": 1}'))] * 2)
        m = c.messages.create(**kw)
        with c.messages.stream(**kw) as s:
            final = s.get_final_message()
        assert [b.type for b in m.content] == [b.type for b in final.content] == kinds
        assert final.content[-1].input == {"a": 1}  # type: ignore[union-attr]
        assert final.stop_reason == "tool_use"


def test_a_refusal_beside_text_reaches_anthropic_clients_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`text or refusal` had dropped the refusal when an OpenAI-wire model gave both."""
    from types import SimpleNamespace

    import satisfice.server.wire as w

    monkeypatch.setattr(w, "anthropic_usage", lambda u: {})
    monkeypatch.setattr(w, "decision_field", lambda r: {})
    res = SimpleNamespace(
        text="Sure, here", refusal="I can't help with that.", tool_calls=[], request_id="r",
        model="m", stop_sequence=None, finish_reason="stop", usage=None, thinking=[], raw=None,
    )  # fmt: skip
    out = w.anthropic_response(res)
    assert [b["text"] for b in out["content"]] == ["Sure, here", "I can't help with that."]
    assert out["stop_reason"] == "refusal"


def test_a_stream_carries_its_request_id(served: Any) -> None:
    """Without include_usage a stream had carried an id of its own, not its record's."""
    url, app, _, tmp = served
    raw = _client(url).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    rid = raw.headers["x-satisfice-request-id"]
    assert {c.id for c in raw.parse()} == {f"chatcmpl-{rid}"}
    app.state.service.router.ledger.flush()
    assert [r["request_id"] for r in read_records(tmp / "l.db")] == [rid]


@pytest.mark.parametrize("stream", [False, True])
def test_every_answer_of_a_session_pins_its_model(served: Any, stream: bool) -> None:
    """A streamed /v1/messages answer had set no pin (the OpenAI stream and both
    non-streamed answers did)."""
    from satisfice.server.wire import session_key

    url, app, _, _ = served
    pins = app.state.service.state._pins
    c = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    _OPEN.append(c)
    kw: Any = {"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    sid = f"anthropic-{stream}"
    if stream:
        with c.messages.stream(**kw, metadata={"user_id": sid}) as s:
            model = s.get_final_message().model
    else:
        model = c.messages.create(**kw, metadata={"user_id": sid}).model
    assert pins[f"anon:{session_key(sid)}"][0] == model


def test_a_settlement_above_its_hold_is_counted_and_logged(
    served: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An upstream that reports more prompt tokens than satisfice counted is settled at its
    report (it bills it): the budget may end past its limit, by the sum over requests in
    flight; each excess is now counted and logged, where nothing had said so."""
    url, app, up, _ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    k = httpx.post(url + "/admin/keys", headers=admin, json={"name": "o", "budget_usd": 1.0})
    up.script(wire("alpha"), reply("ok", usage=(7900, 1, 0)))  # "hi" reported as 7,900
    with caplog.at_level("WARNING", logger="satisfice"):
        _client(url, k.json()["key"]).chat.completions.create(
            model="alpha", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
        app.state.service.router.ledger.flush()
        import time

        reg = app.state.service.metrics.registry
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not reg.get_sample_value(_OVER):
            time.sleep(0.01)  # the settlement runs on a task of its own, after the answer
    over = reg.get_sample_value(_OVER)
    assert 0.0007 < over < 0.0008  # 7,900 tokens at $0.10/M, less the few the hold counted
    assert any("above its hold" in r.getMessage() for r in caplog.records)


_OVER = "satisfice_settled_over_hold_usd_total"


def test_a_budget_held_by_requests_in_flight_may_be_retried(served: Any) -> None:
    """x-should-retry: false is for a budget spent; one whose room is held by requests in
    flight (worst cases, released within seconds) had been refused for good as well."""
    import threading

    url, _, up, _ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    msgs: Any = [{"role": "user", "content": "hi"}]
    k = httpx.post(url + "/admin/keys", headers=admin, json={"name": "h", "budget_usd": 1.0})
    c = _client(url, k.json()["key"])
    # one request's hold, then a budget that fits one and not two
    up.script(wire("alpha"), reply("ok"))
    raw = c.chat.completions.with_raw_response.create(model="alpha", max_tokens=2000, messages=msgs)
    assert raw.status_code == 200
    spent = httpx.get(url + "/admin/spend", headers=admin).json()["budgets"][0]["spent_usd"]
    kid = k.json()["id"]
    httpx.patch(url + f"/admin/keys/{kid}", headers=admin, json={"budget_usd": spent + 0.0012})
    up.script(wire("alpha"), reply("slow", latency=1.5))
    first = threading.Thread(
        target=lambda: c.chat.completions.create(model="alpha", max_tokens=2000, messages=msgs)
    )
    first.start()

    def held() -> float:
        budgets = httpx.get(url + "/admin/spend", headers=admin).json()["budgets"]
        return sum(b["held_usd"] for b in budgets if b["name"] == "h")

    # the first is in flight, its hold taken (polled: a stalled CI machine can take longer
    # than a fixed sleep to get it there)
    assert until(lambda: held() > 0), "the first request's hold was never taken"
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="alpha", max_tokens=2000, messages=msgs)
    first.join()
    assert e.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    assert "x-should-retry" not in e.value.response.headers


def test_the_end_user_and_cache_key_reach_the_upstreams_that_document_them(served: Any) -> None:
    """OpenAI's `user` and `prompt_cache_key` had been read as the session id and dropped:
    OpenAI's prompt cache lost the key that keeps a conversation's prefix warm. Anthropic
    takes the user as `metadata.user_id`; an OpenAI-compatible host that is not OpenAI is
    sent neither (some refuse a field they do not know)."""
    url, _, up, _ = served
    c = _client(url)
    msgs: Any = [{"role": "user", "content": "hi"}]
    c.chat.completions.create(model="alpha", messages=msgs, user="u-42", prompt_cache_key="conv-7")
    sent = up.seen(wire("alpha"))[-1].body
    assert "user" not in sent and "prompt_cache_key" not in sent  # a local host, not OpenAI
    c.chat.completions.create(model="beta", messages=msgs, user="u-42")
    assert up.seen(wire("beta"))[-1].body["metadata"] == {"user_id": "u-42"}
    a = _anthropic(url)
    a.messages.create(model="beta", max_tokens=20, messages=msgs, metadata={"user_id": "u-9"})
    assert up.seen(wire("beta"))[-1].body["metadata"] == {"user_id": "u-9"}
    # what Anthropic would refuse (over 256 characters, not valid Unicode) stays a session
    # key and is not sent: a hint is not worth a refused request
    for user in ("u" * 300, "a\ud800b", ""):
        raw = json.dumps({"model": "beta", "messages": msgs, "user": user})  # \ud800 escaped
        r = httpx.post(url + "/v1/chat/completions", content=raw,
                       headers={"content-type": "application/json"})  # fmt: skip
        assert r.status_code == 200, r.text
        assert "metadata" not in up.seen(wire("beta"))[-1].body
    with pytest.raises(openai.BadRequestError, match="'user' must be a string"):
        c.chat.completions.create(model="alpha", messages=msgs, user=5)  # type: ignore[arg-type]


def test_an_answer_written_at_once_keeps_http_1_1s_rules(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 200 answer is written to the connection at once (`_http._answer`), past
    Starlette's response and uvicorn's send: pipelined requests are answered in order on
    one connection, a request's `Connection: close` and HTTP/1.0 close it after the
    answer, which says so, and the head is uvicorn's (its date and server headers first)."""
    import socket

    from satisfice.server import _http

    written: list[bool] = []
    real = _http._answer

    def spy(*a: Any) -> bool:
        written.append(real(*a))
        return written[-1]

    monkeypatch.setattr(_http, "_answer", spy)
    url, *_ = served
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"model": "alpha", "messages": [{"role": "user", "content": "hi"}]})

    def ask(extra: str = "", version: str = "1.1") -> bytes:
        return (
            f"POST /v1/chat/completions HTTP/{version}\r\nhost: x\r\ncontent-type: "
            f"application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n{body}"
        ).encode()

    def answers(s: socket.socket, n: int) -> tuple[list[bytes], bool]:
        """The heads of `n` answers, and whether the server then closed."""
        s.settimeout(5)
        buf, heads = b"", []
        while len(heads) < n:
            chunk = s.recv(65536)
            assert chunk, buf
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, rest = buf.split(b"\r\n\r\n", 1)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(rest) < length:
                    break
                assert json.loads(rest[:length])["choices"][0]["message"]["content"]
                heads.append(head)
                buf = rest[length:]
        s.settimeout(0.5)
        try:
            closed = s.recv(1) == b""
        except TimeoutError:
            closed = False
        return heads, closed

    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(ask() + ask())
        heads, closed = answers(s, 2)
        assert not closed and all(h.startswith(b"HTTP/1.1 200 OK\r\ndate: ") for h in heads)
        assert b"\r\nserver: uvicorn\r\nx-satisfice-request-id: " in heads[0]
        assert b"connection" not in heads[0]
        s.sendall(ask("connection: close\r\n"))
        (head,), closed = answers(s, 1)
        assert closed and head.endswith(b"\r\nconnection: close")
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(ask(version="1.0"))
        (head,), closed = answers(s, 1)
        assert closed and head.endswith(b"\r\nconnection: close")
    assert written == [True] * 4  # every answer took the direct write


@pytest.mark.parametrize("how", ["add_middleware", "wrapped"])
def test_middleware_sees_every_answer(
    how: str, upstream: LocalUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under middleware added to the app, or an ASGI app wrapping it, answers and streams go
    through their `send` (the direct write had sent a 200 past them: CORS headers lost, a
    BaseHTTPMiddleware's answer broken)."""
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.middleware.cors import CORSMiddleware

    from satisfice.server import create_app
    from satisfice.server._http import http_protocol

    from .servers import free_port

    upstream.wait_idle()
    upstream.reset_script()
    app = create_app(ServerConfig(), router=Router(registry(upstream.url)))
    outer: Any = app
    if how == "add_middleware":

        async def mark(request: Any, call_next: Any) -> Any:
            response = await call_next(request)
            response.headers["x-mw"] = "1"
            return response

        app.add_middleware(BaseHTTPMiddleware, dispatch=mark)
        app.add_middleware(CORSMiddleware, allow_origins=["*"])
    else:
        outer = CORSMiddleware(app, allow_origins=["*"])
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(outer, host="127.0.0.1", port=port, log_level="error",
                                           access_log=False, http=http_protocol()))  # fmt: skip
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        while httpx.get(f"http://127.0.0.1:{port}/ready").status_code != 200:
            time.sleep(0.05)
        body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}]}
        origin = {"origin": "http://example.com"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=origin) as c:
            for stream in (False, True, False):
                r = c.post("/v1/chat/completions", json={**body, "stream": stream})
                assert r.status_code == 200, r.text
                assert r.headers["access-control-allow-origin"] == "*"
                if how == "add_middleware":
                    assert r.headers["x-mw"] == "1"
                assert ("data: [DONE]" in r.text) is stream
    finally:
        server.should_exit = True
        t.join(10)


def test_a_client_that_leaves_during_admission_leaves_no_hold(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request cancelled while its admission's reply was on its way (its client gone)
    left the hold the store had made: nothing settled it. Its release is queued now, as for
    a reply lost to the store going away."""
    import socket

    url, app, _, _ = served
    svc = app.state.service
    admin = {"authorization": f"Bearer {MASTER}"}
    k = httpx.post(url + "/admin/keys", headers=admin,
                   json={"name": "slow", "budget_usd": 5.0}).json()  # fmt: skip
    real = svc.state.admit

    async def slow_reply(*a: Any, **kw: Any) -> Any:
        out = await real(*a, **kw)  # reserved, then the reply is slow to come
        await asyncio.sleep(1.0)
        return out

    monkeypatch.setattr(svc.state, "admit", slow_reply)
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
            b"\r\nauthorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s"
            % (k["key"].encode(), len(body), body)
        )
        time.sleep(0.3)  # in admission
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        (row,) = httpx.get(url + "/admin/spend", headers=admin).json()["budgets"]
        if row["held_usd"] == 0 and svc.in_flight == 0:
            break
        time.sleep(0.05)
    assert row["held_usd"] == 0 and row["spent_usd"] == 0, row


def test_a_client_that_leaves_a_stream_with_a_request_behind_it_logs_no_error(
    served: Any,
) -> None:
    """uvicorn marks only a connection's latest request disconnected: a stream with a
    pipelined request behind it, its client gone, was taken for an app that returned
    without completing its response (an ERROR logged)."""
    import logging
    import socket

    from satisfice.testing import reply

    url, app, up, _ = served
    up.script(wire("alpha"), reply("word " * 300, chunk_delay=0.02))
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    log = logging.getLogger("uvicorn.error")
    h = Keep(logging.WARNING)
    log.addHandler(h)
    try:
        one = json.dumps({"model": "alpha", "stream": True,
                          "messages": [{"role": "user", "content": "hi"}]}).encode()  # fmt: skip
        ask = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
               b"application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(one), one))  # fmt: skip
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(ask + ask)
            got = b""
            while got.count(b"data: ") < 3:
                got += s.recv(65536)
        svc = app.state.service
        deadline = time.monotonic() + 5
        while svc.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        assert svc.in_flight == 0
    finally:
        log.removeHandler(h)
    assert not [m for m in seen if "without completing" in m], seen


def _tool_turns(cc: dict[str, str]) -> list[Any]:
    """An agent loop's turns in Anthropic's shape: two texts and a call, each cache-marked
    but the second text, then the call's failed result, marked too."""
    return [
        {"role": "user", "content": "Look it up."},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Step one.", "cache_control": cc},
            {"type": "text", "text": "Step two."},
            {"type": "tool_use", "id": "tu1", "name": "look", "input": {"q": "x"},
             "cache_control": cc},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "tu1", "content": "boom", "is_error": True,
             "cache_control": cc},
        ]},
    ]  # fmt: skip


def test_messages_tool_turns_keep_their_cache_marks_texts_and_error_flag(served: Any) -> None:
    """A tool result's prompt-cache mark (what an agent loop marks) and an assistant's marks
    were dropped, so the cache never hit; `is_error` became "Error: " in the text, and two
    texts were run together ("Step one.Step two."), on Anthropic's own upstream too. Found
    by review. An OpenAI upstream gets what its API reads."""
    url, _, upstream, _ = served
    c = _anthropic(url)
    cc = {"type": "ephemeral"}
    tool = {"name": "look", "input_schema": {"type": "object"}}
    c.messages.create(model="beta", max_tokens=20, tools=[tool], messages=_tool_turns(cc))  # type: ignore[arg-type, list-item]
    sent = upstream.seen(wire("beta"))[-1].body["messages"]
    assert sent[1]["content"] == [
        {"type": "text", "text": "Step one.", "cache_control": cc},
        {"type": "text", "text": "Step two."},
        {"type": "tool_use", "id": "tu1", "name": "look", "input": {"q": "x"},
         "cache_control": cc},
    ]  # fmt: skip
    result = {"type": "tool_result", "tool_use_id": "tu1", "content": "boom", "is_error": True}
    assert sent[2]["content"] == [{**result, "cache_control": cc}]
    # a tool that printed nothing, its result marked (a client marks the last block): the
    # mark stays on the result, never on an empty text block, which Anthropic refuses
    turns = _tool_turns(cc)
    turns[1]["content"].insert(1, {"type": "text", "text": "", "cache_control": cc})
    turns[2]["content"][0]["content"] = ""
    c.messages.create(model="beta", max_tokens=20, tools=[tool], messages=turns)  # type: ignore[arg-type, list-item]
    sent = upstream.seen(wire("beta"))[-1].body["messages"]
    assert [b.get("text") for b in sent[1]["content"]] == ["Step one.", "Step two.", None]
    assert sent[2]["content"][0]["content"] == "" and sent[2]["content"][0]["cache_control"] == cc
    c.messages.create(model="alpha", max_tokens=20, tools=[tool], messages=_tool_turns(cc))  # type: ignore[arg-type, list-item]
    sent = upstream.seen(wire("alpha"))[-1].body["messages"]
    assert [p["text"] for p in sent[1]["content"]] == ["Step one.", "Step two."]
    assert "cache_control" not in sent[1]["tool_calls"][0]  # OpenAI's tool calls have none
    assert sent[2]["role"] == "tool" and not {"is_error", "cache_control"} & set(sent[2])
    assert sent[2]["content"] == "Error: boom"  # said as OpenAI's API can


def test_strict_tools_stay_strict_and_anthropic_only_tool_fields_are_refused(
    served: Any,
) -> None:
    """`strict` was dropped on every way through (a tool's input no longer held to its
    schema), and Anthropic's own tool fields were dropped without a word. Found by review."""
    url, _, upstream, _ = served
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    an, oa = _anthropic(url), _client(url)
    msgs: Any = [{"role": "user", "content": "hi"}]
    for model, api in (("beta", "anthropic"), ("alpha", "openai")):
        tool = {"name": "get", "input_schema": schema, "strict": True}
        an.messages.create(model=model, max_tokens=20, messages=msgs, tools=[tool])  # type: ignore[list-item]
        (sent,) = upstream.seen(wire(model))[-1].body["tools"]
        assert (sent if api == "anthropic" else sent["function"])["strict"] is True
    fn = {"type": "function", "function": {"name": "get", "parameters": schema, "strict": True}}
    oa.chat.completions.create(model="beta", messages=msgs, tools=[fn])  # type: ignore[list-item]
    assert upstream.seen(wire("beta"))[-1].body["tools"][0]["strict"] is True
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}
    upstream.script(wire("beta"), reply(tool_call=("json", '{"q": "x"}')))
    oa.chat.completions.create(model="beta", messages=msgs, response_format=rf)  # type: ignore[arg-type]
    assert upstream.seen(wire("beta"))[-1].body["tools"][0]["strict"] is True
    with pytest.raises(anthropic.BadRequestError, match=r"\['defer_loading'\].*remove them"):
        an.messages.create(model="beta", max_tokens=20, messages=msgs, tools=[  # type: ignore[list-item]
            {"name": "get", "input_schema": schema, "defer_loading": True}])  # fmt: skip


def test_messages_metadata_other_than_a_user_id_is_refused(served: Any) -> None:
    """An unknown metadata key was dropped and a metadata that is no object ignored, where
    Anthropic's API refuses both. Found by review."""
    url, _, upstream, _ = served
    base = {"model": "beta", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    for meta in ({"user_id": "u", "tenant": "acme"}, "acme", {"user_id": 5}):
        r = httpx.post(url + "/v1/messages", json={**base, "metadata": meta})
        assert r.status_code == 400 and "metadata" in r.json()["error"]["message"], r.text
    r = httpx.post(url + "/v1/messages", json={**base, "metadata": {"user_id": "u"}})
    assert r.status_code == 200 and upstream.seen(wire("beta"))[-1].body["metadata"] == {
        "user_id": "u"
    }


def test_what_anthropic_models_cannot_read_of_openai_messages_routes_elsewhere() -> None:
    """A message's `name` was dropped and a system message inside the conversation moved to
    the top (it then applied from the start): Anthropic models refuse both now, so the
    request goes to a model it was routed to that reads them, or says why none could."""
    from satisfice.errors import SatisficeError
    from satisfice.providers import ChatRequest
    from satisfice.providers.anthropic import to_anthropic

    named = [{"role": "user", "content": "I'm Bob", "name": "bob"}]
    # a tool result's name (frameworks add it) says nothing its call id does not: taken
    call = {"id": "c1", "type": "function", "function": {"name": "get", "arguments": "{}"}}
    loop = [{"role": "user", "content": "weather?", "name": ""},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "name": "get", "content": "sunny"}]  # fmt: skip
    assert to_anthropic(ChatRequest(loop), "claude-x")["messages"][2]["content"][0]["content"] == (
        "sunny"
    )
    late = [{"role": "system", "content": "S1"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "system", "content": "From now on answer in French."},
            {"role": "user", "content": "and now?"}]  # fmt: skip
    for msgs, word in ((named, "'name'"), (late, "system message inside the conversation")):
        with pytest.raises(SatisficeError, match=word):
            to_anthropic(ChatRequest(msgs), "claude-x")
    # system messages before the conversation are its system prompt, as before
    p = to_anthropic(ChatRequest(late[:1] + late[:2]), "claude-x")
    assert p["system"] == "S1\n\nS1" and p["messages"] == [{"role": "user", "content": "hi"}]


def test_parameters_sent_at_their_default_are_taken_and_any_other_value_refused(
    served: Any,
) -> None:
    """`parallel_tool_calls=True` and `logprobs=False` (what frameworks send explicitly) were
    refused like any unsupported parameter, so such a client could not call at all. Found
    by review."""
    url, *_ = served
    c = _client(url)
    msgs: Any = [{"role": "user", "content": "hi"}]
    r = c.chat.completions.create(
        model="auto", messages=msgs, tools=TOOLS, parallel_tool_calls=True, logprobs=False,
        presence_penalty=0, frequency_penalty=0.0, logit_bias={}, modalities=["text"],
    )  # fmt: skip
    assert r.choices[0].message.content or r.choices[0].message.tool_calls
    for kw in ({"parallel_tool_calls": False}, {"logprobs": True}, {"presence_penalty": 0.5}):
        with pytest.raises(openai.BadRequestError, match=r"taken only at their default \(\w+: "):
            c.chat.completions.create(model="auto", messages=msgs, tools=TOOLS, **kw)  # type: ignore[call-overload]


def test_the_anthropic_beta_header_reaches_anthropic_upstreams_only(served: Any) -> None:
    """The SDK's `betas=` (the anthropic-beta header) was dropped without a word, so the
    features it turns on were off. Found by review. An OpenAI upstream is not sent it:
    the features are Anthropic's API's."""
    url, _, upstream, _ = served
    c = _anthropic(url)
    msgs: Any = [{"role": "user", "content": "hi"}]
    for model in ("beta", "alpha"):
        for stream in (False, True):
            kw: Any = {"model": model, "max_tokens": 20, "messages": msgs,
                       "betas": ["context-1m-2025-08-07", "x-2026-01-01"]}  # fmt: skip
            if stream:
                with c.beta.messages.stream(**kw) as s:
                    s.get_final_message()
            else:
                c.beta.messages.create(**kw)
            sent = upstream.seen(wire(model))[-1].headers
            want = "context-1m-2025-08-07,x-2026-01-01" if model == "beta" else None
            assert sent.get("anthropic-beta") == want, (model, stream, dict(sent))
    c.messages.create(model="beta", max_tokens=20, messages=msgs)  # none asked: none sent
    assert "anthropic-beta" not in upstream.seen(wire("beta"))[-1].headers
    r = httpx.post(url + "/v1/messages", headers={"anthropic-beta": "é".encode("latin-1")}, json={
        "model": "beta", "max_tokens": 20, "messages": msgs})  # fmt: skip
    assert r.status_code == 400 and "anthropic-beta header" in r.text
    r = httpx.post(url + "/v1/messages", headers={"anthropic-beta": "x,\ty"}, json={
        "model": "beta", "max_tokens": 20, "messages": msgs})  # fmt: skip
    assert r.status_code == 200 and upstream.seen(wire("beta"))[-1].headers["anthropic-beta"] == (
        "x,\ty"
    )
    # two anthropic-beta headers: both lists reach the upstream (the second had been dropped)
    two = [("anthropic-beta", "a-1"), ("anthropic-beta", "b-2")]
    r = httpx.post(url + "/v1/messages", headers=two,
                   json={"model": "beta", "max_tokens": 20, "messages": msgs})  # fmt: skip
    assert r.status_code == 200 and upstream.seen(wire("beta"))[-1].headers["anthropic-beta"] == (
        "a-1,b-2"
    )


def test_a_tool_result_naming_no_tool_use_is_said_in_the_messages_apis_words(served: Any) -> None:
    """The refusal named OpenAI's field ('tool_call_id') at the translated message's index.
    Found by review."""
    url, *_ = served
    msgs = [{"role": "user", "content": [{"type": "tool_result", "content": "r"}]}]
    r = httpx.post(url + "/v1/messages", json={"model": "beta", "max_tokens": 20,
                                               "system": "S", "messages": msgs})  # fmt: skip
    assert r.status_code == 400 and "'tool_use_id'" in r.text and "tool_call_id" not in r.text


def test_a_model_is_retrieved_by_its_id_or_alias(served: Any) -> None:
    """The SDKs' `models.retrieve` got a 404 "no such endpoint". Found by review."""
    url, *_ = served
    c = _client(url)
    assert c.models.retrieve("alpha").id == "alpha"
    assert c.models.retrieve("auto-cheap").id == "auto-cheap"
    with pytest.raises(openai.NotFoundError, match="unknown model 'nope'"):
        c.models.retrieve("nope")
    assert _anthropic(url).models.retrieve("beta").id == "beta"
    assert httpx.get(url + "/v1/models/alpha").json()["owned_by"] == "openai"


def test_count_tokens_counts_for_the_model_the_request_would_reach(served: Any) -> None:
    """Anthropic's `messages.count_tokens` (which coding agents call before a turn) had been
    a 404: it now counts the prompt, system and tools for the model the same /v1/messages
    request is routed to, exactly where that model's tokenizer ships, and calls nothing."""
    url, app, up, _ = served
    router = app.state.service.router
    c = _anthropic(url)
    msgs: Any = [{"role": "user", "content": "Count the words in this sentence, please."}]
    before = len(up.requests)
    plain = c.messages.count_tokens(model="auto", messages=msgs)
    raw = c.messages.with_raw_response.count_tokens(
        model="auto", system="Be brief.", messages=msgs, tools=_TOOL_ASK["tools"]
    )
    asked = raw.parse()
    assert raw.headers["x-satisfice-model"] == "alpha"  # o200k: counted exactly
    assert raw.headers["x-satisfice-tokens"] == "exact"
    with_all = [{"role": "system", "content": "Be brief."}, *msgs]
    tools = [{"type": "function", "function": {"name": "f", "description": "",
                                               "parameters": {"type": "object"}}}]  # fmt: skip
    d = router.route(with_all, tools=tools, count_prompt=True)
    assert asked.input_tokens == d.tokens_in("alpha")
    assert plain.input_tokens == router.route(msgs, count_prompt=True).tokens_in("alpha")
    assert 0 < plain.input_tokens < asked.input_tokens
    # a named model counts in its own tokenizer: Claude's is estimated, and says so
    raw = c.messages.with_raw_response.count_tokens(model="beta", messages=msgs)
    assert raw.headers["x-satisfice-model"] == "beta"
    assert raw.headers["x-satisfice-tokens"] == "estimated" and raw.parse().input_tokens > 0
    # Claude's thinking in the conversation: counted, though an OpenAI model is never sent
    # it, so the count is no longer exact (it had said "exact")
    thought = [*msgs, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "They want a count. " * 20, "signature": "s"},
        {"type": "text", "text": "Seven."}]}, {"role": "user", "content": "And now?"}]  # fmt: skip
    raw = c.messages.with_raw_response.count_tokens(model="alpha", messages=thought)
    assert raw.headers["x-satisfice-tokens"] == "estimated"
    assert len(up.requests) == before  # nothing was called
    # a call's own fields, an unknown model and empty messages: 400 / 404 in Anthropic's shape
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        c.post("/v1/messages/count_tokens", cast_to=object,
               body={"model": "auto", "messages": msgs, "max_tokens": 5})  # fmt: skip
    with pytest.raises(anthropic.NotFoundError, match="nope"):
        c.messages.count_tokens(model="nope", messages=msgs)
    with pytest.raises(anthropic.BadRequestError, match="messages"):
        c.messages.count_tokens(model="auto", messages=[])
    with pytest.raises(anthropic.BadRequestError, match="mcp_servers"):
        c.messages.count_tokens(model="auto", messages=msgs,
                                extra_body={"mcp_servers": [{"name": "x"}]})  # fmt: skip
    assert len(up.requests) == before


def _thinking_registry(url: str) -> Registry:
    """alpha (OpenAI wire) at efforts none/low/high, beta (Anthropic) at low/high; each
    base row at its API's default (alpha thinks, beta does not)."""
    models = []
    for mid, api, efforts in (
        ("alpha", "openai", {"none": 0, "low": 1024, "high": 16384}),
        ("beta", "anthropic", {"low": 2048, "high": 16384}),
    ):
        models.append({
            "id": mid, "provider": api,
            "tokenizer": "o200k_base" if api == "openai" else "claude",
            "context_window": 100_000, "max_output": 40_000,
            "capabilities": ["json", "tools", "streaming", "system_prompt", "reasoning"],
            "price": {"input": 0.1, "output": 0.4}, "quality": {"general": 0.9},
            "efforts": {k: {"reasoning_tokens": n, "quality": 0.0} for k, n in efforts.items()},
            "deployments": [{"name": f"{mid}-dep", "api": api, "model": f"{mid}-wire",
                             "base_url": url + ("/v1" if api == "openai" else "")}],
        })  # fmt: skip
    return Registry.from_dict({"model": models})


def test_thinking_and_reasoning_effort_route_to_rows_that_think_as_asked(
    upstream: LocalUpstream,
) -> None:
    """Anthropic's `thinking` (which coding agents send on every turn, "adaptive" by
    default) and OpenAI's `reasoning_effort` had been a 400 "unsupported parameter": they
    now route to the (model, effort) rows that think as asked, and the upstream is sent that
    effort (OpenAI's `reasoning_effort`, Anthropic's thinking budget)."""
    upstream.wait_idle()
    upstream.reset_script()
    router = Router(_thinking_registry(upstream.url), Policy(quality_floor=0.5))
    with running(ServerConfig(), router) as (url, _):
        c, o = _anthropic(url), _client(url)
        # (room for the thinking: Anthropic's max_tokens holds it)
        ask: Any = {"max_tokens": 20000, "messages": [{"role": "user", "content": "hi"}]}

        def sent(**kw: Any) -> tuple[str, dict[str, Any]]:
            before = len(upstream.requests)
            raw = c.messages.with_raw_response.create(**{"model": "auto", **ask, **kw})
            assert raw.parse().content, raw.text()
            (seen,) = upstream.requests[before:]
            return raw.headers["x-satisfice-model"], seen.body

        # adaptive: routing picks the effort, as for a request without `thinking`
        assert sent(thinking={"type": "adaptive"})[0] == sent()[0]
        model, body = sent(thinking={"type": "enabled", "budget_tokens": 4000})
        assert router.registry[model].reasoning_tokens in range(1, 4001), model
        assert body.get("reasoning_effort") == "low" or body["thinking"]["budget_tokens"] <= 4000
        model, body = sent(thinking={"type": "disabled"})
        assert router.registry[model].reasoning_tokens == 0, model
        assert "reasoning_effort" not in body or body["reasoning_effort"] == "none"
        assert "thinking" not in body
        # a named model at the effort asked: its own effort rows
        model, body = sent(model="beta", thinking={"type": "enabled", "budget_tokens": 20000})
        assert model.startswith("beta@") and body["thinking"]["type"] == "enabled", model
        before = len(upstream.requests)
        r = o.chat.completions.with_raw_response.create(
            model="auto", messages=ask["messages"], reasoning_effort="high"
        )
        assert r.headers["x-satisfice-model"] in ("alpha@high", "beta@high")
        seen = upstream.requests[before:][0].body
        assert seen.get("reasoning_effort") == "high" or seen["thinking"]["type"] == "enabled"
        # what cannot be met, or said two ways, is a 400 that says so; nothing is called
        before = len(upstream.requests)
        with pytest.raises(openai.BadRequestError, match="xhigh"):
            o.chat.completions.create(model="alpha", messages=ask["messages"],
                                      reasoning_effort="xhigh")  # fmt: skip
        with pytest.raises(openai.BadRequestError, match="reasoning_effort"):
            o.chat.completions.create(model="auto", messages=ask["messages"],
                                      reasoning_effort="loud")  # fmt: skip
        with pytest.raises(openai.BadRequestError, match="send one of them"):
            o.chat.completions.create(
                model="auto", messages=ask["messages"], reasoning_effort="low",
                extra_body={"reasoning": "none"},
            )  # fmt: skip
        for bad in ({"type": "sometimes"}, {"type": "enabled"}, "on",
                    {"type": "enabled", "budget_tokens": 100, "x": 1}):  # fmt: skip
            with pytest.raises(anthropic.BadRequestError, match="thinking"):
                c.messages.create(model="auto", thinking=bad, **ask)
        with pytest.raises(anthropic.BadRequestError, match="max_reasoning_tokens=10"):
            c.messages.create(model="auto", thinking={"type": "enabled", "budget_tokens": 10},
                              **ask)  # fmt: skip
        assert len(upstream.requests) == before
        # counted as the same request would be routed
        n = c.messages.with_raw_response.count_tokens(
            model="beta",
            messages=ask["messages"],
            thinking={"type": "enabled", "budget_tokens": 3000},
        )
        assert n.headers["x-satisfice-model"] == "beta@low"


def test_what_coding_agents_send_on_every_turn_is_taken(upstream: LocalUpstream) -> None:
    """Claude Code sends `context_management` (Anthropic's context editing) on every turn
    and `output_config` (an effort, or a JSON schema) on some: each had been a 400
    "unsupported parameter", which ended every turn. Context editing reaches Anthropic
    deployments, which alone apply it (the answer says which edits they applied); the
    effort picks the rows of that effort; the schema is JSON mode."""
    upstream.wait_idle()
    upstream.reset_script()
    router = Router(_thinking_registry(upstream.url), Policy(quality_floor=0.5))
    edits = {"edits": [{"type": "clear_tool_uses_20250919"}]}
    with running(ServerConfig(), router) as (url, _):
        c = _anthropic(url)
        ask: Any = {"max_tokens": 100, "messages": [{"role": "user", "content": "hi"}],
                    "thinking": {"type": "adaptive"}}  # fmt: skip
        for model in ("alpha", "beta"):
            before = len(upstream.requests)
            m = c.messages.create(model=model, extra_body={"context_management": edits}, **ask)
            (seen,) = upstream.requests[before:]
            extra = m.model_extra or {}
            if model == "beta":  # an Anthropic upstream: sent, and its applied edits said
                assert seen.body["context_management"] == edits
                assert extra["context_management"] == {"applied_edits": []}
            else:  # any other is sent the conversation whole, and no edit is said applied
                assert "context_management" not in seen.body
                assert "context_management" not in extra
        before = len(upstream.requests)
        raw = c.messages.with_raw_response.create(
            model="auto", extra_body={"output_config": {"effort": "high"}}, **ask
        )
        assert raw.headers["x-satisfice-model"].endswith("@high")
        body = upstream.requests[before:][0].body
        assert body.get("reasoning_effort") == "high" or body["thinking"]["type"] == "enabled"
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
        before = len(upstream.requests)
        c.messages.create(model="alpha", extra_body={"output_config": {"format": {
            "type": "json_schema", "schema": schema}}}, **ask)  # fmt: skip
        rf = upstream.requests[before:][0].body["response_format"]
        assert rf["type"] == "json_schema" and rf["json_schema"]["schema"] == schema
        before = len(upstream.requests)
        for bad in ({"effort": "maximal"}, {"format": {"type": "regex"}}, {"speed": 1}, "high"):
            with pytest.raises(anthropic.BadRequestError, match="output_config"):
                c.messages.create(model="auto", extra_body={"output_config": bad}, **ask)
        with pytest.raises(anthropic.BadRequestError, match="context_management"):
            c.messages.create(model="auto", extra_body={"context_management": [1]}, **ask)
        assert len(upstream.requests) == before
