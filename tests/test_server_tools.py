"""Anthropic's server tools (web search, web fetch) through `satisfice serve`'s /v1/messages
and `chat(server_tools=...)`: Anthropic runs them while the model answers, so the request
routes to Claude models alone, the tool goes as given, the answer comes back with the
search's call, its result and the text's citations (streamed and not), and each search is
billed at the registry's `per_search` (a model without one: unpriced, never free). They had
been a 400 whatever the model (Claude Code's WebSearch among them)."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from satisfice import Cascade, NoRouteError, Registry, Router, Step, StreamInterruptedError
from satisfice.ledger import read_records
from satisfice.providers.anthropic import runs_server_tools
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, RawUpstream, http_response
from satisfice.testing.upstream import patch_registry

from .server_support import running

SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
ASK = [{"role": "user", "content": "what changed in the news today?"}]


def _router(up: LocalUpstream) -> Router:
    return Router(up.patch(Registry.default()))


def _client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="anything", max_retries=0, timeout=60)


def _price(model: str) -> Any:
    price = Registry.default()[model].price
    assert price is not None
    return price


@pytest.mark.parametrize("stream", [False, True])
def test_a_web_search_is_served_by_a_claude_model_and_billed(stream: bool) -> None:
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        c = _client(url)
        try:
            kw: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 2000,
                                  "messages": ASK, "tools": [SEARCH]}  # fmt: skip
            said: Any = None  # the `satisfice` field: a stream's rides on its message_delta
            if stream:
                with c.messages.stream(**kw) as s:
                    for ev in s:
                        if ev.type == "message_delta":
                            said = (ev.model_extra or {}).get("satisfice")
                    r = s.get_final_message()
            else:
                r = c.messages.create(**kw)
                said = (r.model_extra or {}).get("satisfice")
        finally:
            c.close()
        sent = up.requests[-1]
        assert sent.api == "anthropic" and sent.body["tools"] == [SEARCH]  # as given
        assert r.model.startswith("claude-sonnet-4-6")
        assert [b.type for b in r.content] == ["server_tool_use", "web_search_tool_result", "text"]
        use, result, text = r.content
        assert use.name == "web_search" and use.input == {"query": "satisfice"}  # type: ignore[union-attr]
        assert result.tool_use_id == use.id  # type: ignore[union-attr]
        assert text.citations[0].url == "https://example.com/a"  # type: ignore[union-attr]
        assert r.usage.server_tool_use is not None
        assert r.usage.server_tool_use.web_search_requests == 1
        # the search billed at the model's per_search, beside the tokens
        res = said
        assert res is not None and not res["cost_estimated"]
        price = _price(r.model.split("@")[0])
        tokens = price.cost(
            r.usage.input_tokens + (r.usage.cache_read_input_tokens or 0),
            r.usage.output_tokens,
        )
        assert res["cost_usd"] == pytest.approx(tokens + price.per_search)


def test_auto_routes_a_search_to_a_claude_model_that_prices_it() -> None:
    """model "auto" with a search: only models with an Anthropic deployment can run it,
    and of those the ones whose price has a per_search (the cheapest Claude model, Haiku
    4.5, has none in the registry: a search there is billed at a price nobody knows)."""
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        c = _client(url)
        try:
            r = c.messages.create(model="auto", max_tokens=2000, messages=ASK, tools=[SEARCH])
            assert up.requests[-1].api == "anthropic"
            assert _price(r.model.split("@")[0]).per_search is not None
            # named, a model without a search price answers, at a cost unknown, never $0
            named = c.messages.create(model="claude-haiku-4-5", max_tokens=2000, messages=ASK,
                                      tools=[SEARCH])  # fmt: skip
        finally:
            c.close()
    assert named.model == "claude-haiku-4-5" and _price("claude-haiku-4-5").per_search is None
    said = (named.model_extra or {}).get("satisfice")
    assert said is not None and said["cost_usd"] is None


async def test_the_python_api_carries_server_tools_and_bounds_their_cost() -> None:
    """chat(server_tools=[...]): routed to Claude models, the search billed; under a cost
    cap the call holds max_uses searches at per_search, and a search tool without
    max_uses (its cost unbounded) is skipped under a cap, saying what to set."""
    from satisfice import AllAttemptsFailedError, ConfigError

    with LocalUpstream() as up:
        async with Router(up.patch(Registry.default())) as r:
            res = await r.chat(ASK, server_tools=[SEARCH], max_tokens=500)
            assert res.model.startswith("claude-") and res.usage.web_searches == 1
            price = _price(res.model.split("@")[0])
            assert res.cost_usd == pytest.approx(
                price.cost(res.usage.prompt_tokens, res.usage.completion_tokens) + price.per_search
            )
            assert "web_searches" in str(res.to_record())
            # a cap the searches' bound fits (3 at $0.01, their results at 20,000 input
            # tokens each: $0.18 on Sonnet 4.6): the call goes out
            ok = await r.chat(ASK, server_tools=[SEARCH], max_tokens=500, max_cost_usd=0.5)
            assert ok.cost_usd is not None and ok.cost_usd <= 0.5
            # one it does not: refused before any call, saying why
            n = len(up.requests)
            with pytest.raises(AllAttemptsFailedError, match="web searches may cost"):
                await r.chat(ASK, server_tools=[SEARCH], max_tokens=500, max_cost_usd=0.1)
            unbounded = {"type": "web_search_20250305", "name": "web_search"}
            with pytest.raises(AllAttemptsFailedError, match="max_uses"):
                await r.chat(ASK, server_tools=[unbounded], max_tokens=500, max_cost_usd=1.0)
            assert len(up.requests) == n
            with pytest.raises(NoRouteError, match="Anthropic deployment"):
                await r.chat(ASK, server_tools=[SEARCH], allow=["gpt-5.4-mini"])
            with pytest.raises(ConfigError, match="server_tools"):
                await r.chat(ASK, server_tools=[{"name": "web_search"}])


def test_a_budget_reserves_the_searches_a_request_may_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key's budget holds a search request's worst case with max_uses searches at the
    model's per_search and their results at 20,000 input tokens each (the reservation had
    left them out, and each search went unbudgeted); a search tool without max_uses cannot
    be bounded: refused under a budget, saying so."""
    import httpx

    from .test_server import MASTER

    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        admin = {"authorization": f"Bearer {MASTER}"}
        key = httpx.post(url + "/admin/keys", headers=admin,
                         json={"name": "searcher", "budget_usd": 0.1}).json()["key"]  # fmt: skip
        c = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=60)
        try:
            with pytest.raises(anthropic.RateLimitError, match=r"may cost up to \$0\.2"):
                c.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=ASK,
                                  tools=[SEARCH])  # 3 searches: $0.03 and 60k tokens  # fmt: skip
            unbounded = {"type": "web_search_20250305", "name": "web_search"}
            with pytest.raises(anthropic.RateLimitError, match="max_uses"):
                c.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=ASK,
                                  tools=[unbounded])  # fmt: skip
            one = {**SEARCH, "max_uses": 1}  # $0.01 and 20k tokens ($0.06): within $0.1
            r = c.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=ASK,
                                  tools=[one])  # fmt: skip
            assert r.usage.server_tool_use is not None
        finally:
            c.close()
        assert len(up.requests) == 1  # the refused ones made no call


