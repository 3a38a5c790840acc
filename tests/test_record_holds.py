"""The record holds whatever happens around it: a cancelled request, a sink that comes back
mid-isolation, metadata with half a surrogate pair, replicas opening PostgreSQL together, a
refresh hook that fails; and the flywheel learns only from labels something gave."""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

from satisfice.errors import ConfigError
from satisfice.ledger import Ledger, PostgresSink, read_records
from satisfice.testing import LocalUpstream, hang, reply

from .chat_support import cancel_while_routed, held_routing, router, wire
from .ledger_support import ScriptedSink
from .servers import postgres


async def test_a_cancelled_chat_is_recorded(up: LocalUpstream, tmp_path: Path) -> None:
    up.script(wire("alpha"), hang())
    async with router(up.url).attach(ledger=tmp_path / "l.db") as r:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.chat("hi"), 0.3)
        assert r.ledger is not None and r.ledger.flush(5.0)
    (rec,) = list(read_records(tmp_path / "l.db"))
    # the call it cut off is on record at its prompt, estimated (it had been on no attempt,
    # and the total unknown): see tests/test_round12_router.py
    (a,) = rec["attempts"]
    assert rec["error_type"] == "RequestCancelled" and a["outcome"] == "cancelled"
    assert rec["total_cost_usd"] == a["cost_usd"] > 0 and rec["cost_estimated"]


