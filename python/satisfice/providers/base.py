"""The one Provider protocol, the normalized request/response types, and HTTP error mapping.

Requests and responses are normalized to the OpenAI Chat Completions vocabulary (messages,
`tools`, `finish_reason` in {stop, length, tool_calls, content_filter}); each provider
translates to and from its own wire format.

Failure mapping, shared by every provider:

    429, 408, 409, 425, 5xx, 529, connect/read errors, timeouts  -> RetryableError
    401, 403                                                      -> AuthError
    400/413/422 whose message talks about the context window      -> ContextLengthError
    other 400/422                                                 -> BadRequestError
    other 4xx (404 model not found, 405, ...)                     -> ProviderError
    200 whose body is not the JSON the API promises               -> RetryableError

A malformed 200 is retryable on purpose: the request was valid and the fault lies upstream
(a truncating proxy, an overloaded gateway), so another try or another deployment usually
works. Messages never carry headers, so an API key cannot leak through an error.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import email.utils
import hashlib
import math
import os
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import httpx

from .._json import encode_body, encode_finite, loads, utf8
from .._redact import (
    guard_logs,
    register,
    scrub,
    scrub_bytes,
    scrub_escaped,
    scrub_json,
    scrub_nested,
    scrub_values,
)
from ..errors import (
    AuthError,
    BadRequestError,
    ConfigError,
    ContextLengthError,
    ProviderError,
    RetryableError,
    StaleConnectionError,
    UpstreamTimeoutError,
)
from ..registry import url_secrets
from ..transport import (
    UNKNOWN,
    Poster,
    StaleConnection,
    body_pieces,
    mark_stage,
    read_body,
    stage_of,
)

#: A request's headers of its own, beside its deployment's: (name, value) pairs, or None.
OwnHeaders = tuple[tuple[str, str], ...] | None

__all__ = [
    "ChatRequest",
    "ChatResponse",
    "HTTPProvider",
    "Provider",
    "StreamDelta",
    "ToolCall",
    "Usage",
    "encode_finite",
    "error_from_response",
    "error_from_transport",
    "stream_error",
    "thinking_blocks",
]


@dataclass(slots=True)
class Usage:
    """Tokens of one call. `prompt_tokens` includes cached reads and cache writes.

    `source` is "provider" when the upstream reported it, "counted" when satisfice counted
    exactly (OpenAI encodings), "estimated" for families without a public tokenizer.
    """

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # prompt-cache writes with a 5-minute lifetime
    source: str = "provider"
    cache_write_1h_tokens: int = 0  # prompt-cache writes with a 1-hour lifetime
    reasoning_tokens: int = 0  # of completion_tokens, those spent reasoning
    web_searches: int = 0  # searches Anthropic's web search tool ran (billed apart)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def most_billed(kept: Usage | None, said: Usage | None) -> Usage | None:
    """The usage to bill of a stream that reported `kept` and then `said`: each count at the
    figure of either that bills more, so that no later report lowers the bill (the last had
    won: a message_delta's smaller input_tokens after message_start's, or an upstream that
    sends a usage on several chunks and a small one last, had billed the smaller figures).
    The prompt, the output, its reasoning, cache writes (priced over the input rate, a
    1-hour write over a 5-minute one), the fresh input and searches at their largest; cache
    reads, priced under the input rate, what the prompt leaves beside them (so reports that
    grow, as cumulative ones do, are billed the last). Each report passed its provider's
    checks, so the result does too: the parts sum to the largest prompt. A report that
    failed them (None) leaves the one before it."""
    if said is None or kept is None:
        return kept if said is None else said
    written = max(
        kept.cache_write_tokens + kept.cache_write_1h_tokens,
        said.cache_write_tokens + said.cache_write_1h_tokens,
    )
    hour = max(kept.cache_write_1h_tokens, said.cache_write_1h_tokens)
    prompt = max(kept.prompt_tokens, said.prompt_tokens)
    # The fresh input (neither read nor written) at its largest too, the reads what is left
    # of the prompt: Anthropic's message_delta counts are cumulative (server tools sample
    # more than once, and a later sampling reads what an earlier one wrote), and reads at
    # their fewest had billed a turn's 1,000 reads at the input rate. Still no report's
    # bill is lowered: the fresh input, the prompt and the writes are each at least its.
    fresh = min(
        max(
            kept.prompt_tokens - kept.cached_tokens - kept.cache_write_tokens
            - kept.cache_write_1h_tokens,
            said.prompt_tokens - said.cached_tokens - said.cache_write_tokens
            - said.cache_write_1h_tokens,
            0,
        ),
        prompt - written,
    )  # fmt: skip
    return Usage(
        prompt,
        max(kept.completion_tokens, said.completion_tokens),
        prompt - written - fresh,
        written - hour,
        cache_write_1h_tokens=hour,
        reasoning_tokens=max(kept.reasoning_tokens, said.reasoning_tokens),
        web_searches=max(kept.web_searches, said.web_searches),
    )


@dataclass(slots=True, frozen=True)
class ToolCall:
    """A tool call the model asked for. For a function (`type` "function"), `arguments` is
    the JSON text the model wrote; for an OpenAI custom tool (`type` "custom"), the free
    text it wrote as the tool's input."""

    id: str
    name: str
    arguments: str
    type: str = "function"

    def __post_init__(self) -> None:
        if not self.id:
            # Some OpenAI-compatible servers give a call no id. One is made here: given on
            # as "", the caller's result for it (tool_use_id "") was refused on the next
            # turn, by Anthropic's API and by satisfice's server, and the agent loop stuck.
            object.__setattr__(self, "id", "call_" + os.urandom(12).hex())


