"""`[state].unsettled_file`: the settlements Redis missed survive the replica that queued them.

A replica on a real redis-server, a budgeted key, 5 streams billed in full while Redis is
away, then the replica stopped (SIGTERM) or killed (SIGKILL): the next start on the same
file settles them once Redis is back, so the budget counts what the answers were billed.
Without the file that spend was lost at exit (`test_replicas_hold_as_reviewed.py` keeps
that case). Then the file's own rules: kept in order, gone when empty, one replica each,
and a file that is not a queue this server wrote is refused with what to do."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from satisfice.errors import ConfigError
from satisfice.server import ServerConfig
from satisfice.server.state import Budget
from satisfice.server.unsettled import MARK_S, Unsettled
from satisfice.testing import LocalUpstream, reply

from .polling import until
from .servers import redis
from .test_server_replicas import MASTER, _admin, config, replica, replica_process

ADMIN = {"authorization": f"Bearer {MASTER}"}
WORDS = " ".join(f"w{i}" for i in range(20))


def _streams(url: str, key: str, first: threading.Barrier, outs: list[float | None]) -> None:
    c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    cost, waited = None, False
    try:
        s = c.chat.completions.create(
            model="auto", stream=True, max_tokens=100,
            messages=[{"role": "user", "content": "hi"}],
            stream_options={"include_usage": True},
        )  # fmt: skip
        for ch in s:
            if not waited:
                waited = True
                first.wait(30)
            cost = (ch.model_extra or {}).get("satisfice", {}).get("cost_usd", cost)
    finally:
        outs.append(cost)
        c.close()


def _billed_while_redis_is_away(tmp_path: Path, how: signal.Signals) -> tuple[float, Any, str]:
    """5 streams end while Redis is away; the replica is then sent `how`. Returns what the
    streams were billed, the budget a new replica on the same file reads once it has
    settled the file's queue (or after 10 s), and what the first replica wrote to stderr."""
    kept = tmp_path / "unsettled.json"
    with (
        LocalUpstream(record=False, default=reply(WORDS, chunk_delay=0.05)) as up,
        redis() as r,
    ):
        toml = f'[state]\nbackend = "redis"\nredis_url = "{r.url}"\nunsettled_file = "{kept}"\n'
        cfg = config(tmp_path, up.url, toml)
        with replica_process(cfg) as (url, p):
            key = _admin(url, "/admin/keys", {"name": "k", "budget_usd": 5.0, "period": "total"})
            first = threading.Barrier(6)
            outs: list[float | None] = []
            threads = [
                threading.Thread(target=_streams, args=(url, key["key"], first, outs))
                for _ in range(5)
            ]
            for t in threads:
                t.start()
            first.wait(30)  # every stream is under way
            r.stop()  # Redis goes away before any of them settles
            for t in threads:
                t.join(60)
            # every settlement is queued, and kept in the file as it queued
            assert until(lambda: kept.exists() and len(_queued(kept)) == 5, 15), (
                kept.read_text() if kept.exists() else "no file"
            )
            p.send_signal(how)
            p.wait(60)
            said = p.stderr.read().decode() if p.stderr is not None else ""
        assert len(_queued(kept)) == 5  # the exit left them there
        r.start()
        with replica(cfg) as fresh:
            assert until(lambda: not kept.exists(), 10), "the next start settled nothing"
            (budget,) = httpx.get(fresh + "/admin/spend", headers=ADMIN, timeout=30).json()[
                "budgets"
            ]
    assert len(outs) == 5 and None not in outs, outs
    return sum(c for c in outs if c is not None), budget, said


def _queued(path: Path) -> list[Any]:
    return list(json.loads(path.read_text())["settlements"])


def test_spend_queued_while_redis_is_away_is_counted_by_the_next_start_after_sigterm(
    tmp_path: Path,
) -> None:
    billed, budget, said = _billed_while_redis_is_away(tmp_path, signal.SIGTERM)
    assert billed > 0
    assert abs(budget["spent_usd"] - billed) < 1e-6, (budget, billed)
    assert "kept in" in said and "settled by the next start" in said, said[-2000:]
    assert "is not counted" not in said, said[-2000:]


def test_spend_queued_while_redis_is_away_is_counted_by_the_next_start_after_a_kill(
    tmp_path: Path,
) -> None:
    """SIGKILL: no shutdown ran; the file was written as the queue grew."""
    billed, budget, _ = _billed_while_redis_is_away(tmp_path, signal.SIGKILL)
    assert billed > 0
    assert abs(budget["spent_usd"] - billed) < 1e-6, (budget, billed)


def _budgets(n: int) -> list[Budget]:
    return [Budget(f"key:k{n}", 5.0, "total").pinned(hold=f"h{n}")]


def test_the_file_keeps_the_queue_in_order_and_goes_when_it_is_empty(tmp_path: Path) -> None:
    path = str(tmp_path / "u.json")
    q = Unsettled(path)
    q.append((_budgets(1), 0.5, 0.25))
    q.append((_budgets(2), 0.75, 0.5))
    q.close()
    again = Unsettled(path)
    assert [(bs, r, a) for bs, r, a in again] == [
        (_budgets(1), 0.5, 0.25),
        (_budgets(2), 0.75, 0.5),
    ]
    assert [b.hold for bs, _, _ in again for b in bs] == ["h1", "h2"]  # (compare=False)
    again.popleft()
    assert [a for _, _, a in again] == [0.5]
    assert len(_queued(Path(path))) == 1
    again.popleft()
    assert not again and not os.path.exists(path)
    again.close()


