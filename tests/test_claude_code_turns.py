"""Claude Code's turns through satisfice serve, end to end (the official anthropic and openai
SDKs, the local upstream): each test failed before its fix, found by an end-to-end review of
a coding agent's sessions (effort levels the wire takes and the registry had no row for,
context editing beside a row sent no thinking, a session pin under an alias, interleaved
thinking after a tool call sent to an OpenAI model)."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from satisfice import Registry, Router
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, reply
from satisfice.testing.wire import signature

from .chat_support import CLAUDE_CODE_SYSTEM, CLAUDE_CODE_TOOLS
from .server_support import running

SYSTEM, TOOLS = CLAUDE_CODE_SYSTEM, CLAUDE_CODE_TOOLS
BETAS = ["interleaved-thinking-2025-05-14", "fine-grained-tool-streaming-2025-05-14",
         "context-management-2025-06-27"]  # fmt: skip
#: what Claude Code sends on every turn (context editing that keeps every thinking block)
CONTEXT = {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
H = {"anthropic-version": "2023-06-01", "x-api-key": "anything"}


def _router(up: LocalUpstream) -> Router:
    return Router(up.patch(Registry.default()))


def _client(url: str) -> anthropic.Anthropic:
    """A client closed with the server's test (an open one's socket warns at collection)."""
    c = anthropic.Anthropic(base_url=url, api_key="anything", max_retries=0, timeout=60)
    _OPEN.append(c)
    return c


_OPEN: list[Any] = []


@pytest.fixture(autouse=True)
def _closed() -> Any:
    yield
    while _OPEN:
        _OPEN.pop().close()


@pytest.mark.parametrize("model", ["claude-sonnet-4-6", "claude-opus-4-7"])
def test_claude_codes_effort_medium_on_a_named_claude_model_is_served(model: str) -> None:
    """Claude Code's `output_config.effort` "medium" (Anthropic's own level, which both
    models take) is accepted by the wire and then routes to nothing: a 400 on every turn."""
    with LocalUpstream() as up:
        with running(ServerConfig(), _router(up)) as (url, _), _client(url).messages.stream(
            model=model, max_tokens=32000, system=SYSTEM, tools=TOOLS,
            thinking={"type": "adaptive"}, output_config={"effort": "medium"},
            messages=[{"role": "user", "content": "fix the failing test"}],
        ) as s:  # fmt: skip
            res = s.get_final_message()
        assert res.model.startswith(model)
        assert up.requests[-1].body["output_config"]["effort"] == "medium"


@pytest.mark.parametrize(
    ("model", "effort"),
    [("claude-sonnet-4-6", "max"), ("claude-opus-4-7", "xhigh"), ("claude-opus-4-7", "max")],
)
def test_claude_codes_highest_efforts_are_served(model: str, effort: str) -> None:
    """`claude --effort max` (Opus 4.6+, Sonnet 4.6) and "xhigh" (Opus 4.7+): Anthropic's
    own levels, which the wire refused ("max") or routed to no row: a 400 on every turn."""
    with LocalUpstream() as up:
        with running(ServerConfig(), _router(up)) as (url, _), _client(url).messages.stream(
            model=model, max_tokens=64000, system=SYSTEM, tools=TOOLS,
            thinking={"type": "adaptive"}, output_config={"effort": effort},  # type: ignore[typeddict-item]
            messages=[{"role": "user", "content": "fix the failing test"}],
        ) as s:  # fmt: skip
            res = s.get_final_message()
        sent = up.requests[-1].body
    assert res.model == f"{model}@{effort}"
    assert sent["output_config"]["effort"] == effort and sent["thinking"] == {"type": "adaptive"}
    assert sent["max_tokens"] == 64000  # the thinking within it (Anthropic's max_tokens)


def test_an_effort_a_model_does_not_take_is_a_400_that_says_so() -> None:
    """Sonnet 4.6 has no "xhigh" (Opus 4.7 on): refused before any call, naming it."""
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        r = httpx.post(url + "/v1/messages", headers=H, timeout=30, json={
            "model": "claude-sonnet-4-6", "max_tokens": 64000, "output_config": {"effort": "xhigh"},
            "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        assert not up.requests
    assert r.status_code == 400 and "xhigh" in r.json()["error"]["message"], r.text


def test_openai_reasoning_effort_medium_on_a_claude_model_is_served() -> None:
    with LocalUpstream() as up:
        with running(ServerConfig(), _router(up)) as (url, _):
            c = openai.OpenAI(base_url=url + "/v1", api_key="anything", max_retries=0)
            _OPEN.append(c)
            r = c.chat.completions.create(model="claude-sonnet-4-6", reasoning_effort="medium",
                                          messages=[{"role": "user", "content": "hi"}])  # fmt: skip
        assert r.model.startswith("claude-sonnet-4-6")


def test_claude_codes_context_editing_never_reaches_a_row_sent_no_thinking() -> None:
    """Claude Code sends `clear_thinking_20251015` beside `thinking: adaptive` on every turn.
    Routed to a Claude model's base row (sent no thinking), the edit went on without
    thinking, which Anthropic's API refuses: "`clear_thinking_20251015` strategy requires
    `thinking` to be enabled" (anthropics/claude-code#11971), as the local upstream does."""
    turn: dict[str, Any] = {
        "model": "claude-sonnet-4-6", "max_tokens": 32000, "system": SYSTEM, "tools": TOOLS,
        "thinking": {"type": "adaptive"}, "betas": BETAS, "context_management": CONTEXT,
        "metadata": {"user_id": "session-1"}, "messages": [{"role": "user", "content": "hi"}],
    }  # fmt: skip
    with (
        LocalUpstream() as up,
        running(ServerConfig(), _router(up)) as (url, _),
        _client(url).beta.messages.stream(**turn) as s,
    ):
        res = s.get_final_message()
    assert res.model.startswith("claude-sonnet-4-6")


