"""The ledger: one record per request, written off the request path, never lost quietly.

    ledger = Ledger.open("satisfice.db")            # SQLite (WAL); or "x.jsonl",
    router.attach(ledger=ledger)                    # or "postgresql://..." (psycopg 3)

The request path only appends the finished `ChatResult` (or the failure) to a bounded queue;
one writer thread turns queued items into records and writes them in batches, one
transaction per batch. A record is **acknowledged** when the transaction (SQLite, PostgreSQL)
or the write and flush (JSONL) holding it has returned: from then on it survives the process
being killed (SIGKILL); `on_ack(ids)` is called with the acknowledged request ids, and
`flush()` waits for everything queued so far. (Surviving power loss as well needs
`synchronous=FULL` for SQLite, `fsync=True` for JSONL: both are options.)

A failing sink never fails a request: the writer keeps the batch and retries with backoff
while new records queue behind it (built, and counted in the metrics, as they come), up to
`max_buffer` records; past that the oldest are dropped, counted in `dropped` (and the
`satisfice_ledger_dropped_total` metric) and logged.

Schema (version 1): `requests` holds the columns reports filter and group by and the whole
record as JSON; `feedback` holds scores given later (`router.feedback`, validators), each
with the model it was given for (`model`; a row without one, written before it was
stored, scores the answering model); `meta` holds `schema_version`. `retention_days`
deletes older requests, and the scores given before the same time, once a day.
"""

from __future__ import annotations

import atexit
import codecs
import contextlib
import fcntl
import functools
import json
import logging
import math
import os
import sqlite3
import sys
import threading
import time
import uuid
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ._json import dumps_record, record_default
from ._real import as_count, as_real
from ._redact import scrub, scrub_values, scrubbing
from .accounting import cost_of
from .errors import ConfigError, InputError

if TYPE_CHECKING:
    from .decision import Decision
    from .result import Attempt, ChatResult

__all__ = ["JSONLSink", "Ledger", "PostgresSink", "SQLiteSink", "failure_record", "read_records"]

SCHEMA_VERSION = 1
_FELL = ("error", "skipped")  # attempts a request fell back from
_log = logging.getLogger("satisfice.ledger")

#: The columns of `requests` besides the JSON record (name, SQLite type, PostgreSQL type).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("request_id", "TEXT PRIMARY KEY", "TEXT PRIMARY KEY"),
    ("ts", "REAL", "DOUBLE PRECISION"),
    ("day", "TEXT", "TEXT"),
    ("outcome", "TEXT", "TEXT"),
    ("api_key", "TEXT", "TEXT"),
    ("team", "TEXT", "TEXT"),
    ("session", "TEXT", "TEXT"),
    ("task", "TEXT", "TEXT"),
    ("routed_model", "TEXT", "TEXT"),
    ("model", "TEXT", "TEXT"),
    ("deployment", "TEXT", "TEXT"),
    ("p_good", "REAL", "DOUBLE PRECISION"),
    ("est_cost_usd", "REAL", "DOUBLE PRECISION"),
    ("cost_usd", "REAL", "DOUBLE PRECISION"),
    ("reference_cost_usd", "REAL", "DOUBLE PRECISION"),
    ("cost_estimated", "INTEGER", "INTEGER"),
    ("tokens_in", "INTEGER", "BIGINT"),
    ("tokens_out", "INTEGER", "BIGINT"),
    ("latency_s", "REAL", "DOUBLE PRECISION"),
    ("overhead_s", "REAL", "DOUBLE PRECISION"),
    ("attempts", "INTEGER", "INTEGER"),
    ("fallbacks", "INTEGER", "INTEGER"),
    ("cascade_steps", "INTEGER", "INTEGER"),
    ("cache_hit", "INTEGER", "INTEGER"),
    ("record", "TEXT", "TEXT"),
)
_NAMES = [c[0] for c in COLUMNS]

#: A feedback row: (request_id, ts, score, source, the model it scores or None for the
#: answering one). The model is stored because `router.feedback(rid, s, model=M)` may score
#: another model's answer beside the primary's: training had credited it to the primary.
FeedbackRow = tuple[str, float, float, str, str | None]


def _text(v: Any) -> str | None:
    """A column's text: None stays None, anything else its str() without NUL characters
    (which PostgreSQL refuses) and with any lone surrogate replaced (which no database
    driver encodes), so caller metadata of any type cannot poison a batch."""
    if v is None:
        return None
    if type(v) is str and v.isascii() and v.find("\x00") < 0:  # most are: O(1) isascii
        return v
    t = str(v).replace("\x00", "")
    try:
        t.encode("utf-8")
    except UnicodeEncodeError:  # half a surrogate pair: no driver stores it; U+FFFD does
        t = t.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return t


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


def _json(rec: Mapping[str, Any]) -> str:
    """The record as strict JSON, whatever the caller put in its metadata: non-string keys
    become strings as json.dumps writes them, an Enum its value, other odd values their
    str(), NaN and infinities null (bare NaN is not JSON, and strict readers of a JSONL file
    reject the line), a cycle or a deep nest a marker, rather than failing the batch. By
    orjson where it writes the same values (`dumps_record`), else by the standard library."""
    fast = dumps_record(rec)
    return fast if fast is not None else _json_stdlib(rec)


def _json_stdlib(rec: Mapping[str, Any]) -> str:
    """`_json` by the standard library: what orjson does not write as it does."""
    try:
        return json.dumps(rec, default=record_default, separators=(",", ":"), allow_nan=False)
    except Exception:  # NaN, a cycle, a key or a value whose str() raises: cleaned first
        return json.dumps(_plain(rec), default=_str, separators=(",", ":"), allow_nan=False)


def _str(v: Any) -> str:
    """str(v), or a marker when its __str__ raises (a record is not lost for it)."""
    try:
        return str(v)
    except Exception:
        return f"<unprintable {type(v).__name__}>"


def _key(k: Any) -> str:
    """A key as json.dumps writes it (None "null", True "true", NaN "NaN"), else its str()."""
    if isinstance(k, str):
        return k
    if k is None or isinstance(k, bool | int | float):
        try:
            return json.dumps(k)
        except ValueError:  # an int past Python's 4,300 digits
            return "<integer too large>"
    return _str(k)


