"""Where a request served by `satisfice serve` spends its server's CPU, phase by phase, and
what the loopback writes cost: the served p50's parts (bench_server.py gives its whole).

    python benches/serve_phases.py              # 3,000 sequential requests
    python benches/serve_phases.py --n 5000

`satisfice serve` runs as bench_server.py runs it (the bundled registry on the local upstream,
memory state, model "auto"), in a process of its own, with hooks added at the start of the
process (this file, run with `--child`) that read the serving thread's CPU clock
(`time.thread_time`: the noisy machine's stalls are not in it) at the phases' edges:

- head in: uvicorn is handed the request's bytes (its protocol's `data_received`)
- chat(): `Router.chat` is called (the server parsed, checked and admitted the request)
- provider: the provider's `complete` is called (routed; the call's plan made)
- exchange: the transport sends the request upstream (the request's bytes built)
- upstream in: the upstream's answer arrives (the last `data_received` of the call)
- provider done, chat() done, answer out: as named; the answer's write is timed on its own

and the two loopback writes (`send()` to the upstream, to the client) are timed on the same
clock. The client is this script, one request at a time (concurrency 1); the first fifth of
the requests are a warm-up. Medians. The hooks are wrappers around private functions: they
add a few µs to each phase, the same for every build.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bench_overhead import bench_registry, upstream
from bench_server import MASTER_KEY, free_port, spawn, wait_http

PHASES = [
    ("head in → chat() (uvicorn, parse, checks, admission)", "in", "chat"),
    ("chat() → provider (route, plan, executor)", "chat", "prov"),
    ("provider → exchange (the request's bytes)", "prov", "ex"),
    ("send() to the upstream (and taking a pooled connection)", "ex", "sent"),
    ("upstream in → provider done (head, body, JSON, usage)", "up", "prov_out"),
    ("provider done → chat() done (cost, health, result)", "prov_out", "chat_out"),
    ("chat() done → answer out (the answer's JSON and head)", "chat_out", "out"),
    ("send() of the answer to the client", "out", "written"),
]


def child(out: str) -> None:
    """`satisfice serve` with the hooks (see the module docstring); `out` gets the medians."""
    cpu = time.thread_time
    m: dict[str, float] = {}
    rows: list[dict[str, float]] = []

    from uvicorn.protocols.http import httptools_impl

    from satisfice import transport
    from satisfice.providers import openai
    from satisfice.router import Router
    from satisfice.server import _http

    head_in = httptools_impl.HttpToolsProtocol.data_received

    def data_received(self: object, data: bytes) -> None:
        m["in"] = cpu()
        head_in(self, data)  # type: ignore[arg-type]

    httptools_impl.HttpToolsProtocol.data_received = data_received  # type: ignore[method-assign]

    def timed(cls: type, name: str, tag: str) -> None:
        orig = getattr(cls, name)

        async def wrapper(self: object, *a: object, **k: object) -> object:
            m[tag] = cpu()
            r = await orig(self, *a, **k)
            m[tag + "_out"] = cpu()
            return r

        setattr(cls, name, wrapper)

    timed(Router, "chat", "chat")
    timed(openai.OpenAIProvider, "complete", "prov")
    timed(transport.PooledTransport, "_exchange", "ex")

    class Sending:  # the upstream connection's transport, its writes timed
        def __init__(self, t: asyncio.Transport) -> None:
            self._t = t

        def write(self, data: bytes) -> None:
            self._t.write(data)
            m["sent"] = cpu()

        def __getattr__(self, name: str) -> object:
            return getattr(self._t, name)

    made = transport._Conn.connection_made
    got = transport._Conn.data_received

    def connection_made(self: transport._Conn, t: asyncio.BaseTransport) -> None:
        made(self, Sending(t))  # type: ignore[arg-type]

    def up_received(self: transport._Conn, data: bytes) -> None:
        m["up"] = cpu()
        got(self, data)

    transport._Conn.connection_made = connection_made  # type: ignore[method-assign]
    transport._Conn.data_received = up_received  # type: ignore[method-assign]

    write_now = _http._OneWrite.write_now

    def answer(self: _http._OneWrite, data: bytes) -> None:
        m["out"] = cpu()
        write_now(self, data)
        m["written"] = cpu()
        if all(k in m for k in ("chat", "prov", "ex", "sent", "up")):
            rows.append(dict(m))
            if len(rows) % 250 == 0:
                warm = rows[len(rows) // 5 :]
                med = {a + ">" + b: statistics.median(r[b] - r[a] for r in warm) * 1e6
                       for _, a, b in PHASES}  # fmt: skip
                Path(out).write_text(json.dumps({"n": len(warm), "us": med}))
        m.clear()

    _http._OneWrite.write_now = answer  # type: ignore[method-assign]

    from satisfice.cli import main

    sys.argv = ["satisfice", *sys.argv[sys.argv.index("--child") + 2 :]]
    main()


async def drive(url: str, n: int) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "Say hello."}]}
    async with httpx.AsyncClient() as c:
        for _ in range(n):
            r = await c.post(url, json=body)
            r.raise_for_status()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="sequential requests")
    ap.add_argument("--child", metavar="OUT", help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.child:
        child(args.child)
        return
    n = max(args.n // 250, 1) * 250
    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as stack:
        tmp = Path(d)
        url = stack.enter_context(upstream())
        (tmp / "registry.toml").write_text(bench_registry(url).to_toml())
        cfg = tmp / "serve.toml"
        cfg.write_text(f'[registry]\npath = "{tmp / "registry.toml"}"\n')
        out, port = tmp / "phases.json", free_port()
        cmd = [sys.executable, __file__, "--child", str(out),
               "serve", "--config", str(cfg), "--port", str(port)]  # fmt: skip
        pid = stack.enter_context(
            spawn(cmd, tmp / "serve.log", {"SATISFICE_MASTER_KEY": MASTER_KEY})
        )
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/ready", pid, tmp / "serve.log", 60)
        asyncio.run(drive(base + "/v1/chat/completions", n))
        for _ in range(50):  # the last row's medians, written after its answer went out
            res = json.loads(out.read_text()) if out.exists() else {}
            if res.get("n") == n - n // 5:
                break
            time.sleep(0.1)
    us = res["us"]
    print(f"`python benches/serve_phases.py --n {n}` ({res['n']} requests after the warm-up)\n")
    print("| phase (serving thread's CPU) | median µs |\n|---|---:|")
    for name, a, b in PHASES:
        print(f"| {name} | {us[a + '>' + b]:.1f} |")
    own = sum(us[a + ">" + b] for name, a, b in PHASES if not name.startswith("send()"))
    sends = sum(us[a + ">" + b] for name, a, b in PHASES if name.startswith("send()"))
    print(f"| **satisfice's own, before and after the call** | **{own:.1f}** |")
    print(f"| **the two send()s** | **{sends:.1f}** |")


if __name__ == "__main__":
    main()
