"""Feedback on the ledger trains a predictor that is better on records it never saw."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from satisfice import Policy, Router
from satisfice.cli import main
from satisfice.errors import DatasetError
from satisfice.flywheel import ledger_outcomes, train_from_ledger
from satisfice.ledger import Ledger, read_records
from satisfice.testing import LocalUpstream

from .chat_support import registry, router

CODE = "Write a Python function that parses this CSV file and returns the rows: ```{}```"
CHAT = "Hi! What's a nice name for a cat? I like {}."


def _fill(path: Path) -> None:
    """Scripted truth: alpha fails code prompts and answers chit-chat; beta the reverse."""
    ledger = Ledger.open(path)
    for i in range(300):
        code = i % 2 == 0
        for model, ok in (("alpha", not code), ("beta", code)):
            ledger.put({"request_id": f"r{i}-{model}", "started_at": i, "outcome": "ok",
                        "model": model, "feedback": 1.0 if ok else 0.0,
                        "messages": [{"role": "user",
                                      "content": (CODE if code else CHAT).format(i)}]})  # fmt: skip
    ledger.close()


def test_the_refit_is_better_on_held_out_records(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    _fill(db)
    reg = registry("http://127.0.0.1:9")
    qm, report = train_from_ledger(db, registry=reg, holdout=0.3)
    assert report["held_out_rows"] > 100 and report["train_rows"] > 300
    assert report["after"]["log_loss"] < report["before"]["log_loss"] - 0.2
    assert report["after"]["brier"] < report["before"]["brier"] - 0.1
    r = Router(reg, Policy(quality=qm))
    d = r.route(CODE.format("x,y"), quality_floor=0)
    by = {c.model: c.p_good for c in d.candidates}
    assert by["beta"] > by["alpha"]


async def test_records_carry_messages_only_when_asked(tmp_path: Path) -> None:
    with LocalUpstream() as up:
        async with router(up.url).attach(ledger=tmp_path / "a.db", record_prompts=True) as r:
            res = await r.chat("Say hello")
            r.feedback(res.request_id, 1.0)
            assert r.ledger is not None and r.ledger.flush()
        async with router(up.url).attach(ledger=tmp_path / "b.db") as r:
            await r.chat("Say hello")
            assert r.ledger is not None and r.ledger.flush()
    (a,) = read_records(tmp_path / "a.db")
    (b,) = read_records(tmp_path / "b.db")
    assert a["messages"] == [{"role": "user", "content": "Say hello"}] and a["feedback"] == 1.0
    assert "messages" not in b
    with pytest.raises(DatasetError, match="record_prompts=True"):
        ledger_outcomes(read_records(tmp_path / "b.db"))


def test_train_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "l.db"
    _fill(db)
    reg = tmp_path / "r.toml"
    reg.write_text(registry("http://127.0.0.1:9").to_toml())
    args = ["train", "--from-ledger", str(db), "--save-predictor", str(tmp_path / "p.npz")]
    code = main([*args, "--policy", str(tmp_path / "p.json"), "--registry", str(reg), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["after"]["brier"] < out["before"]["brier"]
    assert Policy.load(tmp_path / "p.json").quality is not None


def test_calibrate_from_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "l.db"
    _fill(db)
    policy = tmp_path / "p.json"
    code = main(["calibrate", "--from-ledger", str(db), "--target", "top-share:0.2",
                 "--policy", str(policy), "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["met"] and policy.exists()
    assert main(["calibrate", "--target", "top-share:0.2", "--policy", str(policy)]) == 2


async def test_a_record_holds_the_messages_as_sent_not_as_the_caller_changed_them(
    tmp_path: Path,
) -> None:
    """The writer read a caller's messages a flush after chat() returned: a chat loop that
    appends its turns to one list had every record hold the last conversation."""
    with LocalUpstream() as up:
        async with router(up.url).attach(ledger=tmp_path / "a.db", record_prompts=True) as r:
            msgs: list[dict[str, Any]] = []
            for q in ("first", "second"):
                msgs.append({"role": "user", "content": q})
                res = await r.chat(msgs)
                msgs.append({"role": "assistant", "content": res.text})
            msgs[0]["content"] = "changed"
            assert r.ledger is not None and r.ledger.flush()
    first, second = sorted(read_records(tmp_path / "a.db"), key=lambda x: len(x["messages"]))
    assert first["messages"] == [{"role": "user", "content": "first"}], first["messages"]
    assert [m["content"] for m in second["messages"]][::2] == ["first", "second"]


async def test_a_streamed_record_holds_the_messages_as_sent_and_their_parts(
    tmp_path: Path,
) -> None:
    """A stream's record took the caller's list at its end, after the caller had appended
    the answer to it as it came; and parts changed in place later showed in the record."""
    with LocalUpstream() as up:
        async with router(up.url).attach(ledger=tmp_path / "a.db", record_prompts=True) as r:
            part = {"type": "text", "text": "first", "cache_control": {"type": "ephemeral"}}
            msgs: list[dict[str, Any]] = [{"role": "user", "content": [part]}]
            answer = {"role": "assistant", "content": ""}
            async with r.stream(msgs) as s:
                async for d in s:
                    if answer not in msgs:
                        msgs.append(answer)
                    answer["content"] += d.text or ""
            part["text"] = "[redacted]"
            del part["cache_control"]
            assert r.ledger is not None and r.ledger.flush()
    (rec,) = read_records(tmp_path / "a.db")
    sent = {"type": "text", "text": "first", "cache_control": {"type": "ephemeral"}}
    assert rec["messages"] == [{"role": "user", "content": [sent]}], rec


def test_train_says_what_to_do_about_models_the_registry_lacks_and_checks_the_policy_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train pointed at eval's flags (--train FILES, --test-split) for a ledger of models
    the registry lacks; with a corrupt --policy it trained and wrote the predictor, then
    failed on the policy."""
    from satisfice.cli import main

    db = tmp_path / "l.db"
    _fill(db)
    pred = tmp_path / "p.npz"
    assert main(["train", "--from-ledger", str(db), "--save-predictor", str(pred)]) == 2
    err = capsys.readouterr().err
    assert "--registry" in err and "--test-split" not in err and not pred.exists()
    bad = tmp_path / "policy.json"
    bad.write_text("{not json")
    assert main(["train", "--from-ledger", str(db), "--save-predictor", str(pred),
                 "--holdout", "0", "--policy", str(bad)]) == 2  # fmt: skip
    assert not pred.exists()


