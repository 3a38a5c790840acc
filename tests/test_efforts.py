"""(model, effort) as the routing unit: variants, their prices, the choice and the wire."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from satisfice import Policy, Registry, Router
from satisfice.errors import ConfigError
from satisfice.executor import ExecutionConfig
from satisfice.testing import LocalUpstream

from .chat_support import REFUSED_BESIDE_THINKING


def _reg(url: str = "https://example.invalid", api: str = "openai") -> Registry:
    efforts: dict[str, Any] = {
        "low": {"reasoning_tokens": 500, "quality": -0.05},
        "medium": {"reasoning_tokens": 2000},
        "high": {"reasoning_tokens": 8000, "quality": 0.12},
    }
    return Registry.from_dict({"model": [{
        "id": "think", "provider": api, "context_window": 100_000, "max_output": 16_000,
        "price": {"input": 1.0, "output": 4.0}, "quality": {"general": 0.8}, "efforts": efforts,
        "p95_latency_ms": 1000,
        "deployments": [{"name": "d", "api": api, "model": "think-wire",
                         "base_url": url + ("/v1" if api == "openai" else "")}],
    }]})  # fmt: skip


def test_each_level_is_a_routable_variant_priced_with_its_reasoning() -> None:
    reg = _reg()
    assert reg.ids == ["think", "think@low", "think@medium", "think@high"]
    low, high = reg["think@low"], reg["think@high"]
    assert (low.effort, low.base, low.reasoning_tokens) == ("low", "think", 500)
    assert reg["think"].reasoning_tokens == 2000  # the default effort is medium
    assert high.quality["general"] == pytest.approx(0.92)
    assert high.p95_latency_ms == pytest.approx(1000 + 8000 * 10)
    r = Router(reg, Policy(quality_floor=0.5))
    d = r.route("What is 2+2?", max_output_tokens=100)
    assert d.model == "think@low"  # cheapest level that clears the floor
    by = {c.model: c.est_cost_usd for c in d.candidates}
    assert by["think@high"] - by["think@low"] == pytest.approx((8000 - 500) * 4.0 / 1e6)
    assert r.route("What is 2+2?", quality_floor=0.9).model == "think@high"
    assert "think@low" in d.explain()


def test_variants_are_written_as_their_models_levels(tmp_path: Path) -> None:
    reg = _reg()
    p = tmp_path / "r.toml"
    p.write_text(reg.to_toml())
    assert "think@" not in p.read_text()
    assert Registry.from_toml(p).ids == reg.ids
    with pytest.raises(ConfigError, match="unknown level"):
        Registry.from_dict({"model": [{"id": "x", "provider": "x", "context_window": 10,
                                       "max_output": 5, "efforts": {"turbo": {}}}]})  # fmt: skip
    with pytest.raises(ConfigError, match="reasoning_tokens must be an integer"):
        Registry.from_dict({"model": [{"id": "x", "provider": "x", "context_window": 10,
                                       "max_output": 5, "efforts": {"low": {}}}]})  # fmt: skip


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_the_level_reaches_the_provider(api: str) -> None:
    with LocalUpstream() as up:
        async with Router(_reg(up.url, api), Policy(quality_floor=0.5)).configure(
            execution=ExecutionConfig(read_timeout_s=5.0)
        ) as r:
            await r.chat("hi", allow=("think@high",), max_tokens=100)
            await r.chat("hi", allow=("think",), max_tokens=100)
        high, base = up.seen("think-wire")
    if api == "openai":
        assert high.body["reasoning_effort"] == "high"
        assert "reasoning_effort" not in base.body
    else:
        assert high.body["thinking"] == {"type": "enabled", "budget_tokens": 8000}
        assert high.body["max_tokens"] == 100 + 8000  # the answer keeps its 100
        assert "thinking" not in base.body


def test_a_cooling_deployment_blocks_every_level_of_its_model() -> None:
    from satisfice.executor import Executor
    from satisfice.state import Health

    reg = _reg()
    io = Executor(None, Health(), ExecutionConfig())  # type: ignore[arg-type]
    assert sorted(io.blocked_models(reg, {"think/d"})) == sorted(reg.ids)


async def test_an_effort_variant_without_usage_is_billed_its_reasoning() -> None:
    """Counted from the visible text alone, alpha@high cost 1/2000 of its own estimate."""
    from satisfice import Policy, Registry, Router
    from satisfice.testing import LocalUpstream, reply

    from .chat_support import registry

    async with LocalUpstream() as up:
        models = [m.to_dict() for m in registry(up.url)]
        for m in models:
            if m["id"] == "alpha":
                m["efforts"] = {"high": {"reasoning_tokens": 8000, "quality": 0.05}}
        up.default = reply("short answer", usage=False)
        async with Router(Registry.from_dict({"model": models}), Policy(quality_floor=0.5)) as r:
            res = await r.chat("hi", allow=["alpha@high"])
    assert res.usage.reasoning_tokens == 8000 and res.usage.source == "estimated"
    assert res.cost_usd is not None and res.cost_usd > res.decision.est_cost_usd / 2


def _thinking_and_plain(url: str) -> Registry:
    """think@high on Anthropic's wire (extended thinking), and a plain OpenAI-wire model."""
    reg = _reg(url, "anthropic").to_dict()
    reg["model"][0]["capabilities"] = ["json", "tools"]
    reg["model"].append({"capabilities": ["json", "tools"],
        "id": "plain", "provider": "openai", "context_window": 100_000, "max_output": 16_000,
        "price": {"input": 9.0, "output": 30.0}, "quality": {"general": 0.95},
        "deployments": [{"name": "p", "api": "openai", "model": "plain-wire",
                         "base_url": url + "/v1"}],
    })  # fmt: skip
    return Registry.from_dict(reg)


