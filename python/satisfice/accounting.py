"""Tokens and USD of one answered call: the provider's usage, else satisfice's own count;
the registry price applied to it (None when unpriced, never $0)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import _core
from .errors import SatisficeError
from .providers.base import ChatResponse, Usage

if TYPE_CHECKING:
    from .registry import Price

__all__ = ["cost_of", "usage_of"]


def usage_of(messages: Sequence[Mapping[str, Any]], tokenizer: str, resp: ChatResponse) -> Usage:
    """Provider-reported usage, else our own count (exact for OpenAI encodings)."""
    if resp.usage is not None:
        return resp.usage
    out = resp.text + "".join(c.name + c.arguments for c in resp.tool_calls)
    try:
        n_in = _core.count_message_tokens(messages, tokenizer)
    except SatisficeError:  # messages the counter cannot read (exotic parts): estimate
        n_in = sum(len(str(m.get("content", ""))) for m in messages) // 4
    source = "counted" if _core.is_exact_family(tokenizer) else "estimated"
    return Usage(n_in, _core.count_tokens(out, tokenizer), source=source)


def cost_of(price: Price | None, usage: Usage) -> float | None:
    if price is None:
        return None
    return price.cost(
        usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.cache_write_tokens
    )
