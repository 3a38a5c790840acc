"""Streaming: satisfice `stream()` vs a direct httpx stream on the same transport, against the
local upstream in its own process: time to first token (wall) and client CPU per stream.
(That sequential streams keep one connection is a test: tests/test_hostile_transport.py.)
The model's deployment has an API key, as a real one has (`bench_own_cpu.own_registry`):
the router reads it for each stream and scrubs every piece for it, and the direct stream
sends the same header. Without one (until 2026-12-07) the figures had left out the
scrubbing, about 11,900 instructions a piece then.

    python benches/bench_stream.py          # prints the markdown table for the README
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
from bench_overhead import (
    MESSAGES,
    MODEL,
    plain_client,
    upstream,
    warm_tokenizers,
)
from bench_own_cpu import _auth, own_registry

from satisfice import Router

Stream = Callable[[], Awaitable[float]]  # returns the time to the first text piece (s)


def direct(client: httpx.AsyncClient, url: str) -> Stream:
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}

    async def one() -> float:
        t = time.perf_counter()
        ttft = 0.0
        async with client.stream(
            "POST", url + "/v1/chat/completions", json=body, headers=_auth()
        ) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    delta = json.loads(line[6:])["choices"]
                    if not ttft and delta and delta[0]["delta"].get("content"):
                        ttft = time.perf_counter() - t
        return ttft

    return one


def routed(router: Router) -> Stream:
    async def one() -> float:
        t = time.perf_counter()
        ttft = 0.0
        async with router.stream(MESSAGES) as s:
            async for d in s:
                if d.text and not ttft:
                    ttft = time.perf_counter() - t
        return ttft

    return one


async def measure(
    streams: list[Stream], n: int, block: int = 25
) -> list[tuple[list[float], float]]:
    """Each client's TTFTs and CPU seconds per stream. The clients take turns in blocks of
    `block` streams, so that the machine's drift over the run (a shared VM) falls on all
    of them alike instead of on whichever ran last."""
    for s in streams:
        for _ in range(20):  # warm up: connections, lazy imports
            await s()
    ttfts: list[list[float]] = [[] for _ in streams]
    cpu = [0.0 for _ in streams]
    for _ in range(max(n // block, 1)):
        for i, s in enumerate(streams):
            c = time.process_time()
            for _ in range(block):
                ttfts[i].append(await s())
            cpu[i] += time.process_time() - c
    return [(t, c / len(t)) for t, c in zip(ttfts, cpu, strict=True)]


async def main_async(n: int, words: int) -> None:
    with upstream(words) as url:
        client = plain_client()
        router = Router(own_registry(url))
        assert router.route(MESSAGES).model == MODEL
        names = ["direct httpx stream (same transport)", "satisfice stream()"]
        results = await measure([direct(client, url), routed(router)], n)
        rows = [
            (name, statistics.median(t) * 1e3, cpu * 1e6)
            for name, (t, cpu) in zip(names, results, strict=True)
        ]
        base_ttft, base_cpu = rows[0][1], rows[0][2]
        size = f" --words {words}" if words else ""
        print(f"`python benches/bench_stream.py --n {n}{size}` (2 CPUs, the two take turns; "
              f"{words or 3} pieces of text a stream)\n")  # fmt: skip
        print("| client | TTFT p50 ms | CPU µs per stream | TTFT vs direct | CPU vs direct |")
        print("|---|---:|---:|---:|---:|")
        for name, ttft, cpu in rows:
            print(f"| {name} | {ttft:.3f} | {cpu:.0f} | {ttft / base_ttft:.2f}× | "
                  f"{cpu / base_cpu:.2f}× |")  # fmt: skip
        await client.aclose()
        await router.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    warm_tokenizers()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--words", type=int, default=0,
                    help="answers this many words long, one piece a word (0: three)")  # fmt: skip
    args = ap.parse_args()
    asyncio.run(main_async(args.n, args.words))


if __name__ == "__main__":
    main()
