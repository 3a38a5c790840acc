from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from satisfice.cli import main


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "satisfice.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def test_route_json_object() -> None:
    p = run("route", "--json", "Extract the dates from this text as JSON: met on 2024-05-01")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    for key in ("model", "fallbacks", "tokens_in", "tokens_in_exact", "est_cost_usd", "reasons"):
        assert key in out
    assert isinstance(out["tokens_in_exact"], bool) and out["reasons"]


def test_route_file_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("Write a haiku about rain")
    p = run("route", "--file", str(f))
    assert p.returncode == 0 and "model:" in p.stdout
    p = run("route", "--max-cost", "0.0000000001", "hello")
    assert p.returncode == 2 and "no model satisfies" in p.stderr
    p = run("route")
    assert p.returncode == 2 and "give a prompt" in p.stderr


def test_count(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("hello world")
    assert run("count", "--model", "gpt-5.4-nano", str(f)).stdout.strip() == "2"
    out = json.loads(run("count", "--json", "--model", "claude-sonnet-4-6", str(f)).stdout)
    assert out == {"tokens": 2, "encoding": "claude", "exact": False}
    p = run("count", "--model", "gpt-99", str(f))
    assert p.returncode == 2 and "unknown model 'gpt-99'" in p.stderr
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8" in run("count", str(tmp_path / "bin")).stderr


def test_demo_runs() -> None:
    p = run("demo", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert len(out["routes"]) >= 10
    assert out["total_est_cost_usd"] < out["total_reference_cost_usd"]


def _bad_files(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "adir").mkdir()
    (tmp / "notdb.db").write_bytes(b"this is not sqlite")
    (tmp / "empty.db").write_bytes(b"")
    (tmp / "scalar.jsonl").write_text("5\n")
    (tmp / "noid.jsonl").write_text('{"outcome": "ok"}\n')
    (tmp / "isots.jsonl").write_text('{"request_id": "a", "started_at": "2025-01-01"}\n')
    (tmp / "ok.jsonl").write_text('{"request_id": "a", "started_at": 1700000000}\n')
    (tmp / "binary.jsonl").write_bytes(b"\xbb\xff\x00")
    d = str(tmp / "adir")
    return [
        (["report", str(tmp / "notdb.db")], "not a satisfice ledger"),
        (["report", str(tmp / "empty.db")], "not a satisfice ledger"),
        (["report", d], "directory"),
        (["report", str(tmp / "scalar.jsonl")], "line 1: not a satisfice record"),
        (["report", str(tmp / "noid.jsonl")], "line 1: not a satisfice record"),
        (["report", str(tmp / "isots.jsonl")], "started_at"),
        (["report", str(tmp / "ok.jsonl"), "--html", d], "directory"),
        (["route", "--file", d], "directory"),
        (["count", d], "directory"),
        (["eval", "--format", "outcomes", str(tmp / "binary.jsonl"), "--quiet"], "UTF-8"),
    ]


@pytest.mark.parametrize("i", range(10))
def test_bad_files_are_a_clear_error_not_a_traceback(
    i: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, why = _bad_files(tmp_path)[i]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert why in err and "Traceback" not in err, err
