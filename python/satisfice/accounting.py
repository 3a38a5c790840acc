"""Tokens and USD of one answered call: the provider's usage, else satisfice's own count;
the registry price applied to it (None when unpriced, never $0)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import _core
from ._extra import text_bytes
from .errors import SatisficeError
from .providers.base import ChatResponse, Usage

if TYPE_CHECKING:
    from .registry import Price

__all__ = ["cost_of", "countable", "text_tokens", "usage_of"]


#: Above this many bytes, text is estimated rather than counted: an exact count of a large
#: answer would hold the event loop (and the request's deadline) for a noticeable time.
COUNT_LIMIT_BYTES = 256 * 1024


def countable(nbytes: int) -> bool:
    """Whether an exact count of `nbytes` of text is cheap now: small enough, and the
    tokenizers built (in a process's first seconds a count would wait for them, holding
    the event loop)."""
    return nbytes <= COUNT_LIMIT_BYTES and _core.tokenizers_ready()


def text_tokens(text: str, tokenizer: str) -> int:
    """Tokens of `text`: counted when `countable`, else estimated."""
    if countable(len(text)):
        return _core.count_tokens(text, tokenizer)
    return round(_core.estimate_tokens(text, tokenizer))


def reported(resp: ChatResponse) -> Usage | None:
    """The upstream's usage, if it is one: no prompt tokens, or no output beside an answer,
    is none (such a call was billed, and had been recorded at $0)."""
    u, said = resp.usage, resp.text or resp.tool_calls or resp.refusal
    if u is not None and u.prompt_tokens > 0 and (u.completion_tokens > 0 or not said):
        return u
    return None


def usage_of(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: str,
    resp: ChatResponse,
    extra: str | None = None,
    routed: int | None = None,
) -> Usage:
    """Provider-reported usage, else our own count (exact for OpenAI encodings when
    `countable`; estimated otherwise, and `source` says so). `extra` (`extra_text`: tool
    definitions, a response schema) is prompt text too. `routed`: the prompt's tokens as
    its routing took them for this model (`Decision.tokens_in`), what a prompt that is not
    `countable` is billed."""
    u = reported(resp)
    if u is not None:
        return u
    if extra:
        messages = [*messages, {"role": "system", "content": extra}]
    out = resp.text + (resp.refusal or "") + "".join(c.name + c.arguments for c in resp.tool_calls)
    big = not countable(len(out) + text_bytes(messages))
    exact = _core.is_exact_family(tokenizer) and not big and _text_only(messages)
    try:
        if big and routed:
            # routing's figure is its count when it made one, else the same estimate held
            # within the count's bounds: the raw estimate had billed 300 KB of punctuation,
            # counted at 200,008 tokens for a cost cap, as 40,660
            n_in = routed
        elif big:
            n_in = round(_core.estimate_message_tokens(messages, tokenizer))
        else:
            n_in = _core.count_message_tokens(messages, tokenizer)
    except SatisficeError:  # messages the counter cannot read (exotic parts): estimate
        n_in, exact = sum(len(str(m.get("content", ""))) for m in messages) // 4, False
    n_out = (
        round(_core.estimate_tokens(out, tokenizer)) if big else _core.count_tokens(out, tokenizer)
    )
    return Usage(n_in, n_out, source="counted" if exact else "estimated")


def _text_only(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a count of `messages` can be exact: no image, file or audio part (images
    count at a typical figure; files and audio not at all)."""
    return all(
        not isinstance(c := m.get("content"), list)
        or all(isinstance(p, Mapping) and p.get("type") in _TEXT_PARTS for p in c)
        for m in messages
    )


_TEXT_PARTS = ("text", "input_text", "refusal")


def cost_of(price: Price | None, usage: Usage) -> float | None:
    """USD of a call's usage at `price`: None when unpriced, or when it ran web searches
    the price has no rate for (unknown, never free)."""
    if price is None:
        return None
    searches = 0.0
    if usage.web_searches:
        if price.per_search is None:
            return None
        searches = usage.web_searches * price.per_search
    return searches + price.cost(
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
        cache_write_1h=usage.cache_write_1h_tokens,
        reasoning_tokens=usage.reasoning_tokens,
    )
