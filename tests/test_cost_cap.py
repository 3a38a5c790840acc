"""What a request is told it spends is what it spends: a cost cap bounds each answer on the
wire (max_tokens), a check's own model calls (a judge's) are billed to the request, and a
cascade's parallel calls count once in its overhead, not once per call."""

from __future__ import annotations

import math

import pytest

from satisfice import Cascade, Registry, Step
from satisfice import validators as v
from satisfice.testing import LocalUpstream, reply

from .chat_support import registry, router, wire

CAP = 0.0004  # alpha (0.10 / 0.40 per 1M) can afford ~1,000 output tokens under it


def allowed(cap: float, tokens_in: int, p_in: float, p_out: float) -> int:
    return math.floor((cap * 1e6 - tokens_in * p_in) / p_out)


def tight(sent: int, cap: float, tokens_in: int, p_in: float, p_out: float) -> bool:
    """`sent` output tokens fit under `cap` and are within a rounding of all that fit."""
    return (
        tokens_in * p_in + sent * p_out <= cap * 1e6 + 1e-9
        and sent >= allowed(cap, tokens_in, p_in, p_out) - 1
    )


async def test_a_cost_cap_bounds_the_answer_on_the_wire(up: LocalUpstream) -> None:
    up.default = reply("fine")
    async with router(up.url) as r:
        res = await r.chat("hi", max_cost_usd=CAP)
        sent = up.seen(wire("alpha"))[-1].body["max_tokens"]
        assert sent < 4_000 and tight(sent, CAP, res.decision.tokens_in("alpha"), 0.10, 0.40)
        await r.chat("hi", max_cost_usd=CAP, max_tokens=100)  # the caller's smaller limit
        assert up.seen(wire("alpha"))[-1].body["max_tokens"] == 100
        await r.chat("hi", max_cost_usd=1.0)  # a cap above the model's own limit: unchanged
        assert "max_tokens" not in up.seen(wire("alpha"))[-1].body


async def test_calls_in_flight_together_share_the_cap(up: LocalUpstream) -> None:
    up.default = reply("fine", latency=0.05)
    async with router(up.url) as r:
        res = await r.chat("hi", max_cost_usd=CAP, race=2)
    half = CAP / 2
    a, b = (up.seen(wire(m))[-1].body["max_tokens"] for m in ("alpha", "beta"))
    assert tight(a, half, res.decision.tokens_in("alpha"), 0.10, 0.40)
    assert tight(b, half, res.decision.tokens_in("beta"), 0.20, 0.80)


async def test_a_cascade_step_gets_what_earlier_steps_left(up: LocalUpstream) -> None:
    up.default = reply("fine")
    cap = 0.004
    ladder = Cascade([Step(("alpha",), v.check(lambda t: False)), Step(("gamma",))])
    async with router(up.url) as r:
        res = await r.chat("hi", max_cost_usd=cap, cascade=ladder)
    assert res.model == "gamma"
    first = res.attempts[0]
    assert first.model == "alpha" and first.outcome == "rejected" and first.cost_usd
    sent = up.seen(wire("gamma"))[-1].body["max_tokens"]
    assert tight(sent, cap - first.cost_usd, res.decision.tokens_in("gamma"), 0.50, 2.00)


def test_output_within_keeps_the_cost_under_the_cap() -> None:
    reg = Registry.from_dict({"model": [{
        "id": "m", "context_window": 400_000, "max_output": 10_000,
        "price": {"input": 1.0, "output": 4.0, "per_request": 0.001, "reasoning": 8.0,
                  "long_context": {"above": 200_000, "input": 2.0, "output": 6.0}},
    }]})  # fmt: skip
    price = reg["m"].price
    assert price is not None
    for tokens_in, usd in ((1_000, 0.01), (250_000, 0.6), (10, 0.002)):
        n = price.output_within(tokens_in, usd)
        assert n is not None and n > 0
        # billed as reasoning (the dearer rate) or as text, n tokens fit, and within a
        # rounding of all that fit
        assert price.cost(tokens_in, n, reasoning_tokens=n) <= usd + 1e-12
        assert price.cost(tokens_in, n + 2, reasoning_tokens=n + 2) > usd
    assert price.output_within(1_000, 0.0005) == 0  # the per-request fee alone is over


JUDGE_COST = 0.0002


async def judge_says_pass(messages: list[dict[str, object]]) -> v.Answer:
    return v.Answer("judge-model", "VERDICT: PASS\nCONFIDENCE: 90", 40, 4, JUDGE_COST, 5.0)


