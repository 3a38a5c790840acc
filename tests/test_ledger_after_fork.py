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


CLOSE_BESIDE = """
import asyncio, os, sys
sys.path.insert(0, sys.argv[1])
from satisfice.testing import LocalUpstream
from tests.chat_support import router

with LocalUpstream() as up:
    r = router(up.url)
    r.attach(ledger=sys.argv[2])
    r.chat_sync("parent", metadata={"who": "parent"})
    assert r.ledger.flush(10)  # written: the parent's connection is open at the fork
    wrote, closed = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            async def child(n):
                for i in range(n):
                    await r.chat(f"child {i}", metadata={"who": "child"})
            asyncio.run(child(1))
            assert r.ledger.flush(10)
            os.write(wrote[1], b"x")
            os.read(closed[0], 1)  # the parent has closed its ledger meanwhile
            asyncio.run(child(20))
            r.close(grace_s=5)
            code = 0
        finally:
            os._exit(code)
    os.read(wrote[0], 1)
    r.close()  # the last connection the parent knows of: it checkpoints its WAL
    os.write(closed[1], b"x")
    _, st = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(st))
"""


def test_a_sqlite_ledger_closed_by_the_parent_keeps_what_its_child_writes_after(
    tmp_path: Path,
) -> None:
    """The child had opened a connection of its own beside the one it inherited: SQLite's
    locks are the process's, and its bookkeeping, copied from the parent, said the new
    connection held them already, so it took none. The parent, closing what it took for the
    last connection, checkpointed and deleted the WAL the child went on committing to: 20
    records the child's ledger acknowledged were in no file. The connection is now closed
    before the fork and each process opens its own."""
    path = tmp_path / "ledger.db"
    out = subprocess.run(
        [sys.executable, "-c", CLOSE_BESIDE, ROOT, str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr
    who = sorted(r["metadata"]["who"] for r in read_records(path))
    assert who == ["child"] * 21 + ["parent"], who


def test_a_sqlite_sink_made_while_a_fork_is_under_way_waits_for_it(tmp_path: Path) -> None:
    """A sink made by another thread between the before-fork handler (which a writer's busy
    wait can hold up for seconds) and the after-fork one had been released unlocked by the
    latter: a RuntimeError that left the sinks after it locked, their writers stopped for
    good. It now joins once the fork is over, and exactly the sinks locked are released."""
    import threading

    from satisfice import ledger

    first = ledger.SQLiteSink(tmp_path / "a.db")
    made: list[ledger.SQLiteSink] = []
    ledger._sqlite_before_fork()  # as os.fork() runs it
    try:
        t = threading.Thread(target=lambda: made.append(ledger.SQLiteSink(tmp_path / "b.db")))
        t.start()
        t.join(0.5)  # (it waits for the fork to end)
    finally:
        ledger._sqlite_after_fork_in_parent()
    t.join(10)
    assert made and not first._use.locked() and not made[0]._use.locked()
    first.write([])  # each usable: the connection opened again
    first.close()
    made[0].close()
