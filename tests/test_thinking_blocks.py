"""A Claude model's thinking, both ways: given back (ChatResult.thinking, /v1/messages'
thinking blocks streamed and not, /v1/chat/completions' thinking_blocks and
reasoning_content) and sent back on the next turn of a tool loop, as a thinking model's
next turn needs it; a stream that thinks for longer than the idle timeout is not cut. The
local upstream refuses a tool loop's turn without its thinking, and a block changed on the
way, as Anthropic's API does; each round trip below failed before thinking was carried."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from satisfice import Registry, Router
from satisfice.errors import BadRequestError, InputError, UnsupportedRequestError
from satisfice.executor import ExecutionConfig
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, RawUpstream, http_response, patch_registry, reply
from satisfice.testing.behaviors import Behavior
from satisfice.testing.wire import signature

from .server_support import running

HAIKU, SONNET, GPT = "claude-haiku-4-5", "claude-sonnet-4-6", "gpt-5.4-mini"
THINKS = f"{HAIKU}@low"  # extended thinking, a budget of 2,048 tokens
TOOL = {"type": "function", "function": {
    "name": "Bash", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
}}  # fmt: skip
A_TOOLS = [{"name": "Bash", "description": "Run a shell command",
            "input_schema": TOOL["function"]["parameters"]}]  # fmt: skip
CALL = ("Bash", '{"command": "ls"}')
H = {"anthropic-version": "2023-06-01", "x-api-key": "anything"}
#: extended thinking as an older Claude Code asks it, within max_tokens
ENABLED = {"max_tokens": 8000, "thinking": {"type": "enabled", "budget_tokens": 4096}}


def _router(up: LocalUpstream) -> Router:
    return Router(up.patch(Registry.default()))


def _sent(up: LocalUpstream, model: str) -> list[dict[str, Any]]:
    return [s.body for s in up.requests if s.body.get("model") == model]


def _loop(first: Any, thought: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The tool loop's next turn, in OpenAI's shape: the call, its thinking, the result."""
    call = first.tool_calls[0]
    assistant: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function",
         "function": {"name": call.name, "arguments": call.arguments}},
    ]}  # fmt: skip
    if thought is not None:
        assistant["thinking_blocks"] = thought
    return [
        {"role": "user", "content": "list the files"},
        assistant,
        {"role": "tool", "tool_call_id": call.id, "content": "a.txt b.txt"},
    ]


# -- the Python API ------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_loop_with_a_thinking_model_sends_its_thinking_back(stream: bool) -> None:
    with LocalUpstream() as up:
        up.script(HAIKU, reply(tool_call=CALL, thinking="I should list them"), reply("two files"))
        async with _router(up) as r:
            kw: dict[str, Any] = {"allow": [THINKS], "tools": [TOOL], "max_tokens": 200}
            first = await (
                r.stream("list the files", **kw).result() if stream
                else r.chat("list the files", **kw)
            )  # fmt: skip
            want = {"type": "thinking", "thinking": "I should list them",
                    "signature": signature("I should list them")}  # fmt: skip
            assert first.thinking == [want]
            assert "thinking" not in first.text
            nxt = await r.chat(_loop(first, first.thinking), **kw)
        assert nxt.text == "two files" and nxt.model == THINKS
        turn = _sent(up, HAIKU)[1]["messages"][1]
    assert turn["role"] == "assistant"
    assert turn["content"][0] == want  # first in its turn, unchanged
    assert [b["type"] for b in turn["content"]] == ["thinking", "tool_use"]


async def test_without_its_thinking_the_loop_is_refused_before_any_call() -> None:
    with LocalUpstream() as up:
        up.script(HAIKU, reply(tool_call=CALL))
        async with _router(up) as r:
            kw: dict[str, Any] = {"allow": [THINKS], "tools": [TOOL], "max_tokens": 200}
            first = await r.chat("list the files", **kw)
            n = len(up.requests)
            with pytest.raises(UnsupportedRequestError, match="begin with its thinking block"):
                await r.chat(_loop(first, None), **kw)
        assert len(up.requests) == n


