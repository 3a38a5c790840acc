"""`ModelSpec.thinking = "adaptive"` (Claude Opus 4.7, Sonnet 4.6): the body an adaptive row
sends, streamed or not, through the router and the server; what bounds its bill; what it
refuses; that the field survives the registry's round trips. From a review of the change:
three tests (a non-object `extra` output_config, a level expecting no reasoning tokens, the
refusal's wording) failed on its first version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from satisfice import Policy, Registry, Router
from satisfice.errors import UnsupportedRequestError
from satisfice.executor import ExecutionConfig, worst_bill
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, reply

from .chat_support import REFUSED_BESIDE_THINKING
from .server_support import running

OPUS, SONNET, HAIKU = "claude-opus-4-7", "claude-sonnet-4-6", "claude-haiku-4-5"
HDRS = {"anthropic-version": "2023-06-01", "x-api-key": "anything"}


def _bundled(up: LocalUpstream) -> Registry:
    return up.patch(Registry.default())


def _bodies(up: LocalUpstream, model: str) -> list[dict[str, Any]]:
    return [s.body for s in up.requests if s.body.get("model") == model]


# -- streamed calls send the same adaptive body ------------------------------------------------
@pytest.mark.parametrize("row, effort", [(f"{OPUS}@high", "high"), (f"{SONNET}@low", "low")])
async def test_router_stream_sends_the_adaptive_body(row: str, effort: str) -> None:
    with LocalUpstream() as up:
        async with Router(_bundled(up)) as r:
            await r.chat("hi", allow=[row], max_tokens=100)
            res = await r.stream("hi", allow=[row], max_tokens=100).result()
        assert res.model == row
        plain, streamed = _bodies(up, row.split("@")[0])
    assert streamed.pop("stream") is True
    assert streamed == plain
    assert streamed["thinking"] == {"type": "adaptive"}
    assert streamed["output_config"] == {"effort": effort}
    assert "budget_tokens" not in json.dumps(streamed)


@pytest.mark.parametrize("stream", [False, True])
def test_v1_messages_sends_the_adaptive_body(stream: bool) -> None:
    with LocalUpstream() as up:
        with running(ServerConfig(), Router(_bundled(up))) as (url, _):
            body = {
                "model": OPUS, "max_tokens": 20000, "stream": stream,
                "messages": [{"role": "user", "content": "hi"}],
                "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
            }  # fmt: skip
            r = httpx.post(url + "/v1/messages", json=body, headers=HDRS, timeout=30)
            assert r.status_code == 200, r.text
        sent = _bodies(up, OPUS)
    assert len(sent) == 1
    b = sent[0]
    assert b["thinking"] == {"type": "adaptive"}
    assert b["output_config"] == {"effort": "high"}
    # Anthropic's max_tokens holds the thinking: sent as given (`test_thinking_within_limit`)
    assert b["max_tokens"] == 20000
    assert (b.get("stream") is True) == stream


# -- the budget's worst case and cost caps ---------------------------------------------------------
def test_worst_case_bounds_an_adaptive_rows_bill() -> None:
    from satisfice.server.app import Service

    reg = Registry.default()
    svc = Service(ServerConfig(), Router(reg, Policy(max_fallbacks=0)))
    d = svc.router.route("hi", allow=(f"{OPUS}@high",))
    assert d.model == f"{OPUS}@high" and not d.fallbacks
    worst, _ = svc.worst_case(d, 100)
    m = reg[f"{OPUS}@high"]
    price = m.deployments[0].price or m.price
    # everything the wire lets it write (100 + 16384 of room), at the dearer rate
    whole = price.cost(d.max_tokens_in(d.model), 100 + 16384, reasoning_tokens=100 + 16384)
    assert worst >= whole - 1e-12
    assert worst_bill(price, m, "anthropic", 10, 100, None) >= price.cost(10, 16484) - 1e-12


async def test_a_cost_cap_bounds_what_an_adaptive_row_bills() -> None:
    """The upstream reports all the max_tokens it was sent as output: billed within the cap."""
    row, cap = f"{OPUS}@high", 0.6
    with LocalUpstream() as up:
        async with Router(_bundled(up)) as r:
            up.default = reply("x", usage=(5, 1, 0))
            await r.chat("hi", allow=[row], max_cost_usd=cap)
            sent = _bodies(up, OPUS)[-1]
            up.default = reply("x", usage=(5, sent["max_tokens"], 0))
            res = await r.chat("hi", allow=[row], max_cost_usd=cap)
        b = _bodies(up, OPUS)[-1]
    assert b["thinking"] == {"type": "adaptive"} and b["max_tokens"] > 16384
    assert res.cost_usd is not None and res.cost_usd <= cap + 1e-9


# -- what Anthropic refuses beside thinking ----------------------------------------------------
@pytest.mark.parametrize("kw, named", REFUSED_BESIDE_THINKING)
async def test_adaptive_rows_refuse_what_thinking_refuses_and_fall_through(
    kw: dict[str, Any], named: str
) -> None:
    row = f"{OPUS}@high"
    with LocalUpstream() as up:
        async with Router(_bundled(up), Policy(quality_floor=0.5)).configure(
            execution=ExecutionConfig(read_timeout_s=5.0)
        ) as r:
            res = await r.chat("hi", prefer=row, max_tokens=100, **kw)
            assert res.attempts[0].model == row and named in (res.attempts[0].error or "")
            assert res.model != row and res.attempts[-1].outcome == "ok"
            with pytest.raises(UnsupportedRequestError, match="thinks before it answers"):
                await r.chat("hi", allow=(row,), max_tokens=100, **kw)
    assert not any(s.body.get("thinking") for s in up.requests)


async def test_a_prefilled_turn_is_refused_beside_adaptive_thinking() -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure,"}]
    with LocalUpstream() as up:
        async with Router(_bundled(up)) as r:
            with pytest.raises(UnsupportedRequestError, match="prefilled"):
                await r.chat(msgs, allow=(f"{OPUS}@low",), max_tokens=100)
    assert up.requests == []


# -- registry round trips -------------------------------------------------------------------
def test_round_trips_keep_the_field(tmp_path: Path) -> None:
    reg = Registry.default()
    assert Registry.from_dict(reg.to_dict())[OPUS].thinking == "adaptive"
    t = tmp_path / "r.toml"
    t.write_text(reg.to_toml())
    j = tmp_path / "r.json"
    j.write_text(reg.to_json())
    for r2 in (Registry.from_toml(t), Registry.load(t), Registry.from_json(j), Registry.load(j)):
        for mid in (OPUS, f"{OPUS}@high", SONNET, f"{SONNET}@low"):
            assert r2[mid].thinking == "adaptive", mid
        assert r2[HAIKU].thinking is None and r2[f"{HAIKU}@low"].thinking is None
        assert r2.to_dict() == reg.to_dict()


def test_variants_inherit_the_field() -> None:
    reg = Registry.default()
    for mid in reg.ids:
        m = reg[mid]
        if m.base is not None:
            assert m.thinking == reg[m.base].thinking, mid
    assert {m.id for m in reg if m.thinking == "adaptive"} == {
        OPUS,
        f"{OPUS}@low",
        f"{OPUS}@medium",
        f"{OPUS}@high",
        f"{OPUS}@xhigh",
        f"{OPUS}@max",
        SONNET,
        f"{SONNET}@low",
        f"{SONNET}@medium",
        f"{SONNET}@high",
        f"{SONNET}@max",
    }


# -- extra / output_config ---------------------------------------------------------------------
async def test_extra_output_config_format_merges_with_the_effort() -> None:
    fmt = {"type": "json_schema", "schema": {"type": "object"}}
    with LocalUpstream() as up:
        async with Router(_bundled(up)) as r:
            await r.chat("hi", allow=[f"{OPUS}@high"], max_tokens=100,
                         extra={"output_config": {"format": fmt}})  # fmt: skip
            await r.chat("hi", allow=[f"{OPUS}@high"], max_tokens=100,
                         extra={"output_config": {"effort": "low"}})  # fmt: skip
        a, b = _bodies(up, OPUS)
    assert a["output_config"] == {"format": fmt, "effort": "high"}
    assert a["thinking"] == {"type": "adaptive"}
    assert b["output_config"] == {"effort": "high"}  # the row's effort is what was routed


async def test_extra_thinking_does_not_replace_the_adaptive_thinking() -> None:
    with LocalUpstream() as up:
        async with Router(_bundled(up)) as r:
            await r.chat("hi", allow=[f"{OPUS}@high"], max_tokens=100,
                         extra={"thinking": {"type": "enabled", "budget_tokens": 50}})  # fmt: skip
        (b,) = _bodies(up, OPUS)
    assert b["thinking"] == {"type": "adaptive"}


@pytest.mark.parametrize("bad", [None, "high", ["x"]])
async def test_a_non_object_extra_output_config_is_a_clean_error(bad: Any) -> None:
    """extra={"output_config": <not an object>} on an adaptive row had been a raw TypeError
    out of chat(); it is the request's fault, said so, and nothing is sent."""
    from satisfice.errors import BadRequestError

    with LocalUpstream() as up:
        async with Router(_bundled(up)) as r:
            with pytest.raises(BadRequestError, match="output_config must be an object"):
                await r.chat("hi", allow=[f"{OPUS}@high"], max_tokens=100,
                             extra={"output_config": bad})  # fmt: skip
        assert not up.requests


