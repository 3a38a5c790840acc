"""Instructions (callgrind) per `route()`, per `chat()` and per served request, this build and
optionally another, side by side.

    python benches/instructions.py route                 # 100 B and 4 KB prompts
    python benches/instructions.py chat                  # chat() and the direct calls, in process
    python benches/instructions.py serve                 # one request through `satisfice serve`
    python benches/instructions.py route --against OTHER/python

Wall time on a shared 2-core VM moves by tens of percent between runs, more than most
changes here; an instruction count does not. Needs valgrind and an interpreter with its
symbols (a pyenv build has them).

- route: the routes (the same prompts as `bench_route.py`: 16 different slices of the
  held-out prose, each routed once first) run inside one `functools.reduce` call, and
  callgrind counts only inside it (`--toggle-collect`), so that the interpreter's start,
  `Router()` and the tokenizers' build (whose hash maps are seeded at random, so its count
  moves by thousands a process) are out of the figure.
- chat: the same way, sequential calls answered at once from memory (`bench_own_cpu.py
  --in-process`'s transport): the bare call (`client.post`), the lean call (the request
  built as the providers build theirs), the provider's own call (`provider.complete`) and
  `router.chat()`. chat() less the provider's call is the router's work around the call.
- serve: `satisfice serve` (the bundled registry on the local upstream, as
  `bench_server.py` runs it) under callgrind; the counters are zeroed after 200 warm-up
  requests and dumped after the measured ones (`callgrind_control`), every thread counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx

BENCHES = str(Path(__file__).resolve().parent)

ROUTE = """
import functools, sys
sys.path.insert(0, {benches!r})
from corpus import samples
from satisfice import Router, _core
r = Router()
_core.wait_for_tokenizers()  # after Router(): it starts the build this waits for
prose = "".join(samples("prose", "eval")) + "".join(samples("prose", "fit"))
size, n = int(sys.argv[1]), int(sys.argv[2])
step = max((len(prose) - size) // 16, 1)
ps = [prose[i * step : i * step + size] for i in range(16)]
for p in ps:
    r.route(p)
functools.reduce(lambda _, i: r.route(ps[i & 15]), range(n), None)  # the counted part
"""

CHAT = """
import asyncio, functools, json, sys
sys.path.insert(0, {benches!r})
import httpx
from bench_own_cpu import ANSWER, Canned, MESSAGES, MODEL, bench_registry
from satisfice import Router, _core
from satisfice.executor import _Client
from satisfice.providers import ChatRequest
url = "http://127.0.0.1:9"
client = _Client(transport=Canned(), timeout=httpx.Timeout(5.0))
router = Router(bench_registry(url)).configure(http=client)
_core.wait_for_tokenizers()  # after Router(): it starts the build this waits for
endpoint = httpx.URL(url + "/v1/chat/completions")
headers = {{"content-type": "application/json"}}
merged = client.merged_headers(headers, endpoint)
timeout = {{"timeout": httpx.Timeout(5.0).as_dict()}}
io = router._executor()
provider = io._provider(io.targets(router.registry, MODEL)[0])

async def bare():
    body = json.dumps({{"model": MODEL, "messages": MESSAGES}}).encode()
    r = await client.post(endpoint, content=body, headers=headers)
    assert json.loads(r.content)["choices"][0]["message"]["content"]

async def lean():
    body = json.dumps({{"model": MODEL, "messages": MESSAGES}}).encode()
    h = httpx.Headers(merged)
    h["Content-Length"] = str(len(body))
    req = httpx.Request("POST", endpoint, headers=h, stream=httpx.ByteStream(body),
                        extensions=timeout)
    r = await client.send(req)
    assert json.loads(r.content)["choices"][0]["message"]["content"]

async def call():
    await provider.complete(ChatRequest([dict(m) for m in MESSAGES]), httpx.Timeout(5.0))

async def chat():
    await router.chat(MESSAGES)

which, n = sys.argv[1], int(sys.argv[2])
fn = {{"bare": bare, "lean": lean, "provider": call, "chat": chat}}[which]

async def calls(k):
    for _ in range(k):
        await fn()

loop = asyncio.new_event_loop()
loop.run_until_complete(calls(300))  # warm: caches, the tokenizers
functools.reduce(lambda *_: loop.run_until_complete(calls(n)), range(1), None)  # counted
"""


def _python() -> str:
    return os.path.realpath(sys.executable)


def _env(python_dir: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if python_dir is not None:
        env["PYTHONPATH"] = python_dir
    return env


def per_call(python_dir: str | None, child: str, args: list[str], n: int) -> float:
    """Instructions inside the child's one `functools.reduce`, per call."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         "--toggle-collect=functools_reduce", _python(), "-c", child.format(benches=BENCHES),
         *args, str(n)],
        capture_output=True, text=True, env=_env(python_dir), check=True,
    )  # fmt: skip
    m = re.search(r"refs:\s+([\d,]+)", out.stderr)
    if m is None:
        raise RuntimeError(f"no instruction count in valgrind's output: {out.stderr[-500:]}")
    total = int(m.group(1).replace(",", ""))
    if total < n * 1000:  # no call costs under 1,000: the toggle found no symbol
        raise RuntimeError("callgrind counted nothing inside functools.reduce: this "
                           "interpreter has no symbols for it")  # fmt: skip
    return total / n