async def test_streamed_thinking_comes_in_pieces_before_the_text_then_whole() -> None:
    said = "first I think, then I think again"
    with LocalUpstream() as up:
        up.script(HAIKU, reply("the answer", thinking=said))
        async with _router(up) as r:
            pieces: list[str] = []
            order: list[str] = []
            async with r.stream("hi", allow=[THINKS], max_tokens=200) as s:
                async for d in s:
                    if d.thinking:
                        pieces.append(d.thinking)
                        order.append("thinking")
                    if d.thought is not None:
                        order.append("thought")
                        assert d.thought == {"type": "thinking", "thinking": said,
                                             "signature": signature(said)}  # fmt: skip
                    if d.text:
                        order.append("text")
                    if d.done:
                        res = d.result
    assert "".join(pieces) == said and len(pieces) > 1
    assert order.index("thought") > max(i for i, k in enumerate(order) if k == "thinking")
    assert order.index("thought") < order.index("text")
    assert res.text == "the answer" and res.thinking[0]["thinking"] == said


async def test_a_stream_that_thinks_longer_than_the_idle_timeout_is_not_cut() -> None:
    """Thinking is progress: a model thinking for minutes had been cut by
    stream_idle_timeout_s ("no text within ..."), its thinking read and dropped."""
    said = " ".join(f"step{i}" for i in range(12))
    with LocalUpstream() as up:
        up.script(HAIKU, reply("done", thinking=said, chunk_delay=0.06))
        cfg = ExecutionConfig(stream_idle_timeout_s=0.3, max_retries=0)
        async with _router(up).configure(execution=cfg) as r:
            res = await r.stream("hi", allow=[THINKS], max_tokens=200).result()
    assert res.text == "done" and res.thinking[0]["thinking"] == said
    assert res.attempts[-1].outcome == "ok"


async def test_thinking_blocks_are_left_out_for_a_model_that_does_not_think() -> None:
    thought = [{"type": "thinking", "thinking": "t", "signature": signature("t")}]
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello", "thinking_blocks": thought},
        {"role": "user", "content": "and again"},
    ]
    with LocalUpstream() as up:
        async with _router(up) as r:
            await r.chat(msgs, allow=[HAIKU], max_tokens=50)  # its row without thinking
            await r.chat(msgs, allow=[GPT], max_tokens=50)
            await r.chat(msgs, allow=[THINKS], max_tokens=50)
        plain, thinking = _sent(up, HAIKU)
        (gpt,) = _sent(up, GPT)
    assert plain["messages"][1] == {"role": "assistant", "content": "hello"}
    assert "thinking" not in plain
    assert all("thinking_blocks" not in m for m in gpt["messages"])
    assert thinking["messages"][1]["content"] == [*thought, {"type": "text", "text": "hello"}]


@pytest.mark.parametrize("bad", [
    "not a list", [{"type": "thinking", "thinking": "t"}], [{"type": "text", "text": "t"}],
    [{"type": "redacted_thinking"}], ["x"],
])  # fmt: skip
async def test_malformed_thinking_blocks_are_a_clear_error(bad: Any) -> None:
    msgs = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "thinking_blocks": bad},
            {"role": "user", "content": "again"}]  # fmt: skip
    # not a list: refused as the request is routed, as `tool_calls` not a list is (before
    # a served key's rate is counted); a list of wrong blocks: by the wire that sends them
    err = InputError if isinstance(bad, str) else BadRequestError
    with LocalUpstream() as up:
        async with _router(up) as r:
            with pytest.raises(err, match="thinking_blocks"):
                await r.chat(msgs, allow=[THINKS], max_tokens=50)
        assert not up.requests