def test_a_session_pin_holds_under_an_alias_as_under_auto() -> None:
    """The session's model is tried first "while it fits the constraints" (README): under
    "auto" it is; under an alias whose models include it (or a named model's effort rows,
    or any request under a key's model list, which must name one) the pin is never read."""
    cfg = ServerConfig(aliases={"claude": {"allow": ["claude-sonnet-4-6", "claude-opus-4-7"]}})
    with LocalUpstream() as up:
        up.default = reply("ok")
        with running(cfg, _router(up)) as (url, _):
            msgs = [{"role": "user", "content": "write a python function to parse a csv file"}]

            def turn(model: str) -> httpx.Response:
                body = {"model": model, "max_tokens": 2000, "messages": msgs,
                        "metadata": {"user_id": "session-7"}}  # fmt: skip
                r = httpx.post(url + "/v1/messages", headers=H, json=body, timeout=30)
                assert r.status_code == 200, r.text
                return r

            assert turn("claude").headers["x-satisfice-model"] == "claude-sonnet-4-6"
            turn("claude-opus-4-7")  # the session is now pinned to Opus
            assert turn("auto").headers["x-satisfice-model"] == "claude-opus-4-7"  # held
            again = turn("claude")  # Opus is one of the alias's models
    assert again.headers["x-satisfice-model"] == "claude-opus-4-7", again.json()["satisfice"]["why"]


def test_an_interleaved_turn_with_thinking_after_a_tool_call_is_valid_openai() -> None:
    """[thinking, text, tool_use, thinking, tool_use] (interleaved thinking between two
    calls of one turn), then an OpenAI model: it was sent two assistant messages with
    tool_calls back to back, the first not followed by its tool message, which OpenAI's
    API refuses ("An assistant message with 'tool_calls' must be followed by tool messages
    responding to each 'tool_call_id'")."""

    def th(t: str) -> dict[str, Any]:
        return {"type": "thinking", "thinking": t, "signature": signature(t)}

    turn = [
        th("first"),
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_x", "name": "Bash", "input": {"command": "ls"}},
        th("then"),
        {"type": "tool_use", "id": "toolu_y", "name": "Bash", "input": {"command": "pwd"}},
    ]
    results = [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "a.py"},
               {"type": "tool_result", "tool_use_id": "toolu_y", "content": "/repo"}]  # fmt: skip
    with LocalUpstream() as up:
        up.default = reply("done")
        with running(ServerConfig(), _router(up)) as (url, _), _client(url).messages.stream(
            model="gpt-5.4-mini", max_tokens=2000, tools=TOOLS,
            messages=[{"role": "user", "content": "go"},
                      {"role": "assistant", "content": turn},
                      {"role": "user", "content": results}],
        ) as s:  # fmt: skip
            s.get_final_message()
        sent = up.requests[-1].body["messages"]
    for i, m in enumerate(sent):  # each call's results follow its assistant message at once
        if m.get("tool_calls"):
            ids = [c["id"] for c in m["tool_calls"]]
            after = [x.get("tool_call_id") for x in sent[i + 1 : i + 1 + len(ids)]]
            assert after == ids, json.dumps(sent)[:600]


