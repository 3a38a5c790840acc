"""A judge's call made through `router.chat()` that ends without an answer is billed to the
request that made the check: cut off by a cascade's latency budget, failed after a call
that timed out, or cut off with its whole request (its caller gone, asyncio.wait_for), in a
cascade's step and in a race's accept check. Each call reached the upstream; the request
had counted it as $0."""

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

from .chat_support import cancel_while_routed, held_routing
from .polling import until_async


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


def _judge(
    judge_router: Router,
    started: asyncio.Event | None = None,
    timeout: float | None = None,
    stream: bool = False,
) -> Any:
    """A judge whose calls go through `judge_router`'s chat() (or stream()) to the model
    "judge"."""

    async def ask(messages: list[dict[str, Any]]) -> v.Answer:
        if started is not None:
            started.set()
        res: Any = None
        if not stream:
            res = await judge_router.chat(messages, allow=["judge"], timeout=timeout)
        else:
            async with judge_router.stream(messages, allow=["judge"], timeout=timeout) as s:
                async for d in s:
                    res = d.result if d.done else None
        assert res is not None
        return v.Answer(res.model, res.text, cost_usd=res.total_cost_usd)

    return v.judge(ask, "ok?")


def _routers(up: LocalUpstream) -> tuple[Router, Router]:
    """A router over alpha and beta, and the judge's own, whose every call hangs."""
    up.default = reply("hello")
    up.script("judge-d", hang())
    r = _router(_model("alpha", up.url, 0.1), _model("beta", up.url, 0.1))
    return r, _router(_model("judge", up.url, 50.0))


async def test_a_judge_cut_off_mid_call_is_billed_to_the_step(up: LocalUpstream) -> None:
    # cut off by the ladder's latency budget: billed at an estimate
    r, judge_router = _routers(up)
    ladder = Cascade([Step(("alpha",), _judge(judge_router)), Step(("beta",))],
                     latency_budget_ms=500)  # fmt: skip
    async with r, judge_router:
        res = await r.chat("hi", cascade=ladder)
    assert res.cascade is not None and res.cascade.budget_hit == "latency"
    (check,) = [a for a in res.attempts if a.outcome == "check"]
    assert (check.model, check.deployment, check.step) == ("judge", "judge", 0)
    assert check.cost_usd is not None and check.cost_usd > 0  # the judge's prompt at $50/1M
    # at an estimate, and said so: the attempt and the request's record (were unmarked)
    assert check.cost_estimated and res.to_record()["cost_estimated"]
    assert res.total_cost_usd == pytest.approx(
        sum(a.cost_usd or 0.0 for a in res.attempts if a.outcome in ("ok", "check")
            or a.cost_estimated)
    )  # fmt: skip
    assert res.cascade.steps[0].cost_usd == pytest.approx(
        check.cost_usd + next(a.cost_usd for a in res.attempts if a.model == "alpha")
    )


async def test_a_judge_that_failed_after_a_billed_timeout_is_billed(up: LocalUpstream) -> None:
    # the judge's chat() raised (its one call timed out after reaching the upstream): the
    # check failed, and what that call was billed went with the error
    r, judge_router = _routers(up)
    # 1 s, not 0.3 s: the call must reach the upstream before it times out, which a stalled
    # CI machine could delay past 0.3 s
    ladder = Cascade([Step(("alpha",), _judge(judge_router, timeout=1.0)), Step(("beta",))])
    async with r, judge_router:
        res = await r.chat("hi", cascade=ladder)
    assert res.model == "beta"  # the failed check escalated
    (check,) = [a for a in res.attempts if a.outcome == "check"]
    assert check.model == "judge" and check.cost_usd is not None and check.cost_usd > 0


async def _cancel_mid_judge(
    r: Router, up: LocalUpstream, started: asyncio.Event, **kw: Any
) -> None:
    task = asyncio.ensure_future(r.chat("hi", **kw))
    await asyncio.wait_for(started.wait(), 5.0)
    # the judge's call has reached the upstream, which hangs (polled, not a fixed sleep a
    # stalled CI machine can outlast)
    assert await until_async(lambda: up.seen("judge-d")), (
        "the judge's call never reached the upstream"
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5.0)


