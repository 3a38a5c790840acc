"""Router: `route()` (pure, synchronous, microseconds) and the request path built on it."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .errors import NoRouteError
from .policy import Constraints, Policy
from .predict import ModelParams
from .registry import ModelSpec, Registry

if TYPE_CHECKING:  # httpx costs ~100 ms to import: only chat() and stream() load it
    import httpx

    from .executor import Accept, ChatStream, ExecutionConfig, Executor
    from .feedback import FeedbackLog
    from .result import ChatResult
    from .state import HealthStore

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

    __slots__ = (
        "_cands",
        "_ids",
        "_plan",
        "_policy",
        "_registry",
        "_request_id",
        "_router",
        "constraints",
        "fallbacks",
        "model",
    )

    def __init__(self, router: Router, plan: Any, constraints: Constraints) -> None:
        self._router = router
        self._plan = plan
        self._cands: list[Candidate] | None = None
        self._request_id: str | None = None
        self.constraints = constraints
        # What the plan's indices refer to, taken now: a later router.update() swaps these
        # on the router and must not rename the models of a decision already made.
        self._ids = ids = router._ids
        self._policy = router.policy
        self._registry = router.registry
        rows = plan.head(1 + router.policy.max_fallbacks)
        self.model: str = ids[rows[0]]
        self.fallbacks: list[str] = [ids[r] for r in rows[1:]]

    @property
    def request_id(self) -> str:
        """A unique id (uuid4 hex) for `router.feedback(request_id, score)`. Made on first
        read, which is also when the router starts remembering this decision for feedback:
        routing that never asks for an id pays nothing."""
        if self._request_id is None:
            self._request_id = self._router._remember(self)
        return self._request_id

    @property
    def candidates(self) -> list[Candidate]:
        """Every model that passed the filters, ranked (primary first)."""
        if self._cands is None:
            ids = self._ids
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
        ids = self._ids
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
        return None if r is None else self._policy.rules[r].name

    @property
    def below_floor(self) -> bool:
        """True when no model reached the quality floor and the best predicted one was chosen."""
        return bool(self._plan.below_floor)

    @property
    def reference(self) -> tuple[str, float | None]:
        """The registry's most capable model and its estimated cost for this same request."""
        ref: ModelSpec = self._registry.reference
        return ref.id, ref.cost(self._plan.est_tokens(ref.tokenizer), self.tokens_out)

    @property
    def est_cost_usd(self) -> float | None:
        return self.primary.est_cost_usd

    def reasons(self) -> list[str]:
        c = self.primary
        out = []
        if self.rule is not None and c.by_rule:
            out.append(f"rule {self.rule!r} matched (task={self.task}) and lists {c.model}")
        elif self._policy.lam is not None or self.constraints.lam is not None:
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
        return self._policy.quality_floor if f is None else f

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
            messages,
            max_cost=c.max_cost_usd,
            latency_slo_ms=c.latency_slo_ms,
            quality_floor=floor,
            needs=list(c.needs) if c.needs else None,
            max_output_tokens=c.max_output_tokens,
            lam=lam,
            exclude=self._exclude(c),
        )
        if not len(plan):
            raise _no_route(plan.filtered, self._ids)
        return Decision(self, plan, c)

    # -- feedback (issue 3): see feedback.py ----------------------------------------------
    _feedback: FeedbackLog | None = None  # made by the first Decision.request_id

    def _remember(self, decision: Decision) -> str:
        from .feedback import FeedbackLog, new_request_id

        if self._feedback is None:
            self._feedback = FeedbackLog()
        rid = new_request_id()
        # The plan carries the prompt's latent, so the prompt itself is never kept.
        self._feedback.remember(rid, decision._plan.latent, decision.model)
        return rid

    def feedback(self, request_id: str, score: float, model: str | None = None) -> ModelParams:
        """Tell the router how good an answer was (score in [0, 1]; 1 = acceptable).

        Updates the answering model's ability by a Bayesian (Laplace) step on that prompt's
        latent difficulty and skills, and recompiles the table, so the next route() uses
        it. `model` defaults to the decision's primary; pass the model that actually answered
        if a fallback did. Returns the model's new parameters. Persist them with
        `save_policy()`.
        """
        from .feedback import FeedbackLog

        if self._feedback is None:
            self._feedback = FeedbackLog()
        latent, chosen = self._feedback.lookup(request_id)  # InputError if unknown
        target = model if model is not None else chosen
        spec = self.registry[target]  # UnknownModelError names the known ids
        qm = self.policy.quality_model()
        new = self._feedback.observe(qm, target, qm.params_for(spec), latent, score)
        updated = qm.with_models({**qm.models, target: new})
        self.update(policy=replace(self.policy, quality=updated))
        return new

    def save_policy(self, policy_path: str | Path, predictor_path: str | Path) -> None:
        """Save the predictor (with every feedback update) to `predictor_path` and the policy
        JSON, pointing at it, to `policy_path`; `Policy.load(policy_path)` restores both."""
        self.policy.quality_model().save(predictor_path)
        self.policy.save(policy_path, predictor_path)

    # -- calling models (issue 5): see executor.py ---------------------------------------
    _io: Executor | None = None  # built by the first chat()/stream(), or by configure()
    _owns_client = False

    def configure(
        self,
        *,
        http: httpx.AsyncClient | None = None,
        health: HealthStore | None = None,
        execution: ExecutionConfig | None = None,
    ) -> Router:
        """Use your own httpx client, health store or timeouts/retries. Call before the
        first request; a client you pass is yours to close."""
        from .executor import ExecutionConfig, Executor, make_client
        from .state import Health

        if self._io is not None:
            raise RuntimeError("configure() must be called before the first chat() or stream()")
        cfg = execution or ExecutionConfig()
        self._owns_client = http is None
        self._io = Executor(http or make_client(cfg), health or Health(), cfg)
        return self

    def _prepare(
        self,
        messages: Messages,
        constraints: Constraints | Mapping[str, Any] | None,
        overrides: dict[str, Any],
        req: dict[str, Any],
        timeout: float | None,
        t0: float,
    ) -> tuple[Executor, Decision, Any, float | None]:
        from .providers.base import ChatRequest

        io = self._io if self._io is not None else self.configure()._io
        assert io is not None
        msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
        # A request that needs tools or JSON must not be routed to a model without them.
        needs: tuple[str, ...] = ()
        if req["tools"]:
            needs += ("tools",)
        rf = req["response_format"]
        if rf is not None and rf.get("type") != "text":
            needs += ("json",)
        if req["max_tokens"] is not None and "max_output_tokens" not in overrides:
            overrides["max_output_tokens"] = req["max_tokens"]
        c = Constraints.of(constraints, **overrides)
        if needs and not set(needs) <= set(c.needs):
            c = Constraints.of(c, needs=tuple(sorted({*c.needs, *needs})))
        decision = self.route(msgs, c)
        blocked = io.health.blocked()
        if blocked:  # models whose every deployment is cooling or disabled are routed around
            cooled = [m for m in io.blocked_models(self.registry, blocked) if m not in c.deny]
            if cooled:
                # If nothing else is left, keep the first decision: the executor then reports
                # each cooldown instead of a bare "no route".
                with contextlib.suppress(NoRouteError):
                    decision = self.route(msgs, Constraints.of(c, deny=(*c.deny, *cooled)))
        if req["max_tokens"] is None:
            req["max_tokens"] = c.max_output_tokens
        if timeout is None and c.latency_slo_ms is not None:
            timeout = c.latency_slo_ms / 1000.0
        # route() accepted them, so they are a list of message dicts (or were a str)
        request = ChatRequest(msgs if isinstance(msgs, list) else list(msgs), **req)  # type: ignore[arg-type]
        return io, decision, request, None if timeout is None else t0 + timeout

    async def chat(
        self,
        messages: Messages,
        constraints: Constraints | Mapping[str, Any] | None = None,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        timeout: float | None = None,
        hedge: bool = False,
        race: int = 0,
        accept: Accept | None = None,
        **overrides: Any,
    ) -> ChatResult:
        """Route `messages` and call the chosen model, falling back as needed.

        `timeout` (seconds; default: the latency SLO, if any) bounds the whole request.
        `hedge=True` sends a second attempt to the next candidate when the first is slower
        than its p95; `race=n` calls n candidates at once. Either way the first answer that
        `accept` (default: any) approves wins and the rest are cancelled.
        Raises NoRouteError, AllAttemptsFailedError (`.attempts` says why), BadRequestError.
        """
        t0 = perf_counter()
        req = {
            "max_tokens": max_tokens,
            "temperature": temperature,
            "tools": tools,
            "tool_choice": tool_choice,
            "response_format": response_format,
            "extra": extra,
        }
        io, decision, request, deadline = self._prepare(
            messages, constraints, overrides, req, timeout, t0
        )
        return await io.complete(
            self.registry,
            decision,
            request,
            t0=t0,
            deadline=deadline,
            hedge=hedge,
            race=race,
            accept=accept,
        )

    def stream(
        self,
        messages: Messages,
        constraints: Constraints | Mapping[str, Any] | None = None,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        timeout: float | None = None,
        **overrides: Any,
    ) -> ChatStream:
        """Like chat(), streamed: `async with router.stream(msgs) as s: async for d in s:`.

        Text pieces arrive as `d.text`; the last item has `d.done` and `d.result` (a
        ChatResult). Fallbacks happen only before the first piece; a failure after it raises
        StreamInterruptedError. `timeout` bounds the wait for the first piece.
        """
        t0 = perf_counter()
        req = {
            "max_tokens": max_tokens,
            "temperature": temperature,
            "tools": tools,
            "tool_choice": tool_choice,
            "response_format": response_format,
            "extra": extra,
        }
        io, decision, request, deadline = self._prepare(
            messages, constraints, overrides, req, timeout, t0
        )
        return io.stream(self.registry, decision, request, t0=t0, deadline=deadline)

    def health(self) -> dict[str, dict[str, Any]]:
        """Live health per "model/deployment": state (ok, cooling, half_open, disabled), why,
        cooldown left, EWMA and p95 latency, error rate, counters."""
        return self._io.health.snapshot() if self._io is not None else {}

    async def aclose(self) -> None:
        """Close the router's HTTP connections (not a client you passed to configure())."""
        io, self._io = self._io, None
        if io is not None and self._owns_client:
            await io.client.aclose()

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _no_route(filtered: list[tuple[int, str, str]], ids: list[str]) -> NoRouteError:
    counts: dict[str, int] = {}
    for _, constraint, _ in filtered:
        counts[constraint] = counts.get(constraint, 0) + 1
    worst = max(counts, key=lambda k: counts[k]) if counts else "registry"
    detail = "; ".join(f"{ids[i]}: {why}" for i, _, why in filtered[:8])
    more = f" (+{len(filtered) - 8} more)" if len(filtered) > 8 else ""
    summary = ", ".join(f"{n} by {k}" for k, n in sorted(counts.items()))
    return NoRouteError(
        f"no model satisfies the constraints ({summary}); loosen {worst!r} first. {detail}{more}",
        {ids[i]: why for i, _, why in filtered},
    )
