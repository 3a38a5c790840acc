"""`satisfice report` over a ledger written by real requests, checked as text, JSON and as a
page rendered by a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from satisfice.cli import main
from satisfice.report import rows, summarize
from satisfice.testing import LocalUpstream, status

from .chat_support import router, wire

MSGS = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def ledger(up: LocalUpstream, tmp_path: Path) -> tuple[Path, list[float]]:
    import asyncio

    db = tmp_path / "l.db"
    costs: list[float] = []

    async def fill() -> None:
        async with router(up.url).attach(ledger=db) as r:
            for i in range(12):
                res = await r.chat(MSGS, metadata={"key": f"k{i % 2}"})
                costs.append(res.total_cost_usd or 0.0)
                r.feedback(res.request_id, 1.0 if i % 3 else 0.0)
            up.script(wire("alpha"), status(503), status(503), status(503))
            res = await r.chat(MSGS)  # one fallback to beta
            costs.append(res.total_cost_usd or 0.0)
            for m in ("alpha", "beta", "gamma", "delta"):
                up.script(wire(m), status(400, message="no"))
            with pytest.raises(Exception):  # noqa: B017  (any failure: it is recorded)
                await r.chat(MSGS)
            assert r.ledger is not None and r.ledger.flush()

    asyncio.run(fill())
    return db, costs


def test_the_summary_adds_up(ledger: tuple[Path, list[float]]) -> None:
    db, costs = ledger
    s = summarize(rows(db))
    assert s["requests"] == 14 and s["answered"] == 13
    assert s["failure_rate"] == pytest.approx(1 / 14)
    assert s["fallback_rate"] == pytest.approx(1 / 13)
    assert s["cost_usd"] == pytest.approx(sum(costs))
    assert s["models"]["alpha"]["requests"] == 12 and s["models"]["beta"]["requests"] == 1
    assert s["models"]["alpha"]["mean_feedback"] == pytest.approx(8 / 12)
    # the reference (here alpha, the highest prior) billed the same tokens: the beta
    # fallback cost more than alpha would have, so the saving is below zero
    assert s["reference_cost_usd"] is not None
    assert s["saving"] == pytest.approx(1 - s["cost_usd"] / s["reference_cost_usd"])
    assert s["saving"] < 0
    assert sum(sum(c.values()) for c in s["drift"].values()) == 13


def test_the_spend_per_key_adds_up_to_the_total(
    ledger: tuple[Path, list[float]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Where the money went per key of a shared service (`satisfice serve` records the key's
    name): the report had no such breakdown. Every request's bill is on its key's row, a
    failed one's too, and the requests without a key on "(no key)"."""
    db, costs = ledger
    keys = {v["key"]: v for v in summarize(rows(db))["keys"]}
    assert {k: v["requests"] for k, v in keys.items()} == {"k0": 6, "k1": 6, None: 2}
    assert sum(v["cost_usd"] for v in keys.values()) == pytest.approx(sum(costs))
    assert keys["k0"]["cost_usd"] == pytest.approx(sum(costs[0:12:2]))
    assert main(["report", str(db)]) == 0
    out = capsys.readouterr().out
    assert "(no key)" in out and "k0" in out


def test_jsonl_and_sqlite_say_the_same(ledger: tuple[Path, list[float]], tmp_path: Path) -> None:
    from satisfice.ledger import read_records

    db, _ = ledger
    j = tmp_path / "l.jsonl"
    j.write_text("".join(json.dumps(r) + "\n" for r in read_records(db)))
    a, b = summarize(rows(db)), summarize(rows(j))
    assert (
        a["cost_usd"] == pytest.approx(b["cost_usd"]) and a["models"].keys() == b["models"].keys()
    )


def test_report_command_text(ledger: tuple[Path, list[float]], capsys: pytest.CaptureFixture[str]):
    db, _ = ledger
    assert main(["report", str(db)]) == 0
    out = capsys.readouterr().out
    assert "14 requests, 13 answered" in out and "saved" in out and "alpha" in out
    assert main(["report", str(db.parent / "missing.db")]) == 2


