"""OpenTelemetry traces of each request, in the GenAI semantic conventions.

    from satisfice.tracing import Tracing
    router.attach(tracing=Tracing())        # the global tracer provider, or pass one

One span per request (`chat <routed model>`, kind CLIENT), a `route` span for the decision
with its reasons and candidates as attributes, a span per cascade step, and a span per attempt
(`chat <model>`, `gen_ai.*` request, response and usage attributes, the error type when it
failed). Spans are written when the request ends, with the times it measured, under the span
that was current when the request began. Optional: needs `opentelemetry-api` (and an SDK to
export); with nothing attached a router makes no span and imports nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .result import bills

if TYPE_CHECKING:
    from .result import ChatResult

__all__ = ["Tracing"]


#: The GenAI conventions' well-known `gen_ai.provider.name` values, by the host a deployment
#: calls (the service that answered, as the providers' own instrumentations name it)
_HOSTS = {
    "api.openai.com": "openai", "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "gcp.gemini", "aiplatform.googleapis.com":
    "gcp.vertex_ai", "api.mistral.ai": "mistral_ai", "api.x.ai": "x_ai",
    "api.deepseek.com": "deepseek", "api.groq.com": "groq", "api.perplexity.ai": "perplexity",
    "api.cohere.com": "cohere", "api.cohere.ai": "cohere",
}  # fmt: skip


def _provider_name(spec: Any, deployment: str) -> str | None:
    """An attempt's `gen_ai.provider.name`: the service its deployment calls, by host (a
    subdomain of Azure's OpenAI or of Bedrock's runtime, and a region's Vertex AI endpoint,
    too), else its wire format, as an instrumentation of that format's SDK names any host it
    is pointed at. It had been the model's maker ("google", "mistral", "xai"; "meta" for a
    model served by Groq)."""
    if spec is None:
        return None
    for d in spec.deployments:
        if d.name == deployment:
            host = (urlsplit(d.base_url).hostname or "").lower()
            if host.endswith(".openai.azure.com"):
                return "azure.ai.openai"
            if host.startswith("bedrock-runtime.") and host.endswith(".amazonaws.com"):
                return "aws.bedrock"
            if host.endswith("-aiplatform.googleapis.com"):  # Vertex AI's regional endpoints
                return "gcp.vertex_ai"
            return _HOSTS.get(host, str(d.api))
    return str(spec.provider) or None


def _gen_ai(a: Mapping[str, Any], provider: str | None) -> dict[str, Any]:
    """An attempt's span attributes, from its record (`Attempt.to_dict()`)."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": a["model"],
        "satisfice.deployment": a["deployment"],
        "satisfice.outcome": a["outcome"],
    }
    if provider:
        attrs["gen_ai.provider.name"] = provider
    if (u := a.get("usage")) is not None:
        attrs["gen_ai.usage.input_tokens"] = u["prompt_tokens"]
        attrs["gen_ai.usage.output_tokens"] = u["completion_tokens"]
    if a.get("cost_usd") is not None:
        attrs["satisfice.cost_usd"] = a["cost_usd"]
    elif bills(a.get("outcome"), a.get("cost_estimated")):
        attrs["satisfice.cost_unpriced"] = True  # billed, at a price nobody knows: not $0
    if a.get("error_type"):
        attrs["error.type"] = a["error_type"]
    if a.get("status") is not None:
        attrs["http.response.status_code"] = a["status"]
    if (v := a.get("verdict")) is not None:
        attrs["satisfice.verdict.passed"] = bool(v.get("passed"))
    return attrs


