"""A judge's chat() cut off because the request was cancelled by its caller (a client gone,
asyncio.wait_for) is billed to the request, in a cascade's step and in a race's accept
check: its call reached the upstream. The record had said the judge cost nothing (only a
cascade's latency budget billed it, tests/test_round12_executor.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from satisfice import Cascade, Policy, Registry, Router, Step
from satisfice import validators as v
from satisfice.executor import ExecutionConfig
from satisfice.ledger import read_records
from satisfice.testing import LocalUpstream, hang, reply


def _model(mid: str, url: str, price: float) -> dict[str, Any]:
    return {
        "id": mid, "provider": "openai", "tokenizer": "o200k_base", "context_window": 100_000,
        "max_output": 1000, "quality": {"general": 0.9}, "p95_latency_ms": 100,
        "price": {"input": price, "output": 2 * price},
        "deployments": [{"name": "d", "api": "openai", "base_url": url + "/v1",
                         "model": f"{mid}-d"}],
    }  # fmt: skip


def _router(*models: dict[str, Any]) -> Router:
    cfg = ExecutionConfig(read_timeout_s=5.0, attempt_timeout_s=5.0, backoff_base_s=0.01)
    reg = Registry.from_dict({"model": list(models)})
    return Router(reg, Policy(quality_floor=0.5)).configure(execution=cfg)


def _judge(judge_router: Router, started: asyncio.Event) -> Any:
    async def ask(messages: list[dict[str, Any]]) -> v.Answer:
        started.set()
        res = await judge_router.chat(messages, allow=["judge"])
        return v.Answer(res.model, res.text, cost_usd=res.total_cost_usd)

    return v.judge(ask, "ok?")


async def _cancel_mid_judge(r: Router, started: asyncio.Event, **kw: Any) -> None:
    task = asyncio.ensure_future(r.chat("hi", **kw))
    await asyncio.wait_for(started.wait(), 5.0)
    await asyncio.sleep(0.3)  # the judge's call has reached the upstream, which hangs
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5.0)


@pytest.mark.parametrize("how", ["cascade", "race"])
async def test_a_judge_cut_off_with_its_request_is_billed(
    up: LocalUpstream, tmp_path: Path, how: str
) -> None:
    up.default = reply("hello")
    up.script("judge-d", hang())
    started = asyncio.Event()
    r = _router(_model("alpha", up.url, 0.1), _model("beta", up.url, 0.1))
    judge_router = _router(_model("judge", up.url, 50.0))
    check = _judge(judge_router, started)
    kw: dict[str, Any] = (
        {"cascade": Cascade([Step(("alpha",), check), Step(("beta",))])}
        if how == "cascade"
        else {"race": 2, "accept": check}
    )
    async with r.attach(ledger=tmp_path / "l.db"), judge_router:
        await _cancel_mid_judge(r, started, **kw)
        assert r.ledger is not None and r.ledger.flush(5.0)
    (rec,) = list(read_records(tmp_path / "l.db"))
    assert rec["error_type"] == "RequestCancelled"
    outcomes = [a["outcome"] for a in rec["attempts"]]
    # was: no "check" attempt; the judge's call (its prompt at $50/1M) cost the request $0
    assert "check" in outcomes, f"the judge's cut-off call is on no attempt: {outcomes}"
