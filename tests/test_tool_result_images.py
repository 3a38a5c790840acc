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


def _post(model: str, body: dict[str, Any] | None = None) -> tuple[httpx.Response, list[Any]]:
    """`body` (else `_turn(model)`) on /v1/messages: the answer and what the upstream got."""
    with (
        LocalUpstream() as up,
        running(ServerConfig(), Router(up.patch(Registry.default()))) as (
            url,
            _,
        ),
    ):
        r = httpx.post(url + "/v1/messages", headers=H, json=body or _turn(model), timeout=30)
        return r, [q.body for q in up.requests]


def _one_result(model: str, content: list[Any]) -> dict[str, Any]:
    """`_turn` whose user turn is one tool result (of its first call), holding `content`."""
    body = _turn(model)
    call = {**body["messages"][1], "content": body["messages"][1]["content"][:1]}
    result = {"type": "tool_result", "tool_use_id": "toolu_a", "content": content}
    body["messages"] = [body["messages"][0], call, {"role": "user", "content": [result]}]
    return body


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


# -- found by review: a cache mark on the image, an empty text beside it ----------------------
def test_a_cache_mark_on_an_image_in_a_tool_result_reaches_claude() -> None:
    """Prompt-cache marks on a tool_result's blocks are carried (text blocks keep theirs);
    an agent that marks the last block of its turn marks the image when the result ends on
    one."""
    marked = {**IMAGE, "cache_control": {"type": "ephemeral"}}
    body = _one_result("claude-haiku-4-5", [{"type": "text", "text": "s.png"}, marked])
    r, sent = _post("", body)
    assert r.status_code == 200, r.text
    result = sent[-1]["messages"][-1]["content"][0]
    assert result["content"][1].get("cache_control") == {"type": "ephemeral"}, result


def test_an_empty_text_beside_an_image_is_left_out_for_claude() -> None:
    """Empty texts are left out of a tool_result (Anthropic refuses an empty text block):
    also when an image comes beside it."""
    r, sent = _post("", _one_result("claude-haiku-4-5", [{"type": "text", "text": ""}, IMAGE]))
    assert r.status_code == 200, r.text
    blocks = sent[-1]["messages"][-1]["content"][0]["content"]
    assert all(b.get("text") != "" for b in blocks if b["type"] == "text"), blocks