def test_back_to_a_claude_model_with_thinking_after_another_models_tool_call() -> None:
    """Mixed routing: a non-Claude model made the last tool call (no thinking block), then
    Claude Code's next turn names a Claude model with `thinking: enabled`. Every row of
    the model that thinks refuses that loop (as Anthropic's API would), and the model's own
    row without thinking, which could answer it, is left out: a 400 the agent cannot avoid
    (it sends the same thinking on every turn). That turn is answered without thinking."""
    with LocalUpstream() as up:
        up.script("gpt-5.4-mini", reply("look", tool_call=("Bash", '{"command": "ls"}')))
        with running(ServerConfig(), _router(up)) as (url, _):
            c = _client(url)
            msgs: list[Any] = [{"role": "user", "content": "fix it"}]
            with c.messages.stream(model="gpt-5.4-mini", max_tokens=32000, tools=TOOLS,
                                   messages=msgs) as s:  # fmt: skip
                first = s.get_final_message()
            use = next(b for b in first.content if b.type == "tool_use")
            msgs += [
                {"role": "assistant", "content": first.content},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "a.py"}],
                },
            ]
            with c.messages.stream(
                model="claude-haiku-4-5", max_tokens=32000, tools=TOOLS, messages=msgs,
                thinking={"type": "enabled", "budget_tokens": 31999},
            ) as s:  # fmt: skip
                second = s.get_final_message()
    assert second.model.startswith("claude-haiku-4-5")
    assert "thinking" not in up.requests[-1].body


def test_an_interleaved_turns_later_call_loses_its_cache_mark_on_openais_wire() -> None:
    """The part joined back into the turn had skipped the step that leaves prompt-cache
    marks out of an OpenAI model's tool calls."""
    from satisfice.providers.openai import _openai_messages
    from satisfice.server import wire as server_wire

    def th(t: str) -> dict[str, Any]:
        return {"type": "thinking", "thinking": t, "signature": signature(t)}

    mark = {"type": "ephemeral"}
    turn = [th("first"), {"type": "tool_use", "id": "toolu_x", "name": "Bash", "input": {}},
            th("then"), {"type": "tool_use", "id": "toolu_y", "name": "Bash", "input": {},
                         "cache_control": mark}]  # fmt: skip
    r = server_wire.anthropic_request({"model": "auto", "max_tokens": 9, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": turn},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_x", "content": "a"},
            {"type": "tool_result", "tool_use_id": "toolu_y", "content": "b"},
        ]},
    ]}, {})  # fmt: skip
    sent = _openai_messages(r.messages)
    calls = sent[1]["tool_calls"]
    assert [c["id"] for c in calls] == ["toolu_x", "toolu_y"]
    assert all("cache_control" not in c for c in calls)


#: a coding agent's Write of a Japanese text file (any non-ASCII file content alike)
_JA = "日本語のテキスト " * 300
_WRITE = [{"name": "Write", "input_schema": {
    "type": "object", "properties": {"content": {"type": "string"}}}}]  # fmt: skip
_HI = [{"role": "user", "content": "hi"}]


def _wrote(content: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "write the file"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "Write", "input": {"content": content}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"},
        ]},
    ]  # fmt: skip


def test_a_non_ascii_tool_input_is_sent_and_counted_as_written() -> None:
    """A tool_use's input was re-serialised with \\u escapes: an OpenAI model was sent
    its own earlier call as escapes (about 5x the tokens for Japanese, billed), and
    count_tokens (with the budget and tpm counts) counted a Claude model's prompt so."""
    from satisfice import _core

    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        c = _client(url)
        c.messages.create(model="gpt-5.4-mini", max_tokens=100, messages=_wrote(_JA),
                          tools=_WRITE)  # fmt: skip
        args = up.requests[-1].body["messages"][1]["tool_calls"][0]["function"]["arguments"]
        assert json.loads(args) == {"content": _JA} and "日本語" in args
        written = _core.count_tokens(json.dumps({"content": _JA}, ensure_ascii=False))
        assert _core.count_tokens(args) == written

        def counted(messages: Any) -> int:
            n = c.messages.count_tokens(model="claude-sonnet-4-6", messages=messages,
                                        tools=_WRITE)  # fmt: skip
            return n.input_tokens

        in_tool = counted(_wrote(_JA)) - counted(_wrote("a"))
        as_text = counted([{"role": "user", "content": _JA}]) - counted(
            [{"role": "user", "content": "a"}]
        )
        assert in_tool < 2 * as_text, (in_tool, as_text)


