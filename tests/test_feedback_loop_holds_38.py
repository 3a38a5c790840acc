"""The loop from the record back to routing holds: feedback scores answers a model gave."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import pytest

from satisfice import Policy, Router
from satisfice.errors import ConfigError, DatasetError, InputError, SatisficeError
from satisfice.eval.train import TrainConfig
from satisfice.flywheel import _held_out, ledger_prompts, train_from_ledger
from satisfice.ledger import Ledger, read_records
from satisfice.testing import LocalUpstream, hang, status

from .chat_support import ORDER, registry, router


async def test_a_failed_or_cancelled_request_has_no_answer_to_score(tmp_path: Path) -> None:
    """Every attempt refused (HTTP 400): feedback(e.request_id, 0.0) had been accepted and
    moved alpha's ability (bias 2.197 -> 2.175, n_obs 0 -> 1) for an answer it never gave,
    while `satisfice train` skips the failure's record; a cancelled chat(decision=d) alike."""
    with LocalUpstream() as up:
        for m in ORDER:
            up.script(f"{m}-wire", status(400))
        async with router(up.url).attach(ledger=tmp_path / "l.jsonl", record_prompts=True) as r:
            before = r.snapshot.policy.quality_model().params_for(r.snapshot.registry["alpha"])
            with pytest.raises(SatisficeError) as failed:
                await r.chat("Say hello")
            rid = failed.value.request_id  # type: ignore[attr-defined]
            with pytest.raises(InputError, match="failed or was cancelled"):
                r.feedback(rid, 0.0)
            with pytest.raises(InputError, match="failed or was cancelled"):
                r.feedback(rid, 1.0, model="beta")
            up.reset_script()
            up.script("alpha-wire", hang())
            d = r.route("Say hi")
            cancelled_id = d.request_id
            call = asyncio.create_task(r.chat("Say hi", decision=d))
            await asyncio.sleep(0.2)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            with pytest.raises(InputError, match="failed or was cancelled"):
                r.feedback(cancelled_id, 0.0)
            after = r.snapshot.policy.quality_model().params_for(r.snapshot.registry["alpha"])
            assert after == before
            assert r.ledger is not None and r.ledger.flush()
    records = list(read_records(tmp_path / "l.jsonl"))
    assert {x["request_id"] for x in records} == {rid, cancelled_id}
    assert all("feedback" not in x and x["outcome"] == "error" for x in records)


async def test_a_stream_that_failed_has_no_answer_to_score() -> None:
    """stream() whose every attempt is refused: its request id had been scored as chat()'s."""
    with LocalUpstream() as up:
        for m in ORDER:
            up.script(f"{m}-wire", status(400))
        async with router(up.url) as r:
            s = r.stream("Say hello")
            with pytest.raises(SatisficeError):
                async with s:
                    async for _ in s:
                        pass
            assert s.request_id is not None
            with pytest.raises(InputError, match="failed or was cancelled"):
                r.feedback(s.request_id, 0.0)


@pytest.mark.parametrize("passed", ["no", None, 0.3, [False]])
def test_a_verdict_that_is_no_pass_or_fail_is_named_not_trained_on(
    tmp_path: Path, passed: object
) -> None:
    """A validator verdict is an implicit score: {"passed": "no"} had been trained as a pass
    (any text is true), {"passed": null} as a fail, each without a word."""
    lines = [
        {"request_id": f"r{i}", "started_at": i, "outcome": "ok", "model": "alpha",
         "feedback": float(i % 2), "messages": [{"role": "user", "content": f"q {i}"}]}
        for i in range(20)
    ]  # fmt: skip
    lines.append({"request_id": "checked", "started_at": 20, "outcome": "ok", "model": "alpha",
                  "attempts": [{"model": "alpha", "verdict": {"passed": passed}}],
                  "messages": [{"role": "user", "content": "checked"}]})  # fmt: skip
    ledger = tmp_path / "l.jsonl"
    ledger.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(ConfigError, match=r"line 21: attempts\[0\]\.verdict must be an object"):
        train_from_ledger(ledger, registry=registry("http://127.0.0.1:9"), holdout=0)


