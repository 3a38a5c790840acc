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
from satisfice.testing import LocalUpstream, reply

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


def test_auto_routes_a_search_to_a_claude_model_and_an_unpriced_search_is_no_free_one() -> None:
    """model "auto" with a search: only models with an Anthropic deployment can run it
    (the cheapest, Claude Haiku 4.5, has no search price in the registry: its answer's cost
    is unknown, never the tokens' alone)."""
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _):
        c = _client(url)
        try:
            r = c.messages.create(model="auto", max_tokens=2000, messages=ASK, tools=[SEARCH])
        finally:
            c.close()
    assert r.model.startswith("claude-") and up.requests[-1].api == "anthropic"
    assert _price(r.model.split("@")[0]).per_search is None
    res = r.model_extra["satisfice"] if r.model_extra else None
    assert res is not None and res["cost_usd"] is None
