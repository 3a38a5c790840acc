"""satisfice's own CPU per `chat()`, and whether `ChatResult.overhead_s` reports it.

    python benches/bench_own_cpu.py            # 3 rounds of 4,000 sequential requests
    python benches/bench_own_cpu.py --n 1000 --rounds 2
    python benches/bench_own_cpu.py --in-process --interleaved   # see `_interleaved`
    python benches/bench_own_cpu.py --in-process --interleaved --wait-us 150 [--busy]

Two callers against the same local upstream (`python -m satisfice.testing`, its own process,
so its CPU is not this process's), on the same client and transport (the router's own,
`executor.make_client`), one request at a time, interleaved round by round:

- bare call: what any caller of the upstream must do: encode the request body, POST it
  (to a URL parsed once, as the providers hold theirs), parse the JSON answer and take the
  text. The baseline.
- lean call: the exchange exactly as satisfice's providers make it, the part `overhead_s`
  leaves out of the router's time: the body encoded by its encoder, POSTed over a socket
  through `PooledTransport.post` with the head prepared once (no httpx request or response
  object), else (`--in-process`: a client on another transport) sent with the request built
  from headers merged once and its body read as the providers read it (streamed, bounded),
  and the answer parsed by its parser. Own CPU measured against this call is what
  `overhead_s` claims to report; against the bare call satisfice's own CPU is smaller by
  what its cheaper exchange saves. (Until 2026-12-04 this call encoded and parsed with the
  standard library's `json` and, in process, read the body unstreamed: not the exchange
  `overhead_s` leaves out, so the ratio compared two different things.)
- satisfice chat(): the same request through the router (route, build the provider request,
  call, parse, count usage and cost, record health, build the result).

satisfice's own CPU is chat()'s process CPU per request minus the bare call's; `overhead_s`
(the wall time chat() reports as its own) is averaged over the same chat() calls. CPU time,
not wall time: the machine is shared and noisy, and CPU time is what the router spends.

`--in-process` swaps the socket for a transport that answers at once from memory (same
client class, same answer bytes): no kernel and no event-loop waits, measured the same way
(process CPU per round). `--wait-us N` has it answer after blocking the thread N µs
(`time.sleep`), as a thread waiting on a socket does, or, with `--busy`, after spinning
for them: what the caches lose while the thread sleeps, without a kernel's network work
(the difference between the two is the cold start after a wait). An earlier version of
this mode printed medians of wall time per call, on warm caches: about half the CPU means,
and no measure of the same thing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from bench_overhead import MESSAGES, MODEL, bench_registry, upstream, warm_tokenizers

from satisfice import ChatResult, Registry, Router
from satisfice._json import encode_body, loads
from satisfice.executor import ExecutionConfig, _Client, make_client
from satisfice.transport import Poster, read_body

ANSWER = json.dumps({
    "id": "x", "object": "chat.completion", "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello there"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10},
}).encode()  # fmt: skip


#: The API key variable of MODEL's deployment here. A real deployment has one, which the
#: router reads on every request and the provider sends (`Authorization`); the bundled
#: registry on the local upstream (`bench_registry`) has none, and the figures here had left
#: that read out (until 2026-12-06: os.environ.get, about 4,000 instructions a request).
KEY_ENV = "SATISFICE_BENCH_KEY"
os.environ.setdefault(KEY_ENV, "bench-key-" + "0" * 24)


def own_registry(url: str) -> Registry:
    """`bench_registry` with MODEL's deployment reading its key from KEY_ENV."""
    reg = bench_registry(url)
    m = reg[MODEL]
    return reg.replace(m.replace(deployments=(m.deployments[0].replace(api_key_env=KEY_ENV),)))


class Canned(httpx.AsyncBaseTransport):
    """Answers every request from memory: at once, or after `wait_s` asleep (else, `busy`,
    spinning) on the event loop's thread."""

    def __init__(self, wait_s: float = 0.0, busy: bool = False) -> None:
        self.wait_s, self.busy = wait_s, busy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.wait_s:
            if self.busy:
                end = time.perf_counter() + self.wait_s
                while time.perf_counter() < end:
                    pass
            else:
                time.sleep(self.wait_s)
        return httpx.Response(200, headers={"content-type": "application/json"}, content=ANSWER)


def _auth() -> dict[str, str]:
    """The header the provider sends with the key (the OpenAI wire format's)."""
    return {"authorization": f"Bearer {os.environ[KEY_ENV]}"}


