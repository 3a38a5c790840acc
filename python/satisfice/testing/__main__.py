"""`python -m satisfice.testing`: a LocalUpstream in the foreground, for benchmarks."""

from __future__ import annotations

import argparse
import sys

from .behaviors import reply
from .upstream import LocalUpstream


def main(argv: list[str] | None = None) -> None:
    """Run a LocalUpstream in the foreground until stdin closes (for benchmarks)."""
    ap = argparse.ArgumentParser(prog="python -m satisfice.testing", description=main.__doc__)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    ap.add_argument(
        "--words", type=int, default=0,
        help="each answer this many words (a stream's pieces: one a word); 0: 'answer from MODEL'",
    )  # fmt: skip
    args = ap.parse_args(argv)
    text = " ".join(f"word{i}" for i in range(args.words)) or None
    up = LocalUpstream(port=args.port, default=reply(text, latency=args.latency), record=False)
    with up:
        print(f"READY {up.url}", flush=True)
        sys.stdin.read()  # the parent closes stdin (or exits) to stop us


if __name__ == "__main__":
    main()
