"""The service's cost: `satisfice serve` and LiteLLM's proxy side by side in front of the same
local upstream, seen by one client over HTTP/1.1 on loopback.

    python benches/bench_server.py              # prints the markdown tables for the README
    python benches/bench_server.py --n 1000 --skip-mem
    python benches/bench_server.py --skip-mem --skip-redis --against OTHER/python  # A/B

Every piece is a process of its own: the upstream (`python -m satisfice.testing`), each server,
redis-server, and the client, which is this script: one asyncio loop, one `httpx.AsyncClient`
per contender with room for 64 keep-alive connections, on satisfice's `PooledTransport`
(satisfice/transport.py). httpx's own pool (`--httpx-pool`) rescans its connections on every
request and, at 64 of them, holds the client to 200-550 req/s on 2 CPUs, below a server in the
path, so the throughput columns would measure the client; on `PooledTransport` the same client
makes about 4,000 req/s against the upstream. Every contender gets the same kind of client.
The contenders:

- direct upstream: POST <upstream>/v1/chat/completions with gpt-6-luna's wire model name; the
  baseline of every "added" and "vs direct" column.
- uvicorn, fixed answer, no upstream: a bare ASGI app under uvicorn, started as `satisfice
  serve` starts it, that answers every request with a fixed completion and calls nothing. The
  cost of one more HTTP hop through a Python server here, whatever the server does: what a
  service can never take off its "added" column.
- forwarder: uvicorn + satisfice's transport, no routing: an ASGI app, run as `satisfice
  serve` runs it, that forwards each request as it came to the upstream on the router's own
  HTTP client (`PooledTransport`) and answers with the upstream's bytes. The least a router
  in this place adds with satisfice's server and client: two hops, one more round trip.
- satisfice serve: `satisfice serve` on the bundled registry with every model but gpt-6-luna
  disabled (benches/bench_overhead.py's `bench_registry`), memory state, no key, model "auto"
  (so every request is routed).
- satisfice serve, Redis + key: the same with `[state] backend = "redis"` on a redis-server
  started here on a free loopback port without persistence, called with a virtual key that has
  a budget and an rpm limit, so each request looks the key up, counts its rate window, reserves
  and settles its cost in Redis. Left out, with the reason, when redis-server is missing.
- LiteLLM proxy: `litellm --config` with the same model on the same upstream (`openai/<wire
  model>`, one uvicorn worker as satisfice runs, no database, LITELLM_LOG=ERROR, which turns its
  access log off as satisfice's is). It refuses to start without a master key, so it gets one
  and the client sends it. Left out, with the reason, when it cannot be started or does not
  answer a first request.

`--against DIR` adds `satisfice serve` from another build's python directory (on
PYTHONPATH), measured in the same rounds: wall time here moves between runs by more than a
change to the served path, so two builds are compared in one run (with Redis, each build's
Redis row too, each on its own database of the one redis-server). `--skip-redis` leaves the
Redis rows out.

After a warm-up of every path, three measurements are taken, contender by contender and
round by round (the order rotating each round) so that drift on the machine hits all alike:

- latency: sequential requests (concurrency 1), p50 and p99; "added" is the contender's minus
  the direct upstream's.
- throughput: requests/s with 64 requests in flight, non-streamed and streamed (`"stream":
  true`, the SSE read to `data: [DONE]`), each also as a ratio to the direct upstream.
- memory (after the rest, on a fresh `satisfice serve` with memory state): VmRSS of its process
  after a warm-up of 2,048 requests, then after --mem-n/2 and --mem-n more, all non-streamed at
  concurrency 64.

Client, upstream and servers share the machine's CPUs, so the direct upstream's throughput is
bounded by the client and the upstream as much as by anything else: the ratios say how much a
server in the path takes from what this machine does without one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench_overhead import MODEL, bench_registry, pct, upstream

import satisfice
from satisfice.transport import PooledTransport

CONCURRENCY = 64
MESSAGES = [{"role": "user", "content": "hi"}]
LITELLM: str | None = None  # --litellm
MASTER_KEY = "sk-bench-" + secrets.token_hex(32)  # satisfice's admin API and LiteLLM's proxy


@dataclass
class Contender:
    name: str
    url: str  # the chat completions endpoint
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    client: httpx.AsyncClient | None = None

    def body(self, stream: bool) -> dict[str, object]:
        body: dict[str, object] = {"model": self.model, "messages": MESSAGES}
        if stream:
            body["stream"] = True
        return body


async def call(c: Contender) -> None:
    assert c.client is not None
    r = await c.client.post(c.url, json=c.body(False), headers=c.headers)
    if r.status_code != 200:
        raise RuntimeError(f"{c.name}: HTTP {r.status_code}: {r.text[:300]}")


async def call_stream(c: Contender) -> None:
    assert c.client is not None
    done = False
    async with c.client.stream("POST", c.url, json=c.body(True), headers=c.headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{c.name}: HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():  # to the end, so the connection goes back to the pool
            done = done or line == "data: [DONE]"
    if not done:
        raise RuntimeError(f"{c.name}: the stream ended without data: [DONE]")


async def run(c: Contender, n: int, concurrency: int, stream: bool) -> tuple[list[float], float]:
    """Per-request latencies (s) and wall time for `n` requests at `concurrency`, after
    `concurrency` untimed ones that open (or refresh) the connections."""
    fn = call_stream if stream else call
    lat: list[float] = []
    await asyncio.gather(*(fn(c) for _ in range(concurrency)))

    async def worker(count: int) -> None:
        for _ in range(count):
            t = time.perf_counter()
            await fn(c)
            lat.append(time.perf_counter() - t)

    per, extra = divmod(n, concurrency)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(per + (i < extra)) for i in range(concurrency)))
    return lat, time.perf_counter() - t0


# -- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    """`cmd` as a child process with its output in `log`; yields its PID, and stops it (by that
    PID: SIGTERM, then SIGKILL after 15 s) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        try:
            yield proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)


