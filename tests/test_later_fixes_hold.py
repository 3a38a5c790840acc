"""A second look at the session's later fixes (a check's room, the report's keys, streamed
tool call ids, the shutdown's deadline, in flight until recorded), as reviewed. Every test
here failed on the code it was written against; each docstring says the defect and what
should hold instead."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from satisfice import Policy, Router
from satisfice import validators as v
from satisfice.cascade import Cascade, Step
from satisfice.testing import LocalUpstream, reply

from .chat_support import registry, wire

ASK = [{"role": "user", "content": "What is 2+2?"}]


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


# 1: room_for -------------------------------------------------------------------------------
def test_a_checks_second_small_call_has_the_room_the_first_did_not_spend(
    up: LocalUpstream,
) -> None:
    """Defect: a request capped at max_cost_usd=$0.05 is checked by a check that asks the
    router twice, one after the other (router.chat(allow=delta, max_tokens=10), about
    $0.00005 each: together 0.2% of the cap). `room_for` gives the first call, which asked
    for no cap, the whole room and keeps it granted after that call has answered, so the
    second call finds "no room" (NoRouteError) and the check fails, though the request has
    spent well under its cap. Expected: an earlier call that has answered holds what it
    was billed, not the whole room: the second call is made, and the check (and request)
    succeed on alpha."""
    router: Router
    errors: list[str] = []

    async def two_asks(answer: v.Answer, ctx: Any) -> bool:
        for _ in range(2):
            try:
                await router.chat([{"role": "user", "content": "grade: 4"}], allow=("delta",),
                                  max_tokens=10)  # fmt: skip
            except Exception as e:  # said by the assertion
                errors.append(f"{type(e).__name__}: {e}")
                raise
        return True

    ladder = Cascade([Step(("alpha",), two_asks), Step(("gamma",))])
    router = Router(registry(up.url), Policy(quality_floor=0.0, cascades={"*": ladder}))
    up.script(wire("alpha"), reply("4"))
    up.script(wire("gamma"), reply("4"))
    up.script(wire("delta"), reply("yes"), reply("yes"))

    async def go() -> Any:
        async with router:
            return await router.chat(ASK, cascade="auto", max_tokens=100, max_cost_usd=0.05)

    r = _run(go())
    assert not errors and r.model == "alpha", (
        f"the check's second $0.00005 call under a $0.05 cap failed: {errors}; answered by "
        f"{r.model}, total ${r.total_cost_usd}"
    )


def test_routed_judge_calling_through_the_router_is_served_under_a_cap(
    up: LocalUpstream,
) -> None:
    """Defect: `routed_judge(router, call)` with `call` asking the same router for the
    routed model (router.chat(msgs, allow=(model,))), judging a request capped at
    max_cost_usd=$0.05: routed_judge's `room_for` grants its routing the whole room (it
    asked for no cap) and never gives it back, though routing spends nothing; the call's
    own router.chat then gets `room_for` again, finds nothing left and raises NoRouteError
    ("no room"): every such judge fails under any cap, and the request escalates to gamma.
    Expected: routing within the room takes none of it; the judge's call is made and its
    "yes" accepts alpha's answer."""
    from satisfice.cascade import routed_judge

    async def call(model: str, messages: list[dict[str, Any]]) -> v.Answer:
        r = await router.chat(messages, allow=(model,), max_tokens=10)
        return v.Answer(r.model, r.text)

    router = Router(registry(up.url), Policy(quality_floor=0.0))
    judge = v.judge(routed_judge(router, call, quality_floor=0.0, allow=("delta",)), "right?")
    ladder = Cascade([Step(("alpha",), judge), Step(("gamma",))])
    up.script(wire("alpha"), reply("4"))
    up.script(wire("gamma"), reply("4"))
    up.script(wire("delta"), reply("right.\nVERDICT: PASS\nCONFIDENCE: 90"))

    async def go() -> Any:
        async with router:
            return await router.chat(ASK, cascade=ladder, max_tokens=100, max_cost_usd=0.05)

    r = _run(go())
    seen = len(up.seen(wire("delta")))
    assert seen == 1 and r.model == "alpha", (
        f"the routed judge's call was sent {seen} time(s); answered by {r.model}; "
        f"attempts {[(a.model, a.outcome, a.error) for a in r.attempts]}"
    )


