"""Router: `route()` (pure, synchronous, microseconds) and the request path built on it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import _core
from .errors import NoRouteError
from .policy import Constraints, Policy
from .registry import ModelSpec, Registry

__all__ = ["Candidate", "Decision", "Router"]

Messages = str | Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Candidate:
    model: str
    p_good: float
    est_cost_usd: float | None  # None: unpriced
    tokens_in: int
    tokens_in_exact: bool
    by_rule: bool


class Decision:
    """Which model, which fallbacks, and why. Built lazily from the Rust plan."""

    __slots__ = ("_cands", "_plan", "_router", "constraints", "fallbacks", "model")

    def __init__(self, router: Router, plan: Any, constraints: Constraints) -> None:
        self._router = router
        self._plan = plan
        self._cands: list[Candidate] | None = None
        self.constraints = constraints
        ids = router._ids
        rows = plan.candidates
        self.model: str = ids[rows[0][0]]
        n = 1 + router.policy.max_fallbacks
        self.fallbacks: list[str] = [ids[r[0]] for r in rows[1:n]]

    @property
    def candidates(self) -> list[Candidate]:
        """Every model that passed the filters, ranked (primary first)."""
        if self._cands is None:
            ids = self._router._ids
            self._cands = [
                Candidate(ids[r], p, None if math.isnan(c) else c, t, ex, rule)
                for r, p, c, t, ex, rule in self._plan.candidates
            ]
        return self._cands

    @property
    def primary(self) -> Candidate:
        return self.candidates[0]

    @property
    def filtered(self) -> dict[str, tuple[str, str]]:
        """model → (constraint, reason) for every model that was dropped."""
        ids = self._router._ids
        return {ids[i]: (c, why) for i, c, why in self._plan.filtered}

    @property
    def task(self) -> str:
        return str(self._plan.task)

    @property
    def flags(self) -> list[str]:
        return list(self._plan.flags)

    @property
    def tokens_out(self) -> int:
        """Completion tokens the estimate assumes (caller's max_tokens, else per-task default)."""
        return int(self._plan.tokens_out)

    @property
    def rule(self) -> str | None:
        r = self._plan.rule
        return None if r is None else self._router.policy.rules[r].name

    @property
    def below_floor(self) -> bool:
        """True when no model reached the quality floor and the best predicted one was chosen."""
        return bool(self._plan.below_floor)

    @property
    def reference(self) -> tuple[str, float | None]:
        """The registry's most capable model and its estimated cost for this same request."""
        ref: ModelSpec = self._router.registry.reference
        return ref.id, ref.cost(self._plan.est_tokens(ref.tokenizer), self.tokens_out)

    @property
    def est_cost_usd(self) -> float | None:
        return self.primary.est_cost_usd

    def reasons(self) -> list[str]:
        c = self.primary
        out = []
        if self.rule is not None and c.by_rule:
            out.append(f"rule {self.rule!r} matched (task={self.task}) and lists {c.model}")
        elif self._router.policy.lam is not None or self.constraints.lam is not None:
            out.append(f"{c.model} has the best P(good) − λ·cost (P(good)={c.p_good:.2f})")
        elif self.below_floor:
            out.append(
                f"no model reached quality floor {self._floor():.2f}; {c.model} has the "
                f"highest predicted quality ({c.p_good:.2f})"
            )
        else:
            out.append(
                f"{c.model} is the cheapest model with predicted quality {c.p_good:.2f} >= "
                f"floor {self._floor():.2f}"
            )
        cost = "unpriced" if c.est_cost_usd is None else f"${c.est_cost_usd:.6f}"
        exact = "exact" if c.tokens_in_exact else "estimated"
        out.append(
            f"task={self.task}, flags={self.flags or '[]'}, {c.tokens_in} tokens in ({exact}), "
            f"{self.tokens_out} out expected, est {cost}"
        )
        by_constraint: dict[str, int] = {}
        for constraint, _ in self.filtered.values():
            by_constraint[constraint] = by_constraint.get(constraint, 0) + 1
        if by_constraint:
            out.append(
                "filtered out: "
                + ", ".join(f"{n} by {k}" for k, n in sorted(by_constraint.items()))
            )
        return out

    def _floor(self) -> float:
        f = self.constraints.quality_floor
        return self._router.policy.quality_floor if f is None else f

    def explain(self) -> str:
        """A human-readable account: choice, fallbacks, each candidate, each dropped model."""
        lines = [f"model: {self.model}", f"fallbacks: {', '.join(self.fallbacks) or '(none)'}"]
        lines += [f"why: {r}" for r in self.reasons()]
        ref, ref_cost = self.reference
        if ref_cost is not None and self.est_cost_usd is not None:
            lines.append(f"same request on {ref}: est ${ref_cost:.6f}")
        lines.append("candidates (ranked):")
        for c in self.candidates:
            cost = "unpriced" if c.est_cost_usd is None else f"${c.est_cost_usd:.6f}"
            lines.append(f"  {c.model:<24} P(good)={c.p_good:.2f}  est {cost}")
        if self.filtered:
            lines.append("filtered out:")
            for m, (_, why) in self.filtered.items():
                lines.append(f"  {m:<24} {why}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        c = self.primary
        ref, ref_cost = self.reference
        return {
            "model": self.model,
            "fallbacks": self.fallbacks,
            "tokens_in": c.tokens_in,
            "tokens_in_exact": c.tokens_in_exact,
            "tokens_out_expected": self.tokens_out,
            "est_cost_usd": c.est_cost_usd,
            "p_good": round(c.p_good, 4),
            "task": self.task,
            "flags": self.flags,
            "rule": self.rule,
            "below_floor": self.below_floor,
            "reference_model": ref,
            "reference_cost_usd": ref_cost,
            "reasons": self.reasons(),
            "filtered": {m: why for m, (_, why) in self.filtered.items()},
        }

    def __repr__(self) -> str:
        return f"Decision(model={self.model!r}, fallbacks={self.fallbacks!r})"


class Router:
    """Routes requests over a registry. `Router()` uses the bundled registry and policy.

    The registry and policy are compiled into one immutable DispatchTable; `update()` builds
    a new one and swaps it in a single assignment, so concurrent requests never see a mix.
    """

    def __init__(self, registry: Registry | None = None, policy: Policy | None = None) -> None:
        self.registry: Registry = registry if registry is not None else Registry.default()
        self.policy: Policy = policy if policy is not None else Policy()
        self._compile()

    def _compile(self) -> None:
        table = self.policy.compile(self.registry)
        ids = self.registry.ids
        self._index = {m: i for i, m in enumerate(ids)}
        self._ids, self._table = ids, table  # swapped together

    def update(self, registry: Registry | None = None, policy: Policy | None = None) -> None:
        """Swap in a new registry and/or policy (recompiles the table once)."""
        if registry is not None:
            self.registry = registry
        if policy is not None:
            self.policy = policy
        self._compile()

    def _exclude(self, c: Constraints) -> list[int] | None:
        if c.allow is None and not c.deny:
            return None
        idx = self._index
        for m in (*(c.allow or ()), *c.deny):
            if m not in idx:
                self.registry[m]  # raises UnknownModelError listing the known ids
        allowed = set(c.allow) if c.allow is not None else None
        return [
            i for m, i in idx.items() if m in c.deny or (allowed is not None and m not in allowed)
        ]

    def route(
        self,
        messages: Messages,
        constraints: Constraints | Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Decision:
        """Pick a model for `messages` (a prompt string or OpenAI-style messages).

        Raises NoRouteError naming the constraint that emptied the candidate set.
        """
        c = Constraints.of(constraints, **overrides)
        floor = self.policy.quality_floor if c.quality_floor is None else c.quality_floor
        lam = c.lam if c.lam is not None else self.policy.lam
        plan = self._table.plan(
            messages,  # type: ignore[arg-type]
            max_cost=c.max_cost_usd,
            latency_slo_ms=c.latency_slo_ms,
            quality_floor=floor,
            needs=list(c.needs) if c.needs else None,
            max_output_tokens=c.max_output_tokens,
            lam=lam,
            exclude=self._exclude(c),
        )
        if not plan.candidates:
            raise _no_route(plan.filtered, self._ids)
        return Decision(self, plan, c)


def _no_route(filtered: list[tuple[int, str, str]], ids: list[str]) -> NoRouteError:
    counts: dict[str, int] = {}
    for _, constraint, _ in filtered:
        counts[constraint] = counts.get(constraint, 0) + 1
    worst = max(counts, key=lambda k: counts[k]) if counts else "registry"
    detail = "; ".join(f"{ids[i]}: {why}" for i, _, why in filtered[:8])
    more = f" (+{len(filtered) - 8} more)" if len(filtered) > 8 else ""
    summary = ", ".join(f"{n} by {k}" for k, n in sorted(counts.items()))
    return NoRouteError(
        f"no model satisfies the constraints ({summary}); loosen {worst!r} first. "
        f"{detail}{more}",
        {ids[i]: why for i, _, why in filtered},
    )
