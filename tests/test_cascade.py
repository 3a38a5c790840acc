"""Cascade rules (escalation, latency budget, cost cap, skip), the cost roll-up, replay of
recorded outcomes, per-step workflow routing and the offline evaluation."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import satisfice
from satisfice import validators as v
from satisfice.cascade import (
    Cascade,
    CascadeBudgetError,
    ModelEstimate,
    Step,
    answer_from_chat,
    estimates_from,
    routed_judge,
)
from satisfice.errors import AllAttemptsFailedError, ConfigError, ProviderError, RetryableError
from satisfice.eval import OutcomeSet
from satisfice.eval.cascade_eval import evaluate_cascade, fit_calibrated, summary_lines
from satisfice.providers.base import ChatResponse, Usage
from satisfice.replay import Replay

from .data_support import DATA, needs_data

LETTER = v.agreement(v.choice_letter)


class Fake:
    """A scripted `call`: fixed texts, costs and (optional) real delays per model."""

    def __init__(self, texts: Mapping[str, str], cost: float = 0.001,
                 delay_s: Mapping[str, float] | None = None,
                 fail: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.texts = dict(texts)
        self.cost = cost
        self.delay_s = dict(delay_s or {})
        self.fail = fail
        self.calls: list[str] = []

    async def __call__(self, model: str, messages: list[dict[str, Any]]) -> v.Answer:
        self.calls.append(model)
        if model in self.delay_s:
            await asyncio.sleep(self.delay_s[model])
        if model in self.fail:
            raise RetryableError(f"{model}: HTTP 503", model=model)
        return v.Answer(model, self.texts[model], 100, 10, self.cost, 5.0)


def est(p95: float = 1000.0, cost: float = 0.001, p_good: float | None = None,
        **per_model: ModelEstimate) -> dict[str, ModelEstimate]:  # fmt: skip
    base = {m: ModelEstimate(p_good, cost, p95) for m in ("a", "b", "c", "top")}
    return base | per_model


def run(cascade: Cascade, call: Fake, **kw: Any) -> Any:
    return asyncio.run(cascade.run(call, "Which? A) x B) y", **kw))


# -- escalation ---------------------------------------------------------------------------------


def test_agreeing_pair_is_accepted_in_one_step() -> None:
    call = Fake({"a": "B", "b": "B", "top": "A"})
    r = run(Cascade([Step(("a", "b"), LETTER), Step(("top",))]), call)
    assert r.accepted and r.model == "a" and r.sequential_steps == 1
    assert call.calls == ["a", "b"] and r.steps[0].status == "accepted"


def test_disagreement_escalates_to_the_top_with_every_step_recorded() -> None:
    call = Fake({"a": "B", "b": "C", "top": "A"})
    r = run(Cascade([Step(("a", "b"), LETTER), Step(("top",))]), call)
    assert r.accepted and r.model == "top" and r.sequential_steps == 2
    assert [s.status for s in r.steps] == ["escalated", "accepted"]
    assert "need 2" in r.steps[0].reason and len(r.steps[0].verdicts) == 2


def test_a_later_step_can_break_the_tie_with_earlier_answers() -> None:
    call = Fake({"a": "B", "b": "C", "c": "C", "top": "A"})
    ladder = Cascade([Step(("a", "b"), LETTER), Step(("c",), LETTER), Step(("top",))])
    r = run(ladder, call)
    assert r.model == "c" and r.sequential_steps == 2 and "top" not in call.calls


def test_model_lists_take_the_cascade_validator_except_the_last() -> None:
    ladder = Cascade([["a"], ["top"]], validator=v.json_valid())
    assert ladder.steps[0].validator is not None and ladder.steps[1].validator is None
    r = run(ladder, Fake({"a": "not json", "top": "{}"}))
    assert r.model == "top"
    bare = Cascade(["gpt-4o-mini", ["a", "b"], "top"], validator=LETTER)
    assert [s.models for s in bare.steps] == [("gpt-4o-mini",), ("a", "b"), ("top",)]
    with pytest.raises(ConfigError):
        Cascade([])
    with pytest.raises(ConfigError):
        Step(("a", "a"))


def test_no_acceptance_returns_the_best_answer_flagged() -> None:
    r = run(Cascade([Step(("a",), v.json_valid()), Step(("b",), v.json_valid())]),
            Fake({"a": "x", "b": "y"}))  # fmt: skip
    assert not r.accepted and r.answer is not None and r.budget_hit is None
    assert r.model == "b"  # a tie goes to the higher step
    assert "no step" in (r.stopped or "")


def test_a_failed_call_costs_its_model_the_turn_not_the_step() -> None:
    call = Fake({"a": "B", "b": "B", "c": "B", "top": "A"}, fail=("a",))
    r = run(Cascade([Step(("a", "b", "c"), LETTER), Step(("top",))]), call)
    assert r.model == "b" and "a" in r.steps[0].errors and "503" in r.steps[0].errors["a"]
    with pytest.raises(AllAttemptsFailedError, match="every model"):
        run(Cascade([Step(("a",))]), Fake({"a": "x"}, fail=("a",)))


# -- the latency-budget rule -----------------------------------------------------------------------


def test_a_step_whose_p95_does_not_fit_is_not_started() -> None:
    call = Fake({"a": "B", "b": "C", "top": "A"})
    ladder = Cascade([Step(("a", "b"), LETTER), Step(("top",))], latency_budget_ms=3000)
    slow_top = est(p95=1000.0, top=ModelEstimate(None, 0.01, 2500.0))
    # Step 0 reports 5 ms per call: 2995 ms left, top's p95 of 2500 ms fits.
    assert run(ladder, call, estimates=slow_top).model == "top"
    slower = est(p95=1000.0, top=ModelEstimate(None, 0.01, 2996.0))
    call = Fake({"a": "B", "b": "C", "top": "A"})
    r = run(ladder, call, estimates=slower)
    assert "top" not in call.calls and not r.accepted and r.budget_hit == "latency"
    assert r.steps[1].status == "skipped" and "2996 ms does not fit" in r.steps[1].reason
    assert r.model in ("a", "b")  # the best answer so far


def test_latency_budget_can_raise_instead() -> None:
    ladder = Cascade([Step(("a", "b"), LETTER), Step(("top",))], latency_budget_ms=1000,
                     on_budget="raise")  # fmt: skip
    with pytest.raises(CascadeBudgetError, match="raise the budget") as e:
        run(ladder, Fake({"a": "B", "b": "C", "top": "A"}),
            estimates=est(p95=500, top=ModelEstimate(None, 0.01, 5000.0)))  # fmt: skip
    assert e.value.result.steps[1].status == "skipped"


def test_a_model_without_p95_never_fits_a_budget() -> None:
    ladder = Cascade([Step(("a",))], latency_budget_ms=1000)
    with pytest.raises(CascadeBudgetError, match="no p95 latency for a"):
        run(ladder, Fake({"a": "x"}), estimates={"a": ModelEstimate(None, 0.001, None)})


def test_a_step_running_past_its_p95_is_cut_off_at_the_budget() -> None:
    call = Fake({"a": "B", "top": "A"}, delay_s={"top": 5.0})
    # a 500 ms budget (not 150): a stalled CI machine must not spend it before "top" starts
    ladder = Cascade([Step(("a",), v.json_valid()), Step(("top",))], latency_budget_ms=500)
    r = run(ladder, call, estimates=est(p95=10.0))
    assert r.steps[1].status == "failed" and "ran out" in r.steps[1].reason
    assert r.steps[1].cost_usd is None and r.cost_usd is None  # the cancelled call's bill
    assert r.model == "a" and not r.accepted and r.budget_hit == "latency"
    assert r.steps[1].latency_ms < 1500  # cut at the budget, not after top's 5 s


# -- the cost cap and the skip rule ---------------------------------------------------------------


def test_cost_cap_skips_steps_that_would_overspend() -> None:
    call = Fake({"a": "B", "b": "C", "top": "A"}, cost=0.001)
    ladder = Cascade([Step(("a", "b"), LETTER), Step(("top",))], max_cost_usd=0.005)
    r = run(ladder, call, estimates=est(cost=0.001, top=ModelEstimate(None, 0.0031, 100.0)))
    assert "top" not in call.calls and r.budget_hit == "cost"
    assert "exceeds the $0.005000 cap" in r.steps[1].reason
    ok = run(ladder, Fake({"a": "B", "b": "C", "top": "A"}),
             estimates=est(cost=0.001, top=ModelEstimate(None, 0.0029, 100.0)))  # fmt: skip
    assert ok.model == "top"


def test_unpriced_models_never_fit_a_cost_cap() -> None:
    with pytest.raises(CascadeBudgetError, match="no cost estimate for a"):
        run(Cascade([Step(("a",))], max_cost_usd=1.0), Fake({"a": "x"}),
            estimates={"a": ModelEstimate(None, None, 10.0)})  # fmt: skip


def test_a_prompt_predicted_to_need_the_top_skips_the_cheap_steps() -> None:
    call = Fake({"a": "B", "b": "B", "top": "A"})
    ladder = Cascade([Step(("a", "b"), LETTER), Step(("top",))], skip_below=0.3)
    hard = est(p_good=0.1, top=ModelEstimate(0.2, 0.01, 100.0))  # the top is never skipped
    r = run(ladder, call, estimates=hard)
    assert call.calls == ["top"] and r.steps[0].status == "skipped" and r.model == "top"
    assert r.sequential_steps == 1 and r.accepted
    easy = est(p_good=0.6)
    assert run(ladder, Fake({"a": "B", "b": "B", "top": "A"}), estimates=easy).model == "a"


# -- the cost roll-up ---------------------------------------------------------------------------


def test_costs_and_tokens_roll_up_over_steps_and_judge_calls() -> None:
    async def ask(messages: list[dict[str, Any]]) -> v.Answer:
        return v.Answer("judge", "VERDICT: FAIL\nCONFIDENCE: 90", 40, 4, 0.0002)

    call = Fake({"a": "draft", "top": "final"}, cost=0.001)
    r = run(Cascade([Step(("a",), v.judge(ask, "is it final?")), Step(("top",))]), call)
    assert r.model == "top"
    assert r.steps[0].cost_usd == pytest.approx(0.0012)  # the judge is billed to its step
    assert r.steps[1].cost_usd == pytest.approx(0.001)
    assert r.cost_usd == pytest.approx(0.0022)
    assert (r.tokens_in, r.tokens_out) == (240, 24)
    assert r.latency_ms >= 10.0  # two steps of 5 ms reported latency each
    d = r.to_dict()
    assert d["cost_usd"] == pytest.approx(0.0022) and d["sequential_steps"] == 2
    assert d["steps"][0]["verdicts"][0]["passed"] is False


def test_an_unknown_cost_makes_the_total_unknown_not_zero() -> None:
    class Unpriced(Fake):
        async def __call__(self, model: str, messages: list[dict[str, Any]]) -> v.Answer:
            return v.Answer(model, "x", 1, 1, None)

    r = run(Cascade([Step(("a",))]), Unpriced({}))
    assert r.steps[0].cost_usd is None and r.cost_usd is None


# -- from the router -------------------------------------------------------------------------------


def test_ladder_and_estimates_from_a_router_decision() -> None:
    router = satisfice.Router()
    d = router.route("What is 2+2?", quality_floor=0.0, latency_slo_ms=20000)
    ladder = Cascade.from_decision(d, LETTER)
    assert len(ladder.steps) in (2, 3) and len(ladder.steps[0].models) == 2
    assert ladder.steps[-1].validator is None and ladder.latency_budget_ms == 20000
    e = estimates_from(d, router.registry)
    top = ladder.steps[-1].models[0]
    cheap = ladder.steps[0].models
    assert all((e[m].cost_usd or 0) < (e[top].cost_usd or 0) for m in cheap)
    assert e[top].p95_ms == router.registry[top].p95_latency_ms
    assert max(c.p_good for c in d.candidates) == e[top].p_good


def test_routed_judge_calls_the_routed_model() -> None:
    router = satisfice.Router()
    seen: list[str] = []

    async def call(model: str, messages: list[dict[str, Any]]) -> v.Answer:
        seen.append(model)
        return v.Answer(model, "VERDICT: PASS\nCONFIDENCE: 70", 10, 2, 0.0)

    ask = routed_judge(router, call, quality_floor=0.0)
    got = asyncio.run(v.resolve(v.judge(ask, "r")(v.Answer("m", "x"), v.Context())))
    assert got.passed and len(seen) == 1 and seen[0] in router.registry


def test_answer_from_a_provider_response() -> None:
    raw = {"choices": [{"logprobs": {"content": [{"logprob": -0.1}]}}]}
    resp = ChatResponse("hi", raw, Usage(12, 3), "stop")
    a = answer_from_chat("gpt-4o-mini", resp, cost_usd=0.0001, latency_ms=80.0)
    assert (a.tokens_in, a.tokens_out, a.logprobs, a.finish_reason) == (12, 3, (-0.1,), "stop")


# -- replay on a tiny hand-made outcome set -------------------------------------------------------


def tiny() -> OutcomeSet:
    prompts = ["Q1? A) x B) y", "Q2? A) x B) y", "Q3? A) x B) y"]
    responses: list[list[str | None]] = [["B", "B", "B"], ["A", "B", "B"], [None, "A", "A"]]
    scores = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [np.nan, 0.0, 1.0]])
    costs = np.array([[1e-4, 2e-4, 1e-2], [1e-4, 2e-4, 1e-2], [1e-4, 2e-4, 2e-2]])
    return OutcomeSet(prompts, ["a", "b", "top"], scores, costs, ["g"] * 3,
                      ["1", "2", "3"], responses)  # fmt: skip


def test_replay_runs_the_real_cascade_and_scores_the_accepted_answer() -> None:
    s = tiny()
    replay = Replay(s)
    ladder = Cascade([Step(("a", "b"), LETTER), Step(("top",))])
    got = [asyncio.run(ladder.run(replay.call_for(i), s.prompts[i])) for i in range(3)]
    assert [r.model for r in got] == ["a", "top", "top"]
    assert [replay.score(i, r.model) for i, r in enumerate(got)] == [1.0, 1.0, 1.0]
    assert got[0].cost_usd == pytest.approx(3e-4)  # both cheap calls, recorded costs
    assert got[1].cost_usd == pytest.approx(1.03e-2)
    assert "a" in got[2].steps[0].errors  # no recorded answer: an upstream failure
    assert got[0].tokens_in > 0 and got[0].tokens_out == 2


def test_replay_looks_prompts_up_and_estimates_without_peeking() -> None:
    s = tiny()
    replay = Replay(s, latency_ms={"top": 900.0})
    answer = asyncio.run(replay("b", [{"role": "user", "content": "Q2? A) x B) y"}]))
    assert answer.text == "B" and answer.latency_ms is None
    assert replay.answer(0, "top").latency_ms == 900.0
    e = replay.estimates(p_good={"a": 0.4})
    assert e["top"].cost_usd == pytest.approx(np.mean([1e-2, 1e-2, 2e-2]))
    assert e["a"].p_good == 0.4 and e["top"].p95_ms == 900.0
    with pytest.raises(ConfigError, match="no recorded prompt"):
        replay.row_of("unknown")
    with pytest.raises(ConfigError, match="not in the outcome set"):
        replay.score(0, "gpt-9")
    with pytest.raises(ProviderError):
        replay.answer(2, "a")
    no_text = OutcomeSet(["q"], ["a"], np.ones((1, 1)), np.ones((1, 1)), ["g"], ["1"])
    with pytest.raises(ConfigError, match="recorded responses"):
        Replay(no_text)


# -- offline evaluation ----------------------------------------------------------------------------


def synthetic_mc(n: int = 80) -> OutcomeSet:
    rng = np.random.default_rng(0)
    gold = rng.choice(list("AB"), n)
    models = ["cheap1", "cheap2", "top"]
    acc = {"cheap1": 0.7, "cheap2": 0.7, "top": 0.95}
    responses, scores = [], []
    for g in gold:
        row, srow = [], []
        for m in models:
            right = rng.random() < acc[m]
            row.append(g if right else ("B" if g == "A" else "A"))
            srow.append(1.0 if right else 0.0)
        responses.append(row)
        scores.append(srow)
    costs = np.tile([1e-4, 1e-4, 5e-3], (n, 1))
    prompts = [f"Question {i}: pick A or B. A) yes B) no" for i in range(n)]
    return OutcomeSet(prompts, models, np.array(scores), costs, ["mc"] * n,
                      [str(i) for i in range(n)], responses)  # fmt: skip


def test_evaluate_cascade_on_a_synthetic_multiple_choice_set() -> None:
    report = evaluate_cascade(synthetic_mc(), budget_shares=(0.2, 0.5))
    assert report["kind"] == "ladders" and report["reference"] == "top"
    assert report["task_answer_kinds"] == {"mc": "choice"}
    split = report["split"]
    assert split["n_tune"] + split["n_test"] == 80 and split["n_test"] > 0
    best = max(report["sweep"], key=lambda p: p["quality"])
    cheapest = min(report["sweep"], key=lambda p: p["cost_usd"])
    assert best["quality"] >= cheapest["quality"]
    for p in report["sweep"]:
        assert p["cost_share"] <= 1.05 and abs(sum(p["steps"].values()) - 1.0) < 1e-9
    assert any("reference top" in line for line in summary_lines(report))


def test_fit_calibrated_learns_which_check_matters() -> None:
    good = [v.Answer("m", "#### 4") for _ in range(30)]
    bad = [v.Answer("m", "about four") for _ in range(30)]
    labels = np.array([1.0] * 30 + [0.0] * 30)
    fitted = fit_calibrated([v.final_answer(), v.regex("zzz")], good + bad,
                            [v.Context()] * 60, labels)  # fmt: skip
    assert fitted.weights[0] > 2.0 and abs(fitted.weights[1]) < 1e-6
    assert fitted(good[0], v.Context()).passed and not fitted(bad[0], v.Context()).passed


GSM8K = (DATA or Path("/nonexistent")) / "routellm" / "gsm8k" / "gsm8k_responses.csv"


@needs_data
def test_evaluate_cascade_on_a_gsm8k_slice() -> None:
    from satisfice.eval import load_routellm

    report = evaluate_cascade(load_routellm(GSM8K), max_rows=240)
    assert report["kind"] == "two-model" and report["split"]["n_test"] > 60
    assert 0.0 < report["apgr_cascade"] < 1.5 and report["curve"][0]["strong_share"] < 0.05
    # The checks see what the prompt cannot: they should beat prompt-only routing.
    assert report["apgr_checks_only"] > report["apgr_prompt_only"]
    assert any("APGR" in line for line in summary_lines(report))


async def test_an_unpriced_answer_is_charged_at_its_estimate_under_a_cost_cap() -> None:
    # "a" answers without a known cost; counting it as $0 would let "b" break the cap.
    fake = Fake({"a": "no letter", "b": "B", "top": "B"}, cost=None)  # type: ignore[arg-type]
    ladder = Cascade([Step(("a",), LETTER), Step(("b",), LETTER), Step(("top",))],
                     max_cost_usd=0.003)  # fmt: skip
    result = await ladder.run(fake, "q", estimates=est(cost=0.002))
    assert [s.status for s in result.steps] == ["escalated", "skipped", "skipped"]
    assert not result.accepted and result.budget_hit == "cost"
    assert result.steps[0].cost_usd is None and result.cost_usd is None
    assert fake.calls == ["a"]


def test_replay_rejects_rows_outside_the_set() -> None:
    from satisfice.errors import InputError

    replay = Replay(tiny())
    with pytest.raises(InputError, match="outside"):
        replay.answer(-1, "a")
    with pytest.raises(InputError, match="outside"):
        replay.score(3, "a")
    assert replay.score(2, "top") == 1.0


def test_answers_in_before_a_cut_off_are_kept() -> None:
    """A latency budget that cut a parallel step off dropped the answers already in (billed,
    and the only ones the request had): the cascade failed with no answer."""
    call = Fake({"a": "B", "b": "C", "top": "A"}, delay_s={"b": 2.0})
    ladder = Cascade([Step(("a", "b"), LETTER), Step(("top",))], latency_budget_ms=300)
    r = run(ladder, call, estimates=est(p95=100.0))
    assert r.model == "a" and not r.accepted and r.budget_hit == "latency"
    step = r.steps[0]
    assert step.status == "failed" and "cut off" in step.reason
    assert [a.model for a in step.answers] == ["a"] and "not checked" in r.verdict.reason
