"""Adversarial review of `satisfice serve`'s drop-in compatibility (OpenAI Chat Completions,
Anthropic Messages): requests the real APIs take, answers in shapes their clients rely on.
Each test failed on b1f7666."""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from satisfice import Policy, Registry, Router
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, RawUpstream, http_response

from .chat_support import move_alpha, registry
from .server_support import running

MASTER = "master-test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def upstream() -> Iterator[LocalUpstream]:
    with LocalUpstream() as up:
        yield up


@pytest.fixture
def up(upstream: LocalUpstream, monkeypatch: pytest.MonkeyPatch) -> LocalUpstream:
    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    upstream.wait_idle()
    upstream.reset_script()
    from satisfice import _core

    _core.wait_for_tokenizers()
    return upstream


@pytest.fixture
def on_raw(up: LocalUpstream, tmp_path: Path) -> Iterator[tuple[str, RawUpstream]]:
    """The server, with alpha (OpenAI wire format, cheapest: routed to first) on a raw
    upstream whose every reply the test writes; no fallback."""
    with RawUpstream(keep_alive=True) as raw:
        reg = move_alpha(registry(up.url), raw.url, "openai")
        path = tmp_path / "r.toml"
        path.write_text(reg.to_toml())
        cfg = ServerConfig(registry_path=str(path), ledger=str(tmp_path / "l.db"))
        with running(cfg, Router(reg, Policy(quality_floor=0.5, max_fallbacks=0))) as (url, _):
            yield url, raw


def _openai_answer(message: dict[str, Any], finish: str) -> bytes:
    return http_response(json.dumps({
        "id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "alpha-wire",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }).encode())  # fmt: skip


def _openai_stream(deltas: list[dict[str, Any]], finish: str) -> bytes:
    """An OpenAI stream of `deltas`, then the finish reason, the usage and [DONE]."""
    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0,
            "model": "alpha-wire"}  # fmt: skip
    chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
              for d in deltas]  # fmt: skip
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    chunks.append(
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
    )
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return http_response(body + b"data: [DONE]\n\n", ctype="text/event-stream")


_TOOLS = [{"name": "get_weather", "input_schema": {"type": "object"}}]


# 1 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_tool_call_answers_stop_reason_tool_use(
    on_raw: tuple[str, RawUpstream], stream: bool
) -> None:
    """/v1/messages with `tool_choice: {"type": "tool", ...}` (or any tool call) routed to an
    OpenAI model: OpenAI's API answers a call forced by a named tool_choice with
    finish_reason "stop", not "tool_calls". satisfice maps "stop" to stop_reason "end_turn"
    beside a tool_use block; Anthropic's API says "tool_use" whenever the answer calls a
    tool, and agent loops (`while resp.stop_reason == "tool_use"`, Claude Code's) stop there,
    the call never run."""
    url, raw = on_raw
    call = {"id": "call_abc", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}  # fmt: skip
    if stream:
        raw.push(
            _openai_stream(
                [
                    {"role": "assistant", "content": None},
                    {"tool_calls": [{"index": 0, **call}]},
                ],
                "stop",
            )
        )
    else:
        raw.push(
            _openai_answer({"role": "assistant", "content": None, "tool_calls": [call]}, "stop")
        )
    client = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    kw: dict[str, Any] = dict(
        model="alpha", max_tokens=100, tools=_TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
    )  # fmt: skip
    if stream:
        with client.messages.stream(**kw) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**kw)
    client.close()
    assert [b.type for b in msg.content] == ["tool_use"]
    assert msg.stop_reason == "tool_use", msg.stop_reason


# 2 -------------------------------------------------------------------------------------------
def _png(width: int, height: int, size: int) -> bytes:
    """A PNG of `size` bytes (its pixel data random: a screenshot's does not compress)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    head = b"\x89PNG\r\n\x1a\n" + chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    )
    return head + chunk(b"IDAT", os.urandom(size - len(head) - 24)) + chunk(b"IEND", b"")


def test_the_default_body_limit_takes_a_screenshot(up: LocalUpstream, tmp_path: Path) -> None:
    """A Messages request with one 3.5 MB PNG screenshot (4.7 MB as base64), to a Claude
    model with vision: Anthropic's API takes images up to 5 MB each in requests up to 32 MB
    (docs: "Vision" limits, "Request size limits"); `satisfice serve` with its default
    config answers 413 request_too_large (`max_body_bytes` = 4 MiB), so a coding agent that
    pasted one screenshot (or whose conversation holds a few) cannot go on. The default
    limit is below what the bundled registry's 1M-token windows need as text too."""
    img = base64.b64encode(_png(1568, 1000, 3_500_000)).decode()
    body = {
        "model": "claude-sonnet-4-6", "max_tokens": 100,
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": img}},
            {"type": "text", "text": "What is wrong in this screenshot?"},
        ]}],
    }  # fmt: skip
    cfg = ServerConfig(ledger=str(tmp_path / "l.db"))  # the defaults
    with running(cfg, Router(up.patch(Registry.default()))) as (url, _):
        r = httpx.post(url + "/v1/messages", json=body, timeout=60)
    assert r.status_code == 200, r.text[:300]


