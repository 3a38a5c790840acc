"""Load balancing across a model's deployments: price first, then least in flight."""

from __future__ import annotations

import asyncio
from typing import Any

from satisfice import Policy, Registry, Router
from satisfice.executor import ExecutionConfig
from satisfice.testing import LocalUpstream, reply, status


def _reg(a: str, b: str, price_a: float, price_b: float) -> Registry:
    dep = lambda name, url, p: {"name": name, "base_url": url + "/v1", "model": "m-wire",  # noqa: E731
                                "price": {"input": p, "output": p}}  # fmt: skip
    return Registry.from_dict({"model": [{
        "id": "m", "provider": "x", "context_window": 100_000, "max_output": 1000,
        "quality": {"general": 0.9}, "p95_latency_ms": 1000,
        "deployments": [dep("a", a, price_a), dep("b", b, price_b)],
    }]})  # fmt: skip


def _router(reg: Registry) -> Router:
    return Router(reg, Policy(quality_floor=0.5)).configure(
        execution=ExecutionConfig(read_timeout_s=5.0, backoff_base_s=0.01)
    )


async def test_equal_prices_share_the_load() -> None:
    slow = reply("ok", latency=0.05)
    with LocalUpstream(default=slow) as a, LocalUpstream(default=slow) as b:
        async with _router(_reg(a.url, b.url, 1.0, 1.0)) as r:
            res = await asyncio.gather(*(r.chat("hi") for _ in range(20)))
    by: dict[str, int] = {}
    for x in res:
        by[x.deployment] = by.get(x.deployment, 0) + 1
    assert len(a.requests) + len(b.requests) == 20
    assert min(len(a.requests), len(b.requests)) >= 8, by  # not all on the first one


async def test_the_cheaper_deployment_first_and_health_still_applies() -> None:
    with LocalUpstream() as a, LocalUpstream() as b:
        async with _router(_reg(a.url, b.url, 2.0, 1.0)) as r:
            out: list[Any] = [await r.chat("hi") for _ in range(3)]
            assert {x.deployment for x in out} == {"b"} and not a.requests
            b.script("m-wire", status(429, retry_after=30))
            x = await r.chat("hi")
            assert x.deployment == "a"  # b is cooling: the pricier one serves
            assert [t.deployment for t in x.attempts] == ["b", "a"]
