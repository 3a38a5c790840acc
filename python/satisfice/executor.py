"""Executes a Decision against real providers: fallbacks, retries, cooldowns, hedging, races
and cascades, all over one attempt loop.

Order: the decision's primary model, then its fallbacks, each model's deployments in
registry order. It never leaves the decision's candidates (they already satisfy the
caller's constraints). What each failure leads to is decided in `retry.py`.

When every target left is cooling and the soonest is free again within max_retry_wait_s
(and the deadline), it is waited for once instead of failing the request.

A deadline (the latency SLO, or `timeout=`) bounds the whole request: each attempt gets what
is left. Streams fall back only until the first piece of text has been handed to the caller.
A cascade calls each of its models through the same loop, one model at a time.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, replace
from functools import partial
from http.cookiejar import Cookie, CookieJar
from time import perf_counter, time
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from ._extra import LIMITS, extra_text
from ._redact import StreamScrubber
from ._verdict import check_name, checked
from ._watchdog import Deadlines, Watchdog
from .accounting import cost_of, reported, text_tokens, usage_of
from .errors import (
    AllAttemptsFailedError,
    AuthError,
    CascadeBudgetError,
    ConfigError,
    ProviderError,
    SatisficeError,
    StaleConnectionError,
    StreamInterruptedError,
    UnsupportedRequestError,
    UpstreamTimeoutError,
)
from .providers import carries, make_provider
from .providers.anthropic import (
    DEFAULT_MAX_TOKENS,
    runs_server_tools,
    search_ran,
    searches,
    server_tool,
)
from .providers.base import (
    GENERATED,
    KEEPALIVE_S,
    PROGRESS,
    ChatRequest,
    ChatResponse,
    Generated,
    Provider,
    StreamDelta,
    Usage,
    carry_generated,
)
from .registry import thinking_budget
from .result import Attempt, ChatResult, billed_cost
from .retry import Action, backoff_s, classify, cooldown_wait_s
from .state import HealthStore
from .transport import CONNECTING, UNKNOWN, WAITING, stage_of
from .validators import Answer, Context, Validator, Verdict

if TYPE_CHECKING:
    from .cascade import Cascade
    from .decision import Decision
    from .registry import Deployment, ModelSpec, Price, Registry

__all__ = ["ChatStream", "ExecutionConfig", "Executor", "make_client"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ExecutionConfig:
    """Timeouts, retries and the connection pool. Defaults suit interactive traffic."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0  # longest silence between bytes (when no deadline is tighter)
    attempt_timeout_s: float = 600.0  # one whole attempt, when the request has no deadline
    # longest wait for the next piece of a stream's text, thinking or tool call (keep-alive
    # comments and pings are none of these); a request's deadline bounds the whole stream
    stream_idle_timeout_s: float = 120.0
    max_retries: int = 1  # extra tries of the same deployment for retryable errors
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0
    max_retry_wait_s: float = 2.0  # a longer Retry-After moves on instead of waiting
    hedge_default_s: float = 2.0  # hedge delay when no p95 is known for a deployment
    max_connections: int = 512  # every slot may stay alive (httpx keeps 20); per event loop
    max_connections_per_host: int | None = None  # None: half of max_connections
    keepalive_expiry_s: float = 60.0
    max_response_bytes: int = 64 << 20  # a body (after decompression) above this is an error

    def __post_init__(self) -> None:
        # A NaN timeout reached the timers as NaN (a hung call never ended), a zero one
        # failed every call and cooled every deployment, and no pool slot failed them all.
        from ._real import as_count, as_real

        def check(field: str, ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(
                    f"ExecutionConfig.{field} must be {what}, got {getattr(self, field)!r:.40}"
                )

        for f in ("connect_timeout_s", "read_timeout_s", "attempt_timeout_s",
                  "stream_idle_timeout_s"):  # fmt: skip
            v = as_real(getattr(self, f))
            check(f, v is not None and v > 0, "a finite number of seconds > 0")
        for f in ("backoff_base_s", "backoff_max_s", "max_retry_wait_s", "hedge_default_s",
                  "keepalive_expiry_s"):  # fmt: skip
            v = as_real(getattr(self, f))
            check(f, v is not None and v >= 0, "a finite number of seconds >= 0")
        for f, least in (("max_retries", 0), ("max_connections", 1), ("max_response_bytes", 1)):
            n = as_count(getattr(self, f))
            check(f, n is not None and n >= least, f"a whole number >= {least}")
        per_host = self.max_connections_per_host
        n = None if per_host is None else as_count(per_host)
        check("max_connections_per_host", per_host is None or (n is not None and n >= 1),
              "None or a whole number >= 1")  # fmt: skip


def make_client(config: ExecutionConfig | None = None) -> httpx.AsyncClient:
    """The shared client a Router uses: one keep-alive pool for every upstream, on
    satisfice's bounded HTTP/1.1 transport (transport.py). For HTTP/2 or a proxy, pass your
    own client to `Router.configure(http=...)`: its limits are then yours to set."""
    from .transport import PooledTransport

    c = config or ExecutionConfig()
    timeout = httpx.Timeout(c.read_timeout_s, connect=c.connect_timeout_s)
    transport = PooledTransport(
        max_connections=c.max_connections,
        max_per_host=c.max_connections_per_host,
        keepalive_expiry=c.keepalive_expiry_s,
        max_body=c.max_response_bytes,
    )
    # Only what the transport decodes itself, in bounded steps (no br/zstd).
    headers = {"accept-encoding": "gzip, deflate"}
    return _Client(transport=transport, timeout=timeout, headers=headers)


def _exchange_s(resp: ChatResponse, started: float, done: float) -> float:
    """The upstream's share of a call that answered: the HTTP exchange the provider timed
    (encoding the request and parsing the answer are the router's), else the whole call."""
    return resp.wire_s if resp.wire_s is not None else done - started


def _rebills(run: Run, e: ProviderError) -> bool:
    """Whether retrying `e` on the same deployment bills its prompt again past the bound
    the run was given: an answer the upstream may bill (a 2xx cut or malformed), under a
    decision a budget's hold was bounded on at one call per deployment (`Decision.held`:
    three models that answered garbage twice settled a request 43% over it). A cost cap
    of the run's own counts what each try spent, and retries within it."""
    return e.answered and run.decision.held


def _union_s(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of `spans` (calls in parallel overlap)."""
    total, reach = 0.0, -math.inf
    for a, b in sorted(spans):
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


def thinking_added(spec: ModelSpec, api: str, within: bool = False, cap: int | None = None) -> int:
    """The thinking budget `api`'s wire adds to max_tokens for `spec`: Anthropic's, unless
    the request's limit holds the thinking (`within`, `ChatRequest.thinking_within`); 0 for
    the others, whose limits hold the reasoning. `cap`: `ChatRequest.thinking_cap`."""
    if within or api != "anthropic":
        return 0
    return thinking_budget(spec.effort, spec.reasoning_tokens, cap)


def answer_max(spec: ModelSpec, api: str, within: bool = False, cap: int | None = None) -> int:
    """The most max_tokens may ask on `api`: the model's max_output, less the thinking
    budget Anthropic's wire adds to it (it had asked past max_output)."""
    n = spec.max_output - thinking_added(spec, api, within, cap)
    return 1 if n < 1 else n  # (max(n, 1), without max()'s parsing of its arguments)


def worst_bill(
    price: Price,
    spec: ModelSpec,
    api: str,
    tokens_in: float,
    out: int,
    write: str | None,
    within: bool = False,
    cap: int | None = None,
) -> float:
    """The most one call may be billed: `tokens_in` prompt tokens (every one a cache write
    when `write` says so), `out` output tokens plus the thinking budget Anthropic's API
    spends on top of them, at the dearer of the text and reasoning rates, fees included.
    One rule for a cost cap's holds and a server budget's reservation. `within`: `out`
    holds the thinking (`ChatRequest.thinking_within`); `cap`, its `thinking_cap`."""
    if out:
        out += thinking_added(spec, api, within, cap)
    return price.most(tokens_in, out, cache_write=write == "5m", cache_write_1h=write == "1h")


#: Input tokens a web search's results are taken to add at most: they are billed as the
#: call's input, and nothing can count them before the call. Cost caps and budgets hold this
#: much for each search a tool's `max_uses` allows; a call whose searches bring more is billed
#: what it reports, past its hold by the difference (a budget's settlement logs it).
SEARCH_RESULT_TOKENS = 20_000


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def server_tokens(server_tools: Sequence[Any] | None) -> float:
    """The most input tokens Anthropic's server tools may add to a call: a web search's
    results (`SEARCH_RESULT_TOKENS` each, up to its `max_uses`), a web fetch's page (its
    `max_content_tokens`, up to its `max_uses`); infinite when a tool leaves either unset
    (unbounded)."""
    n = 0.0
    for t in server_tools or ():
        if not server_tool(t):
            continue
        uses = t.get("max_uses")
        most = SEARCH_RESULT_TOKENS if searches(t) else t.get("max_content_tokens")
        if not (_count(uses) and _count(most)):
            return math.inf
        n += uses * most
    return n


def most_searches(server_tools: Sequence[Any] | None) -> int | None:
    """The most web searches a call may run (its search tools' `max_uses`, summed); None
    when one sets none (unbounded)."""
    n = 0
    for t in server_tools or ():
        if searches(t):
            uses = t.get("max_uses")
            if not _count(uses):
                return None
            n += uses
    return n


def search_bound(price: Price | None, server_tools: Sequence[Any] | None) -> float:
    """The most a call's web searches may be billed (Anthropic's web search tool, offered
    in `server_tools`): each tool's `max_uses` at the price's `per_search`; infinite when a
    tool sets no max_uses or the price has no per_search (unbounded, or unknown); 0 with no
    search tool. One bound for a cost cap's holds and a budget's reservation."""
    n = most_searches(server_tools)  # (web fetch has no fee: its tokens are the call's)
    if n == 0:
        return 0.0
    if n is None or price is None or price.per_search is None:
        return math.inf
    return n * price.per_search


def cache_write_of(messages: Sequence[Any], tools: Sequence[Any] | None) -> str | None:
    """ "1h" or "5m" when a request asks for a prompt-cache write (Anthropic's
    cache_control on a message, a content part or a tool), priced dearer than input."""
    ttl: str | None = None
    parts: list[Any] = list(tools or ())
    for m in messages:
        parts.append(m)
        content = m.get("content")
        if isinstance(content, list):
            parts.extend(content)
    for p in parts:
        cc = p.get("cache_control") if isinstance(p, dict) else None
        if isinstance(cc, dict):
            if cc.get("ttl") == "1h":
                return "1h"
            ttl = "5m"
    return ttl


class _NoJar(CookieJar):
    """A cookie jar that takes nothing in, by any door (see `_NoCookies`)."""

    def set_cookie(self, cookie: Cookie) -> None:
        raise ValueError("the router's HTTP client keeps no cookies")

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing. Provider APIs authenticate by key, not cookie, and a
    router's one client serves every caller: a cookie an upstream set while answering one
    caller must not ride along on another caller's request. Also skips httpx's per-response
    cookie parsing, a sixth of its client-side CPU per request (measured)."""

    def __init__(self) -> None:
        super().__init__()
        self.jar = _NoJar()

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


class _Client(httpx.AsyncClient):
    """The router's own client: httpx's, without a cookie jar (see `_NoCookies`), and with a
    `send` that hands the request straight to its transport. The providers' requests use
    no auth flow, redirects, event hooks or cookies, and walking httpx's layers for them
    was a third of the client's CPU per request (measured: benches/bench_overhead.py)."""

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        if auth is not httpx.USE_CLIENT_DEFAULT or self.auth is not None:
            raise ValueError("the router's HTTP client sends no credentials of its own")
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        self._set_timeout(request)  # the client's default, if the request has none
        response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            if not stream:
                await response.aread()
            return response
        except BaseException:
            await response.aclose()
            raise

    @property
    def pool(self) -> Any:
        """The PooledTransport this client sends through, if it is one (providers then POST
        through `PooledTransport.post`, see `providers.base.HTTPProvider._post`); else None."""
        from .transport import PooledTransport

        t = self._transport
        return t if isinstance(t, PooledTransport) else None

    def merged_headers(self, headers: dict[str, str], url: httpx.URL) -> httpx.Headers:
        """The client's headers with `headers` over them and `url`'s Host, as a request
        built by `build_request` would carry them: a provider merges its own once, then
        builds each request with `httpx.Request` (build_request merged them, copied the
        timeout and re-checked the URL on every call: a quarter of building a request)."""
        merged = httpx.Headers({"Host": url.netloc.decode("ascii")})
        merged.update(self.headers)
        merged.update(headers)
        return merged

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise ValueError("the router's HTTP client keeps no cookies")


_NO_COOKIES = _NoCookies()


class _Target:
    """One deployment of one model, with its provider built on first use."""

    __slots__ = ("balanced", "dep", "hold", "key", "model", "price", "provider", "spec")

    def __init__(self, spec: ModelSpec, dep: Deployment) -> None:
        self.spec = spec
        self.dep = dep
        self.model = spec.id
        # health is the deployment's: a model's effort variants call the same one
        self.key = f"{spec.base or spec.id}/{dep.name}"
        # a call's hold on the cost cap, and its entry among the calls in flight: per model
        # (effort variants share a deployment key) and deployment, which one request never
        # calls twice at once
        self.hold = (spec.id, dep.name)
        self.price: Price | None = dep.price if dep.price is not None else spec.price
        self.provider: Provider | None = None
        # one of its model's several deployments: its calls in flight are counted, which
        # `_ranked` balances them by (a model of one deployment has nothing to balance)
        self.balanced = len(spec.deployments) > 1


#: Environment variables' names as os.environ keeps them (`_env_value`), encoded once each.
_ENCODED: dict[str, Any] = {}
_Environ = getattr(os, "_Environ", None)  # (CPython's class of os.environ)


def _env_value(name: str) -> object:
    """The value of environment variable `name` now (None when unset; empty when set to
    ""): read per request, so that a key exported while the router runs is used from its
    next request. From os.environ's own dict of encoded names and values (CPython's
    `os._Environ`): `os.environ.get` goes through Mapping.get, `__getitem__` and the name's
    encoding, three Python frames, about 4,000 instructions a call (callgrind) on every
    request to a deployment with a key."""
    environ = os.environ
    if environ.__class__ is not _Environ:  # (replaced by something else: asked as a mapping)
        return environ.get(name)
    key = _ENCODED.get(name)
    if key is None:
        key = _ENCODED[name] = environ.encodekey(name)
    return environ._data.get(key)  # type: ignore[attr-defined]


def _complete(p: Provider, request: ChatRequest, timeout: httpx.Timeout) -> Awaitable[ChatResponse]:
    """What `_first_success` opens for an answer whole: `p.complete(request, timeout)`."""
    return p.complete(request, timeout)


# The request path builds these by position (`Executor.run`): the field order it passes.
# A field added or moved must be passed there too, or this fails at import; so must a field
# the router adds to the call's (`**call` had passed any of them).
from .router import _CALL_FIELDS, NO_CALL  # noqa: E402  (loaded already: the router imports this)

if (
    ChatRequest.__match_args__[:17] != (
        "messages", "max_tokens", "temperature", "tools", "tool_choice", "response_format",
        "stream", "extra", "user", "prompt_cache_key", "anthropic_beta",
        "context_management", "server_tools", "no_thinking", "thinking_display",
        "thinking_within", "thinking_cap",
    )
    or set(_CALL_FIELDS)
    != set(ChatRequest.__match_args__[1:17]) - {"stream", "thinking_within", "thinking_cap"}
    or Attempt.__match_args__[5:13] != (
        "error_type", "error", "status", "retry_after", "usage", "cost_usd",
        "cost_estimated", "step",
    )
    or ChatResult.__match_args__[13:20] != (
        "cascade", "cascade_skipped", "started_at", "metadata", "stop_sequence", "refusal",
        "thinking",
    )
    or ChatResponse.__match_args__[5:8] != ("wire_s", "stop_sequence", "refusal")
    or Usage.__match_args__[4:7] != ("source", "cache_write_1h_tokens", "reasoning_tokens")
):  # fmt: skip
    raise ImportError(
        "a dataclass the request path builds by position changed its fields, or the router's "
        "_CALL_FIELDS changed: pass them by position as they stand (Executor.run, _answered, "
        "_result, the providers' answers)"
    )


#: What a call cut off by its time had not got to, by the stage the transport marked.
_NOT_SO_FAR = {
    WAITING: "no free connection in the router's pool (the request was not sent)",
    CONNECTING: "no connection to the upstream (the request was not sent)",
}


def _unsent(e: UpstreamTimeoutError, stage: int) -> UpstreamTimeoutError:
    """`e`, marked with how far its request got (`transport.stage_of` when it timed out)."""
    e.unsent = stage in (WAITING, CONNECTING)
    e.queued = stage == WAITING
    return e


#: The filters a ladder's own models are held to: what the request cannot be sent past
#: (its window, its output limit, a capability it needs). A cascade's cost, latency and
#: quality rules are its own.
_HARD_FILTERS = frozenset({"context_window", "max_output_tokens", "needs", "disabled"})


def _unfit(d: Decision, messages: Sequence[Mapping[str, Any]] = ()) -> dict[str, str]:
    """The models `d`'s request cannot be sent to, with why: a ladder naming one skips its
    step (a prompt past a model's window had been sent there); under a strict floor (the
    policy's or the request's), one predicted below it too (it had answered)."""
    strict = d.constraints.strict_floor
    hard = _HARD_FILTERS
    if strict if strict is not None else d.snapshot.policy.strict_floor:
        hard = hard | {"quality_floor"}
    out = {m: why for m, (rule, why) in d.filtered.items() if rule in hard}
    reg = d.snapshot.registry
    sees = _with_images(messages)
    for m, (rule, _) in d.filtered.items():
        # routing ruled it out before its hard filters (not allowed, or cooling then), so
        # none is on record: a step naming it, called once its cooldown was over, had been
        # sent tools it has no use of and a prompt past its window
        if rule == "exclude" and m in reg and (why := _cannot_take(d, reg[m], sees)):
            out[m] = why
    return out


_IMAGES = frozenset({"image_url", "image", "input_image"})


def _with_images(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a message holds an image part (which routing reads as a need for vision)."""
    return any(
        isinstance(p, Mapping) and p.get("type") in _IMAGES
        for m in messages
        if isinstance(m.get("content"), list | tuple)  # (routing reads a tuple's parts too)
        for p in m["content"]
    )


def _cannot_take(d: Decision, spec: ModelSpec, sees: bool = False) -> str | None:
    """Why `d`'s request cannot be sent to `spec` (a capability it lacks, vision for an
    image (`sees`), a prompt past its window by the request's estimate), else None."""
    c = d.constraints
    missing = sorted(({*c.needs, "vision"} if sees else set(c.needs)) - set(spec.capabilities))
    if missing:
        return f"lacks capability {', '.join(missing)}"
    need = d.max_tokens_in(spec.id) + (c.max_output_tokens or 0)
    if need > spec.context_window:
        return f"needs {need} tokens, context window is {spec.context_window}"
    return None


def tuned_ladder(d: Decision) -> tuple[Cascade | None, str | None]:
    """The policy's tuned ladder for this decision (`cascade="auto"`), or None and why the
    request is routed plainly instead: no ladder for its task, or one that would call a
    model this request's constraints rule out (an allow-list, the window, a capability)."""
    ladder = d.snapshot.policy.cascade_for(d.task)
    if ladder is None:
        return None, f"no tuned cascade for task {d.task!r}: routed"
    routable = {c.model for c in d.candidates}
    for step in ladder.steps:
        for m in step.models:
            if m not in routable:
                rule, reason = d.filtered.get(m, ("constraints", "not a candidate"))
                why = f"the tuned cascade calls {m}, ruled out by this request"
                return None, f"{why} ({rule}: {reason}): routed"
    return ladder, None


_CLOSED_EARLY = "the caller closed the stream before its end"


class Run:
    """One request's state: the decision, the wire request, its clock and every attempt.
    Made by `Executor.run()`; a cascade's calls are sub-runs that share its attempts."""

    __slots__ = (
        "accept",
        "answering",
        "attempts",
        "calling",
        "cap",
        "climbed",
        "closed_because",
        "cut",
        "deadline",
        "decision",
        "holds",
        "min_window",
        "order",
        "registry",
        "request",
        "reroute",
        "share",
        "spans",
        "step",
        "t0",
        "tried",
        "upstream_s",
    )

    def __init__(
        self,
        decision: Decision,
        request: ChatRequest,
        t0: float,
        deadline: float | None,
        accept: Validator | None,
        attempts: list[Attempt] | None = None,
        order: list[str] | None = None,
        step: int | None = None,
        cap: float | None = None,
        share: int = 1,
        holds: dict[tuple[str, str], tuple[float, int]] | None = None,
        cut: list[bool] | None = None,
    ) -> None:
        self.registry: Registry = decision.snapshot.registry  # (`decision.registry`)
        self.decision = decision
        self.request = request
        self.t0 = t0
        self.deadline = deadline
        self.accept = accept
        self.attempts: list[Attempt] = [] if attempts is None else attempts
        self.order = order  # None: the decision's model, then its fallbacks
        self.step = step  # the cascade step this run belongs to
        # The request's cost cap, which bounds each answer on the wire (max_tokens), and
        # how many calls may run at once under it (a race, a cascade's parallel step)
        if attempts is None:  # the request's own run: its cap, and a budget's hold
            cap, hold = decision.constraints.max_cost_usd, decision.hold_usd
            if hold is not None and math.isfinite(hold):
                cap = hold if cap is None else min(cap, hold)
        self.cap = cap
        self.share = share
        # Under a cap, each call in flight holds its slice of the cap (USD, and the
        # max_tokens it was sent) until its attempt is recorded: shared with a cascade's
        # sub-runs, as the attempts are, so calls side by side cannot spend one slice twice.
        self.holds: dict[tuple[str, str], tuple[float, int]] = {} if holds is None else holds
        self.upstream_s = 0.0
        # (start, end) of upstream waits that may overlap (a cascade's parallel calls and
        # its judges): their union, not their sum, is what a direct caller would wait
        self.spans: list[tuple[float, float]] = []
        self.min_window = 0  # after a context-length error: windows must be larger than this
        self.tried: set[str] = set()  # targets already called: no longer fallbacks
        # each call in flight (sent, not yet on record: what a cancellation cuts off): its
        # target, when it started, what its stream generated, and how far its request got
        # when it was cut off (`transport.stage_of`; else UNKNOWN)
        self.calling: dict[tuple[str, str], tuple[_Target, float, Generated | None, int]] = {}
        self.answering: str | None = None  # the model a stream's text comes from, once known
        # routes the request again without leaving out cooling models (set by the router
        # when it left some out): what `_failure` asks when no model routed could take it
        self.reroute: Callable[[], Awaitable[Decision]] | None = None
        # why a stream's caller closed it before its end, when it says (`ChatStream.aclose`)
        self.closed_because: str | None = None
        self.climbed: Any = None  # a ladder's steps when its caller left (its record's)
        # a call was cut off in flight after its request was sent (shared with a ladder's
        # sub-runs): its bill may run past the estimate on its record (the upstream may go
        # on writing the answer), which a budget's settlement must not take for the whole
        self.cut: list[bool] = [False] if cut is None else cut

    def sub(self, model: str, messages: list[dict[str, Any]], step: int | None, share: int) -> Run:
        """One model of a cascade step (`share`: the models the step calls at once): its
        own target order, the shared attempt list and cost cap."""
        request = replace(self.request, messages=messages)
        return Run(
            self.decision,
            request,
            self.t0,
            self.deadline,
            None,
            self.attempts,
            [model],
            step,
            self.cap,
            share,
            self.holds,
            self.cut,
        )

    def wire(self, t: _Target) -> ChatRequest:
        """The request as sent to `t`: under a cost cap, max_tokens is at most what the cap
        leaves for the answer (`output_cap`), and the call holds its slice until its
        attempt is recorded, so that no answer runs past the cap."""
        request = self.request
        if request.max_tokens is not None:
            most_answer = answer_max(
                t.spec, t.dep.api, request.thinking_within, request.thinking_cap
            )
            if request.max_tokens > most_answer:
                # no model writes more than its max_output, and some APIs refuse a larger
                # limit (Anthropic's counts the thinking budget the wire adds in it)
                request = replace(request, max_tokens=most_answer)
        elif t.dep.api == "anthropic":
            # Anthropic's API needs a limit: its default answer, within what the budget leaves
            most_answer = answer_max(
                t.spec, t.dep.api, request.thinking_within, request.thinking_cap
            )
            request = replace(request, max_tokens=min(DEFAULT_MAX_TOKENS, most_answer))
        capped = None if self.cap is None else self.output_cap(t)  # (None without a cap)
        if capped is None:
            return request
        n, usd = capped  # (extra n != 1 is refused before: router._check_options)
        if request.extra and LIMITS & request.extra.keys():
            # a limit in `extra` would replace the capped one on the wire: the smaller wins
            extra = dict(request.extra)
            for k in LIMITS & extra.keys():
                n = min(n, int(extra.pop(k)))  # integers >= 1 (`_check_options`)
            request = replace(request, extra=extra, max_tokens=n)
        # what the call may write when no limit is sent (Anthropic's API requires one)
        most = request.max_tokens or (
            DEFAULT_MAX_TOKENS if t.dep.api == "anthropic" else t.spec.max_output
        )
        if n >= most:  # the cap allows more than the call could take: it holds what it can
            self.holds[t.hold] = (min(usd, self._worst(t, most)), most)
            return request
        self.holds[t.hold] = (usd, n)
        return replace(request, max_tokens=n)

    def output_cap(self, t: _Target) -> tuple[int, float] | None:
        """(output tokens, USD) the cost cap allows a call to `t` now: what is left after
        what this request was billed and what calls in flight hold, shared with the calls
        still to start beside them (a race, a cascade's parallel step); the prompt is
        priced at its upper bound, as a cache write when it asks for one. (0, 0) when a bill
        on the request is unknown (an unpriced call): the cap cannot be kept then. None:
        no cap applies."""
        if t.price is None or self.cap is None:
            return None
        key = t.hold
        left = self.room(besides=key)
        if left is None:
            return None
        slots = max(self.share - len(self.holds.keys() - {key}), 1)
        usd = max(left, 0.0) / slots
        served = self.request.server_tools
        search_usd = search_bound(t.price, served)
        fetched = server_tokens(served)  # what the server tools' results add to the prompt
        if search_usd > usd or math.isinf(fetched):  # may cost more alone, or unbounded
            return 0, usd
        write = cache_write_of(self.request.messages, self.request.tools)
        n = t.price.output_within(
            self.decision.max_tokens_in(t.model) + fetched,
            usd - search_usd,
            cache_write=write == "5m",
            cache_write_1h=write == "1h",
        )
        if n is None:  # output is free (or the cap past counting): what the call may take
            return self.request.max_tokens or t.spec.max_output, usd
        if self.request.thinking_within:  # the limit holds the thinking too
            budget = thinking_budget(
                t.spec.effort, t.spec.reasoning_tokens, self.request.thinking_cap
            )
            if t.dep.api == "anthropic" and budget and t.spec.thinking != "adaptive":
                # a budget must stay under max_tokens: the cap leaves no answer then
                return (n if n > budget else 0), usd
            return n, usd
        # its thinking comes on top
        return max(n - thinking_added(t.spec, t.dep.api, cap=self.request.thinking_cap), 0), usd

    def _worst(self, t: _Target, out: int) -> float:
        """The most a call to `t` allowed `out` output tokens may be billed."""
        assert t.price is not None
        served = self.request.server_tools
        tokens_in = self.decision.max_tokens_in(t.model) + server_tokens(served)
        write = cache_write_of(self.request.messages, self.request.tools)
        r = self.request
        search_usd = search_bound(t.price, served)
        bill = worst_bill(
            t.price, t.spec, t.dep.api, tokens_in, out, write, r.thinking_within, r.thinking_cap
        )
        return bill + search_usd

    def max_out(self, t: _Target) -> int | None:
        """The most output tokens a call to `t` was allowed on the wire (None: no limit
        was sent)."""
        r = self.request
        held = self.holds.get(t.hold)
        n = held[1] if held is not None else r.max_tokens
        if n is None and t.dep.api == "anthropic":
            n = DEFAULT_MAX_TOKENS  # what `wire` sends when the caller sends none
        if n is not None:
            # what `wire` sent
            n = min(n, answer_max(t.spec, t.dep.api, r.thinking_within, r.thinking_cap))
        extra = r.extra
        if held is None and extra and LIMITS & extra.keys():
            # uncapped, a limit in `extra` goes on the wire as given (the payload's last
            # word, not cut to max_output; integers >= 1, `_check_options`): the largest
            # limit sent bounds the call
            n = (
                max(int(extra[k]) for k in LIMITS & extra.keys())
                if n is None
                else max(n, *(int(extra[k]) for k in LIMITS & extra.keys()))
            )
        if n is not None:
            n += thinking_added(t.spec, t.dep.api, r.thinking_within, r.thinking_cap)
        return n

    def record(self, attempt: Attempt, t: _Target) -> None:
        """A call's attempt, on the record; its hold on the cap is released."""
        self.attempts.append(attempt)
        self.holds.pop(t.hold, None)
        self.calling.pop(t.hold, None)

    def room(self, besides: tuple[str, str] | None = None) -> float | None:
        """USD the cap has left (None: no cap): what neither the bills nor the calls in
        flight (but `besides`) have taken; 0 when a bill is unknown."""
        if self.cap is None:
            return None
        spent = billed_cost(self.attempts)
        if spent is None:
            return 0.0
        held = sum(usd for k, (usd, _) in self.holds.items() if k != besides)
        return self.cap - spent[0] - held

    def checked(self, v: Verdict, name: str, step: int | None = None) -> None:
        """Bill the calls a check made itself (a judge's) to this request: they cost money,
        and the total, the record and a budget's settlement must say so."""
        now = perf_counter()
        for c in v.calls:
            self.spans.append((now - (c.latency_ms or 0.0) / 1e3, now))
            # the upstream's figures, unless the bill is an estimate (then so are they)
            source = "estimated" if c.cost_estimated else "provider"
            usage = (
                None
                if c.tokens_in is None or c.tokens_out is None
                else Usage(c.tokens_in, c.tokens_out, source=source)
            )
            self.attempts.append(
                Attempt(
                    c.model,
                    name,
                    "check",
                    perf_counter() - self.t0,
                    (c.latency_ms or 0.0) / 1e3,
                    usage=usage,
                    cost_usd=c.cost_usd,
                    cost_estimated=c.cost_estimated,
                    step=self.step if step is None else step,
                )
            )

    def skip(
        self, model: str, deployment: str, kind: str, why: str, retry_after: float | None = None
    ) -> None:
        """`kind` (the attempt's error_type: the kinds `Attempt` names), for what reads
        the attempts (the server's status) to go by rather than `why`'s words;
        `retry_after`: seconds until a cooling deployment may be called again."""
        self.attempts.append(
            Attempt(
                model, deployment, "skipped", perf_counter() - self.t0, error_type=kind,
                error=why, retry_after=retry_after, step=self.step,
            )
        )  # fmt: skip


def _lines(attempts: list[Attempt]) -> str:
    return "\n".join(
        f"  {i}. {a.model} via {a.deployment}: {a.outcome} ({_why(a)})"
        for i, a in enumerate(attempts, 1)
    )


def _why(a: Attempt) -> str:
    """What an error's line says of an attempt: its error, or for an answer a check
    rejected, the check's reason (a race's had read "rejected (None)")."""
    if a.error_type:
        return f"{a.error_type}: {a.error}"
    if a.error is None and a.verdict is not None:
        return f"its check failed it: {a.verdict.get('reason')}"
    return str(a.error)


class _Bound:
    """What the executor keeps of one registry: its models' targets, built on first use,
    and which models a deployment key serves. Replaced whole, never emptied in place: a
    request on another thread's loop may be filling it (one swap of three fields had let a
    request routed on the old registry store its targets, old prices and all, among the
    new one's, billed so until the next swap)."""

    __slots__ = ("key_model", "registry", "targets")

    def __init__(self, registry: Registry | None) -> None:
        self.registry = registry
        self.targets: dict[str, tuple[_Target, ...]] = {}
        self.key_model: dict[str, list[str]] | None = None  # "model/deployment" -> models


def _targets_of(spec: ModelSpec) -> tuple[_Target, ...]:
    return tuple(_Target(spec, d) for d in spec.deployments)


def _further(d: Decision, order: list[str]) -> list[str]:
    """The decision's candidates not in `order` yet, ranked (out of `Executor._available`,
    whose every call would otherwise make the cell this comprehension reads `order` from)."""
    return [c.model for c in d.candidates if c.model not in order]


class Executor:
    """Runs decisions over one shared httpx client and one health store."""

    def __init__(
        self, client: httpx.AsyncClient, health: HealthStore, config: ExecutionConfig | None = None
    ) -> None:
        self.client = client
        self.health = health
        self.config = config or ExecutionConfig()
        c = self.config
        self._timeout = httpx.Timeout(c.read_timeout_s, connect=c.connect_timeout_s)
        # The targets of one registry, swapped whole when a request runs on another: one
        # router's requests on several threads' loops read and fill it at once (see _Bound)
        self._bound = _Bound(None)
        # the last `blocked_models` answer: the blocked keys stay the same request after
        # request while a deployment cools
        self._blocked_memo: tuple[Registry, frozenset[str], frozenset[str]] | None = None
        # Calls open now per deployment key, for balancing: kept here, not on the targets,
        # which a registry swap rebuilds while the calls made on the old one are still open.
        self._in_flight: Counter[str] = Counter()
        # the attempts' time bounds, one timer on the loop that made the last attempt (see
        # _watchdog.Deadlines); another loop's attempt makes its own, and the waits on the
        # old one keep it. (Kept per loop in a WeakKeyDictionary, each Deadlines, holding
        # its loop, had kept every loop alive: one per asyncio.run(router.chat(...)).)
        self._deadlines: Deadlines | None = None

    def after_fork(self) -> None:
        """In a forked child: the calls in flight are the parent's, which the child never
        runs nor ends (counted still, their deployments had looked busy for good, and the
        child's balancing sent its requests elsewhere)."""
        self._in_flight = Counter()

    # targets ------------------------------------------------------------------------------
    def targets(self, registry: Registry, model: str) -> tuple[_Target, ...]:
        """The deployments of `model`; rebuilt when the router swaps in a new registry."""
        bound = self._bound
        if bound.registry is not registry:  # (swapped: the call only then)
            bound = self._bound_to(registry)
        ts = bound.targets.get(model)
        if ts is None:
            ts = bound.targets[model] = _targets_of(registry[model])
        return ts

    def _bound_to(self, registry: Registry) -> _Bound:
        """What is kept of `registry`, made anew if the last request ran on another."""
        bound = self._bound
        if bound.registry is not registry:
            bound = self._bound = _Bound(registry)
        return bound

    def enable(self, registry: Registry, model: str, deployment: str | None = None) -> None:
        for t in self._named(registry, model, deployment):
            self.health.enable(t.key)
            t.provider = None  # rebuilt on next use, with the key the environment holds now

    def disable(self, registry: Registry, model: str, deployment: str | None, reason: str) -> None:
        for t in self._named(registry, model, deployment):
            self.health.disable(t.key, reason)

    def live_p95_ms(self, registry: Registry, index: Mapping[str, int]) -> list[tuple[int, float]]:
        """(table row, p95 ms) for every model with a measured deployment: its fastest
        deployment's p95, measured where known, else the registry's."""
        bound = self._bound
        if bound.registry is not registry:
            return []
        out = []
        for model, ts in list(bound.targets.items()):  # (another thread's request may add)
            live = [p for t in ts if (p := self.health.p95_s(t.key)) is not None]
            if not live or model not in index:
                continue
            known = [p for t in ts if (p := self._p95_s(t)) is not None]
            out.append((index[model], min(known) * 1000.0))
        return out

    def _named(self, registry: Registry, model: str, deployment: str | None) -> list[_Target]:
        ts = self.targets(registry, model)  # UnknownModelError names the known ids
        chosen = [t for t in ts if deployment is None or t.dep.name == deployment]
        if not chosen:
            raise ConfigError(
                f"model {model!r} has no deployment {deployment!r}; it has "
                f"{[t.dep.name for t in ts]}"
            )
        return chosen

    def blocked_models(self, registry: Registry, keys: set[str] | frozenset[str]) -> frozenset[str]:
        """Models none of whose deployments may be called now (`keys` are blocked): read
        from the blocked keys, so it costs the same at 20 models as at 2,000."""
        memo = self._blocked_memo
        if memo is not None and memo[0] is registry and memo[1] == keys:
            return memo[2]
        bound = self._bound_to(registry)
        key_model = bound.key_model
        if key_model is None:
            key_model = {}
            for m in registry:
                for d in m.deployments:
                    key_model.setdefault(f"{m.base or m.id}/{d.name}", []).append(m.id)
            bound.key_model = key_model
        models = {m for k in keys for m in key_model.get(k, ())}
        out = frozenset(m for m in models if all(t.key in keys for t in self.targets(registry, m)))
        self._blocked_memo = (registry, frozenset(keys), out)
        return out

    def _provider(self, t: _Target) -> Provider:
        if t.provider is None:
            s = t.spec
            t.provider = make_provider(
                self.client, t.model, t.dep, s.effort, s.reasoning_tokens, s.thinking
            )  # AuthError: no key set
        return t.provider

    def _available(
        self,
        run: Run,
        cooled: list[_Target],
        only: set[str] | None = None,
        got: Sized = (),
    ) -> Iterator[_Target]:
        """Targets in order, skipping (and recording) those that cannot be called now;
        the cooling ones are added to `cooled`. `only`: keys to consider (a second pass).
        Ends once `got` holds something (its caller's answer, `_first_success`)."""
        d = run.decision
        order = list(run.order) if run.order is not None else [d.model, *d.fallbacks]
        i = 0
        extended = False
        while True:
            if i == len(order):
                if not run.min_window or extended or run.order is not None:
                    return
                # A context-length error: look further down the ranked candidates.
                extended = True
                order += _further(d, order)
                continue
            targets = self.targets(run.registry, order[i])
            i += 1
            if not targets:
                run.skip(
                    order[i - 1],
                    "-",
                    "no_deployment",
                    "no deployments configured; add one to the registry",
                )
            # a model's deployments in the order to try them (`_ranked`; one needs none)
            for t in targets if len(targets) < 2 else self._ranked(targets, run):
                if only is not None and t.key not in only:
                    continue
                if t.spec.context_window <= run.min_window:
                    run.skip(
                        t.model,
                        t.dep.name,
                        "window",
                        f"context window {t.spec.context_window} is "
                        f"not larger than {run.min_window}, which the prompt did not fit",
                    )
                    continue
                if run.deadline is not None and perf_counter() >= run.deadline:
                    run.skip(t.model, t.dep.name, "deadline", "the request's deadline had passed")
                    return
                env = t.dep.api_key_env
                if env and not _env_value(env):
                    run.skip(
                        t.model,
                        t.dep.name,
                        "no_api_key",
                        f"environment variable {env} is not set; export the API key there",
                    )
                    continue
                why = self.health.unavailable(t.key)
                if why is not None:
                    run.skip(t.model, t.dep.name, "unavailable", why, self.health.retry_in(t.key))
                    cooled.append(t)
                    continue
                # (without a cap nothing can be capped out: no call made to say so)
                if run.cap is not None and self._capped_out(run, t):
                    continue
                yield t
                if got:
                    # answered: ended, not dropped while suspended (a generator dropped so is
                    # closed by a GeneratorExit thrown through it, about 1,000 instructions)
                    return

    @staticmethod
    def _capped_out(run: Run, t: _Target) -> bool:
        """Whether the cost cap leaves a call to `t` nothing for its answer (then skipped,
        on the record): before its first call, and before each retry, as what the request
        was billed meanwhile counts (a retry had gone out with max_tokens 0, which the
        Anthropic wire reads as its 4,096 default, past the cap)."""
        capped = run.output_cap(t)
        if capped is None or capped[0] > 0:
            return False
        served = run.request.server_tools
        search_usd = search_bound(t.price, served)
        unbounded = math.isinf(search_usd) or math.isinf(server_tokens(served))
        run.skip(
            t.model,
            t.dep.name,
            "cost_cap",
            f"{'the budget hold' if run.decision.hold_usd == run.cap else 'the cost cap'} "
            f"(${run.cap:.6f}) leaves nothing for its answer after its prompt, "
            "what this request was billed and what calls in flight hold (or a bill on it is "
            "unknown: an unpriced call)"
            + ("; its server tools are unbounded or unpriced: set max_uses on each (and "
               "max_content_tokens on web_fetch), on a model with a per_search price"
               if unbounded else
               f"; its web searches may cost ${search_usd:.4f}, and their results "
               f"{SEARCH_RESULT_TOKENS:,} input tokens each" if search_usd else ""),
        )  # fmt: skip
        return True

    # one attempt --------------------------------------------------------------------------
    def _budget(self, run: Run, t: _Target, streamed: bool = False) -> tuple[httpx.Timeout, float]:
        """httpx timeouts and the whole-attempt bound, from what is left of the deadline.

        While another target could still answer, one attempt may take at most the larger
        of twice its deployment's p95 (live, else the registry's) and half of what is
        left: a hung primary cannot spend the whole deadline, the fallback gets time.

        A stream's reads are timed against the whole of what is left, its share bounding
        only the wait for its first text (`_bounded`): from there on no fallback can
        follow, and its own loop bounds each wait by the idle timeout and the deadline. Its
        reads had kept the share as their read timeout, so a pause mid-answer longer than
        that share (half the deadline) cut a stream well inside its deadline."""
        c = self.config
        if run.deadline is None:
            return self._timeout, c.attempt_timeout_s
        whole = left = max(run.deadline - perf_counter(), 0.001)
        if self._fallback_ready(run, t):
            p95 = self._p95_s(t)
            left = min(left, max(left / 2, 0.0 if p95 is None else 2 * p95))
        if left >= c.read_timeout_s:
            return self._timeout, left
        read = min(whole, c.read_timeout_s) if streamed else left
        return httpx.Timeout(read, connect=min(c.connect_timeout_s, left)), left

    def _fallback_ready(self, run: Run, t: _Target) -> bool:
        """Is there a target besides `t` in this request's order that is not cooling?"""
        d = run.decision
        blocked = self.health.blocked()
        for m in run.order if run.order is not None else (d.model, *d.fallbacks):
            for x in self.targets(run.registry, m):
                if x.key != t.key and x.key not in blocked and x.key not in run.tried:
                    return True
        return False

    def _ranked(self, targets: tuple[_Target, ...], run: Run) -> list[_Target]:
        """A model's deployments (two or more) in the order to try them: those within 10%
        of the cheapest for this request first, among them the least busy (calls in
        flight), then the fastest (measured p95); then the pricier ones by price; unpriced
        ones last. Equal on all of these: the registry's order. (Health is applied by the
        caller: a cooling deployment is skipped wherever it is.) A method of its own: the
        cells its lambdas close over are made when a function is entered, whichever way
        it goes."""
        # priced for this request's prompt and answer, tiers and fees included: by the sum
        # of the rates, a deployment dear on the side this request is heavy on went first
        d = run.decision
        t_in = d.max_tokens_in(targets[0].model)
        t_out = run.request.max_tokens or d.tokens_out
        usd = {t.key: math.inf if t.price is None else t.price.cost(t_in, t_out) for t in targets}
        cheapest = min(usd.values())
        near = [t for t in targets if usd[t.key] <= cheapest * 1.1]
        rest = [t for t in targets if usd[t.key] > cheapest * 1.1]
        busy = self._in_flight
        near.sort(key=lambda t: (busy[t.key], self._p95_s(t) or math.inf))
        rest.sort(key=lambda t: (usd[t.key], busy[t.key]))
        return near + rest

    def _p95_s(self, t: _Target) -> float | None:
        live = self.health.p95_s(t.key)
        if live is not None:
            return live
        ms = t.dep.p95_latency_ms or t.spec.p95_latency_ms
        return ms / 1000.0 if ms else None

    async def _bounded(
        self,
        run: Run,
        t: _Target,
        call: Callable[[ChatRequest, httpx.Timeout], Awaitable[T]],
        request: ChatRequest,
        streamed: bool = False,
    ) -> T:
        """`call(request, timeout)` within its share of the deadline (or attempt_timeout_s),
        both taken once, as the call starts (a race's, once every racer has been launched:
        taken at launch, while the others are still untried, the first racer's share was
        halved for a fallback)."""
        if run.deadline is None:  # (`_budget`'s first answer, without its call)
            timeout, budget = self._timeout, self.config.attempt_timeout_s
        else:
            timeout, budget = self._budget(run, t, streamed)
        # what a stream generates beside its text (its provider adds to it as it comes)
        made = Generated() if streamed else None
        began = perf_counter()
        run.calling[t.hold] = t, began, made, UNKNOWN
        if t.balanced:
            self._in_flight[t.key] += 1
        loop = asyncio.get_running_loop()
        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not loop:
            deadlines = self._deadlines = Deadlines(loop)
        generating = None if made is None else GENERATED.set(made)
        stage = UNKNOWN  # how far the request got, if it is cut off (`transport.stage_of`)
        try:
            waiting = deadlines.enter(budget)
            try:
                return await call(request, timeout)
            except BaseException as e:
                stage = stage_of(e)
                if stage != UNKNOWN:  # (a cancellation's record reads it: `_cancelled`)
                    run.calling[t.hold] = t, began, made, stage
                if isinstance(e, asyncio.CancelledError) and deadlines.timed_out(waiting):
                    raise TimeoutError from None  # the budget's
                raise
            finally:
                deadlines.leave(waiting)
        except TimeoutError as e:  # the budget's, unless a limit inside said which it was
            # how far it got: a connect that never completed had read as "no answer", a
            # slow model, for a request that never reached the upstream
            what = _NOT_SO_FAR.get(stage, "no answer")
            why = str(e) or (
                f"{what} within {budget:.3g}s "
                "(its share of the request's deadline, or attempt_timeout_s)"
            )
            err = UpstreamTimeoutError(
                f"{t.model} via {t.dep.name}: {why}", model=t.model, deployment=t.dep.name
            )
            # with what its stream had generated before the timeout (billed at least that)
            raise carry_generated(_unsent(err, stage), made) from None
        except UpstreamTimeoutError as e:  # the transport's pool or connect timeout, or later
            _unsent(e, stage)
            raise
        finally:
            if generating is not None:
                GENERATED.reset(generating)
            if t.balanced:
                self._in_flight[t.key] -= 1

    def _failed(
        self,
        run: Run,
        t: _Target,
        e: ProviderError,
        started: float,
        streamed: str | None = None,
        searched: int | None = None,
        thought: str = "",
    ) -> Action:
        """Record a failed attempt, update health, and say what to do next.

        A call the upstream may still bill (it timed out after reaching it, a stream broke
        after `streamed` text and `thought` thinking, or a 2xx answer was cut or malformed)
        carries an estimated cost: the prompt (and that text)."""
        now = perf_counter()
        run.upstream_s += now - started
        attempt = Attempt(
            t.model,
            t.dep.name,
            "error",
            started - run.t0,
            now - started,
            type(e).__name__,
            str(e),
            e.status,
            e.retry_after,
            step=run.step,
        )
        if (
            streamed is not None
            or (isinstance(e, UpstreamTimeoutError) and not e.unsent)
            or e.answered
        ):
            # what reached the caller, and what the stream generated beside it (a tool
            # call's arguments, reasoning); at least the usage the upstream last reported
            thought = thought if len(thought) >= len(e.thought) else e.thought
            usage = self._prompt_usage(
                run, t, (streamed or "") + e.generated, searched, thought, e.reported
            )
            attempt.usage, attempt.cost_estimated = usage, True
            attempt.cost_usd = self._cut_cost(run, t, usage, searched)
        run.record(attempt, t)
        action = classify(e)
        if action is Action.DISABLE:
            self.health.disable(t.key, str(e))
        elif action is Action.WIDEN:
            run.min_window = max(run.min_window, t.spec.context_window)
        elif (
            action is not Action.STOP
            and not isinstance(
                e,
                StaleConnectionError | UnsupportedRequestError,  # neither is the upstream's fault
            )
            and not (isinstance(e, UpstreamTimeoutError) and e.queued)  # the router's own pool
        ):
            self.health.record_failure(
                t.key,
                rate_limited=e.status == 429,
                retry_after=e.retry_after,
                reason=type(e).__name__ if e.status is None else f"HTTP {e.status}",
            )
        return action

    def _backoff(self, run: Run, e: ProviderError, retry: int) -> float | None:
        """Seconds to wait before retrying the same deployment, or None to move on."""
        c = self.config
        return backoff_s(
            retry=retry,
            max_retries=c.max_retries,
            retry_after=e.retry_after,
            base_s=c.backoff_base_s,
            max_s=c.backoff_max_s,
            jitter=random.random(),
            time_left_s=None if run.deadline is None else run.deadline - perf_counter(),
        )

    async def _first_success(
        self,
        run: Run,
        open_: Callable[[Provider, ChatRequest, httpx.Timeout], Awaitable[T]],
        streamed: bool = False,
    ) -> tuple[_Target, float, T]:
        """Walk the targets until one answers: (target, start time, what `open_` returned).

        If every target left was cooling and the soonest is free again within
        max_retry_wait_s (and the deadline), wait for it once rather than fail.
        """
        only: set[str] | None = None
        got: list[tuple[_Target, float, T]] = []  # the answer, which ends `_available`
        for _ in range(2):
            cooled: list[_Target] = []
            for t in self._available(run, cooled, only, got):
                retry = 0
                resent = False  # a stale pooled connection's request, sent again at once
                run.tried.add(t.key)
                while True:
                    started = perf_counter()
                    try:
                        p = t.provider or self._provider(t)  # (made once: no call after)
                        call: Callable[[ChatRequest, httpx.Timeout], Awaitable[T]] = (
                            # the provider's own method: no frame of `_complete`'s, and no
                            # partial made (a partial's making and calling cost about 2,000
                            # instructions more than the method's)
                            p.complete  # type: ignore[assignment]
                            if open_ is _complete
                            else partial(open_, p)
                        )
                        value = await self._bounded(run, t, call, run.wire(t), streamed)
                    except ProviderError as e:
                        action = self._failed(run, t, e, started)
                        if action is Action.STOP:
                            e.attempts = run.attempts
                            raise
                        if isinstance(e, StaleConnectionError) and not resent:
                            resent = True  # the pool's race, not the upstream's failure
                            continue
                        retrying = action is Action.RETRY and not _rebills(run, e)
                        wait = self._backoff(run, e, retry) if retrying else None
                        if wait is None:
                            if e.retry_after is not None:
                                cooled.append(t)  # free again soon: a second pass may wait
                            break
                        await asyncio.sleep(wait)
                        retry += 1
                        if self._capped_out(run, t):
                            break
                        continue
                    got.append((t, started, value))
                    break  # (to the loop's next turn, where `_available` ends)
            if got:
                return got[0]
            wait = self._cooldown_wait(run, cooled)
            if wait is None:
                break
            await asyncio.sleep(wait)
            only = {t.key for t in cooled}
        raise await self._failure(run)

    def _cooldown_wait(self, run: Run, cooled: list[_Target]) -> float | None:
        """Seconds until the first cooled target is free, if that is worth waiting for."""
        return cooldown_wait_s(
            [x for t in cooled if (x := self.health.retry_in(t.key)) is not None],
            max_retry_wait_s=self.config.max_retry_wait_s,
            time_left_s=None if run.deadline is None else run.deadline - perf_counter(),
        )

    # results ------------------------------------------------------------------------------
    def _usage(self, run: Run, t: _Target, resp: ChatResponse) -> Usage:
        if (u := reported(resp)) is not None:  # the upstream's own figures: nothing to count
            r, spec = run.request, t.spec
            if (
                u.completion_tokens <= spec.max_output
                and u.prompt_tokens <= spec.context_window
                and (r.max_tokens is None or u.completion_tokens <= r.max_tokens)
                and not run.holds
                and not r.extra
                and t.dep.api != "anthropic"
            ):
                # within `_believable`'s bounds, without its calls: a call held to no cap,
                # with no limit in `extra` and no thinking added on its wire, was sent at
                # most its max_tokens, and none writes past its max_output
                return u
            if self._believable(run, t, u):
                return u
            # more than the window took or the call was let write: no bill of this call,
            # and a buggy upstream's 50M tokens had drained a budget; counted instead
            resp = replace(resp, usage=None)
        extra = extra_text(run.request.tools, run.request.response_format)
        routed = run.decision.tokens_in(t.model)
        counted = usage_of(run.request.messages, t.spec.tokenizer, resp, extra, routed)
        if resp.web_searches:  # billed apart, whatever the tokens
            counted = replace(counted, web_searches=resp.web_searches)
        # the thinking it showed, where more than its row expects (3,000 tokens of it had
        # been billed as the 1,024 expected)
        seen = 0
        if resp.thinking:
            shown = "".join(b.get("thinking") or "" for b in resp.thinking)
            seen = text_tokens(shown, t.spec.tokenizer) if shown else 0
        return _with_reasoning(counted, t, run.max_out(t), seen)

    @staticmethod
    def _believable(run: Run, t: _Target, u: Usage) -> bool:
        """Whether a reported usage is within what the call could use: its prompt within
        the window, its output within the limit it was sent (with none, the model's
        max_output and the thinking the wire adds): a lying usage had been billed whatever
        it said."""
        most = run.max_out(t)
        if most is None:
            r = run.request
            most = t.spec.max_output + thinking_added(
                t.spec, t.dep.api, r.thinking_within, r.thinking_cap
            )
        return u.prompt_tokens <= t.spec.context_window and u.completion_tokens <= most

    def _answered(
        self, run: Run, t: _Target, resp: ChatResponse, started: float, now: float
    ) -> Attempt:
        """Record a call that answered: its usage, its cost, on the request's attempts."""
        usage = self._usage(run, t, resp)
        attempt = Attempt(  # by position (see `run`)
            t.model,
            t.dep.name,
            "ok",
            started - run.t0,  # started_s
            now - started,  # duration_s
            None,  # error_type
            None,  # error
            None,  # status
            None,  # retry_after
            usage,
            cost_of(t.price, usage),  # cost_usd
            # not the upstream's own figures (none, or past what the call allowed): counted
            # or estimated here, and the record says so
            usage.source != "provider",  # cost_estimated
            run.step,
        )
        run.record(attempt, t)
        return attempt

    def _prompt_usage(
        self,
        run: Run,
        t: _Target,
        completion: str = "",
        searched: int | None = None,
        thought: str = "",
        reported: Usage | None = None,
    ) -> Usage:
        """What a call that got no final answer may be billed: the prompt as routed (the
        decision's count for this model), plus any text that already streamed, the thinking
        it expects or, where more streamed (`thought`), that, and the web searches it ran
        (`searched`: as many as its stream showed; None, nothing seen: as many as its tools
        allow), their results at SEARCH_RESULT_TOKENS input tokens; at least, field by
        field, the usage the upstream `reported` before the end, where believable (a prompt
        Anthropic reported at 6,000 tokens had been settled at the 9 of the estimate)."""
        if searched is None:
            searched = most_searches(run.request.server_tools) or 0  # (unbounded: _cut_cost)
        tokens_in = run.decision.tokens_in(t.model) + searched * SEARCH_RESULT_TOKENS
        tok = t.spec.tokenizer
        out = text_tokens(completion, tok) if completion else 0
        usage = Usage(tokens_in, out, source="estimated", web_searches=searched)
        seen = text_tokens(thought, tok) if thought else 0
        usage = _with_reasoning(usage, t, run.max_out(t), seen)
        if reported is None or not self._believable(run, t, reported):
            return usage
        return replace(
            reported,
            prompt_tokens=max(reported.prompt_tokens, usage.prompt_tokens),
            completion_tokens=max(reported.completion_tokens, usage.completion_tokens),
            reasoning_tokens=max(reported.reasoning_tokens, usage.reasoning_tokens),
            web_searches=max(reported.web_searches, usage.web_searches),
            source="estimated",
        )

    @staticmethod
    def _cut_cost(run: Run, t: _Target, usage: Usage, searched: int | None) -> float | None:
        """The cost of a call with no final answer, billed at `usage` (`_prompt_usage`):
        unknown when it may have run web searches nobody saw and no max_uses bounds."""
        if searched is None and most_searches(run.request.server_tools) is None:
            return None
        return cost_of(t.price, usage)

    def _result(
        self,
        run: Run,
        t: _Target,
        resp: ChatResponse,
        started: float,
        ttft: float | None = None,
        paused: float = 0.0,
    ) -> ChatResult:
        attempt = self._answered(run, t, resp, started, perf_counter())
        assert attempt.usage is not None
        # read after the answer's usage and cost are worked out: they are the router's work
        # too, which overhead_s left out when the clock stopped at the call's end
        latency = perf_counter() - run.t0
        own = latency - run.upstream_s - paused
        return ChatResult(  # by position (see `run`)
            resp.text,
            t.model,
            t.dep.name,
            attempt.usage,
            attempt.cost_usd,
            latency,
            0.0 if own < 0.0 else own,  # overhead_s (as max(own, 0.0), without its call)
            run.attempts,
            run.decision,
            resp.finish_reason,
            resp.tool_calls,
            resp.raw,
            ttft,
            None,  # cascade
            None,  # cascade_skipped
            time(),  # started_at (its default)
            {},  # metadata (its default)
            resp.stop_sequence,
            resp.refusal,
            resp.thinking,
        )

    async def _failure(self, run: Run) -> ProviderError:
        """Every attempt failed. UnsupportedRequestError (a 400: the request must change)
        when no model it was routed to can carry it: every call made refused its shape, and
        no deployment skipped (cooling, disabled, without its key) has a wire that would
        take it. Unless the router routed around a cooling model that can: that one is
        skipped on the record with its wait ("try again soon", a 503 served). Else
        AllAttemptsFailedError, its attempts saying why."""
        d = run.decision
        made = [a for a in run.attempts if a.outcome != "skipped"]
        if made and all(a.error_type == "UnsupportedRequestError" for a in made):
            if run.reroute is not None:
                try:
                    around = await run.reroute()
                except SatisficeError:  # nothing routable even then
                    around = None
                on_record = {(a.model, a.deployment) for a in run.attempts}
                for m in () if around is None else (around.model, *around.fallbacks):
                    for t in self.targets(run.registry, m) if m in run.registry else ():
                        if (m, t.dep.name) in on_record:  # skipped there already
                            continue
                        why = self.health.unavailable(t.key)
                        wait = self.health.retry_in(t.key)  # None: disabled, not cooling
                        if (
                            why is not None
                            and wait is not None
                            and carries(t.spec, t.dep, run.request)
                        ):
                            run.skip(m, t.dep.name, "unavailable", why, wait)
            if self._unsupported(run):
                return UnsupportedRequestError(
                    "no model this request was routed to can take it as it is:\n"
                    + _lines(run.attempts),
                    attempts=run.attempts,
                )
        return AllAttemptsFailedError(
            f"every attempt failed (routed to {d.model}, fallbacks {d.fallbacks}); "
            "see router.health() for cooldowns, or allow more fallbacks "
            "(Policy.max_fallbacks, looser constraints):\n" + _lines(run.attempts),
            run.attempts,
        )

    def _unsupported(self, run: Run) -> bool:
        """Every call made refused the request's shape, and no deployment skipped could
        take it either."""
        made = [a for a in run.attempts if a.outcome != "skipped"]
        return (
            bool(made)
            and all(a.error_type == "UnsupportedRequestError" for a in made)
            and not any(self._carries(run, a) for a in run.attempts if a.outcome == "skipped")
        )

    def _carries(self, run: Run, a: Attempt) -> bool:
        """Whether the deployment a skipped attempt names could take the request."""
        if a.model not in run.registry:
            return False
        for t in self.targets(run.registry, a.model):
            if t.dep.name == a.deployment:
                return carries(t.spec, t.dep, run.request)
        return False

    # entry points -------------------------------------------------------------------------
    def run(
        self,
        decision: Decision,
        messages: list[dict[str, Any]],
        call: Mapping[str, Any],
        *,
        t0: float,
        deadline: float | None = None,
        accept: Validator | None = None,
    ) -> Run:
        """The state of one request, for `complete`, `stream` or `cascade`: `call` holds
        each of the wire request's parameters (the router's `_CALL_FIELDS`: ChatRequest's
        fields besides the messages, `stream` and the thinking pair set here)."""
        c = decision.constraints
        if call is NO_CALL:  # the usual request: its call's fields unset (NO_CALL's values)
            return Run(decision, ChatRequest(
                messages, None, None, None, None, None, False, None, None, None, None, None,
                None, False, None, False, c.max_reasoning_tokens,
            ), t0, deadline, accept)  # fmt: skip
        # a limit that holds the thinking (`Constraints.output_includes_thinking`) is sent
        # as given, any thinking budget inside it
        within = c.output_includes_thinking and call["max_tokens"] is not None
        # in ChatRequest's field order, passed by position: a class called with keywords
        # (or `**call`) has them made into a dict and back again on its way to __init__
        # (type_call), some 500 instructions a keyword; so too the request's other
        # dataclasses on the usual path (Attempt, ChatResult, ChatResponse, Usage)
        request = ChatRequest(
            messages,
            call["max_tokens"],
            call["temperature"],
            call["tools"],
            call["tool_choice"],
            call["response_format"],
            False,  # stream
            call["extra"],
            call["user"],
            call["prompt_cache_key"],
            call["anthropic_beta"],
            call["context_management"],
            call["server_tools"],
            call["no_thinking"],
            call["thinking_display"],
            within,  # thinking_within
            c.max_reasoning_tokens,  # thinking_cap
        )
        return Run(decision, request, t0, deadline, accept)

    async def complete(self, run: Run, *, hedge: bool = False, race: int = 0) -> ChatResult:
        """One answer: the first target that answers, or (hedge/race) the first accepted
        among concurrent attempts."""
        if hedge or race > 1:
            return await self._concurrent(run, max(race, 2), hedge=hedge and race <= 1)
        t, started, resp = await self._first_success(run, _complete)
        done = perf_counter()
        # (`_exchange_s`, without its call)
        run.upstream_s += resp.wire_s if resp.wire_s is not None else done - started
        self.health.record_success(t.key, done - started)
        return self._result(run, t, resp, started)

    def stream(
        self,
        run: Run,
        *,
        started_at: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ChatStream:
        return ChatStream(self._stream(run, started_at, dict(metadata or {})))

    async def cascade(self, run: Run, ladder: Cascade | bool | str) -> ChatResult:
        """Climb `ladder` (True: the decision's default ladder, checked by `run.accept`;
        "auto": the policy's tuned ladder for the prompt's task, or plain routing when it
        has none for that task); every model call goes through the attempt loop and lands
        in `run.attempts`, tagged with its step and, once checked, its verdict."""
        from .cascade import (
            _LATE,
            UNCHECKED,
            Cascade,
            CascadeResult,
            StepRecord,
            answer_from_chat,
            current_step,
            estimates_from,
        )

        d = run.decision
        if isinstance(ladder, str):
            tuned, why = tuned_ladder(d)
            if tuned is None:
                plain = await self.complete(run)
                plain.cascade_skipped = why
                return plain
            ladder = tuned
        if not isinstance(ladder, Cascade):
            if run.accept is None:
                raise ConfigError(
                    "cascade=True builds the ladder from the decision and needs a check: "
                    "pass accept=<validator> (see satisfice.validators), or a Cascade"
                )
            ladder = Cascade.from_decision(d, run.accept)
        c = d.constraints
        for rung in ladder.steps:
            for m in rung.models:
                run.registry[m]  # UnknownModelError names the known ids, before any call
        if run.request.server_tools is not None:  # (what put Claude models alone in `allow`)
            unserved = sorted({
                m for rung in ladder.steps for m in rung.models
                if not runs_server_tools(run.registry[m])
            })  # fmt: skip
            if unserved:
                raise ConfigError(
                    f"the cascade calls {', '.join(unserved)}, which cannot run Anthropic's "
                    "server tools (web search, web fetch) this request offers: only models "
                    "with an Anthropic deployment can; take them out of the ladder, or the "
                    "server tools out of the request"
                )
        ruled_out = sorted(
            {
                m
                for rung in ladder.steps
                for m in rung.models
                if m in c.deny or (c.allow is not None and m not in c.allow)
            }
        )
        if ruled_out:  # the ladder names its models, so this is a conflict, not a fallback
            raise ConfigError(
                f"the cascade calls {', '.join(ruled_out)}, which this request's allow/deny "
                "rule out; take them out of the ladder or out of the constraints"
            )
        cap = run.cap  # the request's max_cost_usd, and a budget's hold (`Run.__init__`)
        if cap is not None and (ladder.max_cost_usd is None or ladder.max_cost_usd > cap):
            ladder = ladder.capped(cap)  # the request's cap (a job's share) binds the ladder
        run.cap = ladder.max_cost_usd  # and the ladder's cap bounds each answer on the wire
        if run.cap is not None and d.uncounted_parts:  # as a request's max_cost_usd refuses
            raise ConfigError(
                f"the cascade's max_cost_usd cannot be checked: this request has "
                f"{d.uncounted_parts} file or audio part(s), whose tokens cannot be counted; "
                "send their content as text or images, or climb the ladder without a cap"
            )
        width = [len(s.models) for s in ladder.steps]  # a step's models run at once
        answered: dict[int, tuple[_Target, ChatResponse, Attempt]] = {}

        async def call(model: str, messages: list[dict[str, Any]]) -> Answer:
            step = current_step()
            sub = run.sub(model, messages, step, 1 if step is None else width[step])
            began = perf_counter()
            try:
                t, started, resp = await self._first_success(sub, _complete)
            except asyncio.CancelledError:  # the ladder's latency budget cut the step off
                self._cut_off(sub)
                raise
            finally:
                if sub.upstream_s:  # time its failed tries waited
                    run.spans.append((began, began + sub.upstream_s))
            done = perf_counter()
            run.spans.append((done - _exchange_s(resp, started, done), done))
            self.health.record_success(t.key, done - started)
            attempt = self._answered(sub, t, resp, started, done)
            cost = attempt.cost_usd
            answer = answer_from_chat(model, resp, cost_usd=cost, latency_ms=(done - started) * 1e3)
            answered[id(answer)] = (t, resp, attempt)
            return answer

        def billed(rec: StepRecord) -> tuple[float | None, int, int]:
            # The step's bill is what its attempts were billed, a failed call's estimate
            # included: one account for the ladder, the record and total_cost_usd.
            mine = [a for a in run.attempts if a.step == rec.index]
            cost = billed_cost(mine)
            used = [a.usage for a in mine if a.usage is not None]
            return (
                None if cost is None else cost[0],
                sum(u.prompt_tokens for u in used),
                sum(u.completion_tokens for u in used),
            )

        def marked(result: CascadeResult, returned: bool = True) -> CascadeResult:
            # Each checked answer's attempt takes its verdict, and one rejected (not the
            # answer returned) its outcome: on a ladder that raised as on one that returned,
            # whose record had shown the answers its checks rejected as answered.
            for step in result.steps:
                # a step cut off by the latency budget mid-check has answers without verdicts
                for a, v in zip(step.answers, step.verdicts, strict=False):
                    # nothing to learn from: no check, or none before the latency budget ran
                    # out (a "fail" no check gave would train the flywheel on made-up labels)
                    if v is UNCHECKED or v is _LATE or id(a) not in answered:
                        continue
                    attempt = answered[id(a)][2]
                    attempt.verdict = _verdict_dict(v)
                    if not v.passed and not (returned and a is result.answer):
                        attempt.outcome = "rejected"
            return result

        steps: list[StepRecord] = []  # as they are made: a cancelled request keeps them
        try:
            result = marked(
                await ladder.run(
                    call,
                    run.request.messages,
                    estimates=estimates_from(d, run.registry),
                    deadline=run.deadline,
                    on_check=run.checked,
                    billed=billed,
                    ruled_out=_unfit(d, run.request.messages),
                    steps=steps,
                    # the checks' own router calls (a judge's) within what the cap leaves
                    room=None if run.cap is None else run.room,
                )
            )
        except asyncio.CancelledError:
            # the caller left mid-ladder: the answers its checks rejected are on its record
            # as rejected, with their verdicts (they had shown as answered, unchecked), and
            # the steps it climbed (`Run.climbed`, for the record)
            run.climbed = marked(
                CascadeResult(None, None, False, steps, "the request was cancelled"),
                returned=False,
            )
            raise
        except AllAttemptsFailedError as e:
            # The ladder knows its calls' errors only as text; the run has every attempt.
            climbed = marked(CascadeResult(None, None, False, steps, str(e)), returned=False)
            err: ProviderError | AllAttemptsFailedError
            if self._unsupported(run):  # a 400 served, as for one call (it had been a 502)
                err = UnsupportedRequestError(
                    "no model this cascade called can take the request as it is:\n"
                    + _lines(run.attempts),
                    attempts=list(run.attempts),
                )
            else:
                err = AllAttemptsFailedError(str(e), list(run.attempts))
            setattr(err, "result", climbed)  # noqa: B010 (its steps, for the record)
            raise err from None
        except CascadeBudgetError as e:
            if isinstance(e.result, CascadeResult):
                marked(e.result, returned=False)  # its best answer was not returned
            e.attempts = list(run.attempts)  # what its steps were billed, for a budget's settle
            raise
        assert result.answer is not None  # Cascade.run raises when there is none
        run.upstream_s += _union_s(run.spans)
        t, resp, attempt = answered[id(result.answer)]
        now = perf_counter()
        latency = now - run.t0
        return ChatResult(
            resp.text,
            t.model,
            t.dep.name,
            attempt.usage or Usage(0, 0),
            attempt.cost_usd,
            latency,
            max(latency - run.upstream_s, 0.0),
            run.attempts,
            d,
            resp.finish_reason,
            resp.tool_calls,
            resp.raw,
            cascade=result,
            stop_sequence=resp.stop_sequence,
            refusal=resp.refusal,
            thinking=resp.thinking,
        )

    async def _stream(
        self, run: Run, started_at: float | None, metadata: dict[str, Any]
    ) -> AsyncIterator[StreamDelta]:
        idle = self.config.stream_idle_timeout_s

        async def open_(
            p: Provider, request: ChatRequest, timeout: httpx.Timeout
        ) -> tuple[Any, str | StreamDelta | ChatResponse, list[StreamDelta], Generated]:
            """The stream, its first text (or signed thinking block, or whole answer) and
            the pieces of thinking before it. The stream is the caller's from that item
            on; a failure before it (a reset or an overloaded error while the model thinks)
            moves on as any failed attempt does, its thinking held back, never shown. A
            model still at it after KEEPALIVE_S (thinking, writing a tool call) makes it
            the caller's then, with a keep-alive: minutes of silence a proxy would cut."""
            gen = p.stream(request, timeout)
            made = GENERATED.get() or Generated()  # the call's (`_bounded`), the stream's too
            held: list[StreamDelta] = []
            moved = False  # anything came (a tool call's pieces too)
            loop = asyncio.get_running_loop()
            since = loop.time()
            try:
                # keep-alive comments or pings are no progress: text, thinking or a tool
                # call's pieces must come within the idle timeout (and, as every wait,
                # inside the deadline)
                async with asyncio.timeout(idle) as cm:
                    while True:
                        item = await anext(gen)
                        if not isinstance(item, StreamDelta) or item.thought is not None or (
                            item.block is not None  # a server tool ran: billed, the caller's
                        ):  # fmt: skip
                            return gen, item, held, made
                        if item is not PROGRESS:  # (a tool call's piece: given whole)
                            held.append(item)
                        moved = True
                        now = loop.time()
                        if now - since >= KEEPALIVE_S:
                            return gen, StreamDelta(), held, made
                        cm.reschedule(now + idle)
            except TimeoutError as e:  # in this limit's own words, not the attempt budget's
                await gen.aclose()
                why = (
                    f"nothing new for {idle:g}s, before any text" if moved
                    else f"no text within {idle:g}s of the stream's start"
                )  # fmt: skip
                # raised from the limit's own (itself from the cancellation it cut in with):
                # how far the request got, if the limit cut it off in line for a pooled
                # connection or connecting, is read there (`transport.stage_of`); from None,
                # such a call had been billed and its deployment marked down
                raise TimeoutError(f"{why} (stream_idle_timeout_s)") from e
            except BaseException:
                await gen.aclose()
                raise
            # StopAsyncIteration cannot happen: a provider stream ends with a ChatResponse

        try:
            t, started, (gen, item, held, made) = await self._first_success(run, open_, True)
        except (GeneratorExit, asyncio.CancelledError):  # left before its first text
            self._cut_off(run)  # the call it cut off may be billed: on record, estimated
            raise
        run.answering = t.model
        upstream = perf_counter() - started
        run.upstream_s += upstream
        ttft = None
        paused = 0.0
        delivered: list[str] = []
        thought = [h.thinking for h in held if h.thinking]  # the thinking it streamed
        searched = 0  # web searches the stream showed it ran (billed, answer or not)
        finished = False  # the result was yielded
        scrubber = StreamScrubber()  # a key split across pieces never reaches the caller
        thinks = StreamScrubber()  # the same for the model's thinking
        wd = Watchdog()  # the idle timeout between pieces: one timer for the whole stream
        # in flight until its end, not only until its first text: balancing counts it
        if t.balanced:
            self._in_flight[t.key] += 1
        try:
            for h in held:  # the thinking before the stream was the caller's
                for d in _thinking(h, thinks):
                    yield d
            said = perf_counter()  # when the caller was last given something
            while not isinstance(item, ChatResponse):
                w = perf_counter()
                piece = ""
                if item is PROGRESS:  # a tool call's piece: now and then, a keep-alive
                    if w - said >= KEEPALIVE_S:
                        yield StreamDelta()
                        y, w = w, perf_counter()
                        paused += w - y
                        said = w
                elif isinstance(item, StreamDelta):
                    if item.thinking or item.thought is not None:  # the model's thinking
                        if item.thinking:
                            thought.append(item.thinking)
                        if rest := scrubber.flush():  # the text before it, whole
                            delivered.append(rest)
                            yield StreamDelta(rest)
                        for d in _thinking(item, thinks):
                            yield d
                    elif item.block is not None or item.citation is not None:
                        if rest := scrubber.flush():  # the text before it, whole
                            delivered.append(rest)
                            yield StreamDelta(rest)
                        searched += search_ran(item.block)
                        yield item  # a server tool's block, a citation: as the provider read it
                    else:  # the keep-alive that made the stream the caller's (open_)
                        yield item
                    y, w = w, perf_counter()
                    paused += w - y
                    said = w
                else:
                    piece = scrubber.feed(item)
                if piece:
                    if ttft is None:
                        ttft = w - run.t0
                    delivered.append(piece)
                    yield StreamDelta(piece)
                    y, w = w, perf_counter()
                    paused += w - y
                    said = w
                # Inside the deadline, else inside attempt_timeout_s of upstream time (the
                # caller's pauses do not count): an upstream that trickles text forever
                # must not hold a stream open forever.
                end = run.deadline
                if end is None:
                    end = started + self.config.attempt_timeout_s + paused
                wait = max(min(idle, end - w), 0.0)
                try:
                    item = await wd.wait(anext(gen), wait)
                except StopAsyncIteration:
                    raise ProviderError(
                        f"{t.model} via {t.dep.name}: the stream ended without a final answer",
                        model=t.model,
                        deployment=t.dep.name,
                    ) from None
                except TimeoutError:
                    if wait >= idle:
                        why = f"nothing new for {idle:g}s (stream_idle_timeout_s)"
                    elif run.deadline is not None:
                        why = "the request's deadline passed"
                    else:
                        limit = self.config.attempt_timeout_s
                        why = f"the attempt ran past {limit:g}s (attempt_timeout_s)"
                    raise UpstreamTimeoutError(
                        f"{t.model} via {t.dep.name}: {why} mid-stream",
                        model=t.model,
                        deployment=t.dep.name,
                    ) from None
                finally:
                    run.upstream_s += perf_counter() - w
            rest = scrubber.flush()
            if rest:
                delivered.append(rest)
                yield StreamDelta(rest)
            self.health.record_success(t.key, perf_counter() - started - paused)
            result = self._result(run, t, item, started, ttft, paused)
            if started_at is not None:
                result.started_at = started_at
            result.metadata = metadata
            finished = True
            yield StreamDelta(done=True, result=result)
        except (GeneratorExit, asyncio.CancelledError):
            if finished:  # closed after its result was out: the answer is on record already
                raise  # (a "cancelled" attempt had been added to it, and its cost raised)
            # The caller left mid-stream (closed the stream, or its task was cancelled, as a
            # server's is when its client hangs up): the upstream bills what it sent, so the attempt
            # keeps an estimate of that (prompt and text so far) for the record and budgets.
            now = perf_counter()
            run.upstream_s += now - started
            # and what it generated beside the text (a tool call it was writing: a client
            # that left then had been settled at the prompt alone)
            seen = max("".join(thought), "".join(made.thought), key=len)
            usage = self._prompt_usage(
                run, t, "".join(delivered) + "".join(made.out), searched, seen, made.usage
            )
            run.record(Attempt(
                t.model, t.dep.name, "cancelled", started - run.t0, now - started,
                "ClientClosedStream", run.closed_because or _CLOSED_EARLY,
                usage=usage, cost_usd=cost_of(t.price, usage), cost_estimated=True,
                step=run.step,
            ), t)  # fmt: skip
            raise
        except ProviderError as e:
            text = "".join(delivered)
            carry_generated(e, made)  # (the deadline's own error, raised here, carried none)
            self._failed(run, t, e, started, text, searched, "".join(thought))
            raise StreamInterruptedError(
                f"the stream from {t.model} via {t.dep.name} failed after {len(text)} characters "
                f"had reached you, so no fallback was possible ({e}); retry the request if you "
                "need a whole answer",
                partial_text=text,
                model=t.model,
                deployment=t.dep.name,
                status=e.status,
                attempts=run.attempts,
            ) from e
        finally:
            if t.balanced:
                self._in_flight[t.key] -= 1
            wd.close()
            await gen.aclose()

    async def _concurrent(self, run: Run, width: int, *, hedge: bool) -> ChatResult:
        """Race `width` attempts at once, or (hedge) add one when the newest is slower than
        its p95. The first accepted answer wins; the others are cancelled, their cost kept."""
        # A race's calls split the cost cap; a hedge's first call is not cut short for a
        # hedge that may never start: the hedge gets what the first one's hold leaves.
        run.share = 1 if hedge else width
        it = self._available(run, [])
        running: dict[asyncio.Task[ChatResponse], tuple[_Target, float]] = {}
        more = True  # targets left to launch

        def launch() -> None:
            nonlocal more
            while more:
                t = next(it, None)
                if t is None:
                    more = False
                    return
                try:
                    p = self._provider(t)
                except AuthError as e:  # no key set: next target
                    self._failed(run, t, e, perf_counter())
                    continue
                run.tried.add(t.key)
                task = asyncio.ensure_future(self._bounded(run, t, p.complete, run.wire(t)))
                running[task] = (t, perf_counter())
                return

        first = perf_counter()
        held_off = False  # a hedge the cost cap has no room for waits for a call to end
        try:
            for _ in range(1 if hedge else width):
                if not more:
                    break  # fewer targets than the width asked for
                launch()
            while running:
                timeout = None
                if hedge and more and len(running) < width and not held_off:
                    t, started = max(running.values(), key=lambda v: v[1])
                    timeout = max(self._hedge_delay(t) - (perf_counter() - started), 0.0)
                if run.deadline is not None:
                    left = max(run.deadline - perf_counter(), 0.0)
                    timeout = left if timeout is None else min(timeout, left)
                done, _ = await asyncio.wait(
                    running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    if run.deadline is not None and perf_counter() >= run.deadline:
                        break  # the attempts' own timeouts fire too; stop waiting now
                    room = run.room()
                    if room is not None and room <= 0:
                        # the calls in flight hold the whole cap: launching would skip the
                        # next target for good, and it is the fallback if they fail
                        held_off = True
                        continue
                    launch()  # hedge: the newest attempt is slower than its p95
                    continue
                held_off = False
                for task in done:
                    t, started = running.pop(task)
                    exc = task.exception()
                    if exc is None:
                        resp = task.result()
                        now = perf_counter()
                        try:
                            verdict = await self._check(run, t, resp)
                        except BaseException:
                            # cut off (its caller gone) while its answer was checked: out of
                            # `running`, the answer is on record here, at its own usage (left
                            # to `_cut_off`, it had been billed its prompt alone)
                            self._cancelled(
                                run, t, started, perf_counter(), self._usage(run, t, resp)
                            )
                            raise
                        if verdict is None or verdict.passed:
                            self.health.record_success(t.key, now - started)
                            # the wait, less the winner's own encoding and parsing, and its
                            # check's own calls (a judge's), made after that wait
                            run.upstream_s = (
                                now - first - (now - started - _exchange_s(resp, started, now))
                            ) + sum(max(0.0, b - max(a, now)) for a, b in run.spans)
                            result = self._result(run, t, resp, started)
                            if verdict is not None:
                                run.attempts[-1].verdict = _verdict_dict(verdict)
                            return result
                        usage = self._usage(run, t, resp)
                        run.record(
                            Attempt(
                                t.model,
                                t.dep.name,
                                "rejected",
                                started - run.t0,
                                now - started,
                                usage=usage,
                                cost_usd=cost_of(t.price, usage),
                                cost_estimated=usage.source != "provider",
                                verdict=_verdict_dict(verdict),
                            ),
                            t,
                        )
                    elif isinstance(exc, ProviderError):
                        if self._failed(run, t, exc, started) is Action.STOP:
                            exc.attempts = run.attempts
                            raise exc
                    else:
                        raise exc
                    if len(running) < width:
                        launch()
            # the calls the deadline cut off go on record first: the error lists every
            # attempt (a race cut by its deadline had said "every attempt failed" with none)
            await self._cancel(run, running)
            raise await self._failure(run)
        finally:
            await self._cancel(run, running)

    def _cut_off(self, run: Run) -> None:
        """Record the calls a cancellation cut off in flight, each at its own deployment's
        price: it may be billed the prompt (estimated; `run.cut` says one was sent). Between
        calls (a backoff, a wait for a cooldown) none is open, and every call made is on
        record already."""
        now = perf_counter()
        for t, started, made, _ in list(run.calling.values()):
            self._cancelled(run, t, started, now, made=made)

    def _cancelled(
        self,
        run: Run,
        t: _Target,
        started: float,
        now: float,
        usage: Usage | None = None,
        made: Generated | None = None,
    ) -> None:
        """Put a call cancelled in flight on record: with its answer's `usage` when it had
        finished, else at its prompt and what its stream generated (`made`), estimated
        (billed or not, which cannot be known); at $0 when its request never left (cut while
        it waited for a pooled connection or connected: such calls had been billed their
        prompt, 19 of 220 under cancellations, though the upstream never saw them)."""
        calling = run.calling.get(t.hold)
        # a race's task cancelled before its first step never reached `_bounded` (nothing
        # in `run.calling`): no request left, as for one cut off in line (it had been billed
        # its prompt, and `run.cut` set, for a call no upstream saw)
        if usage is None and (calling is None or calling[3] in (WAITING, CONNECTING)):
            run.record(
                Attempt(t.model, t.dep.name, "cancelled", started - run.t0, now - started,
                        error="cancelled before its request was sent", cost_usd=0.0,
                        step=run.step),
                t,
            )  # fmt: skip
            return
        if usage is None:
            run.cut[0] = True  # sent, and cut off before its answer
        if usage is not None:
            billed = usage
        elif made is None:
            billed = self._prompt_usage(run, t)
        else:
            billed = self._prompt_usage(
                run, t, "".join(made.out), None, "".join(made.thought), made.usage
            )
        run.record(
            Attempt(
                t.model,
                t.dep.name,
                "cancelled",
                started - run.t0,
                now - started,
                usage=usage,
                cost_usd=cost_of(t.price, billed)
                if usage is not None
                else self._cut_cost(run, t, billed, None),
                cost_estimated=billed.source != "provider",
                step=run.step,
            ),
            t,
        )

    async def _check(self, run: Run, t: _Target, resp: ChatResponse) -> Verdict | None:
        """The race's acceptance check: `run.accept`, a Validator (None: take any answer)."""
        if run.accept is None:
            return None
        from .cascade import answer_from_chat

        answer = answer_from_chat(t.model, resp, cost_usd=None)
        left = None if run.deadline is None else run.deadline - perf_counter()
        # cut off (the caller gone, a winner elsewhere): its calls are billed all the same
        name = check_name(run.accept)
        cut = partial(run.checked, name=name)
        room = None if run.cap is None else run.room  # as a ladder's checks
        v = await checked(
            run.accept, answer, Context(run.request.messages), left, cut, recorded=True,
            room=room,
        )  # fmt: skip
        run.checked(v, name)
        return v

    async def _cancel(
        self, run: Run, running: dict[asyncio.Task[ChatResponse], tuple[_Target, float]]
    ) -> None:
        """Cancel losers and record them, with the prompt's cost as an estimate: providers
        bill prompt tokens a request has reached, and we cannot know how far it got."""
        if not running:
            return
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        now = perf_counter()
        for task, (t, started) in running.items():
            failed = None if task.cancelled() else task.exception()
            if isinstance(failed, ProviderError):  # it had failed already (with the winner):
                self._failed(run, t, failed, started)  # a failure, not a call cut off
                continue
            if t.hold in run.calling or not task.cancelled():  # (one that never ran: no call)
                self.health.record_slow(t.key, now - started)  # it took at least this long
            finished = not task.cancelled() and failed is None  # answered with the winner
            self._cancelled(
                run, t, started, now, self._usage(run, t, task.result()) if finished else None
            )
        running.clear()

    def _hedge_delay(self, t: _Target) -> float:
        p95 = self._p95_s(t)
        return self.config.hedge_default_s if p95 is None else p95


def _thinking(d: StreamDelta, scrubber: StreamScrubber) -> list[StreamDelta]:
    """What the caller is given of a provider's piece of thinking: a key in it scrubbed,
    split across pieces too (a block's whole text, which its end carries, the provider
    scrubbed; a server tool's block or a citation, held with it, as it is)."""
    if d.block is not None or d.citation is not None:
        return [d]
    if d.thought is None:
        piece = scrubber.feed(d.thinking)
        return [StreamDelta(thinking=piece)] if piece else []
    rest = scrubber.flush()
    return [StreamDelta(thinking=rest), d] if rest else [d]


def _with_reasoning(usage: Usage, t: _Target, most: int | None, seen: int = 0) -> Usage:
    """Our own count of a call (no usage from the upstream), of a reasoning-effort variant:
    the visible text plus the reasoning tokens it is expected to spend, which the provider
    bills as output although none of them is seen (the count was the visible text alone),
    or the `seen` tokens of thinking it streamed where those are more (a stream left after
    46,000 tokens of thinking had been billed the 6,144 its row expects); never more output
    than the call was let write (`most`: a limit that holds the thinking may be under the
    expected reasoning, and a failed call's estimate had been over it)."""
    r = max(t.spec.reasoning_tokens, seen)
    if r:
        usage = replace(
            usage,
            completion_tokens=usage.completion_tokens + r,
            reasoning_tokens=r,
            source="estimated",
        )
    if most is not None and usage.completion_tokens > most:
        usage = replace(
            usage, completion_tokens=most, reasoning_tokens=min(usage.reasoning_tokens, most)
        )
    return usage


class ChatStream:
    """`async for delta in stream`: text pieces, then one item with `done=True` and `.result`.

    Use it as `async with router.stream(...) as s:` (or read it to the end) so that an early
    exit releases the connection at once.
    """

    __slots__ = ("_gen", "_runs")

    def __init__(self, gen: AsyncIterator[StreamDelta], runs: Sequence[Run] = ()) -> None:
        self._gen = gen
        self._runs = runs  # filled once the request is routed

    @property
    def attempts(self) -> list[Attempt]:
        """The calls made so far, each with its (estimated) cost: what a caller that leaves
        early, such as a server settling a budget, may have been billed for."""
        return list(self._runs[0].attempts) if self._runs else []

    @property
    def request_id(self) -> str | None:
        """The request's id (its record's, and feedback's), once it is routed."""
        return self._runs[0].decision.request_id if self._runs else None

    @property
    def model(self) -> str | None:
        """The model the text comes from, once its first piece has arrived (a server names
        it in a stream's first event, before the result says so)."""
        return self._runs[0].answering if self._runs else None

    @property
    def prompt_tokens(self) -> int | None:
        """The prompt's tokens for the model the text comes from, as routing counted (or
        estimated) them, once its first piece has arrived; the upstream's own figure comes
        with the result (a server gives this in a stream's first event, as Anthropic's API
        gives the prompt's count in `message_start`)."""
        run = self._runs[0] if self._runs else None
        return (
            None if run is None or run.answering is None else run.decision.tokens_in(run.answering)
        )

    def __aiter__(self) -> AsyncIterator[StreamDelta]:
        return self._gen

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self, why: str | None = None) -> None:
        """End the stream (at once, if it is not at its end). `why`: the reason its record
        gives, if not its caller's leaving (a server names its shutdown)."""
        if why is not None and self._runs:
            self._runs[0].closed_because = why
        aclose = getattr(self._gen, "aclose", None)
        if aclose is not None:
            await aclose()

    async def result(self) -> ChatResult:
        """Read the whole stream and return the final result."""
        async for d in self._gen:
            if d.done:
                result: ChatResult = d.result
                return result
        raise RuntimeError("the stream ended without a final item")  # providers guarantee one


def _verdict_dict(v: Verdict) -> dict[str, Any]:
    return {"passed": v.passed, "confidence": round(v.confidence, 4), "reason": v.reason}
