"""Promises that must hold against bad configs and odd upstream headers: clear errors that
name the field (never echoing a key), health kept per deployment, keys picked up when set,
operator enable/disable, Retry-After values that cannot stall a request."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from satisfice import ConfigError, NoRouteError, Registry
from satisfice.errors import BadRequestError
from satisfice.providers.base import MAX_RETRY_AFTER_S, parse_retry_after
from satisfice.testing import LocalUpstream, reply, status

from .chat_support import TOOLS, registry, router, wire

MSGS = [{"role": "user", "content": "hello"}]


def model(**over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "id": "m",
        "context_window": 8000,
        "max_output": 1000,
        "deployments": [{"name": "a", "base_url": "http://127.0.0.1:1/v1"}],
    }
    m.update(over)
    return m


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"model": [model(disabled="no")]}, "disabled must be true or false"),
        ({"modle": [model()]}, r"unknown top-level table\(s\) \['modle'\]"),
        ({"model": [model()], "polcy": {}}, r"unknown top-level table\(s\) \['polcy'\]"),
        (
            {
                "model": [
                    model(deployments=[{"base_url": "http://x/v1"}, {"base_url": "http://y/v1"}])
                ]
            },
            "two deployments are named 'openai'",
        ),
        (
            {
                "model": [
                    model(deployments=[{"name": "a", "base_url": "http://api.example .com/v1"}])
                ]
            },
            "base_url must be an http",
        ),
        ({"model": [model(deployments=[{"name": "a", "base_url": "https:///v1"}])]}, "with a host"),
        # health is kept per "MODEL/NAME": model "team/llama" deployment "fast" and model
        # "team" deployment "llama/fast" had shared one slot (disabling one disabled both)
        (
            {"model": [model(deployments=[{"name": "llama/fast", "base_url": "http://x/v1"}])]},
            "deployment name 'llama/fast' may not hold a '/'",
        ),
    ],
)
def test_config_mistakes_are_refused_with_the_field(doc: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Registry.from_dict(doc)


def test_a_key_pasted_into_api_key_env_is_refused_and_never_echoed() -> None:
    key = "sk-proj-" + "x" * 40
    dep = {"name": "a", "base_url": "http://127.0.0.1:1/v1", "api_key_env": key}
    with pytest.raises(ConfigError) as e:
        Registry.from_dict({"model": [model(deployments=[dep])]})
    assert key not in str(e.value) and "environment variable" in str(e.value)


def test_a_key_pasted_into_api_is_refused_and_never_echoed() -> None:
    """Defect: a bad `api` was echoed (`got 'sk-proj-xxxxxxxx...'`), so a key pasted there
    reached the error and any log of it. Expected: refused, the key not in the error; a
    mistyped name is still shown."""
    key = "sk-proj-" + "x" * 40
    dep = {"name": "a", "base_url": "http://127.0.0.1:1/v1", "api": key}
    with pytest.raises(ConfigError, match="api must be one of") as e:
        Registry.from_dict({"model": [model(deployments=[dep])]})
    assert key[:12] not in str(e.value)
    with pytest.raises(ConfigError, match="got 'opnai'"):
        Registry.from_dict({"model": [model(deployments=[{**dep, "api": "opnai"}])]})


async def test_a_missing_key_is_skipped_and_used_once_it_is_set(
    up: LocalUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SATISFICE_TEST_KEY", raising=False)
    reg = registry(up.url)
    alpha = reg["alpha"]
    dep = alpha.deployments[0].replace(api_key_env="SATISFICE_TEST_KEY")
    async with router(up.url) as r:
        r.update(reg.replace(alpha.replace(deployments=(dep,))))
        first = await r.chat(MSGS)
        assert first.model == "beta" and "SATISFICE_TEST_KEY is not set" in str(
            first.attempts[0].error
        )
        assert "alpha/alpha-dep" not in r.health()  # skipped, not disabled
        monkeypatch.setenv("SATISFICE_TEST_KEY", "k-123-test")
        second = await r.chat(MSGS)
    assert second.model == "alpha"
    (seen,) = up.seen(wire("alpha"))
    assert seen.headers["authorization"] == "Bearer k-123-test"


async def test_operator_disable_and_enable(up: LocalUpstream) -> None:
    async with router(up.url) as r:
        r.disable("alpha", reason="maintenance")
        res = await r.chat(MSGS)
        assert res.model == "beta" and r.health()["alpha/alpha-dep"]["state"] == "disabled"
        r.enable("alpha")
        assert (await r.chat(MSGS)).model == "alpha"
        with pytest.raises(ConfigError, match="has no deployment 'nope'"):
            r.disable("alpha", "nope")


async def test_a_model_without_deployments_is_routed_around(up: LocalUpstream) -> None:
    reg = registry(up.url)
    async with router(up.url) as r:
        r.update(reg.replace(reg["alpha"].replace(deployments=())))
        assert r.route(MSGS).model == "alpha"  # route() alone: still a valid choice
        res = await r.chat(MSGS)
    assert res.model == "beta" and [a.model for a in res.attempts] == ["beta"]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "-inf"}, None),
        ({"retry-after": "1e400"}, None),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "1e9"}, MAX_RETRY_AFTER_S),
        ({"retry-after-ms": "nan", "retry-after": "2"}, 2.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "Mon, 99 Foo 9999 99:99:99 GMT"}, None),
        ({"retry-after": "1.9"}, 1.9),
    ],
)
def test_retry_after_values_are_finite_and_bounded(
    headers: dict[str, str], expected: float | None
) -> None:
    got = parse_retry_after(httpx.Headers(headers))
    assert got == expected or (
        got is not None and expected is not None and math.isclose(got, expected)
    )


async def test_retry_after_nan_does_not_stall_a_request(up: LocalUpstream) -> None:
    up.script(wire("alpha"), status(429, retry_after=math.nan), reply("ok"))
    async with router(up.url) as r:
        res = await r.chat(MSGS, timeout=5)
    assert res.text in ("ok", "answer from beta-wire") and res.latency_s < 2.0


async def test_a_large_prompt_is_routed_off_the_event_loop(up: LocalUpstream) -> None:
    import base64
    import os

    from satisfice import _core

    from .test_hostile_transport import LoopLag

    blob = base64.b64encode(os.urandom(225_000)).decode()  # 300 KB that needs an exact count
    msgs = [{"role": "user", "content": blob}]
    exact = _core.count_message_tokens(msgs, "o200k_base")
    reg = registry(up.url)
    # a window the blob just fits: the estimate cannot decide, the exact count must
    near = reg["alpha"].replace(context_window=exact + 500, max_output=4000)
    async with router(up.url) as r:
        r.update(reg.replace(near))
        async with LoopLag() as lag:
            res = await r.chat(msgs, max_tokens=100)
    print(
        f"worst event-loop lag while routing 300 KB: {lag.worst * 1e3:.1f} ms"
        f" ({lag.worst_cpu * 1e3:.1f} ms of the loop thread's CPU)"
    )
    assert res.model == "alpha" and res.decision.primary.tokens_in_exact
    # the target; 61 ms when routed on the loop, 4 ms measured here. The loop thread's CPU
    # is the tight bound: a stalled CI machine stretches the wall-clock gap, not that
    assert lag.worst_cpu < 0.05 and lag.worst < 0.3


async def test_unknown_options_and_odd_response_formats_are_config_errors(
    up: LocalUpstream,
) -> None:
    class Model:  # what a pydantic model class would be
        pass

    async with router(up.url) as r:
        with pytest.raises(ConfigError, match=r"pass other OpenAI parameters in extra="):
            await r.chat(MSGS, top_p=0.9)  # type: ignore[call-arg]
        with pytest.raises(ConfigError, match="response_format must be a dict"):
            await r.chat(MSGS, response_format=Model)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="top_p"):
            async with r.stream(MSGS, top_p=0.9) as s:  # type: ignore[call-arg]
                async for _ in s:
                    pass
        res = await r.chat(MSGS, extra={"top_p": 0.9})
    assert res.text and up.seen(wire(res.model))[-1].body["top_p"] == 0.9


@pytest.mark.parametrize(
    "extra",
    [
        {"model": "delta-wire"},  # another model, priced as the routed one
        {"messages": [{"role": "user", "content": "another prompt"}]},
        {"stream": False},  # a stream read as one answer
        {"system": "x"},
        {"stream_options": {"include_usage": False}},  # the usage the bill is made of
        {"tools": [{"type": "function", "function": {"name": "f"}}]},  # routed without tools
        {"functions": [{"name": "f"}]},  # the legacy spelling of tools
    ],
)
async def test_extra_cannot_replace_what_was_routed(up: LocalUpstream, extra: dict) -> None:  # type: ignore[type-arg]
    """`extra` is merged into the wire payload last: {"model": ...} sent the call to a
    model ten times the price, priced and recorded as the routed one."""
    async with router(up.url) as r:
        with pytest.raises(ConfigError, match=f"extra may not set {next(iter(extra))}"):
            await r.chat(MSGS, extra=extra)
        with pytest.raises(ConfigError, match="extra may not set"):
            async with r.stream(MSGS, extra=extra) as s:
                async for _ in s:
                    pass
    assert not up.requests  # nothing was sent


@pytest.mark.parametrize(
    "tools",
    [[5], [None], [["cache_control"]], [{"type": "function", "function": {"name": "f"}}, 1]],
)
async def test_a_tool_that_is_not_a_dict_is_a_config_error(up: LocalUpstream, tools: list) -> None:  # type: ignore[type-arg]
    """It reached the OpenAI provider, which raised a bare TypeError or AttributeError."""
    async with router(up.url) as r:
        with pytest.raises(ConfigError, match="tools must be a list of tool dicts"):
            await r.chat(MSGS, tools=tools)
        with pytest.raises(ConfigError, match="tools must be a list of tool dicts"):
            r.route(MSGS, tools=tools)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"tools": [{"type": "function", "function": 5}]}, r"tools\[0\] is not a tool"),
        ({"tools": [{"type": "function", "function": {"description": "x"}}]}, "not a tool"),
        ({"tools": [{"function": {"name": "f", "parameters": "{}"}}]}, "not a tool"),
        ({"tools": [{"name": "f"}]}, "not a tool"),  # Anthropic's shape needs input_schema
        ({"tool_choice": 5, "tools": TOOLS[:1]}, "tool_choice must be"),
        ({"tool_choice": "sometimes", "tools": TOOLS[:1]}, "tool_choice must be"),
        ({"tool_choice": {"type": "function", "function": {}}, "tools": TOOLS[:1]}, "must be"),
        ({"tool_choice": "required"}, "needs tools"),
        ({"tool_choice": {"type": "auto"}}, "needs tools"),
        ({"response_format": {"type": "xml"}}, "response_format's type must be one of"),
        ({"response_format": {"type": "json_schema", "json_schema": 5}}, "json_schema must be"),
        ({"tool_choice": {"type": "banana"}, "tools": TOOLS[:1]}, "tool_choice must be"),
        ({"tool_choice": {"type": "tool"}, "tools": TOOLS[:1]}, "tool_choice must be"),
    ],
)
async def test_tools_tool_choice_and_formats_are_checked_before_any_call(
    up: LocalUpstream,
    options: dict,
    says: str,  # type: ignore[type-arg]
) -> None:
    """They went to the wire as given: an OpenAI-wire model was sent them, an Anthropic one
    got a translation error naming Python's KeyError, or a forced JSON tool for "xml"."""
    async with router(up.url) as r:
        with pytest.raises(ConfigError, match=says):
            await r.chat(MSGS, **options)
    assert not up.requests