@pytest.mark.parametrize("kw, named", REFUSED_BESIDE_THINKING)
async def test_what_anthropic_refuses_beside_thinking_goes_to_the_next_model(
    kw: dict[str, Any], named: str
) -> None:
    """Anthropic refuses temperature (but 1), top_p under 0.95 and a forced tool beside
    extended thinking: sent, its 400 had ended the request at the thinking variant."""
    from satisfice.errors import UnsupportedRequestError

    with LocalUpstream() as up:
        async with Router(_thinking_and_plain(up.url), Policy(quality_floor=0.5)).configure(
            execution=ExecutionConfig(read_timeout_s=5.0)
        ) as r:
            res = await r.chat("hi", prefer="think@high", max_tokens=100, **kw)
            # the next routed model: think's own row at Anthropic's default, no thinking
            # (priced so: it had been priced with the medium level's reasoning tokens)
            assert res.model == "think" and res.attempts[-1].outcome == "ok"
            assert res.attempts[0].model == "think@high"
            assert named in (res.attempts[0].error or "")
            with pytest.raises(UnsupportedRequestError, match="extended thinking"):
                await r.chat("hi", allow=("think@high",), max_tokens=100, **kw)
            ok = await r.chat("hi", allow=("think@high",), max_tokens=100, temperature=1)
            assert ok.model == "think@high"
        # refusals are never sent: think's own row (no thinking), then think@high (thinking)
        assert [(s.model, "thinking" in s.body) for s in up.requests] == [
            ("think-wire", False),
            ("think-wire", True),
        ]


async def test_an_adaptive_models_effort_rows_send_adaptive_thinking_at_their_effort() -> None:
    """Claude Opus 4.7 takes adaptive thinking only (a budget_tokens is a 400 there) and
    Claude 4.6 has the budget deprecated: the bundled registry's effort rows of both had
    been sent a thinking budget. A model with `thinking = "adaptive"` sends adaptive
    thinking at the row's effort, with the row's reasoning tokens as room in max_tokens;
    one without it (Haiku 4.5) still sends a budget."""
    with LocalUpstream() as up:
        async with Router(up.patch(Registry.default())) as r:
            for row in ("claude-opus-4-7@high", "claude-sonnet-4-6@low", "claude-haiku-4-5@low"):
                await r.chat("hi", allow=[row], max_tokens=100)
        bodies = {s.body["model"]: s.body for s in up.requests}
    names = ("claude-opus-4-7", "claude-sonnet-4-6", "claude-haiku-4-5")
    opus, sonnet, haiku = (bodies[m] for m in names)
    assert opus["thinking"] == {"type": "adaptive"} and opus["output_config"] == {"effort": "high"}
    assert opus["max_tokens"] == 100 + 16384
    assert sonnet["thinking"] == {"type": "adaptive"}
    assert sonnet["output_config"] == {"effort": "low"}
    assert haiku["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert "output_config" not in haiku


def test_a_models_thinking_mode_is_checked() -> None:
    base = _reg().to_dict()["model"][0]
    with pytest.raises(ConfigError, match="thinking must be"):
        Registry.from_dict({"model": [{**base, "thinking": "budget"}]})
    with pytest.raises(ConfigError, match="adaptive thinking takes the efforts"):
        minimal = {"minimal": {"reasoning_tokens": 100}}
        Registry.from_dict({"model": [{**base, "thinking": "adaptive", "efforts": minimal}]})
    reg = Registry.from_dict({"model": [{**base, "thinking": "adaptive"}]})
    assert reg["think@high"].thinking == "adaptive"
    assert Registry.from_dict(reg.to_dict())["think"].thinking == "adaptive"
