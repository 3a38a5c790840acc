"""OpenTelemetry spans in the GenAI conventions: in memory, and once over OTLP/HTTP to a
local receiver."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from satisfice.testing import LocalUpstream, status
from satisfice.tracing import Tracing

from .chat_support import router, wire


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(exp))
    return p, exp


async def test_request_route_and_attempt_spans(up: LocalUpstream) -> None:
    provider, exp = _provider()
    up.script(wire("alpha"), status(500), status(500), status(500))
    async with router(up.url).attach(tracing=Tracing(provider)) as r:
        res = await r.chat("Say hello")
    spans = {s.name: s for s in exp.get_finished_spans() if s.name != "chat alpha"}
    attempts = [s for s in exp.get_finished_spans() if s.name.startswith("chat ")]
    root = next(s for s in attempts if s.parent is None)
    assert root.name == "chat alpha" and root.attributes["gen_ai.response.model"] == "beta"
    assert root.attributes["satisfice.request_id"] == res.request_id
    route = spans["route"]
    assert route.parent.span_id == root.context.span_id
    assert route.attributes["satisfice.model"] == "alpha" and route.attributes["satisfice.reasons"]
    kids = [s for s in attempts if s.parent is not None]
    assert [s.attributes["gen_ai.request.model"] for s in kids][-1] == "beta"
    failed = [s for s in kids if s.status.status_code == StatusCode.ERROR]
    assert (
        failed
        and failed[0].attributes["error.type"]
        and failed[0].attributes["http.response.status_code"] == 500
    )
    ok = kids[-1]
    assert ok.attributes["gen_ai.usage.output_tokens"] > 0
    assert root.start_time <= route.start_time <= route.end_time <= ok.start_time <= root.end_time


async def test_cascade_steps_are_spans(up: LocalUpstream) -> None:
    from satisfice import validators

    provider, exp = _provider()
    async with router(up.url).attach(tracing=Tracing(provider)) as r:
        res = await r.chat("Say hello", cascade=True, accept=validators.check(lambda t: True))
    assert res.cascade is not None
    steps = [s for s in exp.get_finished_spans() if s.name.startswith("cascade step")]
    assert steps and steps[0].attributes["satisfice.step.status"] == "accepted"
    calls = [s for s in exp.get_finished_spans() if s.parent is not None
             and s.parent.span_id == steps[0].context.span_id]  # fmt: skip
    assert calls and calls[0].name.startswith("chat ")


async def test_failures_are_error_spans(up: LocalUpstream) -> None:
    import pytest

    from satisfice.errors import BadRequestError

    provider, exp = _provider()
    for m in ("alpha", "beta", "gamma", "delta"):
        up.script(wire(m), status(400, message="no"))
    async with router(up.url).attach(tracing=Tracing(provider)) as r:
        with pytest.raises(BadRequestError):
            await r.chat("Say hello")
    spans = exp.get_finished_spans()
    (s,) = [x for x in spans if x.parent is None]  # the request's, and its attempt's under it
    assert s.status.status_code == StatusCode.ERROR and s.attributes["error.type"]
    (a,) = [x for x in spans if x.parent is not None]
    assert a.attributes["gen_ai.request.model"] == "alpha"
    assert a.attributes["http.response.status_code"] == 400


async def test_otlp_http_export_to_a_local_receiver(up: LocalUpstream) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    got: list[bytes] = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(self.rfile.read(int(self.headers["content-length"])))
            assert self.path == "/v1/traces"
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        provider = TracerProvider()
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        async with router(up.url).attach(tracing=Tracing(provider)) as r:
            await r.chat("Say hello")
        assert provider.force_flush(10_000)
        provider.shutdown()
    finally:
        srv.shutdown()
        srv.server_close()
    req = ExportTraceServiceRequest()
    req.ParseFromString(b"".join(got))
    names = {s.name for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans}
    assert {"chat alpha", "route"} <= names


async def test_a_streams_spans_are_under_the_span_it_began_in(up: LocalUpstream) -> None:
    """A stream asked for under a span and read (to its end, or closed early) outside it:
    its spans are written under the span it began in (they had been roots of a trace of
    their own, the context being the one current where the stream ended)."""
    from satisfice.testing import reply

    provider, exp = _provider()
    tracer = provider.get_tracer("test")
    up.script(wire("alpha"), reply("one two three"), reply("word " * 100, chunk_delay=0.01))
    async with router(up.url).attach(tracing=Tracing(provider)) as r:
        with tracer.start_as_current_span("outer") as outer:
            whole = r.stream("Say hello")
        async for _ in whole:  # read to its end outside the span
            pass
        with tracer.start_as_current_span("outer") as outer2:
            cut = r.stream("Say hello")
            pieces = cut.__aiter__()
            await pieces.__anext__()
        await cut.aclose()  # closed early, outside the span
    roots = [s for s in exp.get_finished_spans() if s.name == "chat alpha"
             and s.attributes.get("satisfice.request_id")]  # fmt: skip
    assert len(roots) == 2
    parents = sorted(s.parent.span_id if s.parent else 0 for s in roots)
    want = sorted(o.get_span_context().span_id for o in (outer, outer2))
    assert parents == want
