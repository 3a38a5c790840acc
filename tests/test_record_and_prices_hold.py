"""Review findings in the registry, cost accounting and the record (ledger, metrics,
traces, report). Each test fails on the code as reviewed, because of the defect its
docstring names."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from satisfice import Policy, Registry, Router
from satisfice.errors import ConfigError
from satisfice.ledger import Ledger, read_records

KEY = "sk-review-0123456789abcdefABCDEF"


def _registry(price: dict[str, Any], api: str = "openai") -> Registry:
    return Registry.from_dict(
        {
            "model": [
                {
                    "id": "m",
                    "provider": api,
                    "tokenizer": "o200k_base" if api == "openai" else "claude",
                    "context_window": 200_000,
                    "max_output": 8_000,
                    "price": price,
                    "deployments": [
                        {
                            "name": api,
                            "api": api,
                            "base_url": "https://api.openai.com/v1"
                            if api == "openai"
                            else "https://api.anthropic.com",
                            "api_key_env": "REVIEW_KEY",
                        }
                    ],
                }
            ]
        }
    )


def _openai_reply(body: dict[str, Any], usage: dict[str, Any]) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "m",
            # OpenAI says which tier served (and billed) the call
            "service_tier": body.get("service_tier", "default"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello there"},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        },
    )


def _router(reg: Registry, handler: Any) -> Router:
    os.environ["REVIEW_KEY"] = KEY
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Router(reg, Policy(quality_floor=0.0)).configure(http=client)


def _rec(rid: str, **kw: Any) -> dict[str, Any]:
    return {"request_id": rid, "started_at": time.time(), "model": "m", "outcome": "ok",
            "total_cost_usd": 0.01, **kw}  # fmt: skip


# -- 1. feedback is not part of flush(), close-at-exit or aclose() -----------------------------


def test_flush_does_not_wait_for_feedback_so_a_score_is_lost_at_exit(tmp_path: Path) -> None:
    """Promised: `router.feedback()` lands on the record (README "The record": "feedback
    and validator verdicts land on the record"), and a script that ends without close()
    keeps what it recorded (ledger.py `Ledger.__init__`: "atexit.register(self._at_exit)  #
    a script that ends without close() keeps its records"; `Router.aclose` "write[s] out
    its ledger: ... flushed if it is yours").

    What happens: `Ledger.flush()` (ledger.py `flush`, target = queued - dropped) waits for
    request records only, never for the queued feedback rows in `_fb`; `_at_exit` and
    `Router.aclose()` (for a ledger the caller passed) only flush. A score given just
    before a script ends, or before `aclose()` of a router with the caller's ledger, is
    still queued when the daemon writer thread dies: it is silently lost. (In-process: a
    score read right after `flush()` returned True is not in the ledger.)

    Fix: have `flush()` also wait until the feedback queued before it was written (count
    feedback rows queued/acknowledged like records), so `_at_exit` and `aclose()` keep them.
    """
    db = tmp_path / "l.db"
    code = (
        "import sys, time\n"
        "from satisfice.ledger import Ledger\n"
        "led = Ledger.open(sys.argv[1])\n"
        "led.put({'request_id': 'r1', 'started_at': time.time(), 'model': 'm',\n"
        "         'outcome': 'ok', 'total_cost_usd': 0.01})\n"
        "assert led.flush(5)\n"
        "time.sleep(0.1)\n"
        "led.feedback('r1', 1.0, 'feedback', 'm')\n"
        "assert led.flush(5)\n"  # True: every *record* is acknowledged
        # the script ends: no close(), as test_records_of_a_script_that_never_closes_are_kept
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "python")}
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=30, env=env)
    recs = list(read_records(db))
    assert [r["request_id"] for r in recs] == ["r1"]
    assert recs[0].get("feedback") == 1.0, "the score given before exit was never written"


# -- 2. PostgreSQL ledgers of another schema version are written and read --------------------


def test_a_postgres_ledger_of_another_schema_version_is_written_and_read() -> None:
    """Promised: README "Schema version 1: ... table `meta` (schema_version)"; the SQLite
    writer refuses another version (ledger.py `_sqlite_schema`: "ledger schema version
    {row[0]}; this satisfice writes 1") and so does the reader (`open_ledger_db`: "as the
    writer refuses another version's ledger, so does a reader",
    tests/test_report.py::test_a_ledger_of_another_schema_version_is_refused_by_the_reader_too).

    What happens: for PostgreSQL neither does. `PostgresSink._connect` inserts the version
    with `ON CONFLICT DO NOTHING` and never reads it back, and `_read_pg` never looks at
    `meta`: a ledger a newer satisfice migrated to version 2 has version-1 rows written
    into it, and `satisfice report` / `train --from-ledger` read it as version 1.

    Fix: in `PostgresSink._connect` select `schema_version` after the insert and raise
    ConfigError when it differs; check it in `_read_pg` too, as `open_ledger_db` does.
    """
    psycopg = pytest.importorskip("psycopg")
    from .servers import postgres

    with postgres() as dsn:
        Ledger.open(dsn).close()
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        refused_write = refused_read = False
        try:
            led = Ledger.open(dsn)
        except ConfigError:
            refused_write = True
        else:
            led.put(_rec("r1"))
            led.flush(5)
            led.close()
        try:
            list(read_records(dsn))
        except ConfigError:
            refused_read = True
        assert refused_write, "a version-1 writer opened a version-2 PostgreSQL ledger"
        assert refused_read, "a version-2 PostgreSQL ledger was read as version 1"


# -- 3. attach() again drops the records of requests in flight --------------------------------


async def test_attach_again_drops_the_record_of_a_request_in_flight(tmp_path: Path) -> None:
    """Promised: README "Every request — chat(), stream(), ... — writes one record" and
    "a request never fails because of its record" / records are "never lost quietly"
    (ledger.py module docstring).

    What happens: chat() takes `rec = self._rec` when it starts (router.py `chat`, "rec,
    run = self._rec, None"). A second `attach()` (e.g. to add metrics or a hook to a
    running router) closes the ledger the first attach opened (router.py `attach`:
    "if self._owns_ledger: self._rec.ledger.close()"); the request in flight then puts its
    record on the closed ledger, which drops it ("ledger closed: dropped a record"). The
    answered request is in no ledger, neither the old nor the new one (same file here).

    Fix: let the old recorder's ledger drain before closing it (close it once the requests
    that took it have ended), or take the recorder when the result is recorded, not when
    the request starts.
    """
    from satisfice.metrics import Metrics

    gate = asyncio.Event()

    async def handler(req: httpx.Request) -> httpx.Response:
        await gate.wait()
        return _openai_reply({}, {"prompt_tokens": 100, "completion_tokens": 10})

    r = _router(_registry({"input": 1.0, "output": 10.0}), handler)
    db = tmp_path / "l.db"
    r.attach(ledger=db)
    task = asyncio.create_task(r.chat("hello"))
    for _ in range(200):  # until the call is at the upstream
        await asyncio.sleep(0.01)
        if r._in_flight:
            break
    await asyncio.sleep(0.05)
    r.attach(ledger=db, metrics=Metrics())  # the same file, with metrics added
    gate.set()
    res = await asyncio.wait_for(task, 10)
    await r.aclose()
    ids = [x["request_id"] for x in read_records(db)]
    assert res.request_id in ids, "the answered request's record was dropped"


# -- 4. a service tier the caller picks is billed at the standard rates ------------------------


async def test_a_priority_or_flex_tier_is_refused_not_billed_at_standard_rates() -> None:
    """A caller could pick a tier with `extra={"service_tier": "priority"}`, which went on
    the wire; OpenAI bills it 2x, but `Price.cost` prices every call at `input`/`output`:
    the record, the metrics, budgets and cost caps said $0.02 for a $0.04 call (and $0.02
    for a $0.01 flex call). Until calls are priced by tier, such a request is a
    ConfigError that says so, and nothing is sent (as the server refuses any tier but
    "auto")."""
    price = {"input": 1.0, "output": 10.0, "priority_input": 2.0, "priority_output": 20.0,
             "flex_input": 0.5, "flex_output": 5.0}  # fmt: skip
    sent: list[Any] = []

    def handler(req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content)
        sent.append(body.get("service_tier"))
        return _openai_reply(body, {"prompt_tokens": 10_000, "completion_tokens": 1_000})

    r = _router(_registry(price), handler)
    for tier in ("priority", "flex"):
        with pytest.raises(ConfigError, match="service_tier"):
            await r.chat("hello", extra={"service_tier": tier})
    ok = await r.chat("hello", extra={"service_tier": "auto"})
    await r.aclose()
    assert sent == ["auto"]  # nothing went out at a tier it would be billed wrong for
    assert ok.cost_usd == pytest.approx((10_000 * 1.0 + 1_000 * 10.0) / 1e6)


# -- 5. the Ledger's own options are not checked ---------------------------------------------


def test_a_negative_retention_or_a_zero_batch_is_refused_not_misused(tmp_path: Path) -> None:
    """Promised: README "`Ledger(…, retention_days=90)` deletes older requests daily";
    configuration elsewhere is checked where it is given (e.g. the server config refuses a
    refresh interval under 60 s, `RegistryRefresher` a max_ratio <= 1).

    What happens: `Ledger.__init__` (ledger.py) stores `retention_days`, `batch`,
    `max_buffer` and `flush_interval_s` unchecked. `retention_days=-1` makes the writer's
    first pass run `DELETE FROM requests WHERE ts < now + 1 day`: opening an existing
    ledger with it deletes every record it holds. `batch=0` makes `_take` take nothing,
    ever: no record is written and `flush()` times out.

    Fix: refuse (ConfigError) a retention_days that is not a finite number > 0, and batch /
    max_buffer that are not integers >= 1, flush_interval_s not finite >= 0.
    """
    db = tmp_path / "l.db"
    led = Ledger.open(db)
    for i in range(3):
        led.put(_rec(f"r{i}", started_at=time.time() - 3600 * i))
    led.close()
    assert len(list(read_records(db))) == 3

    problems = []
    try:
        led = Ledger.open(db, retention_days=-1)
    except ConfigError:
        pass
    else:
        time.sleep(0.3)  # the writer's first pass runs retention at once
        led.close()
        left = len(list(read_records(db)))
        if left != 3:
            problems.append(f"retention_days=-1 accepted and deleted {3 - left} of 3 records")
    try:
        led = Ledger.open(db, batch=0)
    except ConfigError:
        pass
    else:
        led.put(_rec("z"))
        if not led.flush(1.0):
            problems.append("batch=0 accepted and no record is ever written")
        led.close(1.0)
    assert not problems, problems


# -- 6. the record's usage leaves out 1-hour cache writes and reasoning tokens ----------------


async def test_the_record_keeps_the_billed_one_hour_cache_writes_and_reasoning(
    tmp_path: Path,
) -> None:
    """Promised: README "The record": each record holds "every attempt ..., tokens estimated
    and billed, USD ... (every part at its own rate: cached reads, cache writes and
    reasoning as the answer was billed)".

    What happens: `Attempt.to_dict()` (result.py) writes `usage` as prompt, completion,
    cached and `cache_write_tokens` (5-minute writes only), leaving out
    `cache_write_1h_tokens` and `reasoning_tokens`, and `ChatResult.to_record()` has
    neither at the top. An Anthropic call that wrote 50,000 tokens to the 1-hour cache
    (billed at 2x input) is on the record as 50,000 prompt tokens with no cache write: the
    record's cost can no longer be explained from its own tokens, and what read it (a
    reconciliation, `train`) sees fresh input.

    Fix: add `cache_write_1h_tokens` and `reasoning_tokens` to `Attempt.to_dict()`'s usage
    (and the top-level record beside `cached_tokens`).
    """
    anth = {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_write_1h": 6.0}

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "text", "text": "hello there"}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 20,
                      "cache_creation_input_tokens": 50_000, "cache_read_input_tokens": 0,
                      "cache_creation": {"ephemeral_5m_input_tokens": 0,
                                         "ephemeral_1h_input_tokens": 50_000}},
        })  # fmt: skip

    r = _router(_registry(anth, api="anthropic"), handler)
    db = tmp_path / "l.jsonl"
    r.attach(ledger=db)
    res = await r.chat("hello")
    await r.aclose()
    assert res.usage.cache_write_1h_tokens == 50_000
    assert res.cost_usd == pytest.approx((10 * 3.0 + 50_000 * 6.0 + 20 * 15.0) / 1e6)
    (rec,) = read_records(db)
    usage = rec["attempts"][-1]["usage"]
    assert usage.get("cache_write_1h_tokens") == 50_000, usage


# -- 7. a catalogue's 0 for a cache-read or reasoning rate is read as free ---------------------


def test_a_zero_cache_read_or_reasoning_rate_is_not_free_in_any_catalogue() -> None:
    """Promised: sources.py module docstring: "the importers never turn a missing price
    into $0" and "a source's 0 means 'not listed' far more often than 'free'"
    (`_make_price`); `parse_openrouter` acts on it: "for k in ("cached_input",
    "cache_write", "cache_write_1h", "reasoning"): if rates[k] == 0: rates[k] = None".

    What happens: `parse_litellm` maps only `cache_write` 0 to None, and
    `parse_models_dev` maps nothing: the same facts (input $2, output $8, a cache-read
    and reasoning rate of 0, as LiteLLM's own `sample_spec` template writes an unlisted
    rate) import as a price whose cache reads and reasoning tokens are free. A call with
    8,000 cached prompt tokens and 4,000 reasoning tokens costs $0.06 imported from
    OpenRouter and $0.012 imported from LiteLLM or models.dev (`registry update --models`
    adds it so, unflagged: `Diff.absurd` only weighs changes to models already there).

    Fix: treat a 0 sub-rate (cached_input, cache_write_1h, reasoning, and models.dev's
    cache_write) as not listed in every parser, as `parse_openrouter` does.
    """
    from satisfice import sources
    from satisfice.accounting import cost_of
    from satisfice.providers.base import Usage

    cats = {
        "openrouter": sources.parse("openrouter", {"data": [{"id": "openai/gpt-x", "pricing": {
            "prompt": "0.000002", "completion": "0.000008", "input_cache_read": "0",
            "internal_reasoning": "0"}}]}),
        "litellm": sources.parse("litellm", {"gpt-x": {
            "mode": "chat", "litellm_provider": "openai", "input_cost_per_token": 2e-6,
            "output_cost_per_token": 8e-6, "cache_read_input_token_cost": 0.0,
            "output_cost_per_reasoning_token": 0.0}}),
        "models.dev": sources.parse("models.dev", {"openai": {"models": {"gpt-x": {
            "cost": {"input": 2, "output": 8, "cache_read": 0, "reasoning": 0}}}}}),
    }  # fmt: skip
    usage = Usage(10_000, 5_000, cached_tokens=8_000, reasoning_tokens=4_000)
    costs = {}
    for name, cat in cats.items():
        (listing,) = cat.listings.values()
        costs[name] = cost_of(listing.price, usage)
    assert costs["openrouter"] == pytest.approx(0.06)
    assert costs == {k: pytest.approx(0.06) for k in costs}, costs


# -- 8. a request whose every attempt failed has no attempt span -----------------------------


async def test_a_failed_requests_attempts_are_traced() -> None:
    """Promised: tracing.py module docstring: "a span per attempt (`chat <model>`,
    `gen_ai.*` request, response and usage attributes, the error type when it failed)";
    README "Traces ...: a span per request, `route` ..., each cascade step and each attempt".

    What happens: `Recorder.failure` calls `Tracing.failure(rec)`, which writes the request
    span alone (tracing.py `failure`): for a request whose attempts all failed (HTTP 500
    from both models, `a` and `b`) the trace holds one span with the error's class, and no
    span says which models and deployments were tried, their HTTP statuses,
    error types or what the calls cost, although the failure record carries every attempt
    (`rec["attempts"]`). The requests one most needs a trace of are the ones that failed.

    Fix: in `Tracing.failure`, write the `route` span and one child span per
    `rec["attempts"]` entry (model, deployment, outcome, status, error type, cost), as
    `result` does.
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from satisfice.tracing import Tracing

    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    reg = Registry.from_dict({"model": [
        {"id": mid, "provider": "openai", "context_window": 100_000, "max_output": 4_000,
         "price": {"input": 1.0, "output": 2.0}, "quality": {"general": 0.9},
         "deployments": [{"name": "d", "base_url": f"https://{mid}.example.com/v1",
                          "api_key_env": "REVIEW_KEY"}]}
        for mid in ("a", "b")]})  # fmt: skip

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": {"message": "boom", "type": "server_error"}})

    from satisfice.executor import ExecutionConfig

    os.environ["REVIEW_KEY"] = KEY
    r = Router(reg, Policy(quality_floor=0.0)).configure(
        http=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        execution=ExecutionConfig(backoff_base_s=0.001, max_retry_wait_s=0.01),
    )
    r.attach(tracing=Tracing(provider))
    with pytest.raises(Exception):  # noqa: B017  (every attempt failed)
        await r.chat("hello")
    await r.aclose()
    spans = exp.get_finished_spans()
    attempt_spans = [s for s in spans if s.parent is not None and s.name.startswith("chat ")]
    tried = {s.attributes.get("gen_ai.request.model") for s in attempt_spans}
    assert tried >= {"a", "b"}, [(s.name, dict(s.attributes or {})) for s in spans]