# 3 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field",
    [{"seed": None}, {"top_logprobs": None}, {"service_tier": None}, {"service_tier": "auto"}],
    ids=["seed-null", "top_logprobs-null", "service_tier-null", "service_tier-auto"],
)
def test_openai_parameters_at_null_or_their_default_are_taken(
    up: LocalUpstream, tmp_path: Path, field: dict[str, Any]
) -> None:
    """OpenAI's API reads a nullable parameter sent as null as not sent (`seed`,
    `top_logprobs`, `service_tier` are "integer or null" / "string or null" in the Chat
    Completions reference), and `service_tier: "auto"` is its default. satisfice refuses
    each with 400 "unsupported parameter(s)", though it takes `presence_penalty: null`,
    `logprobs: false` and (on /v1/messages) `service_tier: "auto"` as changing nothing: a
    client that serializes unset options as null cannot call at all."""
    reg = tmp_path / "r.toml"
    reg.write_text(registry(up.url).to_toml())
    cfg = ServerConfig(registry_path=str(reg), ledger=str(tmp_path / "l.db"))
    router = Router(registry(up.url), Policy(quality_floor=0.5))
    with running(cfg, router) as (url, _):
        r = httpx.post(url + "/v1/chat/completions", timeout=30, json={
            "model": "auto", "messages": [{"role": "user", "content": "hi"}], **field})  # fmt: skip
    assert r.status_code == 200, r.text[:300]


# 4 -------------------------------------------------------------------------------------------
def test_a_tool_call_without_an_id_can_be_answered(on_raw: tuple[str, RawUpstream]) -> None:
    """An OpenAI-compatible upstream's tool call with an empty id (some servers give none),
    on /v1/messages: satisfice answers a tool_use block with `"id": ""` (Anthropic's ids
    are never empty: ^[a-zA-Z0-9_-]+$), and the client's next turn, its tool_result with
    that tool_use_id, is refused by satisfice itself ("each tool_result needs a
    'tool_use_id'"): the agent loop is stuck on the id satisfice gave it."""
    url, raw = on_raw
    call = {"id": "", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    raw.push(
        _openai_answer({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"),
        _openai_answer({"role": "assistant", "content": "Sunny."}, "stop"),
    )
    ask = {"model": "alpha", "max_tokens": 100, "tools": _TOOLS,
           "messages": [{"role": "user", "content": "Weather in Oslo?"}]}  # fmt: skip
    r = httpx.post(url + "/v1/messages", json=ask, timeout=30)
    assert r.status_code == 200, r.text
    (use,) = r.json()["content"]
    assert use["type"] == "tool_use" and use["id"], use
    turn = {**ask, "messages": [
        *ask["messages"],
        {"role": "assistant", "content": r.json()["content"]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use["id"], "content": "sunny"}]},
    ]}  # fmt: skip
    r = httpx.post(url + "/v1/messages", json=turn, timeout=30)
    assert r.status_code == 200, r.text[:300]


# 5 -------------------------------------------------------------------------------------------
def test_a_small_thinking_budget_on_a_named_claude_model_is_served(
    up: LocalUpstream, tmp_path: Path
) -> None:
    """`thinking: {"type": "enabled", "budget_tokens": 1024}` (the API's documented minimum)
    with `model: "claude-haiku-4-5"`, which takes extended thinking with a budget: the real
    API answers; satisfice keeps only effort rows whose expected reasoning fits 1024 tokens,
    and every Claude row expects 2048 or more, so it answers 400 no_route ("loosen
    'reasoning'"). (Asked with 10000, the same model is sent budget_tokens 2048: the
    caller's figure is not what goes out either.)"""
    cfg = ServerConfig(ledger=str(tmp_path / "l.db"))
    with running(cfg, Router(up.patch(Registry.default()))) as (url, _):
        before = len(up.requests)
        r = httpx.post(url + "/v1/messages", timeout=30, json={
            "model": "claude-haiku-4-5", "max_tokens": 4096,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [{"role": "user", "content": "Is 1001 prime?"}],
        })  # fmt: skip
        sent = [s.body for s in up.requests[before:]]
    assert r.status_code == 200, r.text[:400]
    thinking = sent[-1].get("thinking") or {}
    assert thinking.get("type") == "enabled" and thinking.get("budget_tokens", 0) <= 1024, thinking
