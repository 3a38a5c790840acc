"""Every upstream fault, both wire formats, plain and streamed: the request either succeeds
through the next candidate or fails with the explicit error, inside its deadline, with a
record of every attempt. Then 1,000 mixed-fault requests: none hangs, no socket leaks."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from satisfice.errors import (
    AllAttemptsFailedError,
    BadRequestError,
    ProviderError,
    StreamInterruptedError,
)
from satisfice.result import ChatResult
from satisfice.state import Health, HealthConfig
from satisfice.testing import (
    Behavior,
    LocalUpstream,
    context_length,
    hang,
    malformed,
    reply,
    reset,
    status,
)

from .chat_support import open_fds, router, wire

MSGS = [{"role": "user", "content": "hello there"}]
READ_TIMEOUT = 0.25

# fault name -> (what the primary does, expected outcome, primary's recorded error type)
# "next": answered by the next candidate; "same": answered by the primary after a retry or
# with counted usage; an exception class: raised.
MATRIX: dict[str, tuple[list[Behavior], Any, str | None]] = {
    "429 long Retry-After": ([status(429, retry_after=30)], "next", "RetryableError"),
    "429 short Retry-After": ([status(429, retry_after=0.1)], "next", "RetryableError"),
    "500": ([status(500), status(500)], "next", "RetryableError"),
    "503": ([status(503), status(503)], "next", "RetryableError"),
    "read timeout (hang)": ([hang()], "next", "UpstreamTimeoutError"),
    "connection reset": ([reset(), reset()], "next", "RetryableError"),
    "malformed JSON": ([malformed(), malformed()], "next", "RetryableError"),
    "missing usage": ([reply(usage=False)], "same", None),
    "401": ([status(401)], "next", "AuthError"),
    "context length": ([context_length()], "larger", "ContextLengthError"),
    "400": ([status(400, message="bad field")], BadRequestError, "BadRequestError"),
    # five events: text has reached the caller in both wire formats
    "reset mid-stream": ([reset(after_chunks=5)], StreamInterruptedError, "RetryableError"),
}
# Bounds on a request's time, all well under the 2 s deadline it is given (which a request
# that waited out a Retry-After or a hang would reach), with room for a stalled CI machine.
DEADLINE = {"429 short Retry-After": 1.2, "read timeout (hang)": READ_TIMEOUT + 1.0}


async def run_one(r: Any, stream: bool, **kw: Any) -> ChatResult:
    if stream:
        result: ChatResult = await r.stream(MSGS, **kw).result()
        return result
    return await r.chat(MSGS, **kw)  # type: ignore[no-any-return]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize("fault", list(MATRIX))
async def test_fault_matrix(up: LocalUpstream, fault: str, api: str, stream: bool) -> None:
    behaviors, expected, error_type = MATRIX[fault]
    if fault == "reset mid-stream" and not stream:
        expected = "next"  # a plain answer cut short is retried, then falls back
        behaviors = [reset(after_chunks=4), reset(after_chunks=4)]
    # alpha speaks OpenAI, beta Anthropic; denying alpha makes beta the primary.
    primary, deny = ("alpha", ()) if api == "openai" else ("beta", ("alpha",))
    up.script(wire(primary), *behaviors)
    deadline = DEADLINE.get(fault, 1.2)
    async with router(up.url, read_timeout_s=READ_TIMEOUT) as r:
        t = time.perf_counter()
        try:
            res = await run_one(r, stream, deny=deny, timeout=2.0)
            outcome: Any = res
            attempts = res.attempts
        except ProviderError as e:
            outcome, attempts = e, e.attempts
        elapsed = time.perf_counter() - t
    assert elapsed < deadline, f"{fault}: took {elapsed:.3f}s"
    assert attempts, "every request keeps a record of its attempts"
    first = attempts[0]
    assert (first.model, first.deployment) == (primary, f"{primary}-dep")
    assert first.error_type == error_type
    if isinstance(expected, type):
        assert isinstance(outcome, expected), f"{fault}: got {outcome!r}"
        return
    assert isinstance(outcome, ChatResult), f"{fault}: got {outcome!r}"
    if expected == "same":
        assert outcome.model == primary
    elif expected == "larger":
        assert r.registry[outcome.model].context_window > r.registry[primary].context_window
    else:
        assert outcome.model != primary
    assert outcome.attempts[-1].outcome == "ok"
    assert all(a.outcome in ("error", "skipped") for a in outcome.attempts[:-1])
    assert outcome.usage.prompt_tokens > 0 and outcome.cost_usd is not None


async def test_1000_mixed_fault_requests_leave_nothing_hanging(up: LocalUpstream) -> None:
    rng = random.Random(5)
    faults = [
        lambda: status(429, retry_after=rng.choice([0.02, 0.1])),
        lambda: status(500),
        lambda: status(503),
        lambda: hang(),
        lambda: reset(),
        lambda: reset(after_chunks=3),
        lambda: malformed(),
        lambda: reply(usage=False),
        lambda: reply(latency=0.01),
        lambda: context_length(),
        lambda: status(400),
    ]
    models = [wire(m) for m in ("alpha", "beta", "gamma", "delta")]
    for _ in range(400):
        up.script(rng.choice(models), rng.choice(faults)())
    await asyncio.sleep(0)
    fds_before = open_fds()
    tasks_before = len(asyncio.all_tasks())
    sem = asyncio.Semaphore(48)
    outcomes: dict[str, int] = {}
    slowest = 0.0

    async def one(i: int) -> None:
        nonlocal slowest
        stream = i % 2 == 1
        kw = {"timeout": 1.0} if stream else {"timeout": 1.0, "hedge": i % 7 == 0}
        async with sem:
            t = time.perf_counter()
            try:
                await run_one(r, stream, **kw)
                kind = "ok"
            except (AllAttemptsFailedError, BadRequestError, StreamInterruptedError) as e:
                kind = type(e).__name__
            slowest = max(slowest, time.perf_counter() - t)
            outcomes[kind] = outcomes.get(kind, 0) + 1

    t0 = time.perf_counter()
    # With 40% faults the default breaker would (rightly) cool every model at once and fail
    # the rest fast; a tolerant one keeps most requests exercising the fallback paths.
    health = Health(
        HealthConfig(
            consecutive_failures=6, error_rate=0.9, base_cooldown_s=0.05, max_cooldown_s=0.2
        )
    )
    async with router(up.url, health, read_timeout_s=0.2) as r:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(1000))), 45)
    total = time.perf_counter() - t0
    assert sum(outcomes.values()) == 1000
    print("OUTCOMES", outcomes, f"{total:.2f}s", f"slowest {slowest:.3f}s")
    # most requests get through a fallback; the rest fail fast while every model cools
    assert outcomes.get("ok", 0) > 700, outcomes
    assert slowest < 1.0 + 0.3, f"a request took {slowest:.2f}s with a 1 s deadline"
    assert total < 40
    # nothing left behind: no tasks, no client sockets, no server-side connections
    await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) == tasks_before
    for _ in range(100):
        if up.open_connections == 0 and open_fds() <= fds_before:
            break
        await asyncio.sleep(0.02)
    assert up.open_connections == 0
    assert open_fds() <= fds_before
