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