def lean_call(client: httpx.AsyncClient, url: str) -> Callable[[], Awaitable[None]]:
    """The lean call on `client`: `HTTPProvider._post`'s and `_decode`'s steps with no router
    around them (on the router's own transport through its `Poster`, else as the providers
    send on a client of another transport). `instructions.py chat` counts the same call."""
    endpoint = httpx.URL(url + "/v1/chat/completions")  # parsed once, as a provider's is
    merged = client.merged_headers({"content-type": "application/json", **_auth()}, endpoint)
    timeout = {"timeout": httpx.Timeout(5.0).as_dict()}
    pool = getattr(client, "pool", None)  # the router's PooledTransport (None for `Canned`)
    poster = None if pool is None else Poster(pool, endpoint, merged)

    async def lean() -> None:
        body = encode_body({"model": MODEL, "messages": MESSAGES})
        if poster is not None:
            _, _, stream = await poster.pool.post(poster, body, timeout["timeout"])
            try:
                content = await stream.read_all()
            finally:
                await stream.aclose()
        else:
            h = httpx.Headers(merged)
            h["Content-Length"] = str(len(body))
            request = httpx.Request("POST", endpoint, headers=h, stream=httpx.ByteStream(body),
                                    extensions=timeout)  # fmt: skip
            request.read()
            resp = await client.send(request, stream=True)
            try:
                content = await read_body(resp)
            finally:
                await resp.aclose()
        assert loads(content)["choices"][0]["message"]["content"]

    return lean


async def _interleaved(
    calls: tuple[tuple[str, Callable[[], Awaitable[Any]]], ...],
    n: int,
    rounds: int,
    out: dict[str, list[float]],
    overheads: list[float],
    exchanges: list[float],
) -> None:
    """Each request makes the three calls in turn, each timed on its own (process CPU, the
    clock's own cost taken off): every call then runs on caches the other two left, as a
    call in a service does after the service's own work. In blocks of one call repeated
    `n` times, the lean call's few lines stay warm in the caches, where the same exchange
    inside chat() runs after routing: it took 25-35 µs in a loop of its own against 38 µs
    right after a chat(), as long as chat() timed its own exchange (2026-12-05).

    A chat()'s result is read for its `overhead_s` and exchange after the clock stops (the
    bench's bookkeeping, two appends, had been counted as the router's CPU until
    2026-12-06), and let go of before it stops (freeing what the router made is its work)."""
    clock = time.process_time
    for _ in range(rounds):
        overheads.clear()
        exchanges.clear()
        gc.collect()
        spent = dict.fromkeys((name for name, _ in calls), 0.0)
        for _ in range(n):
            for name, call in calls:
                c = clock()
                res = await call()
                said = None if res is None else (res.overhead_s, res.latency_s)
                del res
                spent[name] += clock() - c
                if said is not None:
                    overheads.append(said[0])
                    exchanges.append(said[1] - said[0])
        c0 = clock()
        for _ in range(n):
            clock()
            clock()
        tick = (clock() - c0) / n  # what one timing of a call costs
        for name, total in spent.items():
            out[name].append((total / n - tick) * 1e6)
        out["overhead"].append(statistics.fmean(overheads) * 1e6)
        out["overhead_p50"].append(statistics.median(overheads) * 1e6)
        out["exchange"].append(statistics.fmean(exchanges) * 1e6)