async def test_an_adaptive_rows_refusal_does_not_claim_a_thinking_budget() -> None:
    """The refusal says "extended thinking, 16384 tokens" on a row sent adaptive thinking."""
    with LocalUpstream() as up:
        async with Router(_bundled(up)) as r:
            with pytest.raises(UnsupportedRequestError) as e:
                await r.chat("hi", allow=(f"{OPUS}@high",), max_tokens=100, temperature=0.2)
    assert "16384 tokens" not in str(e.value), str(e.value)[:300]


# -- an adaptive row whose level gives no room -----------------------------------------------
async def test_an_adaptive_row_with_zero_reasoning_tokens_still_sends_its_effort() -> None:
    base = Registry.default().to_dict()
    for m in base["model"]:
        if m["id"] == OPUS:
            m["efforts"] = {"high": {"reasoning_tokens": 0, "quality": 0.04}}
    with LocalUpstream() as up:
        async with Router(up.patch(Registry.from_dict(base))) as r:
            await r.chat("hi", allow=[f"{OPUS}@high"], max_tokens=100)
        (b,) = _bodies(up, OPUS)
    # a row named @high that is sent as the base row (no thinking, no effort)
    assert b.get("output_config") == {"effort": "high"}, b


# -- records, ledger, explain ----------------------------------------------------------------
async def test_records_ledger_and_explain_name_the_adaptive_row(tmp_path: Path) -> None:
    from satisfice.ledger import read_records

    row = f"{OPUS}@high"
    with LocalUpstream() as up:
        async with Router(_bundled(up)).attach(ledger=tmp_path / "l.db") as r:
            res = await r.chat("hi", allow=[row], max_tokens=100)
    assert res.model == row and row in res.decision.explain()
    assert res.usage.reasoning_tokens >= 0
    recs = list(read_records(tmp_path / "l.db"))
    assert recs and recs[-1].get("model") == row, recs[-1] if recs else None