# 2: report keys ----------------------------------------------------------------------------
def test_report_keys_named_like_the_keyless_row_keep_rows_of_their_own() -> None:
    """Defect: `report.summarize`'s per-key rows tell a key named "(no key)" apart from the
    keyless row by naming it "(no key) " (a space after): a second key that is itself named
    "(no key) " lands on the same row. Two served keys of two teams, one request each
    ($1 and $2), show as one key of 2 requests, $3, under the first key's team; the other
    team's key and spend are gone from "keys". Expected: every distinct key name has a
    row of its own (3 rows here: the keyless requests, and each key), with its own team."""
    from satisfice.report import summarize

    rows = [
        {"api_key": None, "team": None, "outcome": "ok", "model": "m", "cost_usd": 0.5},
        {"api_key": "(no key)", "team": "red", "outcome": "ok", "model": "m", "cost_usd": 1.0},
        {"api_key": "(no key) ", "team": "blue", "outcome": "ok", "model": "m", "cost_usd": 2.0},
    ]
    keys = summarize(rows)["keys"]
    assert len(keys) == 3, f"3 distinct key names (keyless included), report rows: {keys}"
    assert sorted(k["team"] or "-" for k in keys) == ["-", "blue", "red"], keys


def test_report_two_keys_of_one_name_in_two_teams_keep_their_teams_spend() -> None:
    """Defect: key names are not unique (the admin API's POST /admin/keys takes any name;
    each key has its own id), and `report.summarize` keys its rows by name alone, with the
    team of the name's first request: keys "ci" of team red ($1) and "ci" of team blue ($2)
    show as one row "ci", team red, $3; blue's $2 is reported as red's spend. Expected:
    each team's spend stays on a row of its team (a row per key, or per key and team)."""
    from satisfice.report import summarize

    rows = [
        {"api_key": "ci", "team": "red", "outcome": "ok", "model": "m", "cost_usd": 1.0},
        {"api_key": "ci", "team": "blue", "outcome": "ok", "model": "m", "cost_usd": 2.0},
    ]
    keys = summarize(rows)["keys"]
    by_team: dict[Any, float] = {}
    for k in keys:
        by_team[k["team"]] = by_team.get(k["team"], 0.0) + (k["cost_usd"] or 0.0)
    assert by_team == {"red": 1.0, "blue": 2.0}, f"report's key rows: {keys}"


# 5: tool call ids --------------------------------------------------------------------------
def test_a_streamed_answer_with_two_whole_calls_of_one_id_keeps_both_calls() -> None:
    """Defect: an OpenAI-compatible upstream that streams each tool call whole, with no
    `index` (as Gemini's does), and gives two parallel calls one id ("call_0", the case
    `_distinct_ids` was made for): the stream reader takes the repeated id for the same
    call and appends the second call's arguments to the first's. The stream's result is one
    call, get_weather('{"city": "Paris"}{"city": "Rome"}') (not JSON), where the same
    answer unstreamed gives two calls with ids of their own. Expected: two tool calls,
    Paris and Rome, each with valid JSON arguments and a distinct id."""
    from .chat_support import streamed_from_raw

    calls = [{"id": "call_0", "type": "function",
              "function": {"name": "get_weather", "arguments": json.dumps({"city": c})}}
             for c in ("Paris", "Rome")]  # fmt: skip
    res = streamed_from_raw([{"tool_calls": [calls[0]]}, {"tool_calls": [calls[1]]}])
    got = [(c.id, c.arguments) for c in res.tool_calls]
    assert len(got) == 2 and len({i for i, _ in got}) == 2, f"tool calls streamed: {got}"
    assert [json.loads(a)["city"] for _, a in got] == ["Paris", "Rome"], got


