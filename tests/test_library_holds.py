"""The Python library's promises, as reviewed (chat, stream, route, errors, redaction, executor).

Each test states a defect found by review and the behaviour the README promises; each
failed on the code it was written against.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from satisfice.errors import NoRouteError, SatisficeError
from satisfice.testing import LocalUpstream, hang, reply

from .chat_support import router


async def _max_lag(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append(time.perf_counter() - t - 0.005)


async def test_many_tiny_messages_neither_hold_the_loop_nor_outrun_the_deadline(
    up: LocalUpstream,
) -> None:
    """Defect: whether a prompt is routed on a worker thread is decided by its text bytes
    alone (`router._route_inline` -> `_extra.text_bytes`), and before that decision the
    whole message list is copied and measured on the event loop. A prompt of many tiny
    messages (600,000 x "a", or 300,000 empty ones whose 0 text bytes route inline) held
    the event loop for 0.5-1 s and a `chat(..., timeout=0.3)` returned after ~1 s.

    Expected (README, "Hostile upstreams" / "Limits on exact counts"): a large prompt is
    routed off the loop and the request's deadline bounds that wait, so the request ends
    within its deadline + 0.5 s and the loop is not held for hundreds of milliseconds."""
    up.default = reply("ok")
    async with router(up.url) as r:
        await r.chat("warm up")  # the tokenizers built, as in a server's steady state
        for n, content in ((600_000, "a"), (300_000, "")):
            messages = [{"role": "user", "content": content}] * n
            stop, lags = asyncio.Event(), []
            ticker = asyncio.ensure_future(_max_lag(stop, lags))
            await asyncio.sleep(0.02)
            t = time.perf_counter()
            # a timeout or no route is fine: the time it took is the point
            with contextlib.suppress(SatisficeError):
                await r.chat(messages, timeout=0.3)
            took = time.perf_counter() - t
            stop.set()
            await ticker
            assert took <= 0.3 + 0.5, f"{n} messages: chat(timeout=0.3) returned after {took:.2f}s"
            assert max(lags) < 0.25, f"{n} messages held the event loop {max(lags):.2f}s"


async def test_a_call_that_never_left_the_connection_pool_is_not_billed_nor_a_health_failure(
    up: LocalUpstream,
) -> None:
    """Defect: an attempt whose budget runs out while it waits for a free connection in the
    router's own pool (a burst past `max_connections_per_host`, 256 by default) is recorded
    as an `UpstreamTimeoutError` billed at an estimate (`cost_estimated`, the prompt's
    price), and counted as the deployment's failure: three such requests put every healthy
    deployment into cooling. The upstream never saw a byte of those requests.

    Expected (README, "Limits on exact counts": calls are billed at an estimate when the
    upstream may bill them; `Executor._failed`: "it timed out after reaching it"): a call
    that was never sent costs nothing and says nothing about the upstream's health."""
    up.default = reply("ok")
    r = router(up.url, max_connections=1, read_timeout_s=5.0)
    async with r:
        up.script("alpha-wire", hang())
        holder = asyncio.ensure_future(
            r.chat("hold the one connection", allow=["alpha"], timeout=4)
        )
        await asyncio.sleep(0.2)  # the pool's one connection is taken by the hung call
        before = len(up.requests)
        errors = []
        for _ in range(3):
            try:
                await r.chat("hello", timeout=0.5)
            except SatisficeError as e:
                errors.append(e)
        sent = len(up.requests) - before
        health = r.health()
        holder.cancel()
        with contextlib.suppress(asyncio.CancelledError, SatisficeError):
            await holder
    assert sent == 0  # nothing of these requests reached the upstream
    billed = [
        (a.model, a.cost_usd)
        for e in errors
        for a in e.attempts
        if a.cost_usd  # type: ignore[attr-defined]
    ]
    assert billed == [], f"calls never sent were billed: {billed}"
    cooling = {k: v["state"] for k, v in health.items() if k != "alpha/alpha-dep"}
    assert all(s == "ok" for s in cooling.values()), (
        f"deployments cooled by the local pool: {cooling}"
    )


async def test_the_errors_chat_raises_survive_pickling(up: LocalUpstream) -> None:
    """Defect: `AllAttemptsFailedError(message, attempts)` and `CascadeBudgetError(message,
    result, attempts)` take required arguments beyond `args` (which holds the message
    alone), so `pickle.loads(pickle.dumps(e))` and `copy.copy(e)` raise TypeError. Any
    process boundary pickles exceptions: a `chat_sync()` that fails inside a
    `ProcessPoolExecutor` worker (or Celery, multiprocessing, Ray) does not reach its
    caller as the error listing every attempt; the executor reports `BrokenProcessPool`
    and refuses every later task.

    Expected (README: "each request ends in ... an error listing every attempt"): the error
    round-trips with its type, message and attempts, as ProviderError's other subclasses
    already do."""
    import copy
    import pickle

    from satisfice.errors import AllAttemptsFailedError, CascadeBudgetError
    from satisfice.testing import status

    up.default = status(503)
    async with router(up.url) as r:
        try:
            await r.chat("hello")
        except AllAttemptsFailedError as e:
            err = e
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is AllAttemptsFailedError and str(again) == str(err)
    assert [a.to_dict() for a in again.attempts] == [a.to_dict() for a in err.attempts]
    assert str(copy.copy(err)) == str(err)
    budget = CascadeBudgetError("no answer inside the budget", None, list(err.attempts))
    assert len(pickle.loads(pickle.dumps(budget)).attempts) == len(err.attempts)


