"""A stream's progress is what the upstream sends, not only its text: a tool call whose
arguments take longer than stream_idle_timeout_s to write (a coding agent's file, minutes of
it) had been cut by that timeout mid-call, the pieces arriving all along; and while only
such pieces come, the caller gets a keep-alive now and then (a server, a ping), not
silence a proxy would cut. Each test failed before tool calls counted as progress."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from satisfice import Registry, Router
from satisfice.executor import ExecutionConfig
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, reply

from .server_support import running

TOOL = {"type": "function", "function": {"name": "Write", "parameters": {"type": "object"}}}
ARGS = '{"content": "' + "x" * 200 + '"}'
MODELS = ["claude-haiku-4-5", "gpt-5.4-mini"]


def _router(up: LocalUpstream, idle: float = 120.0) -> Router:
    cfg = ExecutionConfig(stream_idle_timeout_s=idle, max_retries=0)
    return Router(up.patch(Registry.default())).configure(execution=cfg)


@pytest.mark.parametrize("model", MODELS)
async def test_a_tool_call_longer_than_the_idle_timeout_is_not_cut(model: str) -> None:
    """Each event 0.1 s apart, the tool call's (start, two pieces, end, the finish) 0.5 s in
    all: inside a 0.35 s idle timeout only if its pieces count."""
    with LocalUpstream() as up:
        up.default = reply("ok", tool_call=("Write", ARGS), chunk_delay=0.1)
        async with _router(up, idle=0.35) as r:
            res = await r.stream("write it", allow=[model], tools=[TOOL]).result()
    assert res.text == "ok" and res.tool_calls[0].arguments == ARGS
    assert [a.outcome for a in res.attempts] == ["ok"]


@pytest.mark.parametrize("text", ["ok", ""], ids=["after-text", "tool-call-alone"])
@pytest.mark.parametrize("model", MODELS)
async def test_while_only_a_tool_call_comes_the_caller_gets_keep_alives(
    model: str, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After text, and for an answer that is a tool call alone (an OpenAI model's usual tool
    turn, a Claude model's often), which had given none: no text ever made the stream the
    caller's before the call was whole."""
    import satisfice.executor as ex

    monkeypatch.setattr(ex, "KEEPALIVE_S", 0.05)
    with LocalUpstream() as up:
        up.default = reply(text, tool_call=("Write", ARGS), chunk_delay=0.1)
        async with _router(up) as r:
            kinds: list[str] = []
            async with r.stream("write it", allow=[model], tools=[TOOL]) as s:
                async for d in s:
                    kinds.append(
                        "text" if d.text else "done" if d.done
                        else "thinking" if d.thinking or d.thought else "keep-alive"
                    )  # fmt: skip
                    if d.done:
                        assert d.result.tool_calls[0].arguments == ARGS
    assert kinds[-1] == "done"
    assert "keep-alive" in kinds[kinds.index("text") if text else 0 :], kinds


@pytest.mark.parametrize("text", ["ok", ""], ids=["after-text", "tool-call-alone"])
def test_servers_streams_ping_while_a_tool_call_is_written(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anthropic's `ping` event and an SSE comment for OpenAI clients, before the tool call
    given whole (a call alone had given no ping, nor even the response's headers, before
    it was whole); both SDKs read the streams whole."""
    import satisfice.executor as ex

    monkeypatch.setattr(ex, "KEEPALIVE_S", 0.05)
    with LocalUpstream() as up:
        up.default = reply(text, tool_call=("Write", ARGS), chunk_delay=0.1)
        with running(ServerConfig(), Router(up.patch(Registry.default()))) as (url, _):
            body: dict[str, Any] = {
                "model": "claude-haiku-4-5", "max_tokens": 500, "stream": True,
                "messages": [{"role": "user", "content": "write it"}],
                "tools": [{"name": "Write", "input_schema": {"type": "object"}}],
            }  # fmt: skip
            h = {"anthropic-version": "2023-06-01", "x-api-key": "anything"}
            raw = httpx.post(url + "/v1/messages", json=body, headers=h, timeout=30).text
            assert "event: ping" in raw.split('"tool_use"', 1)[0], raw
            with (
                anthropic.Anthropic(base_url=url, api_key="anything", max_retries=0) as c,
                c.messages.stream(**{k: v for k, v in body.items() if k != "stream"}) as s,
            ):
                final = s.get_final_message()
            assert final.content[-1].type == "tool_use" and final.content[-1].input == {
                "content": "x" * 200
            }
            oa = {"model": "gpt-5.4-mini", "stream": True, "tools": [TOOL],
                  "messages": [{"role": "user", "content": "write it"}]}  # fmt: skip
            raw = httpx.post(url + "/v1/chat/completions", json=oa, timeout=30).text
            assert ": keep-alive" in raw
            with openai.OpenAI(base_url=url + "/v1", api_key="anything", max_retries=0) as client:
                calls = [
                    tc.function.arguments
                    for ch in client.chat.completions.create(**oa)
                    for tc in (ch.choices[0].delta.tool_calls or [] if ch.choices else [])
                ]
    assert "".join(a or "" for a in calls) == ARGS


# -- from a review: each failed on the first version ------------------------------------------
@pytest.mark.parametrize("text", ["", "hi"], ids=["before-text", "after-text"])
async def test_empty_chunks_are_no_progress(text: str) -> None:
    """A chunk with nothing in it (`"delta": {}`: no text, tool call, reasoning, finish or
    usage) is a keep-alive in all but name: stream_idle_timeout_s ("text, thinking or a
    tool call's pieces") must still cut an upstream that sends only those; they hold it
    until attempt_timeout_s (600 s by default; here 2 s), and a fallback waits as long."""
    import asyncio
    import json

    from satisfice.errors import SatisficeError
    from satisfice.testing import RawUpstream, patch_registry

    def chunk(delta: dict[str, Any]) -> bytes:
        ev = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        return b"data: " + json.dumps(ev).encode() + b"\n\n"

    async def send(w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"connection: close\r\n\r\n")  # fmt: skip
        w.write(chunk({"role": "assistant", "content": text}))
        while True:  # until the client goes away
            await asyncio.sleep(0.05)
            w.write(chunk({}))
            await w.drain()

    cfg = ExecutionConfig(stream_idle_timeout_s=0.3, attempt_timeout_s=2.0, max_retries=0)
    with RawUpstream() as raw:
        raw.push(send)
        async with Router(patch_registry(Registry.default(), raw.url)).configure(
            execution=cfg
        ) as r:
            with pytest.raises(SatisficeError) as e:
                await r.stream("hi", allow=["gpt-5.4-mini"]).result()
    assert "stream_idle_timeout_s" in str(e.value), str(e.value)
