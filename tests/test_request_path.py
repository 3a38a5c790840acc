"""One request path: cascades, races and workflow steps run through the executor over real
sockets and return one ChatResult with one record."""

from __future__ import annotations

import json

import pytest

from satisfice import Cascade, Step
from satisfice import validators as v
from satisfice.errors import ConfigError
from satisfice.testing import LocalUpstream, reply, status
from satisfice.workflow import Job

from .chat_support import router, wire

MSGS = [{"role": "user", "content": "What is 2 + 2? Answer with a number."}]
SAYS_FOUR = v.check(lambda text: "4" in text, name="says 4")


async def test_cascade_runs_through_the_executor_end_to_end(up: LocalUpstream) -> None:
    # alpha: a 500 (retried by the executor), then a wrong answer; the check escalates to
    # gamma, whose answer passes. Every call is an attempt on the one record.
    up.script(wire("alpha"), status(500), reply("five"))
    up.script(wire("gamma"), reply("it is 4"))
    ladder = Cascade([Step(("alpha",), SAYS_FOUR), Step(("gamma",))])
    async with router(up.url) as r:
        res = await r.chat(MSGS, cascade=ladder, metadata={"team": "search"})
        health = r.health()
    assert res.text == "it is 4" and res.model == "gamma"
    assert res.cascade is not None and res.cascade.accepted
    by = [(a.model, a.outcome, a.step) for a in res.attempts]
    assert by == [("alpha", "error", 0), ("alpha", "rejected", 0), ("gamma", "ok", 1)]
    rejected = res.attempts[1]
    assert rejected.verdict is not None and not rejected.verdict["passed"]
    assert rejected.cost_usd is not None and rejected.cost_usd > 0
    # one cost roll-up: the ladder's and the request's agree, and both count the rejected call
    assert res.total_cost_usd == pytest.approx(res.cascade.cost_usd)
    assert res.total_cost_usd == pytest.approx(rejected.cost_usd + (res.cost_usd or 0.0))
    rec = res.to_record()
    json.dumps(rec)  # JSON-ready
    assert rec["metadata"] == {"team": "search"} and rec["request_id"] == res.request_id
    assert rec["cascade"]["steps"][0]["status"] == "escalated"
    assert [a["step"] for a in rec["attempts"]] == [0, 0, 1]
    # the executor saw every call: health counts the failure and the successes
    assert (health["alpha/alpha-dep"]["failures"], health["alpha/alpha-dep"]["successes"]) == (1, 1)
    assert health["gamma/gamma-dep"]["successes"] == 1


async def test_cascade_true_builds_the_decisions_ladder(up: LocalUpstream) -> None:
    async with router(up.url) as r:
        with pytest.raises(ConfigError, match="accept="):
            await r.chat(MSGS, cascade=True)
        up.script(wire("alpha"), reply("4"))
        up.script(wire("beta"), reply("4"))
        res = await r.chat(MSGS, cascade=True, accept=SAYS_FOUR, quality_floor=0.0)
    assert res.cascade is not None and res.cascade.accepted
    assert {a.step for a in res.attempts} == {0}  # the cheap step's answer passed


async def test_chat_result_record_has_one_shape_for_single_calls(up: LocalUpstream) -> None:
    up.script(wire("alpha"), reply("hello"))
    async with router(up.url) as r:
        res = await r.chat(MSGS, metadata={"k": 1})
    rec = res.to_record()
    keys = ("request_id", "started_at", "task", "decision", "attempts", "tokens_in",
            "est_tokens_in", "total_cost_usd", "latency_s", "overhead_s", "cascade")  # fmt: skip
    assert set(keys) <= set(rec)
    assert rec["decision"]["model"] == "alpha" and rec["cascade"] is None
    assert rec["est_cost_usd"] is not None and rec["total_cost_usd"] == res.cost_usd


async def test_unknown_option_or_constraint_is_a_config_error(up: LocalUpstream) -> None:
    async with router(up.url) as r:
        with pytest.raises(ConfigError, match="max_cost_usd"):
            await r.chat(MSGS, max_cost=0.01)  # type: ignore[call-arg]
        with pytest.raises(ConfigError, match="unknown constraint"):
            r.route(MSGS, {"latency_slo": 5})
    assert up.seen(wire("alpha")) == []  # nothing was sent


async def test_job_steps_are_requests_with_their_own_constraints(up: LocalUpstream) -> None:
    up.script(wire("alpha"), status(503), status(503))  # alpha fails: the step falls back
    async with router(up.url, max_retries=1) as r:
        job = Job(r, name="ticket", max_cost_usd=0.01)
        first = await job.step("plan", MSGS)
        assert first.result.model == "beta" and "alpha" in first.result.fallbacks_used
        up.script(wire("alpha"), reply("no"))
        ladder = Cascade([Step(("alpha",), SAYS_FOUR), Step(("gamma",))])
        up.script(wire("gamma"), reply("4"))
        second = await job.step("check", MSGS, cascade=ladder)
        third = await job.step("summarise", MSGS, quality_floor=0.0)
    assert [s.name for s in job.steps] == ["plan", "check", "summarise"]
    assert second.cost_usd == pytest.approx(second.result.cascade.cost_usd)  # type: ignore[union-attr]
    total = sum(s.cost_usd or 0.0 for s in job.steps)
    assert job.cost_usd == pytest.approx(total) and total > 0
    # the cap is passed down: the last step could spend at most what was left
    left = 0.01 - (first.cost_usd or 0.0) - (second.cost_usd or 0.0)
    assert third.decision.constraints.max_cost_usd == pytest.approx(left)
    d = job.to_dict()
    assert d["steps"][1]["record"]["metadata"] == {"job": "ticket", "step": "check"}
    assert d["tokens_in"] == sum(s.tokens_in for s in job.steps) > 0


async def test_feedback_credits_the_model_that_answered(up: LocalUpstream) -> None:
    up.script(wire("alpha"), status(401))  # alpha's deployment is disabled: beta answers
    async with router(up.url) as r:
        res = await r.chat(MSGS)
        assert res.model == "beta" and res.decision.model == "alpha"
        before = {c.model: c.p_good for c in r.route(MSGS).candidates}
        r.feedback(res.request_id, 0.0)
        after = {c.model: c.p_good for c in r.route(MSGS, deny=()).candidates}
    assert res.decision.request_id == res.request_id  # one id per request
    assert after["beta"] < before["beta"] and after.get("alpha") == before.get("alpha")
