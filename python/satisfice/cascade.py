"""Cascades: try cheap models first, check the answer, escalate only when the check says no.

A cascade is an ordered ladder of steps; each step is a set of models called in parallel
and a validator that accepts one of their answers or sends the request up a step:

    ladder = Cascade(
        [Step(("gpt-4.1-nano", "gemini-2.5-flash-lite"), agreement(choice_letter)),
         Step(("gpt-4.1-mini",), agreement(choice_letter)),
         Step(("claude-opus-4",))],                      # the top step takes what it gets
        latency_budget_ms=20_000, max_cost_usd=0.01)
    result = await router.chat(messages, cascade=ladder)   # every call via the executor
    result.text, result.total_cost_usd, result.cascade.steps[0].to_dict()

`router.chat(messages, cascade=True, accept=validator)` builds the ladder from the decision
instead (`Cascade.from_decision`: cheap pair -> mid -> top). The ladder itself is
transport-free: it calls models only through a `call(model_id, messages) -> Answer`, which
`router.chat` takes from the executor (retries, health, pricing, one attempt record per
call) and offline replay (`satisfice.replay`) from recorded outcomes, so both run exactly
this code.

Rules, in order, before each step starts:

1. Prediction: with `skip_below`, a step whose every model has P(good) below it is skipped:
   the predictor is sure a cheap model fails this prompt, so its call would only add cost
   and a sequential round trip. The last step is never skipped for this reason.
2. Cost: the step's estimated cost (sum of its models' estimates) must fit in what is left
   of `max_cost_usd`; an unpriced model never fits a cap.
3. Latency: the slowest model's p95 must fit in what is left of `latency_budget_ms`; a
   model with no p95 never fits a budget. A step that starts anyway is cut off when the
   budget runs out.

A step that breaks rule 2 or 3 is skipped and the next one considered. When no answer is
accepted the result carries the best answer so far with `accepted=False` and the reason,
or, with `on_budget="raise"` and a budget to blame, `CascadeBudgetError` is raised.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ._real import as_real
from ._verdict import check_name, checked
from .errors import (
    AllAttemptsFailedError,
    CascadeBudgetError,
    ConfigError,
    NoRouteError,
    ProviderError,
)
from .validators import Answer, Context, Validator, Verdict

if TYPE_CHECKING:
    from .decision import Decision
    from .providers.base import ChatResponse
    from .registry import Registry
    from .router import Router

__all__ = [
    "Bill",
    "Call",
    "Cascade",
    "CascadeBudgetError",
    "CascadeResult",
    "ModelEstimate",
    "Step",
    "StepRecord",
    "answer_from_chat",
    "current_step",
    "estimates_from",
    "routed_judge",
]

Call: TypeAlias = Callable[[str, list[dict[str, Any]]], Awaitable[Answer]]
# A step's bill (USD or None when unknown, tokens in, tokens out), from the caller's records.
Bill: TypeAlias = Callable[["StepRecord"], tuple[float | None, int, int]]
StepStatus: TypeAlias = Literal["accepted", "escalated", "skipped", "failed"]


@dataclass(frozen=True, slots=True)
class Step:
    """Models called in parallel, and the check one of their answers must pass.

    `validator=None` accepts the first successful answer: the usual last step.
    """

    models: tuple[str, ...]
    validator: Validator | None = None

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            object.__setattr__(self, "models", (self.models,))
        if not self.models:
            raise ConfigError("a cascade step needs at least one model")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"a cascade step lists a model twice: {self.models}")
        if self.validator is not None and not callable(self.validator):
            # Step(["a"], 5) had failed each answer later, as a check that raised
            raise ConfigError(
                "a cascade step's validator must be a validator (see satisfice.validators) "
                f"or None, got {type(self.validator).__name__}"
            )


@dataclass(frozen=True, slots=True)
class ModelEstimate:
    """What the router expects of one model on this request (None = unknown)."""

    p_good: float | None = None
    cost_usd: float | None = None
    p95_ms: float | None = None


@dataclass(slots=True)
class StepRecord:
    """One step: what ran, what it cost and what the validator said.

    `cost_usd` includes validator calls (a judge) and, through a router, failed calls billed
    at an estimate; it is None when some call's cost is unknown. Token counts add what the
    calls reported (0 for a call that reported none), or their estimate where the cost is one.
    """

    index: int
    models: tuple[str, ...]
    status: StepStatus
    reason: str
    answers: list[Answer] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    est_cost_usd: float | None = None
    cost_usd: float | None = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0

    @property
    def ran(self) -> bool:
        return self.status != "skipped"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "models": list(self.models),
            "status": self.status,
            "reason": self.reason,
            "answered": [a.model for a in self.answers],
            "verdicts": [
                {"passed": v.passed, "confidence": round(v.confidence, 4), "reason": v.reason}
                for v in self.verdicts
            ],
            "errors": dict(self.errors),
            "est_cost_usd": self.est_cost_usd,
            "cost_usd": self.cost_usd,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "latency_ms": round(self.latency_ms, 3),
        }


@dataclass(slots=True)
class CascadeResult:
    """The accepted answer (or the best one, flagged) and every step's accounting."""

    answer: Answer | None
    verdict: Verdict | None
    accepted: bool
    steps: list[StepRecord]
    stopped: str | None = None  # why no answer was accepted
    budget_hit: Literal["latency", "cost"] | None = None

    @property
    def model(self) -> str | None:
        return None if self.answer is None else self.answer.model

    @property
    def cost_usd(self) -> float | None:
        """Total USD over every step and validator call; None if any cost is unknown."""
        total = 0.0
        for s in self.steps:
            if s.cost_usd is None:
                return None
            total += s.cost_usd
        return total

    @property
    def tokens_in(self) -> int:
        return sum(s.tokens_in for s in self.steps)

    @property
    def tokens_out(self) -> int:
        return sum(s.tokens_out for s in self.steps)

    @property
    def latency_ms(self) -> float:
        return sum(s.latency_ms for s in self.steps)

    @property
    def sequential_steps(self) -> int:
        """Steps that actually ran one after another: the cascade's latency multiplier."""
        return sum(1 for s in self.steps if s.ran)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "accepted": self.accepted,
            "stopped": self.stopped,
            "budget_hit": self.budget_hit,
            "reason": None if self.verdict is None else self.verdict.reason,
            "cost_usd": self.cost_usd,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "latency_ms": round(self.latency_ms, 3),
            "sequential_steps": self.sequential_steps,
            "steps": [s.to_dict() for s in self.steps],
        }


