"""The ledger's writes when its storage misbehaves: every record written, or its loss
counted and said."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from satisfice.ledger import Ledger, read_records


def _rec(i: int) -> dict[str, object]:
    return {"request_id": f"r{i}", "started_at": time.time()}


def _exits(script: Path) -> subprocess.CompletedProcess[str]:
    """`script` run to its end in a process of its own, `ledger_support` importable."""
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": path},
        check=True,
    )


@pytest.mark.parametrize("name", ["ledger.jsonl", "ledger.db"])
@pytest.mark.parametrize("how", ["renamed", "deleted"])
def test_a_ledger_file_moved_away_is_written_anew(tmp_path: Path, name: str, how: str) -> None:
    """A ledger file renamed (logrotate) or deleted under a running writer: the records
    after it go to a new file at the path, where they had gone on into the old one, or
    into none, acknowledged and lost."""
    path = tmp_path / name
    ledger = Ledger.open(path, flush_interval_s=0.005)
    ledger.put(_rec(0))
    assert ledger.flush()
    if how == "renamed":
        path.rename(tmp_path / f"old-{name}")
    else:
        for p in tmp_path.iterdir():
            p.unlink()
    ledger.put(_rec(1))
    ledger.put(_rec(2))
    assert ledger.close()
    assert [r["request_id"] for r in read_records(path)] == ["r1", "r2"]


def test_records_a_failing_sink_holds_at_exit_are_said_lost(tmp_path: Path) -> None:
    """A process that exits (no close()) while its sink is down: the records it takes
    with it are logged as lost, where they had gone without a word."""
    script = tmp_path / "exits.py"
    script.write_text(
        textwrap.dedent(
            """
            import logging, time
            from ledger_support import ScriptedSink
            from satisfice.ledger import Ledger

            class Down(ScriptedSink):
                def refuse(self, records):
                    return True

            logging.basicConfig(level=logging.ERROR)
            ledger = Ledger(Down(), flush_interval_s=0.005)
            for i in range(3):
                ledger.put({"request_id": f"r{i}", "started_at": time.time()})
            """
        )
    )
    out = _exits(script)
    assert "exiting with 3 record(s) and 0 score(s) unwritten" in out.stderr


def test_a_sqlite_ledger_renamed_away_keeps_its_records(tmp_path: Path) -> None:
    """A SQLite ledger renamed away (logrotate) keeps the records written before the move:
    they were in its WAL, which stays at the path's name, and the new file took it as its
    own, the old file left with none and those records in neither."""
    path = tmp_path / "ledger.db"
    ledger = Ledger.open(path, flush_interval_s=0.005)
    for i in range(3):
        ledger.put(_rec(i))
    assert ledger.flush()
    path.rename(tmp_path / "old-ledger.db")
    ledger.put(_rec(3))
    assert ledger.close()
    assert [r["request_id"] for r in read_records(tmp_path / "old-ledger.db")] == ["r0", "r1", "r2"]
    assert [r["request_id"] for r in read_records(path)] == ["r3"]


def test_a_backlog_a_working_sink_leaves_at_exit_is_not_called_a_failing_sink(
    tmp_path: Path,
) -> None:
    """A process that exits (no close()) with more queued than a slow but working sink
    writes in the exit hook's wait: the records left are said lost for that, where the
    sink, which had failed no write, was called failing."""
    script = tmp_path / "exits.py"
    script.write_text(
        textwrap.dedent(
            """
            import logging, time
            from ledger_support import ScriptedSink
            from satisfice.ledger import Ledger

            class Slow(ScriptedSink):
                def refuse(self, records):
                    time.sleep(1.0)
                    return False

            logging.basicConfig(level=logging.ERROR)
            ledger = Ledger(Slow(), flush_interval_s=0.005, batch=1)
            for i in range(20):
                ledger.put({"request_id": f"r{i}", "started_at": time.time()})
            """
        )
    )
    out = _exits(script)
    assert "unwritten (the sink was still writing them when the 5s exit wait ended)" in (out.stderr)
    assert "failing" not in out.stderr


def test_a_jsonl_ledger_reopened_after_a_fork_and_a_chdir_is_the_same_file(
    tmp_path: Path,
) -> None:
    """A JSONL ledger opened by a relative path, then a chdir() and a fork (a daemon's
    usual start): the child reopens the file it was writing, where it had created one of
    the same name in the new directory and then warned of a move that never was."""
    (tmp_path / "sub").mkdir()
    script = tmp_path / "forks.py"
    script.write_text(
        textwrap.dedent(
            """
            import logging, os, time
            from satisfice.ledger import Ledger

            logging.basicConfig(level=logging.WARNING)
            ledger = Ledger.open("ledger.jsonl", flush_interval_s=0.005)
            os.chdir("sub")
            pid = os.fork()
            if pid == 0:
                ledger.put({"request_id": "child", "started_at": time.time()})
                os._exit(0 if ledger.close() else 1)
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
            ledger.close()
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=True,
    )
    assert [r["request_id"] for r in read_records(tmp_path / "ledger.jsonl")] == ["child"]
    assert not (tmp_path / "sub" / "ledger.jsonl").exists()
    assert "moved or deleted" not in out.stderr