def test_a_turn_that_searched_is_sent_back_as_it_came() -> None:
    """The next turn of a conversation that searched sends the search's call, its result
    and the cited text back (an Anthropic SDK app's history: it had been a 400, "content
    block type 'server_tool_use' is not supported"): to a Claude model, as it came, and
    counted; with no search offered now it still routes to Claude models alone."""
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        c = _client(url)
        try:
            first = c.messages.create(model="claude-sonnet-4-6", max_tokens=500, messages=ASK,
                                      tools=[SEARCH])  # fmt: skip
            turn = [b.model_dump(exclude_none=True) for b in first.content]
            history = [*ASK, {"role": "assistant", "content": turn},
                       {"role": "user", "content": "and yesterday?"}]  # fmt: skip
            again = c.messages.create(model="auto", max_tokens=500, messages=history,
                                      tools=[SEARCH])  # fmt: skip
            sent = up.requests[-1].body["messages"]
            assert sent[1]["role"] == "assistant" and [b["type"] for b in sent[1]["content"]] == [
                "server_tool_use", "web_search_tool_result", "text"
            ]  # fmt: skip
            assert sent[1]["content"][2]["citations"][0]["url"] == "https://example.com/a"
            assert again.model.startswith("claude-")
            bare = c.messages.create(model="auto", max_tokens=500, messages=history)
            assert bare.model.startswith("claude-") and up.requests[-1].api == "anthropic"
            n = c.messages.count_tokens(model="claude-sonnet-4-6", messages=history).input_tokens
            short = c.messages.count_tokens(model="claude-sonnet-4-6", messages=[
                *ASK, {"role": "assistant", "content": "x"},
                {"role": "user", "content": "and yesterday?"}]).input_tokens  # fmt: skip
            assert n > short + 20  # the search's call, result and citation counted
        finally:
            c.close()


