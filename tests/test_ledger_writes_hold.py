"""The ledger's writes when its storage misbehaves: every record written, or its loss
counted and said."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from satisfice.ledger import Ledger, read_records


def _rec(i: int) -> dict[str, object]:
    return {"request_id": f"r{i}", "started_at": time.time()}


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