@pytest.mark.parametrize("score", [float("nan"), 1.5, -1.0, True])
def test_a_score_no_reader_takes_is_refused_as_it_is_given(tmp_path: Path, score: object) -> None:
    """Ledger.feedback() had queued and written NaN, 1.5, -1 and True: the ledger was then
    unreadable as a whole (read_records: "line 31: a feedback score must be a number in
    [0, 1], got None"), for `satisfice report` and `train` alike."""
    ledger = Ledger.open(tmp_path / "l.jsonl")
    for i in range(30):
        ledger.put({"request_id": f"r{i}", "started_at": i, "outcome": "ok", "model": "alpha",
                    "messages": [{"role": "user", "content": f"question {i}"}]})  # fmt: skip
        ledger.feedback(f"r{i}", float(i % 2))
    with pytest.raises(InputError, match=r"feedback score must be a number in \[0, 1\]"):
        ledger.feedback("r0", score)  # type: ignore[arg-type]
    assert ledger.close()
    assert [r["feedback"] for r in read_records(tmp_path / "l.jsonl")] == [i % 2 for i in range(30)]


@pytest.mark.parametrize(
    "bad",
    [
        {"request_id": 7},
        {"request_id": None, "feedback": {"request_id": "r0", "score": 0.0}},
        {"total_cost_usd": -3},
        {"feedback": 5},
        {"attempts": [{"model": "alpha", "verdict": {"passed": "no"}}]},
    ],
)
@pytest.mark.parametrize("kind", ["jsonl", "db"])
def test_a_record_no_reader_takes_is_dropped_not_written(
    tmp_path: Path, bad: dict[str, object], kind: str
) -> None:
    """Ledger.put() of a record dict had written what every reader refuses (no string
    request_id, a cost of -3, a score of 5): read_records, `satisfice report` and `train`
    then refused the whole ledger ("line 2: not a satisfice record ..."). It is dropped and
    counted, as a record with no time already was."""
    path = tmp_path / f"l.{kind}"
    ledger = Ledger.open(path)
    good = {"request_id": "r0", "started_at": 1, "outcome": "ok", "model": "alpha"}
    ledger.put(good)
    ledger.put({"request_id": "bad", "started_at": 2, "outcome": "ok", **bad})
    ledger.put({**good, "request_id": "r1", "started_at": 3})
    assert ledger.close()
    assert ledger.rejected == 1
    assert [r["request_id"] for r in read_records(path)] == ["r0", "r1"]


@pytest.mark.parametrize("content", [{"a": 1}, "half a pair \ud800"])
def test_calibrate_from_ledger_names_the_record_it_cannot_read(
    tmp_path: Path, content: object
) -> None:
    """`calibrate --from-ledger` had said "messages[0].content must be a string or a list of
    parts", or "prompts[5]: the prompt is not valid Unicode", naming no ledger record."""
    lines = [
        {"request_id": f"r{i}", "started_at": i, "outcome": "ok", "model": "alpha",
         "messages": [{"role": "user", "content": f"q {i}"}]}
        for i in range(5)
    ]  # fmt: skip
    lines.append({"request_id": "damaged", "started_at": 9, "outcome": "ok", "model": "alpha",
                  "messages": [{"role": "user", "content": content}]})  # fmt: skip
    ledger = tmp_path / "l.jsonl"
    ledger.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(DatasetError, match="ledger record 'damaged': .*delete that record"):
        ledger_prompts(ledger)


def test_one_long_prompt_trains_without_overflow_warnings(tmp_path: Path) -> None:
    """A ledger of short prompts and one of 2,000 characters: `satisfice train` had printed
    "RuntimeWarning: overflow encountered in exp" (32 times) from the fit's sigmoid."""
    code = "Write a Python function that parses this CSV file and returns the rows: ```{}```"
    chat = "Hi! What's a nice name for a cat? I like {}."
    lines = [
        {"request_id": f"r{i}-{m}", "started_at": i, "outcome": "ok", "model": m,
         "feedback": float((m == "beta") == (i % 2 == 0)),
         "messages": [{"role": "user", "content": (code if i % 2 == 0 else chat).format(i)}]}
        for i in range(50) for m in ("alpha", "beta")
    ]  # fmt: skip
    lines[0]["messages"] = [{"role": "user", "content": "x" * 2000}]
    ledger = tmp_path / "l.jsonl"
    ledger.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _, report = train_from_ledger(ledger, registry=registry("http://127.0.0.1:9"), holdout=0)
    assert report["train_rows"] == 100