def test_the_sdks_top_level_cache_control_marks_the_last_block() -> None:
    """`cache_control=` on messages.create and count_tokens (Anthropic's automatic prompt
    caching: a breakpoint on the last cacheable block) was a 400 "unsupported
    parameter(s)". Now the last block carries the mark, as a mark the caller set there
    would be."""
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        c = _client(url)
        r = c.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=_HI,
                              cache_control={"type": "ephemeral", "ttl": "1h"})  # fmt: skip
        assert r.content
        last = up.requests[-1].body["messages"][-1]["content"][-1]
        assert last == {"type": "text", "text": "hi",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"}}  # fmt: skip
        assert c.messages.create(model="gpt-5.4-mini", max_tokens=100, messages=_HI,
                                 cache_control={"type": "ephemeral"}).content  # fmt: skip
        n = c.messages.count_tokens(model="claude-sonnet-4-6", messages=_HI,
                                    cache_control={"type": "ephemeral"})  # fmt: skip
        assert n.input_tokens > 0
        with pytest.raises(anthropic.BadRequestError, match="cache_control"):
            c.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=_HI,
                              cache_control={"type": "persistent"})  # type: ignore[typeddict-item]  # fmt: skip


def test_thinking_display_is_sent_with_the_thinking() -> None:
    """`thinking.display` ("omitted": the answer without the thinking's text) was read
    and dropped: the upstream was sent {"type": "adaptive"}, and the caller got the
    thinking it asked to omit."""
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        c = _client(url)
        c.messages.create(model="claude-opus-4-7", max_tokens=8000, messages=_HI,
                          thinking={"type": "adaptive", "display": "omitted"})  # type: ignore[typeddict-unknown-key]  # fmt: skip
        assert up.requests[-1].body["thinking"] == {"type": "adaptive", "display": "omitted"}
        with pytest.raises(anthropic.BadRequestError, match="display"):
            c.messages.create(model="claude-opus-4-7", max_tokens=8000, messages=_HI,
                              thinking={"type": "adaptive", "display": "loud"})  # type: ignore[typeddict-unknown-key]  # fmt: skip


@pytest.mark.parametrize(
    ("kw", "refused"),
    [({"service_tier": "auto"}, {"service_tier": "standard_only"}),
     ({"speed": "standard"}, {"speed": "fast"})],
)  # fmt: skip
def test_sdk_parameters_at_their_default_are_taken(
    kw: dict[str, Any], refused: dict[str, Any]
) -> None:
    """`service_tier="auto"` and `speed="standard"` are the API's defaults, which change
    nothing: /v1/chat/completions took such defaults, /v1/messages answered 400. Another
    value is still refused (some routed providers would not honour it)."""
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        c = _client(url)
        assert c.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=_HI,
                                 **kw).content  # fmt: skip
        assert not set(kw) & set(up.requests[-1].body)
        with pytest.raises(anthropic.BadRequestError, match="unsupported parameter"):
            c.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=_HI,
                              **refused)  # fmt: skip


def test_an_effort_without_thinking_is_sent_without_thinking() -> None:
    """`output_config.effort` alone (Anthropic's default is no thinking) went to the
    effort's row with its thinking: the answer began with a thinking block (an app reading
    content[0].text broke) and the caller paid for thinking it never asked for. Now the
    row is sent the effort alone (a budget row, Haiku 4.5's, has none to send)."""
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        c = _client(url)
        for stream in (False, True):
            kw: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 1000,
                                  "messages": _HI, "output_config": {"effort": "low"}}  # fmt: skip
            if stream:
                with c.messages.stream(**kw) as s:
                    r = s.get_final_message()
            else:
                r = c.messages.create(**kw)
            sent = up.requests[-1].body
            assert "thinking" not in sent and sent["output_config"] == {"effort": "low"}, sent
            assert [b.type for b in r.content] == ["text"]
            assert r.model == "claude-sonnet-4-6@low"
        c.messages.create(model="claude-haiku-4-5", max_tokens=4000, messages=_HI,
                          output_config={"effort": "low"})  # fmt: skip
        assert not {"output_config", "thinking"} & set(up.requests[-1].body)
        # asked with thinking, the effort's row thinks as before
        c.messages.create(model="claude-sonnet-4-6", max_tokens=4000, messages=_HI,
                          thinking={"type": "adaptive"},
                          output_config={"effort": "low"})  # fmt: skip
        assert up.requests[-1].body["thinking"] == {"type": "adaptive"}


