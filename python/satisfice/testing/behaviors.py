"""What the local upstream does with one request: scripted behaviours."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    pass

Kind = Literal["reply", "status", "hang", "reset", "malformed"]


@dataclass(frozen=True, slots=True)
class Behavior:
    """What the upstream does with one request. Build with reply(), status(), hang(), ..."""

    kind: Kind
    latency: float = 0.0  # seconds before the first byte
    text: str | None = None  # None: "answer from <model>"
    usage: bool | tuple[int, int, int] = True  # False omits usage; (in, out, cached) fixes it
    code: int = 200
    retry_after: float | None = None
    message: str = ""
    after_chunks: int = 0  # reset: stream events (or body bytes / 8) sent before the reset
    chunk_delay: float = 0.0  # streaming: pause between events
    tool_call: tuple[str, str] | None = None  # (name, JSON arguments)
    # what an Anthropic model asked to think writes as its thinking (None: a line of its
    # own); "redacted" gives a redacted_thinking block instead
    thinking: str | None = None


def reply(
    text: str | None = None,
    *,
    latency: float = 0.0,
    usage: bool | tuple[int, int, int] = True,
    chunk_delay: float = 0.0,
    tool_call: tuple[str, str] | None = None,
    thinking: str | None = None,
) -> Behavior:
    """A normal answer (streamed as SSE when the request asks for it)."""
    return Behavior(
        "reply", latency, text, usage, chunk_delay=chunk_delay, tool_call=tool_call,
        thinking=thinking,
    )  # fmt: skip


def status(
    code: int, *, retry_after: float | None = None, message: str = "", latency: float = 0.0
) -> Behavior:
    """An HTTP error in the API's own error shape, with Retry-After when given."""
    return Behavior("status", latency, code=code, retry_after=retry_after, message=message)


def context_length() -> Behavior:
    """The 400 a provider sends when the prompt does not fit the window."""
    return status(
        400,
        message="This model's maximum context length is 8192 tokens; "
        "your messages resulted in 9000 tokens (context_length_exceeded)",
    )


def hang() -> Behavior:
    """Accept the request and never answer (a read timeout for the client)."""
    return Behavior("hang")


def reset(after_chunks: int = 0, *, latency: float = 0.0) -> Behavior:
    """Send the headers and `after_chunks` stream events, then reset the connection (RST)."""
    return Behavior("reset", latency, after_chunks=after_chunks)


def malformed(*, latency: float = 0.0) -> Behavior:
    """A 200 whose body (or a stream event) is not valid JSON."""
    return Behavior("malformed", latency)
