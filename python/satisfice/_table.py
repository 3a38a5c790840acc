"""The named rows a `_core.DispatchTable` is built from (typed here, read by name in Rust)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NotRequired, TypedDict

__all__ = ["ModelRowSpec", "RuleSpec"]


class ModelRowSpec(TypedDict):
    """One model row of a DispatchTable (prices in USD per 1M tokens; NaN = unpriced)."""

    id: str
    price_in: float
    price_out: float
    context_window: int
    max_output: int
    capabilities: Sequence[str]
    p95_ms: float  # NaN = unknown
    tokenizer: str
    bias: float
    ability: Sequence[float]
    emb: NotRequired[Sequence[float] | None]  # embedding logistic: 64 weights, intercept
    disabled: bool
    long_above: float  # prompt tokens above which the long-context prices apply; inf: none
    long_in: float
    long_out: float
    fee: float  # USD per call on top of tokens
    # thinking tokens the wire adds to max_tokens (Anthropic's budget), already taken off
    # context_window and max_output
    thinking: NotRequired[int]
    # the thinking is a budget max_tokens must exceed (extended thinking), not room that
    # adaptive thinking may use
    thinking_fixed: NotRequired[bool]
    # USD per thinking token at the cheapest deployment's rate: what a budget lowered to a
    # caller's `thinking_cap` takes off `fee` per token
    thinking_rate: NotRequired[float]


class RuleSpec(TypedDict):
    """One rule of a DispatchTable; `models` are row indices in preference order."""

    name: str
    task: str | None
    flags: Sequence[str]
    min_tokens_in: float
    max_tokens_in: float
    models: Sequence[int]