@pytest.mark.parametrize("how", ["chat", "stream"])
async def test_a_request_cancelled_while_it_is_routed_is_recorded(
    up: LocalUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A large prompt routes on a worker thread; a caller gone meanwhile (a server's client
    that disconnected) left no record. It is a request all the same: recorded, cancelled
    before any call, at $0 (known: nothing was called)."""
    import satisfice.router as rt

    up.default = reply("never asked")
    routing, gate = held_routing(monkeypatch)

    async def request(r: rt.Router) -> None:
        if how == "chat":
            await r.chat("hi", metadata={"team": "a"})
        else:
            async with r.stream("hi", metadata={"team": "a"}) as s:
                async for _ in s:
                    pass

    try:
        async with router(up.url).attach(ledger=tmp_path / "l.db") as r:
            await cancel_while_routed(request(r), routing)
            gate.set()
            assert r.ledger is not None and r.ledger.flush(5.0)
    finally:
        gate.set()
    (rec,) = list(read_records(tmp_path / "l.db"))
    assert rec["error_type"] == "RequestCancelled" and "while it was routed" in rec["error"]
    assert rec["attempts"] == [] and rec["total_cost_usd"] == 0.0
    assert rec["metadata"] == {"team": "a"} and not up.requests


def test_records_tried_while_the_sink_was_down_are_retried_not_dropped() -> None:
    class Flaky(ScriptedSink):  # down for its first six writes: a database restarting
        def refuse(self, records: Any) -> bool:
            return self.calls <= 6

    sink = Flaky()
    led = Ledger(sink)  # type: ignore[arg-type]
    for i in range(3):
        led.put({"request_id": f"r{i}"})
    assert led.flush(15.0)
    led.close()
    assert sorted(sink.rows) == ["r0", "r1", "r2"] and led.dropped == 0


async def test_a_lone_surrogate_in_metadata_does_not_lose_the_record(
    up: LocalUpstream, tmp_path: Path
) -> None:
    up.default = reply("ok")
    async with router(up.url).attach(ledger=tmp_path / "l.db") as r:
        await r.chat("hi", metadata={"team": "caf\udce9"})
        assert r.ledger is not None and r.ledger.flush(5.0)
    (rec,) = list(read_records(tmp_path / "l.db"))
    assert rec["outcome"] == "ok"


def test_replicas_opening_postgres_together_all_start() -> None:
    with postgres() as dsn:
        errors: list[BaseException] = []
        sinks = [PostgresSink(dsn) for _ in range(6)]

        def open_one(sink: PostgresSink) -> None:
            try:
                sink._connect()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=open_one, args=(s,)) for s in sinks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for sink in sinks:
            sink.close()
        assert not errors, errors


def test_the_flywheel_splits_by_prompt_and_skips_unchecked_answers() -> None:
    from satisfice.flywheel import ledger_outcomes

    recs = []
    for i in range(40):
        for model in ("alpha", "beta"):  # the same prompt answered by two models
            recs.append({"request_id": f"{i}-{model}", "model": model, "outcome": "ok",
                         "messages": [{"role": "user", "content": f"question {i}"}],
                         "feedback": float(i % 2)})  # fmt: skip
    unchecked = {"request_id": "u", "model": "alpha", "outcome": "ok",
                 "messages": [{"role": "user", "content": "never checked"}],
                 "attempts": [{"model": "alpha", "verdict": None}]}  # fmt: skip
    train, test = ledger_outcomes([*recs, unchecked], holdout=0.3)
    assert test is not None and not set(train.prompts) & set(test.prompts)
    assert "never checked" not in [*train.prompts, *test.prompts]


@pytest.mark.parametrize("text", ["this is not a ledger at all\n", "a,b,c\n", "notes"])
def test_a_one_line_file_that_is_not_json_is_no_ledger(tmp_path: Path, text: str) -> None:
    """Found by an adversarial test: a one-line file that is not JSON read as an empty
    ledger ("0 requests ... $0", exit 0), its only line taken for one a crash tore; a
    crash cuts a record, which begins with "{"."""
    path = tmp_path / "l.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not a JSONL ledger"):
        list(read_records(path))
    path.write_text('{"request_id": "torn", "start')  # the first record, torn: no error
    assert list(read_records(path)) == []


def test_a_byte_order_mark_does_not_lose_the_first_record(tmp_path: Path) -> None:
    """Found by an adversarial test: a JSONL ledger saved with a byte-order mark (an editor
    on Windows) lost its first record, skipped as a line torn by a crash."""
    path = tmp_path / "l.jsonl"
    lines = [json.dumps({"request_id": i, "started_at": 1.0, "outcome": "ok"}) for i in "ab"]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    assert [r["request_id"] for r in read_records(path)] == ["a", "b"]


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    from satisfice.ledger import JSONLSink

    path = tmp_path / "l.jsonl"
    good = {"request_id": "before", "started_at": 1.0, "outcome": "ok"}
    path.write_text(json.dumps(good) + "\n" + '{"request_id": "torn", "start')  # a crash
    sink = JSONLSink(path)
    sink.write([{"request_id": "after", "started_at": 2.0, "outcome": "ok"}])
    sink.close()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ids = [r["request_id"] for r in read_records(path)]
    assert ids == ["before", "after"]
    assert any("line 2" in str(w.message) for w in seen)  # the torn line, named


def test_a_line_torn_inside_a_character_is_skipped_as_torn(tmp_path: Path) -> None:
    """A crash that cut a record inside a multi-byte character had made the whole ledger
    "not UTF-8 text", for good once the next record was appended after it."""
    from satisfice.ledger import JSONLSink

    path = tmp_path / "l.jsonl"
    good = {"request_id": "before", "started_at": 1.0, "outcome": "ok", "metadata": {"t": "日"}}
    line = json.dumps(good, ensure_ascii=False).encode()
    cut = line.replace(b"before", b"torn")[: line.index("日".encode()) + 1]  # 1 byte of 3
    path.write_bytes(line + b"\n" + cut)
    sink = JSONLSink(path)
    sink.write([{"request_id": "after", "started_at": 2.0, "outcome": "ok"}])
    sink.close()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ids = [r["request_id"] for r in read_records(path)]
    assert ids == ["before", "after"]
    assert any("line 2" in str(w.message) for w in seen)
    path.write_bytes(cut)  # one line, torn inside a character: an empty ledger
    assert list(read_records(path)) == []
    path.write_bytes(b"\xff\xfe\x00binary\n\x80\n")  # no line of it is text: not a ledger
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        list(read_records(path))


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("attempts", 5, "attempts"),
        ("attempts", [5], "attempts"),
        ("model", 5, "model"),
        ("messages", "hi", "messages"),
        ("cascade", {"steps": [1]}, "cascade.steps"),
        ("decision", {"candidates": [1]}, "decision.candidates"),
    ],
)
def test_a_mistyped_record_field_is_an_error_naming_it(
    tmp_path: Path, field: str, value: Any, named: str
) -> None:
    from satisfice.errors import ConfigError

    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps({"request_id": "r", "started_at": 1.0, field: value}) + "\n")
    with pytest.raises(ConfigError, match=f"line 1: {named} must be"):
        list(read_records(path))


def test_a_request_of_unknown_cost_is_never_reported_as_zero(tmp_path: Path) -> None:
    from satisfice.report import render_text, rows, summarize

    path = tmp_path / "l.jsonl"
    rec = {"request_id": "r", "started_at": 1.0, "outcome": "error", "model": None,
           "error_type": "RequestCancelled", "total_cost_usd": None, "attempts": []}  # fmt: skip
    path.write_text(json.dumps(rec) + "\n")
    s = summarize(rows(path))
    assert s["unpriced_requests"] == 1
    assert "1 requests of unknown cost not counted" in render_text(s)


async def test_a_judges_call_is_not_a_fallback(up: LocalUpstream, tmp_path: Path) -> None:
    from satisfice import Cascade, Step
    from satisfice import validators as v

    async def ask(messages: list[dict[str, Any]]) -> v.Answer:
        return v.Answer("judge-model", "VERDICT: PASS\nCONFIDENCE: 90", 40, 4, 0.0001, 5.0)

    up.default = reply("fine")
    ladder = Cascade([Step(("alpha",), v.judge(ask, "ok?")), Step(("gamma",))])
    async with router(up.url).attach(ledger=tmp_path / "l.db") as r:
        res = await r.chat("hi", cascade=ladder)
        assert r.ledger is not None and r.ledger.flush(5.0)
    assert res.fallbacks_used == []
    from satisfice.report import rows

    (row,) = list(rows(tmp_path / "l.db"))
    assert row["fallbacks"] == 0


def test_a_binary_file_is_not_read_as_an_empty_jsonl_ledger(tmp_path: Path) -> None:
    """A file with no newline read as one torn line: a SQLite database (or any binary
    file) named *.jsonl was an empty ledger. A lone line torn by a crash still is."""
    import sqlite3

    db = tmp_path / "x.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (a)")
    con.commit()
    con.close()
    latin1 = '{"request_id": "é"}'.encode("latin-1")
    utf16 = '{"a": 1}\n{"b": 2}\n'.encode("utf-16-le")
    for data in (db.read_bytes(), b"\x89PNG\r\x1a\x00\xff\xfe binary" * 100, latin1, utf16):
        (tmp_path / "x.jsonl").write_bytes(data)
        with pytest.raises(ConfigError, match="not UTF-8 text"):
            list(read_records(tmp_path / "x.jsonl"))
    # a crash's tear, its last character cut, then the zeros of a block never written
    torn = '{"request_id": "é'.encode()[:-1]
    zeros = b"\0" * 100
    for data in (torn, torn + zeros, zeros, torn + zeros + b"\n" + zeros, torn + b"\n\n"):
        (tmp_path / "x.jsonl").write_bytes(data)
        assert list(read_records(tmp_path / "x.jsonl")) == [], data[:40]


@pytest.mark.parametrize("budget", [False, True])
def test_a_served_request_cancelled_while_routed_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: bool
) -> None:
    """A served request whose client leaves while its prompt is routed on a worker thread
    is on record at $0. A key with a budget (or rpm/tpm, or a session pin) is routed by
    the server itself (`router.decide`) before chat(): its client gone then, the request
    had left no record."""
    import time

    import httpx

    from satisfice import Policy, Router
    from satisfice.server import ServerConfig

    from .chat_support import registry
    from .server_support import post_chat, running
    from .test_server import MASTER

    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    routing, gate = held_routing(monkeypatch)
    try:
        with LocalUpstream(default=reply("never asked")) as up:
            router = Router(registry(up.url), Policy(quality_floor=0.5))
            cfg = ServerConfig(ledger=str(tmp_path / "l.db"))
            with running(cfg, router) as (url, app):
                svc = app.state.service
                admin = {"authorization": f"Bearer {MASTER}"}
                spec: dict[str, Any] = {"name": "leaver"}
                if budget:
                    spec["budget_usd"] = 5.0
                k = httpx.post(url + "/admin/keys", headers=admin, json=spec).json()
                msgs = [{"role": "user", "content": "hi"}]
                body = json.dumps({"model": "auto", "messages": msgs}).encode()
                with post_chat(url, k["key"], body):
                    assert routing.wait(10)  # routed on a worker thread, held there
                # the client is gone while its request is routed
                deadline = time.monotonic() + 5
                while svc.in_flight and time.monotonic() < deadline:
                    time.sleep(0.02)
                gate.set()
                assert svc.in_flight == 0
                svc.router.ledger.flush()
                assert not up.requests  # no call was made
    finally:
        gate.set()
    recs = list(read_records(str(tmp_path / "l.db")))
    assert [(r["error_type"], r["total_cost_usd"]) for r in recs] == [("RequestCancelled", 0.0)], (
        f"a served request cancelled while routed (key budget={budget}): {recs}"
    )
