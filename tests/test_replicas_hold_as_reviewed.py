"""`satisfice serve` as a scaled-out service, as reviewed: replicas on one real redis-server,
Redis stopped and restarted, SIGTERM while Redis is away. Every test here failed on the
code it was written against; each docstring says the defect and what should hold instead."""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from satisfice.server._http import DRAIN_S
from satisfice.testing import LocalUpstream, reply

from .polling import until
from .servers import redis
from .test_server_replicas import MASTER, _admin, config, replica, replica_process

ADMIN = {"authorization": f"Bearer {MASTER}"}
WORDS = " ".join(f"w{i}" for i in range(20))


def _model(url: str, **kw: Any) -> str:
    body = {"model": "auto", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    body.update(kw)
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["model"])


def _redis_back(url: str) -> bool:
    """Whether the replica at `url` reaches Redis again (its admin API answers 503 while
    Redis is away)."""
    return httpx.get(url + "/admin/keys", headers=ADMIN, timeout=30).status_code == 200


def test_a_session_pin_set_while_redis_was_away_is_forgotten_once_it_is_back(
    tmp_path: Path,
) -> None:
    """Defect: README: "session pins ... fail open on the replica's own view (its own rate
    window, the pins it set or read...)" and "All recover with Redis". A pin a replica sets
    while Redis is away is kept on its own view and holds during the outage (session s2 on
    beta, its next turn beta), but it is never written to Redis once Redis is back, and the
    replica then reads Redis alone: the session's next turn, on the very replica that pinned
    it, is routed anew (observed: alpha, on A and on B; a pin set before the outage stays
    beta). Same with a Redis restarted empty: every pin goes, though each replica still
    holds its own view of them. Expected: a pin set during the outage is written once Redis
    is back (as a cooldown or a disable begun then is), so the session stays on beta on
    every replica; at least the replica that set it keeps it."""
    with LocalUpstream(record=False) as up, redis() as r:
        cfg = config(tmp_path, up.url, f'[state]\nbackend = "redis"\nredis_url = "{r.url}"\n')
        with replica(cfg) as a, replica(cfg) as b:
            assert _model(a, user="s1", model="beta") == "beta"  # pinned before the outage
            r.stop()
            assert _model(a, user="s2", model="beta") == "beta"  # pinned during it
            assert _model(a, user="s2") == "beta"  # the replica's own view holds it
            r.start()  # back, with everything it held (append-only file)
            assert until(lambda: _redis_back(a) and _redis_back(b), 15)
            time.sleep(1.5)  # several syncs; past the unreachable window
            assert _model(a, user="s1") == "beta"  # the pin Redis kept
            on_a, on_b = _model(a, user="s2"), _model(b, user="s2")
    assert (on_a, on_b) == ("beta", "beta"), (
        f"session s2, pinned to beta on A while Redis was away, went to A: {on_a}, B: {on_b}"
    )


def _streams_then_sigterm_with_redis_away(
    tmp_path: Path, grace_s: float
) -> tuple[float, list[tuple[str, float | None]], dict[str, Any], str]:
    """One replica on Redis, a budgeted key, 5 streams by the openai client (about 1 s
    each); once every stream has its first chunk Redis is stopped, then SIGTERM. Returns
    how long the process took to exit after the signal, each stream's outcome and cost (its
    usage chunk's `satisfice.cost_usd`), and the budget as a new replica reads it once
    Redis is back, and what the process wrote to stderr."""
    with (
        LocalUpstream(record=False, default=reply(WORDS, chunk_delay=0.05)) as up,
        redis() as r,
    ):
        toml = f'[server]\nshutdown_grace_s = {grace_s}\n[state]\nbackend = "redis"\n'
        cfg = config(tmp_path, up.url, toml + f'redis_url = "{r.url}"\n')
        with replica_process(cfg) as (url, p):
            key = _admin(url, "/admin/keys", {"name": "k", "budget_usd": 5.0, "period": "total"})
            first = threading.Barrier(6)
            outs: list[tuple[str, float | None]] = []

            def one() -> None:
                c = openai.OpenAI(base_url=url + "/v1", api_key=key["key"], max_retries=0)
                text, cost, waited = "", None, False
                try:
                    s = c.chat.completions.create(
                        model="auto", stream=True, max_tokens=100,
                        messages=[{"role": "user", "content": "hi"}],
                        stream_options={"include_usage": True},
                    )  # fmt: skip
                    for ch in s:
                        if not waited:
                            waited = True
                            first.wait(30)
                        if ch.choices and ch.choices[0].delta.content:
                            text += ch.choices[0].delta.content
                        extra = ch.model_extra or {}
                        if "satisfice" in extra:
                            cost = extra["satisfice"].get("cost_usd")
                    outs.append(("done" if text.endswith("w19") else "short", cost))
                except Exception as e:  # the outcome is what is checked
                    outs.append((type(e).__name__, cost))
                finally:
                    c.close()

            threads = [threading.Thread(target=one) for _ in range(5)]
            for t in threads:
                t.start()
            first.wait(30)  # every stream is under way
            r.stop()  # Redis goes away before any of them settles
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            for t in threads:
                t.join(60)
            try:
                p.wait(60)
            finally:
                took = time.monotonic() - t0
            said = p.stderr.read().decode() if p.stderr is not None else ""
        r.start()
        with replica(cfg) as fresh:
            (budget,) = httpx.get(fresh + "/admin/spend", headers=ADMIN, timeout=30).json()[
                "budgets"
            ]
    return took, outs, budget, said