def wait_http(url: str, pid: int, log: Path, timeout: float) -> None:
    """Until GET `url` answers 200; raises with the log's tail when the process exits first
    or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _exited(pid):
            break
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    tail = log.read_text(errors="replace").strip().splitlines()[-5:]
    raise RuntimeError(f"{url} not ready within {timeout:.0f} s: " + " / ".join(tail))


def _exited(pid: int) -> bool:
    """Whether our child `pid` has exited (gone, or a zombie not yet waited for)."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
    return True


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@contextlib.contextmanager
def satisfice_serve(
    tmp: Path,
    registry: Path,
    name: str,
    redis_url: str | None = None,
    python_dir: str | None = None,
) -> Iterator[tuple[str, int]]:
    """`satisfice serve` on 127.0.0.1 (`python_dir`: another build's, on PYTHONPATH); yields
    its base URL and PID once /ready answers 200."""
    cfg = tmp / f"{name}.toml"
    state = f'[state]\nbackend = "redis"\nredis_url = "{redis_url}"\n' if redis_url else ""
    cfg.write_text(f'[registry]\npath = "{registry}"\n{state}')
    port = free_port()
    cmd = [sys.executable, "-m", "satisfice.cli", "serve", "--config", str(cfg)]
    log = tmp / f"{name}.log"
    env = {"SATISFICE_MASTER_KEY": MASTER_KEY}
    if python_dir is not None:
        env["PYTHONPATH"] = python_dir
    with spawn([*cmd, "--port", str(port)], log, env) as pid:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/ready", pid, log, 60)
        yield base, pid


#: What both test servers below share: the ASGI lifespan answered, a request's body read whole.
ASGI_BASICS = """
async def request_body(scope, receive, send):
    \"\"\"The request's body; None for the lifespan, answered here to its end.\"\"\"
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            await send({"type": m["type"] + ".complete"})
            if m["type"] == "lifespan.shutdown":
                return None
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            return body
"""


