"""What a request returns: the answer, and a ledger-ready account of how it was obtained."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from time import time
from typing import TYPE_CHECKING, Any

from ._real import as_count, as_real
from .providers.base import ToolCall, Usage

if TYPE_CHECKING:
    from .cascade import CascadeResult
    from .decision import Decision

__all__ = ["Attempt", "ChatResult"]

# Outcomes of calls that reached an upstream and may be billed (errors and skips are not).
_BILLED = frozenset({"ok", "rejected", "cancelled", "check"})


def bills(outcome: object, estimated: object) -> bool:
    """Whether an attempt (its `outcome`, and whether its cost is `estimated`) is one an
    upstream may bill: the one rule for a total, a record's calls and a span."""
    return outcome in _BILLED or bool(estimated)


def billed_cost(attempts: Sequence[Any]) -> tuple[float, bool] | None:
    """(USD, whether any was billed) over the attempts an upstream may bill: answers, hedge
    and race losers, rejected answers, and calls that timed out or broke after reaching it
    (at an estimate, `cost_estimated`). None when one of those costs is unknown (an
    unpriced model): never a partial sum that counts it as $0. One rule for a result's
    `total_cost_usd` and a failed request's record."""
    total, billed = 0.0, False
    for a in attempts:
        if not bills(getattr(a, "outcome", None), getattr(a, "cost_estimated", False)):
            continue
        cost = getattr(a, "cost_usd", None)
        if cost is None:
            return None
        total += cost
        billed = True
    return total, billed


def billed_calls(rec: Mapping[str, Any]) -> list[tuple[str, str, float | None, int, int]]:
    """A request record's bill call by call: (model, deployment, USD or None when unknown,
    tokens in, tokens out) of each attempt an upstream may bill (`billed_cost`'s rule), and
    an unknown part of the request's total that no call names (a stream cut off in flight)
    on its model. Where money went, model by model: the request's total had been put on
    the model that answered, a cascade's rejected call and a race's loser with it."""
    model = str(rec.get("model") or (rec.get("decision") or {}).get("model") or "")
    out: list[tuple[str, str, float | None, int, int]] = []
    for a in rec.get("attempts") or ():
        if not isinstance(a, Mapping):
            continue
        if not bills(a.get("outcome"), a.get("cost_estimated")):
            continue
        cost = as_real(a.get("cost_usd"))
        if cost is not None and cost < 0:
            cost = None  # (a hand-edited record's, or unpriced: unknown, never $0)
        u = a.get("usage")
        if not isinstance(u, Mapping):
            u = {}
        t_in, t_out = _tokens(u.get("prompt_tokens")), _tokens(u.get("completion_tokens"))
        called = str(a.get("model") or model)
        out.append((called, str(a.get("deployment") or ""), cost, t_in, t_out))
    dep, total = str(rec.get("deployment") or ""), rec.get("total_cost_usd")
    if total is None:
        if all(c is not None for _, _, c, _, _ in out):
            out.append((model, dep, None, 0, 0))
        return out
    known = [c for _, _, c, _, _ in out if c is not None]
    if len(known) < len(out) or not math.isclose(sum(known), total, rel_tol=1e-9, abs_tol=1e-12):
        # calls that do not add up to the total (a record written by hand, or by another
        # program): the total on the request's model, its tokens an answer's
        if rec.get("outcome", "ok") != "ok":
            return [(model, dep, total, 0, 0)]
        t_in, t_out = _tokens(rec.get("tokens_in")), _tokens(rec.get("tokens_out"))
        return [(model, dep, total, t_in, t_out)]
    return out


def _tokens(n: object) -> int:
    """A usage's count as a bill reads it: 0 for none, or one that is no count."""
    return max(as_count(n) or 0, 0)


@dataclass(slots=True)
class Attempt:
    """One call (or one skipped deployment) made for a request.

    `outcome`: "ok"; "error" (`error_type` names the errors.py class); "skipped"
    (`error_type` names why: "unavailable" — cooling or disabled, "no_api_key", "window" —
    too small for a prompt a smaller one refused, "deadline" — passed, "cost_cap" — nothing
    left of it for an answer, "no_deployment"); "cancelled" (a hedge or race
    loser); "rejected" (answered, but the `accept` validator or a cascade step's check said
    no); "check" (a call a check made itself, a judge's: `deployment` names the check).
    `cost_usd` is what the call cost as far as it is known: from usage when it
    answered, the prompt alone (estimated) when it was cancelled in flight, None when
    unpriced; `cost_estimated` when it is not from the upstream's own usage figures
    (estimated, or counted here). `step` is the cascade step the call belonged to;
    `verdict` the check's {passed, confidence, reason} when the answer was checked.
    """

    model: str
    deployment: str
    outcome: str
    started_s: float = 0.0  # since the request started
    duration_s: float = 0.0
    error_type: str | None = None
    error: str | None = None
    status: int | None = None
    retry_after: float | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    cost_estimated: bool = False
    step: int | None = None
    verdict: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        u = self.usage  # by hand: dataclasses.asdict deep-copies and is ~5x slower
        return {
            "model": self.model, "deployment": self.deployment, "outcome": self.outcome,
            "started_s": self.started_s, "duration_s": self.duration_s,
            "error_type": self.error_type, "error": self.error, "status": self.status,
            "retry_after": self.retry_after,
            "usage": None if u is None else {
                "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                "cached_tokens": u.cached_tokens, "cache_write_tokens": u.cache_write_tokens,
                "source": u.source,
                # billed apart (a 1-hour cache write at 2x input; reasoning is output): the
                # record's cost had not been explainable from its own tokens without them
                **({"cache_write_1h_tokens": u.cache_write_1h_tokens}
                   if u.cache_write_1h_tokens else {}),
                **({"reasoning_tokens": u.reasoning_tokens} if u.reasoning_tokens else {}),
                **({"web_searches": u.web_searches} if u.web_searches else {}),
            },
            "cost_usd": self.cost_usd, "cost_estimated": self.cost_estimated,
            "step": self.step, "verdict": self.verdict,
        }  # fmt: skip


