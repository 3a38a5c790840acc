"""The record under odd input (round 15 of adversarial testing): costs and times no request
has, SQLite rows of the wrong types or with damaged records, feedback out of range, and
unpriced models shown as $0 in the report, the demo and `--json`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from satisfice.cli import main
from satisfice.errors import ConfigError
from satisfice.ledger import _NAMES, _row, _sqlite_schema, read_records
from satisfice.report import render_html, render_text, rows, summarize

LINE = {"request_id": "r1", "outcome": "ok", "model": "m", "task": "general",
        "started_at": 1764633600, "total_cost_usd": 0.01}  # fmt: skip


def jsonl(tmp_path: Path, **fields: Any) -> Path:
    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps({**LINE, **fields}) + "\n")
    return path


def sqlite_ledger(tmp_path: Path, feedback: Any = None, **columns: Any) -> Path:
    path = tmp_path / "l.db"
    db = sqlite3.connect(path, isolation_level=None)
    _sqlite_schema(db)
    row = dict.fromkeys(_NAMES)
    row.update(request_id="r1", ts=1.7e9, day="2026-01-01", outcome="ok", model="m",
               cost_usd=0.1, cascade_steps=0, record=json.dumps(LINE))  # fmt: skip
    row.update(columns)
    marks = ",".join("?" * len(_NAMES))
    db.execute(f"INSERT INTO requests VALUES ({marks})", [row[n] for n in _NAMES])
    if feedback is not None:
        db.execute(
            "INSERT INTO feedback (request_id, ts, score, source) VALUES ('r1', 1, ?, 'user')",
            (feedback,),
        )
    db.close()
    return path


@pytest.mark.parametrize(
    ("field", "value"),
    [("total_cost_usd", float("nan")), ("total_cost_usd", -5), ("total_cost_usd", float("inf")),
     ("reference_cost_usd", -1), ("latency_s", float("nan")), ("overhead_s", "1ms")],
)  # fmt: skip
def test_a_jsonl_cost_or_time_no_request_has_is_an_error_naming_the_line(
    tmp_path: Path, field: str, value: Any
) -> None:
    with pytest.raises(ConfigError, match=f"line 1: {field} must be a number >= 0"):
        summarize(rows(jsonl(tmp_path, **{field: value})))


def test_a_cost_that_is_no_finite_number_is_stored_as_unknown() -> None:
    row = dict(zip(_NAMES, _row({**LINE, "total_cost_usd": float("nan")}), strict=True))
    assert row["cost_usd"] is None


@pytest.mark.parametrize(
    ("columns", "feedback"),
    [({"cost_usd": "n/a"}, None), ({"latency_s": "fast"}, None),
     ({"cascade_steps": 1, "record": "{torn"}, None), ({"cascade_steps": 1, "record": "[1]"}, None),
     ({}, "good")],
)  # fmt: skip
def test_a_sqlite_row_of_the_wrong_types_is_an_error_naming_it(
    tmp_path: Path, columns: dict[str, Any], feedback: Any
) -> None:
    with pytest.raises(ConfigError, match="'r1'"):
        summarize(rows(sqlite_ledger(tmp_path, feedback, **columns)))


@pytest.mark.parametrize("score", ["good", 5])
def test_a_jsonl_records_own_feedback_is_checked_as_feedback_lines_are(
    tmp_path: Path, score: Any
) -> None:
    with pytest.raises(ConfigError, match=r"line 1: a feedback score must be a number in \[0, 1\]"):
        summarize(rows(jsonl(tmp_path, feedback=score)))


def test_a_report_where_nothing_was_priced_says_unpriced_not_zero() -> None:
    s = summarize([{"request_id": f"r{i}", "outcome": "ok", "model": "m", "cost_usd": None}
                   for i in range(3)])  # fmt: skip
    assert s["cost_usd"] is None
    assert render_text(s).splitlines()[1].startswith("cost unpriced (3 requests")


def test_the_demo_gives_no_total_over_an_unpriced_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = tmp_path / "r.toml"
    reg.write_text("""
[meta]
reference_model = "ref"
[[model]]
id = "house"
provider = "self"
context_window = 100000
max_output = 1000
quality = { general = 0.98, code = 0.98, math = 0.98, reasoning = 0.98, extraction = 0.98 }
deployments = [{ name = "l", api = "openai", base_url = "http://127.0.0.1:9/v1", model = "h" }]
[[model]]
id = "ref"
provider = "x"
context_window = 100000
max_output = 1000
price = { input = 5, output = 25 }
quality = { general = 0.9 }
deployments = [{ name = "l", api = "openai", base_url = "http://127.0.0.1:9/v1", model = "r" }]
""")
    assert main(["demo", "--registry", str(reg), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["unpriced_routes"] > 0
    assert out["total_est_cost_usd"] is None and out["total_reference_cost_usd"] is None
    assert main(["demo", "--registry", str(reg)]) == 0
    assert "no total or saving" in capsys.readouterr().out.splitlines()[-1]


def test_route_json_is_strict_json_when_a_cost_overflows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = tmp_path / "r.toml"
    reg.write_text("""
[[model]]
id = "huge"
provider = "x"
context_window = 100000
max_output = 1000
price = { input = 1e308, output = 1e308 }
quality = { general = 0.9 }
deployments = [{ name = "l", api = "openai", base_url = "http://127.0.0.1:9/v1", model = "m" }]
""")
    if main(["route", "hello there", "--registry", str(reg), "--json"]) == 2:
        return  # the registry refused the price: nothing to print

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    json.loads(capsys.readouterr().out, parse_constant=refuse)


@pytest.mark.parametrize("record", ['{"request_id": "r1", "mess', "[1, 2]", "{}"])
def test_a_damaged_sqlite_record_is_an_error_naming_its_row(tmp_path: Path, record: str) -> None:
    with pytest.raises(ConfigError, match="request 'r1'"):
        list(read_records(sqlite_ledger(tmp_path, record=record)))


def test_a_models_unpriced_requests_are_said_beside_its_cost() -> None:
    s = summarize([{"request_id": f"r{i}", "outcome": "ok", "model": "mixed", "task": "general",
                    "cost_usd": 0.01 if i == 0 else None} for i in range(100)])  # fmt: skip
    (line,) = [x for x in render_text(s).splitlines() if x.startswith("mixed")]
    assert line.endswith("(+99 unpriced)")
    page = render_html(s)
    assert "<td>$0.010000 + 99 unpriced</td>" in page  # the models table
    assert ">$0.010000 + 99 unpriced</text>" in page  # the cost-per-model chart
