"""POST /v1/messages/count_tokens and the reasoning constraints (reasoning,
max_reasoning_tokens; OpenAI's reasoning_effort, Anthropic's thinking) as coding agents
(Claude Code) and OpenAI clients use them, with aliases, virtual keys and session pins. From
an adversarial review: each test failed on the first version of these features."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from satisfice import NoRouteError, Policy, Registry, Router
from satisfice.cascade import Cascade
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream

from .server_support import running

MASTER = "master-test-key-0123456789abcdef"

#: what Claude Code sends on every turn: system blocks and tools with cache_control,
#: anthropic-beta headers
SYSTEM = [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}]
TOOLS = [{
    "name": "Bash", "description": "Run a shell command",
    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
    "cache_control": {"type": "ephemeral"},
}]  # fmt: skip
BETA = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14",
    "x-api-key": "anything",
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[LocalUpstream]:
    with LocalUpstream() as up:
        yield up


@pytest.fixture
def up(upstream: LocalUpstream) -> LocalUpstream:
    upstream.wait_idle()
    upstream.reset_script()
    from satisfice import _core

    _core.wait_for_tokenizers()
    return upstream


def _bundled(up: LocalUpstream, policy: Policy | None = None) -> Router:
    """The bundled registry (effort rows gpt-5.4@high, claude-sonnet-4-6@low, ...), every
    deployment on the local upstream."""
    return Router(up.patch(Registry.default()), policy)


def _post(
    url: str,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    up: LocalUpstream | None = None,
) -> tuple[httpx.Response, list[dict[str, Any]]]:
    before = len(up.requests) if up is not None else 0
    r = httpx.post(url + path, json=body, headers=headers or BETA, timeout=30)
    sent = [s.body for s in up.requests[before:]] if up is not None else []
    return r, sent


def _admin_key(url: str, **fields: Any) -> str:
    r = httpx.post(url + "/admin/keys", headers={"authorization": f"Bearer {MASTER}"},
                   json={"name": f"k{abs(hash(str(fields))) % 10**8}", **fields})  # fmt: skip
    assert r.status_code in (200, 201), r.text
    return r.json()["key"]


# 2 -------------------------------------------------------------------------------------
def test_an_alias_does_not_silently_replace_the_callers_reasoning_effort(
    up: LocalUpstream,
) -> None:
    """Broken promise: the upstream is sent the effort the caller asked (or a 400 says the
    request asks two things); an alias's `reasoning` silently overrides the caller's
    `reasoning_effort` (asked "none", upstream told to think at "high")."""
    cfg = ServerConfig(aliases={"deep": {"reasoning": "high"}})
    with running(cfg, _bundled(up)) as (url, _):
        for asked in ("none", "low"):
            r, sent = _post(url, "/v1/chat/completions", {
                "model": "deep", "reasoning_effort": asked,
                "messages": [{"role": "user", "content": "hi"}]}, {}, up)  # fmt: skip
            if r.status_code == 400:  # said two ways: refused, as wire._reasoning refuses it
                continue
            assert r.status_code == 200, r.text
            (seen,) = sent
            model = r.headers["x-satisfice-model"]
            assert model.endswith(f"@{asked}") or (asked == "none" and "@" not in model), (
                f"asked reasoning_effort={asked!r}, routed to {model}, upstream got "
                f"reasoning_effort={seen.get('reasoning_effort')!r} thinking={seen.get('thinking')}"
            )


# 3 -------------------------------------------------------------------------------------
def test_an_alias_does_not_raise_the_callers_thinking_budget(up: LocalUpstream) -> None:
    """Broken promise: thinking never goes over the caller's budget_tokens; an alias with a
    looser max_reasoning_tokens replaces the caller's, and the upstream is sent a bigger
    thinking budget than the caller allowed."""
    cfg = ServerConfig(aliases={"capped": {"max_reasoning_tokens": 50_000}})
    with running(cfg, _bundled(up)) as (url, _):
        r, sent = _post(url, "/v1/messages", {
            "model": "capped", "max_tokens": 1000,
            "messages": [{"role": "user", "content": "Write a function to reverse a list."}],
            "thinking": {"type": "enabled", "budget_tokens": 2000}}, up=up)  # fmt: skip
        if r.status_code == 400:
            return  # refused as contradictory: acceptable
        assert r.status_code == 200, r.text
        (seen,) = sent
        budget = (seen.get("thinking") or {}).get("budget_tokens", 0)
        model = r.headers["x-satisfice-model"]
        spent = up.patch(Registry.default())[model].reasoning_tokens
        assert budget <= 2000 and spent <= 2000, (model, seen.get("thinking"))


# 4 -------------------------------------------------------------------------------------
def test_a_keys_model_list_is_not_widened_by_reasoning_effort(
    up: LocalUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Broken promise: a key reaches only the models its list allows. A key listing
    "gpt-5.4" is refused "gpt-5.4@high" by name (403), yet reaches that same row by asking
    model "gpt-5.4" with reasoning_effort="high"."""
    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    with running(ServerConfig(), _bundled(up)) as (url, _):
        key = _admin_key(url, models=["gpt-5.4"])
        auth = {"authorization": f"Bearer {key}"}
        msgs = [{"role": "user", "content": "hi"}]
        direct, _ = _post(
            url, "/v1/chat/completions", {"model": "gpt-5.4@high", "messages": msgs}, auth
        )
        assert direct.status_code == 403  # the key may not use gpt-5.4@high
        ask = {"model": "gpt-5.4", "messages": msgs, "reasoning_effort": "high"}
        r, sent = _post(url, "/v1/chat/completions", ask, auth, up)
        assert r.headers.get("x-satisfice-model") != "gpt-5.4@high", (
            f"the key's list refuses gpt-5.4@high, yet it was called: {sent}"
        )


