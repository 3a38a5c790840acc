"""`import satisfice` and `satisfice.Router()` in fresh processes: median of 7 timed runs.

    python benches/cold_start.py            # also run by benches/report.py
    python benches/cold_start.py --against OTHER/python   # another build, runs alternating

Each run is a fresh interpreter of a new virtual environment that holds nothing but a path
to the satisfice being measured: what a clean install starts from. The interpreter this
script runs under may have imported much more at startup (a `.pth` file of its site-packages
can import pathlib, urllib and tempfile before any code runs, and a figure taken there leaves
them out). Bytecode is as an installed package has it: written by a first, untimed run (this
machine sets PYTHONDONTWRITEBYTECODE, which would time the compiler instead).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# What a service has imported before it imports satisfice (any web framework, httpx or
# logging setup brings these): the third case times only what satisfice adds to them.
STDLIB = "import typing, dataclasses, re, json, logging, pathlib, datetime, urllib.parse"
CASES = (
    ("`import satisfice`", "", "import satisfice"),
    (
        "`satisfice.Router()` in a fresh process (registry, predictor, table)",
        "",
        "import satisfice; satisfice.Router()",
    ),
    (
        "`satisfice.Router()` in a fresh process that has imported the standard library a "
        "service has (typing, dataclasses, re, json, logging, pathlib, datetime, urllib)",
        STDLIB,
        "import satisfice; satisfice.Router()",
    ),
)


def clean_python(root: Path, package_dir: str) -> str:
    """A venv under `root` whose only addition is `package_dir` on its path; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next(root.glob("lib/python3*/site-packages"), None) or root / "Lib" / "site-packages"
    (site / "satisfice_under_test.pth").write_text(package_dir + "\n")
    return str(root / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))


def _timed(python: str, setup: str, code: str) -> float:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")
    }
    out = subprocess.run(
        [python, "-c", f"{setup}\nimport time; t=time.perf_counter(); {code}; "
         "print(time.perf_counter()-t)"],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return float(out.stdout)


def median_ms(
    setup: str, code: str, runs: int, mine: str, other: str | None
) -> tuple[float, float]:
    """Medians (ms) of `runs` timed runs of `mine` and, with `other`, of that python too,
    the two taking turns so that the machine's drift falls on both; the first run of each
    is untimed (it writes bytecode)."""
    a_ms: list[float] = []
    b_ms: list[float] = []
    for i in range(runs + 1):
        a = _timed(mine, setup, code)
        b = _timed(other, setup, code) if other is not None else 0.0
        if i:
            a_ms.append(a)
            b_ms.append(b)
    return statistics.median(a_ms) * 1e3, statistics.median(b_ms) * 1e3


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--against", metavar="PYTHON_DIR", help="another build to alternate with")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args(argv)
    import satisfice

    here = str(Path(satisfice.__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as tmp:
        mine = clean_python(Path(tmp) / "mine", here)
        other = clean_python(Path(tmp) / "other", args.against) if args.against else None
        for what, setup, code in CASES:
            a, b = median_ms(setup, code, args.runs, mine, other)
            vs = f"; {args.against}: {b:.0f} ms" if args.against else ""
            print(f"\n{what}: median {a:.0f} ms over {args.runs} runs{vs}")


if __name__ == "__main__":
    main()
