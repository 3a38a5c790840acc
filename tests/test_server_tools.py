"""Anthropic's server tools (web search, web fetch) through `satisfice serve`'s /v1/messages
and `chat(server_tools=...)`: Anthropic runs them while the model answers, so the request
routes to Claude models alone, the tool goes as given, the answer comes back with the
search's call, its result and the text's citations (streamed and not), and each search is
billed at the registry's `per_search` (a model without one: unpriced, never free). They had
been a 400 whatever the model (Claude Code's WebSearch among them)."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from satisfice import NoRouteError, Registry, Router
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream

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
            # a cap the searches' bound fits: the call goes out
            ok = await r.chat(ASK, server_tools=[SEARCH], max_tokens=500, max_cost_usd=0.2)
            assert ok.cost_usd is not None and ok.cost_usd <= 0.2
            # one it does not (3 searches at $0.01 past $0.02): refused before any call
            n = len(up.requests)
            with pytest.raises(AllAttemptsFailedError, match="web searches may cost"):
                await r.chat(ASK, server_tools=[SEARCH], max_tokens=500, max_cost_usd=0.02)
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
    model's per_search (the reservation had left them out, and each search went unbudgeted);
    a search tool without max_uses cannot be bounded: refused under a budget, saying so."""
    import httpx

    from .test_server import MASTER

    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        admin = {"authorization": f"Bearer {MASTER}"}
        key = httpx.post(url + "/admin/keys", headers=admin,
                         json={"name": "searcher", "budget_usd": 0.02}).json()["key"]  # fmt: skip
        c = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=60)
        try:
            with pytest.raises(anthropic.RateLimitError, match=r"may cost up to \$0\.0[3-9]"):
                c.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=ASK,
                                  tools=[SEARCH])  # 3 searches: $0.03 past $0.02  # fmt: skip
            unbounded = {"type": "web_search_20250305", "name": "web_search"}
            with pytest.raises(anthropic.RateLimitError, match="max_uses"):
                c.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=ASK,
                                  tools=[unbounded])  # fmt: skip
            one = {**SEARCH, "max_uses": 1}  # $0.01 and the tokens: within $0.02
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