def test_execution_config_refuses_timeouts_and_limits_that_cannot_work() -> None:
    """Defect: `ExecutionConfig` (what `Router.configure(execution=...)` takes) checks none
    of its fields. Found by running a hung upstream under each:
    - `read_timeout_s=nan` with `attempt_timeout_s=1.0`: `chat()` does not end at the
      1 s attempt bound (still running when the caller's `wait_for(..., 3)` cut it): NaN
      timeouts reach the timers (`max(nan, 0.0)` is nan); with `connect_timeout_s=nan`
      a `stream().result()` under `asyncio.wait_for(..., 3)` returned after 121 s: the
      caller's own cancellation was held until the 120 s read timeout;
    - `read_timeout_s=0` or `-1`: every call fails at once as `UpstreamTimeoutError`
      (billed at an estimate) and counts against every deployment's health;
    - `max_connections=0`, `max_response_bytes=-1`: every call fails, each after a
      2 s pool wait or an "over max_body=-1" error.

    Expected (README, "Bad input, clear errors": options that are wrong raise
    `ConfigError` naming the field): these are refused when the router is configured."""
    import math

    import pytest

    from satisfice import Router
    from satisfice.errors import ConfigError
    from satisfice.executor import ExecutionConfig

    bad = [
        {"read_timeout_s": math.nan},
        {"connect_timeout_s": math.nan},
        {"attempt_timeout_s": math.nan},
        {"stream_idle_timeout_s": math.nan},
        {"read_timeout_s": 0.0},
        {"read_timeout_s": -1.0},
        {"max_connections": 0},
        {"max_response_bytes": -1},
    ]
    for fields in bad:
        field = next(iter(fields))
        with pytest.raises(ConfigError, match=field):
            Router().configure(execution=ExecutionConfig(**fields))  # type: ignore[arg-type]


async def test_a_base_url_with_a_query_gets_the_endpoint_path_not_the_query() -> None:
    """Defect: a provider's endpoint is `base_url + "/chat/completions"` (or
    `"/v1/messages"`) as text, so a base_url with a query string, as Azure OpenAI's
    (`...?api-version=2024-10-21`) or a key-in-query gateway's are, is sent as
    `POST /v1?api-version=2024-10-21/chat/completions`: the path is `/v1` and the query
    is mangled. The registry takes such a base_url without a word.

    Expected: the request goes to `/v1/chat/completions?api-version=2024-10-21`, or the
    base_url is refused with a `ConfigError` naming it (README, "Bad input, clear
    errors": registries that are wrong raise ConfigError naming the field)."""
    from satisfice import Policy, Registry, Router
    from satisfice.errors import ConfigError
    from satisfice.testing import RawUpstream, http_response

    answer = (
        b'{"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},'
        b'"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
    )
    with RawUpstream() as raw:
        raw.push(http_response(answer))
        base = raw.url + "/v1?api-version=2024-10-21"
        try:
            reg = Registry.from_dict({"model": [{
                "id": "m", "provider": "openai", "context_window": 8000, "max_output": 1000,
                "tokenizer": "o200k_base", "price": {"input": 1.0, "output": 2.0},
                "deployments": [{"name": "d", "api": "openai", "model": "m", "base_url": base}],
            }]})  # fmt: skip
        except ConfigError:
            return  # refused, naming it: fine
        async with Router(reg, Policy(quality_floor=0.0)) as r:
            with contextlib.suppress(SatisficeError):
                await r.chat("hello")
        line = raw.requests[0].split(b"\r\n", 1)[0]
    assert line == b"POST /v1/chat/completions?api-version=2024-10-21 HTTP/1.1", line


async def test_a_call_whose_connection_never_opened_is_not_billed(up: LocalUpstream) -> None:
    """Defect (the same root as the pool wait above): a connect timeout, the TCP handshake
    never completed (here: a listener whose accept queue is full, as an overloaded host's
    is), becomes an `UpstreamTimeoutError`, and every `UpstreamTimeoutError` attempt is
    billed at the prompt's estimated price (`Executor._failed`). The request's
    `total_cost_usd` then exceeds what the answering call cost although no other call
    could have been billed.

    Expected: only calls that reached the upstream carry an estimated bill;
    `total_cost_usd` equals the answer's cost here."""
    import socket

    from .chat_support import move_alpha

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = []
    for _ in range(4):  # fill the accept queue: further handshakes are not answered
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        queued.append(s)
    await asyncio.sleep(0.1)
    up.default = reply("ok")
    try:
        async with router(up.url, connect_timeout_s=0.5) as r:
            r.update(move_alpha(r.registry, f"http://127.0.0.1:{port}"))
            res = await r.chat("hello")
    finally:
        for s in (*queued, listener):
            s.close()
    first = res.attempts[0]
    assert first.model == "alpha" and "ConnectTimeout" in (first.error or "")
    assert first.cost_usd in (None, 0.0), f"a call never connected was billed {first.cost_usd}"
    assert res.total_cost_usd == res.cost_usd