@dataclass(slots=True)
class _Climb:
    """One request's progress up the ladder (what a cut-off must still be able to report)."""

    msgs: list[dict[str, Any]]
    p_good: dict[str, float]
    records: list[StepRecord] = field(default_factory=list)
    pool: list[Answer] = field(default_factory=list)  # every answer: agreement's peers
    best: tuple[Answer, Verdict] | None = None
    spent: float = 0.0
    elapsed: float = 0.0
    budget_hit: Literal["latency", "cost"] | None = None
    current: StepRecord | None = None  # the step in flight
    arrived: list[Answer] = field(default_factory=list)  # its answers, as each one comes

    def offer(self, a: Answer, v: Verdict) -> None:
        """Keep `a` as the best answer so far if its verdict is at least as confident (ties
        go to the later answer: it came from higher up the ladder); one never checked
        (`_LATE`) only when there is none."""
        if self.best is None or (v is not _LATE and v.confidence >= self.best[1].confidence):
            self.best = (a, v)

    t0: float = 0.0  # when it started
    deadline: float | None = None  # the request's (perf_counter), for the checks
    on_check: Callable[[Verdict, str, int], None] | None = None
    billed: Bill | None = None
    room: Callable[[], float | None] | None = None  # see Cascade.run
    ruled_out: Mapping[str, str] = field(default_factory=dict)  # see Cascade.run


_NO_ESTIMATE = ModelEstimate()
_STEP: contextvars.ContextVar[int | None] = contextvars.ContextVar("satisfice_step", default=None)


def current_step() -> int | None:
    """Inside a cascade's `call`: the index of the step making the call (else None)."""
    return _STEP.get()


