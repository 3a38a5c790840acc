"""Adversarial review: cascades (named `Cascade` ladders and `cascade="auto"` tuned ladders)
through `satisfice serve` (official openai and anthropic SDKs, raw sockets) and the library,
under a key with a budget and rate limits. Every test drives the real code against the
project's scripted `LocalUpstream` on 127.0.0.1 (the server in a thread of this process,
stopped on exit) and failed on the code it was written against because of the defect its
docstring names: the promise (README / docstrings), what happens, and a suggested fix."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from satisfice import Policy, Router
from satisfice import validators as v
from satisfice.cascade import Cascade, Step
from satisfice.errors import CascadeBudgetError, SatisficeError
from satisfice.ledger import read_records
from satisfice.testing import LocalUpstream, hang, reply

from .chat_support import registry, wire
from .polling import until
from .server_support import ADMIN, post_chat, serving


def _key(url: str, budget: float = 1.0) -> str:
    """A key with a budget and rate limits (in memory state)."""
    body = {"name": "k", "budget_usd": budget, "period": "day", "rpm": 100, "tpm": 200_000}
    k = httpx.post(url + "/admin/keys", headers=ADMIN, json=body)
    assert k.status_code in (200, 201), k.text
    return str(k.json()["key"])


def _budget_row(url: str, svc: Any) -> dict[str, Any]:
    """The key's budget row once nothing is in flight or held (polled, at most 10 s)."""
    limit = time.monotonic() + 10
    while True:
        (row,) = httpx.get(url + "/admin/spend", headers=ADMIN).json()["budgets"]
        if (svc.in_flight == 0 and row["held_usd"] == 0) or time.monotonic() > limit:
            return row  # type: ignore[no-any-return]
        time.sleep(0.05)


# 1 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("client", ["openai-sdk", "anthropic-sdk"])
def test_a_served_cascade_budget_error_lists_its_attempts(
    master: None, up: LocalUpstream, tmp_path: Path, client: str
) -> None:
    """Promised: `server/app.py::http_error`'s docstring: "satisfice's errors as status codes
    and OpenAI's error types, attempts listed"; README: every strategy, cascades included,
    reports "every call" in its attempts, and a ladder that raises keeps its steps and
    rejected answers on record. `Executor.cascade` sets `CascadeBudgetError.attempts`
    ("what its steps were billed") precisely so that the server has them.

    What happens: a policy ladder with `on_budget="raise"` calls step 0 (billed; its check
    rejects it), then its cap rules out step 1: `CascadeBudgetError`. `http_error`
    (app.py:215-216) builds the 400 `cascade_budget` without the `att` it builds for every
    other error carrying attempts, so neither the OpenAI-shaped nor the Anthropic-shaped
    body says which models were called, what they cost or why step 0's answer was
    rejected, though the key's budget was charged for them.

    Fix: `HTTPError(400, msg, "invalid_request_error", "cascade_budget", None, **att)`
    (and, ideally, the ladder's steps: `e.result.to_dict()`)."""
    ladder = Cascade([Step(("alpha",), v.regex("NEVER")), Step(("delta",))],
                     on_budget="raise", max_cost_usd=5e-4)  # fmt: skip
    router = Router(registry(up.url), Policy(quality_floor=0.0, cascades={"*": ladder}))
    up.script(wire("alpha"), reply("word " * 400))
    msgs = [{"role": "user", "content": "hi " * 50}]
    with serving(router, tmp_path) as (url, _svc):
        key = _key(url)
        body: Any
        if client == "openai-sdk":
            c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
            with c, pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model="auto", messages=msgs,  # type: ignore[arg-type]
                                          extra_body={"cascade": "auto"})  # fmt: skip
            body = e.value.body  # the "error" object
        else:
            a = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
            with a, pytest.raises(anthropic.BadRequestError) as e2:
                a.messages.create(model="auto", max_tokens=300, messages=msgs,  # type: ignore[arg-type]
                                  extra_body={"cascade": "auto"})  # fmt: skip
            body = e2.value.body["error"]  # type: ignore[index]
    assert body["code"] == "cascade_budget", body
    models = [att.get("model") for att in body.get("attempts") or []]
    assert "alpha" in models, f"the cascade_budget error lists no attempts: {json.dumps(body)}"


