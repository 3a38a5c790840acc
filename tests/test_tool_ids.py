"""Tool call ids across providers. A conversation's ids are made by whichever model called
the tools, and routing can send its next turn to another provider, whose API may refuse
them: Mistral's takes only 9 letters and digits ("Tool call id was call_0fypS1hVX but must
be a-z, A-Z, 0-9, with a length of 9"), Anthropic's only letters, digits, "_" and "-"
(Kimi's "functions.get_weather:0" is a 400 there) and each call's its own, OpenAI's at
most 40 characters. Each such turn had been a 400 whatever the caller did. The local
upstream now refuses them as those APIs do; the providers send an id such an API refuses
as a hash of it (the same id always alike, so a call and its result still pair) and every
other id as it came."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import anthropic
import httpx
import pytest

from satisfice import Registry, Router
from satisfice.providers.base import ChatRequest, wire_tool_id
from satisfice.providers.openai import OpenAIProvider
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream

from .server_support import running

MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")
ANTHROPIC_ID = re.compile(r"[A-Za-z0-9_-]+")
WEATHER = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}},
}


def _loop(*ids: str) -> list[dict[str, Any]]:
    """An OpenAI-shaped tool loop: one assistant turn calling `weather` once per id, and a
    result for each."""
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": "weather", "arguments": "{}"}}
            for i in ids
        ],
    }
    results = [{"role": "tool", "tool_call_id": i, "content": f"sunny {i}"} for i in ids]
    return [{"role": "user", "content": "weather in Paris and Oslo?"}, call, *results]


def _pairs(sent: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(the call ids, the result ids) in an OpenAI-shaped body the upstream got."""
    calls = [c["id"] for m in sent["messages"] for c in m.get("tool_calls") or ()]
    results = [m["tool_call_id"] for m in sent["messages"] if m["role"] == "tool"]
    return calls, results


async def _chat(model: str, messages: list[dict[str, Any]], stream: bool = False) -> Any:
    with LocalUpstream() as up:
        router = Router(up.patch(Registry.default()))
        try:
            if stream:
                s = router.stream(messages, allow=[model], tools=[WEATHER])
                assert "".join([d.text async for d in s])
            else:
                r = await router.chat(messages, allow=[model], tools=[WEATHER])
                assert r.text
        finally:
            await router.aclose()
        return [q.body for q in up.requests]


@pytest.mark.parametrize("stream", [False, True])
async def test_mistral_gets_9_character_ids_that_still_pair(stream: bool) -> None:
    ids = ("call_PTLP8xhu3uwZk4l3nlnrrJha", "toolu_01A09q90qw90lq917835lq9")
    sent = await _chat("mistral-small", _loop(*ids), stream)
    assert len(sent) == 1  # answered on the first try: no 400, no fallback
    calls, results = _pairs(sent[0])
    assert all(MISTRAL_ID.fullmatch(i) for i in calls), calls
    assert calls == results and len(set(calls)) == 2
    again = await _chat("mistral-small", _loop(*ids), stream)
    assert _pairs(again[0]) == (calls, results)  # the same ids on every turn


async def test_ids_an_api_takes_are_sent_as_they_came() -> None:
    sent = await _chat("mistral-small", _loop("D681PevKs"))
    assert _pairs(sent[0]) == (["D681PevKs"], ["D681PevKs"])
    sent = await _chat("gpt-5.4-mini", _loop("functions.get_weather:0"))  # (40 at most)
    assert _pairs(sent[0]) == (["functions.get_weather:0"], ["functions.get_weather:0"])
    sent = await _chat("claude-haiku-4-5", _loop("call_abc-123"))
    blocks = [b for m in sent[0]["messages"] for b in m["content"] if isinstance(b, dict)]
    assert {b.get("id") or b.get("tool_use_id") for b in blocks} == {"call_abc-123"}


async def test_claude_gets_ids_in_its_pattern_that_still_pair() -> None:
    sent = await _chat("claude-haiku-4-5", _loop("functions.get_weather:0", "functions.x:1"))
    assert len(sent) == 1
    blocks = [b for m in sent[0]["messages"] for b in m["content"] if isinstance(b, dict)]
    uses = [b["id"] for b in blocks if b["type"] == "tool_use"]
    results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
    assert all(ANTHROPIC_ID.fullmatch(i) and i.startswith("toolu_") for i in uses), uses
    assert uses == results and len(set(uses)) == 2