# -- found by review: a raw-socket upstream, every byte the test's --------------------

USE = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
       "input": {"query": "satisfice"}}  # fmt: skip
RESULT = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [
    {"type": "web_search_result", "url": "https://example.com/a", "title": "A",
     "encrypted_content": "EqgfCioIARgB", "page_age": None}]}  # fmt: skip
SONNET = "claude-sonnet-4-6"


def _cite(n: str) -> dict[str, Any]:
    return {"type": "web_search_result_location", "url": f"https://example.com/{n}",
            "title": n, "encrypted_index": "Eo8BCioIAhgB", "cited_text": n}  # fmt: skip


def _ev(kind: str, **d: Any) -> bytes:
    return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, **d}).encode() + b"\n\n"


def _body(content: list[Any], stop: str = "end_turn", **usage: Any) -> bytes:
    u = {"input_tokens": 10, "output_tokens": 5, "server_tool_use": {"web_search_requests": 1}}
    return http_response(json.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": SONNET,
        "content": content, "stop_reason": stop, "stop_sequence": None, "usage": {**u, **usage},
    }).encode())  # fmt: skip


def _stream(
    blocks: list[dict[str, Any]], stop: str = "end_turn", end: bool = True, whole: bool = False
) -> bytes:
    """Anthropic's SSE for `blocks` (a server_tool_use's input in two input_json_delta
    pieces, or `whole` in its start; a text's citations as citations_delta before its
    text); without `end`, the stream stops after the blocks (no message_delta, no
    message_stop)."""
    out = [_ev("message_start", message={
        "id": "msg_1", "type": "message", "role": "assistant", "model": SONNET, "content": [],
        "stop_reason": None, "usage": {"input_tokens": 10, "output_tokens": 1}})]  # fmt: skip
    for i, b in enumerate(blocks):
        if b["type"] == "server_tool_use" and whole:
            out.append(_ev("content_block_start", index=i, content_block=b))
        elif b["type"] == "server_tool_use":
            out.append(_ev("content_block_start", index=i, content_block={**b, "input": {}}))
            s = json.dumps(b["input"])
            for p in (s[:7], s[7:]):
                out.append(_ev("content_block_delta", index=i,
                               delta={"type": "input_json_delta", "partial_json": p}))  # fmt: skip
        elif b["type"] == "text":
            out.append(_ev("content_block_start", index=i,
                           content_block={"type": "text", "text": ""}))  # fmt: skip
            for c in b.get("citations") or ():
                out.append(_ev("content_block_delta", index=i,
                               delta={"type": "citations_delta", "citation": c}))  # fmt: skip
            out.append(_ev("content_block_delta", index=i,
                           delta={"type": "text_delta", "text": b["text"]}))  # fmt: skip
        else:
            out.append(_ev("content_block_start", index=i, content_block=b))
        out.append(_ev("content_block_stop", index=i))
    if end:
        out.append(_ev("message_delta", delta={"stop_reason": stop, "stop_sequence": None},
                       usage={"output_tokens": 5,
                              "server_tool_use": {"web_search_requests": 1}}))  # fmt: skip
        out.append(_ev("message_stop"))
    return http_response(b"".join(out), ctype="text/event-stream")