async def test_the_tool_shapes_the_providers_take_still_route(up: LocalUpstream) -> None:
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "e", "parameters": None, "description": None}},
        {"type": "custom", "custom": {"name": "g"}},
        {"name": "h", "input_schema": {"type": "object"}},  # Anthropic's own
    ]
    anthropic_custom = {"type": "custom", "name": "k", "input_schema": {"type": "object"}}
    async with router(up.url) as r:
        res = await r.chat(MSGS, tools=tools, tool_choice={"type": "function",
                                                           "function": {"name": "f"}})  # fmt: skip
        assert res.text
        rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
        assert (await r.chat(MSGS, response_format=rf)).text
        for none in ("none", {"type": "none"}):  # says no tool: needs none beside it
            assert (await r.chat(MSGS, tool_choice=none)).text
        res = await r.chat(MSGS, tools=[anthropic_custom], allow=["beta"])  # Anthropic-wire
        assert res.model == "beta" and up.seen(wire("beta"))[-1].body["tools"] == [
            anthropic_custom
        ]  # fmt: skip
        # OpenAI's custom tool has no Anthropic form: said so, not a KeyError's name
        with pytest.raises(BadRequestError, match="'g' is an OpenAI custom tool"):
            await r.chat(MSGS, tools=tools[2:3], allow=["beta"])


