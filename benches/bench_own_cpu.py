"""satisfice's own CPU per `chat()`, and whether `ChatResult.overhead_s` reports it.

    python benches/bench_own_cpu.py            # 3 rounds of 4,000 sequential requests
    python benches/bench_own_cpu.py --n 1000 --rounds 2

Two callers against the same local upstream (`python -m satisfice.testing`, its own process,
so its CPU is not this process's), on the same client and transport (the router's own,
`executor.make_client`), one request at a time, interleaved round by round:

- bare call: what any caller of the upstream must do: encode the request body, POST it
  (to a URL parsed once, as the providers hold theirs), parse the JSON answer and take the
  text. The baseline.
- satisfice chat(): the same request through the router (route, build the provider request,
  call, parse, count usage and cost, record health, build the result).

satisfice's own CPU is chat()'s process CPU per request minus the bare call's; `overhead_s`
(the wall time chat() reports as its own) is averaged over the same chat() calls. CPU time,
not wall time: the machine is shared and noisy, and CPU time is what the router spends.

`--in-process` swaps the socket for a transport that answers at once from memory (same
client class, same answer bytes): no kernel, no event-loop waits, so the two costs are
measured on warm caches, call by call and interleaved (medians of wall time per call).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time

import httpx
from bench_overhead import MESSAGES, MODEL, bench_registry, upstream, warm_tokenizers

from satisfice import Router
from satisfice.executor import ExecutionConfig, _Client, make_client

ANSWER = json.dumps({
    "id": "x", "object": "chat.completion", "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello there"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10},
}).encode()  # fmt: skip


class Canned(httpx.AsyncBaseTransport):
    """Answers every request at once, from memory."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "application/json"}, content=ANSWER)


async def in_process(n: int) -> dict[str, float]:
    """Per-call wall time of the bare call and chat() on the canned transport, interleaved;
    medians, and overhead_s's."""
    client = _Client(transport=Canned(), timeout=httpx.Timeout(5.0))
    url = "http://127.0.0.1:9"
    router = Router(bench_registry(url)).configure(http=client)
    # parsed once, as the providers hold theirs: parsing is no part of either's own work
    endpoint = httpx.URL(url + "/v1/chat/completions")
    headers = {"content-type": "application/json"}

    async def bare() -> None:
        body = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()
        r = await client.post(endpoint, content=body, headers=headers)
        assert json.loads(r.content)["choices"][0]["message"]["content"]

    for _ in range(2000):
        await bare()
        await router.chat(MESSAGES)
    tb, tc, ov = [], [], []
    pc = time.perf_counter
    for _ in range(n):
        t = pc()
        await bare()
        tb.append(pc() - t)
        t = pc()
        r = await router.chat(MESSAGES)
        tc.append(pc() - t)
        ov.append(r.overhead_s)
    await router.aclose()
    await client.aclose()
    m = statistics.median
    return {"bare": m(tb) * 1e6, "chat": m(tc) * 1e6, "overhead_p50": m(ov) * 1e6}


async def measure(url: str, n: int, rounds: int) -> dict[str, list[float]]:
    client = make_client(ExecutionConfig())
    router = Router(bench_registry(url))
    assert router.route(MESSAGES).model == MODEL
    endpoint = httpx.URL(url + "/v1/chat/completions")  # parsed once, as a provider's is
    headers = {"content-type": "application/json"}

    async def bare() -> None:
        body = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()
        r = await client.post(endpoint, content=body, headers=headers)
        assert json.loads(r.content)["choices"][0]["message"]["content"]

    overheads: list[float] = []

    async def chat() -> None:
        overheads.append((await router.chat(MESSAGES)).overhead_s)

    out: dict[str, list[float]] = {"bare": [], "chat": [], "overhead": [], "overhead_p50": []}
    for call in (bare, chat):  # warm up: connections, caches, the tokenizers
        for _ in range(500):
            await call()
    for _ in range(rounds):
        for name, call in (("bare", bare), ("chat", chat)):
            overheads.clear()
            gc.collect()
            c = time.process_time()
            for _ in range(n):
                await call()
            out[name].append((time.process_time() - c) / n * 1e6)
            if name == "chat":
                out["overhead"].append(statistics.fmean(overheads) * 1e6)
                out["overhead_p50"].append(statistics.median(overheads) * 1e6)
    await router.aclose()
    await client.aclose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4000, help="sequential requests per cell")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--in-process", action="store_true", help="a transport with no socket")
    args = ap.parse_args()
    warm_tokenizers()
    if args.in_process:
        got = asyncio.run(in_process(args.n))
        print(f"`python benches/bench_own_cpu.py --in-process --n {args.n}` (wall µs per call, "
              "medians)\n")  # fmt: skip
        own = got["chat"] - got["bare"]
        print(f"bare call {got['bare']:.1f}, chat() {got['chat']:.1f}: own {own:.1f}; "
              f"overhead_s p50 {got['overhead_p50']:.1f}")  # fmt: skip
        return
    with upstream() as url:
        r = asyncio.run(measure(url, args.n, args.rounds))
    own = [c - b for c, b in zip(r["chat"], r["bare"], strict=True)]
    print(f"`python benches/bench_own_cpu.py --n {args.n} --rounds {args.rounds}` "
          f"(Python {sys.version.split()[0]}; CPU µs per request, median of rounds)\n")  # fmt: skip
    print("| | CPU µs per request |")
    print("|---|---:|")
    print(f"| bare call (encode, POST, parse) | {statistics.median(r['bare']):.1f} |")
    print(f"| satisfice chat() | {statistics.median(r['chat']):.1f} |")
    print(f"| satisfice's own CPU (chat − bare) | {statistics.median(own):.1f} |")
    print(f"| `overhead_s` it reports (mean, wall) | {statistics.median(r['overhead']):.1f} |")
    print(f"| `overhead_s` it reports (p50, wall) | {statistics.median(r['overhead_p50']):.1f} |")
    print(f"\nrounds: own {[round(x, 1) for x in own]}, "
          f"overhead_s {[round(x, 1) for x in r['overhead']]}")  # fmt: skip
    ratio = statistics.median(r["overhead"]) / statistics.median(own)
    print(f"overhead_s / own CPU: {ratio:.2f}")


if __name__ == "__main__":
    main()
