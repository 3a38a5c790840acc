"""What `route()` decides, and the frozen routing state it decided with.

A `Snapshot` holds everything a route reads (registry, policy, the compiled DispatchTable,
the model ids the table's rows stand for). The router builds a new one off to the side and
swaps it in with one assignment; `route()` reads the router's snapshot once and the
`Decision` keeps it, so a decision never names a model by another snapshot's row.
"""

from __future__ import annotations

import copy
import math
import threading

from . import _core
from ._frozen import Frozen, Value, _set
from .errors import ConfigError, NoRouteError
from .policy import Constraints, Policy
from .predict import ModelParams
from .registry import ModelSpec, Registry, lowered_budget

TYPE_CHECKING = False  # not typing's: Router() does not import typing (cold_start.py)
if TYPE_CHECKING:
    from typing import Any

    from .feedback import FeedbackLog

__all__ = ["Candidate", "Decision", "Snapshot"]

_ID_LOCK = threading.Lock()

#: `Snapshot._unreasoned`'s rows, by (the snapshot's ids, reasoning, max_reasoning_tokens);
#: the ids tuple is kept to tell a reused id() apart.
_UNREASONED: dict[tuple[int, str | None, int | None], tuple[tuple[str, ...], list[int]]] = {}

#: How late a no-route message names a row ruled out for each reason: the constraints to
#: loosen first, then the reasoning asked, then what the caller or health excluded.
_LAST = {"reasoning": 1, "exclude": 2, "disabled": 2}

#: Candidates a request record keeps (see `Decision.record`).
RECORDED = 16


def thinks_as_asked(m: ModelSpec, want: str | None, most: int | None, reg: Registry) -> bool:
    """Whether row `m` of `reg` passes `Constraints.reasoning` (`want`) and
    `max_reasoning_tokens` (`most`): by the reasoning tokens its registry entry expects, and
    its effort; or it is a budget row sent `most` as its budget (`lowered_budget`)."""
    spent = m.reasoning_tokens
    ok = (
        spent == 0 if want == "none"
        else spent > 0 if want == "on"
        else want is None or m.effort == want
    )  # fmt: skip
    return ok and (most is None or spent <= most or lowered_budget(m, most, reg))


