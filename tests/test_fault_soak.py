"""3,000 requests against an upstream that misbehaves at random, both wire formats, chat
and stream: every one ends in an answer or a SatisficeError, within its deadline + 0.5 s (plus what
the event loop was late by, on a starved machine).
Never a raw Python exception, never a hang. Bounded: 30 batches of 100 concurrent."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from satisfice import SatisficeError
from satisfice.result import ChatResult
from satisfice.testing import (
    LocalUpstream,
    context_length,
    hang,
    malformed,
    reply,
    reset,
    status,
)

from .chat_support import ORDER, router, wire

MSGS = [{"role": "user", "content": "What is the capital of France?"}]
FAULTS = [
    lambda: reply("Paris."),
    lambda: reply("Paris.", usage=False),
    lambda: status(429, retry_after=random.choice([0.05, 0.5, 30.0, float("nan")])),
    lambda: status(500),
    lambda: status(503),
    lambda: status(400, message="bad request"),
    lambda: hang(),
    lambda: reset(),
    lambda: reset(after_chunks=random.randint(1, 4)),
    lambda: malformed(),
    lambda: context_length(),
    lambda: reply("slow", latency=0.1, chunk_delay=0.01),
]
DEADLINE = 1.0


async def one(r: Any, stream: bool) -> tuple[object, float]:
    t = time.perf_counter()
    try:
        if stream:
            out: object = await r.stream(MSGS, timeout=DEADLINE).result()
        else:
            out = await r.chat(MSGS, timeout=DEADLINE)
    except SatisficeError as e:
        out = e
    return out, time.perf_counter() - t


async def _lag(into: list[float]) -> None:
    """The event loop's worst lateness: on a starved machine (a busy CI host) a deadline's
    timer fires late by this much, through no fault of the code under test."""
    while True:
        t = time.perf_counter()
        await asyncio.sleep(0.005)
        into[0] = max(into[0], time.perf_counter() - t - 0.005)


async def test_three_thousand_mixed_faults_end_cleanly(up: LocalUpstream) -> None:
    random.seed(7)
    outcomes: dict[str, int] = {}
    slowest = 0.0
    lag = [0.0]
    watch = asyncio.get_running_loop().create_task(_lag(lag))
    async with router(up.url, read_timeout_s=0.3, stream_idle_timeout_s=0.3) as r:
        for batch in range(30):
            for m in ORDER:
                up.script(wire(m), *[random.choice(FAULTS)() for _ in range(40)])
            results = await asyncio.gather(
                *(one(r, stream=(batch + i) % 2 == 1) for i in range(100)),
                return_exceptions=True,
            )
            for res in results:
                assert not isinstance(res, BaseException), f"raw exception: {res!r}"
                out, took = res
                assert isinstance(out, ChatResult | SatisficeError), repr(out)
                kind = type(out).__name__
                outcomes[kind] = outcomes.get(kind, 0) + 1
                slowest = max(slowest, took)
            up.reset_script()
            for m in ORDER:  # a scripted 401 or a breaker must not end the run
                r.enable(m)
    watch.cancel()
    print(f"outcomes over 3,000 requests: {outcomes}; slowest {slowest:.2f}s, lag {lag[0]:.2f}s")
    assert sum(outcomes.values()) == 3000
    assert outcomes.get("ChatResult", 0) > 1000  # fallbacks work through the faults
    # the deadline, plus what a starved loop adds (a timer late, then the cleanup it runs)
    assert slowest <= DEADLINE + 0.5 + 3 * lag[0]
    up.drop_connections()
