"""Cascades tuned once and applied anywhere: validators and ladders saved as data,
`satisfice calibrate --strategy cascade` writing them into the policy, `chat(cascade="auto")`
and the server's `"cascade": "auto"` climbing them against the local test upstream."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from satisfice import Policy, Registry, Router
from satisfice import validators as v
from satisfice.cascade import Cascade, Step
from satisfice.errors import ConfigError
from satisfice.eval import OutcomeSet
from satisfice.eval.calibrate import Target, calibrate_cascade
from satisfice.eval.cascade_eval import evaluate_cascade, tune_cascades
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, reply, status

from .chat_support import registry, wire
from .data_support import DATA, needs_data
from .server_support import running
from .test_cascade import synthetic_mc

ROOT = Path(__file__).resolve().parent.parent

BUILT_INS = [
    v.code_block("python"),
    v.code_block(None, parses=False),
    v.extracts(v.choice_letter),
    v.agreement(v.final_number_or_last, min_agree=3, weights={"a": 2.0}),
    v.regex(r"\bwait\b", forbid=True, flags=re.IGNORECASE, name="hedge"),
    v.regex(r"[A-D]", fullmatch=True),
    v.predicted(0.4),
    v.logprob_confidence(0.7, if_missing="fail"),
    v.all_of(v.final_answer(integer=True), v.arithmetic()),
    v.any_of(v.consistent_final(), v.uses_inputs(0.5)),
    v.calibrated([v.final_answer(), v.predicted()], [1.5, -0.5], 0.25, 0.6),
]


@pytest.mark.parametrize("check", BUILT_INS, ids=lambda c: c.name)
def test_every_built_in_check_saves_and_loads_to_the_same_verdicts(check: v.Validator) -> None:
    spec = v.to_spec(check)
    again = v.from_spec(json.loads(json.dumps(spec)))
    assert v.to_spec(again) == spec
    ctx = v.Context([{"role": "user", "content": "2 and 3?"}], (), {"m": 0.7})
    for text in ("#### 5", "```python\nx = 1\n```", "B", "wait, 2 + 3 = 6", "B) is it"):
        a, b = check(v.Answer("m", text), ctx), again(v.Answer("m", text), ctx)
        assert (a.passed, a.confidence) == (b.passed, b.confidence)  # type: ignore[union-attr]


def test_checks_that_are_code_are_refused_with_a_reason() -> None:
    with pytest.raises(ConfigError, match="cannot be saved"):
        v.to_spec(v.check(lambda text: True))
    with pytest.raises(ConfigError, match="built-in extractors"):
        v.to_spec(v.extracts(lambda text: text))
    for bad, why in [
        ({"check": "nope"}, "unknown check"),
        ({"check": "agreement", "extract": "eval"}, "unknown extractor"),
        ({"check": "regex", "pattern": "("}, "invalid pattern"),
        ({"check": "code_block", "langauge": "python"}, "bad arguments"),
        ("code_block", "object"),
    ]:
        with pytest.raises(ConfigError, match=why):
            v.from_spec(bad)


def test_a_policy_keeps_its_ladders_and_refuses_bad_ones(tmp_path: Path) -> None:
    ladder = Cascade([Step(("alpha", "beta"), v.agreement(v.choice_letter)), Step(("delta",))],
                     skip_below=0.1)  # fmt: skip
    pol = Policy(cascades={"reasoning": ladder, "*": Cascade([Step(("gamma",))])})
    pol.save(tmp_path / "p.json")
    back = Policy.load(tmp_path / "p.json")
    assert {t: c.to_dict() for t, c in back.cascades.items()} == {
        t: c.to_dict() for t, c in pol.cascades.items()
    }
    assert back.cascade_for("code") is back.cascades["*"]
    with pytest.raises(ConfigError, match="unknown task"):
        Policy(cascades={"poetry": ladder})
    with pytest.raises(ConfigError, match=r"steps\[0\].check: unknown check"):
        Policy.from_dict(
            {"cascades": {"*": {"steps": [{"models": ["a"], "check": {"check": "x"}}]}}}
        )
    with pytest.raises(ConfigError, match="names 'omega', which the registry lacks"):
        Router(registry("http://127.0.0.1:9"), Policy(cascades={"*": Cascade([Step(("omega",))])}))


def mc_set(models: tuple[str, str, str] = ("alpha", "beta", "delta")) -> OutcomeSet:
    s = synthetic_mc(160)
    return replace(s, models=list(models))


def test_tuned_ladders_meet_the_target_on_their_rows_or_say_not() -> None:
    s = mc_set()
    got = tune_cascades(s, "quality", 95.0)
    assert got["met"] and got["tuning"]["quality_share"] >= 0.95 - 1e-9
    assert got["reference"] == "delta" and set(got["cascades"]) <= {"*", "reasoning", "general"}
    cheap = tune_cascades(s, "cost", 1e-9)  # below every ladder's cost
    assert not cheap["met"]
    with pytest.raises(Exception, match="quality:PCT or cost:USD"):
        tune_cascades(s, "top-share", 0.2)


def test_eval_by_router_task_reports_aiq_for_cascade_and_prompt_only() -> None:
    from satisfice.eval.cascade_eval import router_task

    rep = evaluate_cascade(mc_set(), task_of=router_task, budget_shares=(0.2, 0.5))
    assert 0.0 < rep["aiq_cascade"] <= 1.0 and 0.0 < rep["prompt_only"]["aiq"] <= 1.0


@pytest.fixture(scope="module")
def upstream() -> Any:
    with LocalUpstream() as up:
        yield up


def _calibrated_router(url: str, tmp_path: Path) -> tuple[Router, dict[str, Any]]:
    reg = tmp_path / "r.toml"
    reg.write_text(registry(url).to_toml())
    out = calibrate_cascade(mc_set(), Target("quality", 95.0), policy_path=tmp_path / "p.json",
                            registry=reg)  # fmt: skip
    pol = Policy.load(tmp_path / "p.json")
    assert pol.cascades and out["written"]
    return Router(registry(url), pol.replace(quality_floor=0.0)), out


async def test_calibrated_ladder_climbs_in_chat_auto(
    upstream: LocalUpstream, tmp_path: Path
) -> None:
    upstream.reset_script()
    # calibration replays the ladders on its own event loop: off this one
    router, _ = await asyncio.to_thread(_calibrated_router, upstream.url, tmp_path)
    prompt = "Question 7: pick A or B. A) yes B) no"
    d = router.route(prompt)
    ladder = router.snapshot.policy.cascade_for(d.task)
    assert ladder is not None
    for m in ("alpha", "beta", "gamma", "delta"):
        upstream.script(wire(m), *[reply("B") for _ in range(3)])
    res = await router.chat([{"role": "user", "content": prompt}], cascade="auto")
    assert res.cascade is not None and res.cascade_skipped is None
    assert res.cascade.steps[0].models == ladder.steps[0].models
    assert res.model in {m for s in ladder.steps for m in s.models}
    called = [a.model for a in res.attempts]
    assert set(called) <= {m for s in ladder.steps for m in s.models}
    assert res.total_cost_usd is not None and res.total_cost_usd > 0
    # A request that rules out a ladder model is routed, and says why.
    res = await router.chat([{"role": "user", "content": prompt}], cascade="auto",
                            allow=("gamma",))  # fmt: skip
    assert res.cascade is None and res.model == "gamma"
    assert res.cascade_skipped is not None and "ruled out" in res.cascade_skipped
    await router.aclose()


async def test_cascade_auto_without_ladders_or_for_an_untuned_task(
    upstream: LocalUpstream,
) -> None:
    upstream.reset_script()
    plain = Router(registry(upstream.url), Policy(quality_floor=0.0))
    with pytest.raises(ConfigError, match="calibrate --strategy cascade"):
        await plain.chat("hi", cascade="auto")
    with pytest.raises(ConfigError, match="Cascade, True or"):
        await plain.chat("hi", cascade="sometimes")  # type: ignore[arg-type]
    only_code = Policy(quality_floor=0.0, cascades={"code": Cascade([Step(("delta",))])})
    r = Router(registry(upstream.url), only_code)
    upstream.script(wire("alpha"), reply("hello"))
    res = await r.chat("hi there, how are you?", cascade="auto")
    assert res.cascade is None and "no tuned cascade for task" in (res.cascade_skipped or "")
    assert res.to_record()["cascade_skipped"] == res.cascade_skipped
    await r.aclose()
    await plain.aclose()


def test_server_cascade_auto_over_http(upstream: LocalUpstream, tmp_path: Path) -> None:
    upstream.wait_idle()
    upstream.reset_script()
    router, _ = _calibrated_router(upstream.url, tmp_path)
    prompt = "Question 9: pick A or B. A) yes B) no"
    ladder = router.snapshot.policy.cascade_for(router.route(prompt).task)
    assert ladder is not None
    first = ladder.steps[0].models
    with running(router=router) as (url, _app):
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        try:
            for m in ("alpha", "beta", "gamma", "delta"):  # every model fails: a 502, listed
                upstream.script(wire(m), *[status(500) for _ in range(4)])
            with pytest.raises(openai.APIStatusError) as e:
                c.chat.completions.create(
                    model="auto",
                    extra_body={"cascade": "auto"},
                    messages=[{"role": "user", "content": prompt}],
                )
            assert e.value.status_code == 502, e.value.body
            upstream.wait_idle()
            upstream.reset_script()
            for m in ("alpha", "beta", "gamma", "delta"):
                upstream.script(wire(m), *[reply("A") for _ in range(3)])
            r = c.chat.completions.create(
                model="auto",
                messages=[{"role": "user", "content": prompt}],
                extra_body={"cascade": "auto"},
            )
            sat: Any = r.model_extra["satisfice"]  # type: ignore[index]
            assert sat["cascade"] is not None and sat["cascade"]["steps"][0]["models"] == list(
                first
            )
            assert r.choices[0].message.content == "A"
            for body, why in [
                ({"cascade": "auto", "stream": True}, "use stream=false"),
                ({"cascade": {"steps": []}}, 'takes "auto" only'),
            ]:
                msgs = [{"role": "user", "content": "hi"}]
                got = httpx.post(
                    url + "/v1/chat/completions", json={"model": "auto", "messages": msgs, **body}
                )
                assert got.status_code == 400 and why in got.json()["error"]["message"]
        finally:
            c.close()


def test_the_budget_bound_of_a_cascade_is_the_sum_over_its_ladder(tmp_path: Path) -> None:
    from satisfice.server import ServerConfig, create_app

    ladder = Cascade([Step(("alpha", "beta"), v.agreement(v.choice_letter)), Step(("delta",))])
    router = Router(registry("http://127.0.0.1:9"), Policy(quality_floor=0.0,
                                                            cascades={"*": ladder}))  # fmt: skip
    svc = create_app(ServerConfig(), router=router).state.service
    d = router.route("Question: pick A or B")
    one, cap = svc.worst_case(d, 100)
    total, _ = svc.worst_case(d, 100, cascade=True)
    parts = [svc.worst_case(router.route("Question: pick A or B", allow=(m,)), 100)[0]
             for m in ("alpha", "beta", "delta")]  # fmt: skip
    assert cap == 100 and np.isclose(total, sum(parts)) and total > one


# -- review findings -----------------------------------------------------------------------
@needs_data
def test_a_calibrated_ladder_is_climbed_under_the_policys_own_floor(tmp_path: Path) -> None:
    """calibrate --strategy cascade writes ladders into a policy with the default floor
    (0.8); cascade="auto" then skips the ladder for almost every prompt because its cheap
    first step is filtered by quality_floor -- the floor the ladder's check replaces."""
    from satisfice.eval import load
    from satisfice.eval.calibrate import Target, calibrate_cascade
    from satisfice.executor import tuned_ladder

    (tmp_path / "r.toml").write_text((ROOT / "docs/examples/gsm8k_models.toml").read_text())
    assert DATA is not None
    data = load("routellm", [str(DATA / "routellm/gsm8k")]).drop_missing()
    out = calibrate_cascade(data, Target("quality", 95.0), policy_path=tmp_path / "p.json",
                            registry=tmp_path / "r.toml")  # fmt: skip
    assert out["met"]
    router = Router(Registry.from_toml(tmp_path / "r.toml"), Policy.load(tmp_path / "p.json"))
    # routed as chat(cascade="auto") routes: the ladder's check stands in for the floor
    skipped = [tuned_ladder(router.route(p, quality_floor=0.0))[1] for p in data.prompts[:100]]
    assert skipped == [None] * 100
    assert tuned_ladder(router.route(data.prompts[0]))[1] is not None  # the floor would skip it