async def measure(
    url: str,
    n: int,
    rounds: int,
    canned: bool,
    interleaved: bool = False,
    canned_wait: Canned | None = None,
) -> dict[str, list[float]]:
    """Process CPU per request of the bare call and chat(), round by round, on one client:
    the router's own over a socket, or one on the `Canned` transport; in blocks of one call
    repeated, or `interleaved` (`_interleaved`)."""
    if canned:
        transport = canned_wait or Canned()
        client: httpx.AsyncClient = _Client(transport=transport, timeout=httpx.Timeout(5.0))
        router = Router(own_registry(url)).configure(http=client)
    else:
        client = make_client(ExecutionConfig())
        router = Router(own_registry(url))
    assert router.route(MESSAGES).model == MODEL
    endpoint = httpx.URL(url + "/v1/chat/completions")  # parsed once, as a provider's is
    headers = {"content-type": "application/json", **_auth()}

    async def bare() -> None:
        body = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()
        r = await client.post(endpoint, content=body, headers=headers)
        assert json.loads(r.content)["choices"][0]["message"]["content"]

    lean = lean_call(client, url)

    overheads: list[float] = []
    exchanges: list[float] = []  # what chat() left out of overhead_s: its exchange, timed

    async def chat() -> ChatResult:
        return await router.chat(MESSAGES)

    out: dict[str, list[float]] = {
        "bare": [], "lean": [], "chat": [], "overhead": [], "overhead_p50": [], "exchange": []
    }  # fmt: skip
    calls = (("bare", bare), ("lean", lean), ("chat", chat))
    for _, call in calls:  # warm up: connections, caches, the tokenizers
        for _ in range(500):
            await call()
    if interleaved:
        await _interleaved(calls, n, rounds, out, overheads, exchanges)
        rounds = 0
    for _ in range(rounds):
        for name, call in calls:
            overheads.clear()
            exchanges.clear()
            gc.collect()
            c = time.process_time()
            for _ in range(n):
                res = await call()
                if res is not None:  # (in blocks, this bookkeeping is inside the clock)
                    overheads.append(res.overhead_s)
                    exchanges.append(res.latency_s - res.overhead_s)
            out[name].append((time.process_time() - c) / n * 1e6)
            if name == "chat":
                out["overhead"].append(statistics.fmean(overheads) * 1e6)
                out["overhead_p50"].append(statistics.median(overheads) * 1e6)
                out["exchange"].append(statistics.fmean(exchanges) * 1e6)
    await router.aclose()
    await client.aclose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4000, help="sequential requests per cell")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--in-process", action="store_true", help="a transport with no socket")
    ap.add_argument(
        "--interleaved", action="store_true", help="each request makes the three calls in turn"
    )
    ap.add_argument("--wait-us", type=float, default=0.0,
                    help="--in-process: answer after blocking the thread this long")  # fmt: skip
    ap.add_argument("--busy", action="store_true", help="--wait-us spinning, not asleep")
    args = ap.parse_args()
    if args.wait_us and not args.in_process:
        ap.error("--wait-us is for --in-process (a socket's upstream waits on its own)")
    warm_tokenizers()
    if args.in_process:
        wait = Canned(args.wait_us / 1e6, args.busy)
        r = asyncio.run(
            measure("http://127.0.0.1:9", args.n, args.rounds, True, args.interleaved, wait)
        )
    else:
        with upstream() as url:
            r = asyncio.run(measure(url, args.n, args.rounds, False, args.interleaved))
    own = [c - b for c, b in zip(r["chat"], r["bare"], strict=True)]
    own_lean = [c - b for c, b in zip(r["chat"], r["lean"], strict=True)]
    how = (
        (" --in-process" if args.in_process else "")
        + (" --interleaved" if args.interleaved else "")
        + (f" --wait-us {args.wait_us:g}" if args.wait_us else "")
        + (" --busy" if args.busy else "")
    )
    print(f"`python benches/bench_own_cpu.py{how} --n {args.n} --rounds {args.rounds}` "
          f"(Python {sys.version.split()[0]}; CPU µs per request, median of rounds)\n")  # fmt: skip
    print("| | CPU µs per request |")
    print("|---|---:|")
    print(f"| bare call (encode, `client.post`, parse) | {statistics.median(r['bare']):.1f} |")
    print(f"| lean call (the exchange as satisfice makes it) | "
          f"{statistics.median(r['lean']):.1f} |")  # fmt: skip
    print(f"| satisfice chat() | {statistics.median(r['chat']):.1f} |")
    print(f"| satisfice's own CPU (chat − bare) | {statistics.median(own):.1f} |")
    print(f"| satisfice's own CPU (chat − lean) | {statistics.median(own_lean):.1f} |")
    print(f"| `overhead_s` it reports (mean, wall) | {statistics.median(r['overhead']):.1f} |")
    print(f"| `overhead_s` it reports (p50, wall) | {statistics.median(r['overhead_p50']):.1f} |")
    print(f"| its exchange as chat() timed it (`latency_s − overhead_s`, mean, wall) | "
          f"{statistics.median(r['exchange']):.1f} |")  # fmt: skip
    rounds = {"own": own, "own vs lean": own_lean, "overhead_s": r["overhead"]}
    print("\nrounds: " + ", ".join(f"{k} {[round(x, 1) for x in v]}" for k, v in rounds.items()))
    over = statistics.median(r["overhead"])
    print(
        f"overhead_s / own CPU: {over / statistics.median(own):.2f} (vs bare), "
        f"{over / statistics.median(own_lean):.2f} (vs lean)"
    )


if __name__ == "__main__":
    main()
