"""Constraints (per request) and Policy (per router): what the DispatchTable is compiled from.

Rules come first, in order: the first rule whose conditions match puts its models at the
head of the plan (those that pass the filters). Then the learned (or prior) quality ranks
the rest: the cheapest model with P(good) ≥ quality_floor, or, when `lam` is set, the
highest P(good) − lam·USD.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from . import _core
from ._atomic import write_atomic
from ._bounded import MAX_FILE_BYTES, read_bounded
from ._frozen import Value, _set
from ._real import as_count, as_real
from .errors import ConfigError, quoted, quoted_names
from .predict import QualityModel
from .registry import (
    EFFORTS,
    LongContext,
    ModelSpec,
    Price,
    Registry,
    _json_once,
    thinking_budget,
)

TYPE_CHECKING = False  # not typing's: Router() does not import typing (cold_start.py)
if TYPE_CHECKING:
    from pathlib import Path  # imported where a file is read or written
    from typing import Any

    from ._table import ModelRowSpec, RuleSpec
    from .cascade import Cascade  # imported when a policy has ladders: Router() stays lean

__all__ = ["Constraints", "Policy", "Rule"]

#: Completion tokens expected per task when the caller sets no max_tokens (for cost estimates).
DEFAULT_EXPECTED_OUTPUT: Mapping[str, int] = {
    "code": 600,
    "math": 400,
    "extraction": 150,
    "translation": 300,
    "summarize": 250,
    "creative": 600,
    "reasoning": 500,
    "general": 300,
}


class Constraints(Value):
    """Per-request limits. None means no limit (or: the policy's setting).

    `strict_floor`: when no model reaches the quality floor, True raises NoRouteError naming
    the floor; False routes to the model of highest predicted quality and flags the decision
    `below_floor`; None takes the policy's `strict_floor` (default False).

    `count_prompt`: count the prompt's tokens for every candidate (once per encoding), not
    only near a limit, so `tokens_in` and `max_tokens_in` are counts rather than estimates:
    what a budget's reservation or a tokens-a-minute limit reads (the server sets it for
    keys that have either). An estimate may be several times under the count for
    punctuation, CJK or base64.

    `reasoning`: the caller's say in how a model thinks before it answers, where routing
    otherwise picks the (model, effort) row: "none" (rows the registry expects to spend no
    reasoning tokens: a model's `@none` effort, a model that does not think by default),
    "on" (rows that do), or an effort level ("minimal" ... "max": the rows of that
    effort, which send it). `max_reasoning_tokens`: rows whose expected reasoning tokens
    (a budget row's thinking budget; an expectation, not a cap, for adaptive and OpenAI
    rows) are at most this many.

    `output_includes_thinking`: `max_output_tokens` bounds a model's thinking and its answer
    together, as Anthropic's `max_tokens` and OpenAI's `max_completion_tokens` do (the
    server sets it for those); the limit goes to the model as given: a row that thinks
    within a budget of B tokens (extended thinking) answers within max_output_tokens − B,
    one whose budget fills the limit is left out, and adaptive thinking, which has no
    budget, thinks within it. False: the limit is the answer's, the thinking's budget or
    room comes on top (billed as output).
    """

    __match_args__ = __slots__ = (
        "max_cost_usd",
        "latency_slo_ms",
        "quality_floor",
        "needs",
        "max_output_tokens",
        "lam",
        "allow",
        "deny",
        "strict_floor",
        "count_prompt",
        "reasoning",
        "max_reasoning_tokens",
        "output_includes_thinking",
    )
    max_cost_usd: float | None
    latency_slo_ms: float | None
    quality_floor: float | None
    needs: tuple[str, ...]
    max_output_tokens: int | None
    lam: float | None
    allow: tuple[str, ...] | None
    deny: tuple[str, ...]
    strict_floor: bool | None
    count_prompt: bool
    reasoning: str | None
    max_reasoning_tokens: int | None
    output_includes_thinking: bool

    def __init__(
        self,
        max_cost_usd: float | None = None,
        latency_slo_ms: float | None = None,
        quality_floor: float | None = None,
        needs: tuple[str, ...] = (),
        max_output_tokens: int | None = None,
        lam: float | None = None,
        allow: tuple[str, ...] | None = None,
        deny: tuple[str, ...] = (),
        strict_floor: bool | None = None,
        count_prompt: bool = False,
        reasoning: str | None = None,
        max_reasoning_tokens: int | None = None,
        output_includes_thinking: bool = False,
    ) -> None:
        _set(self, "max_cost_usd", max_cost_usd)
        _set(self, "latency_slo_ms", latency_slo_ms)
        _set(self, "quality_floor", quality_floor)
        _set(self, "needs", needs)
        _set(self, "max_output_tokens", max_output_tokens)
        _set(self, "lam", lam)
        _set(self, "allow", allow)
        _set(self, "deny", deny)
        _set(self, "strict_floor", strict_floor)
        _set(self, "count_prompt", count_prompt)
        _set(self, "reasoning", reasoning)
        _set(self, "max_reasoning_tokens", max_reasoning_tokens)
        _set(self, "output_includes_thinking", output_includes_thinking)
        self.__post_init__()

    def __post_init__(self) -> None:
        for name in ("max_cost_usd", "latency_slo_ms", "lam", "quality_floor"):
            v = getattr(self, name)
            if v is not None and not _finite_number(v):
                raise ConfigError(f"constraints.{name} must be a finite number >= 0, got {v!r:.40}")
            if v is not None:  # a numpy scalar as a plain float, as the table and records take
                object.__setattr__(self, name, float(v))
        if self.quality_floor is not None and not 0.0 <= self.quality_floor <= 1.0:
            raise ConfigError(
                f"constraints.quality_floor must be in [0, 1], got {self.quality_floor}"
            )
        m = self.max_output_tokens
        if m is not None:
            n = as_count(m)
            if n is None or not 0 < n < 2**32:
                raise ConfigError(
                    f"constraints.max_output_tokens must be an integer in [1, 2**32), got {m!r}"
                )
            object.__setattr__(self, "max_output_tokens", n)
        if self.strict_floor is not None and not isinstance(self.strict_floor, bool):
            raise ConfigError("constraints.strict_floor must be True, False or None")
        for name in ("count_prompt", "output_includes_thinking"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"constraints.{name} must be True or False")
        if self.reasoning is not None and self.reasoning not in REASONING:
            raise ConfigError(
                f"constraints.reasoning must be one of {list(REASONING)}, got "
                f"{self.reasoning!r:.40}"
            )
        m = self.max_reasoning_tokens
        if m is not None:
            n = as_count(m)
            if n is None or not 0 <= n < 2**32:
                raise ConfigError(
                    "constraints.max_reasoning_tokens must be an integer in [0, 2**32), "
                    f"got {m!r:.40}"
                )
            object.__setattr__(self, "max_reasoning_tokens", n)
        for name in ("needs", "deny"):
            if getattr(self, name) is None:  # "none" of them
                object.__setattr__(self, name, ())
        for name in ("needs", "allow", "deny"):
            v = getattr(self, name)
            if isinstance(v, str):  # one id, not its letters
                object.__setattr__(self, name, (v,))
            elif v is not None and not isinstance(v, tuple):
                try:
                    object.__setattr__(self, name, tuple(v))
                except TypeError:
                    raise ConfigError(
                        f"constraints.{name} must be a list of strings, got {v!r}"
                    ) from None
            v = getattr(self, name)
            if v is not None and not all(isinstance(x, str) for x in v):
                raise ConfigError(
                    f"constraints.{name} must be a list of strings, got {quoted(v, 80)}"
                )
        bad = set(self.needs) - set(_core.CAPABILITIES)
        if bad:
            raise ConfigError(
                f"constraints.needs: unknown {quoted_names(bad)}; known: {_core.CAPABILITIES}"
            )

    @classmethod
    def of(cls, c: Constraints | Mapping[str, Any] | None = None, **kw: Any) -> Constraints:
        """Accept a Constraints, a dict, None, and keyword overrides."""
        if c is None and not kw:
            return _NO_CONSTRAINTS  # the common case: no validation, no allocation
        if c is not None and not isinstance(c, Constraints | Mapping):
            raise ConfigError(
                f"constraints must be a Constraints, a dict or None, got {type(c).__name__}; "
                f"pass them as keywords, e.g. route(msgs, max_cost_usd=0.01)"
            )
        given = {} if c is None or isinstance(c, Constraints) else dict(c)
        unknown = (set(given) | set(kw)) - _FIELDS
        if unknown:
            raise ConfigError(
                f"unknown constraint(s) {sorted(unknown)}; the constraints are {sorted(_FIELDS)}"
            )
        if isinstance(c, Constraints):
            return c.replace(**kw) if kw else c
        return cls(**{**given, **kw})  # built and checked once


_NO_CONSTRAINTS = Constraints()
#: `Constraints.reasoning`'s values: no reasoning, some, or one effort level.
REASONING = ("none", "on", *(e for e in EFFORTS if e != "none"))
_FIELDS = frozenset(Constraints.__match_args__)


class Rule(Value):
    """`when` conditions → `use` these models first. Conditions that are None match anything."""

    __match_args__ = __slots__ = (
        "name",
        "use",
        "task",
        "flags",
        "min_tokens_in",
        "max_tokens_in",
    )
    name: str
    use: tuple[str, ...]
    task: str | None
    flags: tuple[str, ...]
    min_tokens_in: float
    max_tokens_in: float

    def __init__(
        self,
        name: str,
        use: tuple[str, ...],
        task: str | None = None,
        flags: tuple[str, ...] = (),
        min_tokens_in: float = 0.0,
        max_tokens_in: float = math.inf,
    ) -> None:
        _set(self, "name", name)
        _set(self, "use", use)
        _set(self, "task", task)
        _set(self, "flags", flags)
        _set(self, "min_tokens_in", min_tokens_in)
        _set(self, "max_tokens_in", max_tokens_in)
        self.__post_init__()

    def __post_init__(self) -> None:
        where = f"rule {self.name!r:.60}"
        if not self.use or not all(isinstance(u, str) and u for u in self.use):
            raise ConfigError(f"{where} needs a non-empty 'use' list of model ids")
        if self.task is not None and not isinstance(self.task, str):
            raise ConfigError(f"{where}: when.task must be a task name")
        if not all(isinstance(f, str) for f in self.flags):
            raise ConfigError(f"{where}: when.flags must be a list of flag names")
        lo, hi = self.min_tokens_in, self.max_tokens_in
        for k, v in (("min_tokens_in", lo), ("max_tokens_in", hi)):
            # a number a float holds (math.isnan(10**400) had raised a raw OverflowError),
            # or +inf: no bound (max_tokens_in's default)
            bound = isinstance(v, float) and v == math.inf
            if (as_real(v) is None and not bound) or v < 0:
                raise ConfigError(f"{where}: when.{k} must be a number >= 0, got {v!r:.40}")
        if lo > hi:  # a rule that can never match is a mistake, not a rule
            raise ConfigError(f"{where}: when.min_tokens_in {lo} is above max_tokens_in {hi}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rule:
        if not isinstance(d, Mapping):
            raise ConfigError(f"policy.rules: each rule must be an object, got {d!r:.60}")
        # a misspelt key had been dropped: "wen" for "when" made a narrow rule catch all
        if extra := set(d) - {"name", "use", "when"}:
            raise ConfigError(
                f"rule {d.get('name')!r:.60}: unknown key(s) {sorted(map(str, extra))}; a rule "
                "has name, use and when"
            )
        if not isinstance(d.get("name", "rule"), str):
            raise ConfigError(f"rule name must be a string, got {d.get('name')!r:.60}")
        when = d.get("when", {})
        if not isinstance(when, Mapping):
            raise ConfigError(f"rule {d.get('name')!r:.60}: 'when' must be an object")
        unknown = set(when) - {"task", "flags", "min_tokens_in", "max_tokens_in"}
        if unknown:
            raise ConfigError(f"rule {d.get('name')!r}: unknown condition(s) {sorted(unknown)}")
        use, flags = d.get("use"), when.get("flags", ())
        if not isinstance(use, str | list | tuple) or not use:
            raise ConfigError(
                f"rule {d.get('name')!r:.60} needs a non-empty 'use' list of model ids"
            )
        if not isinstance(flags, list | tuple):
            raise ConfigError(f"rule {d.get('name')!r:.60}: when.flags must be a list")
        return cls(
            name=str(d.get("name", "rule")),
            use=tuple([use] if isinstance(use, str) else use),
            task=when.get("task"),
            flags=tuple(flags),
            min_tokens_in=when.get("min_tokens_in", 0.0),
            max_tokens_in=when.get("max_tokens_in", math.inf),
        )


def _thinking_reserve(m: ModelSpec) -> int:
    """The thinking budget an Anthropic deployment of `m` adds to every call's max_tokens."""
    if not any(d.api == "anthropic" for d in m.deployments):
        return 0
    return thinking_budget(m.effort, m.reasoning_tokens)


def _worst_price(m: ModelSpec) -> Price | None:
    """The rates the table checks a cost cap against: at least what any of the model's
    deployments bills at every prompt length (a fallback to a pricier host must not break
    the cap, and which host is dearer depends on the request: one may bill the prompt
    higher, another the answer), None if any deployment is unpriced."""
    if not m.priced:
        return None
    ps: list[Price] = m.prices  # type: ignore[assignment]
    if len(ps) == 1:
        return ps[0]
    tiers = [t for p in ps for t in p.long_context]
    long: tuple[LongContext, ...] = ()
    if tiers:
        # one tier, from the first threshold of any, at the highest rate any deployment
        # bills past it, its base rate or a tier's: a host's tier below another's base
        # rate had let the table bound a long prompt under that host's bill
        rates = [(x.input, x.output) for x in ps] + [(t.input, t.output) for t in tiers]
        long = (
            LongContext(
                min(t.above for t in tiers), max(i for i, _ in rates), max(o for _, o in rates)
            ),
        )
    return ps[0].replace(
        input=max(p.input for p in ps),
        output=max(p.output for p in ps),
        long_context=long,
    )


def reasoning_usd(m: ModelSpec, p: Price) -> float:
    """USD of an effort variant's expected reasoning tokens, at the highest output-side rate
    any of its tiers bills them at (the table holds one tier; billing applies each exactly)."""
    return m.reasoning_tokens * _reasoning_rate(p) / 1e6


def _reasoning_rate(p: Price) -> float:
    """USD per million reasoning tokens, the dearest tier's (`reasoning_usd`)."""
    base = p.reasoning if p.reasoning is not None else p.output
    return max([base, *(t.output * base / p.output if p.output else t.output
                        for t in p.long_context)])  # fmt: skip


def _thinking_rate(m: ModelSpec) -> float:
    """USD per thinking token at the cheapest of the model's deployments (the table's
    `thinking_rate`: a budget lowered by N tokens takes N of these off `_fee`, which keeps
    it at or over any deployment's bill); 0 when one is unpriced (no fee then)."""
    prices = m.prices
    if any(p is None for p in prices):
        return 0.0
    return min(_reasoning_rate(p) for p in prices if p is not None) / 1e6


def _fee(m: ModelSpec) -> float:
    """USD a call costs beyond its prompt and answer, the per-request fee and reasoning, at
    the dearest of its deployments (each prices reasoning at its own rates)."""
    prices = m.prices
    if any(p is None for p in prices):
        return 0.0
    return max((p.per_request or 0.0) + reasoning_usd(m, p) for p in prices if p is not None)


class Policy(Value):
    """How a router ranks: rules, then learned quality with a floor or a cost weight."""

    __match_args__ = (
        "rules",
        "quality_floor",
        "lam",
        "max_fallbacks",
        "strict_floor",
        "expected_output_tokens",
        "quality",
        "cascades",
    )
    rules: tuple[Rule, ...]
    quality_floor: float
    lam: float | None
    max_fallbacks: int
    strict_floor: bool  # True: NoRouteError when no model reaches the floor
    expected_output_tokens: Mapping[str, int]
    quality: QualityModel | None  # None: the bundled predictor
    # Tuned ladders (`satisfice calibrate --strategy cascade`) that `cascade="auto"` climbs,
    # by the router's task of the prompt; "*" serves every task without its own.
    cascades: Mapping[str, Cascade]

    def __init__(
        self,
        rules: tuple[Rule, ...] = (),
        quality_floor: float = 0.8,
        lam: float | None = None,
        max_fallbacks: int = 3,
        strict_floor: bool = False,
        expected_output_tokens: Mapping[str, int] | None = None,  # None: the defaults
        quality: QualityModel | None = None,
        cascades: Mapping[str, Cascade] | None = None,
    ) -> None:
        _set(self, "rules", rules)
        _set(self, "quality_floor", quality_floor)
        _set(self, "lam", lam)
        _set(self, "max_fallbacks", max_fallbacks)
        _set(self, "strict_floor", strict_floor)
        if expected_output_tokens is None:
            expected_output_tokens = DEFAULT_EXPECTED_OUTPUT
        _set(self, "expected_output_tokens", expected_output_tokens)
        _set(self, "quality", quality)
        _set(self, "cascades", {} if cascades is None else cascades)
        self.__post_init__()

    def __post_init__(self) -> None:
        f = as_real(self.quality_floor)
        if f is None or not 0.0 <= f <= 1.0:
            raise ConfigError(
                f"policy.quality_floor must be a number in [0, 1], got {self.quality_floor!r}"
            )
        object.__setattr__(self, "quality_floor", f)
        if self.lam is not None:
            lam = as_real(self.lam)
            if lam is None or lam < 0:
                raise ConfigError(f"policy.lam must be a finite number >= 0, got {self.lam!r}")
            object.__setattr__(self, "lam", lam)
        if isinstance(self.rules, list):  # as read from a file, or written by hand
            object.__setattr__(self, "rules", tuple(self.rules))
        mf = as_count(self.max_fallbacks)
        if mf is None or not 0 <= mf <= 64:
            raise ConfigError(
                f"policy.max_fallbacks must be an integer from 0 to 64, got "
                f"{self.max_fallbacks!r:.40}"
            )
        object.__setattr__(self, "max_fallbacks", mf)
        if not isinstance(self.rules, tuple) or not all(isinstance(r, Rule) for r in self.rules):
            raise ConfigError("policy.rules must be a tuple of Rule (or a list of rule objects)")
        eot = self.expected_output_tokens
        if not isinstance(eot, Mapping):
            raise ConfigError("policy.expected_output_tokens must map a task to a token count")
        bad = set(eot) - set(_core.TASKS)
        if bad:
            raise ConfigError(f"policy.expected_output_tokens: unknown tasks {sorted(bad)}")
        counts = {}
        for t, raw in eot.items():
            n = as_count(raw)
            if n is None or not 1 <= n <= 1_000_000:
                raise ConfigError(
                    f"policy.expected_output_tokens[{t!r}] must be an integer from 1 to "
                    f"1,000,000, got {raw!r:.40}"
                )
            counts[t] = n
        object.__setattr__(self, "expected_output_tokens", counts)
        if self.quality is not None and not isinstance(self.quality, QualityModel):
            raise ConfigError(
                f"policy.quality must be a QualityModel, got {type(self.quality).__name__}"
            )
        if not isinstance(self.cascades, Mapping):
            raise ConfigError(
                f"policy.cascades must map a task to a Cascade, got {type(self.cascades).__name__}"
            )
        if self.cascades:
            from .cascade import Cascade  # here: a policy without ladders keeps Router() lean
        for task, ladder in self.cascades.items():
            if not isinstance(ladder, Cascade):  # a list of ids, or a saved ladder not yet read
                raise ConfigError(
                    f"policy.cascades[{task!r}] must be a Cascade, got {type(ladder).__name__} "
                    "(a saved ladder is read with Cascade.from_dict)"
                )
        bad = set(self.cascades) - {*_core.TASKS, "*"}
        if bad:
            raise ConfigError(
                f"policy.cascades: unknown task(s) {sorted(bad)}; use {[*_core.TASKS, '*']}"
            )

    def cascade_for(self, task: str) -> Cascade | None:
        """The tuned ladder `cascade="auto"` climbs for a prompt of `task` (None: route)."""
        return self.cascades.get(task) or self.cascades.get("*")

    def ladder_replaces_floor(self, task: str) -> bool:
        """Whether a `cascade="auto"` request of `task` is routed with no quality floor: its
        ladder's checks stand in for the floor, and its cheap steps, below the floor by
        design, must be candidates (with estimates) to be climbed or budgeted for."""
        return not self.strict_floor and self.cascade_for(task) is not None

    def with_quality(self, quality: QualityModel) -> Policy:
        """This policy with another predictor (what each feedback update makes). Only the
        predictor changes, and it is valid, so the field checks are not run again."""
        new = object.__new__(Policy)
        new.__dict__.update(self.__dict__)
        new.__dict__["quality"] = quality
        return new

    def quality_model(self) -> QualityModel:
        return self.quality if self.quality is not None else _bundled_quality()

    def compile(self, registry: Registry) -> _core.DispatchTable:
        """Build the immutable table the router plans with (once per registry/policy change)."""
        qm = self.quality_model()
        rows: list[ModelRowSpec] = []
        for m in registry:
            p = qm.params_for(m)
            price = _worst_price(m)
            # The table holds one long-context tier: the first threshold at the highest
            # rates of any tier, so a cost cap is never checked against too low a price
            # (billing, in Price.cost, applies each tier exactly).
            tiers = price.long_context if price else ()
            long_in = max((t.input for t in tiers), default=math.nan)
            long_out = max((t.output for t in tiers), default=math.nan)
            # Anthropic's wire max_tokens is the answer's plus the thinking budget: the
            # window and max output the answer has are what the budget leaves (they had
            # been checked without it, and the wire then asked past both)
            think = _thinking_reserve(m)
            rows.append(
                {
                    "id": m.id,
                    "price_in": price.input if price else math.nan,
                    "price_out": price.output if price else math.nan,
                    "context_window": max(m.context_window - think, 0),
                    "max_output": max(m.max_output - think, 0),
                    "capabilities": sorted(m.capabilities),
                    "p95_ms": m.p95_latency_ms if m.p95_latency_ms is not None else math.nan,
                    "tokenizer": m.tokenizer,
                    "bias": float(p.bias),
                    "ability": [float(a) for a in p.ability],
                    "emb": None if p.emb is None else list(p.emb),
                    "disabled": m.disabled,
                    "long_above": tiers[0].above if tiers else math.inf,
                    "long_in": long_in,
                    "long_out": long_out,
                    "fee": _fee(m),
                    "thinking": think,
                    "thinking_fixed": bool(think) and m.thinking != "adaptive",
                    "thinking_rate": _thinking_rate(m),
                }
            )
        rules: list[RuleSpec] = []
        for r in self.rules:
            idx = [registry.index(mid) for mid in r.use]  # UnknownModelError names the id
            if r.task is not None and r.task not in _core.TASKS:
                raise ConfigError(f"rule {r.name!r}: unknown task {r.task!r}; use {_core.TASKS}")
            rules.append(
                {
                    "name": r.name,
                    "task": r.task,
                    "flags": list(r.flags),
                    "min_tokens_in": r.min_tokens_in,
                    "max_tokens_in": r.max_tokens_in,
                    "models": idx,
                }
            )
        for task, ladder in self.cascades.items():
            for step in ladder.steps:
                for mid in step.models:
                    if mid not in registry:
                        raise ConfigError(
                            f"policy.cascades[{task!r}] names {mid!r}, which the registry "
                            "lacks: add it to the registry or calibrate again with this one"
                        )
        expected = [
            int(self.expected_output_tokens.get(t, DEFAULT_EXPECTED_OUTPUT[t])) for t in _core.TASKS
        ]
        return _core.DispatchTable(
            rows,
            qm.w,
            qm.c,
            qm.k,
            rules,
            expected,
            qm.hash_buckets,
            qm.seed,
        )

    # -- persistence (what `satisfice calibrate` writes)
    def to_dict(self) -> dict[str, Any]:
        return {
            "quality_floor": self.quality_floor,
            "lam": self.lam,
            "max_fallbacks": self.max_fallbacks,
            "strict_floor": self.strict_floor,
            "expected_output_tokens": dict(self.expected_output_tokens),
            "rules": [
                {
                    "name": r.name,
                    "use": list(r.use),
                    "when": {
                        k: v
                        for k, v in (
                            ("task", r.task),
                            ("flags", list(r.flags)),
                            ("min_tokens_in", r.min_tokens_in),
                            ("max_tokens_in", r.max_tokens_in),
                        )
                        if v not in (None, [], 0.0, math.inf)
                    },
                }
                for r in self.rules
            ],
            **(
                {"cascades": {t: c.to_dict() for t, c in self.cascades.items()}}
                if self.cascades
                else {}
            ),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], quality: QualityModel | None = None) -> Policy:
        known = (
            "quality_floor",
            "lam",
            "max_fallbacks",
            "strict_floor",
            "expected_output_tokens",
            "rules",
            "predictor",
            "cascades",
        )
        if unknown := set(d) - set(known):  # (named with the known ones, as a registry's are)
            raise ConfigError(
                f"policy: unknown field(s) {sorted(map(str, unknown))}; known: {list(known)}"
            )
        pred = d.get("predictor")
        if pred is not None and not isinstance(pred, str):
            raise ConfigError(f"policy.predictor must be a file path, got {pred!r:.60}")
        if quality is None and pred:
            quality = QualityModel.load(pred)
        rules, eot = d.get("rules", []), d.get("expected_output_tokens", {})
        if not isinstance(rules, list):
            raise ConfigError("policy.rules must be a list of rule objects")
        if not isinstance(eot, Mapping):
            raise ConfigError("policy.expected_output_tokens must map a task to a token count")
        return cls(
            rules=tuple(Rule.from_dict(r) for r in rules),
            quality_floor=d.get("quality_floor", 0.8),
            lam=d.get("lam"),
            max_fallbacks=d.get("max_fallbacks", 3),
            strict_floor=_bool(d.get("strict_floor", False), "policy.strict_floor"),
            expected_output_tokens={**DEFAULT_EXPECTED_OUTPUT, **eot},
            quality=quality,
            cascades=_cascades(d.get("cascades", {})),
        )

    def save(self, path: str | Path, predictor_path: str | Path | None = None) -> None:
        """Write the policy as JSON. `predictor_path` (a saved QualityModel) is recorded as
        `"predictor"`, relative to the policy file when it sits beside it."""
        from pathlib import Path

        p = Path(path)
        data = self.to_dict()
        if predictor_path is not None:
            pred = Path(predictor_path)
            try:
                data["predictor"] = str(pred.resolve().relative_to(p.resolve().parent))
            except ValueError:
                data["predictor"] = str(pred.resolve())
        # Whole or not at all: a write that fails part-way (disk full) must leave the previous
        # policy readable, not truncated.
        text = (json.dumps(data, indent=2) + "\n").encode("utf-8")
        write_atomic(p, lambda f: f.write(text))

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a policy JSON; a relative `"predictor"` path is taken from the file's folder."""
        data = read_policy_file(path)
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"policy file {path}: {e}"[:300]) from None
        except OSError as e:  # its predictor file: a directory, no permission
            raise ConfigError(f"policy file {path} cannot be read: {e.strerror}") from None