class Tracing:
    def __init__(self, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import context, trace
        except ImportError:  # said as Metrics() says its own (a raw ModuleNotFoundError had)
            from .errors import ConfigError

            raise ConfigError(
                "tracing needs the OpenTelemetry SDK: pip install 'satisfice[otel]'"
            ) from None

        from . import __version__

        provider = tracer_provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer("satisfice", __version__)
        self._trace, self._context = trace, context

    def begin(self) -> Any:
        """The context current when a request starts (its spans' parent)."""
        return self._context.get_current()

    def result(self, r: ChatResult, parent: Any = None) -> None:
        trace = self._trace
        d = r.decision
        t0 = int(r.started_at * 1e9)
        reg = d.snapshot.registry
        root = self._tracer.start_span(
            f"chat {d.model}", context=parent, kind=trace.SpanKind.CLIENT, start_time=t0,
            attributes={
                "gen_ai.operation.name": "chat", "gen_ai.request.model": d.model,
                "gen_ai.response.model": r.model,
                "gen_ai.usage.input_tokens": r.usage.prompt_tokens,
                "gen_ai.usage.output_tokens": r.usage.completion_tokens,
                # as the upstream said it, or none: a reply that gave no reason (its record's
                # None) had been traced as "stop", an answer ended on its own
                **({"gen_ai.response.finish_reasons": [r.finish_reason]} if r.finish_reason
                   else {}),
                "satisfice.request_id": r.request_id, "satisfice.task": d.task,
                "satisfice.attempts": len(r.attempts),
                **({"satisfice.cost_usd": r.total_cost_usd} if r.total_cost_usd is not None
                   else {"satisfice.cost_unpriced": True}),
                **({"satisfice.est_cost_usd": d.est_cost_usd} if d.est_cost_usd is not None
                   else {}),
            },
        )  # fmt: skip
        ctx = trace.set_span_in_context(root)
        first = min((a.started_s for a in r.attempts), default=r.latency_s)
        route = self._tracer.start_span("route", context=ctx, start_time=t0, attributes={
            "satisfice.model": d.model, "satisfice.fallbacks": list(d.fallbacks),
            "satisfice.reasons": d.reasons(), "satisfice.below_floor": bool(d.below_floor),
            "satisfice.candidates": [f"{c.model} p={c.p_good:.3f}" for c in d.candidates[:16]],
        })  # fmt: skip
        route.end(t0 + int(first * 1e9))
        steps: dict[int, Any] = {}
        if r.cascade is not None:
            for i, step in enumerate(r.cascade.steps):
                mine = [a for a in r.attempts if a.step == i]
                if not mine:
                    continue
                start = min(a.started_s for a in mine)
                end = max(a.started_s + a.duration_s for a in mine)
                span = self._tracer.start_span(f"cascade step {i}", context=ctx,
                                               start_time=t0 + int(start * 1e9), attributes={
                    "satisfice.step": i, "satisfice.step.status": step.status,
                    "satisfice.step.models": list(step.models)})  # fmt: skip
                steps[i] = (span, end)
        for a in r.attempts:
            spec = reg[a.model] if a.model in reg else None  # noqa: SIM401 (a Registry, not a dict)
            parent_span = steps[a.step][0] if a.step in steps else root
            self._attempt(a.to_dict(), t0, parent_span, _provider_name(spec, a.deployment))
        for span, end in steps.values():
            span.end(t0 + int(end * 1e9))
        root.end(t0 + int(r.latency_s * 1e9))

    def failure(self, rec: Mapping[str, Any], parent: Any = None, registry: Any = None) -> None:
        trace = self._trace
        t0 = int(float(rec["started_at"]) * 1e9)
        model = (rec.get("decision") or {}).get("model", "unrouted")
        span = self._tracer.start_span(f"chat {model}", context=parent,
                                       kind=trace.SpanKind.CLIENT, start_time=t0, attributes={
            "gen_ai.operation.name": "chat", "gen_ai.request.model": model,
            "error.type": rec.get("error_type", "error"),
            "satisfice.request_id": rec["request_id"],
            # what its calls were billed before it failed, as an answer's span says it
            **_bill(rec)})  # fmt: skip
        span.set_status(trace.Status(trace.StatusCode.ERROR, rec.get("error_type", "error")))
        for a in rec.get("attempts") or ():  # each call it made: which failed, and how
            spec = registry[a["model"]] if registry is not None and a["model"] in registry else None
            self._attempt(a, t0, span, _provider_name(spec, a["deployment"]))
        span.end(t0 + int(float(rec.get("latency_s") or 0) * 1e9))

    def _attempt(self, a: Mapping[str, Any], t0: int, parent: Any, provider: str | None) -> None:
        """The span of one attempt (its record), under `parent`."""
        trace = self._trace
        s = self._tracer.start_span(
            f"chat {a['model']}", context=trace.set_span_in_context(parent),
            kind=trace.SpanKind.CLIENT, start_time=t0 + int(a["started_s"] * 1e9),
            attributes=_gen_ai(a, provider),
        )  # fmt: skip
        if a["outcome"] == "error":
            s.set_status(trace.Status(trace.StatusCode.ERROR, a.get("error_type") or "error"))
        s.end(t0 + int((a["started_s"] + a["duration_s"]) * 1e9))


def _bill(rec: Mapping[str, Any]) -> dict[str, Any]:
    """What a failed request's calls were billed, as an answer's span says it."""
    usd = rec.get("total_cost_usd")
    return {"satisfice.cost_usd": usd} if usd is not None else {"satisfice.cost_unpriced": True}