async def test_a_tool_loop_without_its_thinking_is_not_routed_to_claude_thinking_rows() -> None:
    """A tool loop whose last assistant turn carries no thinking block (what OpenAI's
    messages and most agents send) is refused by Anthropic beside thinking. It had been
    routed to Claude Sonnet 4.6's four thinking rows (primary and every fallback), each
    refused before the call, and the request failed with a 400; routing now skips those
    rows for it, and a turn that begins with its thinking (`thinking_blocks`) keeps them."""
    from satisfice import Registry, Router
    from satisfice.providers.anthropic import thinks_on_anthropic

    reg = Registry.default()
    thinking = {m.id for m in reg if thinks_on_anthropic(m)}
    assert thinking
    call = {"id": "toolu_a", "type": "function",
            "function": {"name": "Read", "arguments": '{"path": "a.py"}'}}  # fmt: skip
    loop = [
        {"role": "user", "content": "Prove the scheduler is deadlock-free, then fix it. " * 40},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_a", "content": "def run(): ..."},
    ]
    d = await Router(reg).decide(loop, quality_floor=0.85)
    assert not {d.model, *d.fallbacks} & thinking, (d.model, d.fallbacks)
    block = {"type": "thinking", "thinking": "look first", "signature": "c2ln"}
    kept = [loop[0], {**loop[1], "thinking_blocks": [block]}, loop[2]]
    d = await Router(reg).decide(kept, quality_floor=0.85)
    assert {d.model, *d.fallbacks} & thinking, (d.model, d.fallbacks)


def test_a_streamed_message_start_gives_the_prompts_count() -> None:
    """A streamed answer's `message_start` said `input_tokens: 0` whatever the prompt (a
    client's context meter, which reads it there as Anthropic's API gives it, showed an
    empty context); the upstream's totals came only in `message_delta`. Now it gives the
    prompt as routing counted it, and the final usage is still the upstream's."""
    with LocalUpstream() as up:
        up.default = reply("ok", usage=(1234, 1, 0))
        with running(ServerConfig(), _router(up)) as (url, _):
            ask = [{"role": "user", "content": "hi " * 300}]
            body = {"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": True,
                    "system": SYSTEM, "messages": ask}  # fmt: skip
            with httpx.stream("POST", url + "/v1/messages", json=body, headers=H,
                              timeout=60) as r:  # fmt: skip
                lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
            with _client(url).messages.stream(
                **{k: v for k, v in body.items() if k != "stream"}
            ) as s:
                final = s.get_final_message()
    start = json.loads(lines[0][6:])
    assert start["type"] == "message_start", start
    assert start["message"]["usage"]["input_tokens"] > 300, start["message"]["usage"]
    assert final.usage.input_tokens == 1234  # the upstream's figure, from message_delta


def test_an_answer_with_no_text_sent_back_reaches_a_claude_upstream_without_empty_blocks() -> None:
    """An answer with no text (a reasoning model that spent its limit thinking) is served as
    `content: [{"type": "text", "text": ""}]`; sent back as the conversation's next turn to
    a Claude model, the empty block (or the plain path's `content: ""`) went to the
    upstream, which Anthropic's API refuses ("text content blocks must be non-empty"):
    a 400 on every later turn. Now no empty text block or empty turn is sent on."""
    with LocalUpstream() as up:
        up.default = reply("ok")
        with running(ServerConfig(), _router(up)) as (url, _):
            for empty in ([{"type": "text", "text": ""}], ""):
                _client(url).messages.create(
                    model="claude-sonnet-4-6", max_tokens=100,
                    messages=[{"role": "user", "content": "hi"},
                              {"role": "assistant", "content": empty},
                              {"role": "user", "content": "go on"}],
                )  # fmt: skip
        sent = [s.body for s in up.requests if s.api == "anthropic"]
    assert len(sent) == 2, [s.model for s in up.requests]
    for body in sent:
        for m in body["messages"]:
            assert m["content"], body["messages"]
            blocks = m["content"] if isinstance(m["content"], list) else []
            assert all(b.get("text") != "" for b in blocks if b.get("type") == "text"), m
