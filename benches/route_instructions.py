"""Instructions per `route()` (callgrind), this build and optionally another, side by side.

    python benches/route_instructions.py                       # 100 B and 4 KB prompts
    python benches/route_instructions.py --against OTHER/python

Wall time on a shared 2-core VM moves by tens of percent between runs, more than most
changes to the scan; an instruction count does not. The routes (the same prompts as
`bench_route.py`: 16 different slices of the held-out prose, each routed once first) run
inside one `functools.reduce` call, and callgrind counts only inside it
(`--toggle-collect`), so that the interpreter's start, `Router()` and the tokenizers' build
(whose hash maps are seeded at random, so its count moves by thousands a process) are out
of the figure: instructions in the loop divided by its routes. Needs valgrind and an
interpreter with its symbols (a pyenv build has them).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

CHILD = """
import functools, sys
sys.path.insert(0, {benches!r})
from corpus import samples
from satisfice import Router, _core
r = Router()
_core.wait_for_tokenizers()  # after Router(): it starts the build this waits for
prose = "".join(samples("prose", "eval")) + "".join(samples("prose", "fit"))
size, n = int(sys.argv[1]), int(sys.argv[2])
step = max((len(prose) - size) // 16, 1)
ps = [prose[i * step : i * step + size] for i in range(16)]
for p in ps:
    r.route(p)
functools.reduce(lambda _, i: r.route(ps[i & 15]), range(n), None)  # the counted part
"""


def per_route(python_dir: str | None, size: int, n: int = 1000) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if python_dir is not None:
        env["PYTHONPATH"] = python_dir
    code = CHILD.format(benches=str(Path(__file__).resolve().parent))
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         "--toggle-collect=functools_reduce", os.path.realpath(sys.executable), "-c", code,
         str(size), str(n)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    m = re.search(r"refs:\s+([\d,]+)", out.stderr)
    if m is None:
        raise RuntimeError(f"no instruction count in valgrind's output: {out.stderr[-500:]}")
    total = int(m.group(1).replace(",", ""))
    if total < n * 1000:  # no route costs under 1,000: the toggle found no symbol
        raise RuntimeError("callgrind counted nothing inside functools.reduce: this "
                           "interpreter has no symbols for it")  # fmt: skip
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", metavar="PYTHON_DIR", help="another build's python directory")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    print("| prompt | instructions per route() | " + ("against | ratio |" if args.against else ""))
    print("|---|---:|" + ("---:|---:|" if args.against else ""))
    for label, size in (("100 B", 100), ("4 KB", 4096)):
        mine = per_route(None, size)
        row = f"| {label} | {mine:,.0f} |"
        if args.against:
            other = per_route(args.against, size)
            row += f" {other:,.0f} | {mine / other:.2f} |"
        print(row)


if __name__ == "__main__":
    main()
