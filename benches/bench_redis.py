"""One Redis command's CPU in the calling process: redis-py's client, on the pool satisfice
used before (a `BlockingConnectionPool` with socket timeouts) and on its plain pool, against
satisfice's own handling of redis-py's connections (`satisfice.server.state._Connections`),
in one run, on a redis-server started here on a free loopback port.

    python benches/bench_redis.py            # prints the markdown table for the README
    python benches/bench_redis.py --n 5000 --rounds 5

Commands: PING, and the admission script by EVALSHA with the arguments a budgeted,
rate-limited request sends (`RedisState.admit`; a hold id each, so every call reserves).
CPU time (`time.process_time`), not wall time: the server's share is in another process, and
the machine's noise does not decide. The contenders take turns, round by round; the figure
is the median over rounds of each round's mean.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
import uvloop
from bench_server import redis_server

from satisfice.server.state import _ADMIT, Budget, RateCount, RedisState, _Connections

Call = Callable[[str], Awaitable[object]]  # a command by name: "PING" or "ADMIT"


def caller(run: Callable[..., Awaitable[object]], state: RedisState) -> Call:
    """A contender's command, on `run` (a client's `execute_command`, or `_Connections.call`)."""

    async def call(what: str) -> object:
        if what == "PING":
            return await run("PING")
        return await run("EVALSHA", *admission(state))

    return call


BUDGET = Budget("key:bench", 1e12, "month")


def admission(state: RedisState) -> list[str | int | bytes]:
    """EVALSHA's arguments after the name, as `RedisState.admit` sends them (a hold id each)."""
    hold = uuid.uuid4().hex
    budgets = [BUDGET.pinned(hold=hold)]
    keys, args = state._admission(budgets, 1e-6, RateCount("bench", 10**12, None, 100, hold), None)
    return [state._admit.sha, len(keys), *keys, *args]


async def measure(url: str, n: int, rounds: int) -> dict[tuple[str, str], float]:
    state = RedisState(url)
    await state._r.call("SCRIPT", "LOAD", _ADMIT)
    blocking = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=128, timeout=5, socket_timeout=2.0, socket_connect_timeout=2.0
        )
    )
    plain = aioredis.Redis(connection_pool=aioredis.ConnectionPool.from_url(url))
    contenders = {
        "redis-py, BlockingConnectionPool (satisfice before)": caller(
            blocking.execute_command, state
        ),
        "redis-py, ConnectionPool": caller(plain.execute_command, state),
        "satisfice `_Connections`": caller(_Connections(url).call, state),
    }
    per: dict[tuple[str, str], list[float]] = {}
    for what in ("PING", "ADMIT"):
        for r in range(rounds):
            names = list(contenders)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                call = contenders[name]
                for _ in range(n // 10):  # warm
                    await call(what)
                t0 = time.process_time()
                for _ in range(n):
                    await call(what)
                per.setdefault((name, what), []).append((time.process_time() - t0) / n)
    await blocking.aclose(close_connection_pool=True)
    await plain.aclose(close_connection_pool=True)
    await state.close()
    return {k: statistics.median(v) for k, v in per.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="commands per contender per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print("`python benches/bench_redis.py " + " ".join(sys.argv[1:]) + "`\n")
    with tempfile.TemporaryDirectory() as d, redis_server(Path(d)) as url:
        res = uvloop.run(measure(url, args.n, args.rounds))
    ref = "satisfice `_Connections`"
    print("| client | PING µs CPU | vs satisfice | admission (EVALSHA) µs CPU | vs satisfice |")
    print("|---|---:|---:|---:|---:|")
    for name in dict.fromkeys(k[0] for k in res):
        ping, admit = res[(name, "PING")], res[(name, "ADMIT")]
        print(
            f"| {name} | {ping * 1e6:.1f} | {ping / res[(ref, 'PING')]:.2f}× "
            f"| {admit * 1e6:.1f} | {admit / res[(ref, 'ADMIT')]:.2f}× |"
        )


if __name__ == "__main__":
    main()