def test_recalibrating_replaces_the_ladders_instead_of_keeping_stale_ones(
    tmp_path: Path,
) -> None:
    """calibrate merges {**old, **new}: a task ladder from an earlier run (other data, other
    registry) survives, so serving climbs a ladder the new report never tuned, and a ladder
    naming a model the new registry lacks makes recalibrating with it impossible (the error
    says 'calibrate again with this one')."""
    from satisfice.eval.calibrate import Target, calibrate_cascade

    reg = tmp_path / "r.toml"
    reg.write_text(registry("http://127.0.0.1:9").to_toml())
    old = Policy(cascades={"code": Cascade([Step(("omega",))])})  # tuned with another registry
    (tmp_path / "p.json").write_text(json.dumps(old.to_dict()))
    out = calibrate_cascade(mc_set(), Target("quality", 95.0), policy_path=tmp_path / "p.json",
                            registry=reg)  # fmt: skip
    assert set(Policy.load(tmp_path / "p.json").cascades) == set(out["cascades"])


@pytest.mark.parametrize(
    "cascade",
    [
        {"steps": [{"models": ["alpha"], "check": {"check": "code_block", "language": 5}}]},
        {"steps": [{"models": ["alpha"]}], "latency_budget_ms": 10**400},
        {"steps": [{"models": ["alpha"]}], "max_cost_usd": 10**400},
    ],
    ids=["language-int", "latency-huge", "cost-huge"],
)
def test_malformed_policy_ladders_are_config_errors(cascade: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Policy.from_dict({"cascades": {"*": cascade}})


@pytest.mark.parametrize(
    "spec",
    [
        {"check": "predicted", "min_p": "0.5"},
        {
            "check": "agreement",
            "extract": "final_number",
            "min_agree": 1,
            "weights": {"alpha": "2"},
        },
        {"check": "logprob_confidence", "if_missing": "maybe"},
    ],
    ids=["min_p-str", "weights-str", "if_missing"],
)
def test_a_loaded_check_is_validated_when_loaded_not_at_request_time(spec: Any) -> None:
    with pytest.raises(ConfigError):
        v.from_spec(spec)


def test_a_bad_check_in_a_policy_is_refused_when_loaded() -> None:
    bad = {"steps": [{"models": ["alpha"], "check": {"check": "predicted", "min_p": "0.5"}},
                     {"models": ["delta"]}]}  # fmt: skip
    with pytest.raises(ConfigError, match=r"policy.cascades\['\*'\].steps\[0\].check"):
        Policy.from_dict({"cascades": {"*": bad}})


def test_a_cascade_budget_error_settles_what_its_steps_were_billed(
    upstream: LocalUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy ladder with on_budget="raise": step 0 is called (billed), step 1 is blocked by
    the cap, CascadeBudgetError -> 400, and the reservation is settled at $0 (`_billed` reads
    `.attempts`, which CascadeBudgetError lacks)."""
    master = "master-test-key-0123456789abcdef"
    monkeypatch.setenv("SATISFICE_MASTER_KEY", master)
    upstream.wait_idle()
    upstream.reset_script()
    ladder = Cascade([Step(("alpha",), v.regex("NEVER")), Step(("delta",))],
                     on_budget="raise", max_cost_usd=5e-4)  # fmt: skip
    router = Router(registry(upstream.url), Policy(quality_floor=0.0, cascades={"*": ladder}))
    upstream.script(wire("alpha"), reply("word " * 400))
    cfg = ServerConfig(ledger=str(tmp_path / "l.db"))
    admin = {"authorization": f"Bearer {master}"}
    with running(cfg, router) as (url, _app):
        k = httpx.post(url + "/admin/keys", headers=admin,
                       json={"name": "t", "budget_usd": 1.0, "period": "day"}).json()  # fmt: skip
        r = httpx.post(url + "/v1/chat/completions", timeout=30,
                       headers={"authorization": f"Bearer {k['key']}"},
                       json={"model": "auto", "cascade": "auto",
                             "messages": [{"role": "user", "content": "hi " * 50}]})  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["code"] == "cascade_budget", r.text
        time.sleep(0.3)
        s = httpx.get(url + "/admin/spend", headers=admin).json()["budgets"][0]
    assert s["spent_usd"] > 0 and s["held_usd"] == 0  # alpha's 400 words were billed


def test_a_budget_reserves_the_ladder_even_when_its_cheap_step_is_below_the_floor(
    upstream: LocalUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chat(cascade="auto") routes at floor 0 (the ladder's checks replace the floor), so the
    server's budget bound must come from that same decision, not one where the floor already
    ruled the cheap step out (which would reserve one answer and let the ladder spend two)."""
    master = "master-test-key-0123456789abcdef"
    monkeypatch.setenv("SATISFICE_MASTER_KEY", master)
    raw = registry(upstream.url).to_dict()
    for m in raw["model"]:
        m["quality"] = {"general": 0.3 if m["id"] == "alpha" else 0.95}
    reg = Registry.from_dict(raw)
    ladder = Cascade([Step(("alpha",), v.regex("NEVER")), Step(("delta",))])
    router = Router(reg, Policy(quality_floor=0.8, cascades={"*": ladder}))
    prompt = "hello " * 200
    assert "alpha" in router.route(prompt).filtered  # the floor rules the cheap step out
    with running(ServerConfig(), router) as (url, app):
        svc = app.state.service
        parts = [
            svc.worst_case(
                router.route(prompt, allow=(m,), quality_floor=0.0, count_prompt=True), 100
            )[0]
            for m in ("alpha", "delta")
        ]  # fmt: skip  (counted, as a budget's request is)
        admin = {"authorization": f"Bearer {master}"}
        budget = (max(parts) + sum(parts)) / 2  # fits one answer, not the ladder
        key = {"name": "c", "budget_usd": budget, "period": "day"}
        k = httpx.post(url + "/admin/keys", headers=admin, json=key).json()
        r = httpx.post(url + "/v1/chat/completions", timeout=30,
                       headers={"authorization": f"Bearer {k['key']}"},
                       json={"model": "auto", "cascade": "auto", "max_tokens": 100,
                             "messages": [{"role": "user", "content": prompt}]})  # fmt: skip
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded", r.text
    assert f"${sum(parts):.6f}" in r.json()["error"]["message"]