async def test_a_chat_given_its_decision_checks_tools_and_formats_too(up: LocalUpstream) -> None:
    """chat(decision=d) took them to the wire unchecked: a forced JSON tool for "xml"."""
    async with router(up.url) as r:
        d = r.route(MSGS, allow=["beta"])
        with pytest.raises(ConfigError, match="response_format's type must be one of"):
            await r.chat(MSGS, decision=d, response_format={"type": "xml"})
        with pytest.raises(ConfigError, match="tools must be a list of tool dicts"):
            await r.chat(MSGS, decision=d, tools=[5])
    assert not up.requests


async def test_measured_latency_replaces_the_registry_p95_under_an_slo(up: LocalUpstream) -> None:
    from satisfice import Policy, Router
    from satisfice.executor import ExecutionConfig
    from satisfice.state import Health

    r = Router(registry(up.url, p95_ms=10.0), Policy(quality_floor=0.5))
    r.configure(execution=ExecutionConfig(read_timeout_s=2.0), health=Health())
    up.script(wire("alpha"), *[reply("slow", latency=0.05)] * 20)
    async with r:
        for _ in range(20):  # enough samples for a live p95
            assert (await r.chat(MSGS)).model == "alpha"
        assert r.route(MSGS, latency_slo_ms=30).model == "alpha"  # route() alone: registry
        # latency_slo_ms is also the deadline unless a timeout is given: a stalled CI
        # machine could miss 30 ms for beta's answer, so the deadline is 5 s here.
        res = await r.chat(MSGS, latency_slo_ms=30, timeout=5)
    assert res.model == "beta"
    why = res.decision.filtered["alpha"][1]
    assert why.startswith("p95 ") and int(why.split()[1]) >= 45, why


