"""The text a request sends besides its messages, for counting, and what routing must know
of its messages (a module of its own: the router reads it on every route, and must not
import the HTTP stack to do so)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

from .errors import InputError

TYPE_CHECKING = False  # not typing's: Router() does not import typing (cold_start.py)
if TYPE_CHECKING:
    from typing import Any, overload

__all__ = ["LIMITS", "extra_text", "header_text", "server_turns", "text_bytes"]


#: The output limits a request's `extra` may carry (any wire's name for max_tokens).
LIMITS = frozenset({"max_tokens", "max_completion_tokens", "max_output_tokens"})


def extra_text(tools: Any, response_format: Any) -> str | None:
    """The text a request sends besides its messages (tool definitions, a JSON schema), as
    the provider sends it (compact, UTF-8 as is), for counting; None when there is none."""
    if not tools and not response_format:  # the usual request: nothing to encode
        return None
    try:
        parts = [json.dumps(v, separators=(",", ":"), ensure_ascii=False, default=str)
                 for v in (tools, response_format) if v]  # fmt: skip
        for p in parts:  # a lone surrogate, no UTF-8: refused here, before any admission
            p.encode()
    except (ValueError, TypeError, RecursionError) as e:
        raise InputError(
            f"tools or response_format cannot be sent as JSON ({type(e).__name__}); "
            "pass plain dicts, lists, strings and numbers, nested less deeply"
        ) from None
    return "".join(parts) or None


def server_turns(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a turn sent back ran one of Anthropic's server tools (an assistant message's
    `anthropic_content`, Anthropic's blocks as they came): only a Claude model can be sent
    it, so the request goes to Claude models alone, server tools offered now or not."""
    for m in messages:  # noqa: SIM110 (a loop, not any(): no generator made on every call)
        if "anthropic_content" in m:
            return True
    return False


#: What the exact count reads of a message besides its content (`messages_from` in
#: rust/py.rs): any other key of a message, a part or a tool call is counted, its name and
#: its str().
_READ = frozenset({"role", "content", "cache_control", "tool_calls", "function_call",
                   "thinking_blocks"})  # fmt: skip
_PART_SKIP = frozenset({"cache_control", "type"})
#: Parts whose payload is no text (an image's, a file's): bounded, not counted as text.
_MEDIA = frozenset({"image_url", "image", "input_image", "input_audio", "file", "input_file"})


#: What a container of more than `_MANY` items in a text field counts as: past any bound
#: (made into text, a 3M-item list had held the event loop 90 ms before routing went to a
#: thread; the count refuses it anyway, or estimates it).
_MANY, _PAST_ANY_BOUND = 1024, 1 << 40


def _size(v: object) -> int:
    if isinstance(v, str):
        return len(v)
    if v is None:
        return 0
    if isinstance(v, list | tuple | dict) and len(v) > _MANY:
        return _PAST_ANY_BOUND
    try:
        return len(str(v))
    except Exception:  # (1,000 nested lists: a RecursionError had come out of chat() raw)
        return 0  # the count, inline now, refuses it with its field's name (InputError)


def _unread(d: Mapping[str, Any], read: frozenset[str] | tuple[str, ...]) -> int:
    """The keys of `d` outside `read`, and their values, as the count reads them."""
    return sum(len(str(k)) + _size(v) for k, v in d.items() if k not in read)


if TYPE_CHECKING:

    @overload
    def text_bytes(msgs: Sequence[Mapping[str, Any]], most_items: None = None) -> int: ...
    @overload
    def text_bytes(msgs: Sequence[Mapping[str, Any]], most_items: int) -> int | None: ...


def text_bytes(msgs: Sequence[Mapping[str, Any]], most_items: int | None = None) -> int | None:
    """How much text (characters) an exact count of `msgs` reads: everything the Rust count
    reads (contents; in an agent's history tool calls, their ids and names, thinking sent
    back; any key of a message or part it does not know, which the OpenAI wire forwards).
    What decides whether a count can run on the event loop: a 4 MB tool_call_id, missed
    here, had been counted on it. None, unread, when the messages hold more than
    `most_items` content parts, tool calls, thinking blocks and keys of the dicts read in
    all: walking them is itself long (one message of 500,000 one-letter parts had held the
    event loop 0.24 s here, one of a million keys 0.2 s)."""
    n = items = 0
    bound = most_items if most_items is not None else math.inf
    for m in msgs:
        content = m.get("content")
        if isinstance(content, str):
            n += len(content)
        elif isinstance(content, list | tuple):
            items += len(content)
            if items > bound:
                return None
            for p in content:
                if isinstance(p, Mapping) and p.get("type") not in _MEDIA:
                    items += len(p)  # (its keys are read one by one too)
                    if items > bound:
                        return None
                    n += _unread(p, _PART_SKIP)
        if len(m) > 2 or "content" not in m:  # more than role and content: an agent's
            # turn, a named one (an assistant's tool calls with no content key, as well)
            items += len(m)  # (a message of a million keys: each read below)
            if items > bound:
                return None
            n += _unread(m, _READ)
            if isinstance(f := m.get("function_call"), Mapping):  # the legacy tool call
                items += len(f)
                if items > bound:
                    return None
                n += _unread(f, ())
            calls = m.get("tool_calls")
            if not isinstance(calls, list | tuple):
                calls = ()  # (refused by the count)
            items += len(calls)
            if items > bound:
                return None
            for call in calls:
                if isinstance(call, Mapping):
                    items += len(call)
                    if items > bound:
                        return None
                    n += _unread(call, ("function", "custom"))
                    for kind in ("function", "custom"):
                        if isinstance(f := call.get(kind), Mapping):
                            items += len(f)
                            if items > bound:
                                return None
                            n += _unread(f, ())
            blocks = m.get("thinking_blocks")
            if not isinstance(blocks, list | tuple):
                blocks = ()
            items += len(blocks)
            if items > bound:
                return None
            for b in blocks:
                if isinstance(b, dict):
                    n += _size(b.get("thinking")) + _size(b.get("data"))
    return n


def header_text(v: object, most: int = 8192) -> bool:
    """Whether `v` can be sent as an HTTP header's value (a request's anthropic-beta): a
    non-empty str of visible ASCII, spaces and tabs, at most `most` characters."""
    return (
        isinstance(v, str) and 0 < len(v) <= most and all(" " <= c <= "~" or c == "\t" for c in v)
    )
