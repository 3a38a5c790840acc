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


async def test_deployments_are_ordered_and_capped_by_this_requests_price() -> None:
    """a bills the prompt cheap and the answer dear, b the reverse: for a long prompt and a
    short answer a is the cheaper. Ordered by the sum of the rates, b went first and billed
    57x route()'s estimate, which had priced the model at a's rates."""
    from satisfice.registry import Price

    with LocalUpstream() as a, LocalUpstream() as b:
        reg = _reg(a.url, b.url, 1.0, 1.0)
        m = reg["m"]
        deps = (m.deployments[0].replace(price=Price(0.1, 29.9)),
                m.deployments[1].replace(price=Price(10.0, 10.0)))  # fmt: skip
        reg = reg.replace(m.replace(deployments=deps))
        async with _router(reg) as r:
            prompt = "word " * 20_000
            res = await r.chat(prompt, max_tokens=20)
            assert res.deployment == "a" and not b.requests, res.attempts
            # the table's bound is each rate at its dearest host's: never under a bill
            d = r.route(prompt, max_output_tokens=20)
            worst = max(dep.price.cost(d.tokens_in("m"), 20) for dep in deps)  # type: ignore[union-attr]
            assert d.est_cost_usd is not None and d.est_cost_usd >= worst * 0.999
            res = await r.chat("short", max_tokens=500)  # a short prompt, a long answer: b
            assert res.deployment == "b", res.attempts


def test_the_tables_bound_is_no_lower_than_any_hosts_bill_at_any_length() -> None:
    """One host's long-context tier below another's flat base rate had bounded a long
    prompt at the tier; a host that bills reasoning at its output rate was bounded at the
    other's lower explicit reasoning rate."""
    from satisfice.policy import _fee, _worst_price
    from satisfice.registry import LongContext, Price

    reg = _reg("http://127.0.0.1:1", "http://127.0.0.1:2", 1.0, 1.0)
    m = reg["m"]
    tiered = Price(1.0, 2.0, long_context=(LongContext(1000, 2.0, 4.0),))
    flat = Price(3.0, 6.0)
    deps = (m.deployments[0].replace(price=tiered), m.deployments[1].replace(price=flat))
    m = m.replace(deployments=deps)
    worst = _worst_price(m)
    assert worst is not None
    for t_in in (500, 5000):
        assert worst.cost(t_in, 100) >= max(p.cost(t_in, 100) for p in (tiered, flat))
    own = (Price(1.0, 10.0), Price(1.0, 4.0, reasoning=8.0))
    m = m.replace(
        reasoning_tokens=1_000_000,
        deployments=tuple(d.replace(price=p) for d, p in zip(deps, own, strict=True)),
    )
    assert _fee(m) >= 10.0  # 1M reasoning tokens at host a's output rate
