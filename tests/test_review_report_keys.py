"""Review of 5427435: `satisfice report` reads the key id beside the key's name; the same
records read from SQLite and JSONL must make the same rows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from satisfice.cli import main
from satisfice.ledger import Ledger
from satisfice.report import rows, summarize


def _rec(rid: str, meta: dict[str, Any], usd: float = 1.0) -> dict[str, Any]:
    return {"request_id": rid, "started_at": time.time(), "outcome": "ok", "model": "m",
            "total_cost_usd": usd, "metadata": meta}  # fmt: skip


def _keys(path: Path) -> list[tuple[Any, Any, Any, int]]:
    ks = summarize(rows(path))["keys"]
    return sorted(((k["key"], k["team"], k["key_id"], k["requests"]) for k in ks), key=repr)


@pytest.mark.parametrize("name", ["l.db", "l.jsonl"])
def test_a_library_call_s_own_key_id_metadata_is_no_second_no_key_row(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A library call's metadata is the caller's own: chat(metadata={"key_id": ...}) has no
    served key. SQLite reads the id only where the row has a key (api_key IS NOT NULL);
    JSONL (and PostgreSQL, read by record) read it whatever: two "(no key)" rows."""
    path = tmp_path / name
    led = Ledger.open(path)
    led.put(_rec("s", {"key": "bot", "key_id": "k1", "team": "t"}))
    led.put(_rec("a", {}))
    led.put(_rec("b", {"key_id": "user-7"}))  # the caller's own metadata
    assert led.close()
    assert _keys(path) == [("bot", "t", "k1", 1), (None, None, None, 2)], _keys(path)
    assert main(["report", str(path)]) == 0
    assert capsys.readouterr().out.count("(no key)") == 1


def test_sqlite_and_jsonl_agree_on_a_key_id_that_is_no_string(tmp_path: Path) -> None:
    """A non-str id is none (`report._key_id`): JSONL reads the record's dict and drops it;
    SQLite's json_extract hands an object or array back as its JSON text, a str, kept."""
    got = {}
    for name in ("l.db", "l.jsonl"):
        path = tmp_path / name
        led = Ledger.open(path)
        led.put(_rec("a", {"key": "bot", "key_id": {"id": 1}, "team": "t"}))
        led.put(_rec("b", {"key": "bot", "key_id": [2], "team": "t"}))
        assert led.close()
        got[name] = _keys(path)
    assert got["l.db"] == got["l.jsonl"], got