def test_a_cancelled_loser_that_took_long_raises_the_latency_estimate() -> None:
    from satisfice.state import Health

    h = Health()
    for _ in range(25):
        h.record_success("m/d", 0.1)
    before = h.p95_s("m/d")
    h.record_slow("m/d", 0.05)  # faster than usual: no news
    assert h.p95_s("m/d") == before
    h.record_slow("m/d", 2.0)
    after = h.p95_s("m/d")
    assert before is not None and after is not None and after > before


def test_every_billed_dimension_is_priced() -> None:
    from satisfice import Price

    p = Price.from_dict(
        {
            "input": 3.0,
            "output": 15.0,
            "cached_input": 0.3,
            "cache_write": 3.75,
            "long_context": {"above": 200_000, "input": 6.0, "output": 22.5},
        },
        "test",
    )
    # 1,000 prompt tokens: 200 cached reads, 300 cache writes, 500 fresh; 100 out
    assert p.cost(1000, 100, 200, 300) == pytest.approx(
        (500 * 3.0 + 200 * 0.3 + 300 * 3.75 + 100 * 15.0) / 1e6
    )
    # above the threshold the whole request is billed at the long-context rates
    assert p.cost(300_000, 1000) == pytest.approx((300_000 * 6.0 + 1000 * 22.5) / 1e6)
    sonnet = Registry.default()["claude-sonnet-4-6"].price
    assert sonnet is not None and sonnet.cache_write == 1.25 * sonnet.input  # Anthropic 5m
    assert sonnet.cache_write_1h == 2 * sonnet.input  # and 1h writes
    with pytest.raises(ConfigError, match="long_context must be a table"):
        Price.from_dict({"input": 1, "output": 1, "long_context": {"above": 5}}, "x")