async def test_a_key_in_the_thinking_is_scrubbed_streamed_and_not() -> None:
    from satisfice._redact import register

    key = "sk-thinking-canary-" + "5e1d" * 8
    register(key)
    said = f"the key is {key} so"
    with LocalUpstream() as up:
        up.script(HAIKU, reply("ok", thinking=said), reply("ok", thinking=said))
        async with _router(up) as r:
            plain = await r.chat("hi", allow=[THINKS], max_tokens=50)
            pieces: list[str] = []
            async with r.stream("hi", allow=[THINKS], max_tokens=50) as s:
                async for d in s:
                    pieces.append(d.thinking)
                    if d.done:
                        streamed = d.result
    for text in (json.dumps(plain.thinking), json.dumps(streamed.thinking), "".join(pieces)):
        assert key not in text and "[redacted]" in text


# -- satisfice serve -----------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_claude_code_tool_loop_with_thinking_on_a_named_model(stream: bool) -> None:
    """Claude Code's turn with extended thinking (an older version's `enabled` budget) on a
    named Claude model: the second turn, its thinking sent back as the SDK gives it, had
    been a 400 (every thinking row refused the loop without its thinking)."""
    with LocalUpstream() as up:
        up.script(HAIKU, reply(tool_call=CALL, thinking="look first"), reply("two files"))
        with running(ServerConfig(), _router(up)) as (url, _):
            c = anthropic.Anthropic(base_url=url, api_key="anything", max_retries=0)
            kw: dict[str, Any] = {"model": HAIKU, "tools": A_TOOLS, **ENABLED}
            msgs: list[Any] = [{"role": "user", "content": "list the files"}]

            def turn() -> Any:
                if stream:
                    with c.messages.stream(messages=msgs, **kw) as s:
                        return s.get_final_message()
                return c.messages.create(messages=msgs, **kw)

            first = turn()
            assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
            assert first.content[0].thinking == "look first"
            assert first.content[0].signature == signature("look first")
            use = first.content[-1]
            msgs += [
                {"role": "assistant", "content": first.content},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "a.txt b.txt"},
                ]},
            ]  # fmt: skip
            second = turn()
        assert second.content[-1].text == "two files"
        sent = _sent(up, HAIKU)[1]
    assert sent["thinking"]["type"] == "enabled"
    assert sent["messages"][1]["content"][0] == {
        "type": "thinking", "thinking": "look first", "signature": signature("look first"),
    }  # fmt: skip


def test_a_changed_thinking_block_is_the_upstreams_400_passed_on() -> None:
    with LocalUpstream() as up:
        up.script(HAIKU, reply(tool_call=CALL, thinking="look first"))
        with running(ServerConfig(), _router(up)) as (url, _):
            c = anthropic.Anthropic(base_url=url, api_key="anything", max_retries=0)
            kw: dict[str, Any] = {"model": HAIKU, "tools": A_TOOLS, **ENABLED}
            first = c.messages.create(messages=[{"role": "user", "content": "ls"}], **kw)
            blocks = [b.model_dump() for b in first.content]
            blocks[0]["thinking"] = "something else"
            msgs = [{"role": "user", "content": "ls"}, {"role": "assistant", "content": blocks},
                    {"role": "user", "content": [{"type": "tool_result",
                                                  "tool_use_id": blocks[-1]["id"],
                                                  "content": "a"}]}]  # fmt: skip
            with pytest.raises(anthropic.BadRequestError, match="signature"):
                c.messages.create(messages=msgs, **kw)