class Snapshot(Frozen):
    """The routing state one request sees: immutable, replaced whole (compared by identity)."""

    # not slotted: a feedback update copies the instance's __dict__ (`with_params`)
    __match_args__ = ("registry", "policy", "table", "ids", "index", "undeployable")
    registry: Registry
    policy: Policy
    table: _core.DispatchTable
    ids: tuple[str, ...]  # table row -> model id
    index: dict[str, int]  # model id -> table row
    undeployable: frozenset[str]  # models with no deployment: routable, never callable

    def __init__(
        self,
        registry: Registry,
        policy: Policy,
        table: _core.DispatchTable,
        ids: tuple[str, ...],
        index: dict[str, int],
        undeployable: frozenset[str],
    ) -> None:
        _set(self, "registry", registry)
        _set(self, "policy", policy)
        _set(self, "table", table)
        _set(self, "ids", ids)
        _set(self, "index", index)
        _set(self, "undeployable", undeployable)

    @classmethod
    def build(cls, registry: Registry, policy: Policy) -> Snapshot:
        from .policy import Policy
        from .registry import Registry

        if not isinstance(registry, Registry):
            raise ConfigError(
                f"registry must be a Registry, got {type(registry).__name__}: build one with "
                "Registry.load(path), Registry.from_dict(data) or Registry.default()"
            )
        if not isinstance(policy, Policy):
            raise ConfigError(
                f"policy must be a Policy, got {type(policy).__name__}: build one with "
                "Policy(...), Policy.from_dict(data) or Policy.load(path)"
            )
        table = policy.compile(registry)
        ids = tuple(registry.ids)
        index = {m: i for i, m in enumerate(ids)}
        return cls(
            registry,
            policy,
            table,
            ids,
            index,
            frozenset(m.id for m in registry if not m.deployments),
        )

    def with_params(self, model: str, params: ModelParams) -> Snapshot:
        """This snapshot with one model's learned parameters replaced (feedback): the
        table's other rows are reused as compiled."""
        qm = self.policy.quality_model()
        policy = self.policy.with_quality(qm.with_feedback(model, params))
        if qm.name != "prior" and any(m.id not in qm.models for m in self.registry):
            # a trained predictor seeds models it never saw from the mean of those it knows,
            # which this update moves: every such row changes, so compile them all
            return Snapshot.build(self.registry, policy)
        table = self.table.with_model(self.index[model], float(params.bias), params.ability)
        # the other fields shared as they are: a dict update and two stores, where the
        # constructor's six object.__setattr__ calls had cost a feedback() call 7,000 of its
        # 108,000 instructions (`benches/instructions.py feedback`)
        new = object.__new__(Snapshot)
        d = new.__dict__
        d.update(self.__dict__)
        d["policy"], d["table"] = policy, table
        return new

    def exclude(self, c: Constraints, skip: frozenset[str] = frozenset()) -> list[int] | None:
        """Table rows the caller's allow/deny lists and reasoning constraints rule out, plus
        `skip` (models this request cannot call: cooling, no deployment). None when nothing
        is ruled out."""
        if (c.allow is None and not c.deny and not skip and c.reasoning is None
                and c.max_reasoning_tokens is None):  # fmt: skip
            return None
        return self._excluded(c, skip)  # (its comprehensions' cells made only when needed)

    def _excluded(self, c: Constraints, skip: frozenset[str]) -> list[int]:
        out = self._listed(c, skip)
        if c.reasoning is not None or c.max_reasoning_tokens is not None:
            out += self._unreasoned(c.reasoning, c.max_reasoning_tokens)
        return out

    def _listed(self, c: Constraints, skip: frozenset[str]) -> list[int]:
        """Rows the allow and deny lists and `skip` rule out."""
        idx = self.index
        for m in (*(c.allow or ()), *c.deny):
            if m not in idx:
                self.registry[m]  # raises UnknownModelError listing the known ids
        if c.allow is None:  # the usual case: as long as the lists, not the registry
            return [idx[m] for m in (*c.deny, *skip) if m in idx]
        allowed = set(c.allow)
        return [i for m, i in idx.items() if m in c.deny or m in skip or m not in allowed]

    def _effort_of(self, row: int, asked: str) -> str:
        m = self.registry[self.ids[row]]
        return (f"effort {m.effort or 'default'}, {m.reasoning_tokens} reasoning tokens "
                f"expected: not {asked}")  # fmt: skip

    def _unreasoned(self, want: str | None, most: int | None) -> list[int]:
        """Rows `Constraints.reasoning` and `max_reasoning_tokens` rule out, worked out once
        per registry (the rows' reasoning does not change with feedback)."""
        key = (id(self.ids), want, most)
        hit = _UNREASONED.get(key)
        if hit is not None and hit[0] is self.ids:
            return hit[1]
        reg = self.registry
        rows = [self.index[m.id] for m in reg if not thinks_as_asked(m, want, most, reg)]
        if len(_UNREASONED) >= 64:
            _UNREASONED.clear()
        _UNREASONED[key] = (self.ids, rows)
        return rows

    def below_floor(self, plan: Any, c: Constraints) -> NoRouteError:
        """The strict floor's refusal: no candidate reaches it; the best is named."""
        floor = self.policy.quality_floor if c.quality_floor is None else c.quality_floor
        ranked = plan.candidates
        best = max(ranked, key=lambda r: r[1])
        return NoRouteError(
            f"no model reaches quality floor {floor:.2f} (strict): the best candidate, "
            f"{self.ids[best[0]]}, is predicted {best[1]:.2f}; lower 'quality_floor', allow "
            "more models, or pass strict_floor=False to take the best candidate",
            {self.ids[r[0]]: f"predicted quality {_apart(r[1], floor)}" for r in ranked},
        )

    def no_route(
        self,
        filtered: list[tuple[int, str, str]],
        c: Constraints | None = None,
        skip: frozenset[str] = frozenset(),
    ) -> NoRouteError:
        ids = self.ids
        if c is not None and (c.reasoning is not None or c.max_reasoning_tokens is not None):
            # the rows the reasoning asked ruled out, said as such (the table calls every
            # row ruled out before it "excluded": not allowed, cooling, no deployment)
            off = set(self._unreasoned(c.reasoning, c.max_reasoning_tokens))
            off.difference_update(self._listed(c, skip))
            asked = " and ".join(
                f"{k}={v!r}" for k, v in (("reasoning", c.reasoning),
                                          ("max_reasoning_tokens", c.max_reasoning_tokens))
                if v is not None
            )  # fmt: skip
            filtered = [
                (f[0], "reasoning", self._effort_of(f[0], asked)) if f[0] in off else f
                for f in filtered
            ]
        counts: dict[str, int] = {}
        for _, constraint, _ in filtered:
            counts[constraint] = counts.get(constraint, 0) + 1
        # The models the request could have had name the constraint to loosen: under an
        # allow list every other model is "excluded", and that count had been blamed for
        # what ruled out the allowed ones (their window, a capability, the cap)
        # (and so do the rows of the reasoning asked, which the caller chose as it chose
        # an allow list)
        tried = (
            {k: n for k, n in counts.items() if k not in ("exclude", "disabled", "reasoning")}
            or {k: n for k, n in counts.items() if k == "reasoning"}
            or counts
        )
        worst = max(tried, key=lambda k: tried[k]) if tried else "registry"
        filtered = sorted(filtered, key=lambda f: _LAST.get(f[1], 0))
        detail = "; ".join(f"{ids[i]}: {why}" for i, _, why in filtered[:8])
        more = f" (+{len(filtered) - 8} more)" if len(filtered) > 8 else ""
        summary = ", ".join(f"{n} by {k}" for k, n in sorted(counts.items()))
        return NoRouteError(
            f"no model satisfies the constraints ({summary}); loosen {worst!r} first. "
            f"{detail}{more}",
            {ids[i]: why for i, _, why in filtered},
            {ids[i]: rule for i, rule, _ in filtered},
        )


