"""Per-step routing for multi-step jobs: each step routed under its own constraints.

An agent's plan needs a strong model; its tool-argument extraction and the final summary
usually do not. A `Job` routes every step through one router with that step's constraints,
calls the chosen model (then its fallbacks) or a cascade, and rolls the costs up per job:

    job = Job(router, call, name="ticket-4711", max_cost_usd=0.05)
    plan = await job.step("plan", plan_msgs, quality_floor=0.9)
    args = await job.step("extract", extract_msgs(plan.text), needs=("json",), max_cost_usd=0.002)
    done = await job.step("summarise", summary_msgs(args.text), latency_slo_ms=3000)
    job.cost_usd, job.to_dict()

A job-level `max_cost_usd` caps the whole job: each step may spend at most what is left, so
a late step is routed to something cheaper (or gets NoRouteError) instead of overspending.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .cascade import Call, Cascade, CascadeResult, estimates_from
from .errors import AllAttemptsFailedError, ConfigError, ProviderError
from .policy import Constraints
from .validators import Answer

if TYPE_CHECKING:
    from .router import Decision, Router

__all__ = ["Job", "JobStep"]


@dataclass(slots=True)
class JobStep:
    """One routed step: the decision, the answer used and what the step cost."""

    name: str
    decision: Decision
    answer: Answer
    failed: dict[str, str] = field(default_factory=dict)  # model -> error, before `answer`
    cascade: CascadeResult | None = None

    @property
    def text(self) -> str:
        return self.answer.text

    @property
    def cost_usd(self) -> float | None:
        if self.cascade is not None:
            return self.cascade.cost_usd
        return self.answer.cost_usd

    @property
    def tokens_in(self) -> int:
        if self.cascade is not None:
            return self.cascade.tokens_in
        return self.answer.tokens_in or 0

    @property
    def tokens_out(self) -> int:
        if self.cascade is not None:
            return self.cascade.tokens_out
        return self.answer.tokens_out or 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.answer.model,
            "routed_to": self.decision.model,
            "failed": dict(self.failed),
            "cost_usd": self.cost_usd,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cascade": None if self.cascade is None else self.cascade.to_dict(),
        }


class Job:
    """A multi-step job: steps routed one by one, their costs rolled up."""

    def __init__(
        self,
        router: Router,
        call: Call,
        *,
        name: str = "job",
        max_cost_usd: float | None = None,
    ) -> None:
        if max_cost_usd is not None and not max_cost_usd >= 0:
            raise ConfigError(f"job max_cost_usd must be >= 0, got {max_cost_usd!r}")
        self.router = router
        self.call = call
        self.name = name
        self.max_cost_usd = max_cost_usd
        self.steps: list[JobStep] = []

    @property
    def cost_usd(self) -> float | None:
        """USD over every step; None when some step's cost is unknown (unpriced)."""
        total = 0.0
        for s in self.steps:
            c = s.cost_usd
            if c is None:
                return None
            total += c
        return total

    @property
    def spent_usd(self) -> float:
        """What a job cap is charged: each step's cost, or its routed estimate when the
        provider's cost is unknown. Under a cap every step is routed with max_cost, which
        no unpriced model passes, so such a step always has an estimate."""
        total = 0.0
        for s in self.steps:
            c = s.cost_usd if s.cost_usd is not None else s.decision.est_cost_usd
            total += c if c is not None else 0.0  # only possible for a job without a cap
        return total

    async def step(
        self,
        name: str,
        messages: Sequence[Mapping[str, Any]] | str,
        constraints: Constraints | Mapping[str, Any] | None = None,
        *,
        cascade: Cascade | None = None,
        **overrides: Any,
    ) -> JobStep:
        """Route `messages` under this step's constraints and answer them.

        Without `cascade` the decision's model is called, then its fallbacks on provider
        errors; with one, the cascade runs on the decision's estimates. The step is
        recorded on the job either way.
        """
        c = Constraints.of(constraints, **overrides)
        if self.max_cost_usd is not None:
            left = max(self.max_cost_usd - self.spent_usd, 0.0)
            if c.max_cost_usd is None or c.max_cost_usd > left:
                c = Constraints.of(c, max_cost_usd=left)
        decision = self.router.route(messages, c)
        msgs = (
            [{"role": "user", "content": messages}]
            if isinstance(messages, str)
            else [dict(m) for m in messages]
        )
        if cascade is not None:
            est = estimates_from(decision, self.router.registry)
            result = await cascade.run(self.call, msgs, estimates=est)
            if result.answer is None:  # run() raises before this; kept for the type checker
                raise ConfigError(f"step {name!r}: the cascade returned no answer")
            rec = JobStep(name, decision, result.answer, cascade=result)
        else:
            rec = await self._direct(name, decision, msgs)
        self.steps.append(rec)
        return rec

    async def _direct(self, name: str, decision: Decision, msgs: list[dict[str, Any]]) -> JobStep:
        failed: dict[str, str] = {}
        for model in (decision.model, *decision.fallbacks):
            try:
                answer = await self.call(model, msgs)
            except ProviderError as e:
                failed[model] = f"{type(e).__name__}: {e}"
                continue
            return JobStep(name, decision, answer, failed)
        attempts = [f"{m}: {e}" for m, e in failed.items()]
        raise AllAttemptsFailedError(
            f"job {self.name!r} step {name!r}: every routed model failed ("
            + "; ".join(attempts)
            + "); check provider health or loosen the step's constraints for more fallbacks",
            attempts,
        )

    def to_dict(self) -> dict[str, Any]:
        """The job's ledger: each step, and the totals."""
        return {
            "job": self.name,
            "cost_usd": self.cost_usd,
            "max_cost_usd": self.max_cost_usd,
            "tokens_in": sum(s.tokens_in for s in self.steps),
            "tokens_out": sum(s.tokens_out for s in self.steps),
            "steps": [s.to_dict() for s in self.steps],
        }