def test_the_router_estimates_long_prompts_at_long_context_rates() -> None:
    from satisfice import Router

    # a Gemini-2.5-Pro-like model: 1.25/10 up to 200k prompt tokens, 2.50/15 above
    router = Router(Registry.from_dict({"model": [{
        "id": "pro", "provider": "google", "tokenizer": "gemini", "context_window": 1048576,
        "max_output": 65536, "p95_latency_ms": 30000, "quality": {"general": 0.9},
        "price": {"input": 1.25, "output": 10.0,
                  "long_context": {"above": 200000, "input": 2.5, "output": 15.0}},
        "deployments": [{"name": "google", "base_url": "https://example.invalid/v1"}],
    }]}))  # fmt: skip
    pro = router.registry["pro"]
    text = "word " * 230_000  # 230k tokens: above the 200k tier (estimated at ~182k)
    # a cap that even the upper bound at long-context rates fits: decided on the estimate
    d = router.route(text, allow=(pro.id,), max_output_tokens=1000, max_cost_usd=0.7)
    assert d.model == pro.id and not d.primary.tokens_in_exact
    # a cap the tier breaks: decided on the exact count (x1.05 for Gemini) at 2.50/15.00
    with pytest.raises(NoRouteError, match="max_cost") as e:
        router.route(text, allow=(pro.id,), max_output_tokens=1000, max_cost_usd=0.5)
    est = float(e.value.filtered[pro.id].split("$")[1].split()[0])
    assert est == pytest.approx((round(230_001 * 1.05) + 7) * 2.5e-6 + 1000 * 15e-6, rel=1e-3)


async def test_a_timed_out_call_is_billed_at_an_estimate(up: LocalUpstream) -> None:
    from satisfice.testing import hang

    up.script(wire("alpha"), hang())
    async with router(up.url, read_timeout_s=0.3) as r:
        res = await r.chat(MSGS)
    timed_out = res.attempts[0]
    assert timed_out.error_type == "UpstreamTimeoutError" and timed_out.cost_estimated
    assert timed_out.cost_usd is not None and timed_out.cost_usd > 0
    assert res.total_cost_usd == pytest.approx(timed_out.cost_usd + (res.cost_usd or 0))
    assert res.to_record()["cost_estimated"] is True


def test_chat_sync_pools_connections_and_closes_cleanly() -> None:
    from .chat_support import open_fds

    with LocalUpstream() as up:
        fds = open_fds()
        before = up.total_connections
        with router(up.url) as r:
            results = [r.chat_sync(MSGS) for _ in range(20)]
        assert all(res.model == "alpha" for res in results)
        assert up.total_connections - before == 1  # one connection for every call
        assert open_fds() <= fds + 1  # the loop thread and its sockets are gone


async def test_chat_sync_refuses_a_running_loop(up: LocalUpstream) -> None:
    async with router(up.url) as r:
        with pytest.raises(RuntimeError, match="await router.chat"):
            r.chat_sync(MSGS)


async def test_async_with_sets_the_client_up_before_the_first_request(up: LocalUpstream) -> None:
    from satisfice import Router

    r = Router(registry(up.url))
    async with r:
        io = r._io
        assert io is not None  # built on entry, not inside the first request
        await r.chat(MSGS)
        assert r._io is io


