"""A number is a number wherever satisfice takes one: numpy's scalars too (a score or a limit
computed with numpy is a np.float32 or a np.int64, and was refused as "not a number"), kept
as plain floats and ints so that the table, the records and JSON take them; bool never."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from satisfice import ConfigError, InputError, Job, Policy, Router
from satisfice.cascade import Cascade
from satisfice.ledger import read_records
from satisfice.policy import Constraints
from satisfice.registry import ModelSpec
from satisfice.testing import LocalUpstream

from .chat_support import router

MSGS = [{"role": "user", "content": "Say hello"}]


async def test_a_numpy_feedback_score_is_taken_and_recorded_as_a_float(
    up: LocalUpstream, tmp_path: Path
) -> None:
    db = tmp_path / "l.jsonl"
    async with router(up.url).attach(ledger=db) as r:
        res = await r.chat(MSGS)
        before = r.policy.quality_model().params_for(r.registry[res.model]).n_obs
        after = r.feedback(res.request_id, np.float32(0.25)).n_obs
        assert after == before + 1
        again = await r.chat(MSGS)
        r.feedback(again.request_id, np.int64(1))
        for bad in (np.bool_(True), True, np.float64("nan"), np.int64(2)):
            with pytest.raises(InputError, match="feedback score"):
                r.feedback(res.request_id, bad)  # type: ignore[arg-type]
        assert r.ledger is not None and r.ledger.flush()
    recs = {rec["request_id"]: rec for rec in read_records(db)}
    assert recs[res.request_id]["feedback"] == 0.25
    rec = recs[again.request_id]
    assert rec["feedback"] == 1.0 and type(rec["feedback"]) is float


def test_numpy_limits_route_and_are_kept_as_plain_numbers() -> None:
    r = Router()
    d = r.route(
        "hello",
        max_cost_usd=np.float32(0.5),
        latency_slo_ms=np.int64(60_000),
        max_output_tokens=np.int64(100),
    )
    assert d.model and d.tokens_out == 100
    c = Constraints(max_cost_usd=np.float32(0.5), max_output_tokens=np.int64(7))  # type: ignore[arg-type]
    assert type(c.max_cost_usd) is float and type(c.max_output_tokens) is int
    with pytest.raises(ConfigError, match="max_cost_usd"):
        Constraints(max_cost_usd=np.bool_(True))  # type: ignore[arg-type]
    p = Policy(quality_floor=np.float32(0.5), lam=np.int64(2))  # type: ignore[arg-type]
    assert type(p.quality_floor) is float and p.lam == 2.0


def test_numpy_numbers_in_a_model_a_cascade_a_policy_and_a_job(tmp_path: Path) -> None:
    spec = ModelSpec(
        id="x", provider="p", context_window=np.int64(8192), max_output=np.int32(1024),  # type: ignore[arg-type]
        quality={"general": np.float32(0.7)},  # type: ignore[dict-item]
    )  # fmt: skip
    assert type(spec.context_window) is int and spec.max_output == 1024
    assert type(spec.quality["general"]) is float
    c = Cascade(["a", "b"], max_cost_usd=np.float32(0.01), latency_budget_ms=np.int64(500),  # type: ignore[arg-type]
                skip_below=np.float32(0.2))  # type: ignore[arg-type]  # fmt: skip
    assert {type(c.max_cost_usd), type(c.latency_budget_ms), type(c.skip_below)} == {float}
    p = Policy(max_fallbacks=np.int64(2), expected_output_tokens={"code": np.int32(300)},  # type: ignore[arg-type, dict-item]
               cascades={"*": c})  # fmt: skip
    assert type(p.max_fallbacks) is int and type(p.expected_output_tokens["code"]) is int
    p.save(tmp_path / "policy.json")  # JSON takes it (a np.int64 had raised a raw TypeError)
    job = Job(Router(), max_cost_usd=np.float32(0.5))  # type: ignore[arg-type]
    assert type(job.max_cost_usd) is float and job.max_cost_usd == pytest.approx(0.5)