def read_policy_file(path: str | Path) -> dict[str, Any]:
    """A policy file's JSON object, its relative `"predictor"` path taken from the file's
    folder: what `Policy.load` reads, and what a command rewriting the file keeps (one that
    read the path from where it ran had written a policy naming a predictor that was not
    there)."""
    from pathlib import Path

    try:
        # a byte-order mark is no error; a key given twice is (the last had won unsaid)
        raw = read_bounded(path, f"over {MAX_FILE_BYTES >> 20} MB, which no policy needs; "
                           "give the policy's own file")  # fmt: skip
        data = _json_once(raw.decode("utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"policy file {path} does not exist") from None
    except ConfigError as e:
        raise ConfigError(f"policy file {path}: {e}"[:300]) from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        # (ValueError: JSON's errors, and an integer past the 4,300 digits Python reads)
        raise ConfigError(f"policy file {path} is not valid JSON: {e}"[:300]) from None
    except OSError as e:  # a directory, no permission
        raise ConfigError(f"policy file {path} cannot be read: {e.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"policy file {path} must hold a JSON object")
    if isinstance(data.get("predictor"), str) and data["predictor"]:  # ("": none, as from_dict)
        data["predictor"] = str(Path(path).parent / data["predictor"])
    return data


def _cascades(d: object) -> dict[str, Cascade]:
    from .cascade import Cascade

    if not isinstance(d, Mapping):
        raise ConfigError(f"policy.cascades must map a task to a ladder, got {d!r:.60}")
    return {str(t): Cascade.from_dict(c, f"policy.cascades[{t!r}]") for t, c in d.items()}


def _finite_number(v: object) -> bool:
    """A real number >= 0 that fits a float (10**400 does not); see `as_real`."""
    f = as_real(v)
    return f is not None and f >= 0


def _bool(v: object, where: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{where} must be true or false, got {v!r}")
    return v


_BUNDLED: list[QualityModel] = []


def _bundled_quality() -> QualityModel:
    # Loaded once per process: the bundled file never changes under a running router.
    if not _BUNDLED:
        _BUNDLED.append(QualityModel.bundled())
    return _BUNDLED[0]
