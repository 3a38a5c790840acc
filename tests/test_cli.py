from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


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