def test_a_sigterm_while_redis_is_away_exits_within_the_grace(tmp_path: Path) -> None:
    """Defect: with Redis away at SIGTERM, `Service.shutdown` retries the queued settlements
    for a fixed 10 s after uvicorn's graceful shutdown, whatever `shutdown_grace_s` says:
    with a 2 s grace and 5 streams that all completed about 1 s after the signal, the
    process exited about 11-13 s after SIGTERM (observed 12.7 s with a 5 s grace), past
    the grace and past the grace plus `DRAIN_S` that uvicorn itself is given
    (`_http.shutdown_timeout`); an orchestrator sized on the grace SIGKILLs it mid-way.
    Expected: the process exits within the grace (whole seconds) plus `DRAIN_S`."""
    grace = 2.0
    took, outs, _, _ = _streams_then_sigterm_with_redis_away(tmp_path, grace)
    assert [o for o, _ in outs] == ["done"] * 5, outs  # the streams themselves are fine
    bound = math.ceil(grace) + DRAIN_S
    assert took <= bound + 0.5, f"exited {took:.1f} s after SIGTERM (grace {grace} s)"


def test_spend_lost_at_a_shutdown_while_redis_is_away_is_said_with_its_sum(
    tmp_path: Path,
) -> None:
    """Defect: 5 streams answered in full (each billed, its usage chunk priced), Redis away
    when they end, the replica then stopped with SIGTERM (a rolling deploy during a Redis
    blip): their settlements were dropped at exit with a log line giving their count only,
    so nothing said what the budgets missed. Expected (README: the spend of settlements
    the store never took before the process exits is not counted): the exit's error line
    gives their sum in USD, what the answers were billed, and the budget they miss."""
    _, outs, budget, said = _streams_then_sigterm_with_redis_away(tmp_path, 30.0)
    assert [o for o, _ in outs] == ["done"] * 5, outs
    billed = sum(c for _, c in outs if c is not None)
    assert billed > 0, outs
    import re

    m = re.search(r"their spend, \$([0-9.]+) in all, is not counted in budgets (\S+)", said)
    assert m is not None, said[-2000:]
    assert abs(float(m.group(1)) - billed) < 1e-6, (m.group(0), billed)
    assert budget["spent_usd"] == 0.0  # as said: the store never took it