# 2 ------------------------------------------------------------------------------------------
async def test_a_step_the_cost_cap_refuses_after_an_unknown_bill_is_a_budget_stop(
    up: LocalUpstream,
) -> None:
    """Promised: cascade.py module docstring: "When no answer is accepted the result carries
    the best answer so far with accepted=False and the reason, or, with on_budget="raise"
    and a budget to blame, CascadeBudgetError is raised"; README (a cost cap holds on the
    wire): "any call after a bill of unknown size (an unpriced judge), is skipped with that
    reason".

    What happens: step 0's judge reports an unpriced call (cost None). `_climb`
    (cascade.py:524-526) then charges the step at its *estimate* and lets step 1 start,
    while the executor's `Run.room` (executor.py:659-661) sees a bill of unknown size and
    skips delta's call (`cost_cap`). The ladder reads that skip as a provider failure
    (`_step`, cascade.py:640-641: "every call failed"), `budget_hit` stays None, and the result
    is alpha's REJECTED answer, `stopped="no step's answer passed its check"`, returned
    normally although the caller asked `on_budget="raise"`: the cost cap cut the ladder
    short and nothing says so (the step's error even reads "routed to alpha, fallbacks
    [...]"). Over `satisfice serve` (a served policy's ladder with such a judge) that is a
    200 with the rejected answer.

    Fix: let the ladder see the executor's refusal as the budget's: e.g. `_climb` charges
    an unknown bill as exhausting the cap (spent = cap), so `_blocked` skips the step with
    hit="cost"; or have `Executor.cascade`'s `call` raise a typed error for a `cost_cap`
    skip that `_step` maps to `budget_hit="cost"`."""
    r = Router(registry(up.url), Policy(quality_floor=0.0))

    async def ask(msgs: Any) -> v.Answer:  # a judge whose call has no known price
        return v.Answer("judge-x", "VERDICT: FAIL\nCONFIDENCE: 90", tokens_in=10, tokens_out=5)

    ladder = Cascade([Step(("alpha",), v.judge(ask, "is it right")), Step(("delta",))],
                     max_cost_usd=0.05, on_budget="raise")  # fmt: skip
    up.script(wire("alpha"), reply("cheap answer"))
    up.script(wire("delta"), reply("top answer"))
    try:
        try:
            res = await r.chat("What is 2+2?", cascade=ladder)
        except CascadeBudgetError as e:
            assert e.result.budget_hit == "cost"  # type: ignore[union-attr]
            return
        assert res.cascade is not None
        steps = [(s.status, s.reason[:60]) for s in res.cascade.steps]
        pytest.fail(
            f"returned {res.model}'s rejected answer ({res.text!r}, accepted="
            f"{res.cascade.accepted}, budget_hit={res.cascade.budget_hit}, stopped="
            f"{res.cascade.stopped!r}, steps {steps}) where the cost cap refused the top step "
            "and on_budget='raise' asks for CascadeBudgetError"
        )
    finally:
        await r.aclose()


# 3 ------------------------------------------------------------------------------------------
async def test_a_named_ladder_whose_every_step_is_ruled_out_raises_a_satisfice_error(
    up: LocalUpstream,
) -> None:
    """Promised: README: "a named `Cascade` skips a step whose model the request cannot be
    sent to (its window, its output limit, a capability it needs)"; "Bad input, clear
    errors"; errors raised are satisfice's own (`SatisficeError`), naming the cause.

    What happens: a ladder [alpha] -> [beta] and a 12,000-word prompt, past both models'
    8,000-token windows. Both steps are skipped (`ruled_out`, hit=None), no step ran, no
    budget was hit, so `Cascade._finish` (cascade.py:652-700, the checks at 674 and 682)
    neither raises `AllAttemptsFailedError` (needs a step that ran) nor
    `CascadeBudgetError` (needs a
    budget): it returns a result with no answer, and `Executor.cascade` dies on
    `assert result.answer is not None` (executor.py:1523): a raw AssertionError (a 500
    `internal error` were it served; under `python -O`, a KeyError).

    Fix: in `_finish`, when `best is None` and no step ran, raise a SatisficeError naming
    each step's skip reason (e.g. `NoRouteError`/`ContextLengthError` "every step of the
    ladder was ruled out: step 0: alpha: context_window ...")."""
    r = Router(registry(up.url), Policy(quality_floor=0.0))
    ladder = Cascade([Step(("alpha",), v.regex("x")), Step(("beta",))])
    try:
        try:
            await r.chat("word " * 12000, cascade=ladder)
        except SatisficeError as e:
            assert "alpha" in str(e) and "beta" in str(e), e
            return
        except AssertionError as e:
            pytest.fail(f"a raw AssertionError escaped chat(): {e!r}")
        pytest.fail("a ladder that called nothing returned an answer")
    finally:
        await r.aclose()