_LONG = "word " * 20_000  # ~20,000 tokens: over alpha's and beta's 8,000-token windows
_UNCOUNTED = {
    "an assistant tool call's id": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": _LONG, "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "r"},
    ],
    "a message's own key": [{"role": "user", "content": "hi", "note": _LONG}],
    "a text part's own key": [
        {"role": "user", "content": [{"type": "text", "text": "hi", "meta": {"x": _LONG}}]}
    ],
    "an assistant's audio reference": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "audio": {"id": _LONG}},
        {"role": "user", "content": "again"},
    ],
}  # fmt: skip


@pytest.mark.parametrize("where", list(_UNCOUNTED))
async def test_what_the_openai_wire_sends_is_counted_for_the_window_and_the_cap(
    up: LocalUpstream, where: str
) -> None:
    """Defect: text the OpenAI wire sends but the count skips: the `id` of an assistant's
    `tool_calls` entry (the tool message's `tool_call_id` is counted), and any key of a
    message or content part the router does not know, which the OpenAI provider forwards
    as it is. 100 KB there (~20,000 tokens) was counted as 8-22 tokens, routed to an
    8,000-token window, and sent whole (100 KB on the wire) under `max_cost_usd=0.001`,
    whose cap it breaks at alpha's price ($0.002 of prompt alone).

    Expected (README, "Limits on exact counts": "What is counted is what the OpenAI wire
    sends"; "Tools count": "tool call ids" are prompt tokens; "A cost cap holds on the
    wire"): such text is counted (routed to a window that holds it, refused under the
    cap) or refused before any call as an `InputError` naming the field."""
    from satisfice.errors import InputError

    messages = _UNCOUNTED[where]
    up.default = reply("ok")
    async with router(up.url) as r:
        try:
            d = await r.decide(messages, max_cost_usd=0.001)
        except (InputError, NoRouteError):
            return  # refused or not routable under the cap: fine
        assert d.tokens_in(d.model) >= 15_000, (
            f"{where}: ~20,000 tokens counted as {d.tokens_in(d.model)}, routed to "
            f"{d.model} (window {r.registry[d.model].context_window})"
        )


def test_a_key_in_a_base_urls_query_is_masked_and_scrubbed() -> None:
    """Beside the query fix: a credential in a base URL's query (`?key=...`) had shown in
    the deployment's repr (only a user:password was masked) and was not scrubbed from what
    an upstream echoes, as a key is. Other parameters (`api-version`) are neither."""
    from satisfice._redact import scrub
    from satisfice.executor import make_client
    from satisfice.providers.openai import OpenAIProvider
    from satisfice.registry import Deployment

    url = "https://gw.example/v1?api-version=2024-10-21&key=qK3vX9sLm2Pz8Rt"
    dep = Deployment(name="d", api="openai", base_url=url, model="m")
    assert "qK3vX9sLm2Pz8Rt" not in repr(dep) and "api-version=2024-10-21" in repr(dep)
    OpenAIProvider(make_client(), model="m", base_url=url)
    assert scrub("echo qK3vX9sLm2Pz8Rt, 2024-10-21") == "echo [redacted], 2024-10-21"


async def test_a_request_of_more_messages_than_any_api_takes_is_refused(
    up: LocalUpstream,
) -> None:
    """Beside the many-messages fix: more than 100,000 messages (Anthropic's API limit, the
    highest of any provider's) is an InputError saying so, before any work; a prompt of
    as many characters is one message, not refused."""
    from satisfice.errors import InputError

    up.default = reply("ok")
    async with router(up.url) as r:
        with pytest.raises(InputError, match="at most 100,000"):
            await r.chat([{"role": "user", "content": "a"}] * 100_001)
        assert not up.requests  # nothing was sent
        d = await r.decide("a " * 60_000)
        assert d.model


def test_every_error_survives_pickling() -> None:
    """Beside the pickling fix: every error class satisfice raises round-trips through
    pickle made from its message alone (a process pool's way), its fields kept."""
    import inspect
    import pickle

    from satisfice import errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, errors.SatisficeError)]  # fmt: skip
    assert len(classes) > 10
    for cls in classes:
        e = cls("what happened")
        again = pickle.loads(pickle.dumps(e))
        assert type(again) is cls and str(again) == str(e), cls
        assert getattr(again, "attempts", None) == getattr(e, "attempts", None), cls