# 5 -------------------------------------------------------------------------------------
def test_a_key_allowing_an_effort_row_may_ask_its_model_at_that_effort(
    up: LocalUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Broken promise (refusal it should allow): a key that may use "gpt-5.4@high" is
    refused model "gpt-5.4" with reasoning_effort="high", which would reach only
    gpt-5.4@high (the 403 says the key may not use 'gpt-5.4')."""
    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    with running(ServerConfig(), _bundled(up)) as (url, _):
        key = _admin_key(url, models=["gpt-5.4@high"])
        r, _ = _post(url, "/v1/chat/completions", {
            "model": "gpt-5.4", "reasoning_effort": "high",
            "messages": [{"role": "user", "content": "hi"}]},
            {"authorization": f"Bearer {key}"})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.headers["x-satisfice-model"] == "gpt-5.4@high"


# 6 -------------------------------------------------------------------------------------
def test_an_alias_of_models_takes_their_effort_rows(up: LocalUpstream) -> None:
    """Broken promise: "a model id asked with reasoning_effort/thinking takes its own
    effort rows"; an alias naming models ({"allow": [...]}) does not, so
    reasoning_effort="high" is a 400 "no model ... has reasoning='high'" although both of
    its models have a @high row."""
    cfg = ServerConfig(aliases={"smart": {"allow": ["gpt-5.4", "claude-opus-4-7"]}})
    with running(cfg, _bundled(up)) as (url, _):
        r, _ = _post(url, "/v1/chat/completions", {
            "model": "smart", "reasoning_effort": "high",
            "messages": [{"role": "user", "content": "hi"}]}, {})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.headers["x-satisfice-model"] in ("gpt-5.4@high", "claude-opus-4-7@high")


# 8 -------------------------------------------------------------------------------------
def test_count_tokens_follows_the_session_pin(up: LocalUpstream) -> None:
    """Broken promise: count_tokens counts for the model /v1/messages would use now; with
    an x-satisfice-session pinned to a model, /v1/messages goes to the pin while
    count_tokens ignores it and names (and counts for) another model."""
    with running(ServerConfig(), _bundled(up)) as (url, _):
        h = {**BETA, "x-satisfice-session": "claude-code-session-1"}
        msgs = [{"role": "user", "content": "hi"}]
        first, _ = _post(url, "/v1/messages", {"model": "gpt-5.4", "max_tokens": 50,
                                               "messages": msgs}, h)  # fmt: skip
        assert first.status_code == 200, first.text  # the session is pinned to gpt-5.4
        turn, _ = _post(url, "/v1/messages", {"model": "auto", "max_tokens": 50,
                                              "messages": msgs}, h)  # fmt: skip
        assert turn.headers["x-satisfice-model"] == "gpt-5.4"  # the pin is honoured
        n, _ = _post(url, "/v1/messages/count_tokens", {"model": "auto", "messages": msgs}, h)
        assert n.status_code == 200, n.text
        assert n.headers["x-satisfice-model"] == "gpt-5.4"


# 9 -------------------------------------------------------------------------------------
def _one_claude(url: str) -> Registry:
    """beta (Anthropic wire) whose base row is under the quality floor and whose thinking
    rows are over it."""
    return Registry.from_dict({"model": [{
        "id": "beta", "provider": "anthropic", "tokenizer": "claude",
        "context_window": 100_000, "max_output": 40_000,
        "capabilities": ["json", "tools", "streaming", "system_prompt", "reasoning"],
        "price": {"input": 0.1, "output": 0.4}, "quality": {"general": 0.5},
        "efforts": {"low": {"reasoning_tokens": 2048, "quality": 0.4},
                    "high": {"reasoning_tokens": 16384, "quality": 0.45}},
        "deployments": [{"name": "beta-dep", "api": "anthropic", "model": "beta-wire",
                         "base_url": url}],
    }]})  # fmt: skip


def test_adaptive_thinking_on_a_named_model_leaves_the_effort_to_routing(
    up: LocalUpstream,
) -> None:
    """A named model with thinking "adaptive" had been held to its base row (no thinking
    ever sent) even where only its thinking rows pass the quality floor; as "auto" the same
    request reached them. Adaptive leaves the effort to routing, among the model's rows."""
    router = Router(_one_claude(up.url), Policy(quality_floor=0.8))
    with running(ServerConfig(), router) as (url, _):
        body = {"max_tokens": 100, "messages": [{"role": "user", "content": "hi"}],
                "thinking": {"type": "adaptive"}}  # fmt: skip
        auto, _ = _post(url, "/v1/messages", {**body, "model": "auto"}, up=up)
        assert auto.headers["x-satisfice-model"].startswith("beta@")  # routing picks a level
        named, sent = _post(url, "/v1/messages", {**body, "model": "beta"}, up=up)
        assert named.status_code == 200, named.text
        assert named.headers["x-satisfice-model"] == auto.headers["x-satisfice-model"]
        assert sent[0]["thinking"]["type"] == "enabled"
        plain, sent = _post(url, "/v1/messages", {"max_tokens": 100, "model": "beta",
                                                  "messages": body["messages"]}, up=up)  # fmt: skip
        assert plain.headers["x-satisfice-model"] == "beta" and "thinking" not in sent[0]


# 10 ------------------------------------------------------------------------------------
async def test_an_anthropic_models_base_row_is_priced_as_sent_without_thinking(
    up: LocalUpstream,
) -> None:
    """An Anthropic model declaring a `medium` level had its base row priced with medium's
    reasoning tokens (so it passed reasoning="on"), but that row is sent no thinking (the
    API's default): it is priced and routed as it is sent."""
    reg = Registry.from_dict({"model": [{
        "id": "claudex", "provider": "anthropic", "tokenizer": "claude",
        "context_window": 100_000, "max_output": 40_000,
        "capabilities": ["json", "tools", "streaming", "system_prompt", "reasoning"],
        "price": {"input": 0.1, "output": 0.4}, "quality": {"general": 0.9},
        "efforts": {k: {"reasoning_tokens": n} for k, n in
                    {"low": 2048, "medium": 8000, "high": 16384}.items()},
        "deployments": [{"name": "cx", "api": "anthropic", "model": "claudex-wire",
                         "base_url": up.url}],
    }]})  # fmt: skip
    assert reg["claudex"].reasoning_tokens == 0
    async with Router(reg) as router:
        before = len(up.requests)
        with pytest.raises(NoRouteError, match="claudex: effort default, 0 reasoning"):
            await router.chat("hi", reasoning="on", max_tokens=50,
                              deny=["claudex@low", "claudex@medium", "claudex@high"])  # fmt: skip
        res = await router.chat("hi", reasoning="on", max_tokens=50)
        (seen,) = up.requests[before:]
    assert res.model.startswith("claudex@") and seen.body["thinking"]["type"] == "enabled"


# 11 ------------------------------------------------------------------------------------
def test_count_tokens_under_cascade_auto_names_the_model_called_first(up: LocalUpstream) -> None:
    """Broken promise: count_tokens names the model /v1/messages would call; with
    cascade "auto" it names the routed primary, while /v1/messages calls the tuned
    ladder's first model (another model, another tokenizer)."""
    policy = Policy(cascades={"*": Cascade([["gpt-5.4-nano"], ["gpt-5.4"]])})
    with running(ServerConfig(), _bundled(up, policy)) as (url, _):
        body = {"model": "auto", "cascade": "auto",
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        n, _ = _post(url, "/v1/messages/count_tokens", body)
        r, sent = _post(url, "/v1/messages", {**body, "max_tokens": 100}, up=up)
        assert n.status_code == r.status_code == 200, (n.text, r.text)
        assert sent[0]["model"] == "gpt-5.4-nano"  # the ladder's first step was called
        assert n.headers["x-satisfice-model"] == "gpt-5.4-nano"


def test_a_model_names_constraints_and_the_callers_combine_to_the_stricter() -> None:
    """An alias's constraints had replaced the caller's own silently (a cost cap raised, a
    floor lowered): the stricter of two limits holds, a list is the two lists' overlap,
    and what cannot be combined is a 400 naming both."""
    from satisfice.server.app import HTTPError, _with_model

    alias = {"max_cost_usd": 0.01, "quality_floor": 0.5, "needs": ("json",),
             "allow": ("a", "b"), "reasoning": "high"}  # fmt: skip
    got = _with_model({"max_cost_usd": 0.001, "quality_floor": 0.9, "needs": ["tools"],
                       "allow": ["b", "c"], "reasoning": "high"}, alias, "x")  # fmt: skip
    assert got == {"max_cost_usd": 0.001, "quality_floor": 0.9, "needs": ("json", "tools"),
                   "allow": ("b",), "reasoning": "high"}  # fmt: skip
    assert _with_model({"lam": 2.0}, alias, "x")["max_cost_usd"] == 0.01  # unset: the alias's
    with pytest.raises(HTTPError, match="sets reasoning='high' and the request reasoning='low'"):
        _with_model({"reasoning": "low"}, alias, "x")
    with pytest.raises(HTTPError, match="no model is in both"):
        _with_model({"allow": ["c"]}, alias, "x")