# 5 ------------------------------------------------------------------------------------------
def test_a_client_leaving_mid_cascade_records_the_rejected_answer_as_rejected(
    master: None, up: LocalUpstream, tmp_path: Path
) -> None:
    """Promised: README: "a ladder that raises records its rejected answers as rejected,
    with its steps, which the report's escalation rates count"; `Attempt`'s docstring:
    outcome "rejected" is "answered, but ... a cascade step's check said no", and `verdict`
    is the check's verdict "when the answer was checked"; README: a non-streamed request
    whose client leaves "is recorded as `RequestCancelled`".

    What happens: a served tuned ladder [alpha, checked by regex("NEVER")] -> [delta];
    alpha answers and its check rejects it; delta hangs; the client (a raw socket on
    /v1/chat/completions, key with a budget and rate limits) hangs up. The request is
    recorded as RequestCancelled, but alpha's attempt says `outcome: "ok"` with `verdict:
    None`, and the record has no `cascade` steps: `Executor.cascade` writes verdicts onto
    attempts only in `marked()` after `ladder.run` returns or raises CascadeBudgetError
    (executor.py:1482-1496, called at 1498 and 1520); a cancellation skips it. The ledger
    thus shows an answer the ladder rejected as a plain success (the flywheel and the
    report read it as one).

    Fix: mark each attempt when its verdict is given (in the `on_check`/step bookkeeping,
    not after the climb), or catch CancelledError around `ladder.run`, mark what the
    climb has so far (expose `_Climb.records` on the exception) and re-raise."""
    ladder = Cascade([Step(("alpha",), v.regex("NEVER")), Step(("delta",))])
    router = Router(registry(up.url), Policy(quality_floor=0.0, cascades={"*": ladder}))
    up.script(wire("alpha"), reply("cheap"))
    up.script(wire("delta"), hang())
    with serving(router, tmp_path) as (url, svc):
        key = _key(url)
        body = json.dumps(
            {
                "model": "auto",
                "cascade": "auto",
                "max_tokens": 100,
                "messages": [{"role": "user", "content": "What is 2+2?"}],
            }
        ).encode()
        with post_chat(url, key, body):
            assert until(lambda: up.pending(wire("delta")) == 0, 10), "delta was never called"
            assert until(lambda: any(s.model == wire("delta") for s in up.seen(wire("delta"))), 5)
        # the socket is closed: the client is gone
        assert until(lambda: svc.in_flight == 0, 10)
        _budget_row(url, svc)
        svc.router.ledger.flush()
    (rec,) = list(read_records(str(tmp_path / "l.db")))
    assert rec.get("error_type") == "RequestCancelled", rec.get("error_type")
    alpha = [a for a in rec["attempts"] if a["model"] == "alpha"]
    assert alpha, rec["attempts"]
    assert alpha[0]["outcome"] == "rejected" and alpha[0]["verdict"] is not None, (
        f"alpha's answer, rejected by its check, is on record as {alpha[0]['outcome']!r} "
        f"with verdict {alpha[0]['verdict']!r}; cascade field: {rec.get('cascade')!r}"
    )


