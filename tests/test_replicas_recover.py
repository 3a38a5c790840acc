"""Replicas recover their shared state when Redis comes back (emptied, or after an
outage): an admin disable, a cooldown begun while it was away, a session pin on the
replica's own view. From an adversarial review: each test failed before its fix."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from satisfice.testing import LocalUpstream, status

from .chat_support import wire
from .polling import until
from .servers import redis
from .test_server_replicas import MASTER, _admin, config, replica

ADMIN = {"authorization": f"Bearer {MASTER}"}


def _spend(url: str) -> dict[str, Any]:
    (b,) = httpx.get(url + "/admin/spend", headers=ADMIN, timeout=30).json()["budgets"]
    return b  # type: ignore[no-any-return]


def _chat(url: str, key: str | None = None, **kw: Any) -> httpx.Response:
    body = {"model": "auto", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    body.update(kw)
    h = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/chat/completions", json=body, headers=h, timeout=30)


class _VolatileRedis:
    """redis-server on a free loopback port with no persistence (no AOF, no RDB): a restart
    on the same port comes back empty, as a cache-configured Redis or a failover to an
    empty one does."""

    def __init__(self) -> None:
        from .servers import RedisServer

        self._s = RedisServer()  # skips where redis-server is missing
        self.port, self.url = self._s.port, self._s.url

    def start(self) -> None:
        import subprocess

        from .servers import _wait_port

        assert self._s.binary is not None
        self._s.proc = subprocess.Popen(
            [self._s.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self._s.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_port(self.port)

    def stop(self) -> None:
        self._s.stop()


def _states(url: str, model: str) -> list[str]:
    health = httpx.get(url + "/admin/health", headers=ADMIN, timeout=30).json()["deployments"]
    return [d["state"] for k, d in health.items() if k.split("/")[0] == model]


def test_an_admin_disable_survives_a_redis_that_comes_back_empty(tmp_path: Path) -> None:
    """README: a deployment an admin disabled on one replica is avoided by the other, and
    everything recovers with Redis. A Redis restarted without persistence comes back empty:
    the other replica then takes the missing shared entry for an enable and routes to the
    disabled deployment again, while the replica the admin disabled it on keeps it disabled
    (and never writes it back): the two disagree for good."""
    import shutil

    with LocalUpstream(record=False) as up:
        r = _VolatileRedis()
        r.start()
        try:
            cfg = config(tmp_path, up.url, f'[state]\nbackend = "redis"\nredis_url = "{r.url}"\n')
            with replica(cfg) as a, replica(cfg) as b:
                _admin(a, "/admin/deployments/alpha/disable", {})
                assert until(lambda: _states(b, "alpha") == ["disabled"]), _states(b, "alpha")
                assert _chat(b).json()["model"] == "beta"
                r.stop()
                r.start()  # back on the same port, empty
                time.sleep(1.5)  # several syncs (every 0.2 s) on both replicas
                assert _states(a, "alpha") == ["disabled"]  # the admin's disable, on A
                assert until(lambda: _states(b, "alpha") == ["disabled"]), (
                    f"B re-enabled alpha the admin disabled on A: B {_states(b, 'alpha')}, "
                    f"A {_states(a, 'alpha')}"
                )
                assert _chat(b).json()["model"] == "beta"
        finally:
            r.stop()
            shutil.rmtree(r._s.dir, ignore_errors=True)


def test_a_cooldown_begun_while_redis_was_away_reaches_the_other_replica_once_it_is_back(
    tmp_path: Path,
) -> None:
    """README: shared cooldowns fail open on the replica's own view while Redis is away, and
    "All recover with Redis". A cooldown a replica begins during the outage (an upstream's
    429 with Retry-After: 60) is never shared once Redis is back: the other replica keeps
    calling the deployment the upstream told to wait a minute (each such call another 429)."""
    with LocalUpstream() as up, redis() as r:
        cfg = config(tmp_path, up.url, f'[state]\nbackend = "redis"\nredis_url = "{r.url}"\n')
        with replica(cfg) as a, replica(cfg) as b:
            r.stop()
            up.script(wire("alpha"), status(429, retry_after=60), status(429, retry_after=60))
            assert _chat(a).json()["model"] == "beta"  # A fell back, and cools alpha
            assert _states(a, "alpha") == ["cooling"]
            r.start()
            # 59 s of the upstream's 60 left: B should learn of it within a few syncs
            assert until(lambda: _states(b, "alpha") == ["cooling"]), (
                f"B never learned A's cooldown: B {_states(b, 'alpha')}, A {_states(a, 'alpha')}"
            )
            before = len(up.seen(wire("alpha")))
            assert _chat(b).json()["model"] == "beta"
            assert len(up.seen(wire("alpha"))) == before  # B did not call alpha


def test_a_session_pin_holds_on_the_replicas_own_view_while_redis_is_away(
    tmp_path: Path,
) -> None:
    """README: "When Redis is unreachable: ... rate limits, session pins and shared cooldowns
    fail open on the replica's own view". The replica keeps no view of pins: a session it
    pinned to beta a moment before the outage (and one it pins during it) is routed anew on
    its very next request, to alpha, and the provider's prompt cache goes cold."""
    with LocalUpstream(record=False) as up, redis() as r:
        cfg = config(tmp_path, up.url, f'[state]\nbackend = "redis"\nredis_url = "{r.url}"\n')
        with replica(cfg) as a:
            assert _chat(a, user="s1", model="beta").json()["model"] == "beta"  # pins s1
            assert _chat(a, user="s1").json()["model"] == "beta"  # the pin holds
            r.stop()
            got = _chat(a, user="s1").json()["model"]
            assert got == "beta", f"the replica's own pin of s1 was not kept: routed to {got}"
