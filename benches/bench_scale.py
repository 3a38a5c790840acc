"""Cost against the size of the registry: route(), feedback(), explain() and chat() with a
deployment cooling, at the bundled size and with hundreds and thousands of models.

The large registries are copies of the bundled models under new ids, without effort levels
(one row per model, as a catalogue import such as OpenRouter's makes). Medians of CPU time
(process_time), so other load on a shared machine weighs less than in wall time.

    python benches/bench_scale.py          # prints the markdown table for the README
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from itertools import cycle

from bench_overhead import MESSAGES, MODEL, bench_registry, upstream, warm_tokenizers
from corpus import samples

from satisfice import Registry, Router

PROSE = "".join(samples("prose", "eval")) + "".join(samples("prose", "fit"))


def prompts(size: int, n: int = 16) -> list[str]:
    step = max((len(PROSE) - size) // n, 1)
    return [PROSE[i * step : i * step + size] for i in range(n)]


def grown(reg: Registry, n: int) -> Registry:
    """`reg` with its last model copied under new ids until it has `n` models."""
    ms = [m for m in reg if m.base is None]
    if n <= len(ms):
        return reg
    last = ms[-1].replace(efforts={})
    extra = [last.replace(id=f"{last.id}-copy{i}") for i in range(n - len(ms))]
    return Registry(ms + extra, reg.meta)


def cpu_us(f: Callable[[], object], reps: int) -> float:
    ts = []
    for _ in range(reps):
        t = time.process_time_ns()
        f()
        ts.append(time.process_time_ns() - t)
    return statistics.median(ts) / 1e3


async def chat_overheads(url: str, sizes: list[int], calls: int) -> list[tuple[float, float]]:
    """chat() with another model's deployment disabled, one router per size: CPU per call
    and overhead_s p50. The routers take turns, 100 calls at a time, so that a slow spell
    of a shared machine (they last seconds) falls on every size alike."""
    routers = []
    for n in sizes:
        reg = grown(bench_registry(url), n)
        router = Router(reg).configure()
        other = next(m for m in reg if m.id != MODEL and m.deployments)
        assert router._io is not None
        router._io.health.disable(f"{other.id}/{other.deployments[0].name}", "bench: cooling")
        for _ in range(100):
            await router.chat(MESSAGES)
        routers.append(router)
    over: list[list[float]] = [[] for _ in sizes]
    cpu = [0.0 for _ in sizes]
    for _ in range(max(calls // 100, 1)):
        for i, router in enumerate(routers):
            c = time.process_time()
            for _ in range(100):
                over[i].append((await router.chat(MESSAGES)).overhead_s)
            cpu[i] += time.process_time() - c
    for router in routers:
        await router.aclose()
    return [(c / len(o) * 1e6, statistics.median(o) * 1e6) for c, o in zip(cpu, over, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    warm_tokenizers()
    ap.add_argument("--reps", type=int, default=2000)
    args = ap.parse_args()
    sizes = (len([m for m in Registry.default() if m.base is None]), 500, 2000)
    rows = []
    for n in sizes:  # the in-process costs first, with no upstream process starting beside
        reg = Registry.default() if n < 100 else grown(Registry.default(), n)
        r = Router(registry=reg)
        route = {}
        for size in (100, 4096):
            nxt = cycle(prompts(size)).__next__
            route[size] = cpu_us(lambda: r.route(nxt()), args.reps)  # noqa: B023
        d = r.route(prompts(4096)[0])
        # an answer is scored once: one request id each, routed beforehand
        rids = iter([r.route(prompts(4096)[0]).request_id for _ in range(args.reps)])
        fb = cpu_us(lambda: r.feedback(next(rids), 1.0), args.reps)  # noqa: B023
        ex = cpu_us(d.explain, 50)
        rows.append([n, len(reg.ids), route[100], route[4096], fb, ex])
    with upstream() as url:
        chats = asyncio.run(chat_overheads(url, [row[0] for row in rows], args.reps))
    for row, chat in zip(rows, chats, strict=True):
        row.extend(chat)
    print(f"`python benches/bench_scale.py --reps {args.reps}` (CPU time, medians)\n")
    print(
        "| models | table rows | route 100 B µs | route 4 KB µs | feedback µs | explain µs "
        "| chat() CPU µs, one deployment cooling | chat() overhead_s µs |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, rows_, r100, r4k, fb, ex, cc, ov in rows:
        print(
            f"| {n:,} | {rows_:,} | {r100:.1f} | {r4k:.1f} | {fb:.1f} | {ex:,.0f} "
            f"| {cc:.0f} | {ov:.0f} |"
        )
    base = rows[0]
    print(
        f"\nAt {rows[-1][0]:,} models against {base[0]}: route 4 KB "
        f"{rows[-1][3] / base[3]:.1f}×, feedback {rows[-1][4] / base[4]:.2f}×, chat() "
        f"overhead_s {rows[-1][7] / base[7]:.2f}× (one deployment cooling)."
    )


if __name__ == "__main__":
    main()
