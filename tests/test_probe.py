"""Probes move abilities the right way, through the real request path, and persist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from satisfice import Policy, Registry, Router
from satisfice.cli import main
from satisfice.executor import ExecutionConfig
from satisfice.probe import PROBES, run_probes
from satisfice.state import Health
from satisfice.testing import LocalUpstream, reply


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_each_probe_passes_its_example_and_fails_a_wrong_answer(probe: Any) -> None:
    assert probe.check(probe.example)
    assert not probe.check("I am not sure.")


def test_code_that_exits_before_the_tests_does_not_pass() -> None:
    add = next(p for p in PROBES if p.name == "add")
    cheat = "```python\ndef add(a, b):\n    return 0\nraise SystemExit(0)\n```"
    assert not add.check(cheat)


@pytest.mark.parametrize(
    "peek",
    [
        "print(open(__file__).read())",  # its own source
        "print(open('/proc/self/cmdline').read())",  # its command line
        "import sys; print(sys._getframe().f_code.co_consts)",  # its code's constants
    ],
)
def test_code_cannot_print_the_done_token_without_running_the_tests(peek: str) -> None:
    add = next(p for p in PROBES if p.name == "add")
    cheat = f"```python\ndef add(a, b):\n    return 0\n{peek}\nraise SystemExit(0)\n```"
    assert not add.check(cheat)


async def test_code_probes_run_only_when_asked() -> None:
    with LocalUpstream() as up:
        up.script("good-wire", *(reply(p.example) for p in PROBES if p.task != "code"))
        router = Router(_reg(up.url), Policy(quality_floor=0.5))
        async with router:
            report = await run_probes(router, ["good"])
    assert report.asked["good"] == sum(p.task != "code" for p in PROBES)


def _reg(url: str) -> Registry:
    return Registry.from_dict({"model": [
        {"id": m, "provider": "openai", "context_window": 100_000, "max_output": 4000,
         "price": {"input": 0.1, "output": 0.4}, "quality": {"general": 0.8},
         "p95_latency_ms": 100,
         "deployments": [{"name": "d", "base_url": url + "/v1", "model": f"{m}-wire"}]}
        for m in ("good", "bad")
    ]})  # fmt: skip


def _script(up: LocalUpstream) -> None:
    up.script("good-wire", *(reply(p.example) for p in PROBES))
    up.script("bad-wire", *(reply("I am not sure.") for _ in PROBES))


async def test_scripted_answers_raise_one_model_and_lower_the_other(tmp_path: Path) -> None:
    with LocalUpstream() as up:
        _script(up)
        router = Router(_reg(up.url), Policy(quality_floor=0.5)).configure(
            execution=ExecutionConfig(read_timeout_s=5.0)
        )
        async with router:
            report = await run_probes(router, run_code=True)
        assert up.pending("good-wire") == up.pending("bad-wire") == 0
    out = report.to_dict()["models"]
    assert out["good"]["passed"] == len(PROBES) and out["bad"]["passed"] == 0
    assert out["good"]["p_good_after"] > out["good"]["p_good_before"] + 0.01
    assert out["bad"]["p_good_after"] < out["bad"]["p_good_before"] - 0.01
    assert report.spent_usd > 0
    # persisted: a new router loading the saved policy has the moved abilities
    router.save_policy(tmp_path / "p.json", tmp_path / "p.npz")
    again = Router(_reg("http://127.0.0.1:9"), Policy.load(tmp_path / "p.json"))
    d = again.route(PROBES[0].prompt, quality_floor=0)
    by = {c.model: c.p_good for c in d.candidates}
    assert by["good"] > by["bad"]


async def test_a_budget_stops_the_run() -> None:
    with LocalUpstream() as up:
        _script(up)
        router = Router(_reg(up.url), Policy(quality_floor=0.5))
        async with router:
            report = await run_probes(router, budget_usd=1e-9)
    assert report.stopped and sum(report.asked.values()) == 1


def test_the_probe_command_saves_abilities_and_latency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LocalUpstream() as up:
        _script(up)
        reg = tmp_path / "r.toml"
        reg.write_text(_reg(up.url).to_toml())
        health = tmp_path / "health.json"
        code = main(["probe", "--registry", str(reg), "--save-policy", str(tmp_path / "p.json"),
                     "--health", str(health), "--json", "--run-code"])  # fmt: skip
    assert code == 0
    said = capsys.readouterr()
    out = json.loads(said.out)
    assert out["models"]["good"]["passed"] == len(PROBES)
    assert "good" in said.err  # progress on stderr with --json too (it had been silent)
    h = Health.load(health)
    saved = json.loads(health.read_text())["latency"]
    assert set(saved) == {"good/d", "bad/d"} and saved["good/d"]["n_ok"] == len(PROBES)
    assert h.snapshot()["good/d"]["successes"] == len(PROBES)
    assert (tmp_path / "p.json").exists()
