"""The ASGI app behind `satisfice serve` (Starlette): mount it in your own app, or run it.

    from satisfice.server import ServerConfig, create_app
    app = create_app(ServerConfig.load("satisfice.toml"))

Routes: POST /v1/chat/completions, POST /v1/messages, GET /v1/models[/{id}], GET /health,
GET /ready, GET /metrics, and the admin API under /admin (Bearer master key): keys, teams, spend,
deployment health, registry reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import json
import logging
import math
import re
import sys
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    MutableMapping,
)
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import _core
from .._json import NotUTF8, dumps, loads
from .._redact import scrub, scrub_values
from .._watchdog import Deadlines
from ..decision import Decision, thinks_as_asked
from ..errors import (
    AllAttemptsFailedError,
    AuthError,
    BadRequestError,
    CascadeBudgetError,
    ConfigError,
    ContextLengthError,
    InputError,
    NoRouteError,
    ProviderError,
    SatisficeError,
    UnknownModelError,
    UpstreamTimeoutError,
    quoted,
    quoted_names,
)
from ..executor import (
    cache_write_of,
    search_bound,
    server_tokens,
    thinking_added,
    tuned_ladder,
    worst_bill,
)
from ..metrics import Metrics
from ..policy import Constraints, Policy, reasoning_usd
from ..providers.anthropic import prices_searches, runs_server_tools, searches
from ..registry import Registry
from ..result import billed_cost
from ..router import Router
from ..state import Health
from . import wire
from ._http import ANSWER, CONNECTION, Connection, Own
from .config import ServerConfig, check_aliases
from .state import (
    HOLD_RENEW_S,
    KEY_PREFIX,
    Budget,
    KeyChanged,
    MemoryState,
    RateCount,
    RedisState,
    Refused,
    StateUnavailable,
    VirtualKey,
)
from .unsettled import Unsettled

if TYPE_CHECKING:
    from ..cascade import Cascade

__all__ = ["Service", "create_app"]

_log = logging.getLogger("satisfice.server")


class _JSON(JSONResponse):
    """A JSONResponse rendered as the server's stream events are (`_json.dumps`: orjson, an
    answer in a tenth of json.dumps's time; the same JSON values, floats in their shortest
    form, 0.00001 for 1e-05; what orjson refuses renders, or fails, through json)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


class _Answer(_JSON):
    """A 200 JSON answer whose headers come as the bytes they are sent as (`wire.headers_of`):
    what Starlette's `init_headers` would make of them, without its encoding of each name
    and value and its scans for the two it adds."""

    def __init__(self, content: Any, headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = 200
        self.background = None
        self.body = body = self.render(content)
        self.raw_headers = [
            *headers,
            (b"content-length", b"%d" % len(body)),
            (b"content-type", b"application/json"),
        ]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # on `satisfice serve`'s own protocol, written at once to the connection (_http.py)
        own = scope.get(ANSWER)
        if own is None or not own.answer(send, self.raw_headers, self.body):
            await super().__call__(scope, receive, send)


# Anthropic's error type for each status the server answers (others: "api_error").
# 503 (the shared state away) is a wait-and-retry, as Anthropic's overloaded_error is.
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    431: "request_too_large",  # a request's head past its bound (`_http.py`)
    503: "overloaded_error",
    504: "timeout_error",
}


class HTTPError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        param: str | None = None,
        **extra: Any,
    ) -> None:
        # extra: fields added to the error object (attempts, budget, remaining_usd)
        # the server's keys scrubbed from what it says, a caller's input quoted back too (a
        # master key sent as a model id had come back whole in the 404)
        message = scrub(message)
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.headers, self.extra, self.param = dict(headers or {}), extra, param

    def body(self, api: str = "openai") -> dict[str, Any]:
        """The error in the shape of the API asked: OpenAI's, or Anthropic's for
        /v1/messages, whose SDKs and agents branch on Anthropic's own error types."""
        if api == "anthropic":
            kind = _ANTHROPIC_ERRORS.get(self.status, "api_error")
            err = {"type": kind, "message": self.message, "code": self.code, **self.extra}
            return {"type": "error", "error": err}
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
                **self.extra,
            }
        }


def _attempts(e: BaseException) -> list[dict[str, Any]]:
    return [
        {
            "model": a.model,
            "deployment": a.deployment,
            "outcome": a.outcome,
            "error_type": a.error_type,
            "error": a.error,
            "status": a.status,
        }
        for a in getattr(e, "attempts", None) or ()
    ]


class ClientGone(SatisficeError):
    """A request's client left before its call was made: nothing to bill."""


def _billed(e: BaseException | None, reserved: float) -> float:
    """What a failed request's calls were billed (they may have reached an upstream), for
    settling its reservation: its attempts' bills by the rule of `total_cost_usd`; the
    whole reservation when that is unknown: an unpriced call, a call cut off after it was
    sent (an upstream may go on writing the answer and bill it), or a request cut off by
    something other than satisfice with a call maybe in flight. A request cancelled with no
    call in flight (its client gone in a backoff) is settled at what its calls were billed:
    router.chat() says it on the cancellation (`billed_usd`)."""
    if isinstance(e, asyncio.CancelledError):
        known = getattr(e, "billed_usd", None)
        return reserved if known is None else known
    if not isinstance(e, SatisficeError):
        return reserved
    out = billed_cost(getattr(e, "attempts", None) or ())
    return reserved if out is None else out[0]


def _error(he: HTTPError, api: str, cause: BaseException | None = None) -> JSONResponse:
    """An error answer, with its request's id in the headers the SDKs read (`request_id`
    of their errors): the record's when the request is on the record, else one of its own."""
    rid = getattr(cause, "request_id", None) or f"req-{uuid.uuid4().hex[:16]}"
    return JSONResponse(he.body(api), he.status, headers={**he.headers, **wire.id_headers(rid)})


def _anthropic_model(m: Mapping[str, Any]) -> dict[str, Any]:
    """A model of GET /v1/models in the shape Anthropic's API lists one."""
    when = datetime.datetime.fromtimestamp(m["created"], datetime.UTC)
    # `lifecycle` is required by the SDK's ModelInfo: a model listed here may be called
    return {"type": "model", "id": m["id"], "display_name": m["id"],
            "created_at": when.isoformat().replace("+00:00", "Z"),
            "lifecycle": "active"}  # fmt: skip


_NEED = re.compile(r"needs (\d+) tokens, context window is (\d+)|context window of (\d+)")


def _too_long(e: NoRouteError) -> str | None:
    """ "prompt is too long: N tokens > M maximum" (Anthropic's words, the largest window M)
    when every model the request could have had was ruled out by its window alone, else
    None: routing's own count refused it as an upstream would (it had said `no_route`,
    which no client takes for a prompt to shorten)."""
    # (a model lacking a capability the request needs could not take it however short)
    could = {m: r for m, r in e.rules.items() if r not in ("exclude", "disabled", "needs")}
    if not could or set(could.values()) != {"context_window"}:
        return None
    best: tuple[int, int | None] | None = None  # (window, tokens)
    for m in could:
        found = _NEED.search(e.filtered.get(m, ""))
        if found is None:
            continue
        window = int(found.group(2) or found.group(3))
        need = int(found.group(1)) if found.group(1) else None
        if best is None or window > best[0]:
            best = (window, need)
    if best is None:
        return "prompt is too long for every model's context window"
    window, need = best
    if need is None:
        return f"prompt is too long: more than {window} tokens > {window} maximum"
    return f"prompt is too long: {need} tokens > {window} maximum"


def http_error(e: SatisficeError) -> HTTPError:
    """satisfice's errors as status codes and OpenAI's error types, attempts listed."""
    att: dict[str, Any] = {"attempts": _attempts(e)} if getattr(e, "attempts", None) else {}
    msg = str(e)
    if isinstance(e, UnknownModelError):
        return HTTPError(404, msg, "invalid_request_error", "model_not_found")
    if isinstance(e, InputError | ConfigError | BadRequestError | ContextLengthError):
        return HTTPError(400, msg, "invalid_request_error", type(e).__name__, None, **att)
    if isinstance(e, NoRouteError):
        if too_long := _too_long(e):  # as OpenAI and Anthropic say it (agents compact on it)
            return HTTPError(400, f"{too_long}; {msg}", "invalid_request_error",
                             "context_length_exceeded", param="messages")  # fmt: skip
        return HTTPError(400, msg, "invalid_request_error", "no_route")
    if isinstance(e, CascadeBudgetError):
        # with its calls (billed, and on the key's budget), as every other error lists them
        return HTTPError(400, msg, "invalid_request_error", "cascade_budget", None, **att)
    if isinstance(e, UpstreamTimeoutError):
        return HTTPError(504, msg, "upstream_timeout", "upstream_timeout", None, **att)
    if isinstance(e, AllAttemptsFailedError):
        return _all_failed(e, msg, att)
    if isinstance(e, AuthError | ProviderError):
        no = _NO_RETRY if isinstance(e, AuthError) else None
        return HTTPError(502, msg, "upstream_error", type(e).__name__, no, **att)
    if isinstance(e, StateUnavailable):
        return HTTPError(
            503,
            f"{msg}; budgets cannot be checked, so requests are refused until it is back",
            "service_unavailable",
            "state_unavailable",
        )
    return HTTPError(500, msg, "server_error", type(e).__name__)


#: what the openai and anthropic SDKs read: a retry would be refused again (429s above all,
#: which they otherwise retry: a spent budget or a request past a key's tpm had been sent 3x)
_NO_RETRY = {"x-should-retry": "false"}

_DOWN = frozenset({"unavailable", "no_api_key"})  # skips no retry soon fixes: disabled, keyless