@dataclass(slots=True)
class ChatRequest:
    """One chat request in OpenAI form; `extra` is merged into the wire payload verbatim."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    stream: bool = False
    extra: dict[str, Any] | None = None
    # who the end user is and which prompts share a prefix: OpenAI's `user` and
    # `prompt_cache_key` (Anthropic's `metadata.user_id` for the first), sent where the
    # upstream documents them and takes the value (`sendable`), left out elsewhere: hints,
    # not worth a request the upstream would refuse
    user: str | None = None
    prompt_cache_key: str | None = None
    # Anthropic's `anthropic-beta` header, sent to Anthropic deployments only (its API's)
    anthropic_beta: str | None = None
    # Anthropic's `context_management` (its API's context editing: old tool results and
    # thinking cleared as a conversation grows), sent to Anthropic deployments only; other
    # models are sent the conversation whole
    context_management: dict[str, Any] | None = None
    # Anthropic's server tools (web search, web fetch: Anthropic runs them while the model
    # answers), sent as given beside `tools` to Anthropic deployments, which alone run them
    server_tools: list[dict[str, Any]] | None = None
    # a Claude row is sent its effort (`output_config.effort`) and no thinking: Anthropic's
    # effort asked without thinking (other APIs' efforts are their reasoning's)
    no_thinking: bool = False
    # Anthropic's `thinking.display` ("summarized", "omitted"), sent with the thinking to
    # Anthropic deployments only (no other API returns its reasoning as text)
    thinking_display: str | None = None
    # max_tokens holds the model's thinking as well as its answer (what Anthropic's
    # max_tokens means; `Constraints.output_includes_thinking`): sent as given, a thinking
    # budget inside it, not added on top
    thinking_within: bool = False
    # the caller's most thinking tokens (`Constraints.max_reasoning_tokens`, what
    # Anthropic's thinking.budget_tokens says): a thinking budget above it is sent as this
    # (`registry.thinking_budget`)
    thinking_cap: int | None = None


def sendable(hint: str | None, most: int | None = None) -> bool:
    """Whether `hint` (a ChatRequest's user or prompt_cache_key) can be sent: not empty,
    valid Unicode (a lone surrogate cannot be encoded), at most `most` characters."""
    if not hint or (most is not None and len(hint) > most):
        return False
    if hint.isascii():
        return True
    try:
        hint.encode()
    except UnicodeEncodeError:
        return False
    return True


_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def wire_tool_id(call_id: Any, valid: re.Pattern[str], length: int, prefix: str = "") -> str:
    """A tool call's id as an API that checks its ids takes it: the id itself when `valid`
    matches it whole, else `prefix` and `length` base-62 characters of its hash. The same
    id always maps alike, so a call and its result (and every turn that sends them again)
    still pair up; ids are chosen by whichever model made the call, and a conversation
    routed to another provider carries them there."""
    if isinstance(call_id, str) and valid.fullmatch(call_id):
        return call_id
    digest = hashlib.blake2b(str(call_id).encode("utf-8", "surrogatepass"), digest_size=16)
    n, out = int.from_bytes(digest.digest(), "big"), []
    for _ in range(length):
        n, r = divmod(n, 62)
        out.append(_BASE62[r])
    return prefix + "".join(out)


@dataclass(slots=True)
class ChatResponse:
    """A normalized answer. `raw` is the provider's JSON (the last event when streamed)."""

    text: str
    raw: Any
    usage: Usage | None
    finish_reason: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    # Seconds a direct call would spend as well: encoding the JSON, the HTTP exchange
    # (sending, waiting, reading), decoding the answer's JSON. Building the request and
    # reading the answer are the router's: ChatResult.overhead_s counts them. None: not
    # measured.
    wire_s: float | None = None
    stop_sequence: str | None = None  # the caller's stop sequence that ended it, when told
    refusal: str | None = None  # the model's refusal to answer, when it says so apart
    # The model's thinking as Anthropic's API gives it: "thinking" blocks (the text and its
    # signature) and "redacted_thinking" blocks, in order. Sent back unchanged on the
    # assistant turn of a tool loop (a message's `thinking_blocks`), as a thinking model's
    # next turn must be.
    thinking: list[dict[str, Any]] = field(default_factory=list)
    # web searches the answer shows it ran (Anthropic's server tool: one result block each),
    # billed by the search even when the upstream reports no usage
    web_searches: int = 0

    def __post_init__(self) -> None:
        # Every answer, whichever provider built it: JSON its caller decodes (a tool call's
        # arguments, a JSON answer) may hide a key behind an escape that scrubbing the text
        # cannot see.
        if not self.tool_calls:
            t = self.text
            # the usual answer: no call, and no escape to hide a key behind (a text that is
            # no str, which no provider of the package gives, passed as it was)
            if (t.__class__ is str and "\\" not in t) or not isinstance(t, str):
                return
        text = scrub_json(self.text)
        calls = _scrubbed_calls(self.tool_calls) if self.tool_calls else self.tool_calls
        if text is not self.text or calls is not self.tool_calls:
            # one was there: `raw` (the upstream's JSON, for callers) holds it too, inside a
            # string that is JSON itself
            self.text, self.tool_calls, self.raw = text, calls, scrub_nested(self.raw)
        if len(calls) > 1 and len({c.id for c in calls}) < len(calls):
            self.tool_calls = _distinct_ids(calls)


def _distinct_ids(calls: list[ToolCall]) -> list[ToolCall]:
    """`calls` with a repeated id made anew (as a missing one is): an OpenAI-compatible
    upstream had given two parallel calls one id, and the caller's two results, sent back,
    both went to one call (the other left with none, which Anthropic's API refuses)."""
    seen: set[str] = set()
    out = []
    for c in calls:
        if c.id in seen:
            c = replace(c, id="call_" + os.urandom(12).hex())
        seen.add(c.id)
        out.append(c)
    return out


def _scrubbed_calls(calls: list[ToolCall]) -> list[ToolCall]:
    """`calls` with `scrub_json` applied to each one's arguments: the same list if none
    changed."""
    out = [
        c if (a := scrub_json(c.arguments)) is c.arguments else replace(c, arguments=a)
        for c in calls
    ]
    return calls if all(a is b for a, b in zip(out, calls, strict=True)) else out


@dataclass(slots=True)
class StreamDelta:
    """One piece of a streamed answer. The last item has `done=True` and `.result` set.

    A model that thinks streams its thinking before (or, interleaved, between) its text:
    `thinking` is a piece of it, and `thought` the block it ends, whole, once it is signed
    (or a `redacted_thinking` block, which comes whole), as `ChatResult.thinking` lists
    them. A server tool Anthropic ran (a web search) comes as `block`s, whole, in their place
    among the text: its call (`server_tool_use`, with its input) and its result; after one,
    each text block's start is a `block` too (`{"type": "text", "text": ""}`, its text the
    pieces that follow), and `citation` a citation of that block's text (Anthropic's
    `citations_delta`).

    An item with none of these set says the model is still writing what comes whole at the
    end (a tool call's arguments, which can take minutes): at most one every
    `KEEPALIVE_S`, once the stream has begun (a server sends it on as a ping)."""

    text: str = ""
    done: bool = False
    result: Any = None  # satisfice.result.ChatResult on the final item
    thinking: str = ""
    thought: dict[str, Any] | None = None
    block: dict[str, Any] | None = None
    citation: dict[str, Any] | None = None


#: What a provider's stream yields for a piece of what it gives whole at the end (a tool
#: call's arguments, a refusal): progress, which the stream's idle timeout counts (a long
#: tool call had been cut by it, whatever was arriving).
PROGRESS = StreamDelta()


class Generated:
    """What a stream generated beside the text it gives (a tool call's arguments, `out`;
    reasoning a server streams apart, and thinking, `thought`), kept as it comes: the
    executor bills at least that for a stream that fails or is left before its end (a
    tool call 5,000 tokens long had been billed at the prompt alone)."""

    __slots__ = ("out", "thought", "usage")

    def __init__(self) -> None:
        self.out: list[str] = []
        self.thought: list[str] = []
        self.usage: Usage | None = None  # the usage it last reported


E = TypeVar("E", bound=ProviderError)


def carry_generated(err: E, made: Generated | None) -> E:
    """`err` with what its stream generated beside the text (`made`: a tool call's arguments,
    thinking, the usage last reported), where it carries less, and marked answered when
    that is output: billed at least that. A stream that timed out (its deadline, its idle
    limit) had been billed at the prompt alone, 2,000 tokens of a tool call and Anthropic's
    reported 6,000-token prompt left out."""
    if made is None:
        return err
    out, thought = "".join(made.out), "".join(made.thought)
    if len(out) > len(err.generated):
        err.generated = out
    if len(thought) > len(err.thought):
        err.thought = thought
    if err.reported is None:
        err.reported = made.usage
    u = err.reported
    if err.generated or err.thought or (u is not None and u.completion_tokens > 0):
        err.answered = True  # output was written (a prompt's usage alone is none)
    return err


#: The `Generated` of the call being made (the executor's, per call; a stream takes it as
#: it starts and keeps it to its end).
GENERATED: ContextVar[Generated | None] = ContextVar("satisfice_generated", default=None)
#: Seconds between the keep-alive items a stream gives while only PROGRESS comes.
KEEPALIVE_S = 5.0


class Provider(Protocol):
    """Calls one deployment. Implementations hold no per-request state.

    `stream` yields text pieces (and a thinking model's thinking, as StreamDelta items with
    `thinking` or `thought` set, and PROGRESS for a piece of a tool call), then exactly one
    ChatResponse (the assembled answer with usage, tool calls and thinking blocks) as its
    last item.
    """

    async def complete(self, request: ChatRequest, timeout: httpx.Timeout) -> ChatResponse: ...

    def stream(
        self, request: ChatRequest, timeout: httpx.Timeout
    ) -> AsyncGenerator[str | StreamDelta | ChatResponse, None]: ...


_RETRYABLE = frozenset({408, 409, 425, 429, 529})
_CONTEXT_WORDS = (
    "context length",
    "context_length",
    "context window",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "input is too long",
    "reduce the length",
    "exceeds the model",
)


#: What parsing an upstream's JSON can raise; each becomes a "malformed reply" error that
#: the executor retries or moves past, never a raw Python exception.
PARSE_ERRORS = (
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    OverflowError,
    RecursionError,
)
#: A reported token count above this is not believable (no context window is that large).
MAX_REPORTED_TOKENS = 100_000_000


def thinking_blocks(v: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's `thinking_blocks` (a thinking model's own, from
    `ChatResult.thinking`, to send back in a tool loop), checked: a list of "thinking"
    blocks (text and signature) and "redacted_thinking" blocks (data). BadRequestError
    otherwise: Anthropic would refuse the request for it, and no retry fixes that."""
    if not isinstance(v, list):
        raise BadRequestError(f"{where} must be a list of thinking blocks")
    for b in v:
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "thinking":
            ok = isinstance(b.get("thinking"), str) and isinstance(b.get("signature"), str)
        elif kind == "redacted_thinking":
            ok = isinstance(b.get("data"), str)
        else:
            ok = False
        if not ok:
            raise BadRequestError(
                f'{where}: each block is {{"type": "thinking", "thinking": ..., '
                '"signature": ...} or {"type": "redacted_thinking", "data": ...}, as the '
                "model gave it (ChatResult.thinking)"
            )
    return v


def text_field(v: Any, what: str) -> str:
    """A string field of a reply (None reads as ""); anything else is malformed."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    raise TypeError(f"{what} is a {type(v).__name__}, not a string")


def token_count(v: Any, what: str) -> int:
    """A reported token count: an integer in [0, MAX_REPORTED_TOKENS], else ValueError."""
    if v.__class__ is int and 0 <= v <= MAX_REPORTED_TOKENS:  # as JSON gives one (no bool)
        return v
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_REPORTED_TOKENS:
        raise ValueError(f"{what} = {str(v)[:40]!r} is not a plausible token count")
    return v


#: A Retry-After beyond this is not a wait anybody means (nor one worth honouring).
MAX_RETRY_AFTER_S = 86_400.0


def _seconds(v: float) -> float | None:
    """A usable wait: finite, clamped to [0, MAX_RETRY_AFTER_S]; None for nan or ±inf."""
    return min(max(v, 0.0), MAX_RETRY_AFTER_S) if math.isfinite(v) else None


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from `retry-after-ms`, `Retry-After` (seconds or HTTP date), or None.
    Values that are not finite (`nan`, `inf`) are ignored; absurd ones are capped."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            wait = _seconds(float(ms) / 1000.0)
        except (ValueError, OverflowError):
            wait = None
        if wait is not None:
            return wait
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return _seconds(float(value))
    except (ValueError, OverflowError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return _seconds(when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def _message_of(body: bytes) -> str:
    """The upstream's own error message (both APIs use {"error": {"message": ...}})."""
    try:
        data = parse_json(body)
    except (ValueError, RecursionError):
        if not utf8(body):
            # UTF-16 or UTF-32: the key's UTF-8 bytes, which the scrubbing looks for, are not
            # in it, and decoded as UTF-8 its text (a key echoed in it) had come through
            return f"(a body that is not UTF-8 text, {len(body):,} bytes)"
        # no JSON to decode: a key spelled with its escapes is read where it stands (before
        # the cut, which could split one)
        return scrub_escaped(body[:65536].decode("utf-8", "replace"))[:300].strip()
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err.get("type") or "")[:300]
    if isinstance(err, str):
        return err[:300]
    return str(data)[:300]


def error_from_response(
    status: int, headers: httpx.Headers, body: bytes, model: str, deployment: str
) -> ProviderError:
    """The errors.py class for a non-2xx answer."""
    said = _message_of(scrub_bytes(body))
    where = f"{model} via {deployment}"
    kw: dict[str, Any] = {"model": model, "deployment": deployment, "status": status}
    if status in _RETRYABLE or status >= 500:
        ra = parse_retry_after(headers)
        wait = f"; upstream asks to wait {ra:g}s" if ra is not None else ""
        return RetryableError(
            f"{where}: HTTP {status}{wait}: {said}", retry_after=ra, body=said, **kw
        )
    if status in (401, 403):
        return AuthError(
            f"{where}: HTTP {status}, the upstream rejected the API key ({said}); check the "
            "key in the deployment's api_key_env variable. The deployment is disabled until "
            "Health.enable() is called",
            body=said,
            **kw,
        )
    if status in (400, 413, 422):
        low = said.lower()
        if status == 413 or any(w in low for w in _CONTEXT_WORDS):
            return ContextLengthError(
                f"{where}: the prompt does not fit the model's context window ({said}); "
                "shorten it or route to a model with a larger window",
                body=said,
                **kw,
            )
        return BadRequestError(
            f"{where}: HTTP {status}, the upstream rejected the request ({said}); "
            "fix the request, retrying will not help",
            body=said,
            **kw,
        )
    return ProviderError(
        f"{where}: HTTP {status} ({said}); check the deployment's base_url and model name",
        body=said,
        **kw,
    )


def stream_error(data: bytes, model: str, deployment: str) -> RetryableError:
    """An error event inside a stream the upstream had answered 200: retryable (a server's
    hiccup, as OpenAI sends them), with no HTTP status of its own (it had been recorded as
    an HTTP 500 the caller never saw)."""
    said = _message_of(scrub_bytes(data))
    return RetryableError(
        f"{model} via {deployment}: error event in the stream: {said}",
        model=model,
        deployment=deployment,
        body=said,
    )


def error_from_transport(exc: Exception, model: str, deployment: str) -> RetryableError:
    """A RetryableError for an httpx transport failure (timeouts, resets, refused)."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, StaleConnection):
        return StaleConnectionError(
            f"{model} via {deployment}: connection failed ({detail})",
            model=model,
            deployment=deployment,
        )
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeoutError(
            f"{model} via {deployment}: no answer in time ({detail})",
            model=model,
            deployment=deployment,
        )
    return RetryableError(
        f"{model} via {deployment}: connection failed ({detail})",
        model=model,
        deployment=deployment,
    )


def parse_json(content: bytes | str) -> Any:
    """Upstream JSON (a body or a stream event), with every configured key scrubbed from its
    decoded strings. The raw text is scrubbed before it gets here, but a key written with
    any JSON escape (\\u0041, or \\/ inside a base64 key) is whole only once decoded, so
    the decoded strings are scrubbed too whenever the text has a backslash. Anything cut to
    a length for a message is cut after this, never before: a cut key would not match."""
    return scrubbed(loads(content), content)


def parse_event(content: str) -> tuple[Any, Any]:
    """A stream event as `parse_json` reads it, and beside it the same event with its lone
    surrogate halves kept (None when it has none): a pair an upstream split between two
    events (`"\\ud83d"`, then `"\\ude00"`) is whole again once the text pieces are
    joined (`Halves`); replaced in each event, it came out as two U+FFFD."""
    return _scrub(loads(content), content)


class Halves:
    """A stream's text pieces with a surrogate pair split between two of them joined: a
    high half at a piece's end waits for the next piece; any half left alone is U+FFFD."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = ""

    def take(self, piece: str) -> str:
        if self.held:
            piece, self.held = self.held + piece, ""
        if piece and "\ud800" <= piece[-1] <= "\udbff":
            piece, self.held = piece[:-1], piece[-1]
        return whole(piece) if piece else piece

    def rest(self) -> str:
        """What is still held once the stream ends: half a pair, U+FFFD."""
        held, self.held = self.held, ""
        return "\ufffd" if held else ""


def scrubbed(data: Any, content: bytes | str) -> Any:
    """`parse_json` after its `json.loads`: `data` decoded from `content`, scrubbed."""
    return _scrub(data, content)[0]


def _scrub(data: Any, content: bytes | str) -> tuple[Any, Any]:
    """`data` scrubbed, its lone surrogate halves replaced; beside it, when it had any, the
    same scrubbed data with them kept (else None): see `parse_event`."""
    # a byte test first: a regex scan of every answer was most of this function's cost
    # (a byte's int `in` bytes: see `_redact.scrub_bytes`)
    if isinstance(content, bytes):
        escaped = _BACKSLASH in content
        lone = (escaped or _ED in content) and _LONE_B.search(content) is not None
    else:
        escaped = "\\" in content
        lone = escaped and _LONE.search(content) is not None
    if escaped:
        data = scrub_values(data)
    return (_map_strings(data, whole), data) if lone else (data, None)


# Half of a surrogate pair, which decodes to a str no UTF-8 writer (a response, a log, the
# token counter) accepts: JSON may spell one alone as a \uD800-\uDFFF escape, and
# json.loads(bytes) lets its raw UTF-8 form (ED A0-BF xx) through as well.
_LONE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LONE_B = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\xed[\xa0-\xbf]")
_BACKSLASH, _ED = ord("\\"), 0xED  # bytes tested for as ints (`_redact.scrub_bytes`)


def whole(s: str) -> str:
    """`s` with every unpaired surrogate replaced by U+FFFD, as invalid UTF-8 bytes are."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _map_strings(data: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(data, str):
        return fn(data)
    if isinstance(data, list):
        return [_map_strings(v, fn) for v in data]
    if isinstance(data, dict):
        return {fn(k) if isinstance(k, str) else k: _map_strings(v, fn) for k, v in data.items()}
    return data


class HTTPProvider:
    """The HTTP plumbing both wire formats share: one deployment, a prebuilt URL and
    headers (the key lives there and nowhere else), failures mapped to errors.py."""

    __slots__ = (
        "_client", "_headers", "_merged", "_poster", "_posters", "_timeouts", "_url",
        "deployment", "effort", "model", "model_id", "reasoning_tokens", "thinking",
    )  # fmt: skip

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        deployment: str | None = None,
        model_id: str | None = None,
        effort: str | None = None,
        reasoning_tokens: int = 0,
        thinking: str | None = None,
    ) -> None:
        self._client = client
        # a (model, effort) variant: OpenAI-style APIs get `reasoning_effort`, Anthropic a
        # thinking budget of `reasoning_tokens`, or adaptive thinking at the effort
        # (`thinking="adaptive"`, `ModelSpec.thinking`)
        self.effort, self.reasoning_tokens = effort, reasoning_tokens
        self.thinking = thinking
        # parsed once here: httpx re-parses a URL given as text on every request (~45 µs).
        # The endpoint's path goes after the base's path, before its query (Azure's
        # `?api-version=...`), where text appended after the query had mangled both.
        # (as written: a decoded path had sent /acc%2Fgw as /acc/gw, another path)
        for secret in [api_key, *url_secrets(base_url)]:
            if secret:
                register(secret)  # from now on scrubbed from anything an upstream sends back
        guard_logs()  # and from what httpx logs (a request's URL, a base URL's credentials)
        try:
            base = httpx.URL(base_url)
            path, sep, query = base.raw_path.decode("ascii").partition("?")
            raw = self._endpoint(path.rstrip("/")) + sep + query
            self._url = base.copy_with(raw_path=raw.encode("ascii"))
        except httpx.InvalidURL as e:
            raise ConfigError(
                f"deployment {deployment or self.default_deployment!r} of {model_id or model!r}: "
                f"base_url {scrub(base_url)!r} is not a URL ({scrub(str(e))})"
            ) from None
        self._headers = {"content-type": "application/json", **self._extra_headers()}
        if api_key:
            self._headers.update(self._auth(api_key))
        # The router's own client (executor._Client) has no cookies, params or auth flow
        # to merge per request: its headers and ours are merged once, here.
        merge = getattr(client, "merged_headers", None)
        self._merged = merge(self._headers, self._url) if merge is not None else None
        # On its PooledTransport, a POST skips httpx's request and response objects.
        pool = getattr(client, "pool", None)
        merged = self._merged
        self._poster = None if pool is None or merged is None else Poster(pool, self._url, merged)
        self._posters: dict[tuple[tuple[str, str], ...], Poster] = {}  # `_poster_for`
        # `_timeouts_of`: the last Timeout and its dict, one pair (one attribute written:
        # no thread can read one's Timeout beside another's dict)
        self._timeouts: tuple[httpx.Timeout | None, dict[str, float | None]] = (None, {})
        self.model = model  # the name the upstream expects
        self.model_id = model_id or model  # the registry id, used in errors
        self.deployment = deployment or self.default_deployment

    # What differs between wire formats: where to POST and how the key is sent.
    default_deployment = "http"

    @staticmethod
    def _endpoint(base_url: str) -> str:
        raise NotImplementedError

    @staticmethod
    def _auth(api_key: str) -> dict[str, str]:
        raise NotImplementedError

    @staticmethod
    def _extra_headers() -> dict[str, str]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, url={str(self._url)!r})"

    def _malformed(self, why: str, *, answered: bool = True) -> RetryableError:
        """A 2xx answer the provider cannot read; `answered`: the upstream may have billed
        it (an estimated cost is kept), as it may for a cut or garbled answer."""
        e = RetryableError(
            f"{self.model_id} via {self.deployment}: the upstream answered 2xx with a malformed "
            f"body ({why}); retrying or another deployment usually works",
            model=self.model_id,
            deployment=self.deployment,
            status=200,
        )
        e.answered = answered
        return e

    def _not_an_answer(self, data: Any, e: Exception) -> RetryableError:
        """A 2xx body that is no answer: malformed, or an error object in its place (some
        gateways answer 200 {"error": {...}}), whose message is what the caller needs."""
        err = data.get("error") if isinstance(data, dict) else None
        if err is not None:
            said = err.get("message", err) if isinstance(err, dict) else err
            # an error said, not an answer cut: no estimated bill
            return self._malformed(
                f"an error in place of an answer: {str(said)[:300]}", answered=False
            )
        return self._malformed(f"{type(e).__name__}: {e}")

    def _transport_error(self, e: Exception) -> RetryableError:
        err = error_from_transport(e, self.model_id, self.deployment)
        if getattr(e, "answered", False):  # a 2xx head whose framing the transport refused
            err.answered = True
        if (stage := stage_of(e)) != UNKNOWN:  # never sent: how far it got
            mark_stage(err, stage)
        return err

    def _stream_failed(
        self, e: httpx.RequestError | ProviderError, made: Generated
    ) -> ProviderError:
        """The error a stream that failed raises (a transport failure after its 2xx head is
        `_answer_lost`), with what it had generated beside its text (`made`) and the usage
        last reported: billed at least that. A stream that generated any of it is an answer
        the upstream bills: a cut or an error event after 5,000 tokens of a tool call had
        been billed at the prompt, or $0."""
        err = e if isinstance(e, ProviderError) else self._answer_lost(e)
        return carry_generated(err, made)

    def _unreadable(self, status: int, headers: Any, e: Exception) -> ProviderError:
        """A non-2xx answer whose body could not be read (cut by a close, undecodable, too
        large, stalled): what its status says, as a readable one's is, the body's failure
        in place of the upstream's message. It had been a "connection failed" with no
        status: a 401 retried and its deployment left enabled, a 400 retried, a 429's
        Retry-After ignored."""
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        said = f"its body could not be read: {detail}".encode()
        return error_from_response(
            status, httpx.Headers(headers), said, self.model_id, self.deployment
        )

    def _answer_lost(self, e: Exception) -> RetryableError:
        """A transport failure after a 2xx head (a body or a stream cut): the upstream was
        generating an answer and may bill it, so the attempt carries an estimated cost."""
        err = self._transport_error(e)
        err.answered = True
        return err

    def _answer(self, data: Any, wire: float | None) -> ChatResponse:
        """The answer a whole (unstreamed) reply's decoded JSON says: each wire format's."""
        raise NotImplementedError

    def _decode(self, content: bytes, wire: float) -> tuple[Any, float]:
        """The JSON answer `_post` read, decoded (scrubbed), and beside it `wire` (the seconds
        `_post` measured) with the decoding's added: the seconds a direct call would spend
        as well (encoding the JSON, the HTTP exchange, decoding the answer's JSON). Building
        the payload, scrubbing the answer and reading it are the router's own work, which
        `ChatResult.overhead_s` counts. (A function `_post` calls, not a coroutine around
        it: a second coroutine layer had cost a frame a call.)"""
        t = time.perf_counter()
        try:
            data = loads(content)
        except PARSE_ERRORS as e:
            raise self._malformed(f"{type(e).__name__}: {e}") from None
        wire += time.perf_counter() - t
        # `scrubbed`, whose work is for a body with a backslash (a key behind an escape,
        # a lone surrogate's) or an ED byte (a lone surrogate's UTF-8): most have neither
        if _BACKSLASH in content or _ED in content:
            data = scrubbed(data, content)
        return data, wire

    def _request(
        self, body: bytes, timeout: httpx.Timeout, extra: OwnHeaders = None
    ) -> httpx.Request:
        if self._merged is None:  # someone else's client: its own merging applies
            return self._client.build_request(
                "POST", self._url, content=body, headers={**self._headers, **dict(extra or ())},
                timeout=timeout,
            )  # fmt: skip
        # The merged headers and Content-Length, set here: `content=` had httpx encode the
        # body again and fill in the same two headers through its MutableMapping methods,
        # two thirds of building the request (11.5 -> 3.7 µs, measured by timeit).
        # (`_merged_with`'s copy, without its call, for a request with no headers of its own)
        headers = httpx.Headers(self._merged) if extra is None else self._merged_with(extra)
        headers["Content-Length"] = str(len(body))
        request = httpx.Request(
            "POST",
            self._url,
            headers=headers,
            stream=httpx.ByteStream(body),
            extensions={"timeout": self._timeouts_of(timeout)},
        )
        request.read()  # `request.content`, as a `content=` request has it
        return request

    def _timeouts_of(self, timeout: httpx.Timeout) -> dict[str, float | None]:
        """`timeout.as_dict()` (what a transport reads), kept for the next request given the
        same Timeout, as the executor gives its own to every call without a deadline: a
        method call and a dict (~1,500 instructions) a request, spared. (Only read: no
        transport writes into it, and no one changes an httpx.Timeout once made.)"""
        kept = self._timeouts
        if kept[0] is not timeout:
            kept = self._timeouts = (timeout, timeout.as_dict())
        return kept[1]

    def _merged_with(self, extra: OwnHeaders) -> httpx.Headers:
        """The deployment's merged headers, with a request's own as well."""
        headers = httpx.Headers(self._merged)
        for k, v in extra or ():
            headers[k] = v
        return headers

    def _poster_for(self, extra: tuple[tuple[str, str], ...]) -> Poster | None:
        """The poster of a request with `extra` headers as well (one per set, kept: a
        caller sends the same few again and again; at most 32, then made anew)."""
        if self._poster is None:
            return None
        poster = self._posters.get(extra)
        if poster is None:
            if len(self._posters) >= 32:
                self._posters.clear()
            poster = Poster(self._poster.pool, self._url, self._merged_with(extra))
            self._posters[extra] = poster
        return poster

    async def _post(
        self, payload: Any, timeout: httpx.Timeout, extra: OwnHeaders = None
    ) -> ChatResponse:
        """POST `payload` (encoded here) and read the answer of a 2xx reply (its body
        scrubbed and decoded, `_decode`, then `_answer`), else raise the mapped error. The
        seconds the encoding, the exchange and the decoding took are its `wire_s`. On the
        router's own PooledTransport without httpx's request and response objects
        (`PooledTransport.post`), else through the client. What a provider's `complete`
        returns for its caller to await: a coroutine of `complete`'s own around this one had
        cost about 950 instructions a call in process, 1,900 over a socket (callgrind,
        `benches/instructions.py chat` and `chat-socket`)."""
        # (a closed client's pool is closed too, and says so: its aclose() closes its
        # transport, and a closed PooledTransport raises on a request)
        poster = self._poster if extra is None else self._poster_for(extra)
        # what the pooled transport reads of the timeout (a client's send reads the Timeout)
        timeouts = self._timeouts_of(timeout) if poster is not None else {}
        # the clock starts here: what came before is the router's own work (overhead_s)
        t = time.perf_counter()
        body = encode_body(payload)
        headers: Any
        try:
            if poster is not None:
                status, headers, stream = await poster.pool.post(poster, body, timeouts)
                reading, close = stream.read_all(), stream.aclose  # (awaited just below)
            else:
                resp = await self._client.send(self._request(body, timeout, extra), stream=True)
                status, headers = resp.status_code, resp.headers
                reading, close = read_body(resp), resp.aclose
        except httpx.RequestError as e:
            raise self._transport_error(e) from None
        try:
            content = await reading
        except httpx.RequestError as e:
            if 200 <= status < 300:
                raise self._answer_lost(e) from None
            raise self._unreadable(status, headers, e) from None
        finally:
            await close()
        wire = time.perf_counter() - t
        if not 200 <= status < 300:  # a 1xx (a 101 switching protocols) is no answer either
            raise error_from_response(
                status, httpx.Headers(headers), content, self.model_id, self.deployment
            )
        data, wire = self._decode(scrub_bytes(content), wire)
        return self._answer(data, wire)

    async def _json_in_place(self, resp: httpx.Response) -> tuple[httpx.Response, list[Any] | None]:
        """A 2xx answer to a stream request, and beside it `[its data]` when its body is JSON,
        not an event stream (a gateway's 200 `{"error": ...}`, a proxy that ignores
        `stream`): read whole (bounded as any body), scrubbed, the response closed. Read as
        events, such a body had been "the stream ended before [DONE]": an error's message
        lost and billed at an estimate, a whole answer refused, billed and asked again.

        Told by its first byte, `{` or `[` (no event stream starts so), not by its content
        type alone: an event stream labelled JSON, which the SDKs read as events, is read as
        events still (the bytes taken to tell, then the rest, as they come). A body labelled
        an event stream is not looked at: read as events, as it was."""
        ctype = resp.headers.get("content-type", "").partition(";")[0].strip().lower()
        if ctype == "text/event-stream":
            return resp, None
        pieces = aiter(body_pieces(resp))
        taken = b""
        try:
            while not taken.lstrip(b"\xef\xbb\xbf \t\r\n"):  # (a BOM, blank lines)
                taken += await anext(pieces)
        except StopAsyncIteration:
            pass
        except httpx.RequestError as e:
            await resp.aclose()
            raise self._answer_lost(e) from None
        except BaseException:  # cancelled while it waited: the response closed all the same
            await resp.aclose()
            raise
        if taken.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] not in (b"{", b"["):
            return httpx.Response(resp.status_code, stream=_Replay(taken, pieces, resp)), None
        try:
            content = taken + b"".join([p async for p in pieces])
        except httpx.RequestError as e:
            raise self._answer_lost(e) from None
        finally:
            await resp.aclose()
        try:
            return resp, [parse_json(scrub_bytes(content))]
        except PARSE_ERRORS as e:
            raise self._malformed(
                f"JSON in place of an event stream, unreadable ({type(e).__name__}: {e})"
            ) from None

    async def _open(
        self, body: bytes, timeout: httpx.Timeout, extra: OwnHeaders = None
    ) -> httpx.Response:
        """A 2xx response whose body is still to be read (the caller closes it, and maps a
        transport failure while reading it with `_answer_lost`)."""
        poster = self._poster if extra is None else self._poster_for(extra)
        try:
            if poster is not None:  # as `_post` does
                status, headers, stream = await poster.pool.post(
                    poster, body, self._timeouts_of(timeout)
                )
                resp = httpx.Response(status, headers=headers, stream=stream)
            else:
                resp = await self._client.send(self._request(body, timeout, extra), stream=True)
            if 200 <= resp.status_code < 300:  # as `_post`
                return resp
        except httpx.RequestError as e:
            raise self._transport_error(e) from None
        try:
            content = await read_body(resp)
        except httpx.RequestError as e:
            raise self._unreadable(resp.status_code, resp.headers, e) from None
        finally:
            await resp.aclose()
        raise error_from_response(
            resp.status_code, resp.headers, content, self.model_id, self.deployment
        )


class _Replay(httpx.AsyncByteStream):
    """A body whose first bytes were taken already (`HTTPProvider._json_in_place`): those,
    then the rest as it comes; closed with the response it came from."""

    __slots__ = ("_first", "_resp", "_rest")

    def __init__(self, first: bytes, rest: AsyncIterator[bytes], resp: httpx.Response) -> None:
        self._first, self._rest, self._resp = first, rest, resp

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._first:
            yield self._first
        async for piece in self._rest:
            yield piece

    async def aclose(self) -> None:
        await self._resp.aclose()


#: Longest SSE line (or event) accepted; a line that never ends must not grow without bound.
MAX_SSE_LINE = 1 << 20


_YIELD_EVERY = 1 << 16  # characters of an event stream read between two turns of the loop


#: looked up once, at import: a lookup per stream had missed the codec cache and run its
#: Python search function (87 times over 50 streams of the in-process served app)
_UTF8_SIG = codecs.getincrementaldecoder("utf-8-sig")


async def sse_events(
    response: httpx.Response, max_line: int = MAX_SSE_LINE
) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs of a server-sent-events body; multi-line data joined by newlines.
    Keys are scrubbed from every line (the lines read so far, as one text); a line or event
    over `max_line` characters is a protocol error."""
    event = ""
    data: list[str] = []
    size = 0
    buf = ""
    cr = False  # the last piece ended with CR: an LF first in the next is the same line end
    unyielded = 0  # characters read since the loop last ran
    # Always UTF-8, whatever charset the upstream names: an event stream is UTF-8 by its
    # spec, and httpx would decode with the named codec (base64, utf-16, unicode_escape:
    # raw errors, or JSON escapes of half a surrogate pair turned into characters). A
    # byte-order mark first is dropped, as the spec says (it had hidden the first event).
    decode = _UTF8_SIG("replace").decode
    async for chunk in body_pieces(response):
        text = decode(chunk)
        if "\r" in text or cr:  # a line may end in CRLF, LF or CR alone (the spec's three)
            if cr and text.startswith("\n"):
                text = text[1:]
            cr = text.endswith("\r")
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        buf += text
        if "\n" not in text:
            if len(buf) > max_line:
                raise httpx.RemoteProtocolError(f"an SSE line longer than {max_line} characters")
            continue
        unyielded += len(text)
        if unyielded > _YIELD_EVERY:
            # pieces already buffered are read without a wait: a flood of comments or empty
            # events held the event loop (every other request on it) for up to a second
            unyielded = 0
            await asyncio.sleep(0)
        # The lines read whole, scrubbed as one text: a key is found in it as in each line
        # (no spelling holds a line's end: `register` cuts a key at them; nor does a run an
        # encoded one is read in), and one call a piece of text, where a call a line had
        # scrubbed each event's empty line as well (about 1,100 instructions a piece).
        block, _, buf = buf.rpartition("\n")
        for line in scrub(block).split("\n"):
            if not line:
                if data:
                    yield event, "\n".join(data)
                event, data, size = "", [], 0
            elif line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
                size += len(line)
                if size > max_line:
                    raise httpx.RemoteProtocolError(
                        f"an SSE event longer than {max_line} characters"
                    )
            elif line.startswith("event:"):
                event = line[6:].strip()
            # comments (":") and id/retry fields carry nothing we need
    buf += decode(b"", True)  # a character cut off by the end: U+FFFD
    line = scrub(buf)
    if line.startswith("data:"):
        data.append(line[6:] if line.startswith("data: ") else line[5:])
    if data:
        yield event, "\n".join(data)


T = TypeVar("T")

#: How long a stream whose answer is whole but for its end marker waits for more.
END_GRACE_S = 0.5


async def quiet_after(events: AsyncIterator[T], at_end: list[bool]) -> AsyncIterator[T]:
    """`events` as they come, and once `at_end[0]` says the answer is whole but for its end
    marker, httpx.ReadTimeout after END_GRACE_S without one more: the silence a provider
    reads as the answer's end (Anthropic's message_delta comes last but for message_stop,
    and may come more than once, its usage growing). An upstream holding the connection
    there had failed the whole answer at the stream's idle timeout or the deadline,
    whichever came before the read timeout. The grace runs from the moment the answer is
    whole, whatever comes meanwhile: keep-alive pings after it had put the end off until
    the idle timeout failed the answer."""
    it = aiter(events)
    left: float | None = None  # the grace's seconds of waiting left (the answer is whole)
    while True:
        try:
            if at_end[0]:
                if left is None:
                    left = END_GRACE_S
                t = asyncio.get_running_loop().time()
                try:
                    async with asyncio.timeout(left):
                        item = await anext(it)
                finally:  # (the time its reader takes between events is not the upstream's)
                    left -= asyncio.get_running_loop().time() - t
            else:
                left = None
                item = await anext(it)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise httpx.ReadTimeout(f"nothing after the answer for {END_GRACE_S}s") from None
        yield item


async def finish_stream(events: AsyncIterator[Any]) -> None:
    """After a stream's end marker ([DONE], message_stop): read what is left, normally just
    the chunked terminator, so that the connection goes back to the pool instead of being
    closed. Briefly and a few events at most: an upstream that keeps talking loses it."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(0.5):
            n = 0
            async for _ in events:
                n += 1
                if n > 8:
                    return
