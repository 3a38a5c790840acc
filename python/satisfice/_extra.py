"""The text a request sends besides its messages, for counting, and what routing must know
of its messages (a module of its own: the router reads it on every route, and must not
import the HTTP stack to do so)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from .errors import InputError

TYPE_CHECKING = False  # not typing's: Router() does not import typing (cold_start.py)
if TYPE_CHECKING:
    from typing import Any

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


def text_bytes(msgs: Sequence[Mapping[str, Any]]) -> int:
    """The text an exact count reads: contents and, in an agent's history, tool calls'
    arguments and custom tools' input (4 MB of them had been counted on the event loop)."""
    n = 0
    for m in msgs:
        if isinstance(f := m.get("function_call"), dict):  # the legacy form of a tool call
            n += len(str(f.get("arguments") or ""))
        for k in ("name", "refusal", "reasoning_content"):  # as the Rust count reads them
            if isinstance(v := m.get(k), str):
                n += len(v)
        if (turn := m.get("anthropic_content")) is not None:  # counted as its str()
            n += len(str(turn))
        calls = m.get("tool_calls")
        for call in calls if isinstance(calls, list | tuple) else ():  # else refused later
            if isinstance(call, dict):
                if isinstance(f := call.get("function"), dict):
                    n += len(str(f.get("arguments") or ""))
                if isinstance(f := call.get("custom"), dict):
                    n += len(str(f.get("input") or ""))
        content = m.get("content")
        if isinstance(content, str):
            n += len(content)
        elif isinstance(content, list):
            n += sum(
                len(t)
                for p in content
                if isinstance(p, dict) and isinstance(t := p.get("text", p.get("refusal")), str)
            )
    return n


def header_text(v: object, most: int = 8192) -> bool:
    """Whether `v` can be sent as an HTTP header's value (a request's anthropic-beta): a
    non-empty str of visible ASCII, spaces and tabs, at most `most` characters."""
    return (
        isinstance(v, str) and 0 < len(v) <= most and all(" " <= c <= "~" or c == "\t" for c in v)
    )