def _all_failed(e: AllAttemptsFailedError, msg: str, att: dict[str, Any]) -> HTTPError:
    """Every attempt failed: the status their causes share, so that an SDK retries only
    what a retry may fix (a 502 for all made the SDKs retry a prompt no window takes, and
    hid an upstream's Retry-After). Models that could not take the request's shape
    (UnsupportedRequestError) are left out: the others' causes decide, a call's error or
    a skip's kind alike. A prompt too long for every model tried: 400. Every call timed
    out, or the request's deadline passed: 504. Every model rate-limited or unavailable
    with a Retry-After, or cooling down: 429 (any 429) or 503, with the soonest wait as
    Retry-After; every model disabled or keyless: 503 with `x-should-retry: false`. Else
    502."""
    tried = [a for a in e.attempts if a.error_type != "UnsupportedRequestError"]
    down = [a.outcome == "skipped" and a.error_type in _DOWN and not (a.retry_after or 0) > 0
            for a in tried]  # fmt: skip
    # the models that could be called decide (a disabled or keyless one beside a prompt
    # no window took had made it a 502, which the SDKs retry)
    kinds = {a.error_type for a, gone in zip(tried, down, strict=True) if not gone}
    if kinds and kinds <= {"ContextLengthError", "window"}:
        return HTTPError(400, msg, "invalid_request_error", "context_length_exceeded", None, **att)
    if kinds and kinds <= {"UpstreamTimeoutError", "deadline"}:
        return HTTPError(504, msg, "upstream_timeout", "upstream_timeout", None, **att)
    if tried and all(down):
        # every model disabled or keyless, no cooldown to wait out: 503, not to be retried
        # (as a 502 the SDKs had retried it, each retry refused again)
        return HTTPError(503, msg, "service_unavailable", "models_unavailable", _NO_RETRY, **att)
    if tried and all(
        gone
        or (
            (a.retry_after or 0) > 0
            if a.outcome == "skipped"
            else a.status == 429 or (a.retry_after or 0) > 0
        )
        for a, gone in zip(tried, down, strict=True)
    ):
        # a retry may help once the others' waits are over (a 429 with no Retry-After too)
        waits = [a.retry_after for a in tried if a.retry_after and a.retry_after > 0]
        headers = {"retry-after": str(max(1, math.ceil(min(waits))))} if waits else None
        if any(a.status == 429 for a in tried):
            return HTTPError(429, msg, "rate_limit_error", "upstream_rate_limited", headers, **att)
        return HTTPError(503, msg, "service_unavailable", "models_cooling_down", headers, **att)
    if tried and all(
        gone or a.error_type == "AuthError" or a.status in _REFUSED
        for a, gone in zip(tried, down, strict=True)
    ):
        # every upstream refused the key or does not know the model: a retry is refused
        # again (the SDKs had sent each such request three times)
        return HTTPError(502, msg, "upstream_error", type(e).__name__, _NO_RETRY, **att)
    return HTTPError(502, msg, "upstream_error", type(e).__name__, None, **att)


_REFUSED = frozenset({401, 403, 404})  # an upstream's answers no retry changes


class SharedHealth(Health):
    """Health whose cooldowns, disables and enables other replicas learn about through the
    shared state. A disable or enable made while the store is away is kept and written
    once it is back (it had been dropped: the other replicas never learned of it, and a
    stale shared entry undid it here); an enable made on any replica also puts back a
    deployment this replica had disabled or cooled itself (it had stayed disabled here for
    good)."""

    def __init__(self, state: Any) -> None:
        super().__init__()
        self._state = state
        self._pushed: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._remote_disabled: set[str] = set()  # disabled here because another replica did
        # disables (reason) and enables (None) not yet shared, with when they were made
        self._want: dict[str, tuple[str | None, float]] = {}
        # when this replica last began holding a key back: its own disable or cooldown, or
        # a cooldown another replica shared; an enable stamped later puts it back
        self._held_at: dict[str, float] = {}
        self._enabled_seen: dict[str, float] = {}  # enable stamps acted on
        self._shared_until: dict[str, float] = {}  # other replicas' cooldowns seen, by end
        # this replica's own cooldowns not yet shared: (until, why, made); those whose
        # write failed (the store away) are tried again at each sync
        self._cool_want: dict[str, tuple[float, str, float]] = {}
        self._cool_failed: set[str] = set()

    def record_failure(self, key: str, **kw: Any) -> None:
        super().record_failure(key, **kw)
        left = self.retry_in(key)
        if left is not None:
            now = time.time()
            until = now + left
            if self._pushed.get(key, 0.0) < until - 0.01:
                self._pushed[key] = until
                self._held_at[key] = now
                self._cool_want[key] = (until, self._s[key].reason, now)
                self._push(self._share_cooldown(key))

    def disable(self, key: str, reason: str) -> None:
        super().disable(key, reason)
        self._remote_disabled.discard(key)
        self._held_at[key] = now = time.time()
        self._want[key] = (reason, now)
        self._push(self._share(key))

    def enable(self, key: str) -> None:
        super().enable(key)
        self._remote_disabled.discard(key)
        self._pushed.pop(key, None)
        self._cool_want.pop(key, None)
        self._cool_failed.discard(key)
        self._want[key] = (None, time.time())
        self._push(self._share(key))

    async def _share(self, key: str) -> None:
        """Write this replica's last disable or enable of `key`; kept to try again in `sync`
        while the store is away."""
        want = self._want.get(key)
        if want is None:
            return
        why, at = want  # an enable is stamped when it was made, not when it is written
        if await self._state.set_disabled(key, why, at) and self._want.get(key) == want:
            del self._want[key]
            if why is None:
                self._enabled_seen[key] = at

    async def _share_cooldown(self, key: str) -> None:
        """Write this replica's last cooldown of `key`; kept to try again in `sync` while
        the store is away and the cooldown lasts (it had been dropped: begun while Redis
        was away, it never reached the other replicas, which called the deployment into
        a second 429)."""
        want = self._cool_want.get(key)
        if want is None:
            return
        until, why, made = want
        if until > time.time() and not await self._state.push_cooldown(key, until, why, made):
            self._cool_failed.add(key)
        elif self._cool_want.get(key) == want:  # (not one begun since)
            del self._cool_want[key]

    def _reshare(self, enabled: Mapping[str, float]) -> None:
        """This replica's own disables and cooldowns, to be shared again (`sync`): the
        store lost them (`lost_state`), and another replica had read a disable missing
        from it as an enable. Not one an enable stamped since (`enabled`) ended: that
        enable stands (written over, it had been lost on every replica)."""
        now = time.time()
        for key, st in self._s.items():
            if key in self._want or enabled.get(key, 0.0) > self._held_at.get(key, now):
                continue
            if st.disabled is not None and key not in self._remote_disabled:
                self._want[key] = (st.disabled, self._held_at.get(key, now))
        for key, until in self._pushed.items():
            if enabled.get(key, 0.0) > self._held_at.get(key, now):
                continue
            if until > now and key not in self._cool_want:
                why = self._s[key].reason if key in self._s else "cooling"
                self._cool_want[key] = (until, why, self._held_at.get(key, now))
                self._cool_failed.add(key)

    def _push(self, coro: Any) -> None:
        try:
            t = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop (a sync caller): this replica's view still holds
            coro.close()
            return
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def sync(self) -> None:
        if await self._state.lost_state():
            self._reshare(await self._state.enabled_now())
        for key in list(self._want):  # what the store missed, before reading what it holds
            await self._share(key)
        for key in list(self._cool_failed):
            self._cool_failed.discard(key)
            await self._share_cooldown(key)
        enabled = await self._state.enabled_now()  # before the cooldowns: see set_disabled
        for key, (until, why, made, mine) in (await self._state.cooldowns_now()).items():
            if mine or self._pushed.get(key, 0.0) >= until - 0.01 or key in self._want:
                continue  # ours, or one no longer than ours
            if made and made <= enabled.get(key, 0.0):
                continue  # begun before an enable (its write landing after it): ended
            self.cool(key, until - time.time(), f"cooled by another replica: {why}")
            if self._shared_until.get(key) != until:
                # held back from when that replica began to (an enable stamped after that
                # ends it), stamped once: stamped at each sync, a sync between an enable
                # and its writes (a slow store) had held the deployment back past it. An
                # entry that does not say when it began (an older replica's) from now.
                self._shared_until[key] = until
                self._held_at[key] = max(self._held_at.get(key, 0.0), made or time.time())
        shared = await self._state.disabled_now()
        if shared is None:
            return  # the store is away: keep what we know
        for key, why in shared.items():  # disabled on another replica (an admin, a bad key)
            if key in self._want:
                continue  # this replica's own later word is on its way
            if key not in self._remote_disabled and self._get(key).disabled is None:
                Health.disable(self, key, f"disabled on another replica: {why}")
                self._remote_disabled.add(key)
        for key in list(self._remote_disabled - set(shared)):  # enabled there again
            Health.enable(self, key)
            self._remote_disabled.discard(key)
        for key, at in enabled.items():
            if at <= self._enabled_seen.get(key, 0.0) or key in self._want or key in shared:
                continue
            self._enabled_seen[key] = at
            # enabled after this replica began holding it back (a replica that holds
            # nothing back, just started, has nothing to put back)
            if key in self._held_at and at > self._held_at[key]:
                Health.enable(self, key)
                self._pushed.pop(key, None)
                del self._held_at[key]


def _called(d: Decision, ladder: Cascade | None) -> list[str]:
    """The models a request routed as `d` may call: every model of its cascade's `ladder`
    once, else the primary or a fallback."""
    if ladder is not None:
        return [m for step in ladder.steps for m in step.models]
    return [d.model, *d.fallbacks]


def _server_tools_why(
    reg: Registry, model: str, server_tools: list[dict[str, Any]] | None
) -> str | None:
    """Why `model` cannot take a request with Anthropic's server tools, if it cannot (the
    router's `_on_anthropic` rule), for a session pin it switched from."""
    if server_tools is None or model not in reg:
        return None
    if not runs_server_tools(reg[model]):
        return (
            "it is not on Anthropic's API, which this request needs (Anthropic's server "
            "tools, or an assistant turn to continue)"
        )
    if any(searches(t) for t in server_tools) and not prices_searches(reg[model]):
        return (
            "this request may search the web, and its price has no per_search (a model "
            "whose price has one was chosen)"
        )
    return None


def _thinking_on_top(d: Decision, cascade: bool) -> int:
    """The most thinking a call of the request routed as `d` may write beyond its max_tokens
    (Anthropic's budget, added by the wire when the limit is the answer's: OpenAI's legacy
    `max_tokens`, or the limit the server sets), over the models it may call (a cascade's
    ladder with `cascade`): a tpm count of the prompt and max_tokens alone had let a call
    write 16,384 tokens past it."""
    if d.constraints.output_includes_thinking:
        return 0
    reg = d.registry
    models = _called(d, tuned_ladder(d)[0] if cascade else None)
    return max(
        (thinking_added(reg[m], dep.api) for m in models for dep in reg[m].deployments),
        default=0,
    )


