"""The types every validator shares: an answer, a verdict, the context of a check."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

__all__ = ["PASS", "Answer", "Context", "Messages", "Validator", "Verdict", "accept", "resolve"]

Messages: TypeAlias = Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Answer:
    """One model's answer with what it cost; what a cascade's `call` returns.

    `cost_usd` None means unknown (unpriced), never free. `logprobs` are the completion's
    per-token log-probabilities when the provider returned them.
    """

    model: str
    text: str
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    logprobs: tuple[float, ...] | None = None
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Pass or fail, how sure (P(acceptable) in [0, 1]) and why. `calls` are the model calls
    the validator itself made (a judge), so the cascade can bill them to the step."""

    passed: bool
    confidence: float
    reason: str
    calls: tuple[Answer, ...] = ()


@dataclass(frozen=True, slots=True)
class Context:
    """What a validator may look at besides the answer: the request, the other answers
    (same step and earlier steps) that agreement checks compare against, and the router's
    predicted P(good) per model for this prompt."""

    messages: Messages = ()
    peers: Sequence[Answer] = ()
    p_good: Mapping[str, float] | None = None  # the router's prediction per model


class Validator(Protocol):
    @property
    def name(self) -> str: ...

    def __call__(self, answer: Answer, ctx: Context) -> Verdict | Awaitable[Verdict]: ...


async def resolve(result: Verdict | Awaitable[Verdict]) -> Verdict:
    """A verdict from a validator's return value, awaiting it if it is awaitable."""
    if isinstance(result, Verdict):
        return result
    return await result


PASS = Verdict(True, 1.0, "ok")


class _Accept:
    name = "accept"

    def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        return PASS


accept: Validator = _Accept()
"""Passes every answer: a ladder's last step usually takes what the top model says."""
