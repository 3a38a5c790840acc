"""`import satisfice` and `satisfice.Router()` in fresh processes: median of 7 timed runs.

    python benches/cold_start.py            # also run by benches/report.py

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


def median_ms(code: str, runs: int = 7) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    timed = []
    for i in range(runs + 1):
        out = subprocess.run(
            [sys.executable, "-c", f"import time; t=time.perf_counter(); {code}; "
             "print(time.perf_counter()-t)"],
            capture_output=True, text=True, check=True, env=env,
        )  # fmt: skip
        if i:
            timed.append(float(out.stdout))
    return statistics.median(timed) * 1e3


def main() -> None:
    for what, code in CASES:
        print(f"\n{what}: median {median_ms(code):.0f} ms over 7 runs")


if __name__ == "__main__":
    main()