def _scored_beside(path: Path) -> None:
    """One request answered by alpha, scored 1.0 for alpha and then 0.0 for beta."""
    ledger = Ledger.open(path)
    ledger.put({"request_id": "r1", "started_at": 1, "outcome": "ok", "model": "alpha",
                "messages": [{"role": "user", "content": "Say hello"}]})  # fmt: skip
    assert ledger.flush()
    ledger.feedback("r1", 1.0, "feedback", "alpha")
    ledger.feedback("r1", 0.0, "feedback", "beta")
    ledger.close()


@pytest.mark.parametrize("name", ["l.db", "l.jsonl"])
def test_each_score_is_read_for_the_model_it_was_given_for(tmp_path: Path, name: str) -> None:
    """The answer's score is "feedback"; another model's, scored beside it, is under
    "feedback_for" and never the answer's (in the records, the report and the training rows)."""
    from satisfice.report import rows

    _scored_beside(tmp_path / name)
    (rec,) = read_records(tmp_path / name)
    assert rec["feedback"] == 1.0 and rec["feedback_for"] == {"beta": 0.0}
    (row,) = rows(tmp_path / name)
    assert row["feedback"] == 1.0
    train, _ = ledger_outcomes([rec], holdout=0.0)
    assert dict(zip(train.models, train.scores[0].tolist(), strict=True)) == {
        "alpha": 1.0, "beta": 0.0,
    }  # fmt: skip


def test_a_ledger_from_before_scores_named_their_model_is_read_and_written(
    tmp_path: Path,
) -> None:
    """A feedback table without the model column: its scores are the answering model's; a
    writer adds the column and scores then name their model."""
    import sqlite3

    from satisfice.ledger import COLUMNS

    db_path = tmp_path / "old.db"
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute(f"CREATE TABLE requests ({', '.join(f'{n} {t}' for n, t, _ in COLUMNS)})")
    db.execute("CREATE TABLE feedback (request_id TEXT, ts REAL, score REAL, source TEXT)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    rec = {"request_id": "r1", "started_at": 1, "outcome": "ok", "model": "alpha"}
    db.execute("INSERT INTO requests (request_id, ts, model, record) VALUES (?, 1, 'alpha', ?)",
               ("r1", json.dumps(rec)))  # fmt: skip
    db.execute("INSERT INTO feedback VALUES ('r1', 1, 0.5, 'feedback')")
    db.close()
    (got,) = read_records(db_path)
    assert got["feedback"] == 0.5 and "feedback_for" not in got
    ledger = Ledger.open(db_path)  # adds the column
    ledger.feedback("r1", 0.0, "feedback", "beta")
    ledger.close()
    (got,) = read_records(db_path)
    assert got["feedback"] == 0.5 and got["feedback_for"] == {"beta": 0.0}