class Service:
    """The router, the shared state and everything a request needs, built from a config."""

    def __init__(
        self, config: ServerConfig, router: Router | None = None, *, freeze_heap: bool = False
    ) -> None:
        config.check_keys()
        self.config = config
        # before anything else is opened: a file another replica holds, or not this
        # server's, is refused at once
        self.unsettled = Unsettled(config.unsettled_file)
        self.freeze_heap = freeze_heap
        registry = (
            Registry.load(config.registry_path) if config.registry_path else Registry.default()
        )
        policy = Policy.load(config.policy_path) if config.policy_path else Policy()
        self.router = router or Router(registry, policy)
        check_aliases(config.aliases, self.router.registry)
        self.register_secrets(self.router.registry)
        self.state: MemoryState | RedisState = (
            RedisState(config.redis_url)
            if config.state_backend == "redis" and config.redis_url
            else MemoryState()
        )
        self.health = SharedHealth(self.state) if self.state.backend == "redis" else Health()
        # the last scheduled probe run's time, kept with the latencies (see _probe_loop)
        self.probed_at: float | None = None
        if config.health_file:  # latencies measured before a restart
            self.health.restore(Health.load(config.health_file))
            self.probed_at = Health.probed_at(config.health_file)
        self.router.configure(health=self.health)
        self.metrics = Metrics()
        self.router.attach(ledger=config.ledger, metrics=self.metrics)
        self.ready = False  # /ready: started and the tokenizers built (see _warm)
        self.started = False
        self.in_flight = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self.probe_runs = 0
        self._settling: set[asyncio.Task[Any]] = set()
        self._sync_warned_at = -math.inf
        self._store_away = False  # a step of the last sync turn found the store away
        self.refresher: Any = None
        self._deadlines: Deadlines | None = None

    def register_secrets(self, registry: Registry) -> None:
        """Every key this server holds, scrubbed (as a provider's key is from what its
        upstream sends) from anything a client's request makes the server say, log or
        record: the master key, the virtual keys (by their prefix), and the upstream keys
        and URL credentials of `registry`'s deployments now, not at their first call. A key
        pasted into a field (`allow`, `metadata`) had been quoted into the log and the
        ledger by the error it made, an upstream key until its provider first read it."""
        from .._redact import register, register_prefix
        from ..providers import env_key
        from ..registry import url_secrets

        register_prefix(KEY_PREFIX)
        held = [self.config.master_key()]
        for m in registry:
            for d in m.deployments:  # (as its provider will send them)
                held += [env_key(d), *url_secrets(d.base_url)]
        for secret in held:
            if secret:
                register(secret)

    def deadlines(self) -> Deadlines:
        """The request bodies' time bounds, one timer on the running loop."""
        loop = asyncio.get_running_loop()
        d = self._deadlines
        if d is None or d.loop is not loop:
            d = self._deadlines = Deadlines(loop)
        return d

    @property
    def master_key(self) -> str | None:
        return self.config.master_key()

    async def startup(self) -> None:
        from ._http import serving_again

        serving_again()
        if self.config.refresh:
            from ..refresh import RegistryRefresher

            r = dict(self.config.refresh)
            self.refresher = RegistryRefresher(
                self.router, r.pop("source"), r.pop("location", None), **r
            )
            self.refresher.start()
        self._tasks.append(asyncio.get_running_loop().create_task(self._sync_loop()))
        if self.config.probe_interval_s:
            self._tasks.append(asyncio.get_running_loop().create_task(self._probe_loop()))
        self._tasks.append(asyncio.get_running_loop().create_task(self._warm()))
        self.started = True

    async def _warm(self) -> None:
        """Ready once the exact counters' tokenizers are built (about a second, on a thread
        the router started): until then a request near a limit would wait for them, so a
        load balancer should not send traffic yet. Requests are served meanwhile."""
        await asyncio.to_thread(_core.wait_for_tokenizers)
        if self.freeze_heap and self.started:
            # What startup built (modules, the registry, the policy: tens of thousands of
            # objects) lives as long as the process; frozen, the cyclic collector stops
            # walking it. Each full collection had walked all of it, a pause for every
            # request waiting on the loop (benches/instructions.py app counts the rest).
            gc.collect()
            gc.freeze()
        self.ready = self.started

    async def _probe_loop(self) -> None:
        """Probes every `[probe].interval_s`, each run within `[probe].budget_usd` (code
        probes are never run by the server: they execute model-written code). With a
        `[probe].health_file`, the schedule holds across restarts: the first run comes an
        interval after the last one kept there (a replica restarted in a loop had paid a
        whole run at every start)."""
        from ..probe import run_probes

        every = self.config.probe_interval_s
        assert every is not None
        wait = 0.0
        if self.probed_at is not None:  # (read from the health file at start)
            ago = time.time() - self.probed_at
            wait = min(every - ago, every)
            if wait > 0:
                _log.info(
                    "probes: the last run was %.0f s ago; the next in %.0f s", ago, wait,
                    extra={"event": "probe_scheduled"},
                )  # fmt: skip
        while True:
            if wait > 0:
                await asyncio.sleep(wait)
            wait = every
            try:
                rep = await run_probes(self.router, budget_usd=self.config.probe_budget_usd)
                self.probe_runs += 1
                self.probed_at = time.time()
                _log.info("probes: %s", rep.to_dict(), extra={"event": "probe_run"})
                self._save_health()
            except Exception as e:  # a failed run is logged; the next one comes
                _log.warning("probe run failed: %s: %s", type(e).__name__, e)

    def _save_health(self) -> None:
        """The measured latencies and the last run's time to `[probe].health_file`; a write
        that fails is said, naming the setting (the shutdown's had been dropped unsaid, a
        run's said as the probe run failing), and the next run or the shutdown tries
        again."""
        path = self.config.health_file
        if not path:
            return
        try:
            self.health.save(path, self.probed_at)
        except OSError as e:
            _log.error(
                "[probe].health_file %s not written (%s: %s): the measured latencies and the "
                "last probe run's time are not kept for the next start",
                path, type(e).__name__, e.strerror, extra={"event": "health_not_kept"},
            )  # fmt: skip

    async def _sync_loop(self) -> None:
        """Every 0.2 s (while the store is away, twice as long apart each turn, up to 3.2 s):
        the store's clock, cooldowns from other replicas, and settlements the store missed;
        every `HOLD_RENEW_S`, this replica's budget holds (see state.HOLD_S)."""
        renewed = time.monotonic()
        pause = 0.2
        while True:
            self._store_away = False
            # Each step's failure is logged and the next turn tries again: one reply the
            # code cannot read (a TIME answered as one integer) had ended this loop for
            # good, and with it the holds' renewals and the queued settlements' spend.
            with self._turn("reading the store's clock"):
                await self.state.sync_clock()  # before anything shared is read
            with self._turn("sharing session pins"):
                await self.state.share_pins()  # set while the store was away
            if time.monotonic() - renewed >= HOLD_RENEW_S:
                with self._turn("renewing budget holds"):
                    await self.state.renew_holds()
                    renewed = time.monotonic()
            if isinstance(self.health, SharedHealth):
                with self._turn("sharing health with other replicas"):
                    await self.health.sync()  # (replicas drift apart meanwhile)
            with self._turn("settling what the store missed"):
                await self._settle_queued()
            # a store away is asked again less and less often, up to every 3.2 s: an idle
            # replica had tried it five times a second through an outage (9% of a CPU)
            pause = min(pause * 2, 3.2) if self._store_away else 0.2
            await asyncio.sleep(pause)

    @contextlib.contextmanager
    def _turn(self, what: str) -> Iterator[None]:
        """A step of `_sync_loop`: StateUnavailable is the store's to log; anything else is
        logged here (the type alone, at most every 10 s), not raised out of the loop."""
        try:
            yield
        except StateUnavailable:
            self._store_away = True
        except Exception as e:
            now = time.monotonic()
            if now - self._sync_warned_at > 10:
                self._sync_warned_at = now
                _log.warning("%s failed: %s", what, type(e).__name__,
                             extra={"event": "sync_failed"})  # fmt: skip

    async def _settle_queued(self, deadline: float | None = None) -> None:
        """Settle what the store missed, in order, while it answers; with a `deadline`
        (shutdown), keep trying until then, and say what is left: kept for the next start
        ([state].unsettled_file), else lost (on Redis, admission releases those holds
        state.HOLD_S after their last renewal; their spend is not counted)."""
        q = self.unsettled
        while q:
            budgets, reserved, actual = q[0]
            try:
                await self.state.settle(budgets, reserved, actual)
            except StateUnavailable:
                if deadline is None or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
                continue
            q.popleft()
        if deadline is None or not q:
            return
        if q.path is not None:  # (releases of holds, nothing billed, lapse within HOLD_S)
            _log.warning(
                "shutting down with %d billed settlement(s) the budget store never took "
                "($%.6f in all, budgets %s): kept in %s, settled by the next start with it",
                sum(1 for _, _, a in q if a > 0), q.usd(), q.scopes(), q.path,
                extra={"event": "settlements_kept", "usd": q.usd()},
            )  # fmt: skip
            return
        _log.error(
            "shutting down with %d settlement(s) the budget store never took: their "
            "holds are released within state.HOLD_S and their spend, $%.6f in all, is "
            "not counted in budgets %s (set [state].unsettled_file to keep them for the "
            "next start)",
            len(q), q.usd(), q.scopes(),
            extra={"event": "settlements_lost", "usd": q.usd()},
        )  # fmt: skip

    async def shutdown(self) -> None:
        self.ready = self.started = False
        if self.refresher is not None:
            await self.refresher.stop()
        for t in self._tasks:
            t.cancel()
        self._save_health()
        await self.settled()
        # settlements the store missed, tried until what uvicorn gives the whole shutdown
        # runs out, less a second to close (a fixed 10 s on top had taken a 2 s grace's
        # exit to 11-13 s past SIGTERM, where an orchestrator sized on it kills the process)
        from ._http import shutdown_timeout, stopping_since

        began = stopping_since() or time.monotonic()
        end = began + shutdown_timeout(self.config.shutdown_grace_s) - 1.0
        # uvicorn gave requests and streams their shutdown_grace_s already: no second grace
        await self.router.aclose(grace_s=1.0)
        # the settlements of the requests it cut: landed, or queued (and kept in the file)
        # while the store and the file's lock are still this replica's
        await self.settled()
        # then the queue, theirs too (tried before the close, one queued by a request it
        # cut had been tried once and dropped, unsaid, with the grace's seconds left)
        await self._settle_queued(deadline=min(time.monotonic() + 10.0, end))
        if self.router.ledger is not None:
            self.router.ledger.close()
        await self.state.close()
        self.unsettled.close()

    # keys, budgets, limits -------------------------------------------------------------------
    async def authenticate(self, request: Request) -> VirtualKey | None:
        return await self.key_of(request.headers)

    async def key_of(self, headers: Mapping[str, str], cached: bool = False) -> VirtualKey | None:
        """The caller's key from its headers (`authenticate`, on a header mapping).
        `cached`: the caller passes the key to `state.admit`, which checks it against the
        stored record; a key read in the last 30 s then serves (no round trip to Redis) if
        its budget or rate limit means admission will run. A key with neither is read now."""
        auth = headers.get("authorization", "")
        secret = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        secret = secret or headers.get("x-api-key", "")
        key = await self.state.key_by_secret(secret, cached) if secret else None
        if cached and key is not None and not _admitted(key):
            key = await self.state.key_by_secret(secret)
        if key is not None and key.revoked:
            raise HTTPError(401, "this key was revoked", "invalid_request_error", "key_revoked")
        if key is None and secret.startswith(KEY_PREFIX):
            # a satisfice key nobody holds (mistyped, deleted, another deployment's) is
            # refused even where keys are optional: served anonymously, it would pass the
            # budget and model list its holder means to be under
            raise HTTPError(
                401,
                "this satisfice key is not known: check it, or ask your admin for one",
                "invalid_request_error",
                "invalid_api_key",
            )
        if key is None and self.config.require_keys:
            raise HTTPError(
                401,
                "a valid satisfice key is required (Authorization: Bearer "
                "sk-sat-...); ask your admin for one",
                "invalid_request_error",
                "invalid_api_key",
            )
        return key

    async def budgets_of(self, key: VirtualKey | None) -> list[Budget]:
        if key is None:
            return []
        out = []
        if key.budget_usd is not None:
            out.append(Budget(f"key:{key.id}", key.budget_usd, key.period))
        if key.team:
            team = await self.state.team(key.team)
            if team is not None:
                out.append(team)
        return out

    def resolve(self, routed: wire.Routed, key: VirtualKey | None) -> dict[str, Any]:
        """The request's options with its `model` as routing constraints: auto, an alias's
        constraints (with the caller's own: the stricter of two limits, a conflict a 400),
        or one model. A request that says how the model thinks (`routed.efforts`) takes the
        named models' effort rows too; under a key's model list, only the rows it lists
        (a model's effort row is a model of its own there)."""
        name = routed.model
        reg = self.router.registry
        listed = None if key is None else key.models
        if listed is not None:
            if name not in listed and not (  # or one of its effort rows, asked by effort
                routed.efforts and name in reg and any(v in listed for v in reg[name].effort_ids())
            ):
                raise HTTPError(403, f"this key may not use {quoted(name)}; it may use {listed}",
                                "invalid_request_error", "model_not_allowed")  # fmt: skip
            if "allow" in routed.options or "deny" in routed.options:
                raise HTTPError(403, "this key's model list decides which models serve it: "
                                "remove allow/deny", "invalid_request_error",
                                "model_not_allowed")  # fmt: skip
        alias = name in self.config.aliases
        if name == "auto":
            own: dict[str, Any] = {}
        elif alias:
            own = dict(self.config.aliases[name])
        else:
            reg[name]  # UnknownModelError (404) names the known ids
            own = {"allow": (name,)}
        opts = _with_model(dict(routed.options), own, name)
        allow = _ids(opts.get("allow"))
        thinks = routed.efforts or opts.get("reasoning") is not None or (
            opts.get("max_reasoning_tokens") is not None
        )  # fmt: skip
        if thinks and isinstance(allow, tuple) and allow:
            rows = [v for m in allow if m in reg for v in reg[m].effort_ids()]
            every = tuple(dict.fromkeys((*allow, *rows)))
            opts["allow"] = every
            if listed is not None and not alias:  # the key's list, row by row
                opts["allow"] = tuple(m for m in every if m in listed)
                if not self._thinks_as_asked(opts["allow"], opts) and self._thinks_as_asked(
                    every, opts
                ):  # the key rules out the rows that think as asked: said as the key's
                    raise HTTPError(403, f"this key may not use {quoted(name)} at the effort "
                                    f"asked; it may use {listed}", "invalid_request_error",
                                    "model_not_allowed")  # fmt: skip
        return opts

    async def pin(
        self, routed: wire.Routed, key: VirtualKey | None, opts: dict[str, Any]
    ) -> str | None:
        """The request's session as pins are kept, per key (one caller cannot steer
        another's), with its pinned model as `opts["prefer"]`: tried first, the routed order
        after it (a pin that was the only model the call might use failed the session
        whenever its model did, or was disabled; a model that cannot be called now is routed
        around). None without a session."""
        if not routed.session:
            return None
        session = f"{key.id if key is not None else 'anon'}:{routed.session}"
        pinned = await self.state.pin(session)
        if pinned and pinned in self.router.registry:
            # under an alias, a named model's effort rows or a key's model list too: the
            # pin is preferred only where it passed every filter (Decision.preferring)
            opts["prefer"] = pinned
        return session

    def _thinks_as_asked(self, ids: tuple[str, ...], opts: Mapping[str, Any]) -> bool:
        """Whether any of `ids` passes the reasoning constraints in `opts` (a wrong value:
        True, for Constraints to name)."""
        reg = self.router.registry
        want, most = opts.get("reasoning"), opts.get("max_reasoning_tokens")
        try:
            return any(thinks_as_asked(reg[m], want, most, reg) for m in ids if m in reg)
        except TypeError:
            return True

    def worst_case(
        self,
        d: Decision,
        max_tokens: int | None,
        cascade: bool = False,
        write: str | None = None,
        server_tools: list[dict[str, Any]] | None = None,
    ) -> tuple[float, int]:
        """What the request routed as `d` may cost at most, and the output cap that bound
        assumes: over the models it may go to (primary and fallbacks) and each of their
        deployments, the prompt's upper bound and `max_tokens` (else 4x the expected output,
        which the caller then sends as max_tokens) at those rates, fees and reasoning
        included; with `cascade` (="auto"), the sum over the tuned ladder's models. Plus the
        prompt of every deployment that may be tried: a call that times out after reaching
        its upstream may be billed for the prompt, and is settled at that estimate before
        the next is tried, and so may one whose 2xx answer came cut or malformed; neither is
        retried on the same deployment under this bound (`Decision.held`). Each call is
        bounded as a cost cap's hold is (`executor.worst_bill`: a prompt-cache `write`,
        Anthropic's thinking budget, the dearer of text and reasoning rates; the web
        searches `server_tools` may run, `executor.search_bound`). Unpriced, or with file or
        audio parts (whose tokens nothing counts), or searches without max_uses or a price:
        infinite (refused under a budget)."""
        out = int(max_tokens or 4 * max(d.tokens_out, 256))
        if d.uncounted_parts:
            return math.inf, out
        reg = d.registry  # the snapshot it was routed on: a reload meanwhile changes nothing
        ladder = tuned_ladder(d)[0] if cascade else None
        called = _called(d, ladder)
        # counted (`count_prompt`), and then at their upper bound: a prompt's estimate may
        # be several times under what it is billed
        # and what the server tools' results may add to it (`executor.server_tokens`)
        fetched = server_tokens(server_tools)
        if math.isinf(fetched):
            return math.inf, out
        tokens_in = {m: d.max_tokens_in(m) + fetched for m in set(called)}
        # Every deployment's prompt (billed whether it answers or times out), plus what an
        # answer adds to its prompt: the most of those for one answer, their sum along a
        # ladder (every step may answer).
        answers, prompts = [], 0.0
        # the caller's limit holds the thinking (the executor's `thinking_within`)
        within = max_tokens is not None and d.constraints.output_includes_thinking
        for mid in called:
            m = reg[mid]
            most = 0.0
            deps = [(dep.price or m.price, dep.api) for dep in m.deployments]
            for price, api in deps or [(m.price, "openai")]:
                if price is None:
                    return math.inf, out
                prompt = worst_bill(price, m, api, tokens_in[mid], 0, write)
                answer = min(out, m.max_output)
                full = worst_bill(price, m, api, tokens_in[mid], answer, write, within)
                if api != "anthropic":  # its reasoning is not within max_tokens everywhere
                    full += reasoning_usd(m, price)
                full += search_bound(price, server_tools)
                most = max(most, full - prompt)
                # a call that fails is billed its prompt and, on a reasoning row, the
                # reasoning it is expected to have spent (`executor._prompt_usage`): a
                # timed-out first deployment had left its second no room under the hold
                prompts += worst_bill(price, m, api, tokens_in[mid], m.reasoning_tokens, write)
            answers.append(most)
        return prompts + (sum(answers) if ladder is not None else max(answers)), out

    async def settle(self, budgets: list[Budget], reserved: float, actual: float) -> None:
        """Settle a reservation; if the store is away, keep it and settle when it is back
        (the answer was billed: the request does not fail for it). Above the hold (an
        upstream that reports more than the count the hold was made on: it bills what it
        reports), the difference is counted and logged: requests in flight at once each
        may end past their holds, and a budget past its limit by their sum."""
        if actual > reserved + 1e-12:
            self.metrics.over_hold.inc(actual - reserved)
            _log.warning(
                "a request was billed $%.6f above its hold of $%.6f: its upstream reported "
                "more tokens than satisfice counted; budgets %s may end past their limits",
                actual - reserved, reserved, ", ".join(b.scope for b in budgets),
                extra={"event": "settled_over_hold"},
            )  # fmt: skip
        try:
            await self.state.settle(budgets, reserved, actual)
        except StateUnavailable:
            self.unsettled.append((budgets, reserved, actual))
            _log.warning(
                "budget store unreachable: settlement queued (%d waiting)", len(self.unsettled)
            )

    def settle_soon(self, budgets: list[Budget], reserved: float, actual: float) -> None:
        """Settle from a task of its own: after an answer (which then does not wait for the
        store), or for a stream whose client left (its generator is being cancelled, and an
        await there would be cancelled with it). `settled()` waits for these."""
        t = asyncio.get_running_loop().create_task(self.settle(budgets, reserved, actual))
        self._settling.add(t)
        t.add_done_callback(self._settle_done)

    def _settle_done(self, t: asyncio.Task[Any]) -> None:
        self._settling.discard(t)
        e = None if t.cancelled() else t.exception()
        if e is not None:  # the type alone, as for a request's error (a message may quote)
            _log.error("settlement failed: %s", type(e).__name__, extra={"event": "internal"})

    async def settled(self) -> None:
        """Once this replica's settlements in flight have landed (or been queued): what
        /admin/spend reads after an answer includes it. A wait that is cancelled leaves
        them running (gather() would cancel them with it, and their spend with them)."""
        if self._settling:
            await asyncio.wait(set(self._settling))