def test_a_second_replica_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "u.json")
    first = Unsettled(path)
    with pytest.raises(ConfigError, match="in use by another running replica"):
        Unsettled(path)
    first.close()
    Unsettled(path).close()  # free again once the first is closed


def test_the_file_and_its_rename_reach_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_atomic synced the new file but not its directory: a crash after the rename
    could bring back the previous queue (or none), settlements lost."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    q = Unsettled(str(tmp_path / "u.json"))
    q.append((_budgets(1), 0.5, 0.25))
    q.close()
    assert synced == ["file", "dir"], synced


def test_a_closed_queue_writes_nothing_over_the_next_replicas_file(tmp_path: Path) -> None:
    """A settlement that reached a queue after its close (its lock let go) had been written
    over the file the next replica had taken by then."""
    path = str(tmp_path / "u.json")
    first = Unsettled(path)
    first.append((_budgets(1), 0.5, 0.25))
    first.close()
    second = Unsettled(path)
    second.append((_budgets(2), 0.5, 0.5))
    first.append((_budgets(3), 0.5, 0.125))
    first.popleft()
    assert [s["billed_usd"] for s in _queued(Path(path))] == [0.25, 0.5]
    second.close()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"version": 2, "settlements": []}',
        '{"version": 1, "settlements": [{"budgets": [{"scope": "k", "limit_usd": 1, '
        '"extra": 1}], "reserved_usd": 1, "billed_usd": 1, "queued_at": 0}]}',
        '{"version": 1, "settlements": [{"budgets": [], "reserved_usd": -1, '
        '"billed_usd": 1, "queued_at": 0}]}',
        '{"version": 1, "settlements": [{"budgets": [{"scope": "k", "limit_usd": 1, '
        '"period": "week"}], "reserved_usd": 1, "billed_usd": 1, "queued_at": 0}]}',
        # no reservation id: Redis would count it at every replay
        '{"version": 1, "settlements": [{"budgets": [{"scope": "k", "limit_usd": 1}], '
        '"reserved_usd": 1, "billed_usd": 1, "queued_at": 0}]}',
        '{"version": 1, "settlements": [{"budgets": [{"scope": 7, "limit_usd": 1, '
        '"hold": "h"}], "reserved_usd": 1, "billed_usd": 1, "queued_at": 0}]}',
    ],
)
def test_a_file_that_is_no_queue_is_refused_and_left_as_it_is(tmp_path: Path, text: str) -> None:
    path = tmp_path / "u.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="move it aside to start without it"):
        Unsettled(str(path))
    assert path.read_text() == text
    Unsettled(str(tmp_path / "other.json")).close()  # the lock went with the refusal


def test_settlements_kept_over_a_week_are_said_as_not_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "u.json"
    doc = {
        "version": 1,
        "settlements": [
            {"budgets": [{"scope": "key:old", "limit_usd": 5.0, "period": "total",
                          "at": "all", "hold": "h"}],
             "reserved_usd": 1.0, "billed_usd": 0.125, "queued_at": time.time() - MARK_S - 60},
        ],
    }  # fmt: skip
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="satisfice.server"):
        Unsettled(str(path)).close()
    said = [r for r in caplog.records if getattr(r, "event", None) == "settlements_lost"]
    assert len(said) == 1 and "$0.125000" in said[0].getMessage(), caplog.text


def test_the_file_needs_redis_state() -> None:
    with pytest.raises(ConfigError, match='needs \\[state\\].backend = "redis"'):
        ServerConfig(unsettled_file="u.json")


@pytest.mark.parametrize(
    ("table", "key"), [("probe", "health_file"), ("ledger", "target"), ("registry", "path")]
)
def test_two_settings_naming_one_file_are_refused(tmp_path: Path, table: str, key: str) -> None:
    """The server would write one's records over the other's file (or over the registry it
    reads): a ConfigError naming both, however the file is spelled."""
    (tmp_path / "sub").mkdir()
    cfg = tmp_path / "satisfice.toml"
    head = '[state]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:1/0"\n'
    cfg.write_text(
        head + f'unsettled_file = "state.json"\n[{table}]\n{key} = "sub/../state.json"\n'
    )
    with pytest.raises(ConfigError, match="name the same file") as e:
        ServerConfig.load(cfg)
    assert f"[{table}].{key}" in str(e.value) and "[state].unsettled_file" in str(e.value)
    cfg.write_text(head + f'unsettled_file = "state.json"\n[{table}]\n{key} = "sub/own.json"\n')
    assert ServerConfig.load(cfg).unsettled_file == str(tmp_path / "state.json")


def test_releases_of_holds_are_not_written_to_the_file(tmp_path: Path) -> None:
    """Every budgeted request refused while Redis is away queues a release of its hold
    (nothing billed); each had rewritten (and fsynced) the whole file on the event loop, so
    an outage under load stalled every request (2,000 refused: about a minute of writes).
    Expected: releases stay in memory only (their holds lapse within state.HOLD_S); billed
    settlements are written, in order."""
    path = tmp_path / "u.json"
    q = Unsettled(str(path))
    writes: list[int] = []
    real = q._save

    def counted() -> None:
        writes.append(1)
        real()

    q._save = counted  # type: ignore[method-assign]
    for i in range(50):
        q.append((_budgets(i), 0.5, 0.0))  # releases
    assert not writes and not path.exists()
    q.append((_budgets(99), 0.5, 0.25))
    assert len(writes) == 1 and [s["billed_usd"] for s in _queued(path)] == [0.25]
    for _ in range(50):
        q.popleft()  # the releases, settled: the file is as it was
    assert len(writes) == 1 and len(q) == 1
    q.popleft()
    assert not path.exists()
    q.close()