def _plain(v: Any, depth: int = 0, seen: frozenset[int] = frozenset()) -> Any:
    """`v` with only what json.dumps writes as the ledger's other paths do: a NaN or an
    infinity null, a cycle or a deep nest a marker, keys and other values as text."""
    if isinstance(v, dict | list | tuple):  # as json.dumps and orjson take them (no other
        # Mapping: its str()), and as deep as orjson writes
        if id(v) in seen or depth > 254:
            return "<cycle>" if id(v) in seen else "<nested too deep>"
        inner = seen | {id(v)}
        if isinstance(v, dict):
            return {_key(k): _plain(x, depth + 1, inner) for k, x in v.items()}
        return [_plain(x, depth + 1, inner) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 14_000:
        return "<integer too large>"  # past Python's 4,300 digits: json.dumps cannot
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    if isinstance(v, Enum):
        return _plain(v.value, depth + 1, seen)
    return _str(v)


def _undated(rec: Mapping[str, Any]) -> str | None:
    """Why a record's `started_at` is no time, or None: the writer drops such a record
    (past year 9999 `time.gmtime` had raised OSError in it, taken for a sink that is down:
    the batch was retried forever) and a reader refuses one (`_problem`)."""
    ts = rec.get("started_at")
    if ts is None:
        return None  # the writer stamps the time it writes it (`_build`)
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not 0 <= ts < _LATEST_TS:
        return f"started_at must be a Unix time in seconds (1970 to 9999), got {ts!r:.40}"
    return None


@functools.lru_cache(maxsize=4)
def _day(n: int) -> str:
    """The UTC date of day `n` since the epoch: the records of a batch share one or two."""
    return time.strftime("%Y-%m-%d", time.gmtime(n * 86400))


def _row(rec: Mapping[str, Any]) -> tuple[Any, ...]:
    meta: Mapping[str, Any] = rec["metadata"] if isinstance(rec.get("metadata"), Mapping) else {}
    dec = rec.get("decision") or {}
    cands = dec.get("candidates") or []
    routed = dec.get("model")
    p_good = next((c.get("p_good") for c in cands if c.get("model") == rec.get("model")), None)
    ts = rec.get("started_at")  # (0 is 1970, not "none": `_undated`)
    # a record without one (a JSONL line an older writer wrote) is undated, not dated by
    # whoever reads it: each report had put its spend on the day it was run
    ts = None if ts is None else float(ts)
    casc = rec.get("cascade")
    attempts = [a for a in rec.get("attempts") or () if isinstance(a, Mapping)]
    return (
        _text(rec["request_id"]),
        ts,
        "undated" if ts is None else _day(int(ts // 86400)),
        _text(rec.get("outcome", "ok")),
        _text(meta.get("key")),
        _text(meta.get("team")),
        _text(meta.get("session")),
        _text(rec.get("task")),
        _text(routed),
        _text(rec.get("model")),
        _text(rec.get("deployment")),
        as_real(p_good),
        as_real(rec.get("est_cost_usd")),
        as_real(rec.get("total_cost_usd")),
        as_real(rec.get("reference_cost_usd")),
        int(bool(rec.get("cost_estimated"))),
        _int(rec.get("tokens_in")),
        _int(rec.get("tokens_out")),
        as_real(rec.get("latency_s")),
        as_real(rec.get("overhead_s")),
        len(attempts),
        # models that failed or were skipped besides the one that answered: a fallback (a
        # race's or hedge's loser, a cascade's escalation and a check's call are not)
        len(
            {
                a.get("model")
                for a in attempts
                if a.get("model") != rec.get("model") and a.get("outcome") in _FELL
            }
        ),
        len(casc.get("steps") or ()) if isinstance(casc, Mapping) else 0,
        int(bool(rec.get("cache_hit"))),
        _json(rec),
    )


def _scrub_callers(rec: dict[str, Any]) -> None:
    """The caller's parts of a record (its metadata, and the messages `record_prompts`
    keeps) with the keys satisfice knows scrubbed, here on the writer's thread: an upstream
    key a caller put in either had been stored whole, and its metadata's `key` made a
    metrics label of it. Made plain first (`_plain`, a cycle or a deep nest a marker), as it
    is written then anyway."""
    if not scrubbing():
        return
    for part in ("metadata", "messages"):
        v = rec.get(part)
        if v:
            # as it is written (`_plain`: tuples as lists, bytes, sets and other objects as
            # their text, where scrub_values reads str, list and dict alone)
            rec[part] = scrub_values(_plain(v))


def record_of(result: ChatResult) -> dict[str, Any]:
    """The ledger record of an answered request: `ChatResult.to_record()` plus what the
    reports need (the reference model's estimated cost, for savings)."""
    rec = result.to_record()
    rec["outcome"] = "ok"
    # What the same tokens would have cost on the reference model: the saving a report shows
    # compares billed with billed, not billed with an estimate; every part at the reference's
    # own rate, as the answer's cost is (cache writes and reasoning had been left out, and a
    # request answered by the reference itself showed a saving of -25% and -296%).
    ref = result.decision.snapshot.registry.reference
    rec["reference_model"] = ref.id
    if result.model == ref.id:  # answered by the reference: what it was billed, saving 0
        rec["reference_cost_usd"] = result.cost_usd
    else:  # its own price, else its first deployment's (a model priced per deployment)
        rec["reference_cost_usd"] = cost_of(ref.quoted_price, result.usage)
    return rec


def failure_record(
    decision: Decision | None,
    error: BaseException,
    attempts: Sequence[Attempt] = (),
    *,
    started_at: float,
    latency_s: float,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of a request that raised (no route, every attempt failed, bad request)."""
    rid = decision.request_id if decision is not None else f"fail-{uuid.uuid4().hex[:16]}"
    rec: dict[str, Any] = {
        "request_id": rid,
        "started_at": started_at,
        "metadata": dict(metadata or {}),
        "outcome": "error",
        "error_type": type(error).__name__,
        # scrubbed before it is cut: an exception not of ours may quote a request's headers
        "error": scrub(str(error))[:2000],
        "latency_s": latency_s,
        "attempts": [a.to_dict() if hasattr(a, "to_dict") else {"error": str(a)} for a in attempts],
        "total_cost_usd": None,
    }
    if decision is not None:
        rec["task"] = decision.task
        rec["decision"] = decision.record()
        rec["est_cost_usd"] = decision.est_cost_usd
    result: Any = getattr(error, "result", None)
    if result is not None and hasattr(result, "to_dict"):
        # the steps a ladder climbed, however it ended (a budget, every call failed, its
        # caller gone): what the report's escalation figures read
        rec["cascade"] = result.to_dict()
    from .result import billed_cost  # the rule ChatResult.total_cost_usd follows

    # What the attempts were billed ($0 when every call was refused before any billing);
    # unknown when one was unpriced, or when the caller left with a call that may have
    # been in flight and is on no attempt
    out = billed_cost(attempts)
    if out is not None and (out[1] or not getattr(error, "cost_unknown", False)):
        rec["total_cost_usd"] = out[0]
    # as ChatResult.to_record says it: a cut-off call is billed at an estimate
    rec["cost_estimated"] = any(getattr(a, "cost_estimated", False) for a in attempts)
    return rec


# -- sinks ------------------------------------------------------------------------------------


class Sink(Protocol):
    """Where records go. Called from the ledger's writer thread only."""

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Write the records durably (one transaction); raise to have them retried."""

    def feedback(self, rows: Sequence[FeedbackRow]) -> None:
        """(request_id, ts, score, source, model) rows; model None: the answering one."""

    def expire(self, before_ts: float) -> int: ...

    def close(self) -> None: ...

    # Optional: `after_fork()`, called in a forked child before the child's writer starts,
    # makes the sink's connection (or file) the child's own. A ledger whose sink has none
    # writes nothing in a forked child, saying so (its connection is the parent's).


class SQLiteSink:
    """SQLite in WAL mode: no set-up, one file, readers never block the writer."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL") -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigError("synchronous must be NORMAL or FULL")
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._file = (0, 0)  # (st_dev, st_ino) of the file the connection has open
        # what is checked and reopened there: the file it names now (a chdir() since
        # would have it check, and open, another)
        self._where = os.path.abspath(self.path)
        self._sync = synchronous
        # held while the connection is used, and across a fork (`_before_fork`)
        self._use = threading.Lock()
        self._connect(ConfigError)  # fail now, in the caller's thread, on a bad path
        with _SQLITE_FORK:  # (not while a fork is under way: see _sqlite_before_fork)
            _SQLITE_SINKS.add(self)

    def _connect(self, error: type[Exception] = OSError) -> sqlite3.Connection:
        """The connection, opened if it is not. Failing, `error`: the caller's to fix at
        the start (ConfigError), else the sink down (`_SinkDown`: retried, no record's
        fault; a "database is locked" reopening after a fork had dropped scores)."""
        if self._db is not None and not self._still_there():
            # the file was deleted or replaced under it: its transactions had gone on into
            # the old file, unlinked or renamed away, acknowledged and lost. Its WAL stays
            # at the path's name (`-wal`): checkpointed into the old file (where a rotation
            # keeps them) and emptied first, or the new file took it as its own, the records
            # acknowledged before the move lost from both
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
            _log.warning("ledger: %s was moved, deleted or replaced; opening the file there",
                         self.path, extra={"event": "ledger_reopened"})  # fmt: skip
        if self._db is None:
            try:
                db = sqlite3.connect(self._where, check_same_thread=False, isolation_level=None)
                st = os.stat(self._where)  # (the file just opened: `_still_there` compares)
                self._file = (st.st_dev, st.st_ino)
                _wal(db)
                db.execute(f"PRAGMA synchronous={self._sync}")
                db.execute(f"PRAGMA busy_timeout={int(_SQLITE_BUSY_S * 1000)}")
                _sqlite_schema(db)
            except (sqlite3.Error, OSError) as e:
                why = f"cannot open the ledger {self.path}: {e}"
                raise (ConfigError(why) if error is ConfigError else _SinkDown(why)) from None
            self._db = db
        return self._db

    def _still_there(self) -> bool:
        """Whether the file at `path` is the one the connection has open."""
        try:
            st = os.stat(self._where)
        except FileNotFoundError:
            return False
        except OSError:  # (not ours to judge: the write says what is wrong)
            return True
        return (st.st_dev, st.st_ino) == self._file

    def _in_transaction(self, sql: str, rows: Sequence[Any]) -> None:
        with self._use:
            db = self._connect()
            db.execute("BEGIN")
            try:
                db.executemany(sql, rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        marks = ",".join("?" * len(_NAMES))
        self._in_transaction(
            f"INSERT OR REPLACE INTO requests ({','.join(_NAMES)}) VALUES ({marks})",
            [_row(r) for r in records],
        )

    def feedback(self, rows: Sequence[FeedbackRow]) -> None:
        self._in_transaction(
            "INSERT INTO feedback (request_id, ts, score, source, model) VALUES (?,?,?,?,?)",
            rows,
        )

    def expire(self, before_ts: float) -> int:
        with self._use:
            db = self._connect()
            cur = db.execute("DELETE FROM requests WHERE ts < ?", (before_ts,))
            # and the scores given before it, whose requests are older still: kept, they
            # grew the file for good and every read held them all (`_scores`)
            db.execute("DELETE FROM feedback WHERE ts < ?", (before_ts,))
            return cur.rowcount

    def close(self) -> None:
        with self._use:
            if self._db is not None:
                self._db.close()
                self._db = None

    # SQLite's connections do not cross a fork: its locks are the process's, and a child
    # that opened its own beside the one it inherited took none of them (its bookkeeping
    # said it held them already), so the parent's close deleted the WAL the child was
    # committing to. The connection is closed before any fork (between two writes) and
    # opened again at the next write, in the parent and in the child alike.
    def _before_fork(self) -> None:
        self._use.acquire()
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):  # (a fork is not stopped for it)
                db.close()

    def _after_fork_in_parent(self) -> None:
        self._use.release()

    def after_fork(self) -> None:
        """In a forked child: the ledger may write here (the connection was closed before
        the fork and opens at the child's first write)."""
        self._use = threading.Lock()


#: Every SQLiteSink, its connection closed before a fork (`SQLiteSink._before_fork`).
_SQLITE_SINKS: weakref.WeakSet[SQLiteSink] = weakref.WeakSet()
#: Held from before a fork to after it: no sink joins `_SQLITE_SINKS` meanwhile, and those
#: locked before it (`_FORKING`) are the ones released after it (a sink made by another
#: thread while a writer's busy wait held the fork up had been released unlocked: a
#: RuntimeError that left the sinks after it locked, their writers stopped for good).
_SQLITE_FORK = threading.Lock()
_FORKING: list[SQLiteSink] = []


def _sqlite_before_fork() -> None:
    _SQLITE_FORK.acquire()
    _FORKING[:] = list(_SQLITE_SINKS)
    for sink in _FORKING:
        sink._before_fork()


def _sqlite_after_fork_in_parent() -> None:
    for sink in _FORKING:
        sink._after_fork_in_parent()
    _FORKING.clear()
    _SQLITE_FORK.release()


def _sqlite_after_fork_in_child() -> None:
    global _SQLITE_FORK
    _SQLITE_FORK = threading.Lock()
    _FORKING.clear()
    for sink in list(_SQLITE_SINKS):
        sink.after_fork()


# (registered before the ledgers' handler, so called before it: a ledger's writer in the
# child starts on a sink whose lock is its own)
os.register_at_fork(
    before=_sqlite_before_fork,
    after_in_parent=_sqlite_after_fork_in_parent,
    after_in_child=_sqlite_after_fork_in_child,
)


def _wal(db: sqlite3.Connection) -> None:
    """Turn the file to WAL, waiting for its lock as a write does (`busy_timeout`): SQLite
    fails the change at once, its busy handler not asked, while another connection writes
    to a file not in WAL yet, so a replica opening a new ledger beside another that was
    making it failed (a ConfigError at startup)."""
    deadline = time.monotonic() + _SQLITE_BUSY_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_schema(db: sqlite3.Connection) -> None:
    cols = ", ".join(f"{n} {t}" for n, t, _ in COLUMNS)
    db.execute(f"CREATE TABLE IF NOT EXISTS requests ({cols})")
    db.execute("CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS feedback "
        "(request_id TEXT, ts REAL, score REAL, source TEXT, model TEXT)"
    )
    if not _has_model_column(db):  # a ledger from before scores named their model
        try:
            db.execute("ALTER TABLE feedback ADD COLUMN model TEXT")
        except sqlite3.OperationalError as e:  # another process added it meanwhile
            if "duplicate column" not in str(e):
                raise
    db.execute("CREATE INDEX IF NOT EXISTS feedback_id ON feedback (request_id)")
    # retention's daily delete finds scores by time: without it, a scan of them all
    db.execute("CREATE INDEX IF NOT EXISTS feedback_ts ON feedback (ts)")
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    version = "SELECT value FROM meta WHERE key = 'schema_version'"
    row = db.execute(version).fetchone()
    if row is None:
        # OR IGNORE, and read again: another process making the same new ledger may have
        # written it since the read (a plain INSERT failed UNIQUE: a ConfigError at startup)
        db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        row = db.execute(version).fetchone()
    if int(row[0]) != SCHEMA_VERSION:
        raise ConfigError(f"ledger schema version {row[0]}; this satisfice writes {SCHEMA_VERSION}")


_SQLITE_BUSY_S = 5.0  # how long a SQLite write, or the open, waits for another's lock
LOCK_WAIT_S = 5.0  # how long a JSONL batch waits for the file's lock before it fails


class JSONLSink:
    """One JSON object per line, appended: for pipelines that tail a file. A batch is one
    write of whole lines; if it fails part-way (a full disk), the file is cut back to where
    the batch began, so a retry never duplicates records. A batch holds the file's lock
    (`flock`) from reading its end to its last byte, so that another process's ledger on the
    same file appends before or after it: a cut back to an end read earlier had taken that
    process's acknowledged records with it."""

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self._where = os.path.abspath(self.path)  # (as SQLiteSink's: a chdir() since)
        self._fsync = fsync
        # held by a batch from its lock to its last byte, and by close(): a descriptor is
        # never closed under a batch (its number may go to another file meanwhile)
        self._busy = threading.Lock()
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"cannot open the ledger {self.path}: {e}") from None

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        self._append("".join(_json(r) + "\n" for r in records).encode())

    def _append(self, data: bytes) -> None:
        with self._busy:
            self._append_locked(data)

    def _append_locked(self, data: bytes) -> None:
        fd = self._lock_current()
        try:
            start = os.fstat(fd).st_size
            if start and os.pread(fd, 1, start - 1) != b"\n":
                data = b"\n" + data  # a torn last line (a crash mid-write) would swallow ours
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if self._fsync:
                    os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, start)
                raise
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock_current(self) -> int:
        """The descriptor of the file now at `path`, locked, reopened (created) when the one
        open is no longer there: renamed away (logrotate) or deleted, its batches had gone on
        into the old file, or into none, acknowledged and lost. Checked under the lock, so
        that a rotation by another process's ledger is seen too; a failure to reopen is the
        sink down (an OSError: the batch kept and retried)."""
        while True:
            fd = self._fd
            if fd is None:
                raise OSError("the ledger file is closed")
            self._lock(fd)
            try:
                now, ours = os.stat(self._where), os.fstat(fd)
                if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
                    return fd
            except FileNotFoundError:
                pass
            except BaseException:
                fcntl.flock(fd, fcntl.LOCK_UN)
                raise
            fcntl.flock(fd, fcntl.LOCK_UN)
            self._fd = os.open(self._where, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            os.close(fd)
            _log.warning("ledger: %s was moved or deleted; writing to a new file there",
                         self.path, extra={"event": "ledger_reopened"})  # fmt: skip

    def _lock(self, fd: int) -> None:
        """The file's lock, waited for at most `LOCK_WAIT_S`: a batch fails (and is tried
        again later) rather than wait for good on a holder that stalled (a paused process);
        and close() waits for the batch (`_busy`), never closing the descriptor under it."""
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OSError(
                        f"the ledger file {self.path} stayed locked by another process for "
                        f"{LOCK_WAIT_S:g}s"
                    ) from None
                time.sleep(0.005)

    def feedback(self, rows: Sequence[FeedbackRow]) -> None:
        self.write([{"feedback": {"request_id": i, "ts": t, "score": s, "source": src,
                                  "model": m}} for i, t, s, src, m in rows])  # fmt: skip

    def expire(self, before_ts: float) -> int:
        return 0  # an append-only file: rotate it with the pipeline's tools

    def close(self) -> None:
        with self._busy:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def after_fork(self) -> None:
        """In a forked child: the file opened anew, so that its `flock` keeps the child's
        batches and the parent's apart (a lock is the open file's, which a fork shares)."""
        self._busy = threading.Lock()
        if self._fd is not None:
            os.close(self._fd)  # (the child's copy: the parent's stays open)
            self._fd = None
            with contextlib.suppress(OSError):  # (else written off as down, and retried)
                self._fd = os.open(self._where, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)


def _psycopg() -> Any:
    """psycopg, or a ConfigError that says what to install: the writer's and the readers'
    (`satisfice report`, `train` and `calibrate --from-ledger` on a postgresql:// ledger had
    ended in a raw ModuleNotFoundError traceback without it)."""
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            "a PostgreSQL ledger needs psycopg 3: pip install 'satisfice[postgres]'"
        ) from None
    return psycopg


class PostgresSink:
    """PostgreSQL (psycopg 3) for several replicas writing one ledger."""

    def __init__(self, dsn: str) -> None:
        _psycopg()  # present, or a clear error now rather than later
        self.dsn = dsn
        self._db: Any = None
        try:
            self._connect()
        except _SinkDown as e:  # opening it: the caller's to fix
            raise ConfigError(str(e)) from None

    def _connect(self) -> Any:
        """The connection, (re)opened when it is missing or closed (a restart, a failover).
        A failure to reopen it is the sink down (`_SinkDown`, an OSError), never a record
        the sink refused: as a ConfigError, a record written while PostgreSQL restarted had
        been dropped as refused (`_refused`)."""
        import psycopg

        if self._db is not None and not self._db.closed:
            return self._db
        try:
            self._db = psycopg.connect(self.dsn, autocommit=False)
            with self._db.cursor() as cur:
                # Replicas starting together would race their CREATE ... IF NOT EXISTS (it
                # is not atomic in PostgreSQL): one transaction-scoped lock serialises them.
                cur.execute("SELECT pg_advisory_xact_lock(7461023)")
                # the version first: another version's ledger is refused, not altered
                cur.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                cur.execute(
                    "INSERT INTO meta VALUES ('schema_version', %s) ON CONFLICT DO NOTHING",
                    (str(SCHEMA_VERSION),),
                )
                cur.execute("SELECT value FROM meta WHERE key = 'schema_version'")
                _pg_version((cur.fetchone() or (None,))[0], "write", "writes")
                cols = ", ".join(f"{n} {pg}" for n, _, pg in COLUMNS)
                cur.execute(f"CREATE TABLE IF NOT EXISTS requests ({cols})")
                cur.execute("CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)")
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS feedback (request_id TEXT, ts DOUBLE PRECISION,"
                    " score DOUBLE PRECISION, source TEXT)"
                )
                # added since: a ledger from before scores named their model gains it
                cur.execute("ALTER TABLE feedback ADD COLUMN IF NOT EXISTS model TEXT")
                # scores are read in time order and deleted by time (retention): without
                # it, each was a scan of every score ever given
                cur.execute("CREATE INDEX IF NOT EXISTS feedback_ts ON feedback (ts)")
            self._db.commit()
        except psycopg.Error as e:
            raise _SinkDown(f"cannot open the PostgreSQL ledger: {type(e).__name__}") from None
        except ConfigError as e:  # another schema version: opening it, the caller's to fix;
            # reopening it (migrated meanwhile), the sink down: records kept, not dropped
            self._db.close()  # (its transaction, and the lock, go with it)
            raise _SinkDown(str(e)) from None
        return self._db

    def _run(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        db = self._connect()
        try:
            with db.cursor() as cur:
                cur.executemany(sql, rows)
                n = cur.rowcount
            db.commit()
            return int(n)
        except BaseException:
            if not db.closed:
                db.rollback()  # else the session stays aborted and refuses every write
            raise

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        marks = ",".join(["%s"] * len(_NAMES))
        sets = ",".join(f"{n}=EXCLUDED.{n}" for n in _NAMES[1:])
        self._run(
            f"INSERT INTO requests ({','.join(_NAMES)}) VALUES ({marks}) "
            f"ON CONFLICT (request_id) DO UPDATE SET {sets}",
            [_row(r) for r in records],
        )

    def feedback(self, rows: Sequence[FeedbackRow]) -> None:
        self._run(
            "INSERT INTO feedback (request_id, ts, score, source, model) VALUES (%s,%s,%s,%s,%s)",
            [(_text(i), t, s, _text(src), _text(m)) for i, t, s, src, m in rows],
        )

    def expire(self, before_ts: float) -> int:
        n = self._run("DELETE FROM requests WHERE ts < %s", [(before_ts,)])
        self._run("DELETE FROM feedback WHERE ts < %s", [(before_ts,)])  # (as SQLite's)
        return n

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def after_fork(self) -> None:
        """In a forked child: a connection of its own, opened at its first write. The
        parent's is kept, never used nor closed here (closed, it would end the parent's
        session on the socket they share)."""
        self._inherited, self._db = self._db, None


def target_kind(target: str | Path) -> Literal["pg", "jsonl", "sqlite"]:
    """Which store a ledger target names. A URL other than postgresql:// is refused, saying
    only its scheme: "postgresql+psycopg://app:PASSWORD@..." (SQLAlchemy's form) had been
    taken for a SQLite path, and the error that it could not be opened printed it whole."""
    t = str(target)
    if t.startswith(("postgresql://", "postgres://")):
        return "pg"
    if "://" in t:
        scheme = t.split("://", 1)[0][:40]
        raise ConfigError(
            f"the ledger target's URL scheme {scheme!r} is not one satisfice writes to: give "
            "postgresql://USER:PASSWORD@HOST/DB (psycopg 3), a .jsonl file or a SQLite file"
        )
    if "\x00" in t:
        raise ConfigError("the ledger target holds a NUL character; give a file path")
    return "jsonl" if t.endswith((".jsonl", ".ndjson")) else "sqlite"


def open_sink(target: str | Path) -> Sink:
    t = str(target)
    kind = target_kind(t)
    if kind == "pg":
        return PostgresSink(t)
    return JSONLSink(t) if kind == "jsonl" else SQLiteSink(t)


#: The longest the writer thread builds records (and counts them for /metrics) before it hands
#: the GIL over. A batch (what 20 ms of requests leave) held the event loop's thread up whole
#: whenever it got the GIL during a request's I/O: that request's added latency took all of
#: it (the served p99). Handing it over after every record instead cost the median request
#: a hand-over per I/O.
_HOLD_S = 2e-4
#: ... unless this many records wait to be built or written: then it holds the GIL up to a switch
#: interval (5 ms) at a time, about half the interpreter's time, until it has caught up.
#: An event loop that seldom waits on I/O (CPU-bound work, an upstream answering at once)
#: had left it 0.2 ms in every 5 ms, and 20,000 requests left 15,000 records queued, the
#: queue growing until records were dropped.
_BEHIND = 1000
# An idle writer (a flush interval went by with nothing queued) sleeps until a record comes
# (put() wakes it) or this long: polling every flush interval had woken an idle server's
# writer 50 times a second (0.8% of a CPU), and retention and feedback still get a turn.
_IDLE_WAIT_S = 1.0

# -- the ledger: a queue and a writer thread --------------------------------------------------


class _SinkDown(ConnectionError):
    """A sink that cannot be reached (reopening its connection failed)."""


def _refused(e: Exception) -> bool:
    """Whether a sink's error, while other records go through, is about the record it was
    given (a value it cannot encode or store) rather than about the sink: an OSError (a
    full disk, a lost connection) or a database's OperationalError/InterfaceError (full,
    locked, gone) says the sink is down, and no record is dropped for it. Database
    drivers' classes are told by name, so that no driver need be imported."""
    if isinstance(e, OSError):
        return False
    names = {c.__name__ for c in type(e).__mro__}
    return not names & {"OperationalError", "InterfaceError"}


_OPTIONS = ("max_buffer", "batch", "flush_interval_s", "retention_days")


def _check_options(
    max_buffer: object = 1, batch: object = 1, flush_interval_s: object = 0.0,
    retention_days: object = None,
) -> None:  # fmt: skip
    """ConfigError naming a ledger option that cannot work: `retention_days=-1` had deleted
    every record on the writer's first pass, and `batch=0` had written none."""
    for name, v in (("max_buffer", max_buffer), ("batch", batch)):
        if (n := as_count(v)) is None or n < 1:  # (numpy's integers, and 3.0, are whole)
            raise ConfigError(f"Ledger {name} must be a whole number >= 1, got {v!r:.40}")
    checks = (("flush_interval_s", flush_interval_s, 0.0), ("retention_days", retention_days, 0.0))
    for name, v, low in checks:
        if name == "retention_days" and v is None:
            continue
        x = as_real(v)
        if x is None or not math.isfinite(x) or x < low or (name == "retention_days" and x == 0):
            raise ConfigError(
                f"Ledger {name} must be a finite number "
                f"{'> 0 (or None: keep every record)' if name == 'retention_days' else '>= 0'}, "
                f"got {v!r:.40}"
            )


_EXIT_WAIT_S = 5.0  # how long the exit hook waits for the backlog to be written

#: Every open Ledger, given a writer of its own in a forked child (`Ledger._after_fork`).
_LEDGERS: weakref.WeakSet[Ledger] = weakref.WeakSet()


def _ledgers_after_fork() -> None:
    for ledger in list(_LEDGERS):
        ledger._after_fork()


os.register_at_fork(after_in_child=_ledgers_after_fork)


class Ledger:
    """Batches records to a sink from a writer thread (see the module docstring)."""

    def __init__(
        self,
        sink: Sink,
        *,
        max_buffer: int = 100_000,
        batch: int = 1024,
        flush_interval_s: float = 0.02,
        retention_days: float | None = None,
        on_ack: Callable[[list[str]], None] | None = None,
        on_record: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        _check_options(max_buffer, batch, flush_interval_s, retention_days)
        if not all(callable(getattr(sink, m, None)) for m in ("write", "feedback", "close")):
            # a path given here had made a ledger that failed on its first write, later
            raise ConfigError(
                f"Ledger() takes a sink, got {type(sink).__name__}; for a path or a "
                "postgresql:// DSN use Ledger.open(target, ...)"
            )
        self.sink = sink
        max_buffer, batch = int(max_buffer), int(batch)  # whole numbers, checked
        self.max_buffer, self.batch, self.flush_interval_s = max_buffer, batch, flush_interval_s
        self.retention_days, self.on_ack, self.on_record = retention_days, on_ack, on_record
        self._q: deque[Any] = deque()
        self._fb: deque[FeedbackRow] = deque()
        # built (and counted by on_record: metrics) as they come, whatever the sink does,
        # and waiting for a batch; metrics had stood still while a sink failed
        self._built: deque[dict[str, Any]] = deque()
        self._cv = threading.Condition()
        self._drop_lock = threading.Lock()  # `dropped`, and `_built` against put()
        self._asleep = False  # the writer waits for put() to wake it (_IDLE_WAIT_S)
        self.queued = self.acked = self.dropped = self.failures = self.rejected = 0
        self.dropped_scores = 0  # feedback given after close(), or left unwritten by it
        self._abandon = False  # close() gave up on the writer (its sink down)
        self._lost = 0  # records close() counted lost (dropped) that a write may land yet
        self._lost_scores = 0  # the same for scores (dropped_scores)
        self._sink_closed = False  # (close() and the writer: one of them closes it)
        self._fb_queued = self._fb_written = 0  # scores, which flush() waits for as well
        self._closing = False
        self._failing = False  # the writer's last write failed (the sink down, for now)
        self._last_expire = 0.0
        self._thread = threading.Thread(target=self._run, name="satisfice-ledger", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)  # a script that ends without close() keeps its records
        _LEDGERS.add(self)

    def _after_fork(self) -> None:
        """In a forked child (a pre-forking server's worker): a writer of its own, where
        none had run (the parent's does not cross the fork), so the child's records and
        scores are written, not queued for nothing and called lost at close(). What the
        parent had queued is the parent's to write (written here too, it would be there
        twice), and the sink is reopened for the child (`after_fork`)."""
        if self._closing:
            return
        self._cv = threading.Condition()
        self._drop_lock = threading.Lock()
        self._q.clear()
        self._fb.clear()
        self._built.clear()
        self.queued = self.acked = self.dropped = self.failures = self.rejected = 0
        self.dropped_scores = self._lost = self._lost_scores = 0
        self._fb_queued = self._fb_written = 0
        self._asleep = self._failing = False
        reopen = getattr(self.sink, "after_fork", None)
        if reopen is None:
            # a sink of the caller's that does not say how it crosses a fork: written from
            # here, the child's writes had gone through the parent's connection or socket
            _log.error(
                "ledger: its sink (%s) has no after_fork(), so this forked process's records "
                "are not written; attach the ledger after the fork, or give the sink an "
                "after_fork() that makes its connection the child's own",
                type(self.sink).__name__,
            )
            return
        try:
            reopen()
        except Exception as e:  # said; the writer retries the sink as it would when down
            _log.error("ledger: reopening its sink in a forked child failed: %s: %s",
                       type(e).__name__, e)  # fmt: skip
        self._thread = threading.Thread(target=self._run, name="satisfice-ledger", daemon=True)
        self._thread.start()

    def _at_exit(self) -> None:
        if not self._closing and self._thread.is_alive() and not self.flush(_EXIT_WAIT_S):
            # what the process takes with it, said: a sink down at exit had lost them
            # without a word (close() says it; an exit without one said nothing)
            with self._drop_lock:
                lost = max(self.queued - self.acked - self.dropped, 0)
                lost_scores = max(self._fb_queued - self._fb_written, 0)
            # why, as it is: a sink that writes, but not the backlog within the wait (a slow
            # disk), had been called failing
            why = (
                "the sink is failing"
                if self._failing
                else f"the sink was still writing them when the {_EXIT_WAIT_S:g}s exit wait ended"
            )
            _log.error("ledger: the process is exiting with %d record(s) and %d score(s) "
                       "unwritten (%s); they are lost", lost, lost_scores, why,
                       extra={"event": "ledger_lost"})  # fmt: skip

    @classmethod
    def open(cls, target: str | Path, **kw: Any) -> Ledger:
        """A ledger on SQLite (a path), JSONL (*.jsonl) or PostgreSQL (postgresql://...)."""
        _check_options(**{k: kw[k] for k in _OPTIONS if k in kw})  # before the sink opens
        return cls(open_sink(target), **kw)

    # the request path: append only ---------------------------------------------------------
    def put(self, item: Any) -> None:
        """Queue a ChatResult or a ready record dict (never waits on the sink, never raises)."""
        q = self._q
        # Under the lock close() sets `_closing` under (no put lands after it) and the writer
        # takes and drops with: counted before it is seen (counted queued when refused too),
        # and room made before it goes in, the oldest of the queued and the built going, so
        # that max_buffer bounds them together at every moment.
        with self._drop_lock:
            closed = self._closing
            self.queued += 1
            full = not closed and len(q) + len(self._built) >= self.max_buffer
            if closed or full:
                self.dropped += 1
            if full:
                gone = (self._built or q).popleft()  # built already: counted in metrics
            if not closed:
                q.append(item)
        if closed:
            if self.dropped == 1 or self.dropped % 1000 == 0:
                _log.error("ledger closed: dropped a record (%d so far)", self.dropped)
            return
        if full:
            # freed here, out of the lock: a finalizer in its metadata that put or scored
            # on this ledger had deadlocked on it
            del gone
            self._overflowed()
        if len(q) >= self.batch or self._asleep:
            self._wake()

    def _overflowed(self) -> None:
        """Say a record dropped for room (counted under `_drop_lock`: request threads and
        the writer both drop, and a count lost between them held flush() to its timeout)."""
        n = self.dropped
        if n == 1 or n % 1000 == 0:
            _log.error(
                "ledger buffer full (%d records): dropped %d record(s) so far; the sink "
                "is failing or too slow", self.max_buffer, n,
                extra={"event": "ledger_dropped", "dropped": n},
            )  # fmt: skip

    def feedback(
        self, request_id: str, score: float, source: str = "user", model: str | None = None
    ) -> None:
        """Queue a score for a request's answer: `model`'s (a fallback's, scored beside the
        primary's), or the answering model's when None. InputError for a score no reader
        takes: one NaN, 1.5 or True written had made the whole ledger unreadable to
        `satisfice report` and `train` (each refuses a score outside [0, 1])."""
        if why := _score_problem(score):
            raise InputError(why)
        if not isinstance(request_id, str) or not (model is None or isinstance(model, str)):
            raise InputError("a feedback's request_id must be a str, its model a str or None")
        row = (request_id, time.time(), float(score), source, model)
        with self._drop_lock:
            closed = self._closing
            if closed:
                self.dropped_scores += 1
            else:
                self._fb_queued += 1
                self._fb.append(row)
        if closed:
            _log.error("ledger closed: dropped a feedback score (%d so far)", self.dropped_scores)
            return
        if self._asleep:
            self._wake()

    def _wake(self) -> None:
        with self._cv:
            self._asleep = False
            self._cv.notify()

    @property
    def backlog(self) -> int:
        """Records put and neither acknowledged nor dropped: queued, built, being built, and
        the batch the writer is writing or retrying (it had left that batch out, and read 0
        while a sink was down under fewer records than a batch). The counts, not the
        deques: a record is in no deque while it is built or written, and every count moves
        under the lock. At most `max_buffer` (the queued and the built, together) plus the
        batch in hand and the record being built."""
        with self._drop_lock:
            return max(self.queued - self.acked - self.dropped, 0)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record and score queued so far is written (False on timeout): a
        score given just before a script's end had been lost with the writer thread."""
        target, scores = self.queued - self.dropped, self._fb_queued
        deadline = time.monotonic() + timeout
        with self._cv:
            self._cv.notify()
        while (self.acked < target or self._fb_written < scores) and time.monotonic() < deadline:
            if not self._thread.is_alive():
                return False
            time.sleep(0.002)
            target = min(target, self.queued - self.dropped)
        return self.acked >= target and self._fb_written >= scores

    def close(self, timeout: float = 10.0) -> bool:
        """Write out what is queued (within `timeout`), then stop the writer and close the
        sink. False when records or scores were left unwritten (the sink down): they are
        counted in `dropped` and `dropped_scores` and logged, where they had been lost
        without a word, the writer left retrying on a closed sink."""
        if self._closing:
            return True
        self.flush(timeout)
        atexit.unregister(self._at_exit)
        with self._drop_lock:
            self._closing = True
        with self._cv:
            self._cv.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():  # still retrying a sink that is down: it gives up
            self._abandon = True
            with self._cv:
                self._cv.notify()
            self._thread.join(1.0)
        with self._drop_lock:
            lost = max(self.queued - self.acked - self.dropped, 0)
            self.dropped += lost
            self._lost += lost  # (a write still running may land them yet: see _acked)
            lost_scores = max(self._fb_queued - self._fb_written, 0)
            self.dropped_scores += lost_scores
            self._lost_scores += lost_scores
        if lost or lost_scores:
            _log.error("ledger closed with %d record(s) and %d score(s) unwritten (the sink "
                       "was failing); they are lost", lost, lost_scores,
                       extra={"event": "ledger_lost"})  # fmt: skip
        if not self._thread.is_alive():  # else the writer closes it as it leaves (closed
            self._close_sink()  # under a write still running, SQLite's had crashed the process)
        return not (lost or lost_scores)

    # the writer thread ----------------------------------------------------------------------
    def _build(self) -> None:
        """Every queued item as a record, counted by `on_record`, into `_built`; past
        `max_buffer` built records (a sink down for long), the oldest are dropped."""
        from .result import ChatResult

        q, built = self._q, self._built
        switch = sys.getswitchinterval()
        held = time.perf_counter()
        # what is queued now, no more: a loop that queued as fast as this built had kept it
        # here for good, every record built and none written
        for _ in range(len(q)):
            try:  # (put() may take the last one for room between a check and the pop)
                it = q.popleft()
            except IndexError:
                break
            behind = len(q) + len(built) >= _BEHIND
            if time.perf_counter() - held > (switch if behind else _HOLD_S):
                time.sleep(0)  # hand the GIL over (see _HOLD_S)
                held = time.perf_counter()
            try:
                if isinstance(it, tuple):  # (result, messages): record_prompts
                    rec = record_of(it[0])
                    m = it[1]
                    rec["messages"] = (
                        [{"role": "user", "content": m}] if isinstance(m, str) else list(m)
                    )
                else:
                    rec = record_of(it) if isinstance(it, ChatResult) else dict(it)
                # (in the try: a caller's metadata changed while it is walked, say, rejects
                # this record, where it had ended the writer and every record after it)
                _scrub_callers(rec)
            except Exception as e:  # a record that cannot be built: say so, go on
                self.rejected += 1  # counted: flush() had waited its whole timeout
                with self._drop_lock:
                    self._drop_locked()
                _log.error("ledger: a record could not be built: %s", e,
                           extra={"event": "ledger_rejected"})  # fmt: skip
                continue
            # no sink takes it, or no reader: a record dict put as it is is checked as a
            # reader checks it (one with no request_id, a cost of -3 or a score of 5 had
            # been written, and every read of the ledger then refused it whole); one built
            # here from a result has its time alone to check
            why = _problem(rec) if isinstance(it, dict) else _undated(rec)
            if why is not None:
                self.rejected += 1
                with self._drop_lock:
                    self._drop_locked()
                _log.error("ledger: dropped record %.60r: %s", rec.get("request_id"),
                           why, extra={"event": "ledger_rejected"})  # fmt: skip
                continue
            if rec.get("started_at") is None:
                # a record dict put without a time: the time it is written, in the record
                # itself, so that every sink keeps it (a JSONL line had none, and each read
                # put its spend on the day the report was run)
                rec["started_at"] = time.time()
            # Room made before it goes in, under the lock put() drops with: between the pop
            # above and this the record is in neither deque, so put() saw room that was not
            # there, and an append unchecked had left max_buffer + 1 (the bound checked on
            # `built` alone, at the build's end, never saw the queue beside it).
            with self._drop_lock:
                full = len(q) + len(built) >= self.max_buffer
                kept = not full or bool(built)  # with none built, this one is the oldest
                if full:
                    self._drop_locked()
                    if built:
                        gone = built.popleft()  # the oldest built (counted in metrics)
                if kept:
                    built.append(rec)
            if full:
                if kept:
                    del gone  # freed out of the lock (see put())
                self._overflowed()
            if not kept:
                continue  # dropped unbuilt, as a queued one is: not in the metrics
            if self.on_record is not None:
                try:
                    self.on_record(rec)
                except Exception as e:
                    _log.error("ledger on_record hook failed: %s", e)

    def _drop_locked(self) -> None:
        """Count one record the writer drops (under `_drop_lock`): one close() already
        counted lost is not counted again."""
        if self._abandon and self._lost:
            self._lost -= 1
        else:
            self.dropped += 1

    def _take(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        built = self._built
        with self._drop_lock:  # put() drops from `_built` for room under it
            while built and len(out) < self.batch:
                out.append(built.popleft())
        return out

    def _close_sink(self) -> None:
        """Close the sink once, whichever of close() and the writer comes to it first."""
        with self._drop_lock:
            if self._sink_closed:
                return
            self._sink_closed = True
        try:
            self.sink.close()
        except Exception as e:  # said, not raised into a shutdown (or lost on a thread)
            _log.error("ledger: closing its sink failed: %s: %s", type(e).__name__, e)

    def _scores_written(self, n: int) -> None:
        with self._drop_lock:
            self._fb_written += n
            back = min(n, self._lost_scores) if self._abandon else 0
            self._lost_scores -= back
            self.dropped_scores -= back  # counted lost by close(), written after all

    def _isolate(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """After a batch failed again and again: write its records one by one. Those that
        go through are acknowledged; one the sink refuses for what it holds (`_refused`:
        a value it cannot encode or store) while others go through is dropped, counted and
        logged. Any other failure (a full disk, a lost connection) says the sink is down,
        not the record bad: what is not written yet is kept for the next retry."""
        ok, bad, kept = self._write_each(batch)
        if not ok:
            return batch
        self._acked(ok)
        # The sink took some: the rest are tried once more, as the sink may have come back
        # partway through (a database restarting); only those it refuses again are bad.
        again, bad, kept2 = self._write_each(bad)
        if again:
            self._acked(again)
        if kept or kept2:
            return bad + kept2 + kept  # the sink is down: nothing is dropped for it
        for rec in bad:
            self.rejected += 1
            with self._drop_lock:
                self._drop_locked()
            _log.error("ledger: the sink refused record %s on its own; dropped it",
                       rec.get("request_id"), extra={"event": "ledger_rejected"})  # fmt: skip
        return []

    def _feedback_each(self, rows: list[FeedbackRow]) -> None:
        """Write scores one by one after their batch was refused: one the sink refuses on
        its own is dropped (done with, as a written one is, for flush(); counted in
        `dropped_scores`, where it had been in no count; and logged), where it had been
        retried forever with every later score behind it; the sink down keeps the rest
        queued."""
        for i, row in enumerate(rows):
            try:
                self.sink.feedback([row])
            except Exception as e:
                if not _refused(e):
                    self._fb.extendleft(reversed(rows[i:]))
                    return
                with self._drop_lock:
                    self.dropped_scores += 1
                _log.error("ledger: the sink refused the score for %.60r on its own (%s); "
                           "dropped it", row[0], type(e).__name__,
                           extra={"event": "ledger_rejected"})  # fmt: skip
            self._scores_written(1)

    def _write_each(
        self, recs: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Write records one by one: (those the sink took, those it refused, those left
        unwritten when it failed as a sink that is down fails)."""
        ok: list[dict[str, Any]] = []
        bad: list[dict[str, Any]] = []
        for i, rec in enumerate(recs):
            try:
                self.sink.write([rec])
                ok.append(rec)
            except Exception as e:
                if not _refused(e):
                    return ok, bad, recs[i:]
                bad.append(rec)  # and on to the next: one bad record must not hold the rest
        return ok, bad, []

    def _acked(self, recs: list[dict[str, Any]]) -> None:
        with self._drop_lock:  # (close() counts what is lost under it)
            back = min(len(recs), self._lost) if self._abandon else 0
            self._lost -= back
            self.dropped -= back  # counted lost by close(), written after all
            self.acked += len(recs)
        if back:
            _log.warning("ledger: %d record(s) counted lost at close were written after all",
                         back, extra={"event": "ledger_lost"})  # fmt: skip
        if self.on_ack is not None:
            try:
                self.on_ack([r["request_id"] for r in recs])
            except Exception as e:
                _log.error("ledger on_ack hook failed: %s", e)

    def _run(self) -> None:
        pending: list[dict[str, Any]] = []
        backoff, streak = 0.05, 0
        idle = False  # the last flush interval brought nothing
        while True:
            with self._cv:
                if idle and not pending and not self._closing:
                    # The flag before the check: a put() after the check sees it and wakes
                    # this wait; one before it left a record the check sees.
                    self._asleep = True
                    if not self._q and not self._fb:
                        self._cv.wait(_IDLE_WAIT_S)
                    woken = not self._asleep
                    self._asleep = False
                    if woken and not self._closing:
                        # Taken a flush interval after it came, as under traffic: the
                        # request that queued it may still be answering.
                        self._cv.wait(self.flush_interval_s)
                elif not (self._q or self._built or self._fb or pending or self._closing):
                    self._cv.wait(self.flush_interval_s)
                idle = not (self._q or self._built or self._fb or pending)
            self._build()
            # A lone record that keeps failing takes company from the queue: with others
            # beside it, _isolate can tell a record the sink refuses from a sink that is down
            # (alone, it would be retried forever with every later record behind it).
            if not pending or (streak >= 3 and len(pending) == 1):
                pending += self._take()
            if self._abandon:  # close() gave up on a sink that is down (it counts them)
                self._close_sink()  # (close() leaves it to this thread, out of its write)
                return
            if pending:
                try:
                    self.sink.write(pending)
                except Exception as e:
                    self.failures += 1
                    self._failing = True
                    streak += 1
                    _log.warning(
                        "ledger sink failed (%s: %s); keeping %d record(s), retrying in %.2fs",
                        type(e).__name__, e, len(pending), backoff,
                        extra={"event": "ledger_sink_failed"},
                    )  # fmt: skip
                    if streak >= 3 and len(pending) > 1:
                        pending = self._isolate(pending)  # one bad record must not stop it
                        if pending:
                            time.sleep(backoff)
                            backoff = min(backoff * 2, 5.0)
                        continue
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff, streak = 0.05, 0
                self._failing = False
                self._acked(pending)
                pending = []
            if self._fb:
                rows = []
                while self._fb:
                    rows.append(self._fb.popleft())
                try:
                    self.sink.feedback(rows)
                    self._failing = False
                    self._scores_written(len(rows))
                except Exception as e:
                    if _refused(e):  # a score the sink cannot store: the others are written
                        self._feedback_each(rows)
                        continue
                    self._fb.extendleft(reversed(rows))
                    self._failing = True
                    _log.warning("ledger feedback write failed: %s", e)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            if self.retention_days is not None and time.time() - self._last_expire > 86400:
                self._last_expire = time.time()
                try:
                    self.sink.expire(time.time() - self.retention_days * 86400)
                except Exception as e:
                    _log.warning("ledger retention delete failed: %s", e)
            if self._closing and not (self._q or self._built or pending or self._fb):
                if self._abandon:  # close() left the sink to this thread, out of its write
                    self._close_sink()
                return


# -- reading ----------------------------------------------------------------------------------


def read_records(target: str | Path) -> Iterator[dict[str, Any]]:
    """Every request record in a ledger (SQLite, JSONL or PostgreSQL), with the latest
    feedback score for its answer under "feedback" when one was given, and the latest score
    of each other model scored on it (`router.feedback(rid, s, model=M)`) under
    "feedback_for" ({model: score}) when there are any."""
    t = str(target)
    kind = target_kind(t)
    if kind == "pg":
        yield from _read_pg(t)
        return
    p = Path(t)
    if not p.exists():
        raise ConfigError(f"ledger {p} does not exist")
    if kind == "jsonl":
        yield from _read_jsonl(p)
        return
    db = open_ledger_db(p)
    try:
        scores = _scores(db.execute(feedback_query(db)), p)
        for rid, text in db.execute("SELECT request_id, record FROM requests ORDER BY ts"):
            yield _stored(rid, text, scores, p)
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"ledger {p} cannot be read: SQLite says {e}") from None
    finally:
        db.close()


# Fields a reader takes apart: (name, type, what it must be).
_FIELDS = (
    ("attempts", list, "a list of attempts"),
    ("model", str, "a model id"),
    ("messages", list, "a list of messages"),
    ("metadata", dict, "an object"),
    ("cascade", dict, "an object"),
    ("decision", dict, "an object"),
)

# Money and time, as a record's field and as its `requests` column: each a finite number
# >= 0, or null where it is unknown (an unpriced model, a request that failed first).
_AMOUNTS = (
    ("total_cost_usd", "cost_usd"),
    ("reference_cost_usd", "reference_cost_usd"),
    ("est_cost_usd", "est_cost_usd"),
    ("latency_s", "latency_s"),
    ("overhead_s", "overhead_s"),
)

_LATEST_TS = 253402300800  # 10000-01-01: later (or inf, NaN) is no time time.gmtime writes


#: No request costs this many USD or takes this many seconds: past it an amount is damage,
#: and sums of such reached $inf in a report ("nan% saved").
_MAX_AMOUNT = 1e9


def _amount_problem(name: str, v: Any) -> str | None:
    f = as_real(v)
    if v is None or (f is not None and 0 <= f <= _MAX_AMOUNT):
        return None
    return f"{name} must be a number >= 0 (at most {_MAX_AMOUNT:g}) or null, got {v!r:.40}"


def _score_problem(v: Any) -> str | None:
    f = as_real(v)
    if f is not None and 0.0 <= f <= 1.0:
        return None
    return f"a feedback score must be a number in [0, 1], got {v!r:.40}"


def _p_good_problem(v: Any) -> str | None:
    """A predicted P(good) is a probability, or null (-7 or 1e308 had been shown as is)."""
    if v is None or _score_problem(v) is None:
        return None
    return f"p_good must be a number in [0, 1] or null, got {v!r:.40}"


def _problem(r: Any) -> str | None:
    """What makes `r` no record a reader can take apart (None when it is one): the one check
    of every ledger's records, so a damaged or foreign one is an error naming it, not a
    traceback, a $nan or a negative cost in whatever reads it."""
    if not isinstance(r, dict) or not isinstance(r.get("request_id"), str):
        return "not a satisfice record (a JSON object with a string request_id)"
    if (why := _undated(r)) is not None:
        return why
    for field, kind, what in _FIELDS:
        if r.get(field) is not None and not isinstance(r[field], kind):
            return f"{field} must be {what}, got {type(r[field]).__name__}"
    for where, items in (
        ("attempts", r.get("attempts")),
        ("cascade.steps", (r.get("cascade") or {}).get("steps")),
        ("decision.candidates", (r.get("decision") or {}).get("candidates")),
    ):
        if items is not None and not (
            isinstance(items, list) and all(isinstance(x, dict) for x in items)
        ):
            return f"{where} must be a list of objects"
        for i, x in enumerate(items or ()):  # (a list as an attempt's model had raised
            # TypeError: unhashable, counting fallbacks)
            if x.get("model") is not None and not isinstance(x["model"], str):
                return f"{where}[{i}].model must be a model id, got {type(x['model']).__name__}"
            if why := _p_good_problem(x.get("p_good")):
                return f"{where}[{i}].{why}"
            # a check's verdict is a score `satisfice train` learns from: {"passed": "no"}
            # had been trained on as a pass (any text is true), {"passed": null} as a fail
            if (v := x.get("verdict")) is not None and not (
                isinstance(v, dict) and isinstance(v.get("passed"), bool)
            ):
                return f"{where}[{i}].verdict must be an object whose passed is true or false"
    for field, _ in _AMOUNTS:
        if why := _amount_problem(field, r.get(field)):
            return why
    if (others := r.get("feedback_for")) is not None:
        if not isinstance(others, dict) or not all(isinstance(m, str) for m in others):
            return "feedback_for must be an object of model ids to scores"
        for v in others.values():
            if why := _score_problem(v):
                return f"feedback_for: {why}"
    return None if r.get("feedback") is None else _score_problem(r["feedback"])


def _row_problem(row: Mapping[str, Any]) -> str | None:
    """What makes a `requests` row, read by column, no row a report can sum (None when it is
    one): SQLite keeps any value in any column, so a hand-edited or foreign-written row may
    hold text where a number goes, or a cost no request has."""
    for name, kind, _ in COLUMNS:
        v = row.get(name)
        if kind in ("REAL", "INTEGER") and v is not None and as_real(v) is None:
            return f"{name} must be a number, got {v!r:.40}"
    for _, column in _AMOUNTS:
        if why := _amount_problem(column, row.get(column)):
            return why
    return _p_good_problem(row.get("p_good"))


def first_bad_row(db: sqlite3.Connection) -> tuple[Any, str] | None:
    """(request_id, what is wrong) of the first `requests` row `_row_problem` refuses, found
    by one query in SQLite (checking each row in Python had made `satisfice report` 2.5x
    slower over 100,000 rows); None when every row is one a report can sum."""
    numeric = [n for n, kind, _ in COLUMNS if kind in ("REAL", "INTEGER")]
    wrong = [f"typeof({n}) NOT IN ('integer', 'real', 'null')" for n in numeric]
    wrong += [f"{c} < 0 OR {c} > {_MAX_AMOUNT!r}" for _, c in _AMOUNTS]
    wrong.append("p_good < 0 OR p_good > 1")
    names = [n for n, _, _ in COLUMNS if n != "record"]
    row = db.execute(
        f"SELECT {', '.join(names)} FROM requests WHERE {' OR '.join(wrong)} LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    r = dict(zip(names, row, strict=True))
    return r["request_id"], _row_problem(r) or "a number out of range"


def _has_model_column(db: sqlite3.Connection) -> bool:
    return any(row[1] == "model" for row in db.execute("PRAGMA table_info(feedback)"))


def feedback_query(db: sqlite3.Connection) -> str:
    """The SELECT of a SQLite ledger's feedback rows as (request_id, score, model), oldest
    first; model NULL in a ledger written before scores named their model (read-only
    readers cannot add the column)."""
    model = "model" if _has_model_column(db) else "NULL"
    return f"SELECT request_id, score, {model} FROM feedback ORDER BY ts"


def _scores(rows: Iterable[Sequence[Any]], ledger: object) -> dict[Any, dict[str | None, Any]]:
    """The latest feedback score per request id and model scored (None: the answering
    model), from a database's `feedback` rows, oldest first; each request's scores in the
    order they were last given (the latest last)."""
    out: dict[Any, dict[str | None, Any]] = {}
    for rid, score, model in rows:
        if why := _score_problem(score):
            raise ConfigError(f"ledger {ledger}, feedback for request {rid!r:.60}: {why}")
        if model is not None and not isinstance(model, str):
            raise ConfigError(
                f"ledger {ledger}, feedback for request {rid!r:.60}: its model must be a "
                f"model id or null, got {model!r:.40}"
            )
        given = out.setdefault(rid, {})
        given.pop(model, None)  # re-inserted: the latest score of all sits last
        given[model] = score
    return out


def split_feedback(
    given: Mapping[str | None, Any] | None, answering: Any
) -> tuple[Any, dict[str, Any]]:
    """(the latest score of the answer, {other model: its latest score}) from a request's
    scores by model (`_scores`): a score that names no model, or the answering one, is the
    answer's; one naming another model is that model's, never the answer's."""
    own = None
    others: dict[str, Any] = {}
    for model, score in (given or {}).items():
        if model is None or model == answering:
            own = score  # in the order last given: the latest wins
        else:
            others[model] = score
    return own, others


def _put_feedback(rec: dict[str, Any], given: Mapping[str | None, Any] | None) -> None:
    own, others = split_feedback(given, rec.get("model"))
    if own is not None:
        rec["feedback"] = own
    if others:
        rec["feedback_for"] = {**(rec.get("feedback_for") or {}), **others}


def _stored(
    rid: Any, text: Any, scores: Mapping[Any, Mapping[str | None, Any]], ledger: object
) -> dict[str, Any]:
    """A database row's record, checked as a JSONL line is, with its latest feedback. A
    database writes a row whole (no crash tears one, as one can the last line of a JSONL
    file), so a record that is not JSON is damage too: an error naming the row."""
    where = f"ledger {ledger}, request {rid!r:.60}"
    fix = "delete the row or restore the ledger from a backup"
    try:
        r = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise ConfigError(f"{where}: its record is not JSON; {fix}") from None
    if why := _problem(r):
        raise ConfigError(f"{where}: {why}; {fix}")
    rec: dict[str, Any] = r  # _problem has made sure it is one
    _put_feedback(rec, scores.get(rec["request_id"]))
    return rec


def _read_jsonl(p: Path) -> Iterator[dict[str, Any]]:
    """A JSONL ledger's records, one at a time. A line that is not JSON (torn by a crash
    mid-write) is skipped, with a warning naming it unless it is the last; a line that is
    JSON but no record, or a record whose fields have the wrong types, is an error naming
    it, not a traceback in whatever reads it. Read twice: the scores first (a score's line
    comes after its record's), then the records, so that memory does not grow with the
    ledger (every record had been held before the first was yielded: 130 MB for 40,000)."""
    if p.is_dir():
        raise ConfigError(f"ledger {p} is a directory, not a JSONL file")
    if p.exists() and not p.is_file():  # (read twice: a FIFO's second open had waited for good)
        raise ConfigError(
            f"ledger {p} is not a regular file (a pipe or a device): a JSONL ledger is read "
            "twice, its scores then its records; copy it to a file and read that"
        )
    fed: list[tuple[str, Any, Any]] = []  # (request_id, score, model), as given
    end = 0  # how far the first pass read: the second stops there (a ledger still growing
    # had its newest records read without the scores given after the first pass)
    with p.open("rb") as f:
        for n, raw in enumerate(f, 1):
            end += len(raw)
            if b'"feedback"' not in raw:  # no score's line (nor one to parse for it)
                continue
            if (fb := _score_line(raw)) is not None:
                if why := _score_problem(fb.get("score")):
                    raise ConfigError(f"ledger {p}, line {n}: {why}")
                fed.append((str(fb.get("request_id")), fb["score"], fb.get("model")))
    scores = _scores(fed, p)
    torn: list[int] = []
    cut = False  # the last line not JSON may be one a crash tore
    binary = False  # a line is a binary file's bytes, not text a crash tore
    last = 0  # the last line with something in it
    records = 0
    read = 0
    with p.open("rb") as f:
        for n, raw in enumerate(f, 1):
            read += len(raw)
            if read > end:  # written after the first pass: the next read has it
                break
            if not raw.strip(b" \t\r\n\0"):  # blank, or the zeros a crash may leave
                continue
            last = n
            try:
                # a line at a time: a crash that cut a character in two tears its line
                # alone (reading the file as text had refused the whole ledger for good)
                # (utf-8-sig: a byte-order mark an editor wrote had lost the first record)
                r = json.loads(raw.decode("utf-8-sig"))
            except (ValueError, RecursionError):  # (UnicodeDecodeError among them)
                torn.append(n)
                binary = binary or _binary(raw)
                # what a crash cuts began as a record does: a last line that did not is no
                # tear (a one-line text file had read as an empty ledger)
                cut = raw.lstrip().startswith((b"{", codecs.BOM_UTF8 + b"{"))
                continue
            if _score_of(r) is not None:
                continue  # a score, read above
            if why := _problem(r):
                raise ConfigError(f"ledger {p}, line {n}: {why}")
            records += 1
            _put_feedback(r, scores.get(r["request_id"]))
            yield r
    # lines a crash tore are skipped (an empty ledger, if that is all), but not a binary
    # file's bytes (a SQLite database named *.jsonl had read as an empty ledger)
    if binary and not records and not fed:
        raise ConfigError(f"ledger {p} is not UTF-8 text (a JSONL ledger)")
    inside = [k for k in torn if k != last or not cut]  # the last line a crash tore is expected
    if inside and not records and not fed:  # no line of it is JSON: some other text file
        raise ConfigError(f"ledger {p} is not a JSONL ledger: none of its lines is a record")
    if inside:
        warnings.warn(
            f"ledger {p}: {len(inside)} line(s) that are not JSON were skipped "
            f"(line {', '.join(map(str, inside[:5]))}{', ...' if len(inside) > 5 else ''})",
            stacklevel=2,
        )


def _score_line(raw: bytes) -> dict[str, Any] | None:
    """The score a JSONL line holds (`{"feedback": {...}}`), or None: a record, a torn line."""
    try:
        return _score_of(json.loads(raw.decode("utf-8-sig")))
    except (ValueError, RecursionError):
        return None


def _score_of(r: Any) -> dict[str, Any] | None:
    """The score a parsed JSONL line is (`{"feedback": {...}}`, no request id), or None."""
    fb = r.get("feedback") if isinstance(r, dict) else None
    return fb if isinstance(fb, dict) and "request_id" not in r else None


def _binary(line: bytes) -> bool:
    """Whether a line that is not JSON is a binary file's bytes rather than a record a
    crash tore: a crash cuts the text (its last character, maybe, in two) and may leave
    zeros after it (a file grown whose data never reached the disk)."""
    text = line.rstrip(b"\0\r\n")
    if text.startswith(b"SQLite format 3\0"):
        return True
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.reason != "unexpected end of data"  # not a character cut at the end
    return b"\0" in text  # JSON text holds none (UTF-16 does): zeros inside are no tear


def open_ledger_db(p: Path) -> sqlite3.Connection:
    """A SQLite ledger, read-only, checked to be one: a directory, another file or another
    database is an error naming it."""
    if p.is_dir():
        raise ConfigError(f"ledger {p} is a directory, not a ledger file")
    try:
        # as a URI (to open read-only), so '#', '?' and '%' in the path must be quoted
        db = sqlite3.connect(p.resolve().as_uri() + "?mode=ro", uri=True)
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as e:
        raise ConfigError(
            f"ledger {p} is not a satisfice ledger (SQLite says: {e}); a JSONL ledger must "
            "end in .jsonl"
        ) from None
    if not {"requests", "feedback"} <= names:
        db.close()
        raise ConfigError(f"ledger {p} is a database but not a satisfice ledger (no records)")
    if "meta" in names:  # as the writer refuses another version's ledger, so does a reader
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = None if row is None else int(row[0])
        except (sqlite3.DatabaseError, ValueError, TypeError):
            version, row = -1, ("unreadable",)
        if version is not None and version != SCHEMA_VERSION:
            db.close()
            raise ConfigError(
                f"ledger {p} has schema version {row[0]!s:.20}; this satisfice reads "
                f"{SCHEMA_VERSION} (read it with the satisfice that wrote it)"
            )
    return db


def _pg_version(value: object, verb: str, verbs: str) -> None:
    """ConfigError unless a PostgreSQL ledger's `meta` says this satisfice's schema version
    (as SQLite ledgers are checked, by the writer and by readers)."""
    if value is None or str(value) == str(SCHEMA_VERSION):
        return
    raise ConfigError(
        f"the PostgreSQL ledger has schema version {value!s:.20}; this satisfice {verbs} "
        f"{SCHEMA_VERSION} ({verb} it with the satisfice that wrote it)"
    )


def _read_pg(dsn: str) -> Iterable[dict[str, Any]]:
    psycopg = _psycopg()
    try:
        db = psycopg.connect(dsn)
    except psycopg.OperationalError as e:  # psycopg's words name the host, never the password
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"cannot read the PostgreSQL ledger: {why}; check that the server is up and the "
            "DSN (host, port, database, user) is right"
        ) from None
    except psycopg.Error as e:  # a DSN it cannot parse: its words quote the DSN, password too
        raise ConfigError(
            f"cannot read the PostgreSQL ledger: the DSN is malformed ({type(e).__name__}); "
            "write it as postgresql://user:password@host:port/database"
        ) from None
    try:
        yield from _pg_records(db)
    except psycopg.Error as e:  # a table not granted to the reader, the server gone mid-read
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot read the PostgreSQL ledger: PostgreSQL says {why}") from None


def _pg_records(db: Any) -> Iterator[dict[str, Any]]:
    with db:
        where = "(PostgreSQL)"
        # the tables the queries below name, found as they find them (by search_path, seen
        # by a reader without privileges on them too); as a SQLite file is checked
        # (`open_ledger_db`): a database without them had been a psycopg traceback
        requests, feedback, meta = db.execute(
            "SELECT to_regclass('requests'), to_regclass('feedback'), to_regclass('meta')"
        ).fetchone()
        if requests is None or feedback is None:
            raise ConfigError(
                "the PostgreSQL database is not a satisfice ledger (it has no requests and "
                "feedback tables): check the database and schema the DSN names"
            )
        if meta is not None:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            _pg_version(None if row is None else row[0], "read", "reads")
        has_model = db.execute(  # a ledger from before scores named their model has none
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = 'feedback' AND column_name = 'model'"
        ).fetchone()
        model = "model" if has_model else "NULL"
        scores = _scores(
            db.execute(f"SELECT request_id, score, {model} FROM feedback ORDER BY ts"), where
        )
        # on a server-side cursor, fetched in batches: a client-side one had held every
        # record of the ledger in memory before the first was read
        with db.cursor(name="satisfice_report") as cur:
            cur.execute("SELECT request_id, record FROM requests ORDER BY ts")
            for rid, text in cur:
                yield _stored(rid, text, scores, where)