def _admitted(key: VirtualKey) -> bool:
    """Whether every request with `key` goes through `state.admit` (a budget of its own,
    or a rate limit): a team's budget alone may not exist."""
    return key.budget_usd is not None or key.rpm is not None or key.tpm is not None


_CONSTRAINT_KEYS = frozenset(Constraints.__match_args__)  # what routing takes per request


def _overlap(a: tuple[str, ...], b: frozenset[str]) -> tuple[str, ...]:
    return tuple(m for m in a if m in b)


def _stricter_reasoning(a: str, b: str) -> str | None:
    """Two `reasoning` values as one: the same, or "on" (any effort that thinks) and one
    effort that thinks (that effort); None where they disagree."""
    if a == b:
        return a
    if a == "on" and b != "none":
        return b
    if b == "on" and a != "none":
        return a
    return None


#: How a model name's constraints (an alias's, a model's allow) and the caller's own combine
#: when both set one: the stricter; the other constraints must agree.
_STRICTER: dict[str, Callable[[Any, Any], Any]] = {
    "max_cost_usd": min, "latency_slo_ms": min, "max_output_tokens": min,
    "max_reasoning_tokens": min, "timeout": min, "quality_floor": max,
    "strict_floor": lambda a, b: a is True or b is True,  # strict: the floor must hold
    "needs": lambda a, b: tuple(dict.fromkeys((*a, *b))),
    "deny": lambda a, b: tuple(dict.fromkeys((*a, *b))),
    "allow": lambda a, b: _overlap(a, frozenset(b)),
    "reasoning": _stricter_reasoning,
}  # fmt: skip