@pytest.mark.parametrize("stream", [False, True])
def test_redacted_thinking_round_trips(stream: bool) -> None:
    with LocalUpstream() as up:
        up.script(HAIKU, reply(tool_call=CALL, thinking="redacted"), reply("fine"))
        with running(ServerConfig(), _router(up)) as (url, _):
            body: dict[str, Any] = {
                "model": THINKS, "max_tokens": 4000, "tools": A_TOOLS, "stream": stream,
                "messages": [{"role": "user", "content": "ls"}],
            }  # fmt: skip
            h = {"anthropic-version": "2023-06-01", "x-api-key": "anything"}
            r = httpx.post(url + "/v1/messages", json=body, headers=h, timeout=30)
            assert r.status_code == 200, r.text
            if stream:
                starts = [
                    json.loads(line[6:]) for line in r.text.splitlines()
                    if line.startswith("data: ") and '"content_block_start"' in line
                ]  # fmt: skip
                blocks = [s["content_block"] for s in starts]
                assert blocks[0]["type"] == "redacted_thinking" and blocks[0]["data"]
                use = blocks[-1]
                use["input"] = json.loads(CALL[1])
            else:
                blocks = r.json()["content"]
                use = blocks[-1]
            assert blocks[0]["type"] == "redacted_thinking"
            body["messages"] += [
                {"role": "assistant", "content": [blocks[0], use]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"],
                                              "content": "a"}]},
            ]  # fmt: skip
            r = httpx.post(url + "/v1/messages", json=body, headers=h, timeout=30)
            assert r.status_code == 200, r.text
        sent = _sent(up, HAIKU)[1]["messages"][1]["content"]
    assert sent[0] == blocks[0] and sent[1]["type"] == "tool_use"


def test_the_anthropic_stream_gives_thinking_blocks_as_the_api_does() -> None:
    with LocalUpstream() as up:
        up.script(HAIKU, reply("the answer", thinking="one two three"))
        with running(ServerConfig(), _router(up)) as (url, _):
            c = anthropic.Anthropic(base_url=url, api_key="anything", max_retries=0)
            kinds: list[tuple[str, Any]] = []
            with c.messages.stream(model=THINKS, max_tokens=4000,
                                   messages=[{"role": "user", "content": "hi"}]) as s:  # fmt: skip
                for ev in s:
                    if ev.type == "content_block_delta":
                        kinds.append((ev.delta.type, ev.index))
                    elif ev.type in ("content_block_start", "content_block_stop"):
                        kinds.append((ev.type, ev.index))
                final = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "one two three"
    assert final.content[0].signature == signature("one two three")
    assert kinds[0] == ("content_block_start", 0)
    assert ("thinking_delta", 0) in kinds and ("signature_delta", 0) in kinds
    assert kinds.index(("content_block_stop", 0)) < kinds.index(("content_block_start", 1))
    assert ("text_delta", 1) in kinds


def test_openai_clients_get_the_thinking_and_can_send_it_back() -> None:
    with LocalUpstream() as up:
        up.script(HAIKU, reply(tool_call=CALL, thinking="plan it"), reply("two files"),
                  reply("streamed", thinking="think on"))  # fmt: skip
        with running(ServerConfig(), _router(up)) as (url, _):
            c = openai.OpenAI(base_url=url + "/v1", api_key="anything", max_retries=0)
            msgs: list[Any] = [{"role": "user", "content": "list the files"}]
            first = c.chat.completions.create(model=THINKS, messages=msgs, tools=[TOOL])
            m = first.choices[0].message.model_dump()
            assert m["reasoning_content"] == "plan it"
            assert m["thinking_blocks"] == [
                {"type": "thinking", "thinking": "plan it", "signature": signature("plan it")}
            ]
            call = m["tool_calls"][0]
            msgs += [
                {"role": "assistant", "content": None, "tool_calls": [call],
                 "thinking_blocks": m["thinking_blocks"]},
                {"role": "tool", "tool_call_id": call["id"], "content": "a.txt b.txt"},
            ]  # fmt: skip
            second = c.chat.completions.create(model=THINKS, messages=msgs, tools=[TOOL])
            assert second.choices[0].message.content == "two files"
            reasoning, text, blocks = [], [], None
            for ch in c.chat.completions.create(
                model=THINKS, messages=[{"role": "user", "content": "hi"}], stream=True
            ):
                d = ch.choices[0].delta.model_dump() if ch.choices else {}
                reasoning.append(d.get("reasoning_content") or "")
                text.append(d.get("content") or "")
                blocks = d.get("thinking_blocks") or blocks
    assert "".join(reasoning) == "think on" and "".join(text) == "streamed"
    assert blocks == [{"type": "thinking", "thinking": "think on",
                       "signature": signature("think on")}]  # fmt: skip


