"""Cascade overhead: each built-in validator on a typical answer, and the per-step
bookkeeping of `Cascade.run` with calls that answer at once (so only satisfice's own time is
measured). Budget: validator + bookkeeping <= 50 µs per step for the built-in
non-model validators.

    make bench        # or: pytest benches/bench_validators.py --benchmark-enable
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from satisfice import validators as v
from satisfice.cascade import Cascade, ModelEstimate, Step
from satisfice.eval.cascade_eval import math_checks

# A typical GSM8K worked solution (about 400 characters, as Mixtral writes them).
SOLUTION = (
    "Kylar is buying 16 glasses, so 8 of them are full price and 8 are discounted.\n"
    "The full-price glasses cost 8 x $5 = $<<8*5=40>>40.\n"
    "A discounted glass costs 60/100 * $5 = $<<60/100*5=3>>3, so the 8 discounted glasses "
    "cost 8 x $3 = $<<8*3=24>>24.\n"
    "Finally, let's add the two amounts: $40 + $24 = $<<40+24=64>>64.\n#### 64"
)
QUESTION = (
    "Kylar went to the store to buy glasses for his new apartment. One glass costs $5, but "
    "every second glass costs only 60% of the price. Kylar wants to buy 16 glasses. How "
    "much does he need to pay for them?"
)
GSM_CTX = v.Context([{"role": "user", "content": QUESTION}], (), {"weak": 0.6})
CODE = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds two numbers."
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
A, B = v.Answer("a", "B", 10, 1, 1e-5), v.Answer("b", "B\n", 10, 1, 1e-5)
PAIR = v.Context((), (A, B))

CASES: dict[str, tuple[v.Validator, v.Answer, v.Context]] = {
    "agreement_letter": (v.agreement(v.choice_letter), A, PAIR),
    "json_schema": (v.json_valid(SCHEMA), v.Answer("m", '{"name": "Ada"}'), v.Context()),
    "regex_forbid": (v.regex(r"(?i)as an ai", forbid=True), v.Answer("m", SOLUTION), v.Context()),
    "code_block_parses": (v.code_block("python"), v.Answer("m", CODE), v.Context()),
    "logprob": (v.logprob_confidence(), v.Answer("m", "x", logprobs=(-0.1,) * 20), v.Context()),
    "final_answer_int": (v.final_answer(integer=True), v.Answer("m", SOLUTION), v.Context()),
    "arithmetic": (v.arithmetic(), v.Answer("m", SOLUTION), v.Context()),
    "consistent_final": (v.consistent_final(), v.Answer("m", SOLUTION), v.Context()),
    "uses_inputs": (v.uses_inputs(), v.Answer("m", SOLUTION), GSM_CTX),
    "gsm8k_calibrated_7_checks": (
        v.calibrated([*math_checks(), v.predicted()], [0.1, 2.0, 1.9, 0.2, 1.2, 0.6, 0.9], -5.5),
        v.Answer("weak", SOLUTION),
        GSM_CTX,
    ),
}


@pytest.mark.benchmark(group="validator")
@pytest.mark.parametrize("name", list(CASES))
def test_validator(benchmark: Any, name: str) -> None:
    check, answer, ctx = CASES[name]
    verdict = benchmark(check, answer, ctx)
    assert isinstance(verdict, v.Verdict) and verdict.passed


# -- per-step bookkeeping ----------------------------------------------------------------------

ANSWERS = {m: v.Answer(m, t, 100, 2, 1e-4, 5.0) for m, t in (("a", "B"), ("b", "C"),
                                                              ("top", "A"))}  # fmt: skip
MSGS = [{"role": "user", "content": "Which? A) x B) y C) z"}]
EST = {m: ModelEstimate(0.7, 1e-4, 1000.0) for m in ANSWERS}


async def instant(model: str, messages: list[dict[str, Any]]) -> v.Answer:
    return ANSWERS[model]


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    # A cascade whose calls never wait completes on its first step: no event loop needed,
    # so the figure is the cascade's own time, not the loop's.
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the cascade waited on something")


LADDERS = {
    # (cascade, estimates, steps it runs)
    "1_step_accept": (Cascade([Step(("a",), v.extracts(v.choice_letter))]), None, 1),
    "2_steps_escalate": (Cascade([Step(("b",), v.json_valid()), Step(("top",))]), None, 2),
    "2_steps_budgets_and_estimates": (
        Cascade([Step(("b",), v.json_valid()), Step(("top",))], max_cost_usd=1.0, skip_below=0.1),
        EST,
        2,
    ),
}


@pytest.mark.benchmark(group="cascade-step")
@pytest.mark.parametrize("name", list(LADDERS))
def test_cascade_bookkeeping(benchmark: Any, name: str) -> None:
    ladder, est, steps = LADDERS[name]
    result = benchmark(lambda: drive(ladder.run(instant, MSGS, estimates=est)))
    assert result.sequential_steps == steps
    if benchmark.stats is not None:  # None under --benchmark-disable (a smoke run)
        per_step = benchmark.stats.stats.median / steps
        assert per_step < 50e-6, f"{per_step * 1e6:.1f} µs per step is over the 50 µs budget"


@pytest.mark.benchmark(group="cascade-loop")
def test_parallel_pair_step_in_an_event_loop(benchmark: Any) -> None:
    """A pair in parallel then the top, in a real loop: asyncio's task cost included."""
    loop = asyncio.new_event_loop()
    ladder = Cascade([Step(("a", "b"), v.agreement(v.choice_letter)), Step(("top",))],
                     latency_budget_ms=10_000)  # fmt: skip
    try:
        result = benchmark(
            lambda: loop.run_until_complete(ladder.run(instant, MSGS, estimates=EST))
        )
    finally:
        loop.close()
    assert result.model == "top"


@pytest.mark.benchmark(group="cascade-loop")
def test_direct_call_in_an_event_loop(benchmark: Any) -> None:
    """The baseline for the one above: the same three calls awaited directly."""
    loop = asyncio.new_event_loop()

    async def direct() -> v.Answer:
        await asyncio.gather(instant("a", MSGS), instant("b", MSGS))
        return await instant("top", MSGS)

    try:
        assert benchmark(lambda: loop.run_until_complete(direct())).model == "top"
    finally:
        loop.close()