def _made_and_streamed(raw: RawUpstream, kw: dict[str, Any]) -> tuple[Any, Any]:
    """The same request created, then streamed, through `satisfice serve` (the official
    SDK's messages.create and messages.stream(...).get_final_message())."""
    with running(ServerConfig(), Router(patch_registry(Registry.default(), raw.url))) as (url, _):
        c = _client(url)
        try:
            made = c.messages.create(**kw)
            with c.messages.stream(**kw) as s:
                return made, s.get_final_message()
        finally:
            c.close()


# 1 ------------------------------------------------------------------------------------------
def test_pause_turn_reaches_the_client(raw: RawUpstream) -> None:
    """Anthropic ends a long server-tool turn with stop_reason "pause_turn": the client is
    to send the answer back as it came to let Claude continue. It reaches the client as
    "end_turn" (streamed and not), so an SDK app takes a half-done search as the answer."""
    raw.push(_body([USE, RESULT], "pause_turn"), _stream([USE, RESULT], "pause_turn"))
    kw: dict[str, Any] = {"model": SONNET, "max_tokens": 500, "messages": ASK, "tools": [SEARCH]}
    made, streamed = _made_and_streamed(raw, kw)
    assert [b.type for b in made.content] == ["server_tool_use", "web_search_tool_result"]
    assert made.stop_reason == "pause_turn"
    assert streamed.stop_reason == "pause_turn"


def test_a_server_tool_call_given_whole_at_its_start_keeps_its_input(raw: RawUpstream) -> None:
    """A server_tool_use whose input came whole in its content_block_start, with no
    input_json_delta after it, reached a streaming client with the input {}: its query was
    lost from the turn the client sends back."""
    raw.push(_body([USE, RESULT], "pause_turn"), _stream([USE, RESULT], "pause_turn", whole=True))
    kw: dict[str, Any] = {"model": SONNET, "max_tokens": 500, "messages": ASK, "tools": [SEARCH]}
    made, streamed = _made_and_streamed(raw, kw)
    assert made.content[0].input == streamed.content[0].input == USE["input"]


# 2 ------------------------------------------------------------------------------------------
def test_streamed_and_created_give_the_same_text_blocks_and_citations(raw: RawUpstream) -> None:
    """Anthropic answers a search in several text blocks, each with its own citations (and
    uncited ones between). create() gives them as they came; the stream runs every text
    after the search into one block holding all the citations, so get_final_message()
    differs from create() and a citation no longer marks its own text."""
    content = [{"type": "text", "text": "Let me look. "}, USE, RESULT,
               {"type": "text", "text": "A is true", "citations": [_cite("a")]},
               {"type": "text", "text": " and "},
               {"type": "text", "text": "B is too", "citations": [_cite("b")]}]  # fmt: skip
    raw.push(_body(content), _stream(content))
    kw: dict[str, Any] = {"model": SONNET, "max_tokens": 500, "messages": ASK, "tools": [SEARCH]}
    made, streamed = _made_and_streamed(raw, kw)

    def shape(m: Any) -> list[Any]:
        return [(b.type, getattr(b, "text", None),
                 [x.cited_text for x in getattr(b, "citations", None) or ()])
                for b in m.content]  # fmt: skip

    assert shape(made) == [(b["type"], b.get("text"), [x["cited_text"] for x in
                            b.get("citations") or ()]) for b in content]  # fmt: skip
    assert shape(streamed) == shape(made)


