"""Tool call ids on the served wire, as reviewed: `satisfice serve` driven by the official
`anthropic` client over a real socket (a coding agent's turns), against a raw-socket upstream.
Every test here failed on the code it was written against; each docstring says the defect
and what should hold instead."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai

from satisfice import Policy, Router
from satisfice.server import ServerConfig
from satisfice.testing.raw import RawUpstream, http_response

from . import chat_support as cs
from .server_support import running

TOOLS = [{"name": "get_weather", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}}}}]  # fmt: skip


def _router(url: str) -> Router:
    # no fallbacks: the model asked is the one that answers (alpha: OpenAI's wire, beta:
    # Anthropic's), so each test sees one translation
    return Router(cs.registry(url), Policy(quality_floor=0.5, max_fallbacks=0))


@contextlib.contextmanager
def _clients(url: str) -> Iterator[tuple[anthropic.Anthropic, openai.OpenAI]]:
    a = anthropic.Anthropic(base_url=url, api_key="anything", max_retries=0, timeout=30)
    o = openai.OpenAI(base_url=url + "/v1", api_key="anything", max_retries=0, timeout=30)
    try:
        yield a, o
    finally:
        a.close()
        o.close()


def _sent(raw: RawUpstream, i: int = -1) -> dict[str, Any]:
    """The JSON body of the raw upstream's `i`th request."""
    body: dict[str, Any] = json.loads(raw.requests[i].split(b"\r\n\r\n", 1)[1])
    return body


def _openai_answer(**message: Any) -> bytes:
    return http_response(json.dumps({
        "id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "alpha-wire",
        "choices": [{"index": 0, "finish_reason": message.pop("finish", "stop"),
                     "message": {"role": "assistant", **message}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
    }).encode())  # fmt: skip


def _anthropic_answer(text: str = "ok") -> bytes:
    return http_response(json.dumps({
        "id": "msg_x", "type": "message", "role": "assistant", "model": "beta-wire",
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 1},
    }).encode())  # fmt: skip


def test_parallel_tool_calls_with_one_id_reach_an_anthropic_client_as_distinct_tool_uses() -> None:
    """Defect: an OpenAI-compatible upstream that gives two parallel calls the same id
    (`call_0` twice, as some OpenAI-compatible servers number them) is served to the
    Anthropic client as two `tool_use` blocks with one id, which Anthropic's API never
    gives; the agent answers each, and on the next turn, routed to a Claude model, both
    `tool_result`s are sent for the second call (Rome's) and the first (Paris's) has none:
    Anthropic refuses the turn ("tool_use ids were found without tool_result blocks"), and
    Paris's weather is filed under Rome. Expected: each tool_use of an answer has an id of
    its own (as the served id of a call given none already is), and the next turn pairs
    each result with its own call."""
    calls = [{"id": "call_0", "type": "function",
              "function": {"name": "get_weather", "arguments": json.dumps({"city": c})}}
             for c in ("Paris", "Rome")]  # fmt: skip
    ask = [{"role": "user", "content": "weather in Paris and Rome?"}]
    with (
        RawUpstream(keep_alive=True) as raw,
        running(ServerConfig(), _router(raw.url)) as (url, _),
        _clients(url) as (a, _o),
    ):
        raw.push(_openai_answer(content=None, tool_calls=calls, finish="tool_calls"))
        m = a.messages.create(model="alpha", max_tokens=200, tools=TOOLS, messages=ask)
        uses = [b for b in m.content if b.type == "tool_use"]
        assert [u.input["city"] for u in uses] == ["Paris", "Rome"]
        turn = [
            *ask,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": u.id,
                 "content": f"sunny in {u.input['city']}"} for u in uses]},
        ]  # fmt: skip
        raw.push(_anthropic_answer())
        a.messages.create(model="beta", max_tokens=200, tools=TOOLS, messages=turn)
        sent = _sent(raw)["messages"]
    assert len({u.id for u in uses}) == 2, f"two tool_use blocks share id {uses[0].id!r}"
    call_ids = {b["input"]["city"]: b["id"] for b in sent[1]["content"] if b["type"] == "tool_use"}
    answered = {b["content"]: b["tool_use_id"] for b in sent[2]["content"]}
    assert answered == {"sunny in Paris": call_ids["Paris"], "sunny in Rome": call_ids["Rome"]}
