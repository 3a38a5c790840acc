"""An attempt span's `gen_ai.provider.name` for a deployment on Vertex AI. Failed on the code
before its fix."""

from __future__ import annotations

from satisfice import Registry
from satisfice.tracing import _provider_name


def test_a_regional_vertex_ai_endpoint_is_named_vertex_ai() -> None:
    # Vertex AI answers at a region's host ("us-central1-aiplatform.googleapis.com") as well
    # as at the global one: only the global host had been named gcp.vertex_ai, a region's
    # (most deployments') had been its wire format's name, "openai"
    base = "https://{}aiplatform.googleapis.com/v1/projects/p/locations/l/endpoints/openapi"
    reg = Registry.from_dict({"model": [{
        "id": "gemini-x", "provider": "google", "context_window": 100_000, "max_output": 1000,
        "quality": {"general": 0.9}, "p95_latency_ms": 1000,
        "deployments": [
            {"name": host or "global", "base_url": base.format(host), "model": "google/gemini-x",
             "price": {"input": 1.0, "output": 1.0}}
            for host in ("", "us-central1-", "europe-west4-")
        ],
    }]})  # fmt: skip
    spec = reg["gemini-x"]
    named = {d.name: _provider_name(spec, d.name) for d in spec.deployments}
    assert named == dict.fromkeys(("global", "us-central1-", "europe-west4-"), "gcp.vertex_ai")
