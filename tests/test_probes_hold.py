"""Probing, as reviewed: budgets, scoring and the code probe's child. Every test here failed
on the code it was written against; each docstring says the defect and what should hold."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from satisfice import Policy, Registry, Router
from satisfice.probe import PROBES, run_probes
from satisfice.testing import LocalUpstream, reply


def _reg(
    url: str, models: Any = (("good", {"input": 0.1, "output": 0.4}),), key_env: str | None = None
) -> Registry:
    out = []
    for m, price in models:
        dep: dict[str, Any] = {"name": "d", "base_url": url + "/v1", "model": f"{m}-wire"}
        if key_env:
            dep["api_key_env"] = key_env
        d: dict[str, Any] = {
            "id": m,
            "provider": "openai",
            "context_window": 100_000,
            "max_output": 4000,
            "quality": {"general": 0.8},
            "p95_latency_ms": 100,
            "deployments": [dep],
        }
        if price is not None:
            d["price"] = price
        out.append(d)
    return Registry.from_dict({"model": out})


def _probe(name: str) -> Any:
    return next(p for p in PROBES if p.name == name)


async def test_a_huge_brace_answer_is_scored_at_once() -> None:
    """Defect: a hostile upstream answering the 400-token `invoice` probe with 120,000 "{"
    stalls run_probes for many seconds (observed ~6 s at 120 KB, ~15 s at 200 KB, growing
    quadratically): the `_json_fields` check's `re.search(r"\\{.*\\}", re.S)` backtracks
    from every "{". It runs synchronously on the event loop, so in the server the
    scheduled probe run freezes every request too. Expected: scoring an answer is bounded
    (linear, or the answer is cut to what max_tokens allows) and takes well under 2 s."""
    with LocalUpstream() as up:
        up.script("good-wire", reply("{" * 120_000))
        router = Router(_reg(up.url), Policy(quality_floor=0.5))
        async with router:
            t0 = time.perf_counter()
            report = await run_probes(router, ["good"], [_probe("invoice")])
            took = time.perf_counter() - t0
    assert report.asked["good"] == 1
    assert took < 2.0, f"one probe answer took {took:.1f} s to score"


def test_code_probe_writes_stay_in_its_temporary_directory(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Defect: the code probe's child runs in the caller's working directory, not in the
    temporary directory made for it: an answer's `open("policy.json", "w")` (observed with
    "escaped.txt") creates or overwrites files where the operator runs `satisfice probe`
    (where its policy/health files usually are). Expected: the child's cwd is the temp dir,
    so a relative write stays there and is removed with it."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = (
        "```python\ndef add(a, b):\n    return a + b\n"
        "open('escaped.txt', 'w').write('model was here')\n```"
    )
    assert _probe("add").check(code)  # the answer is right; its write is the point
    assert not (work / "escaped.txt").exists(), "model code wrote into the operator's cwd"


async def test_an_unpriced_model_is_passed_over_under_a_budget() -> None:
    """Defect: with budget_usd=0.5 and an unpriced model ("local", e.g. an Ollama model)
    listed before a priced one, the run stops at the unpriced model's first probe
    (routing refuses it: "unpriced: cannot check max_cost"), with stopped = "the budget
    left ($0.500000) is less than a probe of local may cost" - false, nothing was spent -
    and the priced model is never probed (asked 0; the server's scheduled run does this
    every interval). Expected: the unpriced model is skipped and said to be unboundable;
    the priced models are still probed within the budget."""
    with LocalUpstream() as up:
        up.script("good-wire", *(reply(p.example) for p in PROBES))
        up.script("local-wire", *(reply(p.example) for p in PROBES))
        reg = _reg(up.url, (("local", None), ("good", {"input": 0.1, "output": 0.4})))
        router = Router(reg, Policy(quality_floor=0.5))
        async with router:
            report = await run_probes(router, budget_usd=0.5)
    assert len(up.seen("local-wire")) == 0  # the budget was kept: never called as free
    assert report.asked.get("good", 0) == sum(p.task != "code" for p in PROBES), report.stopped
    assert "less than a probe" not in (report.stopped or "")


async def test_the_progress_line_gives_a_failed_calls_cause() -> None:
    """Defect: the progress line for a failed probe is cut at 200 characters of an error
    whose first ~200 characters are the generic "every attempt failed ... see
    router.health() ..." preamble, so the cause is lost: observed "... skipped (no_api_key:
    environm" for an unset key variable (the progress comment says: "the cause, not the
    class alone (a missing key had said nothing)"). Expected: the line names the cause,
    here the variable REVIEW_UNSET_KEY_XYZ to export."""
    lines: list[str] = []
    router = Router(
        _reg("http://127.0.0.1:9", key_env="REVIEW_UNSET_KEY_XYZ"), Policy(quality_floor=0.5)
    )
    os.environ.pop("REVIEW_UNSET_KEY_XYZ", None)
    async with router:
        report = await run_probes(router, ["good"], [_probe("multiply")], progress=lines.append)
    assert report.errors["good"] == 1
    assert "REVIEW_UNSET_KEY_XYZ" in lines[0], lines[0]
