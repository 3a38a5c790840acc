"""`import satisfice` and `satisfice.Router()` in fresh processes: median of 7 timed runs.

    python benches/cold_start.py            # also run by benches/report.py
    python benches/cold_start.py --against OTHER/python   # another build, runs alternating

Bytecode is as an installed package has it: written by a first, untimed run (this machine
sets PYTHONDONTWRITEBYTECODE, which would time the compiler instead).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

CASES = (
    ("`import satisfice`", "import satisfice"),
    (
        "`satisfice.Router()` in a fresh process (registry, predictor, table)",
        "import satisfice; satisfice.Router()",
    ),
)


def _timed(code: str, pythonpath: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run(
        [sys.executable, "-c", f"import time; t=time.perf_counter(); {code}; "
         "print(time.perf_counter()-t)"],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return float(out.stdout)


def median_ms(code: str, runs: int = 7, against: str | None = None) -> tuple[float, float]:
    """Medians (ms) of `runs` timed runs of this build and, with `against` (a python dir
    holding another build of satisfice), of that one, the two taking turns so that the
    machine's drift falls on both; the first run of each is untimed (it writes bytecode)."""
    mine: list[float] = []
    other: list[float] = []
    for i in range(runs + 1):
        a = _timed(code, None)
        b = _timed(code, against) if against is not None else 0.0
        if i:
            mine.append(a)
            other.append(b)
    return statistics.median(mine) * 1e3, statistics.median(other) * 1e3


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--against", metavar="PYTHON_DIR", help="another build to alternate with")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args(argv)
    for what, code in CASES:
        mine, other = median_ms(code, args.runs, args.against)
        vs = f"; {args.against}: {other:.0f} ms" if args.against else ""
        print(f"\n{what}: median {mine:.0f} ms over {args.runs} runs{vs}")


if __name__ == "__main__":
    main()