@dataclass(slots=True)
class ChatResult:
    """The answer and its accounting: what every strategy (single call, fallbacks, hedge,
    race, cascade, workflow step, stream) returns, and the one request record.

    `usage` is the provider's report, else satisfice's own count (`usage.source` says which).
    `cost_usd` is this answer's cost from the registry price (None when unpriced);
    `total_cost_usd` adds every other attempt that cost something (hedge and race losers).
    `overhead_s` is the time satisfice itself added: total latency minus what a direct call
    would spend as well (encoding the request's JSON, the HTTP exchange, decoding the
    answer's JSON), and, for streams, minus time the caller spent between items. Routing,
    building the request, reading the answer, counting and pricing it, and building this
    result count here; `latency_s` of `chat()` runs until it returns (its record aside).
    """

    text: str
    model: str
    deployment: str
    usage: Usage
    cost_usd: float | None
    latency_s: float
    overhead_s: float
    attempts: list[Attempt]
    decision: Decision
    finish_reason: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    raw: Any = field(default=None, repr=False)
    ttft_s: float | None = None  # streams: time to the first piece of text
    cascade: CascadeResult | None = None  # the ladder's steps, when a cascade answered
    cascade_skipped: str | None = None  # cascade="auto" routed plainly instead: why
    started_at: float = field(default_factory=time)  # Unix time the request arrived
    metadata: dict[str, Any] = field(default_factory=dict)  # the caller's tags
    stop_sequence: str | None = None  # the caller's stop sequence that ended the answer
    refusal: str | None = None  # the model's refusal to answer, when it said so apart
    # A Claude model's thinking, as Anthropic's API gave it ("thinking" and
    # "redacted_thinking" blocks): put it on the assistant message as `thinking_blocks`
    # when a tool loop goes on (a thinking model's next turn needs it back, unchanged)
    thinking: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def request_id(self) -> str:
        """The request's id for `router.feedback(request_id, score)`, which then credits
        the model that answered (a fallback, if one did), not the routed primary."""
        return self.decision.answered_by(self.model)

    @property
    def total_cost_usd(self) -> float | None:
        """This answer plus every other call that may be billed (hedge and race losers,
        rejected answers, and calls that timed out or broke mid-stream after reaching the
        upstream, at an estimate: `cost_estimated`); None when any of their costs is unknown
        (an unpriced model), never a partial sum that counts it as $0."""
        out = billed_cost(self.attempts)
        if out is None:
            return None
        return out[0] if out[1] else self.cost_usd

    @property
    def fallbacks_used(self) -> list[str]:
        """Models tried (and failed or skipped) before the one that answered; a check's own
        calls (a judge's) are not tries."""
        out: list[str] = []
        for a in self.attempts:
            if a.model != self.model and a.model not in out and a.outcome != "check":
                out.append(a.model)
        return out

    def to_record(self) -> dict[str, Any]:
        """The one flat, JSON-ready record of the request, whatever strategy answered it."""
        d = self.decision
        billed = self.total_cost_usd
        return {
            "request_id": self.request_id,
            "started_at": self.started_at,
            "metadata": dict(self.metadata),
            "task": d.task,
            "flags": d.flags,
            "decision": d.record(),
            "model": self.model,
            "deployment": self.deployment,
            "est_tokens_in": d.primary.tokens_in,
            "est_tokens_in_exact": d.primary.tokens_in_exact,
            "est_cost_usd": d.est_cost_usd,
            "tokens_in": self.usage.prompt_tokens,
            "tokens_out": self.usage.completion_tokens,
            "cached_tokens": self.usage.cached_tokens,
            "usage_source": self.usage.source,
            "cost_usd": self.cost_usd,
            "total_cost_usd": billed,
            "cost_estimated": any(a.cost_estimated for a in self.attempts),
            "latency_s": self.latency_s,
            "overhead_s": self.overhead_s,
            "ttft_s": self.ttft_s,
            "finish_reason": self.finish_reason,
            "attempts": [a.to_dict() for a in self.attempts],
            "cascade": None if self.cascade is None else self.cascade.to_dict(),
            "cascade_skipped": self.cascade_skipped,
        }