@pytest.mark.parametrize("how", ["cascade", "race"])
async def test_a_judge_cut_off_with_its_request_is_billed(
    up: LocalUpstream, tmp_path: Path, how: str
) -> None:
    r, judge_router = _routers(up)
    started = asyncio.Event()
    check = _judge(judge_router, started)
    kw: dict[str, Any] = (
        {"cascade": Cascade([Step(("alpha",), check), Step(("beta",))])}
        if how == "cascade"
        else {"race": 2, "accept": check}
    )
    async with r.attach(ledger=tmp_path / "l.db"), judge_router:
        await _cancel_mid_judge(r, up, started, **kw)
        assert r.ledger is not None and r.ledger.flush(5.0)
    (rec,) = list(read_records(tmp_path / "l.db"))
    assert rec["error_type"] == "RequestCancelled"
    outcomes = [a["outcome"] for a in rec["attempts"]]
    # was: no "check" attempt; the judge's call (its prompt at $50/1M) cost the request $0
    assert "check" in outcomes, f"the judge's cut-off call is on no attempt: {outcomes}"
    (check,) = [a for a in rec["attempts"] if a["outcome"] == "check"]
    assert check["cost_estimated"] and rec["cost_estimated"]


async def test_a_streaming_judge_cut_off_mid_call_is_billed_to_the_step(
    up: LocalUpstream,
) -> None:
    # as chat()'s: a stream() cut off by the ladder's latency budget, billed at an estimate
    r, judge_router = _routers(up)
    ladder = Cascade([Step(("alpha",), _judge(judge_router, stream=True)), Step(("beta",))],
                     latency_budget_ms=500)  # fmt: skip
    async with r, judge_router:
        res = await r.chat("hi", cascade=ladder)
    assert res.cascade is not None and res.cascade.budget_hit == "latency"
    checks = [a for a in res.attempts if a.outcome == "check"]
    # was: no check attempt; the judge's streamed call cost the request $0
    assert [a.model for a in checks] == ["judge"], res.attempts
    assert checks[0].cost_usd is not None and checks[0].cost_usd > 0


async def test_a_streaming_judge_that_failed_after_a_billed_timeout_is_billed(
    up: LocalUpstream,
) -> None:
    r, judge_router = _routers(up)
    # 1 s, not 0.3 s: the call must reach the upstream before it times out, which a stalled
    # CI machine could delay past 0.3 s
    check = _judge(judge_router, timeout=1.0, stream=True)
    ladder = Cascade([Step(("alpha",), check), Step(("beta",))])
    async with r, judge_router:
        res = await r.chat("hi", cascade=ladder)
    assert res.model == "beta"  # the failed check escalated
    checks = [a for a in res.attempts if a.outcome == "check"]
    assert [a.model for a in checks] == ["judge"], res.attempts
    assert checks[0].cost_usd is not None and checks[0].cost_usd > 0


async def test_a_plain_function_check_runs_in_a_ladder(up: LocalUpstream) -> None:
    """A plain function as a step's check (no `name`): `checked` takes it, and so does the
    ladder's billing of its calls (it read `validator.name`: AttributeError)."""
    r, judge_router = _routers(up)

    def short(answer: v.Answer, ctx: v.Context) -> bool:
        return len(answer.text) < 3  # "hello" is not: the ladder climbs

    ladder = Cascade([Step(("alpha",), short), Step(("beta",))])  # type: ignore[arg-type]
    async with r, judge_router:
        res = await r.chat("hi", cascade=ladder)
    assert res.model == "beta"
    assert res.cascade is not None and res.cascade.steps[0].verdicts[0].reason == "short: fail"


async def test_a_streaming_judge_that_answered_is_billed_once(up: LocalUpstream) -> None:
    """A judge's stream that ended with its result is billed by the judge's own Answer only
    (`_bill_to_check` is for a stream that ended without one)."""
    up.default = reply("VERDICT: PASS\nCONFIDENCE: 0.9")
    r = _router(_model("alpha", up.url, 0.1), _model("beta", up.url, 0.1))
    judge_router = _router(_model("judge", up.url, 50.0))
    judged: list[float] = []

    async def ask(messages: list[dict[str, Any]]) -> v.Answer:
        async with judge_router.stream(messages, allow=["judge"]) as s:
            res = await s.result()
        judged.append(res.total_cost_usd)
        return v.Answer(res.model, res.text, cost_usd=res.total_cost_usd)

    ladder = Cascade([Step(("alpha",), v.judge(ask, "ok?")), Step(("beta",))])
    async with r, judge_router:
        res = await r.chat("hi", cascade=ladder)
    assert res.model == "alpha"
    checks = [a for a in res.attempts if a.outcome == "check"]
    assert len(checks) == 1 and len(judged) == 1, res.attempts
    assert checks[0].cost_usd == pytest.approx(judged[0])
    # the upstream reported its usage: a cost billed as reported is no estimate
    assert not checks[0].cost_estimated


