"""The executor's account of the calls in flight: a cascade step cut off mid-call is billed
at the deployment it was calling (not at the model's first one), and the calls in flight
that balance a model's deployments are not forgotten when a registry is swapped in."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from satisfice import Cascade, Policy, Registry, Router, Step
from satisfice import validators as v
from satisfice.errors import AllAttemptsFailedError
from satisfice.executor import ExecutionConfig
from satisfice.testing import LocalUpstream, hang, reply, status

from .chat_support import router, wire


def _model(mid: str, url: str, deps: dict[str, float | None], price: float) -> dict[str, Any]:
    """Model `mid` with deployments named by `deps` (each at its own $/1M, or None: the
    model's `price`), wired as "<mid>-<deployment>"."""
    return {
        "id": mid, "provider": "openai", "tokenizer": "o200k_base", "context_window": 100_000,
        "max_output": 1000, "quality": {"general": 0.9}, "p95_latency_ms": 100,
        "price": {"input": price, "output": 2 * price},
        "deployments": [
            {"name": name, "api": "openai", "base_url": url + "/v1", "model": f"{mid}-{name}"}
            | ({} if p is None else {"price": {"input": p, "output": 2 * p}})
            for name, p in deps.items()
        ],
    }  # fmt: skip


def _router(*models: dict[str, Any]) -> Router:
    cfg = ExecutionConfig(read_timeout_s=2.0, attempt_timeout_s=5.0, backoff_base_s=0.01)
    reg = Registry.from_dict({"model": list(models)})
    return Router(reg, Policy(quality_floor=0.5)).configure(execution=cfg)


async def test_a_cut_off_cascade_step_is_billed_at_the_deployment_it_called(
    up: LocalUpstream,
) -> None:
    up.default = reply("hello")
    up.script("beta-dear", hang())
    r = _router(
        _model("alpha", up.url, {"d": None}, 0.1),
        _model("beta", up.url, {"cheap": None, "dear": 100.0}, 0.1),
    )
    ladder = Cascade([Step(("alpha",), v.check(lambda t: False)), Step(("beta",))],
                     latency_budget_ms=500)  # fmt: skip
    async with r:
        r.disable("beta", "cheap")  # the call goes to beta's second deployment, and hangs
        res = await r.chat("hi", cascade=ladder)
    assert res.cascade is not None and res.cascade.budget_hit == "latency"
    (cut,) = [a for a in res.attempts if a.outcome == "cancelled"]
    # was: "cheap", at its price, a thousandth of what the dear host bills for the prompt
    assert (cut.model, cut.deployment, cut.step) == ("beta", "dear", 1)
    assert cut.cost_estimated
    assert cut.cost_usd == pytest.approx(res.decision.tokens_in("beta") * 100.0 / 1e6)


async def test_calls_in_flight_still_balance_after_a_registry_swap(up: LocalUpstream) -> None:
    up.default = reply("ok", latency=0.5)
    async with _router(_model("m", up.url, {"d1": None, "d2": None}, 1.0)) as r:
        r.disable("m", "d2")
        first = [asyncio.create_task(r.chat(f"first {i}")) for i in range(6)]
        async with asyncio.timeout(5.0):
            while len(up.requests) < 6:  # six calls in flight on d1
                await asyncio.sleep(0.01)
        r.enable("m", "d2")
        r.update(registry=Registry(list(r.registry), r.registry.meta))  # a no-change refresh
        second = await asyncio.gather(*(r.chat(f"second {i}") for i in range(6)))
        # was: half of them sent to d1, its six calls in flight forgotten with the old targets
        assert [x.deployment for x in second] == ["d2"] * 6
        assert {x.deployment for x in await asyncio.gather(*first)} == {"d1"}
        # a call cancelled or failed gives its count back, as one that answered does
        up.default = hang()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.chat("cancelled"), 0.3)
        up.default = status(500)
        with pytest.raises(AllAttemptsFailedError):
            await r.chat("failed")
        assert r._io is not None and not any(r._io._in_flight.values())


async def test_closing_a_stream_after_its_result_leaves_the_result_as_it_was(
    up: LocalUpstream,
) -> None:
    """A stream closed after result() (as `aclose()` and the server do) had appended a
    "cancelled" attempt to the answer already returned, and raised its total cost."""
    up.script(wire("alpha"), reply("hello there"))
    async with router(up.url) as r:
        s = r.stream([{"role": "user", "content": "Say hello"}])
        res = await s.result()
        before = ([(a.model, a.outcome) for a in res.attempts], res.total_cost_usd)
        await s.aclose()
        assert ([(a.model, a.outcome) for a in res.attempts], res.total_cost_usd) == before
        assert before[0] == [("alpha", "ok")]


async def test_a_stream_counts_as_in_flight_until_its_end(up: LocalUpstream) -> None:
    """A stream counted as in flight only until its first text: a deployment busy with long
    streams looked idle to the balancing."""
    up.default = reply("one two three four five six", chunk_delay=0.2)
    async with _router(_model("m", up.url, {"d1": None, "d2": None}, 1.0)) as r:
        r.disable("m", "d2")
        async with r.stream("a long answer") as s:
            async for _ in s:  # its first piece is here, the rest is still coming
                break
            r.enable("m", "d2")
            up.default = reply("ok")
            assert (await r.chat("another")).deployment == "d2"
        assert r._io is not None and not any(r._io._in_flight.values())


async def test_a_cascade_cap_refuses_file_parts_it_cannot_bound(up: LocalUpstream) -> None:
    """A request's max_cost_usd refused a PDF part (no token count, no cost bound), but a
    ladder's own cap let it through and the answer was billed 10x the cap."""
    from satisfice.errors import ConfigError

    pdf = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:;base64,AAAA"}}
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Summarise"}, pdf]}]
    async with router(up.url) as r:
        with pytest.raises(ConfigError, match="cannot be counted"):
            await r.chat(msgs, cascade=Cascade(["alpha", "beta"], max_cost_usd=0.001))
        assert not up.requests  # refused before any call