# 3 ------------------------------------------------------------------------------------------
async def test_a_key_split_across_a_server_tool_calls_input_pieces_is_scrubbed(
    raw: RawUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server_tool_use's input streams as input_json_delta pieces; each event is
    scrubbed alone and the joined input only when it has a backslash (scrub_nested), so a
    deployment key split between two pieces reaches the caller whole. (A client tool call's
    pieces are scrubbed once joined.)"""
    key = "sk-ant-api03-SECRETSECRETSECRET0123456789"
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    given = json.dumps({"query": "look up " + key})
    cut = given.index(key) + 10
    events = [
        _ev("message_start", message={"id": "m", "type": "message", "role": "assistant",
                                      "model": SONNET, "content": [], "stop_reason": None,
                                      "usage": {"input_tokens": 10, "output_tokens": 1}}),
        _ev("content_block_start", index=0, content_block={**USE, "input": {}}),
        _ev("content_block_delta", index=0,
            delta={"type": "input_json_delta", "partial_json": given[:cut]}),
        _ev("content_block_delta", index=0,
            delta={"type": "input_json_delta", "partial_json": given[cut:]}),
        _ev("content_block_stop", index=0),
        _ev("content_block_start", index=1, content_block=RESULT),
        _ev("content_block_stop", index=1),
        _ev("content_block_start", index=2, content_block={"type": "text", "text": ""}),
        _ev("content_block_delta", index=2, delta={"type": "text_delta", "text": "ok"}),
        _ev("content_block_stop", index=2),
        _ev("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 5}),
        _ev("message_stop"),
    ]  # fmt: skip
    raw.push(http_response(b"".join(events), ctype="text/event-stream"))
    reg = patch_registry(Registry.default(), raw.url, drop_keys=False)
    blocks: list[Any] = []
    r = Router(reg)
    async with r, r.stream(ASK, allow=[SONNET], server_tools=[SEARCH], max_tokens=100) as s:
        async for d in s:
            if d.block is not None:
                blocks.append(d.block)
    served = [b["type"] for b in blocks if b["type"] != "text"]  # (a text block's start)
    assert served == ["server_tool_use", "web_search_tool_result"]
    assert key not in json.dumps(blocks), blocks[0]


# 4 ------------------------------------------------------------------------------------------
async def test_a_stream_cut_after_a_search_still_bills_the_search(raw: RawUpstream) -> None:
    """A stream that breaks after the search's call and result reached the caller: the
    search ran (Anthropic bills it) and the content shows it, but the failed attempt's
    estimated usage has web_searches=0, so its cost (and a budget's settlement) leaves
    the search out."""
    raw.push(_stream([USE, RESULT, {"type": "text", "text": "partial answer"}], end=False))
    async with Router(patch_registry(Registry.default(), raw.url)) as r:
        with pytest.raises(StreamInterruptedError) as ei:
            async with r.stream(ASK, allow=[SONNET], server_tools=[SEARCH], max_tokens=100) as s:
                async for _ in s:
                    pass
    a = ei.value.attempts[-1]
    assert a.model == SONNET and a.usage is not None
    assert a.usage.web_searches == 1, a.usage
    per_search = Registry.default()[SONNET].price.per_search  # type: ignore[union-attr]
    assert a.cost_usd is not None and a.cost_usd >= per_search, a.cost_usd


# 5 ------------------------------------------------------------------------------------------
async def test_an_errored_search_is_not_billed(raw: RawUpstream) -> None:
    """max_uses 1: the model's second search comes back as a web_search_tool_result whose
    content is an error (max_uses_exceeded), which Anthropic does not bill; its usage says
    web_search_requests 1. The provider counts result blocks and takes the larger, so the
    call had been billed 2 searches."""
    use2 = {**USE, "id": "srvtoolu_2"}
    err = {
        "type": "web_search_tool_result",
        "tool_use_id": "srvtoolu_2",
        "content": {"type": "web_search_tool_result_error", "error_code": "max_uses_exceeded"},
    }
    raw.push(_body([USE, RESULT, use2, err, {"type": "text", "text": "A"}]))
    async with Router(patch_registry(Registry.default(), raw.url)) as r:
        res = await r.chat(ASK, allow=[SONNET], server_tools=[{**SEARCH, "max_uses": 1}],
                           max_tokens=100, max_cost_usd=0.1)  # fmt: skip
    assert res.usage.web_searches == 1, res.usage
    assert res.total_cost_usd is not None and res.total_cost_usd < 0.02, res.total_cost_usd


# 6 ------------------------------------------------------------------------------------------
async def test_a_cost_cap_holds_with_a_search_results_tokens(raw: RawUpstream) -> None:
    """A search's results are billed as input tokens (often tens of thousands). Under
    max_cost_usd the hold had been the prompt, the answer and max_uses x per_search, nothing
    for the results' tokens: a $0.05 cap was billed $0.19 (one search, 60k result tokens).
    Each search now holds SEARCH_RESULT_TOKENS of them."""
    from satisfice import AllAttemptsFailedError

    raw.push(_body([USE, RESULT, {"type": "text", "text": "A"}], input_tokens=60_000))
    one = [{**SEARCH, "max_uses": 1}]
    async with Router(patch_registry(Registry.default(), raw.url)) as r:
        # a search's results held at 20,000 input tokens ($0.06 on Sonnet 4.6), and its $0.01
        with pytest.raises(AllAttemptsFailedError, match="20,000 input tokens"):
            await r.chat(ASK, allow=[SONNET], server_tools=one, max_tokens=100,
                         max_cost_usd=0.05)  # fmt: skip
        assert not raw.requests  # refused before any call
        res = await r.chat(ASK, allow=[SONNET], server_tools=one, max_tokens=100,
                           max_cost_usd=0.2)  # fmt: skip
    assert res.total_cost_usd is not None and res.total_cost_usd <= 0.2, res.total_cost_usd


# -- found by a second review ------------------------------------------------------------


# 1 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_a_paused_turns_continuation_keeps_its_citations_and_blocks(
    raw: RawUpstream, stream: bool
) -> None:
    """pause_turn: the client sends the paused turn back (assistant last) and Claude goes
    on. The continuation cites the earlier search but runs none itself, so its content has
    no server block: anthropic_response then rebuilds it from the joined text (citations
    dropped, blocks merged), and the stream, with no server block seen, runs its text
    blocks into one. An SDK app loses every citation of the finished answer."""
    rest = [{"type": "text", "text": "A is true", "citations": [_cite("a")]},
            {"type": "text", "text": " and more."}]  # fmt: skip
    raw.push(_body([USE, RESULT], "pause_turn"), (_stream if stream else _body)(rest))
    kw: dict[str, Any] = {"model": SONNET, "max_tokens": 500, "tools": [SEARCH]}
    with running(ServerConfig(), Router(patch_registry(Registry.default(), raw.url))) as (url, _):
        c = _client(url)
        try:
            first = c.messages.create(messages=ASK, **kw)
            assert first.stop_reason == "pause_turn"
            history = [*ASK, {"role": "assistant", "content": first.content}]
            if stream:
                with c.messages.stream(messages=history, **kw) as s:
                    done = s.get_final_message()
            else:
                done = c.messages.create(messages=history, **kw)
        finally:
            c.close()
    assert [b.model_dump(exclude_none=True) for b in done.content] == rest


# 2 ------------------------------------------------------------------------------------------
def test_a_session_switch_for_a_search_says_why(tmp_path: Any) -> None:
    """A session pinned on an OpenAI model (an earlier turn without a search) asks for a
    search: the request must go to Claude, and the record's session_switch says why the
    pin no longer fits. The check re-routes the pin without the server tools, so it fits,
    and the record says the pin "cannot be called now (disabled or cooling down)": false,
    gpt-5.4-mini is healthy."""
    from satisfice.server.wire import session_key

    cfg = ServerConfig(ledger=str(tmp_path / "l.db"))
    with LocalUpstream() as up, running(cfg, Router(up.patch(Registry.default()))) as (url, app):
        svc = app.state.service
        svc.state._pins[f"anon:{session_key('s1')}"] = ("gpt-5.4-mini", 1e12)
        c = _client(url)
        try:
            r = c.messages.create(model="auto", max_tokens=500, messages=ASK, tools=[SEARCH],
                                  metadata={"user_id": "s1"})  # fmt: skip
        finally:
            c.close()
        svc.router.ledger.flush()
        recs = list(read_records(tmp_path / "l.db"))
    assert r.model.startswith("claude-")
    why = recs[-1]["metadata"]["session_switch"]
    assert "cooling" not in why and ("server tool" in why or "Anthropic" in why), why


# 3 ------------------------------------------------------------------------------------------
async def test_a_cascade_step_on_an_openai_model_says_it_is_the_server_tools() -> None:
    """A cascade naming an OpenAI model, with server_tools: refused (fine), but in words
    that blame "this request's allow/deny", which the caller never set (the allow list
    is the one server_tools put in); the server tools go unnamed."""
    from satisfice import ConfigError

    ladder = Cascade([Step(("gpt-5.4-mini",)), Step((SONNET,))])
    with LocalUpstream() as up:
        async with Router(up.patch(Registry.default())) as r:
            with pytest.raises(ConfigError) as ei:
                await r.chat(ASK, server_tools=[SEARCH], max_tokens=100, cascade=ladder)
    assert "server tool" in str(ei.value) or "server_tools" in str(ei.value), str(ei.value)


# 4 ------------------------------------------------------------------------------------------
def test_a_tpm_limit_counts_the_search_results_a_request_may_bring(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A budget holds each search's results at SEARCH_RESULT_TOKENS input tokens; a key's
    tpm count takes the prompt, max_tokens and (for Claude) the thinking budget, but not
    the results: a request that may add 5 x 20,000 input tokens passes a 10,000 tpm key
    (Anthropic counts those tokens against its own input-token limit)."""
    from .test_server import MASTER

    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    with LocalUpstream() as up, running(ServerConfig(), Router(up.patch(Registry.default()))) as (
        url, _,
    ):  # fmt: skip
        admin = {"authorization": f"Bearer {MASTER}"}
        key = httpx.post(url + "/admin/keys", headers=admin,
                         json={"name": "t", "tpm": 10_000}).json()["key"]  # fmt: skip
        c = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=60)
        try:
            with pytest.raises(anthropic.RateLimitError):
                c.messages.create(model=SONNET, max_tokens=100, messages=ASK,
                                  tools=[{**SEARCH, "max_uses": 5}])  # fmt: skip
        finally:
            c.close()


async def test_a_call_cut_off_before_anything_was_seen_bills_the_searches_it_may_have_run() -> None:
    """A search request whose call times out after reaching Anthropic (or is cancelled, a
    race's loser): it may have run its searches, which Anthropic bills; nothing was seen.
    Its estimate had been the prompt alone. Now: the searches its tools allow, their
    results' tokens too; with no max_uses to bound them, a cost unknown, never a number."""
    from satisfice import AllAttemptsFailedError
    from satisfice.executor import ExecutionConfig
    from satisfice.testing import hang

    cfg = ExecutionConfig(read_timeout_s=0.5, attempt_timeout_s=0.5, max_retries=0)
    with LocalUpstream() as up:
        up.default = hang()
        async with Router(up.patch(Registry.default())).configure(execution=cfg) as r:
            for tools, priced in (([SEARCH], True), ([{**SEARCH, "max_uses": None}], False)):
                tools = [{k: v for k, v in t.items() if v is not None} for t in tools]
                with pytest.raises(AllAttemptsFailedError) as ei:
                    await r.chat(ASK, allow=[SONNET], server_tools=tools, max_tokens=100)
                (a,) = [a for a in ei.value.attempts if a.outcome == "error"][:1]
                assert a.usage is not None and a.cost_estimated
                if priced:  # 3 searches at $0.01, their results 3 x 20,000 input tokens
                    assert a.usage.web_searches == 3 and a.usage.prompt_tokens > 60_000
                    assert a.cost_usd is not None and a.cost_usd > 0.03 + 60_000 * 3 / 1e6
                else:
                    assert a.cost_usd is None


async def test_a_python_caller_s_searched_turn_goes_to_claude_models_alone() -> None:
    """A Python caller sends back a turn in which a search ran (`anthropic_content`)
    without offering a server tool now: only a Claude model can be sent those blocks. The
    router had routed it anywhere, and an OpenAI model was sent a field its API refuses.
    Found by review; the server already routed it so."""
    turn = {"role": "assistant", "content": "",
            "anthropic_content": [USE, RESULT, {"type": "text", "text": "A says so."}]}  # fmt: skip
    msgs = [*ASK, turn, {"role": "user", "content": "and B?"}]
    with LocalUpstream() as up:
        router = _router(up)
        try:
            rows = ["gpt-5.4-nano", "claude-haiku-4-5"]  # the OpenAI one first, if it may
            d = await router.decide(msgs, allow=rows, prefer=rows[0])
            r = await router.chat(msgs, allow=rows, prefer=rows[0])
        finally:
            await router.aclose()
        sent = up.requests[-1]
    claude = {m.id for m in Registry.default() if runs_server_tools(m)}
    assert d.model in claude and set(d.fallbacks) <= claude
    assert r.model in claude and sent.api == "anthropic"
    assert sent.body["messages"][1]["content"][:2] == [USE, RESULT]