@pytest.mark.parametrize("how", ["cascade", "race"])
async def test_a_judges_calls_are_billed_to_the_request(up: LocalUpstream, how: str) -> None:
    up.default = reply("fine", latency=0.02)
    check = v.judge(judge_says_pass, "is it fine?")
    async with router(up.url) as r:
        if how == "cascade":
            res = await r.chat("hi", cascade=Cascade([Step(("alpha",), check), Step(("gamma",))]))
        else:
            res = await r.chat("hi", race=2, accept=check)
    judged = [a for a in res.attempts if a.outcome == "check"]
    assert judged and all(a.model == "judge-model" and a.cost_usd == JUDGE_COST for a in judged)
    answers = sum(a.cost_usd or 0.0 for a in res.attempts if a.outcome != "check")
    assert res.total_cost_usd == pytest.approx(answers + JUDGE_COST * len(judged))
    assert res.to_record()["total_cost_usd"] == pytest.approx(res.total_cost_usd)
    if how == "cascade":
        assert res.cascade is not None and res.cascade.cost_usd == pytest.approx(res.total_cost_usd)


async def test_a_parallel_steps_calls_count_once_in_the_overhead(up: LocalUpstream) -> None:
    up.default = reply("fine", latency=0.3)
    ladder = Cascade([Step(("alpha", "gamma"), v.check(lambda t: True)), Step(("delta",))])
    async with router(up.url) as r:
        res = await r.chat("hi", cascade=ladder)
    # two calls of 0.3 s side by side: ~0.3 s upstream, not 0.6 s (which left overhead 0).
    # Bounded by the calls' own durations, not 0.45 s: a stalled CI machine stretches both
    a, b = [a for a in res.attempts if a.model in ("alpha", "gamma")]
    assert res.overhead_s > 0
    assert res.latency_s - res.overhead_s < 0.75 * (a.duration_s + b.duration_s)


PRICES = {"alpha": (0.10, 0.40), "beta": (0.20, 0.80), "gamma": (0.50, 2.00)}


async def test_a_relaunch_in_a_race_gets_only_what_the_call_in_flight_left(
    up: LocalUpstream,
) -> None:
    cap = 0.002
    up.script(wire("alpha"), reply("nope"))  # at once: rejected, gamma takes its place
    up.script(wire("beta"), reply("good", latency=0.5))  # in flight all along
    up.script(wire("gamma"), reply("nope", latency=0.1))
    ok = v.check(lambda t: t.startswith("good"), name="good")
    async with router(up.url) as r:
        res = await r.chat("hi", race=2, accept=ok, max_cost_usd=cap)
    assert res.model == "beta"
    # alpha's bill, and what beta and gamma (in flight together) could have been billed
    # had each written all it was allowed to
    alpha = next(a for a in res.attempts if a.model == "alpha")
    worst = alpha.cost_usd or 0.0
    for m in ("beta", "gamma"):
        p_in, p_out = PRICES[m]
        out = up.seen(wire(m))[-1].body.get("max_tokens", 4_000)  # none sent: max_output
        worst += (res.decision.max_tokens_in(m) * p_in + out * p_out) / 1e6
    assert len(up.seen(wire("gamma"))) == 1 and worst <= cap * (1 + 1e-9)


async def unpriced_judge(messages: list[dict[str, object]]) -> v.Answer:
    return v.Answer("judge-model", "VERDICT: FAIL\nCONFIDENCE: 90", 40, 4, None, 5.0)


async def test_an_unknown_bill_stops_calls_under_a_cap(up: LocalUpstream) -> None:
    up.default = reply("fine")
    ladder = Cascade([Step(("alpha",), v.judge(unpriced_judge, "ok?")), Step(("gamma",))])
    async with router(up.url) as r:
        res = await r.chat("hi", max_cost_usd=0.004, cascade=ladder)
    assert res.total_cost_usd is None  # unknown, never a partial sum
    skipped = [a for a in res.attempts if a.model == "gamma"]
    assert skipped and skipped[0].outcome == "skipped" and "unknown" in (skipped[0].error or "")
    assert not up.seen(wire("gamma"))