def test_a_score_for_a_request_routed_before_a_predictor_of_another_k_is_refused_unmarked(
    tmp_path: Path,
) -> None:
    """Routed by the prior (8 skills), then router.update() swapped in a predictor trained
    on the ledger (4): feedback had said "latent must hold 5 values (k skills and a
    difficulty)", having marked the answer scored, and then "already scored" for a score
    that had moved nothing. It is refused, unmarked, saying why."""
    ledger = tmp_path / "l.jsonl"
    lines = [
        {"request_id": f"r{i}-{m}", "started_at": i, "outcome": "ok", "model": m,
         "feedback": float((m == "beta") == (i % 2 == 0)),
         "messages": [{"role": "user", "content": f"{'def f(): pass' if i % 2 else 'hi'} {i}"}]}
        for i in range(40) for m in ("alpha", "beta")
    ]  # fmt: skip
    ledger.write_text("".join(json.dumps(x) + "\n" for x in lines))
    reg = registry("http://127.0.0.1:9")
    qm, _ = train_from_ledger(ledger, registry=reg, config=TrainConfig(name="l", k=4), holdout=0)
    r = Router(reg)
    assert r.snapshot.policy.quality_model().k != 4
    rid = r.route("Write a Python function").request_id
    r.update(policy=Policy(quality=qm))
    for _ in range(2):
        with pytest.raises(InputError, match="routed by a predictor of 8 skills, and the rou"):
            r.feedback(rid, 1.0)
    assert r.feedback(r.route("Write a Python function").request_id, 1.0).n_obs > 0


@pytest.mark.parametrize("kind", ["sqlite", "pg"])
def test_retention_deletes_the_scores_of_the_requests_it_deletes(tmp_path: Path, kind: str) -> None:
    """expire() (retention_days) deleted old requests and kept every score ever given: the
    feedback table grew for good, and each read_records() held all of its rows."""
    from satisfice.ledger import PostgresSink, SQLiteSink

    from .servers import postgres

    def check(sink: SQLiteSink | PostgresSink, count: Any) -> None:
        try:
            sink.write([{"request_id": "old", "started_at": 100.0, "outcome": "ok"},
                        {"request_id": "new", "started_at": 2e9, "outcome": "ok"}])  # fmt: skip
            sink.feedback([("old", 101.0, 1.0, "feedback", None),
                           ("new", 2e9 + 1, 0.0, "feedback", None)])  # fmt: skip
            assert sink.expire(1e9) == 1
            assert count() == 1
        finally:
            sink.close()

    if kind == "sqlite":
        path = tmp_path / "l.db"
        sink = SQLiteSink(path)

        def count() -> Any:
            with contextlib.closing(sqlite3.connect(path)) as db:
                return db.execute("SELECT count(*) FROM feedback").fetchone()[0]

        check(sink, count)
        return
    psycopg = pytest.importorskip("psycopg")
    with postgres() as dsn:

        def count_pg() -> Any:
            with psycopg.connect(dsn) as db:
                return db.execute("SELECT count(*) FROM feedback").fetchone()[0]

        check(PostgresSink(dsn), count_pg)


def test_a_model_scored_only_on_held_out_records_is_not_trained_from_nothing(
    tmp_path: Path,
) -> None:
    """gamma answered only prompts the hash held out: it had been a training column with no
    observation, saved as ModelParams(bias=0.0, n_obs=0.0, source='trained') in place of
    its registry prior (and in the prior map's fit). It is left to its prior."""
    lines = []
    for i in range(200):
        prompt = f"new q {i}"
        model = "gamma" if _held_out(prompt, 0.2) else "alpha"
        lines.append({"request_id": f"b{i}", "started_at": i, "outcome": "ok", "model": model,
                      "feedback": float(i % 2),
                      "messages": [{"role": "user", "content": prompt}]})  # fmt: skip
    ledger = tmp_path / "l.jsonl"
    ledger.write_text("".join(json.dumps(x) + "\n" for x in lines))
    reg = registry("http://127.0.0.1:9")
    qm, report = train_from_ledger(ledger, registry=reg)
    assert report["held_out_rows"] > 0 and "after" in report
    assert "gamma" not in qm.models and report["models"] == ["alpha"]
    assert qm.params_for(reg["gamma"]).source == "prior"