async def test_a_judge_stream_left_early_is_billed_once(up: LocalUpstream) -> None:
    """A judge that leaves its stream after the first piece and fails the answer on that:
    its call is on the bill once (the stream's end, not also a second time)."""
    up.default = reply("VERDICT: FAIL and then a long explanation " * 20)
    r = _router(_model("alpha", up.url, 0.1), _model("beta", up.url, 0.1))
    judge_router = _router(_model("judge", up.url, 50.0))

    async def check(answer: v.Answer, ctx: Any) -> v.Verdict:
        async with judge_router.stream("grade it", allow=["judge"]) as s:
            async for d in s:
                if d.text:
                    break
        return v.Verdict(False, 0.0, "the judge said FAIL first")

    ladder = Cascade([Step(("alpha",), check), Step(("beta",))])
    async with r, judge_router:
        res = await r.chat("hi", cascade=ladder)
    assert res.model == "beta"
    checks = [a for a in res.attempts if a.outcome == "check"]
    assert len(checks) == 1, res.attempts
    assert checks[0].cost_usd is not None and checks[0].cost_usd > 0


async def test_a_failed_stream_outside_a_check_bills_nothing(up: LocalUpstream) -> None:
    from satisfice.testing import status

    up.script("judge-d", status(500), status(500))
    async with _router(_model("judge", up.url, 50.0)) as judge_router:
        with pytest.raises(Exception, match="HTTP 500"):
            async with judge_router.stream("hi", allow=["judge"]) as s:
                await s.result()


@pytest.mark.parametrize("answers", [True, False])
async def test_a_judge_routed_through_the_same_router_is_on_the_record_once(
    up: LocalUpstream, tmp_path: Path, answers: bool
) -> None:
    """A judge whose calls go through the router it checks for had its call on the record
    twice: a record of its own, and the `check` attempt on the request it checked (the
    report summed both). Answered or failed, it is on the checked request's record alone."""
    up.default = reply("VERDICT: PASS\nCONFIDENCE: 0.9")
    if not answers:
        up.script("judge-d", hang())
    r = _router(_model("alpha", up.url, 0.1), _model("beta", up.url, 0.1),
                _model("judge", up.url, 50.0))  # fmt: skip
    r.attach(ledger=tmp_path / "l.jsonl")
    ladder = Cascade(
        [Step(("alpha",), _judge(r, timeout=None if answers else 0.5)), Step(("beta",))]
    )
    async with r:
        res = await r.chat("hi", cascade=ladder)
        assert r.ledger is not None and r.ledger.flush()
    recs = list(read_records(tmp_path / "l.jsonl"))
    assert [x["request_id"] for x in recs] == [res.request_id]
    checks = [a for a in res.attempts if a.outcome == "check"]
    assert len(checks) == 1 and (checks[0].cost_usd or 0) > 0
    assert recs[0]["total_cost_usd"] == pytest.approx(res.total_cost_usd)


async def test_a_checks_own_router_calls_are_billed_to_it_and_a_late_task_is_its_own(
    up: LocalUpstream, tmp_path: Path
) -> None:
    """A check that calls the router for help (not a judge: it reports nothing) had its
    call on no record at all, neither its own nor the checked request's; a task it spawned
    that answered after the check ended was on none either."""
    up.default = reply("fine")
    r = _router(_model("alpha", up.url, 0.1), _model("beta", up.url, 0.1),
                _model("helper", up.url, 50.0))  # fmt: skip
    r.attach(ledger=tmp_path / "l.jsonl")
    late: list[asyncio.Task[Any]] = []

    async def helped(answer: v.Answer, ctx: v.Context) -> bool:
        await r.chat("translate: " + answer.text, allow=["helper"])
        return True

    async def spawning(answer: v.Answer, ctx: v.Context) -> bool:
        async def later() -> Any:
            await asyncio.sleep(0.05)  # past the check's end
            return await r.chat("audit", allow=["helper"])

        late.append(asyncio.create_task(later()))
        return True

    async with r:
        a = await r.chat("hi", cascade=Cascade([Step(("alpha",), helped), Step(("beta",))]))
        b = await r.chat("hi", cascade=Cascade([Step(("alpha",), spawning), Step(("beta",))]))
        audit = await late[0]
        assert r.ledger is not None and r.ledger.flush()
    checks = [x for x in a.attempts if x.outcome == "check"]
    assert len(checks) == 1 and checks[0].model == "helper" and (checks[0].cost_usd or 0) > 0
    assert a.total_cost_usd == pytest.approx(a.attempts[0].cost_usd + checks[0].cost_usd)
    recs = {x["request_id"] for x in read_records(tmp_path / "l.jsonl")}
    assert recs == {a.request_id, b.request_id, audit.request_id}