def test_an_anthropic_client_s_loop_routed_to_mistral() -> None:
    """/v1/messages with the official client: Claude Code's `toolu_` ids, the turn named
    to Mistral (as a routed one may be)."""
    with (
        LocalUpstream() as up,
        running(ServerConfig(), Router(up.patch(Registry.default()))) as (url, _),
    ):
        client = anthropic.Anthropic(base_url=url, api_key="anything", max_retries=0)
        msg = client.messages.create(
            model="mistral-small",
            max_tokens=200,
            tools=[{"name": "weather", "input_schema": {"type": "object", "properties": {}}}],
            messages=[
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9",
                     "name": "weather", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                     "content": "sunny"},
                ]},
            ],
        )  # fmt: skip
        assert msg.content
        calls, results = _pairs(up.requests[-1].body)
        assert calls == results and MISTRAL_ID.fullmatch(calls[0])


def test_the_local_upstream_refuses_ids_as_the_apis_do() -> None:
    """What the tests above lean on: the upstream refuses, as those APIs do, an id they
    refuse (so a provider that sent one as it came would fail them)."""
    import httpx

    with LocalUpstream() as up:
        body = {"model": "mistral-small", "messages": _loop("call_1")}
        r = httpx.post(up.url + "/v1/chat/completions", json=body, timeout=10)
        assert r.status_code == 400 and "length of 9" in r.text
        body = {
            "model": "claude-haiku-4-5",
            "max_tokens": 10,
            "messages": [
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "functions.w:0", "name": "w", "input": {}}]},
            ],
        }  # fmt: skip
        r = httpx.post(up.url + "/v1/messages", json=body, timeout=10)
        assert r.status_code == 400 and "^[a-zA-Z0-9_-]+$" in r.text


def test_hashed_ids_are_stable_and_distinct() -> None:
    ids = [f"call_{i}" for i in range(2000)] + ["", "é:1", "\ud800"]
    once = [wire_tool_id(i, MISTRAL_ID, 9) for i in ids]
    assert once == [wire_tool_id(i, MISTRAL_ID, 9) for i in ids]
    assert len(set(once)) == len(ids) and all(MISTRAL_ID.fullmatch(i) for i in once)


def _call(i: str) -> dict[str, Any]:
    fn = {"name": "weather", "arguments": "{}"}
    return {"role": "assistant", "content": None, "tool_calls": [{"id": i, "type": "function",
                                                                   "function": fn}]}  # fmt: skip


async def test_an_id_repeated_across_turns_reaches_claude_unique() -> None:
    """Some models call every turn's first tool `call_0`; OpenAI's API takes that,
    Anthropic's refuses it ("`tool_use` ids must be unique"). Found by review."""
    msgs = [
        {"role": "user", "content": "weather?"},
        _call("call_0"),
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "and tomorrow?"},
        _call("call_0"),
        {"role": "tool", "tool_call_id": "call_0", "content": "rain"},
    ]
    sent = await _chat("claude-haiku-4-5", msgs)
    assert len(sent) == 1
    blocks = [b for m in sent[0]["messages"] if isinstance(m["content"], list)
              for b in m["content"]]  # fmt: skip
    uses = [b["id"] for b in blocks if b["type"] == "tool_use"]
    results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
    assert uses[0] == "call_0" and len(set(uses)) == 2  # the first as it came
    assert uses == results  # each result answers its own turn's call


def test_openai_is_sent_ids_of_at_most_40_characters() -> None:
    """OpenAI's API refuses an id over 40 characters ("string too long. Expected a string
    with maximum length 40"): DeepSeek's `call_0_<uuid>` is 43. Found by review."""
    long_id = "call_0_8f1d2b0e-5b8c-4f0a-9f3c-2d3b1a0c9e7f"
    client = httpx.AsyncClient()
    p = OpenAIProvider(client, base_url="https://api.openai.com/v1", model="gpt-5.4-mini")
    asyncio.run(client.aclose())  # (only the payload is built: no call is made)
    request = ChatRequest(_loop(long_id), tools=[WEATHER])
    body = p._payload(request, False)
    calls, results = _pairs(body)
    assert len(calls[0]) <= 40 and calls == results


async def test_mistral_s_image_note_names_the_id_mistral_is_sent() -> None:
    """A tool result's images reach Mistral in a user message after the results, labelled
    with the call's id: the id Mistral is sent, not the one it never sees. Found by
    review."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    original = "call_PTLP8xhu3uwZk4l3nlnrrJha"
    msgs = [
        {"role": "user", "content": "a screenshot?"},
        _call(original),
        {"role": "tool", "tool_call_id": original,
         "content": [{"type": "text", "text": "here"}, image]},
    ]  # fmt: skip
    sent = (await _chat("mistral-medium-3.5", msgs))[-1]["messages"]
    wire_id = sent[1]["tool_calls"][0]["id"]
    label = next(p["text"] for p in sent[-1]["content"] if p.get("type") == "text")
    assert MISTRAL_ID.fullmatch(wire_id) and wire_id in label and original not in label