def test_the_backlog_counts_the_batch_the_writer_is_retrying() -> None:
    """A sink down with fewer records than a batch: all of them sit in the batch the writer
    retries, and the backlog (the `satisfice_ledger_backlog` gauge) had read 0 while they
    waited, telling an operator nothing was."""
    from .ledger_support import ScriptedSink

    class Down(ScriptedSink):
        down = True

        def refuse(self, records: object) -> bool:
            return self.down

    sink = Down()
    ledger = Ledger(sink, flush_interval_s=0.001)
    for i in range(5):
        ledger.put(_rec(i))
    end = time.monotonic() + 10
    while sink.calls == 0 and time.monotonic() < end:
        time.sleep(0.001)  # the writer has taken the five and failed to write them
    assert sink.calls and ledger.backlog == 5
    sink.down = False
    assert ledger.flush(15)
    assert ledger.backlog == 0 and sink.rows == [f"r{i}" for i in range(5)]
    ledger.close()


def test_a_ledger_opened_while_another_process_writes_waits_its_busy_timeout(
    tmp_path: Path,
) -> None:
    """Opening a SQLite ledger on a file another connection is writing (a replica starting
    beside another, both making the same new ledger): turning it to WAL came before the busy
    timeout was set, so the open failed at once, a ConfigError at startup, where it waits
    for the lock as a write does."""
    import sqlite3
    import threading

    path = tmp_path / "ledger.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE theirs (a)")  # a file not in WAL mode yet
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: other.execute("ROLLBACK"))
    release.start()
    try:
        ledger = Ledger.open(path, flush_interval_s=0.005)
    finally:
        release.join()
        other.close()
    ledger.put(_rec(0))
    assert ledger.close()
    assert [r["request_id"] for r in read_records(path)] == ["r0"]


def test_a_schema_version_written_by_another_opener_meanwhile_is_taken(tmp_path: Path) -> None:
    """Two processes making one new SQLite ledger: the one that read no schema version and
    then found the other's written before its own insert failed with a UNIQUE constraint
    (a ConfigError at startup). The other's insert, made as this one's begins, stands in
    for the race."""
    import sqlite3

    from satisfice.ledger import SCHEMA_VERSION, _sqlite_schema

    path = tmp_path / "ledger.db"
    db = sqlite3.connect(path, isolation_level=None)
    _sqlite_schema(db)
    db.execute("DELETE FROM meta")  # a ledger as it stands before its version is written
    other = sqlite3.connect(path, isolation_level=None)

    def the_other_inserts_first(sql: str) -> None:
        if sql.startswith("INSERT") and "meta" in sql:
            other.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    db.set_trace_callback(the_other_inserts_first)
    _sqlite_schema(db)
    assert db.execute("SELECT value FROM meta").fetchall() == [(str(SCHEMA_VERSION),)]
