"""/v1/messages: an assistant turn's tool_use `input` becomes an OpenAI tool call's
`arguments` text (`server.wire._tool_blocks`), the same conversion 3bf6493 made refuse NaN
and ±Infinity for an Anthropic upstream's answer. Defect: the server reads a request body's
1e999, NaN or 5,000-digit integer as ±inf/nan (`_json.loads`), and `json.dumps` wrote them
into the arguments as `Infinity`/`NaN`: the upstream was sent a call that no JSON parser
reads (inside a string, so the body's own NaN check never saw it). Expected: a 400 saying
what it is, nothing sent upstream; a finite input is written as before."""

from __future__ import annotations

import json

import httpx
import pytest

from satisfice import Registry, Router
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, reply

from .server_support import running

H = {"anthropic-version": "2023-06-01", "x-api-key": "anything",
     "content-type": "application/json"}  # fmt: skip


def _body(number: bytes) -> bytes:
    doc = {
        "model": "gpt-5.4-mini", "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_x", "name": "f", "input": {"n": 0, "s": "é"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_x", "content": "ok"}]},
        ],
    }  # fmt: skip
    raw = json.dumps(doc).encode()
    assert raw.count(b'"n": 0') == 1
    return raw.replace(b'"n": 0', b'"n": ' + number)


@pytest.mark.parametrize("number", [b"1e999", b"NaN", b"-Infinity", b"9" * 5000])
def test_a_tool_use_input_json_cannot_write_is_refused(number: bytes) -> None:
    with LocalUpstream() as up:
        up.default = reply("done")
        with running(ServerConfig(), Router(up.patch(Registry.default()))) as (url, _):
            r = httpx.post(url + "/v1/messages", content=_body(number), headers=H, timeout=60)
        assert r.status_code == 400, (r.status_code, r.text[:300])
        assert "NaN, Infinity or a number past" in r.text, r.text[:300]
        assert not up.requests, [q.body for q in up.requests]


def test_a_finite_tool_use_input_is_sent_as_before() -> None:
    with LocalUpstream() as up:
        up.default = reply("done")
        with running(ServerConfig(), Router(up.patch(Registry.default()))) as (url, _):
            r = httpx.post(url + "/v1/messages", content=_body(b"1.5"), headers=H, timeout=60)
        assert r.status_code == 200, r.text[:300]
        (call,) = [m for m in up.requests[-1].body["messages"] if m.get("tool_calls")]
        assert call["tool_calls"][0]["function"]["arguments"] == '{"n": 1.5, "s": "é"}'