# 7: shutdown's settlement deadline ---------------------------------------------------------
def test_a_second_servers_shutdown_retries_missed_settlements_within_its_own_grace() -> None:
    """Defect: `_http.stopping_since()` is process-wide and set once, by the first server
    whose graceful shutdown met an open connection; it is never reset. A second server in
    the same process (tests, an embedded or restarted server) takes that old moment as its
    own shutdown's start: `Service.shutdown` computes its settlement deadline from it, a
    deadline long past, so a settlement the store missed (Redis away for a moment) is tried
    once and dropped ("settlements_lost"), its spend never counted, though this server's
    grace had seconds left. Expected: the second server's shutdown retries the missed
    settlement within its own grace (the store is back 0.5 s later), and settles it."""
    import time

    import httpx

    from satisfice.server import ServerConfig, _http
    from satisfice.server.state import StateUnavailable

    from .server_support import running

    cfg = ServerConfig(shutdown_grace_s=0.5)  # uvicorn's whole shutdown: 1 + DRAIN_S s
    with httpx.Client() as c, running(cfg) as (url, _app):
        c.get(url + "/health")  # a kept-alive connection open as the first server stops
    assert _http.stopping_since() is not None
    time.sleep(5.5)  # the second server starts later than the first's whole shutdown
    settled: list[float] = []
    with running(cfg) as (url, app):
        svc = app.state.service
        back_at = time.monotonic() + 0.5
        real = svc.state.settle

        async def settle(budgets: Any, reserved: float, actual: float) -> None:
            if time.monotonic() < back_at:
                raise StateUnavailable("the budget store is away (for half a second)")
            await real(budgets, reserved, actual)
            settled.append(actual)

        svc.state.settle = settle
        svc.unsettled.append(([], 0.25, 0.125))  # missed while the store was away
    assert settled == [0.125] and not svc.unsettled, (
        f"a settlement the store missed for 0.5 s was dropped at shutdown: settled {settled}, "
        f"left {svc.unsettled}"
    )


# 3: in flight until recorded -----------------------------------------------------------------
def test_a_stream_refused_before_its_first_call_is_recorded_before_it_leaves_in_flight(
    tmp_path: Any,
) -> None:
    """Defect: f4e93ae keeps a chat() in `_in_flight` until its record is queued, but
    `Router._stream` still discards the request from `_in_flight` before `_unstarted`
    records a stream refused while it was routed (NoRouteError: max_cost_usd below every
    model). An aclose() from another thread that lands there sees nothing in flight, closes
    the ledger, and the refusal's record is dropped (`Ledger.dropped` 1, the ledger empty).
    Simulated here: aclose() runs from another thread as the record is about to be queued.
    Expected: the stream is in flight until its record is queued; aclose() waits for it
    and the refusal is in the ledger."""
    import threading

    from satisfice.errors import NoRouteError
    from satisfice.ledger import read_records

    from . import chat_support as cs

    router = Router(cs.registry("http://127.0.0.1:9"), Policy(quality_floor=0.0))
    path = tmp_path / "l.db"
    router.attach(ledger=str(path))
    rec = router._rec
    assert rec is not None
    real = rec.failure
    closer: list[threading.Thread] = []

    def failure(*a: Any, **kw: Any) -> None:
        # another thread's aclose() lands just before the record is queued
        t = threading.Thread(target=lambda: asyncio.run(router.aclose(grace_s=5)))
        t.start()
        t.join(1.0)  # done at once if nothing is in flight; else it waits for us
        closer.append(t)
        real(*a, **kw)

    rec.failure = failure  # type: ignore[method-assign]

    async def go() -> None:
        try:
            async with router.stream(ASK, max_cost_usd=1e-12) as s:
                async for _ in s:
                    pass
        except NoRouteError:
            pass

    _run(go())
    closer[0].join(10)
    ledger = router.ledger
    recs = list(read_records(path))
    assert len(recs) == 1, (
        f"the refused stream's record: {len(recs)} in the ledger, "
        f"dropped {getattr(ledger, 'dropped', '?')}"
    )
