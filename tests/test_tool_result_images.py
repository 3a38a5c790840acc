"""An image inside a tool result (Claude Code's Read tool on a screenshot or a PNG answers
with one) on /v1/messages. It had been a 400 ("a tool_result may hold text only"), so a
coding agent's turn after reading an image failed whatever model it was routed to. Now a
Claude model gets it where Anthropic's API takes it (inside the tool_result); an OpenAI
model, whose tool messages hold text alone, gets the result's text and then the image in a
user message after the turn's tool results; and routing asks for vision, counting it."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from satisfice import Registry, Router
from satisfice.providers.openai import _openai_messages
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream

from .server_support import running

H = {"anthropic-version": "2023-06-01", "x-api-key": "anything"}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}


def _turn(model: str) -> dict[str, Any]:
    """A tool loop: the model read two files, one of them an image."""
    return {
        "model": model,
        "max_tokens": 1000,
        "messages": [
            {"role": "user", "content": "what does the screenshot show?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_a", "name": "Read", "input": {"path": "s.png"}},
                {"type": "tool_use", "id": "toolu_b", "name": "Read", "input": {"path": "a.txt"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a",
                 "content": [{"type": "text", "text": "s.png (64 bytes)"}, IMAGE]},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": "hello"},
            ]},
        ],
        "tools": [{"name": "Read", "description": "read a file",
                   "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}],
    }  # fmt: skip


def _post(model: str) -> tuple[httpx.Response, list[Any]]:
    with (
        LocalUpstream() as up,
        running(ServerConfig(), Router(up.patch(Registry.default()))) as (
            url,
            _,
        ),
    ):
        r = httpx.post(url + "/v1/messages", headers=H, json=_turn(model), timeout=30)
        return r, [q.body for q in up.requests]


def test_a_claude_model_gets_the_image_inside_its_tool_result() -> None:
    r, sent = _post("claude-haiku-4-5")
    assert r.status_code == 200, r.text
    results = sent[-1]["messages"][-1]["content"]
    assert [b["type"] for b in results] == ["tool_result", "tool_result"]
    assert [b["type"] for b in results[0]["content"]] == ["text", "image"]
    assert results[0]["content"][1]["source"]["data"] == PNG


def test_an_openai_model_gets_the_image_after_the_tool_results() -> None:
    r, sent = _post("gpt-5.4-mini")
    assert r.status_code == 200, r.text
    msgs = sent[-1]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "tool", "user"]
    a, b, images = msgs[2:]
    assert a["tool_call_id"] == "toolu_a" and isinstance(a["content"], str)
    assert "s.png (64 bytes)" in a["content"] and "image" in a["content"]
    assert b == {"role": "tool", "tool_call_id": "toolu_b", "content": "hello"}
    urls = [p["image_url"]["url"] for p in images["content"] if p["type"] == "image_url"]
    assert urls == [f"data:image/png;base64,{PNG}"]
    assert "toolu_a" in images["content"][0]["text"]


@pytest.mark.parametrize("model", ["auto", "mistral-small"])
def test_routing_asks_for_vision(model: str) -> None:
    r, sent = _post(model)
    if model == "auto":
        assert r.status_code == 200, r.text
        chosen = Registry.default()[r.headers["x-satisfice-model"]]
        assert "vision" in chosen.capabilities
    else:  # a model that cannot see: refused, not sent an image it cannot read
        assert r.status_code == 400 and not sent
        assert "vision" in r.json()["error"]["message"]


def test_a_text_only_conversation_is_sent_as_it_is() -> None:
    msgs = [{"role": "tool", "tool_call_id": "x", "content": [{"type": "text", "text": "a"}]}]
    assert _openai_messages(msgs) is msgs
