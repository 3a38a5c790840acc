"""Turn a pytest-benchmark JSON file into the README's tables (ratios, p50/p99), and add the
figures that are not timings: estimator error on held-out text and import time.

    make bench            # writes .benchmarks/bench.json and prints the tables
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import cold_start
from corpus import CATEGORIES, samples


def pct(data: list[float], q: float) -> float:
    s = sorted(data)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main(path: str) -> None:
    benches = json.loads(Path(path).read_text())["benchmarks"]
    by = {b["fullname"].split("::")[-1]: b for b in benches}

    print("\n### route() latency (µs)\n")
    print("| prompt | p50 | p99 | mean | rounds |")
    print("|---|---:|---:|---:|---:|")
    for name, b in by.items():
        if b["group"] != "route":
            continue
        data = b["stats"].get("data") or [b["stats"]["median"]]
        print(
            f"| {name.removeprefix('test_')} | {pct(data, 0.5) * 1e6:.1f} | "
            f"{pct(data, 0.99) * 1e6:.1f} | {b['stats']['mean'] * 1e6:.1f} | "
            f"{b['stats']['rounds']} |"
        )

    print("\n### route() near a limit and with many models (µs)\n")
    print("| case | p50 | p99 | vs the same route far from the limit |")
    print("|---|---:|---:|---:|")
    for name, b in by.items():
        if b["group"] not in ("route-limits", "route-scale"):
            continue
        data = b["stats"].get("data") or [b["stats"]["median"]]
        far = by.get(name.replace("[near]", "[far]")) if "[near]" in name else None
        ratio = ""
        if far is not None:
            ratio = f"{pct(data, 0.5) / far['stats']['median']:.2f}×"
        print(
            f"| {name.removeprefix('test_')} | {pct(data, 0.5) * 1e6:.1f} | "
            f"{pct(data, 0.99) * 1e6:.1f} | {ratio} |"
        )

    if "test_tiktoken_encode[prose]" not in by:  # bench_route.py alone: no token rows
        return
    print("\n### token counting on held-out text (MB/s, median; ratio vs tiktoken)\n")
    print(
        "| text | KB | tiktoken | fastokens | satisfice exact | exact ÷ tiktoken "
        "| exact ÷ fastokens | estimate | estimate ÷ tiktoken |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cat in CATEGORIES:
        size = len("".join(samples(cat, "eval"))[: 256 * 1024].encode())
        med = {
            k: by[f"test_{k}[{cat}]"]["stats"]["median"]
            for k in (
                "tiktoken_encode",
                "fastokens_encode",
                "satisfice_count",
                "satisfice_estimate",
            )
        }
        mbs = {k: size / v / 1e6 for k, v in med.items()}
        t = med["tiktoken_encode"]
        print(
            f"| {cat} | {size / 1024:.0f} | {mbs['tiktoken_encode']:.1f} | "
            f"{mbs['fastokens_encode']:.1f} | {mbs['satisfice_count']:.1f} | "
            f"{t / med['satisfice_count']:.1f}× | "
            f"{med['fastokens_encode'] / med['satisfice_count']:.2f}× | "
            f"{mbs['satisfice_estimate']:.0f} | {t / med['satisfice_estimate']:.0f}× |"
        )

    print("\n### counting each held-out sample once, in a fresh process (MB/s, CPU time)\n")
    print("| text | samples | KB | tiktoken | fastokens | satisfice exact |")
    print("|---|---:|---:|---:|---:|---:|")
    for cat in CATEGORIES:
        runs = {}
        for who in ("tiktoken", "fastokens", "satisfice"):
            out = subprocess.run(
                [sys.executable, str(Path(__file__).parent / "cold_count.py"), who, cat],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[who] = json.loads(out.stdout.strip().splitlines()[-1])
        kb = runs["satisfice"]["bytes"] / 1024
        print(
            f"| {cat} | {runs['satisfice']['samples']} | {kb:,.0f} | "
            + " | ".join(f"{runs[w]['mb_s']:.1f}" for w in ("tiktoken", "fastokens", "satisfice"))
            + " |"
        )

    from satisfice import _core

    print("\n### estimator error on held-out text (mean |estimate − exact| / exact)\n")
    print("| text | o200k_base | cl100k_base | samples |")
    print("|---|---:|---:|---:|")
    for cat in CATEGORIES:
        texts = samples(cat, "eval")
        errs = []
        for enc in ("o200k_base", "cl100k_base"):
            exact = _core.count_tokens_batch(texts, enc)
            est = _core.estimate_tokens_batch(texts, enc)
            errs.append(
                statistics.mean(abs(e - x) / max(x, 1) for e, x in zip(est, exact, strict=True))
            )
        print(f"| {cat} | {errs[0]:.1%} | {errs[1]:.1%} | {len(texts)} |")

    cold_start.main([])


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", nargs="?", default=".benchmarks/bench.json",
                    help="a pytest-benchmark JSON file")  # fmt: skip
    main(ap.parse_args().path)
