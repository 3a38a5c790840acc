"""Instructions (callgrind) per `route()`, per `chat()` and per served request, this build and
optionally another, side by side.

    python benches/instructions.py route                 # 100 B and 4 KB prompts
    python benches/instructions.py chat                  # chat() and the direct calls, in process
    python benches/instructions.py chat-socket           # the lean call and chat(), over a socket
    python benches/instructions.py stream                # a stream of 200 pieces, over a socket
    python benches/instructions.py feedback              # router.feedback(), a request id each
    python benches/instructions.py scrub                 # an answer's and a streamed piece's
    python benches/instructions.py app                   # the server's ASGI app, in process
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
  --in-process`'s transport): the bare call (`client.post`), the lean call (the exchange
  as the providers make it: their encoder, request, streamed read and parser), the
  provider's own call (`provider.complete`) and `router.chat()`. chat() less the
  provider's call is the router's work around the call.
- chat-socket: the lean call and `router.chat()` over a socket to the local upstream (as
  `bench_own_cpu.py` runs them without `--in-process`), each on a client of the router's
  own kind; the upstream is a process of its own, and the kernel's work (system calls)
  is not counted: what the router's own instructions are over a socket.
- stream: a stream of 200 pieces of text (the local upstream's `--words 200`), over a socket
  as chat-socket: `router.stream()` read to its end, and `bench_stream.py`'s direct httpx
  stream (each line read, each piece's JSON decoded) on a client of the router's kind,
  with the same key header. Per stream; divide by 200 for a piece.
- feedback: `router.feedback(request_id, 1.0)` on the bundled registry, a new id each
  time (the same 3 KB prompt's decisions: an answer is scored once), inside one
  `functools.reduce` as for route.
- scrub: what keeping API keys out of upstream text costs, with 0, 1 and 3 keys registered
  (each a 46-character key and its base64 spellings): `scrub_bytes` of `bench_own_cpu.py`'s
  252-byte answer (every answer's), and `StreamScrubber.feed` of a streamed piece of a few
  words (every piece's), inside one `functools.reduce` as for route.
- app: the served request in process: `satisfice serve`'s ASGI app called directly (no
  socket, no uvicorn) with the router's upstream answered from memory, as `chat` answers
  it; the event loop's thread only (the ledger's writer thread, which counts the metrics,
  is left out). The app less `chat` is the server's own work around the router.
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
from bench_own_cpu import ANSWER, Canned, MESSAGES, MODEL, _auth, lean_call, own_registry
from satisfice import Router, _core
from satisfice.executor import _Client
from satisfice.providers import ChatRequest
url = "http://127.0.0.1:9"
client = _Client(transport=Canned(), timeout=httpx.Timeout(5.0))
router = Router(own_registry(url)).configure(http=client)
_core.wait_for_tokenizers()  # after Router(): it starts the build this waits for
endpoint = httpx.URL(url + "/v1/chat/completions")
headers = {{"content-type": "application/json", **_auth()}}
io = router._executor()
provider = io._provider(io.targets(router.registry, MODEL)[0])

async def bare():
    body = json.dumps({{"model": MODEL, "messages": MESSAGES}}).encode()
    r = await client.post(endpoint, content=body, headers=headers)
    assert json.loads(r.content)["choices"][0]["message"]["content"]

lean = lean_call(client, url)  # bench_own_cpu.py's

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

CHAT_SOCKET = """
import asyncio, functools, sys
sys.path.insert(0, {benches!r})
from bench_own_cpu import MESSAGES, lean_call, own_registry
from bench_overhead import upstream
from satisfice import Router, _core
from satisfice.executor import ExecutionConfig, make_client
which, n = sys.argv[1], int(sys.argv[2])
with upstream() as url:  # its own process: not counted
    router = Router(own_registry(url))
    _core.wait_for_tokenizers()
    lean = lean_call(make_client(ExecutionConfig()), url)  # on a client as the router's

    async def chat():
        await router.chat(MESSAGES)

    fn = {{"lean": lean, "chat": chat}}[which]

    async def calls(k):
        for _ in range(k):
            await fn()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(calls(300))  # warm: caches, the tokenizers, the connection
    functools.reduce(lambda *_: loop.run_until_complete(calls(n)), range(1), None)  # counted
    loop.close()
"""

STREAM = """
import asyncio, functools, json, sys
sys.path.insert(0, {benches!r})
from bench_own_cpu import MESSAGES, MODEL, _auth, own_registry
from bench_overhead import plain_client, upstream
from satisfice import Router, _core
which, n = sys.argv[1], int(sys.argv[2])
with upstream(200) as url:  # its own process: not counted; 200 pieces of text a stream
    router = Router(own_registry(url))
    _core.wait_for_tokenizers()
    client = plain_client()  # bench_stream.py's direct stream, on the same transport
    body = {{"model": MODEL, "messages": MESSAGES, "stream": True}}

    async def direct():
        async with client.stream("POST", url + "/v1/chat/completions", json=body,
                                 headers=_auth()) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    json.loads(line[6:])

    async def routed():
        async with router.stream(MESSAGES) as s:
            async for _ in s:
                pass

    fn = {{"direct": direct, "stream": routed}}[which]

    async def calls(k):
        for _ in range(k):
            await fn()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(calls(30))  # warm: caches, the tokenizers, the connection
    functools.reduce(lambda *_: loop.run_until_complete(calls(n)), range(1), None)  # counted
    loop.close()