class Candidate(Value):
    """One model that passed the filters, with its prediction and estimates."""

    __match_args__ = __slots__ = (
        "model",
        "p_good",
        "est_cost_usd",
        "tokens_in",
        "tokens_in_exact",
        "by_rule",
    )
    model: str
    p_good: float
    est_cost_usd: float | None  # None: unpriced
    tokens_in: int
    tokens_in_exact: bool
    by_rule: bool

    def __init__(
        self,
        model: str,
        p_good: float,
        est_cost_usd: float | None,
        tokens_in: int,
        tokens_in_exact: bool,
        by_rule: bool,
    ) -> None:
        _set(self, "model", model)
        _set(self, "p_good", p_good)
        _set(self, "est_cost_usd", est_cost_usd)
        _set(self, "tokens_in", tokens_in)
        _set(self, "tokens_in_exact", tokens_in_exact)
        _set(self, "by_rule", by_rule)


class Decision:
    """Which model, which fallbacks, and why. Built lazily from the Rust plan; every name
    and reason is read from the snapshot the plan was made with."""

    __slots__ = (
        "_asked",
        "_called",
        "_cands",
        "_feedback",
        "_no_answer",
        "_plan",
        "_primary",
        "_reasons",
        "_remembered",
        "_request_id",
        "constraints",
        "fallbacks",
        "held",
        "hold_usd",
        "model",
        "snapshot",
    )

    def __init__(
        self,
        snapshot: Snapshot,
        plan: Any,
        constraints: Constraints,
        feedback: FeedbackLog | None = None,
    ) -> None:
        self.snapshot = snapshot
        self._reasons: list[str] | None = None
        self._plan = plan
        self._feedback = feedback
        self._cands: list[Candidate] | None = None
        self._primary: Candidate | None = None
        self._request_id: str | None = None
        self._remembered: str | None = None  # the model feedback credits, once remembered
        self._called = False  # a chat() took it (see `again`)
        self._no_answer = False  # its request failed or was cancelled (see `unanswered`)
        # what it remembers of the prompt it was routed for (router._prompt_mark): a chat()
        # given it sends that prompt (its caps and window were worked out for it)
        # (or, until handed out, the messages and extra text to take it from)
        self._asked: tuple[int, int, int, int] | tuple[Any, str | None] | None = None
        # a budget's hold was bounded on it at one call per deployment (the server sets it):
        # an answer the upstream may bill is not retried there (`executor._rebills`)
        self.held = False
        # that hold (USD): the request's calls are held to it as to a cost cap, so a billed
        # cut answer and a fallback's answer cannot both fill it (`executor.Run.cap`)
        self.hold_usd: float | None = None
        self.constraints = constraints
        ids = snapshot.ids
        rows = plan.head(1 + snapshot.policy.max_fallbacks)
        self.model: str = ids[rows[0]]
        # (a loop: list(map(ids.__getitem__, ...)) or a comprehension cost about 1,000-1,900
        # more instructions, in the method-wrapper and map, or the comprehension's frame)
        fallbacks: list[str] = []
        for r in rows[1:]:
            fallbacks.append(ids[r])
        self.fallbacks = fallbacks

    @property
    def registry(self) -> Registry:
        return self.snapshot.registry

    @property
    def policy(self) -> Policy:
        return self.snapshot.policy

    @property
    def request_id(self) -> str:
        """A unique id (uuid4 hex) for `router.feedback(request_id, score)`. Made on first
        read, which is also when the router starts remembering this decision for feedback:
        routing that never asks for an id pays nothing."""
        if self._request_id is None:
            return self.answered_by(self.model)
        return self._request_id

    def preferring(self, model: str) -> Decision:
        """This decision with `model` tried first, the routed order after it, when `model`
        passed the filters (else this decision): what a session pin asks for."""
        if model == self.model or all(c.model != model for c in self.candidates):
            return self
        d = copy.copy(self)
        d._request_id, d._remembered, d._reasons, d._primary = None, None, None, None
        d._called = d._no_answer = False
        order = [m for m in (self.model, *self.fallbacks) if m != model]
        d.model, d.fallbacks = model, order[: len(self.fallbacks)]
        return d

    def again(self) -> Decision:
        """This decision for another call: the same route, an id of its own. `chat()` takes
        it so when given a decision a call has used (the second call's record had been
        written over the first's, one of two billed calls lost from the ledger)."""
        d = copy.copy(self)
        d._request_id, d._remembered, d._called, d._no_answer = None, None, False, False
        return d

    def answered_by(self, model: str) -> str:
        """The request id, with `model` as the one `router.feedback` credits (a fallback
        that answered, rather than the routed primary)."""
        if self._request_id is None:
            # the ledger's writer thread may build the record while the caller reads the
            # id: both must see one id (each had made its own, and the record lost its own)
            with _ID_LOCK:
                if self._request_id is None:
                    if self._feedback is None:
                        from .feedback import new_request_id

                        self._request_id = new_request_id()
                    else:
                        # the plan carries the prompt's latent: the prompt is never kept
                        self._request_id = self._feedback.issue(
                            self._plan.latent, model, self._plan.embedding
                        )
                        self._remembered = model
                        if self._no_answer:  # read after its request failed
                            self._feedback.unanswered(self._request_id)
        if self._feedback is not None and self._remembered != model:
            self._remembered = model  # credited once per model (each read did it again)
            self._feedback.credit(self._request_id, model)
        return self._request_id

    def unanswered(self) -> None:
        """The request this decision routed failed or was cancelled: `router.feedback()`
        refuses its id, which has no answer to score, and an id first read after this
        (a stream's `request_id` read after its failure had been scored). An id nobody has
        read is not made for it: failures take no feedback slot."""
        with _ID_LOCK:  # (as an id is made: one made meanwhile on another thread is marked)
            self._no_answer = True
            rid = self._request_id
        if rid is not None and self._feedback is not None:
            self._feedback.unanswered(rid)

    @property
    def latent(self) -> list[float]:
        """The predictor's `[e(x), d(x)]` for this prompt (what feedback updates use)."""
        return list(self._plan.latent)

    @property
    def candidates(self) -> list[Candidate]:
        """Every model that passed the filters, ranked (primary first)."""
        if self._cands is None:
            self._cands = self._candidates(self._plan.candidates)
        return self._cands

    def top(self, n: int) -> list[Candidate]:
        """The first `n` of `candidates`, without converting the rest (records and reasons
        read these: with thousands of models, all of them would cost a millisecond)."""
        if self._cands is not None:
            return self._cands[:n]
        return self._candidates(self._plan.top(n))

    def _candidates(self, rows: list[tuple[int, float, float, int, bool, bool]]) -> list[Candidate]:
        ids = self.snapshot.ids
        return [
            Candidate(ids[r], p, None if math.isnan(c) else c, t, ex, rule)
            for r, p, c, t, ex, rule in rows
        ]

    @property
    def primary(self) -> Candidate:
        """The candidate this decision calls first (the ranking's first unless a model was
        preferred: `preferring`). Made once: an answer's reasons, its estimated cost and the
        server's headers each read it."""
        if self._primary is None:
            top = self.top(1)[0]
            if top.model != self.model:
                top = next(c for c in self.candidates if c.model == self.model)
            self._primary = top
        return self._primary

    @property
    def filtered(self) -> dict[str, tuple[str, str]]:
        """model → (constraint, reason) for every model that was dropped."""
        ids = self.snapshot.ids
        return {ids[i]: (c, why) for i, c, why in self._plan.filtered}

    @property
    def task(self) -> str:
        return str(self._plan.task)

    @property
    def flags(self) -> list[str]:
        return list(self._plan.flags)

    @property
    def uncounted_parts(self) -> int:
        """File and audio parts of the prompt: carried to the model, but no token count or
        cost estimate includes them, so no cost or token limit can be checked for them."""
        return int(self._plan.uncounted_parts)

    @property
    def tokens_out(self) -> int:
        """Completion tokens the estimate assumes (caller's max_tokens, else per-task default)."""
        return int(self._plan.tokens_out)

    @property
    def rule(self) -> str | None:
        """The policy rule that ordered the candidates: None when none matched, or when one
        matched but none of its models passed the filters (the ranking chose; the rule
        had been named all the same)."""
        r = self._plan.rule
        if r is None or not self._plan.top(1)[0][5]:
            return None
        name: str = self.snapshot.policy.rules[r].name
        return name

    @property
    def below_floor(self) -> bool:
        """True when no model reached the quality floor and the best predicted one was chosen."""
        return bool(self._plan.below_floor)

    def tokens_in(self, model: str) -> int:
        """Prompt tokens of this request for `model`: its candidate's count, else the
        estimate in its tokenizer (a model the ranking left out, called by a cascade)."""
        for c in self.candidates:
            if c.model == model:
                return c.tokens_in
        reg = self.snapshot.registry
        return math.ceil(self._plan.est_tokens(reg[model].tokenizer)) if model in reg else 0

    def max_tokens_in(self, model: str) -> int:
        """Prompt tokens of this request for `model` at most: its count when one was made,
        else the upper bound a limit decided on the estimate relied on (the estimate, for
        a model the ranking left out)."""
        row = self.snapshot.index.get(model)
        n = None if row is None else self._plan.max_tokens_in(row)
        return self.tokens_in(model) if n is None else n

    @property
    def reference(self) -> tuple[str, float | None]:
        """The registry's most capable model and its estimated cost for this same request."""
        ref = self.snapshot.registry.reference
        return ref.id, ref.cost(self._plan.est_tokens(ref.tokenizer), self.tokens_out)

    @property
    def est_cost_usd(self) -> float | None:
        return self.primary.est_cost_usd

    def made_for_record(self) -> None:
        """Make now what a request's record and a served answer read: the reasons and the
        request id (each made once). The router calls it as a call goes out, so it is made
        while the upstream works rather than after its answer."""
        self.reasons()
        if self._request_id is None:
            self.answered_by(self.model)

    def reasons(self) -> list[str]:
        """Why this model, in sentences (made once: a response, its record and its trace
        all read them)."""
        if self._reasons is None:
            self._reasons = self._why()
        return list(self._reasons)

    def _why(self) -> list[str]:
        c = self.primary
        out = []
        # the ranking's first, by its row (a Candidate made only to read its id cost 2 µs)
        first = self._cands[0].model if self._cands else self.snapshot.ids[self._plan.top(1)[0][0]]
        if c.model != first:
            out.append(
                f"{c.model} was preferred (a session's model) and passes the constraints "
                f"(P(good)={c.p_good:.2f}); the routed order follows it"
            )
        elif self.rule is not None and c.by_rule:
            out.append(f"rule {self.rule!r} matched (task={self.task}) and lists {c.model}")
        elif self.snapshot.policy.lam is not None or self.constraints.lam is not None:
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
        by_constraint = self._plan.filtered_counts()
        if by_constraint:
            out.append("filtered out: " + ", ".join(f"{n} by {k}" for k, n in by_constraint))
        return out

    def _floor(self) -> float:
        f = self.constraints.quality_floor
        return self.snapshot.policy.quality_floor if f is None else f

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

    def record(self) -> dict[str, Any]:
        """The decision as a request record holds it: model, fallbacks, rule, why, and
        P(good) and estimated USD of the first RECORDED candidates (every model a request
        may call is among them), with how many passed in all: a record stays the same size
        whatever the size of the registry."""
        n = max(RECORDED, 1 + self.snapshot.policy.max_fallbacks)
        # (model, P(good), USD) straight from the plan's rows: a Candidate made for each
        # was half the record's cost (19.3 against 10.0 µs with the bundled registry)
        if self._cands is not None:
            top = [(c.model, c.p_good, c.est_cost_usd) for c in self._cands[:n]]
        else:
            ids = self.snapshot.ids
            top = [(ids[r[0]], r[1], None if math.isnan(r[2]) else r[2]) for r in self._plan.top(n)]
        shown = {m for m, _, _ in top}
        if self.model not in shown or not shown.issuperset(self.fallbacks):
            # a preferred model (`preferring`) may rank below them: it is called all the same
            called = {self.model, *self.fallbacks} - shown
            top += [(c.model, c.p_good, c.est_cost_usd)
                    for c in self.candidates if c.model in called]  # fmt: skip
        return {
            "model": self.model,
            "fallbacks": self.fallbacks,
            "rule": self.rule,
            "below_floor": self.below_floor,
            "reasons": self.reasons(),
            "candidates": [
                {"model": m, "p_good": round(p, 4), "est_cost_usd": usd} for m, p, usd in top
            ],
            "candidates_total": len(self._plan),
        }

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
            "candidates": [
                {"model": x.model, "p_good": round(x.p_good, 4), "est_cost_usd": x.est_cost_usd}
                for x in self.candidates
            ],
        }

    def __repr__(self) -> str:
        return f"Decision(model={self.model!r}, fallbacks={self.fallbacks!r})"


def _apart(p: float, floor: float) -> str:
    """Says "P < floor F" with as many places as tell the two apart, as the Rust core does
    ("0.80 < floor 0.80" read as a bug)."""
    n = next((n for n in range(2, 7) if f"{p:.{n}f}" != f"{floor:.{n}f}"), 6)
    return f"{p:.{n}f} < floor {floor:.{n}f}"
