"""Per-step routing for multi-step jobs: each step routed under its own constraints.

An agent's plan needs a strong model; its tool-argument extraction and the final summary
usually do not. A `Job` sends every step through `router.chat` with that step's
constraints (a single call with fallbacks, or a cascade), so each step is one request with
one record, and rolls the costs up per job:

    job = Job(router, name="ticket-4711", max_cost_usd=0.05)
    plan = await job.step("plan", plan_msgs, quality_floor=0.9)
    args = await job.step("extract", extract_msgs(plan.text), needs=("json",), max_cost_usd=0.002)
    done = await job.step("summarise", summary_msgs(args.text), latency_slo_ms=3000)
    job.cost_usd, job.to_dict()

A job-level `max_cost_usd` caps the whole job: each step may spend at most what is left, so
a late step is routed to something cheaper (or gets NoRouteError) instead of overspending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Unpack

from .errors import ConfigError
from .policy import Constraints, _finite_number
from .result import billed_cost

if TYPE_CHECKING:
    from .cascade import Cascade
    from .decision import Decision
    from .result import ChatResult
    from .router import RequestOptions, Router
    from .validators import Validator

__all__ = ["Job", "JobStep"]


@dataclass(slots=True)
class JobStep:
    """One routed step: its name and the request's result (the one record)."""

    name: str
    result: ChatResult
    held_usd: float | None = None  # the step's share of the job's cap, when it had one

    @property
    def decision(self) -> Decision:
        return self.result.decision

    @property
    def text(self) -> str:
        return self.result.text

    @property
    def cost_usd(self) -> float | None:
        """Every billed call of the step (fallbacks, cascade steps); None if any is unpriced."""
        return self.result.total_cost_usd

    @property
    def tokens_in(self) -> int:
        return sum(a.usage.prompt_tokens for a in self.result.attempts if a.usage is not None)

    @property
    def tokens_out(self) -> int:
        return sum(a.usage.completion_tokens for a in self.result.attempts if a.usage is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.result.model,
            "routed_to": self.decision.model,
            "cost_usd": self.cost_usd,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "record": self.result.to_record(),
        }


class Job:
    """A multi-step job: steps routed one by one through `router.chat`, costs rolled up."""

    def __init__(
        self, router: Router, *, name: str = "job", max_cost_usd: float | None = None
    ) -> None:
        if max_cost_usd is not None and not _finite_number(max_cost_usd):
            raise ConfigError(
                f"job {name!r}: max_cost_usd must be a number of USD >= 0 (or None for no "
                f"cap), got {max_cost_usd!r:.40}"
            )
        self.router = router
        self.name = name
        self.max_cost_usd = None if max_cost_usd is None else float(max_cost_usd)
        self.steps: list[JobStep] = []
        # The steps that raised, with what each was charged (cost_usd, None: unknown), and
        # the caps of steps in flight: a cap is kept across failures and steps run side by
        # side.
        self.failed_steps: list[dict[str, Any]] = []  # each: name, error, cost_usd, tokens
        self._held = 0.0

    @property
    def failed_usd(self) -> list[float | None]:
        """What each step that raised was charged (None: unknown)."""
        return [f["cost_usd"] for f in self.failed_steps]

    @property
    def cost_usd(self) -> float | None:
        """USD over every step; None when some step's cost is unknown (unpriced)."""
        total = 0.0
        for c in [*(s.cost_usd for s in self.steps), *self.failed_usd]:
            if c is None:
                return None
            total += c
        return total

    @property
    def spent_usd(self) -> float:
        """What a job cap is charged: each step's cost; when that is unknown (an unpriced
        judge), the share of the cap it held, else its routed estimate."""
        total = sum(c for c in self.failed_usd if c is not None)
        for s in self.steps:
            c = s.cost_usd
            if c is None:
                c = s.held_usd if s.held_usd is not None else s.decision.est_cost_usd
            total += c if c is not None else 0.0  # only possible for a job without a cap
        return total

    async def step(
        self,
        name: str,
        messages: Sequence[Mapping[str, Any]] | str,
        constraints: Constraints | Mapping[str, Any] | None = None,
        *,
        cascade: Cascade | bool | None = None,
        accept: Validator | None = None,
        **options: Unpack[RequestOptions],
    ) -> JobStep:
        """Answer `messages` with `router.chat` under this step's constraints (and what is
        left of the job's cap), and record the step on the job."""
        c = Constraints.of(constraints)
        own = options.get("max_cost_usd")
        if own is not None and not _finite_number(own):
            # refused before the job holds it: a NaN held had left every later step's
            # share NaN for good, and text had raised a bare TypeError comparing it
            raise ConfigError(
                f"job {self.name!r}, step {name!r}: max_cost_usd must be a number of USD >= 0 "
                f"(or None for what is left of the job's cap), got {own!r:.40}"
            )
        held = 0.0
        if self.max_cost_usd is not None:
            left = max(self.max_cost_usd - self.spent_usd - self._held, 0.0)
            cap = options.get("max_cost_usd", c.max_cost_usd)
            if cap is None or cap > left:
                options["max_cost_usd"] = cap = left
            held = cap
        options["metadata"] = {**(options.get("metadata") or {}), "job": self.name, "step": name}
        self._held += held  # steps running beside this one see its cap as spent
        try:
            result = await self.router.chat(messages, c, cascade=cascade, accept=accept, **options)
        except BaseException as e:
            # a step that raised may have been billed (rejected answers, timeouts): charged
            # to the job, at its cap when the bill is unknown (cancelled mid-call)
            attempts = getattr(e, "attempts", None) or ()
            billed = billed_cost(attempts)
            charged: float | None
            if billed is not None and not isinstance(e, asyncio.CancelledError):
                charged = billed[0]
            else:
                charged = held if self.max_cost_usd is not None else None
            # and listed in to_dict(), so that its steps add up to the job's totals (a failed
            # step's bill had been in the job's cost_usd and in no step)
            usages = [a.usage for a in attempts if getattr(a, "usage", None) is not None]
            self.failed_steps.append({
                "name": name,
                "error": type(e).__name__,
                "cost_usd": charged,
                "tokens_in": sum(u.prompt_tokens for u in usages),
                "tokens_out": sum(u.completion_tokens for u in usages),
            })  # fmt: skip
            raise
        finally:
            self._held -= held
        rec = JobStep(name, result, held if self.max_cost_usd is not None else None)
        self.steps.append(rec)
        return rec

    def to_dict(self) -> dict[str, Any]:
        """The job's ledger: each step, each step that raised (what it was charged), and the
        totals over both."""
        failed = self.failed_steps
        return {
            "job": self.name,
            "cost_usd": self.cost_usd,
            "max_cost_usd": self.max_cost_usd,
            "tokens_in": sum(s.tokens_in for s in self.steps) + sum(f["tokens_in"] for f in failed),
            "tokens_out": sum(s.tokens_out for s in self.steps)
            + sum(f["tokens_out"] for f in failed),
            "steps": [s.to_dict() for s in self.steps],
            "failed_steps": [dict(f) for f in failed],
        }
