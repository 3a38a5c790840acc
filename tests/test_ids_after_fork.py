"""Request ids stay unique across a fork (a pre-forking server's workers): the test failed
on the code before its fix. Run in a fresh interpreter, so the test process never forks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)

FORK = """
import os, sys
sys.path.insert(0, sys.argv[1])
from satisfice import Router
r = Router()
r.route("before the fork").request_id  # ids issued: the random checks drawn ahead
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    ids = [r.route(f"child {i}").request_id for i in range(3)]
    os.write(write, " ".join(ids).encode())
    os._exit(0)
os.waitpid(pid, 0)
child = os.read(read, 4096).decode().split()
parent = [r.route(f"parent {i}").request_id for i in range(3)]
print(len(set(child) | set(parent)))
"""


def test_a_forked_child_issues_request_ids_its_parent_does_not() -> None:
    # the child drew its ids' numbers and random checks from the parent's copy: its
    # requests had the ids of the parent's next ones, and a shared ledger kept one of each
    out = subprocess.run(
        [sys.executable, "-c", FORK, ROOT], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "6"