def test_a_postgres_ledger_that_cannot_reconnect_is_down_not_refusing_the_record() -> None:
    """A PostgreSQL sink whose connection was lost reopens it on the next write; a failure
    to reopen it had been a ConfigError, which the writer reads as "the sink refused this
    record" (`ledger._refused`): records written while PostgreSQL restarted were dropped
    one by one as refused. It is the sink down now, and nothing is dropped for it; opening
    a ledger that cannot connect is still a ConfigError, as it was."""
    pytest.importorskip("psycopg")
    from satisfice.ledger import PostgresSink, _refused

    from .servers import postgres

    with postgres() as dsn:
        sink = PostgresSink(dsn)
        sink._db.close()  # the connection lost (a restart)
        sink.dsn = "postgresql://nobody@127.0.0.1:9/none?connect_timeout=2"  # still away
        with pytest.raises(Exception) as e:
            sink.write([_rec("r1")])
        assert not _refused(e.value), f"{type(e.value).__name__}: {e.value}"
        with pytest.raises(ConfigError):
            PostgresSink("postgresql://nobody@127.0.0.1:9/none?connect_timeout=2")


def test_whole_number_ledger_options_of_numpy_or_json_are_taken(tmp_path: Path) -> None:
    """The option checks had refused numpy's integers and 3.0 (what JSON writers give) for
    `batch` and `max_buffer`, whole numbers both."""
    import numpy as np

    Ledger.open(tmp_path / "l.db", batch=np.int64(8), max_buffer=1000.0).close()


