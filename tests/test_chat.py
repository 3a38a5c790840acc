"""`Router.chat()` / `Router.stream()` end to end against the local upstream."""

from __future__ import annotations

import asyncio
import time

import pytest

from satisfice import _core
from satisfice import validators as v
from satisfice.errors import (
    AllAttemptsFailedError,
    BadRequestError,
    NoRouteError,
    StreamInterruptedError,
)
from satisfice.testing import LocalUpstream, context_length, hang, reply, reset, status

from .chat_support import ORDER, open_fds, router, wire
from .polling import until_async

MSGS = [{"role": "user", "content": "hello there"}]


async def test_chat_returns_the_answer_with_its_accounting(up: LocalUpstream) -> None:
    up.script(wire("alpha"), reply("fine thanks", usage=(1000, 200, 400)))
    async with router(up.url) as r:
        res = await r.chat(MSGS)
    assert res.text == "fine thanks"
    assert (res.model, res.deployment) == ("alpha", "alpha-dep")
    assert res.decision.model == "alpha" and res.finish_reason == "stop"
    assert res.usage.source == "provider" and res.usage.cached_tokens == 400
    # 600 fresh in at $0.10/M, 400 cached at $0.01/M, 200 out at $0.40/M
    assert res.cost_usd == pytest.approx((600 * 0.10 + 400 * 0.01 + 200 * 0.40) / 1e6)
    assert res.total_cost_usd == res.cost_usd
    assert 0 <= res.overhead_s < res.latency_s
    assert [(a.model, a.outcome) for a in res.attempts] == [("alpha", "ok")]
    rec = res.to_record()
    assert rec["decision"]["model"] == "alpha" and rec["attempts"][0]["outcome"] == "ok"
    assert rec["decision"]["reasons"]


async def test_missing_usage_is_counted_exactly(up: LocalUpstream) -> None:
    up.script(wire("alpha"), reply("some answer text", usage=False))
    async with router(up.url) as r:
        res = await r.chat(MSGS)
    assert res.usage.source == "counted"
    assert res.usage.completion_tokens == _core.count_tokens("some answer text", "o200k_base")
    assert res.usage.prompt_tokens == _core.count_message_tokens(MSGS, "o200k_base")
    assert res.cost_usd is not None and res.cost_usd > 0


# 0.6 s is as short as 0.2 s to the router (any Retry-After above 0 moves on: retry.py),
# and leaves room below it for a stalled CI machine
@pytest.mark.parametrize("retry_after", [0.6, 1.9, 3.0])
async def test_a_retry_after_moves_to_a_ready_fallback_however_short(
    up: LocalUpstream, retry_after: float
) -> None:
    up.script(wire("alpha"), status(429, retry_after=retry_after))
    async with router(up.url) as r:
        t = time.perf_counter()
        res = await r.chat(MSGS)
        # nobody waited: below the shortest Retry-After, with room for a stalled CI machine
        assert time.perf_counter() - t < 0.5
    assert res.model == "beta"
    assert [(a.model, a.outcome, a.status) for a in res.attempts] == [
        ("alpha", "error", 429),
        ("beta", "ok", None),
    ]
    assert res.attempts[0].retry_after == retry_after


async def test_a_short_retry_after_is_waited_for_when_nothing_else_is_left(
    up: LocalUpstream,
) -> None:
    up.script(wire("alpha"), status(429, retry_after=0.2), reply("ok"))
    async with router(up.url) as r:
        t = time.perf_counter()
        res = await r.chat(MSGS, allow=("alpha",))
        assert time.perf_counter() - t >= 0.2
        assert res.model == "alpha"
        assert [a.outcome for a in res.attempts if a.outcome != "skipped"] == ["error", "ok"]
        # a wait longer than max_retry_wait_s (2 s) is not taken: the error says so at once
        up.script(wire("alpha"), status(429, retry_after=3.0))
        t = time.perf_counter()
        with pytest.raises(AllAttemptsFailedError):
            await r.chat(MSGS, allow=("alpha",))
        assert time.perf_counter() - t < 1.0  # not 2 s or 3 s; room for a stalled CI machine


async def test_a_long_retry_after_cools_the_deployment_and_routes_around_it(
    up: LocalUpstream,
) -> None:
    up.script(wire("alpha"), status(429, retry_after=30))
    async with router(up.url) as r:
        first = await r.chat(MSGS)
        assert first.model == "beta"  # no 30 s wait: straight to the next candidate
        health = r.health()["alpha/alpha-dep"]
        assert health["state"] == "cooling" and health["cooldown_remaining_s"] > 25
        second = await r.chat(MSGS)
    # the cooled model is not even routed to now
    assert second.decision.model == "beta" and "alpha" not in second.decision.fallbacks
    assert [a.model for a in second.attempts] == ["beta"]
    assert len(up.seen(wire("alpha"))) == 1


