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
from satisfice.errors import SatisficeError
from satisfice.server import ServerConfig, wire
from satisfice.server.app import _CONSTRAINT_KEYS, HTTPError, Service, http_error
from satisfice.server.state import VirtualKey
from satisfice.testing import LocalUpstream

from .chat_support import CLAUDE_CODE_SYSTEM, CLAUDE_CODE_TOOLS
from .server_support import running

MASTER = "master-test-key-0123456789abcdef"

#: what Claude Code sends on every turn: system blocks and tools with cache_control,
#: anthropic-beta headers
SYSTEM, TOOLS = CLAUDE_CODE_SYSTEM, CLAUDE_CODE_TOOLS
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
        # (room for the thinking: Anthropic's max_tokens holds it)
        body = {"max_tokens": 20000, "messages": [{"role": "user", "content": "hi"}],
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


# -- from a second review: how a model name's constraints and the caller's combine --------
MSGS = [{"role": "user", "content": "Write a Python function that merges two sorted lists."}]


def _service(
    aliases: dict[str, dict[str, Any]] | None = None, reg: Registry | None = None
) -> Service:
    return Service(ServerConfig(aliases=aliases or {}), Router(reg or Registry.default()))


def _route(svc: Service, body: dict[str, Any], api: str = "openai",
           key: VirtualKey | None = None) -> tuple[int, Any]:  # fmt: skip
    """(200, decision) or (status, message), as `handle` would answer before calling."""
    body = {"messages": MSGS, **body}
    if api == "anthropic":
        body.setdefault("max_tokens", 500)
    parse = wire.openai_request if api == "openai" else wire.anthropic_request
    try:
        routed = parse(body, {})
        opts = svc.resolve(routed, key)
        cons = {k: v for k, v in opts.items() if k in _CONSTRAINT_KEYS}
        return 200, svc.router.route(routed.messages, cons)
    except HTTPError as e:
        return e.status, str(e)
    except SatisficeError as e:
        he = http_error(e)
        return he.status, str(e)


# -- string-valued lists (one id / one capability), which Constraints and check_aliases take
def test_a_callers_allow_given_as_one_id_still_reaches_the_named_model() -> None:
    """Had been broken: `allow` may be one id ("one id, not its letters", Constraints); with
    a named model it is now split into letters and the request is a 400 (at 43ebf71 it routed)."""
    status, d = _route(_service(), {"model": "gpt-5.4", "allow": "gpt-5.4"})
    assert status == 200, d
    assert d.model == "gpt-5.4"


def test_an_alias_allow_given_as_one_id_combines_with_the_callers_allow() -> None:
    """Had been broken: an alias's `allow` given as one id (accepted by check_aliases) combines
    with the caller's allow list; it is read as its letters and every such request is a 400."""
    svc = _service({"one": {"allow": "gpt-5.4-mini"}})
    status, d = _route(svc, {"model": "one", "allow": ["gpt-5.4-mini", "gpt-5.4"]})
    assert status == 200, d
    assert d.model == "gpt-5.4-mini"


def test_an_alias_allow_given_as_one_id_takes_its_effort_rows() -> None:
    """Had been broken: an alias's models take their effort rows when the request says how to
    think; an alias whose allow is one id answers 404 "unknown model 'g'" instead."""
    svc = _service({"one": {"allow": "gpt-5.4-mini"}})
    status, d = _route(svc, {"model": "one", "reasoning_effort": "none"})
    assert status == 200, d
    assert d.model == "gpt-5.4-mini@none"


def test_an_alias_needs_given_as_one_capability_merges_with_the_callers() -> None:
    """Had been broken: an alias's `needs` merges with the caller's; an alias needs of one
    capability ("vision") is split into letters and the request is a 400 'unknown needs'."""
    svc = _service({"visiony": {"needs": "vision"}})
    status, d = _route(svc, {"model": "visiony", "needs": ["tools"]})
    assert status == 200, d
    caps = svc.router.registry[d.model].capabilities
    assert {"vision", "tools"} <= set(caps)


def test_an_alias_deny_given_as_one_id_merges_with_the_callers() -> None:
    """Had been broken: an alias's `deny` merges with the caller's; an alias deny of one id is
    split into letters and the request is a 404 "unknown model 'g'"."""
    svc = _service({"nodeny": {"deny": "gpt-5.4"}})
    status, d = _route(svc, {"model": "nodeny", "deny": ["gpt-5.4-mini"]})
    assert status == 200, d
    assert d.model not in ("gpt-5.4", "gpt-5.4-mini")


# -- an alias's (or the caller's) own reasoning constraint with named models ----------------
def test_an_alias_that_sets_reasoning_reaches_its_models_effort_rows() -> None:
    """Had been broken: an alias is usable as configured (check_aliases accepts it); one with
    allow=[gpt-5.4] and reasoning='high' answers every plain request 400 no_route, since only
    a request's own reasoning_effort/thinking adds the model's effort rows."""
    svc = _service({"deep": {"allow": ["gpt-5.4"], "reasoning": "high"}})
    status, d = _route(svc, {"model": "deep"})
    assert status == 200, d
    assert d.model == "gpt-5.4@high"


def test_the_reasoning_field_with_a_named_model_routes_as_reasoning_effort_does() -> None:
    """Had been broken: satisfice's own `reasoning` constraint and OpenAI's `reasoning_effort`
    say the same thing; with a named model the first is a 400 no_route, the second routes
    to MODEL@high."""
    svc = _service()
    ok, d = _route(svc, {"model": "gpt-5.4", "reasoning_effort": "high"})
    assert ok == 200 and d.model == "gpt-5.4@high", d
    status, d2 = _route(svc, {"model": "gpt-5.4", "reasoning": "high"})
    assert status == 200, d2
    assert d2.model == "gpt-5.4@high"


def test_an_alias_reasoning_on_takes_a_request_for_one_effort() -> None:
    """Had been broken: a model name's constraints combine with the caller's as the stricter
    ("a 400 where they disagree"); reasoning='high' is within an alias's reasoning='on',
    yet every reasoning_effort / output_config.effort request on that alias is a 400."""
    svc = _service({"think": {"reasoning": "on"}})
    status, d = _route(svc, {"model": "think", "reasoning_effort": "high"})
    assert status == 200, d
    assert svc.router.registry[d.model].effort == "high"
    status, d = _route(svc, {"model": "think", "output_config": {"effort": "high"}}, "anthropic")
    assert status == 200, d


# -- performance: resolve at ~2,000+ models ------------------------------------------------
def test_a_long_alias_allow_and_a_long_caller_allow_combine_to_their_overlap() -> None:
    """Combining an alias's allow list with the caller's had built a set of the caller's
    list once per id of the alias's (an alias of 2,500 rows and a caller's list of 20,000
    ids held the event loop about 2.4 s, measured by review); now one set, once."""
    d = Registry.default()["gpt-5.4"].to_dict()
    reg = Registry.from_dict({"model": [{**d, "id": f"m{i}"} for i in range(500)]})
    ids = [m.id for m in reg]
    assert len(ids) == 2500
    svc = _service({"all": {"allow": ids}}, reg)
    big = [f"x{i}" for i in range(20_000)] + ids[:1]
    routed = wire.openai_request({"model": "all", "messages": MSGS, "allow": big}, {})
    assert svc.resolve(routed, None)["allow"] == (ids[0],)


# -- keys listing an effort row --------------------------------------------------------------
def test_a_key_listing_one_effort_row_refuses_another_effort_as_not_allowed() -> None:
    """Had been broken: what a key may not use is a 403 model_not_allowed naming its list; a
    key listing only gpt-5.4@high that asks gpt-5.4 at another effort gets a 400 no_route
    telling it to 'loosen reasoning' (the key, not the reasoning, rules it out)."""
    key = VirtualKey(id="k", name="k", key_hash="x", models=["gpt-5.4@high"])
    svc = _service()
    status, msg = _route(svc, {"model": "gpt-5.4", "thinking": {"type": "disabled"}},
                         "anthropic", key)  # fmt: skip
    assert status == 403, msg
    status, msg = _route(svc, {"model": "gpt-5.4", "reasoning_effort": "low"}, "openai", key)
    assert status == 403, msg


# -- secrets -------------------------------------------------------------------------------
def test_output_config_values_are_not_echoed() -> None:
    """Had been broken: a key put in output_config is never echoed; an invalid
    output_config.effort is quoted back (40 characters) in the 400's message."""
    secret = "sk-ant-api03-SECRETSECRETSECRET0123456789"
    with pytest.raises(SatisficeError) as e:
        wire.anthropic_request({"model": "auto", "max_tokens": 5, "messages": MSGS,
                                "output_config": {"effort": secret}}, {})  # fmt: skip
    assert secret[:16] not in str(e.value)


# a caller's thinking budget under a model's smallest budget row ----------------------------
def test_a_thinking_budget_under_the_smallest_row_is_sent_as_asked(up: LocalUpstream) -> None:
    """Anthropic takes any budget_tokens from 1,024. Claude Haiku 4.5's smallest thinking
    row thinks within 2,048, so a budget of 1,024 to 2,047 left no row: a 400 that the
    Anthropic API does not give. The smallest row is sent the caller's budget; a larger
    budget still picks among the rows within it, and under 1,024 stays a 400."""
    router = _bundled(up)
    reg = router.registry
    haiku = reg["claude-haiku-4-5"]
    smallest = min(e.reasoning_tokens for e in haiku.efforts.values() if e.reasoning_tokens)
    assert smallest > 1024, "the bundled Haiku rows changed: pick a budget under the smallest"
    with running(ServerConfig(), router) as (url, _):
        for budget in (1024, smallest - 1):
            r, sent = _post(url, "/v1/messages", {
                "model": "claude-haiku-4-5", "max_tokens": 4000,
                "messages": [{"role": "user", "content": "Write a function to reverse a list."}],
                "thinking": {"type": "enabled", "budget_tokens": budget}}, up=up)  # fmt: skip
            assert r.status_code == 200, r.text
            (seen,) = sent
            assert seen["thinking"] == {"type": "enabled", "budget_tokens": budget}, seen
            # Anthropic's max_tokens holds the thinking: sent as the caller gave it
            assert seen["max_tokens"] == 4000
            assert r.headers["x-satisfice-model"].startswith("claude-haiku-4-5@")
        # a budget the smallest row fits in: that row, at its own budget
        r, sent = _post(url, "/v1/messages", {
            "model": "claude-haiku-4-5", "max_tokens": 8000,
            "messages": [{"role": "user", "content": "hi"}],
            "thinking": {"type": "enabled", "budget_tokens": smallest + 1}}, up=up)  # fmt: skip
        assert r.status_code == 200, r.text
        assert sent[0]["thinking"]["budget_tokens"] == smallest
        # under Anthropic's smallest: refused, nothing called
        r, sent = _post(url, "/v1/messages", {
            "model": "claude-haiku-4-5", "max_tokens": 4000,
            "messages": [{"role": "user", "content": "hi"}],
            "thinking": {"type": "enabled", "budget_tokens": 1023}}, up=up)  # fmt: skip
        assert r.status_code == 400 and not sent, r.text
        assert "max_reasoning_tokens=1023" in r.text


async def test_a_lowered_budget_is_what_the_cost_hold_and_the_limit_count() -> None:
    """The Python API's max_reasoning_tokens lowers the smallest budget row the same way:
    the wire's max_tokens adds the budget sent (not the row's), and a cost cap that the
    row's own budget would break but the lowered one fits is met."""
    from satisfice.registry import Deployment, Effort, ModelSpec, Price
    from satisfice.testing import LocalUpstream

    with LocalUpstream() as up:
        spec = ModelSpec(
            "claude-x", "anthropic", tokenizer="cl100k_base", context_window=100_000,
            max_output=20_000, price=Price(1.0, 100.0),
            efforts={"low": Effort(4096), "high": Effort(16384)},
            deployments=[Deployment("anthropic", "anthropic", "https://x.example", "claude-x")],
        )  # fmt: skip
        router = Router(up.patch(Registry([spec])))
        msgs = [{"role": "user", "content": "hi"}]
        before = len(up.requests)
        res = await router.chat(msgs, reasoning="on", max_reasoning_tokens=1500, max_tokens=100)
        assert res.model == "claude-x@low"
        (seen,) = [s.body for s in up.requests[before:]]
        assert seen["thinking"] == {"type": "enabled", "budget_tokens": 1500}
        assert seen["max_tokens"] == 100 + 1500  # the answer's limit, the budget on top
        # $100 per million output tokens: the row's 4,096 + 100 cost $0.42; 1,600, $0.16
        before = len(up.requests)
        res = await router.chat(msgs, reasoning="on", max_reasoning_tokens=1500,
                                max_tokens=100, max_cost_usd=0.2)  # fmt: skip
        assert [s.body["thinking"] for s in up.requests[before:]] == [
            {"type": "enabled", "budget_tokens": 1500}
        ]
        assert res.model == "claude-x@low"
        # the estimate prices the budget sent: 1,600 output tokens and the prompt's few
        d = router.route(msgs, reasoning="on", max_reasoning_tokens=1500, max_output_tokens=100)
        assert d.est_cost_usd is not None and 0.16 < d.est_cost_usd < 0.1601
        # the high row is not lowered: the caller's budget is the smallest row's, sent
        with pytest.raises(NoRouteError, match="max_reasoning_tokens=900"):
            router.route(msgs, reasoning="on", max_reasoning_tokens=900)
        await router.aclose()