def test_a_malformed_thinking_block_on_v1_messages_is_a_400() -> None:
    with LocalUpstream() as up:
        with running(ServerConfig(), _router(up)) as (url, _):
            body = {"model": THINKS, "max_tokens": 100, "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "no sig"},
                                                  {"type": "text", "text": "hello"}]},
                {"role": "user", "content": "again"},
            ]}  # fmt: skip
            h = {"anthropic-version": "2023-06-01", "x-api-key": "anything"}
            r = httpx.post(url + "/v1/messages", json=body, headers=h, timeout=30)
        assert not up.requests
    assert r.status_code == 400
    assert r.json()["type"] == "error" and "signature" in r.json()["error"]["message"]


def _sse(*events: dict[str, Any]) -> bytes:
    body = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
    return http_response(body, ctype="text/event-stream")


def _msg(content: list[dict[str, Any]]) -> bytes:
    return http_response(json.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": HAIKU,
        "content": content, "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 20},
    }).encode())  # fmt: skip


# -- from a review: each failed on the first version ------------------------------------------
async def test_a_stream_cut_while_thinking_is_retried_as_before() -> None:
    """A reset while the model thinks, before any text: its thinking held back, the stream
    is not yet the caller's, and the next attempt answers (it had been a
    StreamInterruptedError saying 0 characters had reached the caller)."""
    with LocalUpstream() as up:
        # message_start, thinking start, two thinking deltas, then a connection reset
        up.script(HAIKU, Behavior("reset", after_chunks=4, thinking="a b c d e f g"),
                  reply("whole", thinking="again"))  # fmt: skip
        cfg = ExecutionConfig(max_retries=1)
        async with Router(up.patch(Registry.default())).configure(execution=cfg) as r:
            res = await r.stream("hi", allow=[THINKS], max_tokens=200).result()
    assert res.text == "whole"
    assert [a.outcome for a in res.attempts] == ["error", "ok"]