def per_request(python_dir: str | None, n: int, redis: bool = False) -> float:
    """Instructions of `satisfice serve` (every thread) per sequential request; with `redis`,
    on the Redis state backend and called with a virtual key that has a budget and an rpm
    limit (bench_server.py's "Redis + key" contender)."""
    from bench_overhead import bench_registry, upstream
    from bench_server import MASTER_KEY, Contender, call, client, free_port, redis_server, wait_http

    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as stack:
        tmp = Path(d)
        url = stack.enter_context(upstream())
        registry = tmp / "registry.toml"
        registry.write_text(bench_registry(url).to_toml())
        cfg = tmp / "serve.toml"
        state = ""
        if redis:
            redis_url = stack.enter_context(redis_server(tmp))
            state = f'[state]\nbackend = "redis"\nredis_url = "{redis_url}"\n'
        cfg.write_text(f'[registry]\npath = "{registry}"\n{state}')
        port, out, log = free_port(), tmp / "callgrind.out", tmp / "serve.log"
        env = {**_env(python_dir), "SATISFICE_MASTER_KEY": MASTER_KEY}
        with log.open("wb") as f:
            proc = subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", _python(),
                 "-m", "satisfice.cli", "serve", "--config", str(cfg), "--port", str(port)],
                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/ready", proc.pid, log, 600)
            c = Contender("satisfice serve", base + "/v1/chat/completions", "auto")
            if redis:
                admin = {"authorization": f"Bearer {MASTER_KEY}"}
                r = httpx.post(base + "/admin/keys", headers=admin, timeout=60, json={
                    "name": "bench", "budget_usd": 1_000_000, "rpm": 100_000_000})  # fmt: skip
                r.raise_for_status()
                c.headers = {"authorization": f"Bearer {r.json()['key']}"}

            async def requests() -> None:
                c.client = client(False)
                for _ in range(200):
                    await call(c)
                ctl = ["callgrind_control", "-z", str(proc.pid)]
                subprocess.run(ctl, check=True, capture_output=True)
                for _ in range(n):
                    await call(c)
                ctl[1] = "-d"
                subprocess.run(ctl, check=True, capture_output=True)
                await c.client.aclose()

            asyncio.run(requests())
        finally:
            proc.terminate()
            proc.wait(120)
        for f in tmp.glob("callgrind.out*"):
            text = f.read_text(errors="replace")
            if "Trigger: dump" in text:
                m = re.search(r"^summary: (\d+)", text, re.M)
                if m is not None:
                    return int(m.group(1)) / n
        raise RuntimeError("callgrind wrote no dump of the measured requests")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("route", "chat", "serve"))
    ap.add_argument("--against", metavar="PYTHON_DIR", help="another build's python directory")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install valgrind)")
    rows: list[tuple[str, Callable[[str | None], float]]]
    if args.what == "route":
        rows = [(f"`route()`, {label} prompt", partial(per_call, child=ROUTE, args=[size], n=1000))
                for label, size in (("100 B", "100"), ("4 KB", "4096"))]  # fmt: skip
    elif args.what == "chat":
        rows = [(label, partial(per_call, child=CHAT, args=[w], n=500)) for label, w in (
            ("bare call (`client.post`)", "bare"),
            ("lean call (the request built as the providers build it)", "lean"),
            ("the provider's call (`provider.complete`)", "provider"),
            ("`router.chat()`", "chat"),
        )]  # fmt: skip
    else:
        rows = [
            ("a request through `satisfice serve`", partial(per_request, n=300)),
            ("the same, Redis state and a key with a budget and an rpm limit",
             partial(per_request, n=300, redis=True)),
        ]  # fmt: skip
    print(f"`python benches/instructions.py {args.what}"
          + (" --against DIR`" if args.against else "`") + "\n")  # fmt: skip
    print("| instructions per | this build |" + (" against | ratio |" if args.against else ""))
    print("|---|---:|" + ("---:|---:|" if args.against else ""))
    for label, count in rows:
        mine = count(None)
        row = f"| {label} | {mine:,.0f} |"
        if args.against:
            other = count(args.against)
            row += f" {other:,.0f} | {mine / other:.2f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
