"""The record's cost: chat() with the ledger (and metrics) on vs off, the SQLite ledger's
sustained write rate, and `satisfice report` on a 100,000-request ledger.

    python benches/bench_ledger.py              # prints the markdown tables for the README

1. Same router, same local upstream (its own process), sequential chat() calls: latency p50
   and CPU per request (all threads, the ledger's writer included) with nothing attached,
   with a SQLite ledger, ledger + Prometheus metrics, metrics alone, and OpenTelemetry spans
   (the SDK with an in-memory exporter: the cost of making the spans, not of shipping them).
2. Records offered to a SQLite ledger at 10,000/s for 10 s (copies of a real chat() record
   with fresh ids): acknowledged rate and the largest backlog seen. Building the record from
   a ChatResult (done on the writer thread in production) and writing it (its row and JSON
   and the insert, by process time) are timed apart.
3. `satisfice report` (summary + HTML) over the 100,000 records of step 2, given varied
   models, tasks and days.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench_overhead import MESSAGES, bench_registry, upstream

from satisfice import Router
from satisfice.ledger import Ledger, SQLiteSink, record_of
from satisfice.metrics import Metrics
from satisfice.report import render_html, rows, summarize


async def chat_costs(
    url: str, n: int, rounds: int, configs: dict[str, dict[str, object] | None]
) -> dict[str, tuple[float, float]]:
    """Latency p50 and CPU per request for each config, interleaved round by round so the
    machine's drift hits all alike."""
    routers = {}
    for name, attach in configs.items():
        r = Router(bench_registry(url))
        if attach is not None:
            r.attach(**attach)  # type: ignore[arg-type]
        routers[name] = r
    lat: dict[str, list[float]] = {k: [] for k in routers}
    cpu: dict[str, float] = dict.fromkeys(routers, 0.0)
    for r in routers.values():
        for _ in range(300):
            await r.chat(MESSAGES)
        if r.ledger is not None:
            r.ledger.flush()
    for _ in range(rounds):
        for name, r in routers.items():
            c0 = time.process_time()
            for _ in range(n // rounds):
                t = time.perf_counter()
                await r.chat(MESSAGES)
                lat[name].append(time.perf_counter() - t)
            if r.ledger is not None:
                r.ledger.flush()  # the writer's CPU is part of the cost
            cpu[name] += time.process_time() - c0
    out = {}
    for name, r in routers.items():
        out[name] = (statistics.median(lat[name]), cpu[name] / len(lat[name]))
        await r.aclose()
        if r.ledger is not None:
            r.ledger.close()
    return out


def _tracing() -> object:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from satisfice.tracing import Tracing

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider)


async def sample_record(url: str) -> tuple[dict[str, object], float]:
    router = Router(bench_registry(url))
    async with router:
        res = await router.chat(MESSAGES)
        t = time.perf_counter()
        for _ in range(2000):
            rec = record_of(res)
        per = (time.perf_counter() - t) / 2000
    return rec, per


def write_cost(path: Path, rec: dict[str, object], batches: int = 100) -> float:
    """CPU seconds the writer spends per record on a SQLite sink: its row and JSON and the
    insert, in batches of 20 (a flush interval's records at 1,000 requests/s), the least of
    five rounds (process time: what the machine's other load does not decide)."""
    sink = SQLiteSink(path)
    n = 0

    def batch() -> None:
        nonlocal n
        recs = []
        for _ in range(20):
            r = dict(rec)
            r["request_id"] = f"w-{n}"
            n += 1
            recs.append(r)
        sink.write(recs)

    for _ in range(20):
        batch()
    best = math.inf
    for _ in range(5):
        t = time.process_time()
        for _ in range(batches):
            batch()
        best = min(best, (time.process_time() - t) / (20 * batches))
    sink.close()
    return best


def sustained(path: Path, rec: dict[str, object], rate: int, seconds: float) -> tuple[float, int]:
    ledger = Ledger.open(path)
    rnd = random.Random(7)
    models = [f"model-{i}" for i in range(12)]
    tasks = ["general", "code", "math", "reasoning", "extraction", "summarize", "creative"]
    day0 = time.time() - 30 * 86400
    n = int(rate * seconds)
    max_backlog = 0
    t0 = time.perf_counter()
    for i in range(n):
        r = dict(rec)
        r["request_id"] = f"bench-{i}"
        r["model"] = rnd.choice(models)
        r["task"] = rnd.choice(tasks)
        r["started_at"] = day0 + (i / n) * 30 * 86400
        r["total_cost_usd"] = rnd.random() * 0.01
        r["reference_cost_usd"] = 0.02
        r["latency_s"] = rnd.random() * 3
        ledger.put(r)
        if i % 1000 == 999:
            max_backlog = max(max_backlog, ledger.backlog)
            ahead = (i + 1) / rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
    ledger.flush(60)
    elapsed = time.perf_counter() - t0
    ledger.close()
    return ledger.acked / elapsed, max_backlog


async def main_async(n: int) -> None:
    with upstream() as url:
        with tempfile.TemporaryDirectory() as d:
            res = await chat_costs(url, n, 10, {
                "nothing attached": None,
                "SQLite ledger": {"ledger": Path(d) / "a.db"},
                "SQLite ledger + metrics": {"ledger": Path(d) / "b.db", "metrics": Metrics()},
                "metrics only": {"metrics": Metrics()},
                "OpenTelemetry spans (SDK, in-memory exporter)": {"tracing": _tracing()},
            })  # fmt: skip
        rows_out = [(k, p50 * 1e6, c * 1e6) for k, (p50, c) in res.items()]
        rec, build_s = await sample_record(url)
    base = rows_out[0]
    print(f"`python benches/bench_ledger.py --n {n}` (2 CPUs)\n")
    print("| chat() with | latency p50 µs | added p50 µs | CPU µs / request (all threads) |")
    print("|---|---:|---:|---:|")
    for name, p50, cpu in rows_out:
        print(f"| {name} | {p50:.0f} | {p50 - base[1]:+.1f} | {cpu:.0f} ({cpu - base[2]:+.0f}) |")
    print(f"\nbuilding one record from a ChatResult (writer thread): {build_s * 1e6:.1f} µs")
    with tempfile.TemporaryDirectory() as d:
        per = write_cost(Path(d) / "w.db", rec)
        print(f"writing one record to SQLite (row, JSON, insert; batches of 20; CPU): "
              f"{per * 1e6:.1f} µs")  # fmt: skip
        db = Path(d) / "l.db"
        rate, backlog = sustained(db, rec, 10_000, 10.0)
        print(f"\nSQLite ledger offered 10,000 records/s for 10 s: {rate:,.0f} acknowledged/s, "
              f"largest backlog {backlog:,} records")  # fmt: skip
        t = time.perf_counter()
        s = summarize(rows(db))
        page = render_html(s)
        took = time.perf_counter() - t
        print(f"report over {s['requests']:,} requests (summary + HTML, {len(page) // 1024} KB):"
              f" {took:.2f} s")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    args = ap.parse_args()
    asyncio.run(main_async(args.n))


if __name__ == "__main__":
    main()