def test_v1_messages_sends_an_interleaved_turn_back_in_its_order() -> None:
    a = {"type": "thinking", "thinking": "first", "signature": signature("first")}
    b = {"type": "thinking", "thinking": "then", "signature": signature("then")}
    turn = [
        a,
        {"type": "text", "text": "Let me look."},
        b,
        {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
    ]
    with LocalUpstream() as up:
        up.script(HAIKU, reply("two files"))
        with running(ServerConfig(), Router(up.patch(Registry.default()))) as (url, _):
            body = {"model": THINKS, "max_tokens": 4000,
                    "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
                    "messages": [
                        {"role": "user", "content": "ls"},
                        {"role": "assistant", "content": turn},
                        {"role": "user", "content": [{"type": "tool_result",
                                                      "tool_use_id": "toolu_1", "content": "a"}]},
                    ]}  # fmt: skip
            r = httpx.post(url + "/v1/messages", json=body, headers=H, timeout=30)
            assert r.status_code == 200, r.text
        sent = up.requests[-1].body["messages"][1]["content"]
    assert [x["type"] for x in sent] == ["thinking", "text", "thinking", "tool_use"]


def test_v1_messages_gives_an_interleaved_answer_in_its_order() -> None:
    content = [{"type": "text", "text": "Let me look."},
               {"type": "thinking", "thinking": "hmm", "signature": "sig-1"},
               {"type": "text", "text": "Done."}]  # fmt: skip
    with RawUpstream() as raw:
        raw.push(_msg(content))
        with running(ServerConfig(), Router(patch_registry(Registry.default(), raw.url))) as (
            url,
            _,
        ):
            r = httpx.post(url + "/v1/messages", headers=H, timeout=30, json={
                "model": THINKS, "max_tokens": 4000,
                "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    # the streamed answer gives text, thinking, text (as the upstream did); this one does not
    assert [b["type"] for b in r.json()["content"]] == ["text", "thinking", "text"]


async def test_a_key_split_across_signature_deltas_is_scrubbed() -> None:
    from satisfice._redact import register

    key = "sk-signature-canary-" + "7a3f" * 8
    register(key)
    start = {"type": "message_start", "message": {
        "id": "m", "type": "message", "role": "assistant", "model": HAIKU, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 1}}}  # fmt: skip

    def delta(i: int, d: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": i, "delta": d}

    evs = [start,
           {"type": "content_block_start", "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
           delta(0, {"type": "thinking_delta", "thinking": "hm"}),
           delta(0, {"type": "signature_delta", "signature": key[:12]}),
           delta(0, {"type": "signature_delta", "signature": key[12:]}),
           {"type": "content_block_stop", "index": 0},
           {"type": "content_block_start", "index": 1,
            "content_block": {"type": "text", "text": ""}},
           delta(1, {"type": "text_delta", "text": "ok"}),
           {"type": "content_block_stop", "index": 1},
           {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 20}},
           {"type": "message_stop"}]  # fmt: skip
    with RawUpstream() as raw:
        raw.push(_sse(*evs))
        async with Router(patch_registry(Registry.default(), raw.url)) as r:
            seen: list[str] = []
            async with r.stream("hi", allow=[THINKS], max_tokens=50) as s:
                async for d in s:
                    if d.thought is not None:
                        seen.append(json.dumps(d.thought))
                    if d.done:
                        res = d.result
    assert res.text == "ok"
    for text in (json.dumps(res.thinking), *seen):
        assert key not in text


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_content_does_not_join_a_key_back_together(stream: bool) -> None:
    from satisfice._redact import register

    key = "sk-blocks-canary-" + "9c2e" * 8
    register(key)
    content = [{"type": "thinking", "thinking": "one " + key[:14], "signature": "s1"},
               {"type": "thinking", "thinking": key[14:] + " two", "signature": "s2"},
               {"type": "text", "text": "ok"}]  # fmt: skip
    with RawUpstream() as raw:
        raw.push(_sse(*_events(content)) if stream else _msg(content))
        with running(ServerConfig(), Router(patch_registry(Registry.default(), raw.url))) as (
            url,
            _,
        ):
            r = httpx.post(url + "/v1/chat/completions", timeout=30, json={
                "model": THINKS, "messages": [{"role": "user", "content": "hi"}],
                "stream": stream})  # fmt: skip
    assert r.status_code == 200, r.text
    assert key not in r.text
    if stream:  # what a client joins of the pieces
        said = "".join(
            (json.loads(line[6:])["choices"] or [{}])[0].get("delta", {}).get("reasoning_content")
            or ""
            for line in r.text.splitlines()
            if line.startswith("data: {")
        )
        assert key not in said and said.startswith("one ") and said.endswith(" two")


def test_count_tokens_counts_the_thinking_a_thinking_row_is_sent() -> None:
    big = " ".join(f"w{i}" for i in range(3000))
    use = {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}

    def body(thought: list[dict[str, Any]]) -> dict[str, Any]:
        return {"model": THINKS, "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
                "messages": [
                    {"role": "user", "content": "ls"},
                    {"role": "assistant", "content": [*thought, use]},
                    {"role": "user", "content": [{"type": "tool_result",
                                                  "tool_use_id": "toolu_1", "content": "a"}]},
                ]}  # fmt: skip

    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):

        def count(b: dict[str, Any]) -> int:
            r = httpx.post(url + "/v1/messages/count_tokens", json=b, headers=H, timeout=30)
            return int(r.json()["input_tokens"])

        without = count(body([]))
        with_ = count(body([{"type": "thinking", "thinking": big, "signature": signature(big)}]))
    assert with_ > without + 2000, (without, with_)


def _events(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An Anthropic stream of `content` (thinking and text blocks), as the API sends it."""
    evs: list[dict[str, Any]] = [{"type": "message_start", "message": {
        "id": "m", "type": "message", "role": "assistant", "model": HAIKU, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 1}}}]  # fmt: skip
    for i, b in enumerate(content):
        if b["type"] == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": b["thinking"]},
                      {"type": "signature_delta", "signature": b["signature"]}]  # fmt: skip
        else:
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": b["text"]}]
        evs.append({"type": "content_block_start", "index": i, "content_block": start})
        evs += [{"type": "content_block_delta", "index": i, "delta": d} for d in deltas]
        evs.append({"type": "content_block_stop", "index": i})
    evs.append({"type": "message_delta", "usage": {"output_tokens": 20},
                "delta": {"stop_reason": "end_turn", "stop_sequence": None}})  # fmt: skip
    evs.append({"type": "message_stop"})
    return evs


def test_an_interleaved_turn_reaches_an_openai_model_without_its_thinking() -> None:
    """A turn whose thinking came after its text is two messages (the second holding the
    thinking alone): an OpenAI model is sent the text, and no empty assistant message."""
    from satisfice.providers.openai import _openai_messages
    from satisfice.server import wire as server_wire

    a = {"type": "thinking", "thinking": "then", "signature": signature("then")}
    r = server_wire.anthropic_request({"model": "auto", "max_tokens": 9, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "text", "text": "hi"}, a]},
        {"role": "user", "content": "again"},
    ]}, {})  # fmt: skip
    assert [m["role"] for m in r.messages] == ["user", "assistant", "assistant", "user"]
    sent = _openai_messages(r.messages)
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert "thinking_blocks" not in json.dumps(sent)


@pytest.mark.parametrize(
    "result",
    [
        {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True},
        {
            "type": "tool_result",
            "tool_use_id": "toolu_1",
            "content": "",
            "cache_control": {"type": "ephemeral"},
        },
    ],
    ids=["is_error-no-content", "cache_control-empty"],
)
def test_v1_messages_keeps_an_empty_tool_result_for_an_openai_model(
    result: dict[str, Any],
) -> None:
    """A tool that printed nothing (Claude Code marks its last tool result for the cache;
    a failed one may say nothing): its tool message is dropped on the way to an OpenAI
    model (an assistant tool_calls message with no tool message after it, a 400 from
    OpenAI's API)."""
    with LocalUpstream() as up:
        up.default = reply("ok")
        with running(ServerConfig(), Router(up.patch(Registry.default()))) as (url, _):
            body: dict[str, Any] = {
                "model": "gpt-5.4-mini", "max_tokens": 500,
                "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
                "messages": [
                    {"role": "user", "content": "run it"},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                                       "name": "Bash", "input": {}}]},
                    {"role": "user", "content": [result]},
                ],
            }  # fmt: skip
            h = {"anthropic-version": "2023-06-01", "x-api-key": "anything"}
            r = httpx.post(url + "/v1/messages", json=body, headers=h, timeout=30)
            assert r.status_code == 200, r.text
        sent = up.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"], sent


async def test_a_streamed_interleaved_turn_keeps_its_text_before_its_thinking() -> None:
    """Text, thinking, text: the stream had given the first text's last character (an 's',
    which a key such as 'sk-...' begins with, held back by the scrubber) after the second
    thinking block, glued to the text that follows it."""
    from satisfice._redact import register

    register("sk-review-interleave-" + "5d1e" * 8)  # every provider key is registered so
    content = [
        {"type": "thinking", "thinking": "first", "signature": signature("first")},
        {"type": "text", "text": "Let me look at the files"},
        {"type": "thinking", "thinking": "then", "signature": signature("then")},
        {"type": "text", "text": "Done."},
    ]
    with RawUpstream() as raw:
        raw.push(_sse(*_events(content)))
        async with Router(patch_registry(Registry.default(), raw.url)) as r:
            said: list[str] = [""]  # the text between thinking blocks
            async with r.stream("hi", allow=["claude-haiku-4-5@low"], max_tokens=4000) as s:
                async for d in s:
                    if d.thought is not None:
                        said.append("")
                    said[-1] += d.text
    assert said == ["", "Let me look at the files", "Done."], said