#: A server that answers every chat request with a fixed completion and calls nothing: the
#: cost of one more HTTP hop through a Python ASGI server on this machine, whatever it does.
HOP_APP = """
import json

ANSWER = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
CHUNK = json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
    "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": None}]})
EVENTS = f"data: {CHUNK}\\n\\ndata: [DONE]\\n\\n".encode()


async def app(scope, receive, send):
    body = await request_body(scope, receive, send)
    if body is None:
        return
    sse = json.loads(body).get("stream")
    out, kind = (EVENTS, b"text/event-stream") if sse else (ANSWER, b"application/json")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", kind), (b"content-length", b"%d" % len(out))]})
    await send({"type": "http.response.body", "body": out})
"""


#: A server that forwards every chat request, as it came, to the upstream on the router's own
#: HTTP client (satisfice/transport.py) and answers with what the upstream answered: no
#: routing, no checks, no record. What `satisfice serve` costs at the least, on this machine,
#: with its server and its transport: two hops and one more round trip.
FORWARD_APP = """
import sys
import httpx
import uvicorn
from satisfice.server._http import http_protocol
from satisfice.transport import Poster, PooledTransport

UPSTREAM, PORT = sys.argv[1], int(sys.argv[2])
pool = PooledTransport()
poster = Poster(pool, httpx.URL(UPSTREAM + "/v1/chat/completions"),
                httpx.Headers({"content-type": "application/json"}))
TIMEOUTS = httpx.Timeout(30.0).as_dict()


async def app(scope, receive, send):
    body = await request_body(scope, receive, send)
    if body is None:
        return
    status, headers, stream = await pool.post(poster, body, TIMEOUTS)
    kind = next((v for k, v in headers if k.lower() == b"content-type"), b"application/json")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind)]})
    async for piece in stream:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning", access_log=False,
            proxy_headers=False, http=http_protocol())
"""


@contextlib.contextmanager
def forwarder(tmp: Path, upstream_url: str) -> Iterator[str]:
    """FORWARD_APP under uvicorn as `satisfice serve` runs it; yields its base URL."""
    (tmp / "forward_app.py").write_text(ASGI_BASICS + FORWARD_APP)
    port = free_port()
    cmd = [sys.executable, str(tmp / "forward_app.py"), upstream_url, str(port)]
    with spawn(cmd, tmp / "forward.log") as pid:
        yield answering(f"http://127.0.0.1:{port}", pid)


def answering(base: str, pid: int) -> str:
    """`base` once its server (process `pid`) answers a chat request, with any status, or
    after 30 s or its exit (its first measured request then says what went wrong)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _exited(pid):
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(base + "/v1/chat/completions", json={}, timeout=2)
            break
        time.sleep(0.2)
    return base


@contextlib.contextmanager
def asgi_hop(tmp: Path) -> Iterator[str]:
    """uvicorn, as `satisfice serve` runs it (one worker, no access log, no proxy-headers
    middleware), on HOP_APP; yields its base URL."""
    (tmp / "hop_app.py").write_text(ASGI_BASICS + HOP_APP)
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "hop_app:app", "--app-dir", str(tmp),
           "--port", str(port), "--log-level", "warning", "--no-access-log",
           "--no-proxy-headers"]  # fmt: skip
    log = tmp / "hop.log"
    with spawn(cmd, log) as pid:
        yield answering(f"http://127.0.0.1:{port}", pid)


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """A redis-server on a free loopback port, without persistence; yields its URL."""
    port = free_port()
    cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
           "--appendonly", "no", "--dir", str(tmp)]  # fmt: skip
    with spawn(cmd, tmp / "redis.log") as pid:
        deadline = time.monotonic() + 20
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), 1) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline or _exited(pid):
                raise RuntimeError("redis-server did not answer PING within 20 s")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"


def litellm_command() -> Path | None:
    """The `litellm` command: --litellm, else beside this Python, else on PATH."""
    if LITELLM:
        return Path(LITELLM)
    exe = Path(sys.executable).with_name("litellm")
    found = shutil.which("litellm")
    return exe if exe.exists() else None if found is None else Path(found)


@contextlib.contextmanager
def litellm_proxy(tmp: Path, upstream_url: str, wire: str) -> Iterator[str]:
    """LiteLLM's proxy on 127.0.0.1 with `wire` on the upstream; yields its base URL."""
    exe = litellm_command()
    if exe is None:
        raise RuntimeError("the litellm command is not installed: pip install 'litellm[proxy]'")
    if not exe.is_file() and shutil.which(str(exe)) is None:  # say so, not a traceback
        raise RuntimeError(f"{exe} does not exist (--litellm)")
    cfg = tmp / "litellm.yaml"
    cfg.write_text(
        f"model_list:\n  - model_name: {wire}\n    litellm_params:\n"
        f"      model: openai/{wire}\n      api_base: {upstream_url}/v1\n      api_key: unused\n"
    )
    port = free_port()
    env = {
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network at start
        "LITELLM_LOG": "ERROR",
    }
    log = tmp / "litellm.log"
    cmd = [str(exe), "--config", str(cfg), "--port", str(port), "--host", "127.0.0.1"]
    with spawn(cmd, log, env) as pid:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/health/liveliness", pid, log, 180)
        r = httpx.post(
            base + "/v1/chat/completions",
            json={"model": wire, "messages": MESSAGES},
            headers={"authorization": f"Bearer {MASTER_KEY}"},
            timeout=30,
        )
        if r.status_code != 200:
            raise RuntimeError(f"its first request got HTTP {r.status_code}: {r.text[:300]}")
        yield base


