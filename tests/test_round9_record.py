"""The record under odd input (round 9 of adversarial testing): unpriced references and
costs in the report, ledger paths with URI characters, JSONL values no record has, job
caps of the wrong type, a cascade naming models the request rules out."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from satisfice import Registry, Router, validators
from satisfice.cascade import Cascade
from satisfice.errors import ConfigError
from satisfice.ledger import Ledger, open_sink, read_records
from satisfice.report import render_html, rows, summarize
from satisfice.testing import LocalUpstream, reply
from satisfice.workflow import Job


def rec(i: int, cost: float | None, ref: float | None) -> dict[str, Any]:
    return {"request_id": f"r{i}", "outcome": "ok", "model": "m", "task": "general",
            "cost_usd": cost, "reference_cost_usd": ref, "day": "2026-12-01"}  # fmt: skip


def test_an_unpriced_reference_is_unknown_per_task_not_zero() -> None:
    s = summarize([rec(0, 0.01, None), rec(1, 0.02, None)])
    assert s["reference_cost_usd"] is None
    assert s["tasks"]["general"]["reference_cost_usd"] is None
    s = summarize([rec(0, 0.01, 0.1), rec(1, 0.02, 0.2)])
    assert s["tasks"]["general"]["reference_cost_usd"] == pytest.approx(0.3)


def test_the_html_cost_card_never_shows_unpriced_as_zero() -> None:
    every = render_html(summarize([rec(0, None, None), rec(1, None, None)]))
    assert "$0.000000" not in every and ">unpriced<" in every
    some = render_html(summarize([rec(0, 0.5, None), rec(1, None, None)]))
    assert "$0.500000 + 1 unpriced" in some


@pytest.mark.parametrize("name", ["run#1.db", "cost%41.db", "what?.db"])
def test_a_sqlite_ledger_path_with_uri_characters_reads_back(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    led = Ledger.open(path)
    led.put({"request_id": "r1", "started_at": time.time(), "outcome": "ok", "model": "m",
             "total_cost_usd": 0.5})  # fmt: skip
    assert led.flush(10)
    led.close()
    before = set(tmp_path.iterdir())
    assert [r["request_id"] for r in read_records(path)] == ["r1"]
    stray = {p for p in set(tmp_path.iterdir()) - before if not p.name.endswith(("-shm", "-wal"))}
    assert not stray  # reading made no database of its own


@pytest.mark.parametrize(
    "line",
    [
        '{"request_id":"a","started_at":1e400,"outcome":"ok","model":"m"}',
        '{"request_id":"a","started_at":1e20,"outcome":"ok","model":"m"}',
        '{"request_id":"a","started_at":-5,"outcome":"ok","model":"m"}',
        '{"feedback":{"request_id":"a","score":"good"}}',
        '{"feedback":{"request_id":"a","score":7}}',
    ],
)
def test_jsonl_values_no_record_has_are_errors_naming_the_line(tmp_path: Path, line: str) -> None:
    ok = '{"request_id":"z","started_at":1764547200,"outcome":"ok","model":"m"}'
    path = tmp_path / "l.jsonl"
    path.write_text(ok + "\n" + line + "\n")
    with pytest.raises(ConfigError, match="line 2"):
        summarize(read_records(path))


@pytest.mark.parametrize(
    ("field", "line"),
    [
        ("attempts[0].model", '"attempts":[{"model":["x"],"outcome":"error"}]'),
        ("attempts[1].model", '"attempts":[{"model":"m"},{"model":{"a":1},"outcome":"error"}]'),
        ("decision.candidates[0].model", '"decision":{"candidates":[{"model":["x"]}]}'),
    ],
)
def test_a_model_id_that_is_no_text_is_an_error_naming_the_line(
    tmp_path: Path, field: str, line: str
) -> None:
    """Found by an adversarial test: an attempt whose model was a list or an object raised
    TypeError (unhashable) from the report's count of fallbacks."""
    ok = '{"request_id":"z","started_at":1764547200,"outcome":"ok","model":"m"}'
    path = tmp_path / "l.jsonl"
    path.write_text(ok + "\n" + ok.replace('"z"', '"y"')[:-1] + "," + line + "}\n")
    with pytest.raises(ConfigError, match=rf"l\.jsonl, line 2: {re.escape(field)} must be a model"):
        summarize(rows(path))


@pytest.mark.parametrize("name", ["l.jsonl", "l.db"])
@pytest.mark.parametrize("p_good", [-7, 1e308, 1.5])
def test_a_p_good_that_is_no_probability_is_an_error_naming_it(
    tmp_path: Path, name: str, p_good: float
) -> None:
    """Found by an adversarial test: a candidate's p_good of -7 or 1e308 was shown as the
    answering model's mean prediction as it was, where every other number out of its range
    is an error naming the record."""
    path = tmp_path / name
    led = Ledger.open(path)
    led.put({"request_id": "a", "started_at": 1764547200, "outcome": "ok", "model": "m"})
    assert led.close()
    decision = {"model": "m", "candidates": [{"model": "m", "p_good": p_good}]}
    # written by the sink itself: a Ledger drops a record no reader takes, unwritten
    sink = open_sink(path)
    sink.write([{"request_id": "b", "started_at": 1764547200, "outcome": "ok", "model": "m",
                 "decision": decision}])  # fmt: skip
    sink.close()
    where = "line 2" if name.endswith(".jsonl") else "request 'b'"
    with pytest.raises(ConfigError, match=f"{where}: .*p_good must be a number in"):
        summarize(rows(path))


@pytest.mark.parametrize("cap", ["0.05", [0.05], float("inf"), float("nan"), -1.0, True])
def test_a_job_cap_that_is_no_amount_is_a_config_error(cap: Any) -> None:
    with pytest.raises(ConfigError, match="max_cost_usd must be a number of USD"):
        Job(Router(), max_cost_usd=cap)


async def test_a_cascade_naming_a_model_the_request_rules_out_is_refused() -> None:
    never = validators.check(lambda text: False, name="never")
    async with LocalUpstream() as up:
        up.default = reply("It is 4.")
        async with Router(up.patch(Registry.default())) as router:
            for cons, ladder, named in (
                ({"deny": ["mistral-small"]}, ["gpt-oss-120b", "mistral-small"], "mistral-small"),
                ({"allow": ["gpt-oss-120b"]}, ["gpt-5.4-nano", "gpt-oss-120b"], "gpt-5.4-nano"),
            ):
                with pytest.raises(ConfigError, match=f"the cascade calls {named}"):
                    await router.chat("2 + 2?", cascade=Cascade(ladder, validator=never), **cons)
        assert up.requests == []  # refused before any call


def test_one_record_the_sink_cannot_store_does_not_hold_the_others(tmp_path: Path) -> None:
    """A time no calendar holds (gmtime overflows) is the record's fault: it is dropped
    and the records after it are written; it had held the queue, retried for ever."""
    led = Ledger.open(tmp_path / "l.db")
    now = time.time()
    for i in range(6):
        led.put({"request_id": f"r{i}", "started_at": 1e20 if i == 1 else now, "outcome": "ok",
                 "model": "m", "total_cost_usd": 0.1})  # fmt: skip
    assert led.flush(10)
    led.close()
    assert sorted(r["request_id"] for r in read_records(tmp_path / "l.db")) == [
        "r0",
        "r2",
        "r3",
        "r4",
        "r5",
    ]
    assert led.rejected == 1