async def test_when_every_model_is_rate_limited_the_soonest_is_waited_for(
    up: LocalUpstream,
) -> None:
    for m, ra in zip(ORDER, (0.3, 0.15, 0.3, 0.3), strict=True):
        up.script(wire(m), status(429, retry_after=ra))
    async with router(up.url, max_retries=0) as r:
        t = time.perf_counter()
        res = await r.chat(MSGS)
        assert time.perf_counter() - t >= 0.15
        # a Retry-After beyond the deadline is not waited for
        for m in ORDER:
            up.script(wire(m), status(429, retry_after=1.0))
        await asyncio.sleep(0.3)
        with pytest.raises(AllAttemptsFailedError):
            await r.chat(MSGS, timeout=0.5)
    assert res.model == "beta"  # its Retry-After ended first
    assert [(a.model, a.outcome) for a in res.attempts] == [
        *[(m, "error") for m in ORDER],
        ("alpha", "skipped"),
        ("beta", "ok"),
    ]


async def test_server_errors_retry_then_fall_back(up: LocalUpstream) -> None:
    up.script(wire("alpha"), status(500), status(503))
    async with router(up.url) as r:
        res = await r.chat(MSGS)
    assert res.model == "beta"
    assert [(a.model, a.status) for a in res.attempts] == [
        ("alpha", 500),
        ("alpha", 503),
        ("beta", None),
    ]


async def test_the_breaker_skips_a_failing_deployment(up: LocalUpstream) -> None:
    up.script(wire("alpha"), *[status(500)] * 4)
    async with router(up.url, max_retries=0) as r:
        for _ in range(3):
            assert (await r.chat(MSGS)).model == "beta"
        assert r.health()["alpha/alpha-dep"]["state"] == "cooling"
        res = await r.chat(MSGS)
    assert [a.model for a in res.attempts] == ["beta"]
    assert up.pending(wire("alpha")) == 1  # the fourth request never reached alpha


async def test_auth_error_disables_the_deployment_and_says_so(up: LocalUpstream) -> None:
    up.script(wire("alpha"), status(401))
    async with router(up.url) as r:
        res = await r.chat(MSGS)
        assert res.model == "beta"
        assert res.attempts[0].error_type == "AuthError"
        assert "api_key_env" in (res.attempts[0].error or "")
        h = r.health()["alpha/alpha-dep"]
        assert h["state"] == "disabled" and "HTTP 401" in h["reason"]
        await r.chat(MSGS)
    assert len(up.seen(wire("alpha"))) == 1