class Cascade:
    """An ordered ladder of steps with a latency budget, a cost cap and a skip rule.

    Immutable once built, so one Cascade serves concurrent requests.
    """

    __slots__ = ("clock", "latency_budget_ms", "max_cost_usd", "on_budget", "skip_below", "steps")

    def __init__(
        self,
        steps: Sequence[Step | Sequence[str]],
        *,
        validator: Validator | None = None,
        latency_budget_ms: float | None = None,
        max_cost_usd: float | None = None,
        on_budget: Literal["best", "raise"] = "best",
        skip_below: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """`steps` are Steps, or model ids / lists of them that get `validator` (all but
        the last)."""
        if isinstance(steps, str):  # one model id: a ladder of its letters otherwise
            raise ConfigError(
                f"a cascade's steps are a list: Cascade([{steps!r:.40}, ...]), not one model id"
            )
        if not steps:
            raise ConfigError("a cascade needs at least one step")
        built: list[Step] = []
        for i, s in enumerate(steps):
            if isinstance(s, Step):
                built.append(s)
            elif isinstance(s, str):  # a bare model id is a one-model step, not its letters
                built.append(Step((s,), None if i == len(steps) - 1 else validator))
            elif isinstance(s, list | tuple) and s and all(isinstance(m, str) for m in s):
                last = i == len(steps) - 1
                built.append(Step(tuple(s), None if last else validator))
            else:
                raise ConfigError(
                    f"cascade step {i} must be a Step, a model id or a list of model ids, "
                    f"got {s!r:.60}"
                )

        def number(v: object) -> bool:
            return as_real(v) is not None

        for name, v in (("latency_budget_ms", latency_budget_ms), ("max_cost_usd", max_cost_usd)):
            if v is not None and not (number(v) and v >= 0):
                raise ConfigError(f"cascade {name} must be a finite number >= 0, got {v!r:.40}")
        if on_budget not in ("best", "raise"):
            raise ConfigError(f"on_budget must be 'best' or 'raise', got {on_budget!r:.40}")
        if skip_below is not None and not (number(skip_below) and 0.0 <= skip_below <= 1.0):
            raise ConfigError(f"skip_below must be a number in [0, 1], got {skip_below!r:.40}")
        self.steps: tuple[Step, ...] = tuple(built)
        # as plain floats (a numpy scalar had reached Policy.save's JSON)
        self.latency_budget_ms = as_real(latency_budget_ms)
        self.max_cost_usd = as_real(max_cost_usd)
        self.on_budget = on_budget
        self.skip_below = as_real(skip_below)
        self.clock = clock

    def __repr__(self) -> str:
        ladder = " -> ".join("[" + ", ".join(s.models) + "]" for s in self.steps)
        return f"Cascade({ladder})"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form a policy stores (`from_dict` reads it back); every check must be a
        built-in one (`validators.to_spec`)."""
        from .validators import to_spec

        out: dict[str, Any] = {
            "steps": [
                {"models": list(s.models)}
                | ({} if s.validator is None else {"check": to_spec(s.validator)})
                for s in self.steps
            ]
        }
        for name in ("latency_budget_ms", "max_cost_usd", "skip_below"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.on_budget != "best":
            out["on_budget"] = self.on_budget
        return out

    @classmethod
    def from_dict(cls, d: object, where: str = "cascade") -> Cascade:
        """A ladder from its JSON form; errors name `where` and the field."""
        from .validators import from_spec

        if not isinstance(d, Mapping) or not isinstance(d.get("steps"), list):
            raise ConfigError(f'{where}: expected {{"steps": [...], ...}}, got {d!r:.80}')
        unknown = set(d) - {"steps", "latency_budget_ms", "max_cost_usd", "skip_below", "on_budget"}
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
        steps = []
        for i, s in enumerate(d["steps"]):
            models = s.get("models") if isinstance(s, Mapping) else None
            if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
                raise ConfigError(f'{where}.steps[{i}]: expected {{"models": [ids], "check": ...}}')
            if set(s) - {"models", "check"}:
                raise ConfigError(
                    f"{where}.steps[{i}]: unknown field(s) {sorted(set(s) - {'models', 'check'})}"
                )
            try:
                check = None if s.get("check") is None else from_spec(s["check"])
            except ConfigError as e:
                raise ConfigError(f"{where}.steps[{i}].check: {e}") from None
            try:
                steps.append(Step(tuple(models), check))
            except ConfigError as e:
                raise ConfigError(f"{where}.steps[{i}]: {e}") from None
        kw = {k: d[k] for k in ("latency_budget_ms", "max_cost_usd", "skip_below") if k in d}
        for k, val in kw.items():
            if isinstance(val, bool) or not isinstance(val, int | float) or abs(val) > 1e300:
                raise ConfigError(f"{where}.{k}: expected a finite number, got {val!r:.40}")
        try:
            return cls(steps, on_budget=d.get("on_budget", "best"), **kw)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def capped(self, max_cost_usd: float) -> Cascade:
        """This ladder with a cost cap (the same steps, budgets and rules otherwise)."""
        return Cascade(
            self.steps,
            latency_budget_ms=self.latency_budget_ms,
            max_cost_usd=max_cost_usd,
            on_budget=self.on_budget,
            skip_below=self.skip_below,
            clock=self.clock,
        )

    @classmethod
    def from_decision(
        cls,
        decision: Decision,
        validator: Validator,
        *,
        width: int = 2,
        mid: bool = True,
        **kw: Any,
    ) -> Cascade:
        """The default ladder for one routed request: the `width` cheapest candidates in
        parallel, then (with `mid`) the cheapest candidate predicted clearly better than
        them, then the candidate of highest P(good). Budgets default to the decision's
        latency SLO and cost cap.

        Route with a low quality floor (e.g. `router.route(msgs, quality_floor=0.0)`) so
        the cheap models are among the candidates at all.
        """
        cands = [c for c in decision.candidates if c.est_cost_usd is not None]
        if not cands:
            raise ConfigError(
                "no priced candidate in the decision; a cascade needs cost estimates: "
                "add prices to the registry or write the ladder yourself"
            )
        top = max(cands, key=lambda c: (c.p_good, -(c.est_cost_usd or 0.0)))
        cheaper = sorted(
            (
                c
                for c in cands
                if c is not top and (c.est_cost_usd or 0.0) < (top.est_cost_usd or 0.0)
            ),
            key=lambda c: c.est_cost_usd or 0.0,
        )
        first = cheaper[: max(width, 1)]
        steps: list[Step] = []
        if first:
            steps.append(Step(tuple(c.model for c in first), validator))
            best_cheap = max(c.p_good for c in first)
            want = (best_cheap + top.p_good) / 2.0
            middle = next((c for c in cheaper[len(first) :] if c.p_good >= want), None)
            if mid and middle is not None:
                steps.append(Step((middle.model,), validator))
        steps.append(Step((top.model,)))
        c = decision.constraints
        kw.setdefault("latency_budget_ms", c.latency_slo_ms)
        kw.setdefault("max_cost_usd", c.max_cost_usd)
        return cls(steps, **kw)

    async def run(
        self,
        call: Call,
        messages: Sequence[Mapping[str, Any]] | str,
        *,
        estimates: Mapping[str, ModelEstimate] | None = None,
        deadline: float | None = None,
        on_check: Callable[[Verdict, str, int], None] | None = None,
        billed: Bill | None = None,
        ruled_out: Mapping[str, str] | None = None,
        steps: list[StepRecord] | None = None,
        room: Callable[[], float | None] | None = None,
    ) -> CascadeResult:
        """Run the ladder for one request. `ruled_out` names the models the request cannot
        be sent to (its window, its output limit, a capability it needs), with why: a step
        calling one is skipped. `estimates` (see `estimates_from`) give each
        model's P(good), estimated cost and p95; without them only the cost of calls
        already made and the time already spent limit the cascade. `deadline` (a
        `time.perf_counter()` value) bounds each check: one still running then fails.
        `on_check(verdict, check_name, step)` hears every verdict as it is given, with the
        calls the check made (a judge's), so a caller bills them even if the climb fails.
        `billed(step_record)` gives a step's bill from the caller's own records, which hold
        what the step's answers cannot: calls that failed and were billed anyway (a timeout,
        at an estimate); the step's cost, and what the cost cap counts as spent, is then that
        bill. Without it a step's bill is its answers' and its checks' calls. `steps`: a
        list the step records are kept in as they are made, for a caller whose request may
        be cancelled midway (its record keeps the steps that ran and their verdicts).
        `room()`: what the request's cost cap has left, which the checks' own router calls
        (a judge's) stay within."""
        msgs: list[dict[str, Any]] = (
            [{"role": "user", "content": messages}]
            if isinstance(messages, str)
            else [dict(m) for m in messages]
        )
        est = estimates or {}
        climb = _Climb(msgs, {m: e.p_good for m, e in est.items() if e.p_good is not None})
        climb.deadline = deadline
        climb.on_check = on_check
        climb.billed, climb.room = billed, room
        climb.ruled_out = ruled_out or {}
        if steps is not None:
            climb.records = steps
        if self.latency_budget_ms is None:  # no timer to arm: the common case stays cheap
            done = await self._climb(climb, call, est)
        else:
            # One timer for the whole request: a step that runs past its p95 is cut off
            # when the budget, not the step's estimate, runs out.
            try:
                async with asyncio.timeout(self.latency_budget_ms / 1000.0):
                    done = await self._climb(climb, call, est)
            except TimeoutError:
                rec = climb.current
                if rec is not None:
                    rec.status, rec.reason = "failed", _CUT_OFF
                    if climb.billed is None:  # the cancelled calls may be billed: how much?
                        rec.cost_usd = None
                    else:  # the caller put them on record, at an estimate
                        rec.cost_usd, rec.tokens_in, rec.tokens_out = climb.billed(rec)
                    rec.latency_ms = (self.clock() - climb.t0) * 1000.0
                    # Answers that came before the cut are kept (they were billed, and one
                    # may be the best so far); one not checked yet ranks below any checked.
                    if not rec.answers:
                        rec.answers = list(climb.arrived)
                    rec.verdicts += [_LATE] * (len(rec.answers) - len(rec.verdicts))
                    for a, v in zip(rec.answers, rec.verdicts, strict=True):
                        climb.offer(a, v)
                    # an answer that passed its check before the cut (a second check was
                    # still running) is the step's accepted answer: it had been thrown away
                    if passed := [
                        (a, v) for a, v in zip(rec.answers, rec.verdicts, strict=True) if v.passed
                    ]:
                        a, v = max(passed, key=lambda p: p[1].confidence)
                        rec.status, rec.reason = "accepted", v.reason
                        return CascadeResult(a, v, True, climb.records)
                climb.budget_hit = climb.budget_hit or "latency"
                done = None
                # the steps it left unstarted, on the record as a cost cap's are
                for i in range(len(climb.records), len(self.steps)):
                    climb.records.append(
                        StepRecord(i, self.steps[i].models, "skipped", _NOT_STARTED)
                    )
        if done is not None:
            return done
        return self._finish(climb.records, climb.best, climb.budget_hit)

    async def _climb(
        self, climb: _Climb, call: Call, est: Mapping[str, ModelEstimate]
    ) -> CascadeResult | None:
        """Run steps up the ladder; the accepted result, or None when none was accepted."""
        last = len(self.steps) - 1
        for i, step in enumerate(self.steps):
            why, step_cost, hit = self._blocked(
                step, est, i == last, climb.spent, climb.elapsed, climb.deadline
            )
            unfit = [f"{m}: {climb.ruled_out[m]}" for m in step.models if m in climb.ruled_out]
            if unfit:  # whatever its budgets say, the request cannot be sent there
                why, hit = "; ".join(unfit), None
            if why is not None:
                climb.budget_hit = climb.budget_hit or hit
                climb.records.append(
                    StepRecord(i, step.models, "skipped", why, est_cost_usd=step_cost)
                )
                continue
            rec = StepRecord(i, step.models, "escalated", "", est_cost_usd=step_cost)
            climb.records.append(rec)
            climb.current, climb.t0, climb.arrived = rec, self.clock(), []
            token = _STEP.set(i)  # the step's calls (tasks included) see their index
            try:
                await self._step(rec, step, call, climb)
            finally:
                _STEP.reset(token)
            climb.current = None
            # An unknown bill (an unpriced call) is charged at the step's estimate, not $0:
            # under a cap every step that ran had one, so the cap still holds.
            climb.spent += rec.cost_usd if rec.cost_usd is not None else rec.est_cost_usd or 0.0
            climb.elapsed += rec.latency_ms
            if rec.status == "accepted":
                k = rec.verdicts.index(
                    max((v for v in rec.verdicts if v.passed), key=lambda v: v.confidence)
                )
                return CascadeResult(rec.answers[k], rec.verdicts[k], True, climb.records)
            for a, v in zip(rec.answers, rec.verdicts, strict=True):
                climb.offer(a, v)
        return None

    def _blocked(
        self,
        step: Step,
        est: Mapping[str, ModelEstimate],
        is_last: bool,
        spent: float,
        elapsed: float,
        deadline: float | None = None,
    ) -> tuple[str | None, float | None, Literal["latency", "cost"] | None]:
        """(why the step may not start, its estimated cost, which budget blocked it).
        `deadline`: the request's (perf_counter); a step whose known p95 does not fit the
        time left before it is not started (one with no p95 may be: the deadline cuts its
        calls off), where the ladder's own latency budget refuses unknown p95s."""
        models = [est.get(m, _NO_ESTIMATE) for m in step.models]
        costs = [e.cost_usd for e in models]
        step_cost = None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)
        if self.skip_below is not None and not is_last:
            ps = [e.p_good for e in models]
            if all(p is not None and p < self.skip_below for p in ps):
                top = max(p or 0.0 for p in ps)
                return (
                    f"predicted P(good) <= {top:.2f} < {self.skip_below:g} for every "
                    "model: the prompt needs a stronger step",
                    step_cost,
                    None,
                )
        if self.max_cost_usd is not None:
            if step_cost is None:
                unknown = [m for m, c in zip(step.models, costs, strict=True) if c is None]
                return (f"no cost estimate for {', '.join(unknown)} under a cost cap", None, "cost")
            if spent + step_cost > self.max_cost_usd:
                return (
                    f"estimated ${step_cost:.6f} on top of ${spent:.6f} spent exceeds the "
                    f"${self.max_cost_usd:.6f} cap",
                    step_cost,
                    "cost",
                )
        if self.latency_budget_ms is not None:
            p95s = [e.p95_ms for e in models]
            if any(p is None for p in p95s):
                unknown = [m for m, p in zip(step.models, p95s, strict=True) if p is None]
                return (
                    f"no p95 latency for {', '.join(unknown)} under a latency budget",
                    step_cost,
                    "latency",
                )
            need = max(p or 0.0 for p in p95s)
            left = self.latency_budget_ms - elapsed
            if need > left:
                return (
                    f"p95 {need:.0f} ms does not fit the {left:.0f} ms left of the "
                    f"{self.latency_budget_ms:.0f} ms budget",
                    step_cost,
                    "latency",
                )
        if deadline is not None:
            known = [e.p95_ms for e in models if e.p95_ms is not None]
            left = (deadline - time.perf_counter()) * 1000.0
            if known and max(known) > left:
                return (
                    f"p95 {max(known):.0f} ms does not fit the {max(left, 0.0):.0f} ms left "
                    "before the request's deadline",
                    step_cost,
                    "latency",
                )
        return None, step_cost, None

    async def _step(self, rec: StepRecord, step: Step, call: Call, climb: _Climb) -> None:
        got = await _calls(call, step.models, climb.msgs, climb.arrived)
        slowest = 0.0
        for model, out in zip(step.models, got, strict=True):
            if isinstance(out, BaseException):
                rec.errors[model] = f"{type(out).__name__}: {out}"
                continue
            rec.answers.append(out)
            slowest = max(slowest, out.latency_ms or 0.0)
        climb.pool.extend(rec.answers)
        on_cut = None
        if climb.on_check is not None and step.validator is not None:
            # a check cut off (the latency budget, the caller gone): its calls so far (a
            # judge's, the one cut off at an estimate) go on the step's bill all the same
            on_cut = partial(_bill_cut, climb.on_check, check_name(step.validator), rec.index)
        if rec.answers:
            ctx = Context(climb.msgs, climb.pool, climb.p_good or None)
            for a in rec.answers:
                left = None if climb.deadline is None else climb.deadline - time.perf_counter()
                v = (
                    UNCHECKED
                    if step.validator is None
                    # a caller with records of its own (billed=: a router request) keeps
                    # the check's calls on them: a router call in the check writes none
                    else await checked(
                        step.validator,
                        a,
                        ctx,
                        left,
                        on_cut,
                        climb.billed is not None,
                        climb.room,
                    )
                )
                rec.verdicts.append(v)
                if climb.on_check is not None and v.calls:
                    assert step.validator is not None
                    climb.on_check(v, check_name(step.validator), rec.index)
        rec.cost_usd, rec.tokens_in, rec.tokens_out = (climb.billed or _own_bill)(rec)
        # A step lasts as long as its slowest call says it took, or as long as we waited.
        rec.latency_ms = max((self.clock() - climb.t0) * 1000.0, slowest)
        passed = [v for v in rec.verdicts if v.passed]
        if not rec.answers and got and all(_capped_out(e, rec.index) for e in got):
            # the executor's cost cap left them nothing (an unknown bill before, charged at
            # its estimate here, leaves the executor none): the budget stopped the ladder,
            # not a failure (its rejected answer had come back as a result)
            rec.status, rec.reason = "skipped", "the cost cap leaves nothing for its answer"
            climb.budget_hit = climb.budget_hit or "cost"
        elif not rec.answers:
            rec.status, rec.reason = "failed", "every call failed"
        elif passed:
            rec.status = "accepted"
            rec.reason = max(passed, key=lambda v: v.confidence).reason
        elif len(rec.verdicts) == 1:
            rec.reason = rec.verdicts[0].reason
        else:
            rec.reason = "; ".join(
                f"{a.model}: {v.reason}" for a, v in zip(rec.answers, rec.verdicts, strict=True)
            )

    def _finish(
        self,
        records: list[StepRecord],
        best: tuple[Answer, Verdict] | None,
        budget_hit: Literal["latency", "cost"] | None,
    ) -> CascadeResult:
        if budget_hit is not None:
            stopped = (
                f"the {'latency budget' if budget_hit == 'latency' else 'cost cap'} "
                "ruled out the remaining steps"
            )
        else:
            stopped = "no step's answer passed its check"
        result = CascadeResult(
            None if best is None else best[0],
            None if best is None else best[1],
            False,
            records,
            stopped,
            budget_hit,
        )
        ran = [r for r in records if r.ran]
        if best is None and ran and budget_hit is None:
            attempts = [f"{m}: {e}" for r in ran for m, e in r.errors.items()]
            raise AllAttemptsFailedError(
                "every model the cascade called failed: "
                + "; ".join(attempts[:6])
                + "; check the providers' health or add fallbacks to the ladder",
                attempts,
            )
        if best is None and not ran and budget_hit is None:
            # every step ruled out for this request (a window, a capability): no call was
            # made, and the result had had no answer (a raw AssertionError in the executor)
            raise NoRouteError(
                "every step of the ladder was ruled out for this request: "
                + "; ".join(f"step {r.index} ({', '.join(r.models)}): {r.reason}" for r in records)
                + "; add a step whose model can take it, or shorten the prompt"
            )
        if budget_hit is not None and (self.on_budget == "raise" or best is None):
            skipped = "; ".join(
                f"step {r.index}: {r.reason}"
                for r in records
                if r.status == "skipped" or r.status == "failed"
            )
            raise CascadeBudgetError(
                f"no answer accepted: {stopped} ({skipped}); raise the budget or pass "
                "on_budget='best' to take the best answer so far",
                result,
            )
        return result


# The last step's answer is taken unchecked: this verdict says so, and is kept off the
# attempt's record (a "pass" no check gave would train the flywheel on made-up labels).
UNCHECKED = Verdict(True, 1.0, "last step: accepted without a check")
_CUT_OFF = "cut off: the latency budget ran out mid-step"
_NOT_STARTED = "not started: the latency budget ran out before it"
_LATE = Verdict(False, 0.0, "arrived as the latency budget ran out: not checked")


def _capped_out(out: object, step: int) -> bool:
    """Whether a step's call failed only because the cost cap left it no room: every attempt
    of the step on its error was skipped for the cap."""
    mine = [a for a in getattr(out, "attempts", None) or () if getattr(a, "step", None) == step]
    return bool(mine) and all(a.outcome == "skipped" and a.error_type == "cost_cap" for a in mine)


async def _calls(
    call: Call, models: tuple[str, ...], msgs: list[dict[str, Any]], arrived: list[Answer]
) -> list[Answer | BaseException]:
    """Each model's answer (or provider failure); each answer is also put in `arrived` as
    it comes, so a latency budget that cuts the step off keeps those already in."""
    if len(models) == 1:  # no task to schedule for a single call
        return [await _attempt(call, models[0], msgs, arrived)]
    tasks = [asyncio.ensure_future(_attempt(call, m, msgs, arrived)) for m in models]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        # one call raised what is no provider failure (or the step was cancelled): the
        # others are cancelled and awaited, not left running, billed and unrecorded. Not a
        # TaskGroup: its error group and the cancel request it leaves on the caller's task
        # (Python 3.11) would change what the caller sees.
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _attempt(
    call: Call, model: str, msgs: list[dict[str, Any]], arrived: list[Answer]
) -> Answer | BaseException:
    # A provider failure costs this model its turn, not the whole step.
    try:
        answer = await call(model, msgs)
    except ProviderError as e:
        return e
    arrived.append(answer)
    return answer


def _bill_cut(
    on_check: Callable[[Verdict, str, int], None], name: str, step: int, v: Verdict
) -> None:
    on_check(v, name, step)


def _own_bill(rec: StepRecord) -> tuple[float | None, int, int]:
    """A step's bill from what it holds: its answers and the calls its checks made (a
    judge's); the cost is None when one of them is unknown."""
    cost: float | None = 0.0
    tokens_in = tokens_out = 0
    for a in (*rec.answers, *(c for v in rec.verdicts for c in v.calls)):
        cost = None if cost is None or a.cost_usd is None else cost + a.cost_usd
        tokens_in += a.tokens_in or 0
        tokens_out += a.tokens_out or 0
    return cost, tokens_in, tokens_out


def estimates_from(decision: Decision, registry: Registry) -> dict[str, ModelEstimate]:
    """Each candidate's P(good) and estimated cost from a decision, with its p95 from the
    registry: what the cascade's skip, cost and latency rules read."""
    out: dict[str, ModelEstimate] = {}
    for c in decision.candidates:
        p95 = registry[c.model].p95_latency_ms if c.model in registry else None
        out[c.model] = ModelEstimate(c.p_good, c.est_cost_usd, p95)
    return out


def answer_from_chat(
    model: str, response: ChatResponse, *, cost_usd: float | None, latency_ms: float | None = None
) -> Answer:
    """An Answer from a provider's ChatResponse (what a production `call` returns)."""
    from .validators import openai_logprobs

    usage = response.usage
    return Answer(
        model=model,
        text=response.text,
        tokens_in=None if usage is None else usage.prompt_tokens,
        tokens_out=None if usage is None else usage.completion_tokens,
        cost_usd=cost_usd,
        latency_ms=latency_ms,
        logprobs=openai_logprobs(response.raw),
        finish_reason=response.finish_reason,
    )


def routed_judge(
    router: Router, call: Call, *, quality_floor: float = 0.5, **constraints: Any
) -> Callable[[list[dict[str, Any]]], Awaitable[Answer]]:
    """A judge `ask` for `validators.judge` that routes each grading prompt through `router`
    (cheapest model predicted good enough at `quality_floor`) and calls it with `call`.
    Checking a request with a cost cap (or a server budget's hold), it routes within what
    that leaves (`room_for`: a model estimated past it is ruled out, none left is a failed
    check); the call itself is `call`'s, bounded by what it sends (its max_tokens)."""

    async def ask(messages: list[dict[str, Any]]) -> Answer:
        from ._verdict import _JUDGING, RoomHold, room_for

        given, hold = dict(constraints), RoomHold()
        try:  # the room it is routed within, held until its call is on the check's bill
            cap = room_for(given.get("max_cost_usd"), hold)
            if cap is not None:
                given["max_cost_usd"] = cap
            decision = router.route(messages, quality_floor=quality_floor, **given)
            token = _JUDGING.set(hold)  # (a call through a router takes the room over)
            try:
                return await call(decision.model, messages)
            finally:
                _JUDGING.reset(token)
        finally:
            hold.release()

    return ask
