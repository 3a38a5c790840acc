"""A code probe's answer that starts fork chains: none outlives the check.

Defect: the cleanup after a code probe killed the process group and then every process
whose environment held the run's mark, in one scan of /proc. A chain of processes that each
fork the next in a session of their own and exit moves to a new process id faster than the
scan reaches it: 16 such chains, started by an answer, outlived the check and forked on for
half an hour (found when they filled this machine's process table with zombies). Expected:
the code runs under a subreaper that kills and reaps every process it left (each becomes
its child once its parent is gone); the answer fails (it left processes running), and no
process of it is alive after the check. The chains here stop by themselves 20 s after the
test starts, so a regression cannot leave them running."""

from __future__ import annotations

import os
import time
from pathlib import Path

from satisfice.probe import _code


def _alive(path: str) -> list[int]:
    """Processes running the answer at `path` (its forks keep its command line), but zombies."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if path.encode() not in f.read():
                    continue
            with open(f"/proc/{d}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                    out.append(int(d))
        except (OSError, IndexError):
            continue
    return out


def test_fork_chains_an_answer_starts_end_with_the_check(tmp_path: Path) -> None:
    where = tmp_path / "path"
    stop = time.time() + 20  # the chains end by themselves then, whatever happens here
    answer = f"""```python
import os, time
open({str(where)!r}, "w").write(__file__)
for _ in range(8):
    if os.fork() == 0:
        while time.time() < {stop}:  # forks the next in a session of its own, and exits
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
        os._exit(0)
time.sleep(0.2)
def add(a, b):
    return a + b
```"""
    assert _code("assert add(2, 3) == 5")(answer) is False  # it left processes running
    path = where.read_text()
    seen: set[int] = set()
    end = time.monotonic() + 1.0
    while time.monotonic() < end:  # a chain's process lives for one fork: look again and again
        seen.update(_alive(path))
    assert time.time() < stop, "the check took so long that the chains may have ended alone"
    assert not seen, f"{len(seen)} processes of the answer outlived the check"