def test_a_score_the_sink_refuses_is_dropped_not_retried_forever(tmp_path: Path) -> None:
    """A score the sink could not store (a lone surrogate in its request id, given to the
    public `Ledger.feedback`) was put back and retried forever, with every later score
    queued behind it, and `flush()` waited out its timeout. It is dropped on its own, and
    the others are written."""
    db = tmp_path / "l.db"
    led = Ledger.open(db)
    led.put(_rec("r1"))
    led.feedback("bad\ud800", 1.0, "feedback", "m")
    led.feedback("r1", 0.5, "feedback", "m")
    assert led.flush(5), "flush() waited out its timeout"
    led.close()
    assert [r.get("feedback") for r in read_records(db)] == [0.5]
    assert led.dropped_scores == 1  # counted dropped, as a refused record is (it had been
    # in no count: done with as written, for flush(), and nowhere else)


def test_a_postgres_ledger_migrated_meanwhile_keeps_its_records_queued() -> None:
    """A PostgreSQL ledger whose schema version changed while the writer ran (another
    satisfice migrated it) refused the reconnect with a ConfigError, which the writer reads
    as "the sink refused this record": its records were dropped one by one. It is the sink
    down now (kept, retried, logged); opening such a ledger is still a ConfigError."""
    psycopg = pytest.importorskip("psycopg")
    from satisfice.ledger import PostgresSink, _refused

    from .servers import postgres

    with postgres() as dsn:
        sink = PostgresSink(dsn)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        sink._db.close()  # the writer reconnects
        with pytest.raises(Exception) as e:
            sink.write([_rec("r1")])
        assert not _refused(e.value), f"{type(e.value).__name__}: {e.value}"
        with pytest.raises(ConfigError, match="schema version 2"):
            PostgresSink(dsn)