def test_html_report_renders_in_headless_chromium(
    ledger: tuple[Path, list[float]], tmp_path: Path
) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    db, _ = ledger
    page = tmp_path / "report.html"
    assert main(["report", str(db), "--html", str(page)]) == 0
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout  # fmt: skip
    assert "Cost per model" in dom and "Traffic share per model per day" in dom
    assert "Cost per key" in dom and ">k0<" in dom
    assert dom.count("<rect") >= 4 and "alpha" in dom
    png = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={png}", "--window-size=1100,1400", page.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[0] == 1400 and img.shape[1] == 1100
    assert img[..., :3].std() > 0.05  # drawn, not a blank page


@pytest.mark.parametrize("priced", [2, 0])
def test_a_task_with_unpriced_requests_counts_them_apart(
    priced: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The task table counted only priced requests (six became two, as if complete), and
    a task with none priced divided by zero."""
    p = tmp_path / "ledger.jsonl"
    recs = [{"request_id": f"r{i}", "started_at": 1700000000, "outcome": "ok", "task": "general",
             "model": "priced" if i < priced else "unpriced-model",
             "total_cost_usd": 0.5 if i < priced else None,
             "reference_cost_usd": 1.0 if i < priced else None} for i in range(6)]  # fmt: skip
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    t = summarize(rows(p))["tasks"]["general"]
    assert t["requests"] == 6 and t["unpriced_requests"] == 6 - priced
    assert t["cost_usd"] == (1.0 if priced else None)
    assert main(["report", str(p)]) == 0
    assert "unpriced" in capsys.readouterr().out
    assert main(["report", str(p), "--html", str(tmp_path / "r.html")]) == 0
    assert "unpriced" in (tmp_path / "r.html").read_text()


def test_failed_bills_races_and_escalations_are_said_as_what_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed request's bill was in the total but set against no reference (the saving
    skewed: -1171% where -400% was due); a race's loser and a cascade's escalation counted
    as fallbacks (rate 1.0 where nothing failed); a `day` column reached the terminal raw."""
    from satisfice.report import render_text

    p = tmp_path / "ledger.jsonl"
    ok = {"started_at": 1700000000, "outcome": "ok", "task": "general", "model": "b",
          "total_cost_usd": 1.0, "reference_cost_usd": 4.0}  # fmt: skip
    recs = [
        {**ok, "request_id": "race", "attempts": [{"model": "a", "outcome": "cancelled"},
                                                  {"model": "b", "outcome": "ok"}]},
        {**ok, "request_id": "casc", "attempts": [{"model": "a", "outcome": "rejected"},
                                                  {"model": "b", "outcome": "ok"}]},
        {**ok, "request_id": "fell", "attempts": [{"model": "a", "outcome": "error"},
                                                  {"model": "b", "outcome": "ok"}]},
        {"request_id": "failed", "started_at": 1700000000, "outcome": "error",
         "total_cost_usd": 2.0, "attempts": [{"model": "a", "outcome": "error"}]},
    ]  # fmt: skip
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    s = summarize(rows(p))
    assert s["cost_usd"] == 5.0 and s["failed_cost_usd"] == 2.0
    assert s["saving"] == pytest.approx(1 - 3.0 / 12.0)  # the answers against theirs
    assert s["fallback_rate"] == pytest.approx(1 / 3)
    assert main(["report", str(p)]) == 0
    assert "of it, billed for failed requests: $2" in capsys.readouterr().out
    text = render_text({**s, "drift": {"2026-01-01\x1b]0;pwned\x07": {"b": 1}}})
    assert "\x1b" not in text and "\x07" not in text


def test_a_years_drift_and_a_large_cost_stay_within_their_charts() -> None:
    """Columns of at least 4 px ran a 365-day ledger's days to x=2,230 on a 700 px chart
    (255 days, the last 60 among them, unseen); a cost of $60,000,000.00 was cut off at
    the bars' canvas edge."""
    import re

    from satisfice.report import _bars, _stacked

    days = {f"2026-{1 + i // 31:02d}-{1 + i % 31:02d}-{i}": {"a": 1, "b": i} for i in range(365)}
    svg = _stacked(days, ["a", "b"])
    width = int(re.search(r'<svg width="(\d+)"', svg).group(1))  # type: ignore[union-attr]
    rects = [
        (float(x), float(w))
        for x, w in re.findall(r'<rect x="([\d.]+)" y="[^"]*" width="([\d.]+)"', svg)
    ]
    # (729: "b" had no traffic on the first day, and a model gets no column on such a day)
    assert len(rects) == 729 and max(x + w for x, w in rects) <= width
    svg = _bars([("big", 60_000_000.0, 3), ("small", 1.0, 0)])
    width = int(re.search(r'<svg width="(\d+)"', svg).group(1))  # type: ignore[union-attr]
    x = float(re.search(r'<text x="([\d.]+)"[^>]*>\$60,000,000', svg).group(1))  # type: ignore[union-attr]
    assert x + 7 * len("$60,000,000.00 + 3 unpriced") <= width, (x, width)


def test_a_ledger_of_another_schema_version_is_refused_by_the_reader_too(tmp_path: Path) -> None:
    """The writer refused a ledger whose meta said schema version 2; `satisfice report` read
    it as version 1 without a word."""
    import sqlite3

    from satisfice.errors import ConfigError
    from satisfice.ledger import Ledger, read_records

    db = tmp_path / "l.db"
    led = Ledger.open(db)
    led.close()
    with sqlite3.connect(db) as c:
        c.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(ConfigError, match="schema version 2"):
        list(read_records(db))
    with sqlite3.connect(db) as c:  # read as the writer reads it: an integer
        c.execute("UPDATE meta SET value = ' 1' WHERE key = 'schema_version'")
    assert list(read_records(db)) == []


def test_names_from_the_ledger_reach_a_terminal_escaped_and_a_fifo_stays_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Model and task names went to the terminal raw (clear screen, set its title, hidden
    text); `--html FIFO` put a regular file where the FIFO was (as root: /dev/full too)."""
    import os
    import stat
    import threading

    p = tmp_path / "ledger.jsonl"
    evil = "m\x1b[2J\x1b]0;pwned\x07"
    recs = [{"request_id": f"r{i}", "started_at": 1700000000 + i * 86400, "outcome": "ok",
             "task": "t\x1b[8m", "model": evil, "total_cost_usd": 0.5}
            for i in range(3)]  # fmt: skip
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["report", str(p)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b[2J" in out
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert main(["report", str(p), "--html", str(fifo)]) == 0
    reader.join(10)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and got and b"<html" in got[0].lower()
    # /dev/stdout as a pipe: its symlink leads to no file by name, and the write had failed
    import sys

    out = subprocess.run([sys.executable, "-m", "satisfice.cli", "report", str(p), "--html",
                          "/dev/stdout"], capture_output=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and b"<html" in out.stdout.lower(), out.stderr
    # and redirected to a file with >>: written into it, not renamed over it, nor cut
    kept = tmp_path / "out.txt"
    kept.write_text("EARLIER LINE\n")
    with kept.open("ab") as f:
        cmd = [sys.executable, "-m", "satisfice.cli", "report", str(p), "--html", "/dev/stdout"]
        code = subprocess.run(cmd, stdout=f, timeout=60).returncode
    text = kept.read_text()
    assert code == 0 and text.startswith("EARLIER LINE\n") and "<html" in text.lower()
    # however spelled (a link to it, //dev/stdout); and an ordinary file under /dev (tmpfs
    # /dev/shm) is replaced whole, not appended to
    from satisfice._atomic import write_atomic

    link = tmp_path / "out-link"
    link.symlink_to("/dev/stdout")
    for spelling in (str(link), "//dev/stdout"):
        kept.write_text("EARLIER LINE\n")
        with kept.open("ab") as f:
            code = ("import sys; from satisfice._atomic import write_atomic; "
                    "write_atomic(sys.argv[1], lambda f: f.write(b'NEW'))")  # fmt: skip
            cmd = [sys.executable, "-c", code, spelling]
            assert subprocess.run(cmd, stdout=f, timeout=60).returncode == 0
        assert kept.read_text() == "EARLIER LINE\nNEW", spelling
    if os.path.isdir("/dev/shm"):
        shm = f"/dev/shm/satisfice-test-{os.getpid()}"
        try:
            for body in (b"old\n", b"new\n"):
                write_atomic(shm, lambda f, b=body: f.write(b))  # type: ignore[misc]
            assert Path(shm).read_bytes() == b"new\n"
        finally:
            os.unlink(shm)


def test_an_unreachable_postgres_ledger_and_ctrl_c_end_without_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("psycopg")
    assert main(["report", "postgresql://u:hunter2@127.0.0.1:1/db"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the PostgreSQL ledger" in err and "hunter2" not in err

    import satisfice.report as report

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "summarize", interrupted)
    assert main(["report", str(Path(__file__))]) == 130
    assert "interrupted" in capsys.readouterr().err