_LISTS = ("allow", "needs", "deny")


def _ids(v: Any) -> Any:
    """A list constraint as a tuple: one id (a str) is one id, not its letters, as
    `Constraints` reads it; anything else as given (Constraints names a wrong type)."""
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list | tuple):
        return tuple(v)
    return v


def _with_model(opts: dict[str, Any], own: Mapping[str, Any], name: str) -> dict[str, Any]:
    """`opts` (the request's) with the constraints its model name stands for. An alias had
    overwritten what the caller asked (an effort, a thinking budget, a cost cap), silently."""
    for k, v in own.items():
        mine = opts.get(k)
        if mine is None:
            opts[k] = v
            continue
        both = _STRICTER.get(k)
        if both is not None:
            a, b = (_ids(v), _ids(mine)) if k in _LISTS else (v, mine)
            try:
                opts[k] = both(a, b)
            except TypeError:  # a value of the wrong type: Constraints says which
                opts[k] = mine
                continue
            if k == "allow" and not opts[k]:
                raise HTTPError(400, f"model {quoted(name)} allows {quoted_names(a)} and the "
                                f"request's 'allow' {quoted_names(b)}: no model is in both",
                                "invalid_request_error", "no_route")  # fmt: skip
            if opts[k] is not None:
                continue
        elif mine == v:
            continue
        raise HTTPError(400, f"model {quoted(name)} sets {k}={v!r:.60} and the request {k}="
                        f"{mine!r:.60}; send only one", "invalid_request_error",
                        "conflicting_constraints")  # fmt: skip
    return opts


# A body that took longer to arrive than this has its caller's key read again once it is in.
_BODY_WAIT_S = 0.01


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """A request's headers as a dict, read once: names lower-cased, the first of a repeated
    name kept (as Starlette's `Headers.get` answers), but for `anthropic-beta`, a list
    whose every header's values are joined (the second had been dropped). Starlette's
    `Headers` scans the raw list and lower-cases each name on every lookup, and a request
    made nine."""
    out: dict[str, str] = {}
    for k, v in scope["headers"]:
        name = k.decode("latin-1").lower()
        if name not in out:
            out[name] = v.decode("latin-1")
        elif name == "anthropic-beta":
            out[name] += "," + v.decode("latin-1")
    return out