# -- measurement ---------------------------------------------------------------------------


@dataclass
class Results:
    lat: dict[str, list[float]]  # sequential latencies (s)
    rps: dict[str, float]  # at CONCURRENCY, non-streamed
    stream_rps: dict[str, float]  # at CONCURRENCY, streamed


def client(httpx_pool: bool) -> httpx.AsyncClient:
    """A client with room for CONCURRENCY keep-alive connections, on satisfice's transport
    unless `httpx_pool` (see the module docstring). Idle connections expire after 4 s, before
    uvicorn's 5 s keep-alive timeout closes them from the server side."""
    timeout = httpx.Timeout(30.0)
    if httpx_pool:
        limits = httpx.Limits(
            max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY, keepalive_expiry=4
        )
        return httpx.AsyncClient(limits=limits, timeout=timeout)
    pool = PooledTransport(
        max_connections=CONCURRENCY, max_per_host=CONCURRENCY, keepalive_expiry=4
    )
    return httpx.AsyncClient(transport=pool, timeout=timeout)


async def measure(contenders: list[Contender], n: int, rounds: int, httpx_pool: bool) -> Results:
    for c in contenders:
        c.client = client(httpx_pool)
    try:
        for c in contenders:  # warm up every path: connections, imports, caches
            await run(c, 512, CONCURRENCY, False)
            await run(c, 256, CONCURRENCY, True)
            await run(c, 64, 1, False)
        lat: dict[str, list[float]] = {c.name: [] for c in contenders}
        wall = {(c.name, stream): 0.0 for c in contenders for stream in (False, True)}
        for r in range(rounds):
            k = r % len(contenders)
            order = contenders[k:] + contenders[:k]
            for c in order:
                lat[c.name] += (await run(c, n // 2 // rounds, 1, False))[0]
            for stream in (False, True):
                for c in order:
                    wall[c.name, stream] += (await run(c, n // rounds, CONCURRENCY, stream))[1]
    finally:
        for c in contenders:
            assert c.client is not None
            await c.client.aclose()
    done = n // rounds * rounds
    return Results(
        lat,
        {c.name: done / wall[c.name, False] for c in contenders},
        {c.name: done / wall[c.name, True] for c in contenders},
    )


async def memory(c: Contender, pid: int, mem_n: int, httpx_pool: bool) -> list[tuple[int, float]]:
    """(requests since warm-up, RSS MiB) after a warm-up, after mem_n/2 and after mem_n."""
    async with client(httpx_pool) as c.client:
        await run(c, 2048, CONCURRENCY, False)
        points = [(0, rss_mib(pid))]
        for k in (1, 2):
            await run(c, mem_n // 2, CONCURRENCY, False)
            points.append((k * (mem_n // 2), rss_mib(pid)))
    return points


# -- report --------------------------------------------------------------------------------


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def report(res: Results, names: list[str]) -> str:
    direct = names[0]
    b50, b99 = pct(res.lat[direct], 0.5), pct(res.lat[direct], 0.99)
    rows = []
    added = {}
    for name in names:
        p50, p99 = pct(res.lat[name], 0.5), pct(res.lat[name], 0.99)
        added[name] = (p50 - b50, p99 - b99)
        rows.append(
            [
                name,
                f"{p50 * 1e3:.2f}",
                f"{p99 * 1e3:.2f}",
                "—"
                if name == direct
                else f"{added[name][0] * 1e3:+.2f} / {added[name][1] * 1e3:+.2f}",
                f"{res.rps[name]:,.0f}",
                f"{res.rps[name] / res.rps[direct]:.2f}",
                f"{res.stream_rps[name]:,.0f}",
                f"{res.stream_rps[name] / res.stream_rps[direct]:.2f}",
            ]
        )
    head = ["contender", "p50 ms", "p99 ms", "added p50 / p99 ms", f"req/s ({CONCURRENCY} conc.)",
            "vs direct", f"streamed req/s ({CONCURRENCY} conc.)", "vs direct"]  # fmt: skip
    out = [table(head, rows)]
    lite = "LiteLLM proxy"
    if lite in names:
        for name in names[1:]:
            if not name.startswith("satisfice"):
                continue
            sat99 = added[name][1]
            ratio = f"{added[lite][1] / sat99:.1f}×" if sat99 > 0 else "n/a (not above 0)"
            out.append(
                f"\n{name} vs {lite}: throughput {res.rps[name] / res.rps[lite]:.2f}×, "
                f"streamed {res.stream_rps[name] / res.stream_rps[lite]:.2f}×; "
                f"{lite}'s added p99 / {name}'s added p99: {ratio}."
            )
    return "\n".join(out)


def versions() -> str:
    parts = [f"Python {sys.version.split()[0]}", f"satisfice {satisfice.__version__}",
             f"httpx {httpx.__version__}"]  # fmt: skip
    exe = litellm_command()
    if exe is not None and exe.with_name("python").exists():  # the proxy's own environment
        out = subprocess.run(
            [str(exe.with_name("python")), "-c",
             "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if out.returncode == 0:
            parts.append(f"litellm {out.stdout.strip()}")
    if shutil.which("redis-server"):
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        )
        parts.append("redis-server " + out.stdout.split("v=")[1].split()[0])
    return ", ".join(parts)


def machine() -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"Machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, load average "
        f"{os.getloadavg()[0]:.2f} at the start; {versions()}."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000,
                    help="requests per contender per throughput cell (latency: n/2)")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mem-n", type=int, default=100_000, help="requests in the memory phase")
    ap.add_argument("--skip-mem", action="store_true", help="leave the memory phase out")
    ap.add_argument(
        "--litellm",
        metavar="PATH",
        help="the litellm command to run (e.g. from a "
        "venv with 'litellm[proxy]', whose dependencies would change this one's)",
    )
    ap.add_argument(
        "--against",
        metavar="PYTHON_DIR",
        help="also `satisfice serve` from another build's python directory",
    )
    ap.add_argument("--skip-redis", action="store_true", help="leave the Redis row out")
    ap.add_argument("--httpx-pool", action="store_true",
                    help="the client on httpx's own pool, not satisfice's transport")  # fmt: skip
    args = ap.parse_args()
    global LITELLM
    LITELLM = args.litellm
    print("`" + shlex.join(["python", *sys.argv]) + "`\n")
    print(machine() + "\n")
    notes = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as stack:
        tmp = Path(d)
        url = stack.enter_context(upstream())
        reg = bench_registry(url)
        wire = reg[MODEL].deployments[0].model
        registry = tmp / "registry.toml"
        registry.write_text(reg.to_toml())
        contenders = [Contender("direct upstream", url + "/v1/chat/completions", wire)]
        hop = stack.enter_context(asgi_hop(tmp))
        contenders.append(
            Contender("uvicorn, fixed answer, no upstream", hop + "/v1/chat/completions", wire)
        )
        fwd = stack.enter_context(forwarder(tmp, url))
        contenders.append(
            Contender("forwarder: uvicorn + satisfice's transport, no routing",
                      fwd + "/v1/chat/completions", wire)
        )  # fmt: skip
        base, _ = stack.enter_context(satisfice_serve(tmp, registry, "memory"))
        contenders.append(Contender("satisfice serve", base + "/v1/chat/completions", "auto"))
        if args.against:  # the same server on another build, in the same rounds
            base, _ = stack.enter_context(
                satisfice_serve(tmp, registry, "against", python_dir=args.against)
            )
            contenders.append(
                Contender(f"satisfice serve, {args.against}", base + "/v1/chat/completions", "auto")
            )
        if args.skip_redis:
            notes.append("satisfice serve, Redis + key: left out (--skip-redis).")
        elif shutil.which("redis-server") is None:
            notes.append("satisfice serve, Redis + key: left out, redis-server is not installed.")
        else:
            redis_url = stack.enter_context(redis_server(tmp))
            builds = [("", None), *([(f", {args.against}", args.against)] if args.against else [])]
            for i, (suffix, python_dir) in enumerate(builds):  # each its own key and database
                db_url = redis_url.rsplit("/", 1)[0] + f"/{i}"
                base, _ = stack.enter_context(
                    satisfice_serve(tmp, registry, f"redis{i}", db_url, python_dir=python_dir)
                )
                r = httpx.post(
                    base + "/admin/keys",
                    json={"name": "bench", "budget_usd": 1_000_000, "rpm": 100_000_000},
                    headers={"authorization": f"Bearer {MASTER_KEY}"},
                    timeout=10,
                )
                r.raise_for_status()
                auth = {"authorization": f"Bearer {r.json()['key']}"}
                contenders.append(
                    Contender(f"satisfice serve, Redis + key{suffix}",
                              base + "/v1/chat/completions", "auto", auth)
                )  # fmt: skip
        try:
            base = stack.enter_context(litellm_proxy(tmp, url, wire))
        except RuntimeError as e:
            notes.append(f"LiteLLM proxy: left out, it could not be started: {e}")
        else:
            contenders.append(
                Contender(
                    "LiteLLM proxy",
                    base + "/v1/chat/completions",
                    wire,
                    {"authorization": f"Bearer {MASTER_KEY}"},
                )
            )
        for note in notes:
            print(note + "\n")
        res = asyncio.run(measure(contenders, args.n, args.rounds, args.httpx_pool))
        took = time.monotonic() - t0
        pool = "httpx's own pool" if args.httpx_pool else "satisfice's PooledTransport"
        print(report(res, [c.name for c in contenders]))
        print(
            f"\nLatency: {len(res.lat[contenders[0].name])} sequential requests per contender; "
            f"throughput: {args.n // args.rounds * args.rounds} requests per contender and "
            f"mode, {args.rounds} interleaved rounds ({took:.0f} s with start-up, load average "
            f"{os.getloadavg()[0]:.2f} at the end); client: httpx.AsyncClient on {pool}, up to "
            f"{CONCURRENCY} connections per contender."
        )
        if args.skip_mem:
            return
        with satisfice_serve(tmp, registry, "mem") as (base, pid):
            mem = Contender("satisfice serve", base + "/v1/chat/completions", "auto")
            points = asyncio.run(memory(mem, pid, args.mem_n, args.httpx_pool))
    print(f"\n`satisfice serve` (memory state) RSS, {CONCURRENCY} concurrent requests:\n")
    print(
        table(
            ["requests after warm-up", "RSS MiB"],
            [[f"{k:,}", f"{v:.1f}"] for k, v in points],
        )
    )


if __name__ == "__main__":
    main()