# 6 ------------------------------------------------------------------------------------------
async def test_an_answer_that_passed_its_check_is_not_thrown_away_by_a_later_check_cut_off(
    up: LocalUpstream,
) -> None:
    """Promised: cascade.py docstring: a step's "validator accepts one of their answers or
    sends the request up a step"; CascadeBudgetError is for "no answer accepted"; README:
    "Answers that came in before a latency budget cut their step off are kept ... (an
    unchecked one ranks below any checked answer)".

    What happens: a parallel step [alpha, beta] with a check that passes alpha's answer
    at once and hangs on beta's (a check that hangs); the ladder's 1 s latency budget cuts
    the step while beta is being checked. `Cascade.run`'s TimeoutError handler
    (cascade.py:475-493) marks the step "failed" ("cut off") and sets budget_hit, ignoring
    the PASS verdict alpha already has: with `on_budget="raise"` the request raises
    CascadeBudgetError "no answer accepted", and with "best" it returns alpha's answer as
    `accepted=False`, though its check accepted it.

    Fix: in the cut-off handler, when the step holds a passing verdict, finish it as
    accepted (the best passing answer, as `_climb` does after a whole step) instead of
    failing the step and raising."""
    r = Router(registry(up.url), Policy(quality_floor=0.0))
    never = asyncio.Event()

    async def fn(answer: v.Answer, ctx: v.Context) -> v.Verdict:
        if answer.model == "beta":
            await never.wait()  # this check hangs
        return v.Verdict(True, 0.9, "looks right")

    ladder = Cascade([Step(("alpha", "beta"), v.check(fn, name="slow")), Step(("delta",))],
                     latency_budget_ms=1000, on_budget="raise")  # fmt: skip
    up.script(wire("alpha"), reply("4"))
    up.script(wire("beta"), reply("4"))
    up.script(wire("delta"), reply("4"))
    try:
        try:
            res = await r.chat("What is 2+2?", cascade=ladder)
        except CascadeBudgetError as e:
            pytest.fail(f"alpha's answer passed its check, yet: CascadeBudgetError({e})")
        assert res.cascade is not None and res.cascade.accepted, res.cascade
        # beta's check never ended: no verdict on its attempt, and not "rejected" (a fail no
        # check gave had gone on its record, a made-up label for the flywheel)
        (b,) = [a for a in res.attempts if a.model == "beta"]
        assert b.verdict is None and b.outcome != "rejected", b
    finally:
        await r.aclose()


# 7 ------------------------------------------------------------------------------------------
async def test_the_steps_a_latency_cut_leaves_unstarted_are_on_the_record(
    up: LocalUpstream, tmp_path: Path
) -> None:
    """Promised: cascade.py docstring: a step the budgets rule out "is skipped and the next
    one considered", and `CascadeResult` carries "every step's accounting"; README: a
    ladder's record keeps "its steps, which the report's escalation rates count"; the
    brief's rule: no step skipped without record.

    What happens: a ladder [alpha] -> [gamma] -> [delta] with a 1 s latency budget; alpha's
    call hangs and is cut off. `Cascade.run` (cascade.py:470-495) abandons `_climb` at the
    TimeoutError and `_finish` reads only the records made so far: `steps` holds step 0
    alone. gamma and delta (the top of the ladder) appear nowhere in the result, the
    CascadeBudgetError's text or the ledger record, where a step the *cost* cap rules out
    is recorded as "skipped" with its reason.

    Fix: after a cut, append a "skipped" StepRecord for every step not reached, with the
    reason ("the latency budget ran out before it started") and its estimated cost."""
    r = Router(registry(up.url), Policy(quality_floor=0.0))
    r.attach(ledger=tmp_path / "l.db")
    ladder = Cascade([Step(("alpha",), v.regex("x")), Step(("gamma",), v.regex("x")),
                      Step(("delta",))], latency_budget_ms=1000)  # fmt: skip
    up.script(wire("alpha"), hang())
    async with r:
        with contextlib.suppress(CascadeBudgetError):
            await r.chat("What is 2+2?", cascade=ladder)
        assert r.ledger is not None and r.ledger.flush()
    (rec,) = list(read_records(str(tmp_path / "l.db")))
    steps = (rec.get("cascade") or {}).get("steps") or []
    assert [s["models"] for s in steps] == [["alpha"], ["gamma"], ["delta"]], (
        f"steps on record: {[(s['models'], s['status'], s['reason']) for s in steps]}"
    )