async def _body(
    receive: Callable[[], Awaitable[Any]],
    headers: Mapping[str, str],
    limit: int,
    deadlines: Deadlines,
    timeout: float,
) -> bytes:
    """The request body, read from ASGI `receive` as Starlette's `Request.stream()` reads it
    (a disconnect raises ClientDisconnect); over `limit` bytes: 413; not in full within
    `timeout` seconds: 408, the connection closed (uvicorn has no such limit: a client
    sending its body a byte at a time, or not at all, held a request open for good)."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(  # unread: the connection cannot carry another request
            413, f"request body over {limit} bytes", "invalid_request_error", "body_too_large",
            {"connection": "close"},
        )  # fmt: skip
    chunks: list[bytes] = []
    size = 0
    due = deadlines.loop.time() + timeout
    while True:
        try:
            m = await deadlines.wait(receive(), due - deadlines.loop.time())
        except TimeoutError:
            raise HTTPError(
                408, f"the request body was not received within {timeout:g} s",
                "invalid_request_error", "request_timeout", {"connection": "close"},
            ) from None  # fmt: skip
        if m["type"] == "http.request":
            chunk = m.get("body", b"")
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise HTTPError(
                        413, f"request body over {limit} bytes", "invalid_request_error",
                        "body_too_large", {"connection": "close"},
                    )  # fmt: skip
            if not m.get("more_body", False):
                break
        elif m["type"] == "http.disconnect":
            raise ClientDisconnect()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _json(raw: bytes) -> Any:
    try:
        return loads(raw)
    except (ValueError, RecursionError) as e:
        why = f" ({e})" if isinstance(e, NotUTF8) else ""  # UTF-16 or UTF-32: said which
        raise HTTPError(
            400,
            f"the request body is not valid JSON{why}",
            "invalid_request_error",
            "invalid_json",
        ) from None


def create_app(
    config: ServerConfig | None = None, *, router: Router | None = None, freeze_heap: bool = False
) -> Starlette:
    """The ASGI app. `freeze_heap`: once ready, collect and `gc.freeze()` what startup
    built, for a process of the server's own (`satisfice serve`); an app mounted in yours
    leaves your process's collector alone."""
    svc = Service(config or ServerConfig(), router, freeze_heap=freeze_heap)

    async def handle(
        scope: MutableMapping[str, Any], receive: Any, api: str, again: bytes | None = None
    ) -> Response:
        """One API request. `again`: its body, when admission found the caller's key
        changed since it was read (KeyChanged) and the request is taken again from the key
        read anew (once: a second change answers 503)."""
        svc.in_flight += 1
        reserved: tuple[list[Budget], float] | None = None
        streaming = handed = False
        failed: BaseException | None = None
        calling = False  # router.chat() was called: before, a cancel has nothing to bill
        # The request's task waits on its connection from the start (`_http.py`): a client
        # that leaves cancels it wherever it is (the body, admission, its call), and so does
        # the server's cut at shutdown, which had reached only the call and its streams
        # (uvicorn's own cancel then answered the others a bare 500)
        conn: Connection | None = scope.get(CONNECTION)
        task = asyncio.current_task(svc.deadlines().loop) if conn is not None else None
        if task is not None:
            conn.waiting.add(task)  # type: ignore[union-attr]
        try:
            headers = _headers(scope)
            # The key before the body: a caller without one is refused unread. A key read in
            # the last 30 s serves when admission will check it against the stored record
            # (one round trip to Redis fewer): see `key_of`.
            cached = again is None
            try:
                key = await svc.key_of(headers, cached=cached)
            except (HTTPError, SatisficeError) as e:
                # its body is left unread, so the connection cannot carry another request
                # (one trickling that body in would hold it open for good)
                he = e if isinstance(e, HTTPError) else http_error(e)
                he.headers["connection"] = "close"
                raise he from None
            if again is None:
                cfg, deadlines = svc.config, svc.deadlines()
                started = deadlines.loop.time()
                raw = await _body(
                    receive, headers, cfg.max_body_bytes, deadlines, cfg.read_timeout_s
                )
                if deadlines.loop.time() - started > _BODY_WAIT_S:
                    # the key as it stands once the body is in: its sender chose how long
                    # that took, and a revoke or a new model list meanwhile must hold
                    key = await svc.key_of(headers, cached=cached)
            else:
                raw = again
            body = _json(raw)
            # a refusal on the key's own terms before admission (its model list, tpm, an
            # unbounded cost) may be from a read up to 30 s old: taken again, read anew
            recheck = again is None and key is not None and _admitted(key)
            parse = wire.openai_request if api == "openai" else wire.anthropic_request
            routed = parse(body, headers)
            try:
                opts = svc.resolve(routed, key)
            except HTTPError:
                if recheck:
                    raise KeyChanged() from None
                raise
            meta: dict[str, Any] = {"api": api}
            if routed.metadata:  # the caller's own, apart: never the server's key or team
                # (scrubbed of the server's keys: a key pasted there was recorded whole)
                meta["caller"] = scrub_values(routed.metadata)
            if key is not None:
                meta.update(key=key.name, key_id=key.id, team=key.team)
            constraints = {k: v for k, v in opts.items() if k in _CONSTRAINT_KEYS}
            # routed as chat() will route it: tools and a schema need models that take them,
            # and count in the prompt the rate limit and the budget bound see
            shape = {k: opts[k] for k in ("tools", "response_format") if opts.get(k)}
            if "cascade" in opts:  # the ladder is the policy's: session pins apply to routing
                routed.session = None
            routed.session = await svc.pin(routed, key, opts)
            if routed.session:
                meta["session"] = routed.session
            opts["metadata"] = meta
            budgets = await svc.budgets_of(key)
            limited = key is not None and (key.rpm is not None or key.tpm is not None)
            # One decision for the rate limit's tokens, the budget's bound and the call: chat()
            # calls where it says, so neither a reload nor a cooldown meanwhile can send the
            # call where the bound does not reach.
            d = None
            if limited or budgets or opts.get("prefer"):
                kw = {k: v for k, v in opts.items() if k != "cascade"}
                if limited or budgets:  # the bound and the count read the prompt's count
                    kw["count_prompt"] = True
                # recorded if it fails or its client leaves here: no chat() follows then
                d = await svc.router.decide(
                    routed.messages, cascade="auto" if "cascade" in opts else None,
                    record=True, **kw,
                )  # fmt: skip
                opts["decision"] = d
                for k in _CONSTRAINT_KEYS & opts.keys():  # the decision holds them
                    del opts[k]
            pinned = opts.pop("prefer", None)
            if pinned and d is not None:
                if d.model == pinned:
                    meta["session_pin"] = pinned
                else:  # say why: a constraint it fails, else that it cannot be called now
                    why = _server_tools_why(d.registry, pinned, opts.get("server_tools"))
                    try:
                        if why is None:
                            why = "it cannot be called now (disabled or cooling down)"
                            await svc.router.aroute(
                                routed.messages,
                                {**constraints, "allow": (pinned,), "strict_floor": True},
                                **shape,
                            )
                    except NoRouteError as e:
                        why = str(e)
                    meta["session_switch"] = f"{pinned} no longer fits: {why}"[:300]
            # Admission: the budgets' reservation and the key's rate count, checked together
            # and counted together (one step on Redis), so that a request one refuses takes
            # nothing from the other.
            worst, hold = 0.0, None
            if budgets:
                assert d is not None
                # settled in the period reserved in, once (the hold's id)
                hold = uuid.uuid4().hex
                budgets = [b.pinned(svc.state.now(), hold=hold) for b in budgets]
                write = cache_write_of(routed.messages, opts.get("tools"))
                worst, out_cap = svc.worst_case(
                    d, opts.get("max_tokens"), "cascade" in opts, write, opts.get("server_tools")
                )
                opts.setdefault("max_tokens", out_cap)  # the bound holds only if the call does
                d.held = True  # (and only if no call the upstream may bill is retried)
                d.hold_usd = worst  # and its calls' answers held to it, as to a cost cap
            count = None
            if limited:
                assert key is not None and d is not None
                # tokens a minute: the prompt and the output it may take (max_tokens, else
                # the expectation the call will be capped at), counted at admission as
                # OpenAI's own limiter does; the prompt alone let completions run unbounded
                cap = int(opts.get("max_tokens") or 4 * max(d.tokens_out, 256))
                if key.tpm is not None:
                    opts.setdefault("max_tokens", cap)  # the count holds only if the call does
                # (and the thinking a Claude row writes past an answer's limit, and what
                # server tools' results may add to the prompt, as a budget holds them)
                fetched = server_tokens(opts.get("server_tools"))
                each = cap + _thinking_on_top(d, "cascade" in opts)
                each += 0 if math.isinf(fetched) else int(fetched)
                # every call a cascade's ladder may make, as its budget hold sums them (one
                # call had been counted: a 3-step ladder took 1.5x a key's tpm in a request)
                ladder = tuned_ladder(d)[0] if "cascade" in opts else None
                models, on = _called(d, ladder), ""
                if ladder is not None:
                    tokens = sum(d.max_tokens_in(m) + each for m in models)
                    on = f", on each of its cascade's {len(models)} calls"
                else:  # one answer, from the primary or a fallback, by its own tokenizer
                    tokens = max(d.max_tokens_in(m) for m in models) + each
                count = RateCount(  # the prompt counted (`count_prompt`), as billed
                    key.id, key.rpm, key.tpm, tokens, hold or uuid.uuid4().hex
                )
                # what no minute of the key's tpm will ever fit, or cannot be counted
                tpm_why = None if key.tpm is None else (
                    f"this request's server tools may add any number of tokens, so key "
                    f"{key.name!r}'s tpm limit cannot be checked; set max_uses on each (and "
                    "max_content_tokens on web_fetch)" if math.isinf(fetched) else
                    f"this request has {d.uncounted_parts} file or audio part(s), whose "
                    f"tokens cannot be counted, so key {key.name!r}'s tpm limit cannot be "
                    "checked; send their content as text or images, or use a key without "
                    "a tpm limit" if d.uncounted_parts else
                    f"this request may take {count.tokens} tokens (prompt and max_tokens{on}"
                    f"), more than key {key.name!r} allows in a minute (tpm {key.tpm}); "
                    "lower max_tokens or shorten the prompt" if count.tokens > key.tpm else None
                )  # fmt: skip
                if tpm_why is not None:
                    if recheck:
                        raise KeyChanged()
                    svc.metrics.refused(key.name, "rate_limit")
                    raise HTTPError(
                        429, tpm_why, "rate_limit_error", "rate_limit_exceeded", _NO_RETRY
                    )
            if budgets and math.isinf(worst):
                if recheck:
                    raise KeyChanged()
                refused: Refused | None = Refused(budgets[0])
            elif budgets or count is not None:
                try:
                    refused = await svc.state.admit(budgets, worst, count, key)
                except (StateUnavailable, asyncio.CancelledError):
                    if budgets:
                        # the reply may be lost after the store reserved (the store away, or
                        # the request cancelled while it waited: its client left, a
                        # shutdown's cut): released by the settling loop, no call having been
                        # made (a release of a hold never made changes nothing)
                        svc.unsettled.append((budgets, worst, 0.0))
                    raise
            else:
                refused = None
            if refused is not None:
                assert key is not None
                if refused.budget is None:
                    svc.metrics.refused(key.name, "rate_limit")
                    wait = refused.retry_in_s
                    raise HTTPError(
                        429,
                        f"rate limit of key {key.name!r} reached "
                        f"(rpm {key.rpm}, tpm {key.tpm}); retry in {wait:.0f}s",
                        "rate_limit_error",
                        "rate_limit_exceeded",
                        {"retry-after": str(math.ceil(wait))},
                    )
                b, left = refused.budget, refused.left_usd
                bounded = not math.isinf(worst)  # else nothing was asked of the store
                svc.metrics.refused(key.name, b.scope)
                why = (
                    f"its {d.uncounted_parts} file or audio part(s) cannot be counted in "
                    "tokens, so its cost cannot be bounded (send their content as text or "
                    "images, or use a key without a budget)"
                    if d is not None and d.uncounted_parts
                    else "its server tools cannot be bounded (set max_uses on each, and "
                    "max_content_tokens on web_fetch; a search on a model without a "
                    "per_search price cannot be bounded either)"
                    if math.isinf(worst) and opts.get("server_tools")
                    else "the routed models are unpriced, so the cost cannot be bounded"
                    if math.isinf(worst)
                    else f"this request may cost up to ${worst:.6f}"
                )
                raise HTTPError(
                    429,
                    f"budget {b.scope} (${b.limit_usd:.6f} per {b.period}) "
                    + (f"has ${left:.6f} left and {why}" if bounded else f"refuses it: {why}"),
                    "insufficient_quota",
                    "budget_exceeded",
                    # not to be retried when spent, or unbounded (the budget's period
                    # decides); when held by requests in flight, soon released, it may fit
                    _NO_RETRY if not bounded or refused.unheld_usd < worst else None,
                    budget=b.scope,
                    remaining_usd=left if bounded else None,
                )
            if budgets:
                reserved = (budgets, worst)
            if routed.stream:
                streaming = True
                resp = await _stream(svc, routed, opts, api, reserved, scope.get(CONNECTION))
                handed = True  # in flight until its body ends: the response counts it now
                return resp
            # a client that leaves before its answer cancels the call (`satisfice serve`'s
            # protocol does, `_http.py`): an answer nobody reads is not worth paying for
            if conn is not None and conn.gone:  # left while it was admitted: no call made
                failed = ClientGone()  # nothing billed: `finally` releases the reservation
                return Response(status_code=499)  # never sent: the connection is gone
            calling = True
            res = await svc.router.chat(routed.messages, **opts)  # a cancel: see below
            if reserved is not None:
                budgets, held = reserved
                reserved = None  # settled below, not again in finally
                cost = res.total_cost_usd
                # on a task of its own: the answer does not wait for a round trip to the
                # store (the hold covers the cost until it lands; shutdown waits for it)
                svc.settle_soon(budgets, held, cost if cost is not None else held)
            if routed.session:
                await svc.state.set_pin(routed.session, res.model)
            out = wire.openai_response(res) if api == "openai" else wire.anthropic_response(res)
            return _Answer(out, wire.headers_of(res))
        except KeyChanged:
            # admission found the key changed since it was read, or a refusal on its own
            # terms came from a cached read: taken again from the key read anew, once
            if again is None:
                return await handle(scope, receive, api, raw)
            he = HTTPError(503, "this key changed twice while the request was admitted; "
                           "send it again", "server_error", "key_changed")  # fmt: skip
            return _error(he, api)
        except HTTPError as e:
            return _error(e, api)
        except ClientDisconnect:  # left while sending its body: nothing was called
            return Response(status_code=499)  # never sent: the connection is gone
        except asyncio.CancelledError as e:
            # The shutdown's cut, or the client gone (wherever the request was: its body,
            # admission, its call). `finally` keeps a reservation made whole when a call was
            # cut off after it was sent (billed, its answer unknown), else settles it at
            # what the calls were billed (`_billed`)
            failed = e
            if not calling:  # cut before any call (its body, admission): nothing billed
                e.billed_usd = 0.0  # type: ignore[attr-defined]
            if _cut_by_shutdown(conn, task):
                he = _shut()
                return _error(he, api)
            if conn is None or task not in conn.cancelled:
                raise  # not ours: cancelled from above
            conn.cancelled.discard(task)
            task.uncancel()
            _log.info("client left before its answer; its request was cancelled",
                      extra={"event": "client_left"})  # fmt: skip
            return Response(status_code=499)  # never sent: the connection is gone
        except SatisficeError as e:
            failed = e  # handled here, so no longer in sys.exc_info() in `finally`
            he = http_error(e)
            return _error(he, api, e)
        except RecursionError:  # JSON nested too deep for a field's own reading
            he = HTTPError(400, "the request nests JSON too deeply (over ~900 levels)",
                           "invalid_request_error", "invalid_json")  # fmt: skip
            return _error(he, api)
        except Exception as e:  # a bug of ours: an error in the API's shape, not a bare 500
            failed = e  # a call may have been billed: `finally` keeps the reservation
            # the type alone: a message may quote a request or an upstream's reply
            _log.error("request failed: %s", type(e).__name__, extra={"event": "internal"})
            he = HTTPError(500, f"internal error ({type(e).__name__})", "server_error")
            return _error(he, api)
        finally:
            if task is not None:
                conn.waiting.discard(task)  # type: ignore[union-attr]
            if reserved is not None and not streaming:  # failed before settling: release it
                billed = _billed(failed if failed is not None else sys.exc_info()[1], reserved[1])
                await svc.settle(reserved[0], reserved[1], billed)
            if not handed:
                svc.in_flight -= 1

    async def chat_completions(request: Request) -> Response:
        return await handle(request.scope, request.receive, "openai")

    async def messages(request: Request) -> Response:
        return await handle(request.scope, request.receive, "anthropic")

    async def count_tokens(request: Request) -> Response:
        """Anthropic's `messages.count_tokens` (a coding agent asks before a turn): the
        prompt's tokens for the model the same /v1/messages request would be routed to now,
        read and routed as that request (the key's model list, an alias's constraints).
        Nothing is called, reserved or counted against a rate limit. `x-satisfice-model`
        names the model counted for; `x-satisfice-tokens` says whether the count is exact
        (an OpenAI tokenizer) or estimated (every other family: no exact tokenizer ships;
        and a conversation carrying a Claude model's thinking, counted though an OpenAI
        model is never sent it)."""
        headers = _headers(request.scope)
        try:
            key = await svc.key_of(headers)
        except (HTTPError, SatisficeError) as e:  # refused unread, as `handle` refuses it
            he = e if isinstance(e, HTTPError) else http_error(e)
            he.headers["connection"] = "close"
            return JSONResponse(he.body("anthropic"), he.status, headers=he.headers)
        try:
            cfg, deadlines = svc.config, svc.deadlines()
            raw = await _body(
                request.receive, headers, cfg.max_body_bytes, deadlines, cfg.read_timeout_s
            )
            routed = wire.anthropic_count_request(_json(raw), headers)
            opts = svc.resolve(routed, key)
            cascade = opts.pop("cascade", None)
            if cascade is None:  # as `handle` reads it
                await svc.pin(routed, key, opts)
            d = await svc.router.decide(routed.messages, cascade=cascade, count_prompt=True, **opts)
        except HTTPError as e:
            return JSONResponse(e.body("anthropic"), e.status, headers=e.headers)
        except ClientDisconnect:
            return Response(status_code=499)  # never sent: the connection is gone
        except SatisficeError as e:
            he = http_error(e)
            return JSONResponse(he.body("anthropic"), he.status, headers=he.headers)
        except RecursionError:
            he = HTTPError(400, "the request nests JSON too deeply (over ~900 levels)",
                           "invalid_request_error", "invalid_json")  # fmt: skip
            return JSONResponse(he.body("anthropic"), he.status)
        except Exception as e:  # a bug of ours, as `handle` answers one: in the API's shape
            # (Starlette's had been a text/plain 500, and a traceback quoting the request)
            _log.error("count_tokens failed: %s", type(e).__name__, extra={"event": "internal"})
            he = HTTPError(500, f"internal error ({type(e).__name__})", "server_error")
            return JSONResponse(he.body("anthropic"), he.status)
        first = d.model
        if cascade is not None:  # a tuned ladder calls its first step's model first
            ladder = tuned_ladder(d)[0]
            if ladder is not None:
                first = ladder.steps[0].models[0]
        exact = next((c.tokens_in_exact for c in d.candidates if c.model == first), False)
        # a Claude model's thinking is counted for every model (routing reads one prompt),
        # though only a Claude model is sent it: for any other, the count is an upper bound
        exact = exact and not any("thinking_blocks" in m for m in routed.messages)
        return JSONResponse({"input_tokens": d.tokens_in(first)}, headers={
            "x-satisfice-model": wire.header_value(first),
            "x-satisfice-tokens": "exact" if exact else "estimated",
        })  # fmt: skip

    def direct(api: str) -> Callable[[Any, Any, Any], Awaitable[None]]:
        async def endpoint(scope: Any, receive: Any, send: Any) -> None:
            response = await handle(scope, receive, api)
            await response(scope, receive, send)

        return endpoint

    async def models(request: Request) -> Response:
        # the Anthropic SDK (which sends anthropic-version) reads Anthropic's shapes
        api = "anthropic" if "anthropic-version" in request.headers else "openai"
        try:
            key = await svc.authenticate(request)
        except HTTPError as e:
            return _error(e, api)
        except SatisficeError as e:  # the key store away: 503, as /v1/chat/completions says
            he = http_error(e)
            return _error(he, api)
        data = model_objects()
        if key is not None and key.models is not None:  # what this key may call, only
            data = [m for m in data if m["id"] in key.models]
        if api == "anthropic":
            data = [_anthropic_model(m) for m in data]
        wanted = request.path_params.get("model")
        if wanted is None:
            if api == "anthropic":
                return JSONResponse({"data": data, "has_more": False,
                                     "first_id": data[0]["id"] if data else None,
                                     "last_id": data[-1]["id"] if data else None})  # fmt: skip
            return JSONResponse({"object": "list", "data": data})
        # one model (the SDKs' models.retrieve), by id or alias; it had been a 404 "no such
        # endpoint"
        for m in data:
            if m["id"] == wanted:
                return JSONResponse(m)
        he = HTTPError(404, f"unknown model {wanted!r:.200}: GET /v1/models lists them",
                       "invalid_request_error", "model_not_found")  # fmt: skip
        return _error(he, api)

    listed_since = wire.now()  # a model's `created`: the same on every call

    def model_objects() -> list[dict[str, Any]]:
        now = listed_since
        data = [{"id": "auto", "object": "model", "created": now, "owned_by": "satisfice"}]
        data += [
            {
                "id": a,
                "object": "model",
                "created": now,
                "owned_by": "satisfice",
                "satisfice_constraints": c,
            }
            for a, c in svc.config.aliases.items()
        ]
        data += [
            {"id": m.id, "object": "model", "created": now, "owned_by": m.provider}
            for m in svc.router.registry
            if not m.disabled
        ]
        return data

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "in_flight": svc.in_flight})

    async def ready(request: Request) -> Response:
        ok = svc.ready
        body: dict[str, Any] = {"ready": ok, "models": len(svc.router.registry)}
        if svc.started and not ok:
            body["waiting_for"] = "tokenizers (built once per process, about a second)"
        return JSONResponse(body, 200 if ok else 503)

    async def metrics(request: Request) -> Response:
        # where keys are required (a server reachable beyond loopback), the series' key and
        # team names and spend are the operator's: scraped with the master key as a bearer
        if svc.config.require_keys and (refused := master_refusal(svc, request, "/metrics")):
            return refused
        if svc.router.ledger is not None:
            svc.metrics.dropped(svc.router.ledger)
        return Response(
            svc.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    from .admin import admin_routes, master_refusal

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *admin_routes(svc),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await svc.startup()
        try:
            yield
        finally:
            await svc.shutdown()

    app = _App(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: _no_such_route, 405: _no_such_route},
        direct={
            "/v1/chat/completions": direct("openai"),
            "/chat/completions": direct("openai"),
            "/v1/messages": direct("anthropic"),
        },
    )
    app.state.service = svc
    return app


