"""`satisfice report` reads what a ledger holds, whatever it holds: each request once, every
name as it is (not as a browser would act on it), and a ledger it cannot read said so."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest

from satisfice.cli import main
from satisfice.report import render_html, rows, summarize


def _rec(i: int, **kw: Any) -> dict[str, Any]:
    r = {"request_id": f"r{i}", "started_at": 1_700_000_000 + i * 86_400, "outcome": "ok",
         "task": "general", "model": "m", "total_cost_usd": 0.5, "reference_cost_usd": 1.0,
         "latency_s": 0.1}  # fmt: skip
    return {**r, **kw}


def _jsonl(p: Path, recs: list[dict[str, Any]]) -> Path:
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def test_a_jsonl_ledger_appended_twice_counts_each_request_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JSONL ledger appended to itself (`cat a.jsonl >> b.jsonl` twice, rotated files
    joined over each other) had every request counted twice, its cost doubled, without a
    word; a database keeps one row per id. Each id is one request, the repeats said."""
    recs = [_rec(0), _rec(1, total_cost_usd=0.25)]
    p = _jsonl(tmp_path / "l.jsonl", recs + recs)
    with pytest.warns(UserWarning, match="2 record"):
        s = summarize(rows(p))
    assert s["requests"] == 2 and s["cost_usd"] == pytest.approx(0.75)
    assert s["reference_cost_usd"] == pytest.approx(2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # (shown by the CLI as its one line)
        assert main(["report", str(p)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("2 requests") and "$0.750000" in out
    assert err.startswith(f"satisfice report: warning: ledger {p}: 2 record(s) repeated")


def test_a_long_model_id_is_not_written_on_every_day_of_the_drift_chart(tmp_path: Path) -> None:
    """The drift chart wrote every top model's id on every day's column, as a tooltip of a
    column 0 px high on the days it had no traffic: nine ids of 100 KB, each answering one
    request, beside 300 days of another model's traffic made a 1 MB ledger a 250 MB page
    (0.8 GB of memory to build). A model's id is written where it has traffic."""
    long = "x" * 20_000
    recs = [_rec(0, model=long), *(_rec(i, model="m") for i in range(1, 60))]
    page = render_html(summarize(rows(_jsonl(tmp_path / "l.jsonl", recs))))
    # its row in the table, its bar, its legend and its one day's column
    assert page.count(long) <= 4, page.count(long)
    assert len(page) < 200_000


def test_names_that_turn_text_around_or_hide_show_escaped_in_the_page(tmp_path: Path) -> None:
    """The terminal report showed a model id's right-to-left override and zero-width space
    escaped; the HTML page wrote them as they were. In Chromium one id's override turned
    the drift legend's other ids around ("gpt-4o" read "o4-tpg") and off their colours,
    and "gpt-4o" with a zero-width space was a second row reading "gpt-4o". Each shows as
    the terminal shows it, markup still as text."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    recs = [_rec(0, model="gpt-\u202eevil"), _rec(1, model="gpt-4o"),
            _rec(2, model="gpt-4o\u200b", metadata={"key": "k\u2067", "team": "\u202eteam"}),
            _rec(3, model="<script>alert(1)</script>", task="<img src=x onerror=alert(1)>",
                 metadata={"key": "</svg><script>x</script>"})]  # fmt: skip
    page = tmp_path / "r.html"
    assert main(["report", str(_jsonl(tmp_path / "l.jsonl", recs)), "--html", str(page)]) == 0
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout  # fmt: skip
    for c in "\u202e\u200b\u2067":
        assert c not in dom, repr(c)
    assert "gpt-\\u202eevil" in dom and "gpt-4o\\u200b" in dom and "\\u202eteam" in dom
    assert "<script" not in dom and "<img" not in dom and "&lt;script&gt;" in dom


def test_a_postgres_database_it_cannot_read_as_a_ledger_is_an_error_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A DSN naming a database without the ledger's tables (the server's default database,
    a typo in the name of one that exists), or a reader the ledger's tables are not granted
    to, had ended `satisfice report` in a psycopg traceback (`relation "feedback" does not
    exist`, `permission denied for table feedback`); a SQLite file that is no ledger is
    said so. Each is one line saying what to check."""
    import psycopg

    from satisfice.ledger import PostgresSink

    from .servers import postgres

    with postgres() as dsn:
        assert main(["report", dsn]) == 2
        err = capsys.readouterr().err
        assert "is not a satisfice ledger" in err and "Traceback" not in err
        sink = PostgresSink(dsn)
        sink.write([_rec(0)])
        sink.close()
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute("CREATE ROLE reader LOGIN")
        assert main(["report", dsn.replace("postgres@", "reader@")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("satisfice report: error: cannot read the PostgreSQL ledger: ")
        assert "permission denied for table" in err
        assert main(["report", dsn]) == 0  # (the ledger itself reads)
        assert capsys.readouterr().out.startswith("1 requests")