async def test_a_judge_billed_once_whichever_way_its_calls_went(
    up: LocalUpstream, tmp_path: Path
) -> None:
    """A judge's reply was left off the bill whenever any router call had billed itself
    during its ask: a direct call after a router call that timed out, or a second judge
    running beside a routed one, went unbilled. A check that reports the router call it
    made was billed for it twice. A ladder run outside a router keeps the judge's record."""
    up.default = reply("VERDICT: PASS\nCONFIDENCE: 0.9")
    up.script("judge-d", hang())
    r = _router(_model("alpha", up.url, 0.1), _model("beta", up.url, 0.1),
                _model("judge", up.url, 50.0), _model("helper", up.url, 50.0))  # fmt: skip
    direct = v.Answer("direct", "VERDICT: PASS\nCONFIDENCE: 0.9", 100, 10, cost_usd=1.0)

    async def fell_back(messages: list[dict[str, Any]]) -> v.Answer:
        with pytest.raises(Exception):  # noqa: B017 - the router's call timed out
            await r.chat(messages, allow=["judge"], timeout=0.3)
        return direct

    async def routed(messages: list[dict[str, Any]]) -> v.Answer:
        res = await r.chat(messages, allow=["helper"])
        return v.Answer(res.model, res.text, cost_usd=res.total_cost_usd)

    async def two_judges(answer: v.Answer, ctx: v.Context) -> v.Verdict:
        beside = v.judge(lambda m: _later(direct), "b")
        a, b = await asyncio.gather(v.judge(routed, "a")(answer, ctx), beside(answer, ctx))
        return v.Verdict(a.passed and b.passed, 0.9, "both", (*a.calls, *b.calls))

    async def reports(answer: v.Answer, ctx: v.Context) -> v.Verdict:
        res = await r.chat("help", allow=["helper"])
        return v.Verdict(
            True, 0.9, "ok", (v.Answer(res.model, res.text, cost_usd=res.total_cost_usd),)
        )

    async with r:
        for check, want in ((v.judge(fell_back, "ok?"), {"judge", "direct"}),
                            (two_judges, {"helper", "direct"}), (reports, {"helper"})):  # fmt: skip
            res = await r.chat("hi", cascade=Cascade([Step(("alpha",), check), Step(("beta",))]))
            checks = [a for a in res.attempts if a.outcome == "check"]
            assert sorted(a.model for a in checks) == sorted(want), checks
            assert res.total_cost_usd == pytest.approx(
                sum(a.cost_usd or 0 for a in res.attempts if a.outcome in ("ok", "check"))
            )
    # a ladder run by the caller's own code, no router request around it: no record drops
    r2 = _router(_model("alpha", up.url, 0.1), _model("helper", up.url, 50.0))
    r2.attach(ledger=tmp_path / "own.jsonl")

    async def call(model: str, messages: Any) -> v.Answer:
        res = await r2.chat(messages, allow=[model])
        return v.Answer(res.model, res.text, cost_usd=res.total_cost_usd)

    async def ask2(messages: list[dict[str, Any]]) -> v.Answer:
        return await call("helper", messages)

    async with r2:
        out = await Cascade([Step(("alpha",), v.judge(ask2, "ok?"))]).run(call, "hi")
        assert r2.ledger is not None and r2.ledger.flush()
    models = sorted(x["model"] for x in read_records(tmp_path / "own.jsonl"))
    assert models == ["alpha", "helper"] and out.answer.model == "alpha"


async def _later(answer: v.Answer) -> v.Answer:
    await asyncio.sleep(0.2)  # while the routed judge's call lands on the shared bill
    return answer