async def test_a_redis_replicas_memory_stays_flat_under_many_sessions() -> None:
    """Defect: README's goal "memory of a replica flat after warm-up" (met: +0.1 MiB over
    the second 100,000 requests, measured without sessions). With Redis state every pin a
    replica sets or reads is also kept in its own view (`RedisState._local`, a
    MemoryState), for the pin's hour, with no bound: its sweep drops expired pins only. A
    service whose callers send a session per conversation (`user`, `prompt_cache_key`, an
    agent's `metadata.user_id`) grows by each session's entry for an hour: served, one
    replica (after 5,000 requests' warm-up) grew 2.2, 3.8, 5.9, 7.7 MiB after 10k, 20k,
    30k, 40k requests with a new `user` each, and stayed at +0.5 MiB (0.5, 0.5, 0.5, 0.5)
    with one `user` throughout; here, in-process, 40,000 sessions after a 20,000-session
    warm-up held +7.6 MiB (about 200 B a session; 1,000 new sessions a second would be
    ~700 MiB an hour; the test runs 15,000 after 5,000: +2.6 MiB). Expected: the
    replica's own view of the pins (a fallback for an outage; Redis holds them) is
    bounded, so memory is flat after warm-up."""
    import gc
    import tracemalloc

    from satisfice.server.state import RedisState

    with redis() as server:
        s = RedisState(server.url)
        try:
            for i in range(5_000):  # warm-up
                await s.set_pin(f"key1:warm-{i}", "beta")
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for i in range(15_000):
                await s.set_pin(f"key1:conversation-{i}", "beta")
            gc.collect()
            grew = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
        finally:
            await s.close()
    assert grew < 1 << 20, f"15,000 sessions after warm-up: +{grew / (1 << 20):.1f} MiB"


def test_a_stream_whose_client_leaves_while_its_failure_settles_does_not_hold_for_hours(
    tmp_path: Path,
) -> None:
    """Defect: a stream whose call fails before its first piece settles its reservation
    inline (`app._stream`, `await svc.settle(...)` in its `except`), while its task is
    still registered on the connection, so a client that leaves during that settlement
    cancels it: the CancelledError is not the StateUnavailable that queues a settlement,
    so nothing is queued, and the lease stays in `RedisState._leases`, renewed every
    minute for HOLD_MAX_S (6 hours). Observed: Redis slow (here: stopped with SIGSTOP for
    2 s) when the upstream's 400 comes, the client closes 0.8 s later; Redis back, the
    budget keeps held_usd 0.0000408 (the whole hold) with nothing settling it (the same
    replica's renewals keep it for 6 hours; README: a replica's unsettled hold is released
    5 minutes after its last renewal, and one held 6 hours is "a bug"). Non-streamed
    requests and streams after their first piece settle off the connection's task
    (`settle_soon`, or after the task is taken off the connection) and are not hit.
    Expected: the settlement lands once Redis answers (held_usd back to 0 within seconds),
    as every other settlement the store missed does."""
    import json
    import os
    import socket

    from satisfice.testing import status

    from .chat_support import wire

    with LocalUpstream(record=False) as up, redis() as r:
        cfg = config(tmp_path, up.url, f'[state]\nbackend = "redis"\nredis_url = "{r.url}"\n')
        with replica(cfg) as url:
            key = _admin(url, "/admin/keys", {"name": "k", "budget_usd": 5.0, "period": "total"})
            up.script(wire("alpha"), status(400, message="bad request", latency=1.0))
            msgs = [{"role": "user", "content": "hi"}]
            body = json.dumps(
                {"model": "alpha", "stream": True, "max_tokens": 100, "messages": msgs}
            ).encode()
            host, port = url.removeprefix("http://").split(":")
            assert r.proc is not None
            redis_pid = r.proc.pid
            stopped = False
            try:
                with socket.create_connection((host, int(port)), timeout=10) as s:
                    s.sendall(
                        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                        b"application/json\r\nauthorization: Bearer " + key["key"].encode()
                        + b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body
                    )  # fmt: skip
                    t0 = time.monotonic()
                    # admitted, its call out (the upstream took its script): then Redis hangs
                    assert until(lambda: up.pending(wire("alpha")) == 0), "no call was made"
                    os.kill(redis_pid, signal.SIGSTOP)
                    stopped = True
                    # the 400 comes at 1.0 s; its settlement waits on Redis until ~3 s
                    time.sleep(max(0.0, 1.8 - (time.monotonic() - t0)))
                # the client has left, mid-settlement
                time.sleep(0.4)
            finally:
                if stopped:
                    os.kill(redis_pid, signal.SIGCONT)

            def held() -> float:
                got = httpx.get(url + "/admin/spend", headers=ADMIN, timeout=30)
                if got.status_code != 200:
                    return -1.0
                (b,) = got.json()["budgets"]
                return float(b["held_usd"])

            settled = until(lambda: held() == 0.0, 6)
            left = held()
    assert settled, f"held_usd {left} with Redis back 6 s: the failed stream's hold is kept"
