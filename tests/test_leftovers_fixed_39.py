"""Leftovers from earlier notes, fixed in the thirty-ninth session."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest


@pytest.mark.parametrize("kind", ["sqlite", "pg"])
def test_retention_finds_old_scores_by_an_index(tmp_path: Path, kind: str) -> None:
    """The feedback table had no index on `ts` (SQLite and PostgreSQL): retention's daily
    `DELETE ... WHERE ts < ?` scanned every score ever given."""
    from satisfice.ledger import PostgresSink, SQLiteSink

    from .servers import postgres

    if kind == "sqlite":
        path = tmp_path / "l.db"
        sink = SQLiteSink(path)
        try:
            sink.feedback([("r", 1.0, 1.0, "feedback", None)])
        finally:
            sink.close()
        with contextlib.closing(sqlite3.connect(path)) as db:
            plan = " ".join(
                str(row[-1])
                for row in db.execute("EXPLAIN QUERY PLAN DELETE FROM feedback WHERE ts < 5")
            )
        assert "USING INDEX feedback_ts" in plan, plan
        return
    psycopg = pytest.importorskip("psycopg")
    with postgres() as dsn:
        sink = PostgresSink(dsn)
        try:
            sink.feedback([("r", 1.0, 1.0, "feedback", None)])
        finally:
            sink.close()
        with psycopg.connect(dsn) as db:
            rows: Any = db.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'feedback'"
            ).fetchall()
        defs = " ".join(r[0] for r in rows)
        assert "feedback_ts" in defs and "(ts)" in defs, defs


def test_a_prompt_of_lone_carriage_returns_is_not_estimated_at_nothing() -> None:
    """A lone `\\r` was counted by none of the estimator's inputs: a prompt of 3,000 of them
    was estimated at 0 tokens for every family without an exact count (o200k counts 1,500),
    so its routing priced it as free and an unreported usage would have billed it so."""
    from satisfice import Router, _core

    text = "\r" * 3000
    exact = _core.count_tokens(text, "o200k")
    for family in ("llama", "claude", "gemini"):
        est = _core.estimate_tokens(text, family)
        assert 0.3 * exact <= est <= 3 * exact, (family, est, exact)
    d = Router().route(text)
    assert d.tokens_in(d.model) > 0.3 * exact
