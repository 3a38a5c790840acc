"""Two `satisfice serve` replicas, each its own process, sharing a real redis-server: budgets,
rate limits and cooldowns hold across them, and Redis going away behaves as documented."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from satisfice.testing import LocalUpstream, status

from .chat_support import registry, wire
from .polling import until, until_async
from .servers import RedisServer, free_port, redis

MASTER = "master-redis-test-0123456789abcdef"
BIG = "word " * 2000  # ~$0.0002 on alpha, up to ~$0.0024 reserved (delta)


@contextlib.contextmanager
def replica(cfg: Path) -> Iterator[str]:
    with replica_process(cfg) as (url, _):
        yield url


@contextlib.contextmanager
def replica_process(cfg: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`satisfice serve` in its own process, ready; yields its URL and the process."""
    port = free_port()
    env = {**os.environ, "SATISFICE_MASTER_KEY": MASTER}
    p = subprocess.Popen(
        [sys.executable, "-m", "satisfice.cli", "serve", "--config", str(cfg), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # (a loaded host)
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            if p.poll() is not None or time.monotonic() > deadline:
                # ended first: reading stderr of a replica still starting waited for good
                p.kill()
                p.wait(30)
                raise RuntimeError(f"replica did not start: {p.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            time.sleep(0.05)
        yield url, p
    finally:
        if p.poll() is None:
            p.terminate()
        p.wait(30)
        if p.stderr is not None:
            p.stderr.close()


def in_flight(url: str) -> Callable[[], bool]:
    """Whether the server at `url` has a request in flight."""
    return lambda: httpx.get(url + "/health").json()["in_flight"] >= 1


def config(tmp_path: Path, upstream: str, toml: str = "") -> Path:
    """A config serving `registry(upstream)`, with `toml` added (tables of its own)."""
    reg = tmp_path / "r.toml"
    reg.write_text(registry(upstream).to_toml())
    cfg = tmp_path / "satisfice.toml"
    cfg.write_text(f'[registry]\npath = "{reg}"\n{toml}')
    return cfg


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[list[str], LocalUpstream, RedisServer]]:
    with LocalUpstream(record=False) as up, redis() as r:
        cfg = config(tmp_path, up.url, f'[state]\nbackend = "redis"\nredis_url = "{r.url}"\n')
        with replica(cfg) as a, replica(cfg) as b:
            yield [a, b], up, r


def _admin(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(url + path, json=body, headers={"authorization": f"Bearer {MASTER}"})
    assert r.status_code in (200, 201), r.text
    return r.json()  # type: ignore[no-any-return]


def _until_state(url: str, model: str, state: Any) -> None:
    """Wait (at most 5 s) until the replica at `url` sees `model`'s deployment in a state
    `state(s)` accepts: polled, where a fixed sleep for another process's sync could be
    outlasted by a stalled CI machine."""
    admin = {"authorization": f"Bearer {MASTER}"}
    seen: list[Any] = []

    def there() -> bool:
        health = httpx.get(url + "/admin/health", headers=admin).json()["deployments"]
        seen[:] = [d["state"] for k, d in health.items() if k.split("/")[0] == model]
        return bool(seen) and all(state(s) for s in seen)

    assert until(there), f"{model} on {url}: {seen}"


async def _fire(urls: list[str], key: str, n: int, content: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as c:

        async def one(i: int) -> httpx.Response:
            return await c.post(
                urls[i % len(urls)] + "/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={
                    "model": "auto",
                    "max_tokens": 100,
                    "messages": [{"role": "user", "content": content}],
                },
            )

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_a_budget_holds_across_replicas_under_concurrency(two: Any) -> None:
    urls, *_ = two
    budget = 0.01
    k = _admin(urls[0], "/admin/keys", {"name": "shared", "budget_usd": budget, "period": "day"})
    res = asyncio.run(_fire(urls, k["key"], 200, BIG))
    ok = [x for x in res if x.status_code == 200]
    refused = [x for x in res if x.status_code == 429]
    assert len(ok) + len(refused) == 200 and ok and refused
    assert all(x.json()["error"]["code"] == "budget_exceeded" for x in refused)
    spent = sum(float(x.headers["x-satisfice-cost-usd"]) for x in ok)
    assert spent <= budget  # reserved at the worst case: never over
    # the other replica's settlements land after its answers (they do not hold them up)
    for _ in range(50):
        s = httpx.get(urls[1] + "/admin/spend", headers={"authorization": f"Bearer {MASTER}"})
        (b,) = s.json()["budgets"]
        if b["held_usd"] == 0:
            break
        time.sleep(0.05)
    assert b["spent_usd"] == pytest.approx(spent, abs=1e-6) and b["held_usd"] == 0


def test_rate_limits_count_exactly_across_replicas(two: Any) -> None:
    urls, _, _ = two
    k = _admin(urls[0], "/admin/keys", {"name": "rpm", "rpm": 37})
    if time.time() % 60 > 50:  # do not straddle a minute window
        time.sleep(61 - time.time() % 60)
    res = asyncio.run(_fire(urls, k["key"], 100, "hi"))
    assert sum(x.status_code == 200 for x in res) == 37
    assert sum(x.status_code == 429 for x in res) == 63


def test_a_cooldown_seen_by_one_replica_is_avoided_by_the_other(two: Any) -> None:
    urls, up, _ = two
    up.script(wire("alpha"), status(429, retry_after=30), status(429, retry_after=30))
    a = httpx.post(
        urls[0] + "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
    ).json()
    assert a["model"] == "beta"  # replica A fell back, and cooled alpha
    _until_state(urls[1], "alpha", lambda s: s == "cooling")  # B syncs every 0.2 s
    b = httpx.post(
        urls[1] + "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
    ).json()
    assert b["model"] == "beta"
    assert [x["outcome"] for x in b["satisfice"]["attempts"]] == ["skipped", "ok"] or b[
        "satisfice"
    ]["routed_to"] == "beta"
    assert up.pending(wire("alpha")) == 1  # B never called alpha


def test_an_admin_disable_on_one_replica_holds_on_the_other(two: Any) -> None:
    """It was local to the replica that took the call; the other kept routing there."""
    urls, _, _ = two
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    _admin(urls[0], "/admin/deployments/alpha/disable", {})
    _until_state(urls[1], "alpha", lambda s: s == "disabled")  # B syncs every 0.2 s
    assert httpx.post(urls[1] + "/v1/chat/completions", json=body).json()["model"] == "beta"
    _admin(urls[0], "/admin/deployments/alpha/enable", {})
    _until_state(urls[1], "alpha", lambda s: s != "disabled")
    assert httpx.post(urls[1] + "/v1/chat/completions", json=body).json()["model"] == "alpha"


def test_redis_down_then_back(two: Any) -> None:
    urls, _, r = two
    k = _admin(urls[0], "/admin/keys", {"name": "b", "budget_usd": 1.0})
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"authorization": f"Bearer {k['key']}"}
    assert httpx.post(urls[0] + "/v1/chat/completions", json=body, headers=auth).status_code == 200
    r.stop()
    # budgets fail closed: 503 and says why; anonymous traffic (no budget) is still served
    x = httpx.post(urls[1] + "/v1/chat/completions", json=body, headers=auth, timeout=30)
    assert x.status_code == 503 and x.json()["error"]["code"] == "state_unavailable"
    y = httpx.post(urls[1] + "/v1/chat/completions", json=body, timeout=30)
    assert y.status_code == 200
    # the admin API says the same: retry later (a 400 told automation not to)
    master = {"authorization": f"Bearer {MASTER}"}
    a = httpx.get(urls[1] + "/admin/keys", headers=master, timeout=30)
    assert a.status_code == 503 and a.json()["error"]["type"] == "service_unavailable"
    r.start()
    z = httpx.post(urls[1] + "/v1/chat/completions", json=body, headers=auth, timeout=30)
    assert z.status_code == 200  # recovered: keys and counters kept (append-only file)


def test_sigterm_lets_50_streams_finish(tmp_path: Path) -> None:
    """SIGTERM during 50 streamed requests: every one ends with [DONE] (or an explicit
    error event), none is cut silently."""
    import signal

    from satisfice.testing import reply

    text = " ".join(f"w{i}" for i in range(30))
    with LocalUpstream(record=False, default=reply(text, chunk_delay=0.03)) as up:
        cfg = config(tmp_path, up.url, "[server]\nshutdown_grace_s = 30\n")
        with replica_process(cfg) as (url, p):
            body = {"model": "auto", "stream": True,
                    "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
            # all 50 are mid-stream when the signal goes
            outs = [o for _, o in asyncio.run(_sigterm_mid_stream(url, p, [(body, {})] * 50, 50))]
            # uvicorn re-raises the signal after its graceful shutdown: -15 is a clean exit
            assert p.wait(60) in (0, -signal.SIGTERM)
    done = [o for o in outs if o.rstrip().endswith("data: [DONE]")]
    errors = [o for o in outs if '"error"' in o]
    assert len(done) + len(errors) == 50 and len(done) == 50
    assert all(text.split()[-1] in o for o in done)


async def _sigterm_mid_stream(
    url: str,
    p: subprocess.Popen[bytes],
    asks: list[tuple[dict[str, Any], dict[str, str]]],
    streaming: int,
    settle: Any = None,
) -> list[tuple[int, str]]:
    """Send each (body, headers) to /v1/chat/completions at once; SIGTERM `p` when
    `streaming` of them have had their first event (and `settle()`, if given, holds:
    polled, at most 5 s); each answer's status and text."""
    import signal

    started = asyncio.Event()
    count = 0

    async def one(
        c: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, str]:
        nonlocal count
        out = ""
        async with c.stream(
            "POST", url + "/v1/chat/completions", json=body, headers=headers
        ) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: ") and not out:
                    count += 1
                    if count == streaming:
                        started.set()
                out += line + "\n"
        return resp.status_code, out

    async with httpx.AsyncClient(timeout=60) as c:
        tasks = [asyncio.create_task(one(c, b, h)) for b, h in asks]
        await asyncio.wait_for(started.wait(), 30)
        assert settle is None or await until_async(settle), (
            "what the SIGTERM was to cut never started"
        )
        p.send_signal(signal.SIGTERM)
        return await asyncio.gather(*tasks)


def _evalsha_calls(r: RedisServer) -> int:
    """EVALSHA commands redis-server has run (its INFO commandstats), once the count is
    still: a request's settlement runs after its answer is sent, so under load the last
    one may not have reached Redis when the caller has its answer (a count one short)."""
    import time

    import redis as redis_py

    def calls() -> int:
        with redis_py.Redis.from_url(r.url) as c:
            stats = c.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    n, still_since, give_up = calls(), time.monotonic(), time.monotonic() + 5
    while time.monotonic() < give_up and time.monotonic() - still_since < 0.3:
        time.sleep(0.05)
        if (m := calls()) != n:
            n, still_since = m, time.monotonic()
    return n


def test_a_key_changed_on_one_replica_is_seen_by_the_others_next_request(two: Any) -> None:
    """A budgeted or rate-limited key read in the last 30 s is served without reading it
    again: admission checks it against the stored record in the same script, so a revoke, a
    new limit or a new model list made on another replica holds on the next request."""
    urls, _, r = two
    admin = {"authorization": f"Bearer {MASTER}"}
    k = _admin(urls[0], "/admin/keys", {"name": "cached", "budget_usd": 1.0, "rpm": 1000})
    auth = {"authorization": f"Bearer {k['key']}"}
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}

    def ask(model: str = "auto") -> httpx.Response:
        return httpx.post(urls[1] + "/v1/chat/completions", headers=auth, timeout=30,
                          json={**body, "model": model})  # fmt: skip

    assert ask().status_code == 200  # replica 1 has read it
    before = _evalsha_calls(r)
    for _ in range(5):
        assert ask().status_code == 200
    # admission and settlement only: the key was not looked up again (3 a request before)
    assert _evalsha_calls(r) - before == 10

    patch = httpx.patch(
        urls[0] + f"/admin/keys/{k['id']}", json={"models": ["beta"]}, headers=admin
    )
    assert patch.status_code == 200, patch.text
    refused = ask("alpha")
    assert refused.status_code == 403 and "may not use 'alpha'" in refused.text
    assert ask("beta").status_code == 200

    patch = httpx.patch(urls[0] + f"/admin/keys/{k['id']}", json={"budget_usd": 0.0}, headers=admin)
    assert patch.status_code == 200, patch.text
    refused = ask("beta")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"

    assert httpx.delete(urls[0] + f"/admin/keys/{k['id']}", headers=admin).json()["revoked"]
    refused = ask("beta")
    assert refused.status_code == 401 and "revoked" in refused.text


def test_a_limit_raised_on_one_replica_is_not_refused_from_the_others_cache(two: Any) -> None:
    """Refusals on the key's own terms before admission (its model list, a tpm no minute
    fits) are not made from a read up to 30 s old: a list widened, a tpm raised or removed on
    another replica holds on the next request, and a revoked key is told so (401)."""
    urls, _, _ = two
    admin = {"authorization": f"Bearer {MASTER}"}
    k = _admin(urls[0], "/admin/keys", {"name": "w", "rpm": 1000, "models": ["beta"], "tpm": 60})

    def ask(model: str, max_tokens: int) -> httpx.Response:
        return httpx.post(urls[1] + "/v1/chat/completions", timeout=30,
                          headers={"authorization": f"Bearer {k['key']}"},
                          json={"model": model, "max_tokens": max_tokens,
                                "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip

    assert ask("beta", 5).status_code == 200  # replica 1 has read it
    change = {"models": ["alpha", "beta"], "tpm": 100000}
    assert httpx.patch(urls[0] + f"/admin/keys/{k['id']}", json=change, headers=admin).is_success
    assert ask("alpha", 5).status_code == 200
    assert ask("beta", 500).status_code == 200
    assert httpx.patch(urls[0] + f"/admin/keys/{k['id']}", json={"tpm": 10},
                       headers=admin).is_success  # fmt: skip
    assert ask("beta", 500).status_code == 429
    assert httpx.delete(urls[0] + f"/admin/keys/{k['id']}", headers=admin).json()["revoked"]
    assert ask("beta", 500).status_code == 401
    m = httpx.get(urls[1] + "/metrics").text  # counted once, by the request read anew
    assert [x for x in m.splitlines() if "budget_refusals_total{" in x] == [
        'satisfice_budget_refusals_total{budget="rate_limit",key="w"} 1.0'
    ]


def test_streams_past_the_shutdown_grace_end_with_an_error_and_keep_their_hold(
    tmp_path: Path,
) -> None:
    """Requests still running when shutdown_grace_s runs out had been cut by uvicorn's
    cancel with no word (the client saw a broken connection), streams settled at the text
    sent so far as if their clients had left; the README says a request a shutdown cuts
    keeps its hold. Now: streams end with an error event, a stream still waiting for its
    first piece and a request waiting for its answer are 503s, and each keeps its hold."""
    import signal

    from satisfice.testing import reply

    text = " ".join(f"w{i}" for i in range(60))
    with (
        LocalUpstream(record=False, default=reply(text, chunk_delay=0.2)) as up,
        redis() as r,
    ):
        up.script(wire("gamma"), reply("late", latency=8.0))  # its first piece: after the cut
        up.script(wire("delta"), reply("late", latency=8.0))  # a non-streamed answer, late
        cfg = config(
            tmp_path,
            up.url,
            f'[server]\nshutdown_grace_s = 1\n[state]\nbackend = "redis"\nredis_url = "{r.url}"\n',
        )
        with replica_process(cfg) as (url, p):
            key = _admin(url, "/admin/keys", {"name": "k", "budget_usd": 10})
            auth = {"authorization": f"Bearer {key['key']}"}

            def ask(model: str, stream: bool) -> tuple[dict[str, Any], dict[str, str]]:
                body = {"model": model, "stream": stream, "max_tokens": 200,
                        "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
                return body, auth

            asks = [ask("alpha", True)] * 3 + [ask("gamma", True), ask("delta", False)]

            # once the alpha streams are being written, and gamma's and delta's calls are out
            # (the upstream has taken their scripts: polled, not a fixed 0.3 s a stalled CI
            # machine can outlast)
            def out() -> bool:
                return up.pending(wire("gamma")) == 0 and up.pending(wire("delta")) == 0

            outs = asyncio.run(_sigterm_mid_stream(url, p, asks, 3, settle=out))
            assert p.wait(60) in (0, -signal.SIGTERM)
        for status, o in outs[:3]:  # streams being written: an error event ends them
            assert status == 200 and '"code":"shutting_down"' in o.replace(" ", ""), o[-400:]
            assert "[DONE]" not in o
        for status, o in outs[3:]:  # no answer begun: a 503 saying why
            assert status == 503 and "shutting_down" in o, (status, o[-400:])
        with replica_process(cfg) as (url, _):
            spend = httpx.get(url + "/admin/spend", headers={"authorization": f"Bearer {MASTER}"})
    (budget,) = spend.json()["budgets"]
    # each kept its whole hold (200 tokens out: $0.00008 on alpha, $0.0004 on gamma, $0.0008
    # on delta), far above the few words the streams had been sent (about $0.000003 each)
    assert budget["held_usd"] == 0 and budget["spent_usd"] > 3 * 0.00007 + 0.0011, budget


def test_a_request_still_sending_its_body_at_the_shutdown_cut_is_a_503(tmp_path: Path) -> None:
    """The server's cut at shutdown reached only calls and streams: a request still sending
    its body (or in admission) was cancelled by uvicorn, a bare 500 and an error logged.
    It is now a 503 saying why, as the others are."""
    import signal
    import socket

    with LocalUpstream(record=False) as up:
        cfg = config(tmp_path, up.url, "[server]\nshutdown_grace_s = 1\n")
        with replica_process(cfg) as (url, p):
            host, port = url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                          b"application/json\r\ncontent-length: 100\r\n\r\n{\"model\"")  # fmt: skip
                # the handler waits for the rest of the body: it is in flight (polled, not
                # a fixed sleep a stalled CI machine can outlast)
                assert until(in_flight(url)), "the request never reached its handler"
                p.send_signal(signal.SIGTERM)
                got = b""
                while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            assert p.wait(30) in (0, -signal.SIGTERM)
            err = p.stderr.read().decode()  # type: ignore[union-attr]
    assert got.startswith(b"HTTP/1.1 503"), got[:300]
    assert b"shutting_down" in got, got[-300:]
    assert "Exception in ASGI application" not in err, err[-2000:]


@pytest.mark.parametrize("reads_again", [True, False])
def test_a_stream_whose_reader_stopped_reading_ends_with_its_error_event_at_the_cut(
    tmp_path: Path, reads_again: bool
) -> None:
    """A shutdown cut landing while a stream's piece waited for a client that had stopped
    reading (the server's buffers full) cut the stream with no event, and uvicorn logged
    an ERROR: the stream now ends with its error event after what was written
    (`_http.Own.end_stream`), which has `DRAIN_S` past the grace to reach a client that
    reads again; one that never does has its connection closed, with a warning."""
    import json
    import signal
    import socket

    from satisfice.testing import reply

    text = " ".join(["x" * 100_000] * 60)  # 6 MB in 60 pieces: more than the buffers hold
    ledger = tmp_path / "ledger.jsonl"
    with LocalUpstream(record=False, default=reply(text)) as up:
        toml = f'[server]\nshutdown_grace_s = 1\n[ledger]\ntarget = "{ledger}"\n'
        cfg = config(tmp_path, up.url, toml)
        with replica_process(cfg) as (url, p):
            host, port = url.removeprefix("http://").split(":")
            msgs = [{"role": "user", "content": "hi"}]
            body = json.dumps({"model": "alpha", "stream": True, "messages": msgs}).encode()
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader's
                s.connect((host, int(port)))
                s.settimeout(30)
                head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                head += b"application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
                s.sendall(head + body)
                assert until(in_flight(url)), "the stream never began"
                time.sleep(1.0)  # the server fills its buffers (an unfilled one is cut too)
                p.send_signal(signal.SIGTERM)
                got = bytearray()
                if not reads_again:  # the server gives up on it, and says so
                    assert p.wait(30) in (0, -signal.SIGTERM)
                    err = p.stderr.read().decode()  # type: ignore[union-attr]
                    assert "bytes unsent" in err, err[-2000:]
                    assert "ERROR" not in err and "Exception in ASGI" not in err, err[-2000:]
                    return
                time.sleep(2.0)  # past the 1 s grace: the cut lands while the reader is away
                while chunk := s.recv(1 << 20):  # the client reads again: all of it, to EOF
                    got += chunk
            assert p.wait(30) in (0, -signal.SIGTERM)
            err = p.stderr.read().decode()  # type: ignore[union-attr]
    assert got.startswith(b"HTTP/1.1 200"), bytes(got[:300])
    assert len(got) < len(text), "the whole answer was sent: nothing was cut"
    tail = bytes(got[-600:])
    assert tail.endswith(b"\r\n0\r\n\r\n"), tail  # the chunked body ended, not broken off
    assert b'"code":"shutting_down"' in tail.replace(b" ", b""), tail
    assert "ERROR" not in err and "Exception in ASGI" not in err, err[-2000:]
    # its record says the server cut it (it had said its caller closed it)
    from satisfice.ledger import read_records

    (rec,) = read_records(ledger)
    assert "shutdown" in rec["error"], rec["error"]