async def test_a_judges_reply_is_matched_by_the_task_that_routed_it(
    up: LocalUpstream, tmp_path: Path
) -> None:
    """Matched by model and text, a direct judge beside a routed one that got the same
    words claimed the routed call (its $1 unbilled, the routed one billed twice); a reply
    the judge stripped was billed twice; a judge's call skipped before any upstream wrote
    a failed request of its own."""
    text = "VERDICT: PASS\nCONFIDENCE: 0.9"
    up.default = reply(text)
    r = _router(_model("alpha", up.url, 0.1), _model("beta", up.url, 0.1),
                _model("helper", up.url, 50.0))  # fmt: skip
    r.attach(ledger=tmp_path / "l.jsonl")
    routed_done = asyncio.Event()

    async def routed(messages: list[dict[str, Any]]) -> v.Answer:
        res = await r.chat(messages, allow=["helper"])
        routed_done.set()
        await asyncio.sleep(0.1)  # resumes after the direct judge's reply
        return v.Answer(res.model, res.text.strip(), cost_usd=res.total_cost_usd)

    async def direct(messages: list[dict[str, Any]]) -> v.Answer:
        await routed_done.wait()
        return v.Answer("helper", text, 100, 10, cost_usd=1.0)  # the same words

    async def two(answer: v.Answer, ctx: v.Context) -> v.Verdict:
        a, b = await asyncio.gather(v.judge(routed, "a")(answer, ctx),
                                    v.judge(direct, "b")(answer, ctx))  # fmt: skip
        return v.Verdict(a.passed and b.passed, 0.9, "both", (*a.calls, *b.calls))

    async with r:
        res = await r.chat("hi", cascade=Cascade([Step(("alpha",), two), Step(("beta",))]))
        r.disable("helper")
        skipped = await r.chat(
            "hi", cascade=Cascade([Step(("alpha",), v.judge(routed, "c")), Step(("beta",))])
        )
        assert r.ledger is not None and r.ledger.flush()
    costs = sorted(a.cost_usd or 0 for a in res.attempts if a.outcome == "check")
    assert len(costs) == 2 and costs[1] == 1.0 and costs[0] < 0.01
    ids = {x["request_id"] for x in read_records(tmp_path / "l.jsonl")}
    assert ids == {res.request_id, skipped.request_id}


@pytest.mark.parametrize("how", ["chat", "stream"])
async def test_a_judge_request_cancelled_while_routed_is_no_request_of_its_own(
    up: LocalUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A judge's chat() or stream() inside a router request's check, cancelled (its
    request's caller gone) while the judge's prompt is routed on a worker thread: no call
    was made and nothing is on the check's bill; chat() then writes no record of its own
    (_bill_to_check -> routed_call(None) -> not own). stream() must do the same."""

    up.default = reply("hello")
    r = _router(_model("alpha", up.url, 0.1), _model("beta", up.url, 0.1))
    judge_router = _router(_model("judge", up.url, 50.0))
    routing, gate = held_routing(monkeypatch, only=judge_router)  # the judge's prompt
    ladder = Cascade([Step(("alpha",), _judge(judge_router, stream=how == "stream")),
                      Step(("beta",))])  # fmt: skip
    try:
        async with r.attach(ledger=tmp_path / "outer.db"), \
                judge_router.attach(ledger=tmp_path / "judge.db"):  # fmt: skip
            await cancel_while_routed(r.chat("hi", cascade=ladder), routing)
            gate.set()
            assert r.ledger is not None and r.ledger.flush(5.0)
            assert judge_router.ledger is not None and judge_router.ledger.flush(5.0)
    finally:
        gate.set()
    (outer,) = list(read_records(tmp_path / "outer.db"))
    assert outer["error_type"] == "RequestCancelled"
    assert not up.seen("judge-d")
    judge_recs = list(read_records(tmp_path / "judge.db"))
    assert judge_recs == [], (
        f"the judge's {how}() cancelled while routed inside a check wrote a request of "
        f"its own: {[(x['error_type'], x['error']) for x in judge_recs]}"
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_a_judges_estimated_bill_is_not_called_the_upstreams_usage(
    up: LocalUpstream, stream: bool
) -> None:
    """The judge's routed call answered without the upstream's usage: satisfice counted
    it, and the check's attempt is cost_estimated. Its usage had said source "provider"
    all the same: the record said both "estimated" and "the upstream's own figures"."""
    up.default = reply("hello")
    up.script("judge-d", reply("VERDICT: FAIL\nCONFIDENCE: 90", usage=False))
    r = _router(_model("alpha", up.url, 0.1), _model("beta", up.url, 0.1))
    judge_router = _router(_model("judge", up.url, 50.0))
    ladder = Cascade([Step(("alpha",), _judge(judge_router, stream=stream)), Step(("beta",))])
    async with r, judge_router:
        res = await r.chat("hi", cascade=ladder)
    (check,) = [a for a in res.attempts if a.outcome == "check"]
    assert check.cost_estimated  # the change: marked
    assert check.usage is not None
    rec = next(a for a in res.to_record()["attempts"] if a["outcome"] == "check")
    assert rec["usage"]["source"] != "provider", (
        f"check attempt: cost_estimated={rec['cost_estimated']} but usage={rec['usage']}"
    )