_PATHS = (
    "POST /v1/chat/completions, POST /v1/messages, POST /v1/messages/count_tokens, "
    "GET /v1/models[/{id}], /health, /ready, /metrics"
)


async def _no_such_route(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405 (a path or a method the server does not answer; the app
    registers it for those two codes only) in the API's error shape, as every other error
    is: the SDKs read the message from it."""
    assert isinstance(exc, StarletteHTTPException)
    path, method = request.url.path[:200], request.method[:20]
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        msg = f"{method} is not allowed on {path}; it takes {allowed or 'another method'}"
        he = HTTPError(405, msg, "invalid_request_error", "method_not_allowed", exc.headers)
    else:
        msg = f"no such endpoint: {method} {path} (this server answers {_PATHS})"
        he = HTTPError(404, msg, "invalid_request_error", "unknown_url")
    # /v1/messages and what lies under it (count_tokens, batches), and any path an
    # Anthropic SDK asks (it sends anthropic-version on every request, as GET /v1/models
    # reads it: its /v1/files or /v1/complete had been answered in OpenAI's shape)
    asked = "/v1/messages" in path or "anthropic-version" in request.headers
    api = "anthropic" if asked else "openai"
    return JSONResponse(he.body(api), he.status, headers=he.headers)


class _App(Starlette):
    """Starlette, with a POST to the chat routes handed straight to its handler: past the
    error and exception middleware, the route table and the request wrapper, whose layers
    (each send passes two wrappers) cost per request a fifth of what the server itself
    does around chat(). The handler needs none of them: it catches every exception and
    answers each error in the API's shape. Everything else (other routes and methods, a
    trailing slash's redirect), and every request once middleware or an exception handler
    is added to the app, goes through Starlette as before."""

    def __init__(self, *, direct: Mapping[str, Callable[[Any, Any, Any], Awaitable[None]]],
                 **kw: Any) -> None:  # fmt: skip
        super().__init__(**kw)
        self._direct = dict(direct)
        self._handlers = dict(self.exception_handlers)  # Starlette's own, at creation

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and not self.user_middleware
            and self.exception_handlers == self._handlers
        ):
            path, root = scope["path"], scope.get("root_path", "")
            if root and path.startswith(root + "/"):  # mounted: as Starlette's router sees it
                path = path[len(root) :]
            endpoint = self._direct.get(path)
            if endpoint is not None:
                scope["app"] = self
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


_CUT_REASON = "the server's shutdown cut the stream: its shutdown_grace_s ran out"


async def _close_and_settle(
    svc: Service,
    s: Any,
    reserved: tuple[list[Budget], float] | None,
    settled: float | None,
    cut: bool = False,
) -> None:
    """Close a stream, then settle its reservation: at the answer's cost when it finished,
    else at what its calls may have cost so far (the executor keeps an estimate for a call
    the client cut short: the prompt and the text sent). If the close itself is cancelled,
    that estimate may be missing, so the whole reservation is kept (never under-counted);
    so it is for a stream the server's shutdown `cut`, whose call it left unfinished."""
    closed = False
    try:
        await s.aclose(_CUT_REASON if cut else None)  # the record says why
        closed = True
    finally:
        if reserved is not None:
            if settled is None:
                settled = _so_far(s, reserved[1]) if closed and not cut else reserved[1]
            svc.settle_soon(reserved[0], reserved[1], settled)


def _so_far(s: Any, hold: float) -> float:
    """What a closed stream's calls may have cost so far (the executor keeps an estimate
    for a call cut short: its prompt and the text sent; a stream's upstream stops writing
    when it is closed); the whole `hold` when one is unpriced. Closed between calls (a
    backoff), what its calls were billed: $0 when none was (the hold had been kept)."""
    spent = billed_cost(s.attempts)
    return hold if spent is None else spent[0]


def _writing(conn: Connection | None) -> asyncio.Task[Any] | None:
    """The task writing a stream (or waiting for its first piece), put on its connection's
    record, which a shutdown cuts (see `_http`)."""
    task = asyncio.current_task() if conn is not None else None
    if task is not None:
        conn.streams.add(task)  # type: ignore[union-attr]
    return task


def _written(conn: Connection | None, task: asyncio.Task[Any] | None) -> None:
    if task is not None:
        conn.streams.discard(task)  # type: ignore[union-attr]


def _cut_by_shutdown(conn: Connection | None, task: asyncio.Task[Any] | None) -> bool:
    """Whether a stream's cancel is the server's own cut at shutdown (then taken back: the
    stream ends with an error event, which a cancelled task could not write)."""
    if conn is None or task is None or not conn.cut:
        return False
    task.uncancel()
    return True


def _shut() -> HTTPError:
    return HTTPError(
        503,
        "the server is shutting down and its grace (shutdown_grace_s) ran out before this "
        "request's end; retry it",
        "service_unavailable",
        "shutting_down",
    )


class _InFlight(StreamingResponse):
    """A stream counted in /health's requests in flight until its body has ended (the
    handler that made it returned at its first piece)."""

    def __init__(self, svc: Service, shut: bytes, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.svc = svc
        self.shut = shut  # the event that ends a stream the server's shutdown cuts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            conn: Connection | None = scope.get(CONNECTION)
            own = scope.get(ANSWER)
            if conn is None or conn.gone or own is None or not own.owns(send):
                # Starlette's: a second task listens for the client's leaving and cancels
                # the stream's (a task group for each stream)
                await super().__call__(scope, receive, send)
            else:
                await self._on(conn, own, send)
        finally:
            self.svc.in_flight -= 1

    async def _on(self, conn: Connection, own: Own, send: Any) -> None:
        """The stream, written on `satisfice serve`'s own protocol (`_http`), whose
        connection cancels the tasks waiting on it when its client leaves, as it does a
        non-streamed request's: no second task and task group for each stream (streams
        had been answered at half the rate of non-streamed requests)."""
        task = asyncio.current_task()
        assert task is not None
        conn.waiting.add(task)
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if task in conn.cancelled:  # the client left: the stream ends here
                conn.cancelled.discard(task)
                task.uncancel()
                own.cycle.disconnected = True  # (uvicorn marks only the connection's latest)
                await self.body_iterator.aclose()  # type: ignore[attr-defined]  # its settlement
            elif conn.cut:  # the shutdown's cut, landed while a piece was being written
                task.uncancel()
                await self.body_iterator.aclose()  # type: ignore[attr-defined]  # the hold kept
                own.end_stream(self.shut)  # its error event after the piece, not a bare cut
            else:
                raise
        finally:
            conn.waiting.discard(task)


_THINKING_START = {"type": "thinking", "thinking": "", "signature": ""}
_PING = wire.anthropic_event("ping", {})


async def _stream(
    svc: Service,
    routed: wire.Routed,
    opts: dict[str, Any],
    api: str,
    reserved: tuple[list[Budget], float] | None,
    conn: Connection | None = None,
) -> Response:
    """Route and read up to the first piece before answering, so that a request that cannot
    be routed or whose every candidate fails gets a proper HTTP error, not a broken stream."""
    s = svc.router.stream(routed.messages, **opts)
    it = s.__aiter__()
    waiting = _writing(conn)  # a shutdown's cut reaches it here too
    try:
        first = await it.__anext__()
    except BaseException as e:
        left = isinstance(e, asyncio.CancelledError)
        cut = left and _cut_by_shutdown(conn, waiting)
        await s.aclose()
        if reserved is not None:
            billed = _billed(e, reserved[1])
            if left and not cut:  # the client left: as after a first piece (the whole hold
                billed = _so_far(s, reserved[1])  # had been kept for 4,000 tokens unwritten)
            # soon, not awaited here: a client leaving while it was awaited (a slow store)
            # cancelled it, and no settlement was queued (the hold renewed for 6 hours)
            svc.settle_soon(reserved[0], reserved[1], billed)
        if cut:
            raise _shut() from None
        raise
    finally:
        _written(conn, waiting)
    # the request's id, as its record and a non-streamed answer have it (a stream without
    # include_usage had carried an id of its own, and no way to its record or feedback)
    sid = s.request_id or uuid.uuid4().hex
    created = wire.now()
    answering = s.model or routed.model  # the model called, not the alias ("auto") asked

    async def openai_events() -> AsyncGenerator[bytes, None]:
        settled: float | None = None  # what the answer cost, once done and priced
        model = answering
        try:
            d = first
            sent_role = apart = False
            while True:
                if d.done:
                    res = d.result
                    model = res.model
                    settled = res.total_cost_usd  # None (unpriced): the hold stands
                    tail: list[dict[str, Any]] = []
                    if res.refusal:  # whole at the end: it is not streamed as text
                        tail.append({"refusal": res.refusal})
                    if res.thinking:  # whole, signed, to send back (ChatResult.thinking)
                        tail.append({"thinking_blocks": res.thinking})
                    if res.tool_calls:
                        calls = [
                            {"index": i, **wire.openai_tool_call(c)}
                            for i, c in enumerate(res.tool_calls)
                        ]
                        tail.append({"tool_calls": calls})
                    tail.append({})  # the finish reason's
                    if not sent_role:  # the first chunk names the role, whatever it holds
                        tail[0] = {"role": "assistant", **tail[0]}
                    last = len(tail) - 1
                    for i, part in enumerate(tail):
                        fin = wire.openai_finish(res) if i == last else None
                        yield wire.openai_chunk(sid, model, created, part, fin)
                    if routed.include_usage:
                        yield wire.sse_data(
                            {
                                "id": f"chatcmpl-{sid}",
                                "object": "chat.completion.chunk",
                                "created": created,
                                "model": model,
                                "choices": [],
                                "usage": wire.openai_usage(res.usage),
                                "satisfice": wire.decision_field(res),
                            }
                        )
                    if routed.session:
                        await svc.state.set_pin(routed.session, res.model)
                    yield b"data: [DONE]\n\n"
                    return
                if d.thought is not None:
                    apart = True  # the next block's thinking, a paragraph of its own
                if d.text or d.thinking:
                    # thinking as the gateways that stream it say it (a stream that thinks
                    # for minutes is not silent, which a proxy's idle timeout would cut),
                    # a block a paragraph (see wire.reasoning_text)
                    delta: dict[str, Any] = (
                        {"content": d.text} if d.text
                        else {"reasoning_content": "\n\n" + d.thinking if apart else d.thinking}
                    )  # fmt: skip
                    apart = apart and not d.thinking
                    if not sent_role:
                        delta["role"] = "assistant"
                        sent_role = True
                    yield wire.openai_chunk(sid, model, created, delta)
                elif d.thought is None:  # the model is writing a tool call: a keep-alive
                    yield b": keep-alive\n\n"
                d = await it.__anext__()
        except SatisficeError as e:
            he = http_error(e)
            yield wire.sse_data(he.body())  # an explicit error event: never a silent cut
        finally:
            await _close_and_settle(svc, s, reserved, settled, conn is not None and conn.cut)

    async def anthropic_events() -> AsyncGenerator[bytes, None]:
        settled: float | None = None  # what the answer cost, once done and priced
        msg_id = f"msg_{sid}"
        try:
            yield wire.anthropic_event(
                "message_start",
                {
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": answering,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        # the prompt as routing counted it (a context meter read 0 here);
                        # message_delta carries the upstream's totals, which the SDKs take
                        "usage": {"input_tokens": s.prompt_tokens or 0, "output_tokens": 0},
                    }
                },
            )
            # Blocks as anthropic_response gives them: the model's thinking as it streams
            # (each block signed at its end), the text (opened at its first piece: an
            # answer of tool calls alone had begun with an empty text block), a refusal as
            # a text block of its own, the tool calls; an empty text block for nothing.
            block = -1  # the index of the block open or last closed
            text_open = thinking_open = False
            d = first
            while True:
                if d.done:
                    res = d.result
                    settled = res.total_cost_usd  # None (unpriced): the hold stands
                    if text_open or thinking_open:
                        yield wire.anthropic_event("content_block_stop", {"index": block})
                    if res.refusal or (block < 0 and not res.tool_calls):
                        block += 1
                        yield wire.anthropic_event(
                            "content_block_start",
                            {"index": block, "content_block": {"type": "text", "text": ""}},
                        )
                        if res.refusal:
                            yield wire.anthropic_event(
                                "content_block_delta",
                                {
                                    "index": block,
                                    "delta": {"type": "text_delta", "text": res.refusal},
                                },
                            )
                        yield wire.anthropic_event("content_block_stop", {"index": block})
                    for i, c in enumerate(res.tool_calls, start=block + 1):
                        use = {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}
                        args = {
                            "type": "input_json_delta",
                            "partial_json": json.dumps(wire.tool_input(c.arguments)),
                        }
                        yield wire.anthropic_event(
                            "content_block_start", {"index": i, "content_block": use}
                        )
                        yield wire.anthropic_event(
                            "content_block_delta", {"index": i, "delta": args}
                        )
                        yield wire.anthropic_event("content_block_stop", {"index": i})
                    yield wire.anthropic_event(
                        "message_delta",
                        {
                            "delta": {
                                "stop_reason": wire.anthropic_stop(res),
                                "stop_sequence": res.stop_sequence,
                            },
                            # the totals, which the SDKs take over message_start's figures
                            "usage": wire.anthropic_usage(res.usage),
                            "satisfice": wire.decision_field(res),
                        },
                    )
                    if routed.session:  # as a stream on /v1/chat/completions (it set none)
                        await svc.state.set_pin(routed.session, res.model)
                    yield wire.anthropic_event("message_stop", {})
                    return
                if d.text or d.citation is not None:  # text, or a citation of what follows
                    if thinking_open:  # (it closes at its signature: not seen here)
                        yield wire.anthropic_event("content_block_stop", {"index": block})
                        thinking_open = False
                    if not text_open:
                        block, text_open = block + 1, True
                        yield wire.anthropic_event(
                            "content_block_start",
                            {"index": block, "content_block": {"type": "text", "text": ""}},
                        )
                    piece = (
                        {"type": "text_delta", "text": d.text} if d.text
                        else {"type": "citations_delta", "citation": d.citation}
                    )  # fmt: skip
                    yield wire.anthropic_event(
                        "content_block_delta", {"index": block, "delta": piece}
                    )
                elif d.thinking or d.thought is not None:
                    if text_open:  # interleaved thinking, after text
                        yield wire.anthropic_event("content_block_stop", {"index": block})
                        text_open = False
                    redacted = d.thought is not None and d.thought["type"] == "redacted_thinking"
                    if redacted and thinking_open:
                        yield wire.anthropic_event("content_block_stop", {"index": block})
                        thinking_open = False
                    if not thinking_open:
                        block, thinking_open = block + 1, True
                        start = d.thought if redacted else _THINKING_START
                        yield wire.anthropic_event(
                            "content_block_start", {"index": block, "content_block": start}
                        )
                    if d.thinking:
                        yield wire.anthropic_event(
                            "content_block_delta",
                            {"index": block,
                             "delta": {"type": "thinking_delta", "thinking": d.thinking}},
                        )  # fmt: skip
                    if d.thought is not None:  # the block's end
                        if not redacted:
                            sig = {"type": "signature_delta", "signature": d.thought["signature"]}
                            yield wire.anthropic_event(
                                "content_block_delta", {"index": block, "delta": sig}
                            )
                        yield wire.anthropic_event("content_block_stop", {"index": block})
                        thinking_open = False
                elif d.block is not None:  # a server tool's call or result, whole
                    if text_open or thinking_open:
                        yield wire.anthropic_event("content_block_stop", {"index": block})
                        text_open = thinking_open = False
                    block += 1
                    b = d.block
                    if b["type"] == "text":  # a text block's start: its pieces follow
                        text_open = True
                        yield wire.anthropic_event(
                            "content_block_start", {"index": block, "content_block": b}
                        )
                        d = await it.__anext__()
                        continue
                    if b["type"] == "server_tool_use":  # its input as Anthropic streams it
                        yield wire.anthropic_event(
                            "content_block_start",
                            {"index": block, "content_block": {**b, "input": {}}},
                        )
                        said = {"type": "input_json_delta", "partial_json": json.dumps(b["input"])}
                        yield wire.anthropic_event(
                            "content_block_delta", {"index": block, "delta": said}
                        )
                    else:
                        yield wire.anthropic_event(
                            "content_block_start", {"index": block, "content_block": b}
                        )
                    yield wire.anthropic_event("content_block_stop", {"index": block})
                else:  # the model is writing a tool call, given whole at the end
                    yield _PING
                d = await it.__anext__()
        except SatisficeError as e:
            he = http_error(e)
            yield wire.anthropic_event("error", he.body("anthropic"))
        finally:
            await _close_and_settle(svc, s, reserved, settled, conn is not None and conn.cut)

    async def cut_aware(events: AsyncGenerator[bytes, None], shut: bytes) -> AsyncIterator[bytes]:
        """`events`, ended with the error event `shut` by the server's own cut at shutdown
        (see `_http`); `events` settles in its `finally`, the whole hold once cut (a cut
        while a piece was being written closes it rather than cancelling it)."""
        task = _writing(conn)
        try:
            if conn is not None and conn.cut:  # cut before the stream began
                await _close_and_settle(svc, s, reserved, None, cut=True)
                yield shut
                return
            async for event in events:
                yield event
        except asyncio.CancelledError:
            if not _cut_by_shutdown(conn, task):
                raise
            yield shut
        finally:
            _written(conn, task)
            await events.aclose()

    shut = (
        wire.sse_data(_shut().body())
        if api == "openai"
        else wire.anthropic_event("error", _shut().body("anthropic"))
    )
    gen = cut_aware(openai_events() if api == "openai" else anthropic_events(), shut)
    return _InFlight(
        svc,
        shut,
        gen,
        media_type="text/event-stream",
        headers={
            "cache-control": "no-cache",
            **wire.id_headers(sid),
            "x-satisfice-model": wire.header_value(answering),
        },
    )