async def test_a_prompt_cache_write_is_priced_as_one_under_a_cap(up: LocalUpstream) -> None:
    up.default = reply("fine")
    text = "context " * 300
    plain = [{"role": "user", "content": text}]
    cached = [{"role": "user", "content": [
        {"type": "text", "text": text, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    ]}]  # fmt: skip
    reg = registry(up.url)
    beta = reg["beta"]
    assert beta.price is not None
    price = beta.price.replace(cache_write_1h=0.4)  # a 1-hour write: 2x input
    async with router(up.url) as r:
        r.update(reg.replace(beta.replace(price=price)))
        d = await r.aroute(plain, allow=("beta",), max_cost_usd=CAP)
        await r.chat(plain, max_cost_usd=CAP, allow=("beta",))
        await r.chat(cached, max_cost_usd=CAP, allow=("beta",))
    sent = [s.body["max_tokens"] for s in up.seen(wire("beta"))]
    tokens_in = d.max_tokens_in("beta")
    assert tight(sent[0], CAP, tokens_in, 0.2, 0.8)
    assert tight(sent[1], CAP, tokens_in, 0.4, 0.8)  # the prompt priced as the write


async def test_a_job_keeps_its_cap_across_failed_and_concurrent_steps(up: LocalUpstream) -> None:
    import asyncio

    from satisfice import Job
    from satisfice.errors import NoRouteError, SatisficeError

    up.default = reply("fine", latency=0.05)
    nope = v.check(lambda t: False, name="never")
    async with router(up.url) as r:
        job = Job(r, max_cost_usd=0.002)
        with pytest.raises(SatisficeError):  # every answer rejected: billed all the same
            await job.step("a", "hi", race=2, accept=nope)
        assert job.failed_usd and job.failed_usd[0] and job.spent_usd == job.failed_usd[0]
        assert job.cost_usd == pytest.approx(job.failed_usd[0])
        # two steps side by side: the second sees the first's cap as spent
        job2 = Job(r, max_cost_usd=0.002)
        got = await asyncio.gather(
            job2.step("x", "hi"), job2.step("y", "hi"), return_exceptions=True
        )
        assert isinstance(got[1], NoRouteError)  # nothing left of the cap for it


async def test_a_hedge_does_not_cut_the_first_call_short(up: LocalUpstream) -> None:
    up.script(wire("alpha"), reply("fine", latency=0.4))  # slower than its p95: a hedge
    up.default = reply("fine")
    async with router(up.url) as r:
        res = await r.chat("hi", hedge=True, max_cost_usd=CAP)
    sent = up.seen(wire("alpha"))[-1].body["max_tokens"]
    assert tight(sent, CAP, res.decision.max_tokens_in("alpha"), 0.10, 0.40)  # all of it
    # the hedge gets what alpha's hold leaves: here nothing, so it is not launched (and
    # beta stays a fallback, should alpha fail)
    assert [a.model for a in res.attempts] == ["alpha"] and not up.seen(wire("beta"))


async def test_a_limit_in_extra_cannot_lift_the_cap(up: LocalUpstream) -> None:
    from satisfice.errors import ConfigError

    up.default = reply("fine")
    async with router(up.url) as r:
        res = await r.chat("hi", max_cost_usd=CAP, extra={"max_tokens": 4000, "seed": 1})
        body = up.seen(wire("alpha"))[-1].body
        assert body["seed"] == 1 and tight(
            body["max_tokens"], CAP, res.decision.max_tokens_in("alpha"), 0.10, 0.40
        )
        with pytest.raises(ConfigError, match="n=3: chat"):
            await r.chat("hi", max_cost_usd=CAP, extra={"n": 3})


async def test_a_hedge_the_cap_has_no_room_for_leaves_the_fallback(up: LocalUpstream) -> None:
    from satisfice.testing import status

    up.script(wire("alpha"), status(500, latency=0.4))  # slow, then fails
    up.default = reply("fine")
    async with router(up.url) as r:
        res = await r.chat("hi", hedge=True, max_cost_usd=CAP)
    assert res.model == "beta"  # the fallback, not skipped for good while alpha held the cap


async def test_a_race_judges_time_is_the_upstreams(up: LocalUpstream) -> None:
    """A judge's 1 s (its answer's latency) is the upstream's time, not the router's
    overhead. Bounded at half of it, not at 0.1 s: on a loaded CI machine the judge's sleep
    of 0.3 s had taken 0.5, and the 0.2 s past what the judge said read as overhead."""
    import asyncio

    async def slow_judge(messages: list[dict[str, object]]) -> v.Answer:
        await asyncio.sleep(1.0)  # (the answer says so: 1,000 ms)
        return v.Answer("judge-model", "VERDICT: PASS\nCONFIDENCE: 90", 40, 4, 0.0001, 1000.0)

    up.default = reply("fine")
    async with router(up.url) as r:
        res = await r.chat("hi", race=2, accept=v.judge(slow_judge, "ok?"))
    assert res.latency_s >= 1.0 and res.overhead_s < 0.5


def test_long_context_tiers_given_out_of_order_in_code_bound_the_cost() -> None:
    """Tiers given highest first to a Price built in code were kept in that order, and the
    routing table took the first as the threshold: a 5,000-token prompt was planned at
    the base rates and a cap let a bill of 5x through."""
    from satisfice import Policy, Router
    from satisfice.errors import ConfigError
    from satisfice.registry import LongContext, ModelSpec, Price

    tiers = (LongContext(500_000, 10.0, 40.0), LongContext(1_000, 5.0, 20.0))
    price = Price(1.0, 4.0, long_context=tiers)
    assert [t.above for t in price.long_context] == [1_000, 500_000]
    with pytest.raises(ConfigError, match="same prompt length"):
        Price(1.0, 4.0, long_context=(LongContext(1_000, 5, 20), LongContext(1_000, 6, 20)))
    spec = ModelSpec("tiered", "openai", 1_000_000, 1000, "o200k_base", price=price,
                     p95_latency_ms=1000, quality={"general": 0.8})  # fmt: skip
    r = Router(Registry([spec]), Policy(quality_floor=0.0))
    prompt = "hello " * 5000
    d = r.route(prompt, max_output_tokens=100, count_prompt=True)
    bill = price.cost(d.primary.tokens_in, 100)
    assert d.est_cost_usd is not None and bill is not None
    assert d.est_cost_usd >= bill * 0.999
