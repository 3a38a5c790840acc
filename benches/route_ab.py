"""route() CPU time of this build against another, in alternating processes.

    python benches/route_ab.py --against OTHER/python     # OTHER: a worktree with its build

Instruction counts (`instructions.py route`) miss what a change to a branch does: a
lookup made branch-free runs more instructions and less time, the mispredictions it saves
costing ~15 cycles each. This times both builds the same way (`bench_route.py`'s prompts,
each process routing them 20,000 times a round, CPU time), taking turns so that a slow
spell of the shared machine falls on both, and prints the medians of the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

BENCHES = str(Path(__file__).resolve().parent)
HERE = str(Path(BENCHES).parent / "python")

CHILD = """
import sys, time
sys.path.insert(0, {benches!r})
from corpus import samples
from satisfice import Router, _core
r = Router()
_core.wait_for_tokenizers()
prose = "".join(samples("prose", "eval")) + "".join(samples("prose", "fit"))
out = []
for size in (100, 4096):
    step = max((len(prose) - size) // 16, 1)
    ps = [prose[i * step : i * step + size] for i in range(16)]
    for p in ps:
        r.route(p)
    best = []
    for _ in range(5):
        t = time.process_time()
        for i in range(20_000):
            r.route(ps[i & 15])
        best.append((time.process_time() - t) / 20_000 * 1e6)
    out.append(sorted(best)[2])
print(*out)
"""


def run(pythonpath: str) -> list[float]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(benches=BENCHES)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [float(v) for v in out.stdout.split()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", required=True, help="the other build's python/ directory")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    if not (Path(a.against) / "satisfice").is_dir():
        sys.exit(f"{a.against} holds no satisfice package (give a worktree's python/)")
    mine: list[list[float]] = []
    theirs: list[list[float]] = []
    for k in range(a.rounds):
        mine.append(run(HERE))
        theirs.append(run(a.against))
        print(f"round {k + 1}/{a.rounds}: this {mine[-1]}, against {theirs[-1]}", file=sys.stderr)
    print(f"`python benches/route_ab.py --against DIR --rounds {a.rounds}` (CPU µs per route, "
          "median of rounds)\n")  # fmt: skip
    print("| prompt | this build | against | ratio |\n|---|---:|---:|---:|")
    for j, name in enumerate(("100 B", "4 KB")):
        m = statistics.median(r[j] for r in mine)
        t = statistics.median(r[j] for r in theirs)
        print(f"| {name} | {m:.2f} | {t:.2f} | {m / t:.2f} |")


if __name__ == "__main__":
    main()
