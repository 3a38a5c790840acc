"""Traces and metrics say what the record says: tested with the OpenTelemetry SDK's
in-memory exporter and prometheus-client's own exposition."""

from __future__ import annotations

import json

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from satisfice.testing import RawUpstream, http_response
from satisfice.tracing import Tracing

from .chat_support import router


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(exp))
    return p, exp


async def test_a_reply_that_gives_no_finish_reason_is_traced_without_one(
    raw: RawUpstream,
) -> None:
    """An OpenAI-compatible reply with `finish_reason: null`: the result and its record say
    None, and the request's span had said ["stop"] (an answer that ended on its own, where
    it may as well have been cut at its length)."""
    provider, exp = _provider()
    body = {
        "id": "x", "model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                     "finish_reason": None}],
    }  # fmt: skip
    raw.push(http_response(json.dumps(body).encode()))
    async with router(raw.url).attach(tracing=Tracing(provider)) as r:
        res = await r.chat("Say hello", allow=["alpha"])
    assert res.finish_reason is None and res.to_record()["finish_reason"] is None
    (root,) = [s for s in exp.get_finished_spans() if s.attributes.get("satisfice.request_id")]
    assert "gen_ai.response.finish_reasons" not in root.attributes


def test_drops_asked_for_from_two_threads_at_once_are_counted_once() -> None:
    """Metrics.dropped() is called from the request's thread (Recorder.result) and the
    ledger's writer (each record counted) at once. The second caller, reading the count
    last seen before the first had written it, added the same drops again: 5 dropped,
    10 counted (two threads with a 1 µs switch interval: 400,000 dropped, 484,297
    counted). Here the second call is made, on a thread of its own, at the moment the
    first writes what it saw (the ledger's hash, which that write reads)."""
    import threading

    from satisfice.metrics import Metrics

    m = Metrics()
    others: list[threading.Thread] = []

    class Ledger:
        dropped = 5
        hashes = 0

        def __hash__(self) -> int:
            Ledger.hashes += 1
            if Ledger.hashes == 2:  # the first call writes the count it saw: the other comes
                t = threading.Thread(target=m.dropped, args=(self,))
                others.append(t)
                t.start()
                t.join(0.5)  # (with a lock it waits for the first call's end)
            return 1

    ledger = Ledger()
    m.dropped(ledger)
    for t in others:
        t.join(10)
    assert others and not others[0].is_alive()  # the other call was made, and ended
    assert m.ledger_dropped._value.get() == 5