"""

FEEDBACK = """
import functools, sys
from satisfice import Router, _core
r = Router()
_core.wait_for_tokenizers()
n = int(sys.argv[1])
prompt = "Explain the difference between a process and a thread, with an example in C. " * 40
rids = [r.route(prompt).request_id for _ in range(n + 200)]  # an answer is scored once
for rid in rids[n:]:
    r.feedback(rid, 1.0)
functools.reduce(lambda _, i: r.feedback(rids[i], 1.0), range(n), None)  # counted
"""

SCRUB = """
import functools, sys
sys.path.insert(0, {benches!r})
from bench_own_cpu import ANSWER
from satisfice import _redact
which, keys, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(keys):
    _redact.register(f"sk-test-key-{{i}}-" + "0123456789abcdef" * 2)
pieces = ["Hello", " there", ", how", " are", " you", " today", "? I", " am", " fine", "."]
s = _redact.StreamScrubber()
f = (lambda _, i: _redact.scrub_bytes(ANSWER)) if which == "answer" else (
    lambda _, i: s.feed(pieces[i % 10]))
for i in range(100):
    f(None, i)
functools.reduce(f, range(n), None)  # the counted part
"""

APP = """
import asyncio, functools, json, sys
sys.path.insert(0, {benches!r})
import httpx
from bench_own_cpu import Canned, MESSAGES, bench_registry
from satisfice import Router, _core
from satisfice.executor import _Client
from satisfice.server import ServerConfig, create_app
router = Router(bench_registry("http://127.0.0.1:9"))
# the service configures the router (its health store); the client answers from memory
configure = router.configure
client = _Client(transport=Canned(), timeout=httpx.Timeout(5.0))
router.configure = lambda **kw: configure(http=client, **kw)
try:  # as `satisfice serve` makes it: the heap frozen once ready
    app = create_app(ServerConfig(), router=router, freeze_heap=True)
except TypeError:  # a build from before freeze_heap (--against)
    app = create_app(ServerConfig(), router=router)
_core.wait_for_tokenizers()
body = json.dumps({{"model": "auto", "messages": MESSAGES}}).encode()
headers = [(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*"),
           (b"accept-encoding", b"gzip, deflate"), (b"connection", b"keep-alive"),
           (b"user-agent", b"python-httpx/0.28.1"), (b"content-type", b"application/json"),
           (b"content-length", str(len(body)).encode())]

async def receive():
    return {{"type": "http.request", "body": body, "more_body": False}}

async def request():
    sent = []

    async def send(m):
        sent.append(m)

    await app({{"type": "http", "asgi": {{"version": "3.0"}}, "http_version": "1.1",
               "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
               "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
               "headers": headers, "client": ("127.0.0.1", 5555),
               "server": ("127.0.0.1", 8000)}}, receive, send)
    assert sent[0]["status"] == 200, sent

n = int(sys.argv[1])

async def calls(k):
    for _ in range(k):
        await request()

loop = asyncio.new_event_loop()
lifespan = app.router.lifespan_context(app)
loop.run_until_complete(lifespan.__aenter__())
loop.run_until_complete(calls(300))  # warm: caches, the tokenizers
for _ in range(1000):  # ready (as served, the heap then frozen): its task needs a turn
    if app.state.service.ready:
        break
    loop.run_until_complete(asyncio.sleep(0.01))
assert app.state.service.ready
functools.reduce(lambda *_: loop.run_until_complete(calls(n)), range(1), None)  # counted
loop.run_until_complete(lifespan.__aexit__(None, None, None))
"""


def _python() -> str:
    return os.path.realpath(sys.executable)


#: "this build": the checkout this script is in (not whichever satisfice is installed, which
#: had measured /work/main's editable install when run from another clone)
THIS = str(Path(BENCHES).parent / "python")


def _env(python_dir: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = THIS if python_dir is None else python_dir
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
    ap.add_argument(
        "what",
        choices=("route", "chat", "chat-socket", "stream", "feedback", "scrub", "app", "serve"),
    )
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
            ("lean call (the exchange as the providers make it)", "lean"),
            ("the provider's call (`provider.complete`)", "provider"),
            ("`router.chat()`", "chat"),
        )]  # fmt: skip
    elif args.what == "chat-socket":
        rows = [(label, partial(per_call, child=CHAT_SOCKET, args=[w], n=1000)) for label, w in (
            ("lean call (the exchange as the providers make it)", "lean"),
            ("`router.chat()`", "chat"),
        )]  # fmt: skip
    elif args.what == "stream":
        rows = [(label, partial(per_call, child=STREAM, args=[w], n=50)) for label, w in (
            ("a direct httpx stream of 200 pieces (`aiter_lines`, `json.loads`)", "direct"),
            ("`router.stream()` of the same 200 pieces", "stream"),
        )]  # fmt: skip
    elif args.what == "feedback":
        rows = [("`router.feedback()`", partial(per_call, child=FEEDBACK, args=[], n=2000))]
    elif args.what == "scrub":
        rows = [
            (f"{label}, {k} key{'s' * (k != 1)} registered",
             partial(per_call, child=SCRUB, args=[w, str(k)], n=5000))
            for label, w, ks in (("`scrub_bytes` of an answer", "answer", (0, 1, 3)),
                                 ("`StreamScrubber.feed` of a piece", "piece", (1, 3)))
            for k in ks
        ]  # fmt: skip
    elif args.what == "app":
        rows = [
            ("`router.chat()`", partial(per_call, child=CHAT, args=["chat"], n=500)),
            ("a request through the server's ASGI app (in process)",
             partial(per_call, child=APP, args=[], n=500)),
        ]  # fmt: skip
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
