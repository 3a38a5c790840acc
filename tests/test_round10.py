"""Cascades, checks, probes and catalogues under odd input (round 10 of adversarial
testing): each test failed on the code before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from satisfice import Policy, Router
from satisfice import validators as V
from satisfice.cascade import Cascade, Step
from satisfice.errors import ConfigError, UnknownModelError
from satisfice.executor import ExecutionConfig
from satisfice.probe import _code, run_probes
from satisfice.sources import _fetch, _per_million, _per_token, _positive_int
from satisfice.testing import LocalUpstream, reply
from satisfice.validators import Verdict

from .chat_support import registry, router
from .polling import until


@pytest.mark.parametrize(
    "verdict",
    [Verdict(True, "high", "odd"), Verdict(False, None, "odd"), Verdict("yes", 0.9, "odd"),  # type: ignore[arg-type]
     Verdict(True, float("nan"), "odd"), Verdict(True, 0.9, "odd", ("not an answer",))],  # type: ignore[arg-type]
)  # fmt: skip
async def test_a_check_returning_an_odd_verdict_fails_the_answer(
    up: LocalUpstream, verdict: Verdict
) -> None:
    class Odd:
        name = "odd"

        def __call__(self, *a: Any) -> Verdict:
            return verdict

    async with router(up.url) as r:
        res = await r.chat("hi", cascade=Cascade([Step(("alpha",), Odd()), Step(("gamma",))]))
    assert res.model == "gamma"  # alpha's answer failed its check: the ladder climbed
    assert "returned a Verdict with" in res.cascade.steps[0].verdicts[0].reason


def test_catalogue_figures_no_float_holds_are_unpriced() -> None:
    huge = 10**400
    assert _per_token(huge) == _per_million(huge) == math.inf  # absurd: the entry is unpriced
    # float(True) was $1e6; a bool is no price, so its entry is unpriced (since the 37th
    # session: read as no figure, an optional rate had fallen back to another rate)
    assert _per_token(True) == math.inf and _positive_int(True) is None
    assert _per_token("0.000001") == 1.0 and _positive_int(128000) == 128000


def test_code_a_probe_ran_is_killed_even_when_it_leaves_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    answer = f"""```python
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open({str(pidfile)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
        os._exit(0)
    os._exit(0)
time.sleep(0.3)
def add(a, b):
    return a + b
```"""
    assert _code("assert add(2, 3) == 5")(answer) is False  # it never ended by itself
    pid = int(pidfile.read_text())

    def state() -> str:
        try:
            with open(f"/proc/{pid}/status") as f:
                return next(line for line in f if line.startswith("State:")).split()[1]
        except FileNotFoundError:
            return "gone"  # killed and reaped

    # killed (a zombie not reaped yet) or gone; a loaded machine may take a moment to end it
    assert until(lambda: state() in ("Z", "gone")), f"process {pid} survived: {state()}"


async def test_a_probe_budget_caps_each_call(up: LocalUpstream) -> None:
    up.default = reply("391", usage=(60, 400, 0))  # as long an answer as it was allowed
    async with router(up.url) as r:
        rep = await run_probes(r, ["delta"], budget_usd=0.0005)
    for seen in up.seen("delta-wire"):  # delta: $4 per 1M output tokens
        assert seen.body["max_tokens"] * 4.0 / 1e6 <= 0.0005
    assert rep.spent_usd <= 0.0005 + 1e-12


async def test_a_ladder_naming_an_unknown_model_is_refused_before_any_call(
    up: LocalUpstream,
) -> None:
    up.script("alpha-wire", reply("slow", latency=0.3))
    ladder = Cascade([Step(("alpha", "no-such-model"), V.check(lambda t: True)), Step(("gamma",))])
    async with router(up.url) as r:
        with pytest.raises(UnknownModelError):
            await r.chat("hi", cascade=ladder)
        await asyncio.sleep(0.4)
    assert up.seen("alpha-wire") == []


@pytest.mark.parametrize("extra", [{"race": 2}, {"hedge": True}])
async def test_a_cascade_cannot_also_race_or_hedge(up: LocalUpstream, extra: Any) -> None:
    async with router(up.url) as r:
        with pytest.raises(ConfigError, match="cannot also race or hedge"):
            await r.chat("hi", cascade=Cascade([Step(("alpha",))]), **extra)


@pytest.mark.parametrize("part", ["head", "body"])
def test_a_catalogue_download_is_held_to_its_timeout(part: str) -> None:
    class Trickle(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with contextlib.suppress(OSError):  # the client hangs up, as it should
                self._trickle()

        def _trickle(self) -> None:
            if part == "head":  # a head that never ends, a byte at a time
                for b in b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-slow: " + b"a" * 20:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.3)
                return
            self.send_response(200)
            self.send_header("content-length", "100")
            self.end_headers()
            for _ in range(20):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.3)

        def log_message(self, *a: Any) -> None: ...

    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t = time.monotonic()
        with pytest.raises(ConfigError, match="not downloaded within 1s"):
            _fetch(f"http://127.0.0.1:{server.server_address[1]}/models", 1.0)
        assert time.monotonic() - t < 3.0
    finally:
        server.shutdown()
        server.server_close()


async def test_a_cascade_does_not_start_a_step_the_request_slo_has_no_time_for() -> None:
    async with LocalUpstream() as up:
        no = V.regex(r"NEVER", name="never")
        ladder = Cascade([Step(("alpha",), no), Step(("beta",), no), Step(("gamma",))])
        r = Router(
            registry(up.url, p95_ms=300.0),
            Policy(quality_floor=0.5, max_fallbacks=3, cascades={"*": ladder}),
        ).configure(execution=ExecutionConfig(read_timeout_s=2.0, attempt_timeout_s=5.0))
        async with r:
            await r.chat("warm up")
            up.default = reply("hello", latency=0.25)
            res = await r.chat("hi", cascade="auto", latency_slo_ms=500)
    assert res.cascade.budget_hit == "latency"
    assert len(up.seen("beta-wire")) == 0  # 300 ms p95 with ~240 ms left: not started


async def test_agreement_counts_one_vote_per_model(up: LocalUpstream) -> None:
    up.default = reply("The answer is B")
    agree = V.agreement(V.choice_letter, min_agree=2)
    ladder = Cascade([Step(("alpha",), agree), Step(("alpha",), agree), Step(("delta",))])
    async with router(up.url) as r:
        res = await r.chat("Which? A) x B) y", cascade=ladder)
    assert res.model == "delta" and len(up.seen("delta-wire")) == 1


async def test_a_request_deadline_does_not_refuse_a_ladder_step_with_no_p95(
    up: LocalUpstream,
) -> None:
    # the deadline rules out a step whose known p95 cannot fit; a model with no p95 may
    # start (its calls are cut off by the deadline), as without one
    async with Router(registry(up.url, p95_ms=0.0)) as r:
        ladder = Cascade([Step(("alpha",), V.check(lambda t: False)), Step(("gamma",))])
        res = await r.chat("hi", cascade=ladder, timeout=30)
    assert res.model == "gamma"


async def test_a_budgeted_probe_run_goes_on_after_an_unbilled_error(up: LocalUpstream) -> None:
    from satisfice.testing import status

    up.script("delta-wire", *[status(503)] * 40)
    async with router(up.url, max_retries=0) as r:
        rep = await run_probes(r, ["delta"], budget_usd=1.0)
    out = rep.to_dict()
    assert rep.stopped is None and out["spent_usd"] == 0.0 and rep.errors["delta"] >= 9


async def test_a_step_call_raising_no_provider_error_cancels_its_siblings() -> None:
    from satisfice.cascade import _calls

    cancelled = []

    async def call(model: str, msgs: Any) -> Any:
        if model == "bad":
            raise RuntimeError("not a provider failure")
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(model)
            raise

    with pytest.raises(RuntimeError, match="not a provider failure"):
        await _calls(call, ("slow", "bad"), [], [])
    assert cancelled == ["slow"]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


def test_a_verdict_confidence_that_is_a_numpy_float_is_kept_as_a_float() -> None:
    import numpy as np

    from satisfice._verdict import _well_formed

    v = _well_formed(Verdict(True, np.float32(0.75), "ok"), "numpy check")  # type: ignore[arg-type]
    assert v.passed and type(v.confidence) is float and v.confidence == 0.75