async def test_missing_key_variable_is_an_auth_skip(
    up: LocalUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SATISFICE_NO_SUCH_KEY", raising=False)
    r = router(up.url)
    alpha = r.registry["alpha"]
    dep = alpha.deployments[0].replace(api_key_env="SATISFICE_NO_SUCH_KEY")
    r.update(r.registry.replace(alpha.replace(deployments=(dep,))))
    async with r:
        res = await r.chat(MSGS)
    assert res.model == "beta"
    assert "SATISFICE_NO_SUCH_KEY is not set" in (res.attempts[0].error or "")
    assert up.seen(wire("alpha")) == []


async def test_context_length_moves_to_a_larger_window(up: LocalUpstream) -> None:
    up.script(wire("alpha"), context_length())
    async with router(up.url) as r:
        res = await r.chat(MSGS)
    assert res.model == "gamma"  # beta has alpha's 8k window: skipped, not called
    assert [(a.model, a.outcome) for a in res.attempts] == [
        ("alpha", "error"),
        ("beta", "skipped"),
        ("gamma", "ok"),
    ]
    assert "context window 8000" in (res.attempts[1].error or "")
    assert up.seen(wire("beta")) == []


async def test_context_length_looks_beyond_the_fallbacks(up: LocalUpstream) -> None:
    from satisfice import Policy

    up.script(wire("alpha"), context_length())
    r = router(up.url)
    r.update(policy=Policy(quality_floor=0.5, max_fallbacks=1))
    async with r:
        assert r.route(MSGS).fallbacks == ["beta"]
        res = await r.chat(MSGS)
    assert res.model == "gamma"


async def test_bad_request_stops_at_once(up: LocalUpstream) -> None:
    up.script(wire("alpha"), status(400, message="temperature must be <= 1"))
    async with router(up.url) as r:
        with pytest.raises(BadRequestError, match="temperature") as info:
            await r.chat(MSGS, temperature=1.5)
    assert [a.model for a in info.value.attempts] == ["alpha"]
    assert up.seen(wire("beta")) == []


async def test_everything_failing_lists_every_attempt(up: LocalUpstream) -> None:
    for m in ORDER:
        up.script(wire(m), status(502), status(502))
    async with router(up.url) as r:
        with pytest.raises(AllAttemptsFailedError) as info:
            await r.chat(MSGS)
    e = info.value
    assert [a.model for a in e.attempts] == [m for m in ORDER for _ in (1, 2)]
    assert all(a.status == 502 for a in e.attempts)
    for m in ORDER:
        assert f"{m} via {m}-dep" in str(e)


async def test_deadline_bounds_the_whole_request(up: LocalUpstream) -> None:
    for m in ORDER:
        up.script(wire(m), hang())
    async with router(up.url) as r:
        t = time.perf_counter()
        with pytest.raises(AllAttemptsFailedError) as info:
            await r.chat(MSGS, timeout=0.4)
        elapsed = time.perf_counter() - t
    assert 0.35 < elapsed < 1.3  # under the 2 s read timeout; room for a stalled CI machine
    kinds = [(a.model, a.outcome) for a in info.value.attempts]
    assert kinds[0] == ("alpha", "error")
    assert info.value.attempts[0].error_type == "UpstreamTimeoutError"
    assert kinds[-1][1] == "skipped" and "deadline" in (info.value.attempts[-1].error or "")


async def test_latency_slo_is_the_default_deadline(up: LocalUpstream) -> None:
    up.script(wire("alpha"), hang())
    up.script(wire("beta"), hang())
    async with router(up.url) as r:
        t = time.perf_counter()
        with pytest.raises(AllAttemptsFailedError):
            await r.chat(MSGS, latency_slo_ms=300, allow=("alpha", "beta"))
        # under the 2 s read timeout alpha would wait without the SLO; room for a stalled
        # CI machine
        assert time.perf_counter() - t < 1.2


# 390 ms: half of it (195 ms) is still under the 2 x p95 floor (0.2 s), as 300 ms was, and
# leaves beta 190 ms (not 100) inside the SLO: room for a stalled CI machine
@pytest.mark.parametrize(("slo_ms", "slack"), [(390, 0.15), (2000, 0.25)])
async def test_a_hung_primary_leaves_the_fallback_time_inside_the_slo(
    up: LocalUpstream, slo_ms: int, slack: float
) -> None:
    up.script(wire("alpha"), hang())
    async with router(up.url) as r:
        t = time.perf_counter()
        res = await r.chat(MSGS, latency_slo_ms=slo_ms)
        took = time.perf_counter() - t
    assert res.model == "beta" and took < slo_ms / 1000
    assert res.attempts[0].error_type == "UpstreamTimeoutError"
    # the primary got its share: at most half of the SLO (registry p95 100 ms, x2 = 0.2 s);
    # the slack (for a stalled CI machine) still ends below the whole SLO
    assert res.attempts[0].duration_s <= max(slo_ms / 2000, 0.2) + slack < slo_ms / 1000


async def test_hang_falls_back_within_the_read_timeout(up: LocalUpstream) -> None:
    up.script(wire("alpha"), hang())
    async with router(up.url, read_timeout_s=0.3) as r:
        res = await r.chat(MSGS)
    assert res.model == "beta"
    assert res.attempts[0].error_type == "UpstreamTimeoutError"
    assert 0.25 < res.attempts[0].duration_s < 1.1  # room for a stalled CI machine


async def test_tools_and_json_requests_are_passed_through(up: LocalUpstream) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    up.script(wire("alpha"), reply("", tool_call=("f", '{"a": 1}')))
    async with router(up.url) as r:
        res = await r.chat(MSGS, tools=tools, max_tokens=20)
        assert res.tool_calls[0].name == "f" and res.finish_reason == "tool_calls"
        body = up.seen(wire("alpha"))[-1].body
        assert body["tools"] == tools and body["max_tokens"] == 20
        up.script(wire("alpha"), status(500), status(500))
        res = await r.chat(MSGS, response_format={"type": "json_object"})
    assert res.model == "beta"  # Anthropic: JSON mode through a forced tool
    assert up.seen(wire("beta"))[-1].body["tool_choice"]["type"] == "tool"


async def test_no_route_is_raised_before_any_call(up: LocalUpstream) -> None:
    async with router(up.url) as r:
        with pytest.raises(NoRouteError):
            await r.chat(MSGS, needs=("vision",))
    assert up.requests == []


# -- streaming -----------------------------------------------------------------------------
async def test_stream_yields_pieces_and_a_final_result(up: LocalUpstream) -> None:
    up.script(wire("alpha"), reply("one two three", usage=(9, 3, 0)))
    async with router(up.url) as r:
        pieces = []
        async with r.stream(MSGS) as s:
            async for d in s:
                if d.done:
                    res = d.result
                else:
                    pieces.append(d.text)
    assert pieces == ["one ", "two ", "three"]
    assert res.text == "one two three" and res.model == "alpha"
    assert res.usage.prompt_tokens == 9 and res.cost_usd == pytest.approx(
        (9 * 0.10 + 3 * 0.40) / 1e6
    )
    assert res.ttft_s is not None and 0 < res.ttft_s <= res.latency_s
    assert 0 <= res.overhead_s < res.latency_s


async def test_stream_falls_back_before_the_first_byte(up: LocalUpstream) -> None:
    up.script(wire("alpha"), status(503), reset(after_chunks=0))
    up.script(wire("beta"), reply("from beta"))
    async with router(up.url) as r:
        res = await r.stream(MSGS).result()
    assert res.text == "from beta" and res.model == "beta"
    assert [(a.model, a.outcome) for a in res.attempts] == [
        ("alpha", "error"),
        ("alpha", "error"),
        ("beta", "ok"),
    ]


async def test_stream_failure_after_the_first_byte_is_raised_as_such(
    up: LocalUpstream,
) -> None:
    up.script(wire("alpha"), reset(after_chunks=3))
    async with router(up.url) as r:
        got = []
        with pytest.raises(StreamInterruptedError) as info:
            async with r.stream(MSGS) as s:
                async for d in s:
                    got.append(d.text)
    e = info.value
    assert e.partial_text == "".join(got) and e.partial_text
    assert "no fallback was possible" in str(e)
    assert [(a.model, a.outcome) for a in e.attempts] == [("alpha", "error")]
    assert up.seen(wire("beta")) == []


async def test_stream_missing_usage_is_counted(up: LocalUpstream) -> None:
    up.script(wire("beta"), reply("claude words", usage=False))
    up.script(wire("alpha"), status(500), status(500))
    async with router(up.url) as r:
        res = await r.stream(MSGS).result()
    assert res.model == "beta" and res.usage.source == "estimated"  # no public Claude tokenizer
    assert res.usage.completion_tokens > 0


async def test_leaving_a_stream_early_releases_the_connection(up: LocalUpstream) -> None:
    up.script(wire("alpha"), reply("a b c d e f", chunk_delay=0.05))
    async with router(up.url) as r:
        async with r.stream(MSGS) as s:
            async for _ in s:
                break
        # the half-read response was closed, so its connection is gone from the server
        for _ in range(50):
            if up.open_connections == 0:
                break
            await asyncio.sleep(0.01)
        assert up.open_connections == 0


# -- hedging and racing --------------------------------------------------------------------
async def test_hedge_sends_a_second_request_after_the_p95(up: LocalUpstream) -> None:
    up.script(wire("alpha"), reply("slow", latency=1.0))
    async with router(up.url) as r:  # registry p95 = 100 ms
        t = time.perf_counter()
        res = await r.chat(MSGS, hedge=True)
        elapsed = time.perf_counter() - t
    assert res.model == "beta" and elapsed < 0.9  # well before the primary's 1.0 s
    outcomes = {a.model: a for a in res.attempts}
    assert outcomes["beta"].outcome == "ok"
    loser = outcomes["alpha"]
    assert loser.outcome == "cancelled" and loser.cost_estimated
    assert loser.cost_usd is not None and loser.cost_usd > 0  # its prompt was billed
    assert res.total_cost_usd == pytest.approx(res.cost_usd + loser.cost_usd)
    assert 0.08 < outcomes["beta"].started_s < 0.5  # after the 100 ms p95, not at once


async def test_hedge_does_not_fire_when_the_primary_is_fast(up: LocalUpstream) -> None:
    async with router(up.url) as r:
        res = await r.chat(MSGS, hedge=True)
    assert [(a.model, a.outcome) for a in res.attempts] == [("alpha", "ok")]
    assert up.seen(wire("beta")) == []


async def test_race_takes_the_first_answer_and_records_the_losers(up: LocalUpstream) -> None:
    up.script(wire("alpha"), reply("slow", latency=1.0))
    up.script(wire("gamma"), reply("slower", latency=1.0))
    async with router(up.url) as r:
        t = time.perf_counter()
        res = await r.chat(MSGS, race=3)
        assert time.perf_counter() - t < 0.8  # did not wait for the 1.0 s losers
    assert res.model == "beta"
    cancelled = sorted(a.model for a in res.attempts if a.outcome == "cancelled")
    assert cancelled == ["alpha", "gamma"]


async def test_race_accept_rejects_answers_and_keeps_their_cost(up: LocalUpstream) -> None:
    up.script(wire("alpha"), reply("nope"))
    up.script(wire("beta"), reply("yes: good", latency=0.05))
    up.script(wire("gamma"), reply("yes: but late", latency=0.5))  # alpha's replacement

    accept = v.check(lambda text: text.startswith("yes"), name="says yes")
    async with router(up.url) as r:
        res = await r.chat(MSGS, race=2, accept=accept)
    assert res.text == "yes: good"
    rejected = [a for a in res.attempts if a.outcome == "rejected"]
    assert [a.model for a in rejected] == ["alpha"] and rejected[0].cost_usd
    assert rejected[0].verdict is not None and not rejected[0].verdict["passed"]
    (ok,) = [a for a in res.attempts if a.outcome == "ok"]
    assert ok.verdict is not None and ok.verdict["passed"] and ok.model == "beta"
    assert [a.model for a in res.attempts if a.outcome == "cancelled"] == ["gamma"]


async def test_race_failures_are_replaced_by_the_next_candidate(up: LocalUpstream) -> None:
    up.script(wire("alpha"), status(500))
    up.script(wire("beta"), status(401))
    # the replacements answer after both failures are in, so neither failure is cancelled
    up.script(wire("gamma"), reply("g", latency=0.2))
    up.script(wire("delta"), reply("d", latency=0.2))
    async with router(up.url) as r:
        res = await r.chat(MSGS, race=2)
    # each failure launched the next candidate: gamma and delta race, either may win
    assert res.model in ("gamma", "delta")
    outcomes = {a.model: (a.outcome, a.error_type) for a in res.attempts}
    assert outcomes["alpha"] == ("error", "RetryableError")
    assert outcomes["beta"] == ("error", "AuthError")
    assert [a.model for a in res.attempts if a.outcome == "ok"] == [res.model]


async def test_cancelling_chat_cancels_its_upstream_calls(up: LocalUpstream) -> None:
    for m in ORDER:
        up.script(wire(m), *[hang()] * 3)
    before = open_fds()
    async with router(up.url) as r:
        # cancelled once the upstream has seen every call (polled: a stalled CI machine
        # may take longer than a fixed sleep to send them)
        for kw, seen in (({}, 1), ({"race": 2}, 3), ({"hedge": True}, 5)):
            task = asyncio.create_task(r.chat(MSGS, **kw))
            await until_async(lambda n=seen: len(up.requests) >= n)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert len(up.requests) == 1 + 2 + 2  # hedge fired after alpha's 100 ms p95
    for _ in range(50):
        if up.open_connections == 0:
            break
        await asyncio.sleep(0.01)
    assert up.open_connections == 0
    assert open_fds() <= before


def test_total_cost_is_unknown_when_a_billed_attempt_is_unpriced() -> None:
    from satisfice.providers.base import Usage
    from satisfice.result import Attempt, ChatResult

    usage = Usage(10, 5)
    attempts = [
        Attempt("alpha", "a", "error", error_type="RetryableError"),  # not billed
        Attempt("beta", "b", "cancelled", cost_usd=0.002, cost_estimated=True),
        Attempt("gamma", "g", "ok", usage=usage, cost_usd=None),  # unpriced answer
    ]
    res = ChatResult("hi", "gamma", "g", usage, None, 0.1, 0.0, attempts, None)
    assert res.total_cost_usd is None  # not $0.002: the answer's own cost is unknown
    attempts[2].cost_usd = 0.001
    res.cost_usd = 0.001
    assert res.total_cost_usd == pytest.approx(0.003)


async def test_overhead_counts_the_routers_time_after_the_answer_is_priced(
    up: LocalUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """latency_s and overhead_s run until the caller has the result: work of the router's
    after the executor read its clock (building the result, handing it back) is its time."""
    import time

    from satisfice.executor import Executor

    complete = Executor.complete

    async def slow_after(self: Executor, *a: object, **kw: object) -> object:
        res = await complete(self, *a, **kw)
        time.sleep(0.05)  # 50 ms of the router's own, after the executor's clock stopped
        return res

    monkeypatch.setattr(Executor, "complete", slow_after)
    up.script(wire("alpha"), reply("fine thanks"))
    async with router(up.url) as r:
        t = time.perf_counter()
        res = await r.chat(MSGS)
        waited = time.perf_counter() - t
    assert res.overhead_s >= 0.05
    assert 0.05 <= res.latency_s <= waited