async def test_a_request_one_models_wire_cannot_carry_goes_to_the_next(up: LocalUpstream) -> None:
    """A translation refusal (Anthropic's forced JSON tool beside tools, OpenAI's audio
    part, a legacy function_call) ended the request with a 400 telling the caller to change
    it, though a model routed after it took it as it was; it now moves on, and the model
    it skipped is not cooled (the request, not the upstream, was the cause)."""
    from satisfice.errors import UnsupportedRequestError

    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    audio = [{"role": "user", "content": [
        {"type": "text", "text": "hi"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]  # fmt: skip
    legacy = [*MSGS, {"role": "assistant", "content": None,
                      "function_call": {"name": "f", "arguments": "{}"}},
              {"role": "user", "content": "go on"}]  # fmt: skip
    async with router(up.url) as r:
        for msgs, kw in ((MSGS, {"tools": TOOLS[:1], "response_format": rf}), (audio, {}),
                         (legacy, {})):  # fmt: skip
            res = await r.chat(msgs, allow=["beta", "gamma"], **kw)
            assert res.model == "gamma", res.attempts
            assert res.attempts[0].model == "beta"
            assert res.attempts[0].error_type == "UnsupportedRequestError"
            assert r.health().get("beta/beta-dep", {"state": "ok"})["state"] == "ok"
        with pytest.raises(UnsupportedRequestError, match="cannot be combined with tools"):
            await r.chat(MSGS, allow=["beta"], tools=TOOLS[:1], response_format=rf)


async def test_a_request_only_a_cooling_model_can_carry_says_try_again_not_change_it(
    up: LocalUpstream,
) -> None:
    """The model that takes tools beside response_format cools down and is routed around;
    the one left cannot carry the request. That was a 400 UnsupportedRequestError (the
    caller told to change a request the cooling model takes as it is); it now fails as
    every attempt failing, the cooling model skipped on the record with its wait, which
    `satisfice serve` answers with a 503 and its Retry-After."""
    from satisfice.errors import AllAttemptsFailedError, UnsupportedRequestError
    from satisfice.server.app import _all_failed

    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    async with router(up.url) as r:
        up.script(wire("gamma"), status(429, retry_after=30))
        with pytest.raises(AllAttemptsFailedError):
            await r.chat(MSGS, allow=["gamma"])  # gamma cools for 30 s
        with pytest.raises(AllAttemptsFailedError) as e:
            await r.chat(MSGS, allow=["beta", "gamma"], tools=TOOLS[:1], response_format=rf)
        kinds = [(a.model, a.outcome, a.error_type) for a in e.value.attempts]
        assert kinds == [
            ("beta", "error", "UnsupportedRequestError"),
            ("gamma", "skipped", "unavailable"),
        ], kinds
        assert 0 < (e.value.attempts[1].retry_after or 0) <= 30
        served = _all_failed(e.value, str(e.value), {})
        assert served.status == 503 and 1 <= int(served.headers["retry-after"]) <= 30
        r.enable("gamma")  # taken again once it is back
        res = await r.chat(MSGS, allow=["beta", "gamma"], tools=TOOLS[:1], response_format=rf)
        assert res.model == "gamma"
        # a model cooling or disabled that could not carry it either: still "change it"
        up.script(wire("delta"), status(429, retry_after=30))
        with pytest.raises(AllAttemptsFailedError):
            await r.chat(MSGS, allow=["delta"])  # delta (Anthropic's wire too) cools
        for _ in range(2):
            with pytest.raises(UnsupportedRequestError):
                await r.chat(MSGS, allow=["beta", "delta"], tools=TOOLS[:1], response_format=rf)
            r.disable("delta")
        r.disable("gamma")  # disabled, not cooling: no wait fixes it
        with pytest.raises(UnsupportedRequestError):
            await r.chat(MSGS, allow=["beta", "gamma"], tools=TOOLS[:1], response_format=rf)
        # routed to, and skipped (disabled, as delta is now): still "change it"; so for a
        # cascade whose every step refused it (it had been a 502)
        from satisfice import Cascade

        with pytest.raises(UnsupportedRequestError):
            await r.chat(MSGS, allow=["beta", "delta"], tools=TOOLS[:1], response_format=rf)
        r.enable("delta")
        with pytest.raises(UnsupportedRequestError, match="cascade"):
            await r.chat(MSGS, cascade=Cascade(["beta", "delta"]), tools=TOOLS[:1],
                         response_format=rf)  # fmt: skip


async def test_a_decision_passed_back_refuses_constraints_it_would_drop(up: LocalUpstream) -> None:
    """chat(decision=d, max_cost_usd=...) ran where d said with no cap at all: the cap, a
    malformed value, an unknown model in allow= and prefer= were each dropped unread."""
    async with router(up.url) as r:
        d = await r.decide(MSGS)
        for kw in ({"max_cost_usd": 1e-6}, {"latency_slo_ms": "lots"}, {"allow": ["nope"]},
                   {"prefer": "beta"}):  # fmt: skip
            with pytest.raises(ConfigError, match="router.decide"):
                await r.chat(MSGS, decision=d, **kw)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="router.decide"):
            await r.chat(MSGS, {"max_cost_usd": 1e-6}, decision=d)
        assert (await r.chat(MSGS, decision=d, max_tokens=5)).model == d.model


async def test_a_temperature_or_extra_value_that_is_no_json_is_refused(up: LocalUpstream) -> None:
    """temperature=nan went upstream as {"temperature":NaN}, a body that is no JSON; "hot"
    and -5 as given."""
    async with router(up.url) as r:
        for t in (math.nan, "hot", -5, True, 3):
            with pytest.raises(ConfigError, match="temperature"):
                await r.chat(MSGS, temperature=t)  # type: ignore[arg-type]
        with pytest.raises(BadRequestError, match="cannot be sent as JSON"):
            await r.chat(MSGS, extra={"top_p": math.inf})
        assert up.seen(wire("alpha")) == []  # none of them was sent
        assert (await r.chat(MSGS, temperature=0.5)).model == "alpha"
