"""A ledger attached before a fork (gunicorn --preload, multiprocessing's fork) records the
child's requests: each test failed on the code before its fix. Run in a fresh interpreter,
so the test process (with its threads) never forks."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

from satisfice.ledger import read_records

from .servers import postgres

ROOT = str(Path(__file__).resolve().parent.parent)

FORK = """
import asyncio, os, sys
sys.path.insert(0, sys.argv[1])
from satisfice.testing import LocalUpstream
from tests.chat_support import router

with LocalUpstream() as up:
    r = router(up.url)
    r.attach(ledger=sys.argv[2])
    r.chat_sync("parent", metadata={"who": "parent"})  # the writer thread has run
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            res = asyncio.run(asyncio.wait_for(r.chat("child", metadata={"who": "child"}), 5))
            r.feedback(res.request_id, 1.0)
            r.close(grace_s=5)
            code = 0
        finally:
            os._exit(code)
    _, st = os.waitpid(pid, 0)
    r.chat_sync("parent again", metadata={"who": "parent again"})
    r.close()
    print(os.waitstatus_to_exitcode(st))
"""


@pytest.mark.parametrize("name", ["ledger.jsonl", "ledger.db", "postgresql"])
def test_a_forked_childs_requests_are_on_the_ledger_once(tmp_path: Path, name: str) -> None:
    # the child inherited the ledger without its writer thread: its records and scores were
    # queued where nothing wrote them, and close() called them lost, "the sink was failing"
    with contextlib.ExitStack() as stack:
        # (PostgreSQL: the child's own connection, the parent's session left as it was)
        path = stack.enter_context(postgres()) if name == "postgresql" else tmp_path / name
        _fork_and_check(path)


def _fork_and_check(path: str | Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", FORK, ROOT, str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr
    assert "lost" not in out.stderr, out.stderr
    recs = list(read_records(path))
    who = sorted(r["metadata"]["who"] for r in recs)
    assert who == ["child", "parent", "parent again"]  # each once: none written twice
    child = next(r for r in recs if r["metadata"]["who"] == "child")
    assert child.get("feedback") == 1.0  # the score given in the child, written there
