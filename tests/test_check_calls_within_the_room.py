"""A check's router calls (a judge's) within what the enclosing request's cost cap or budget
hold leaves, as reviewed a second time. Real parts: the project's Router and
executor against the scripted `LocalUpstream` (a real HTTP server on 127.0.0.1), and the
real `satisfice serve` app driven by the official `openai` client where the server is
involved. Every test here failed on the code it was written against; each docstring says the
defect and what should hold instead."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from satisfice import Policy, Router
from satisfice import validators as v
from satisfice.cascade import Cascade, Step, routed_judge
from satisfice.errors import NoRouteError
from satisfice.testing import LocalUpstream, reply

from .chat_support import registry, wire
from .server_support import ADMIN, serving

ASK = [{"role": "user", "content": "What is 2+2?"}]


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


# 1 ------------------------------------------------------------------------------------------
def test_two_router_calls_in_one_check_stay_within_the_requests_cost_cap(
    up: LocalUpstream,
) -> None:
    """Defect: a request with max_cost_usd=$0.005 climbs [alpha, checked by a check that
    asks the same router twice (router.chat(allow=delta, max_tokens=1000), ~$0.004 each)]
    -> [gamma]. `_within_room` caps each call by `Run.room()`, but room() counts only
    `run.attempts` and in-flight holds: the first judge call's bill sits on the check's
    `_Bill` until the check ends, so the second call sees the same room. Both are made
    (max_tokens 1000 each on the wire) and the request's total_cost_usd is $0.008,
    1.6x its cap.
    Expected: README "A check's call through a router ... is capped by what the request's
    cost cap ... leaves": the check's calls together stay within the cap (the second is
    capped by what the first left, or refused), total_cost_usd <= $0.005."""
    router: Router

    async def two_asks(answer: v.Answer, ctx: Any) -> v.Verdict:
        for _ in range(2):
            await router.chat([{"role": "user", "content": "grade: 4"}], allow=("delta",),
                              max_tokens=1000)  # fmt: skip
        return v.Verdict(False, 0.9, "no")

    ladder = Cascade([Step(("alpha",), two_asks), Step(("gamma",))])
    router = Router(registry(up.url), Policy(quality_floor=0.0, cascades={"*": ladder}))
    up.script(wire("alpha"), reply("4"))
    up.script(wire("gamma"), reply("4"))
    up.script(wire("delta"), reply("x " * 999), reply("x " * 999))

    async def go() -> Any:
        async with router:
            return await router.chat(ASK, cascade="auto", max_tokens=100, max_cost_usd=0.005)

    r = _run(go())
    sent = [s.body.get("max_tokens") for s in up.seen(wire("delta"))]
    assert r.total_cost_usd is not None and r.total_cost_usd <= 0.005 + 1e-9, (
        f"a request capped at $0.005 cost ${r.total_cost_usd:.6f}; its check's delta calls "
        f"were sent max_tokens {sent}; attempts "
        f"{[(a.model, a.outcome, a.cost_usd) for a in r.attempts]}"
    )


# 2 ------------------------------------------------------------------------------------------
def test_a_task_a_check_spawned_is_not_capped_by_the_finished_requests_room(
    up: LocalUpstream,
) -> None:
    """Defect: a check spawns a task (asyncio.create_task) that calls router.chat() after
    the check and its request have ended. README: "A task a check spawns that calls after
    the check has ended is a request of its own". But the task's copied context still
    holds CHECK_BILL (a closed `_Bill`, not None) and its room (the finished request's
    `Run.room`): `_prepare` applies `_within_room`, and the task's own uncapped request is
    refused: NoRouteError "... delta: est $0.004009 > max_cost $0.000999" (a max_cost it
    never set: the $0.001 cap of a request that is over).
    Expected: the spawned task's call is a request of its own, not capped by a finished
    request's cap: it is routed to delta and answered."""
    router: Router
    go_on = asyncio.Event()
    out: dict[str, Any] = {}
    tasks: list[asyncio.Task[None]] = []

    async def later() -> None:
        await go_on.wait()
        try:
            r = await router.chat([{"role": "user", "content": "summarise"}],
                                  allow=("delta",), max_tokens=1000)  # fmt: skip
            out["model"] = r.model
        except Exception as e:  # said by the assertion
            out["error"] = f"{type(e).__name__}: {e}"

    async def spawns(answer: v.Answer, ctx: Any) -> bool:
        tasks.append(asyncio.create_task(later()))
        return True

    ladder = Cascade([Step(("alpha",), spawns)])
    router = Router(registry(up.url), Policy(quality_floor=0.0, cascades={"*": ladder}))
    up.script(wire("alpha"), reply("4"))
    up.script(wire("delta"), reply("x " * 999))

    async def go() -> None:
        async with router:
            await router.chat(ASK, cascade="auto", max_tokens=100, max_cost_usd=0.001)
            go_on.set()  # the request is over: the task calls now
            await tasks[0]

    _run(go())
    assert out.get("model") == "delta", (
        f"a task spawned by a check, calling after its request ended, got: {out}"
    )


# 3 ------------------------------------------------------------------------------------------
def test_routed_judges_routing_is_within_the_requests_room(up: LocalUpstream) -> None:
    """Defect: `cascade.routed_judge(router, call, allow=("delta",))` judges a step of a
    request capped at max_cost_usd=$0.001. README names routed_judge as capped by what the
    request's cost cap leaves, and refused when it cannot fit. But routed_judge routes
    with `router.route()`, which never applies `_within_room` (only `_prepare` does):
    delta is routed (router.route(..., max_cost_usd=0.001) refuses it: "delta: est
    $0.001208 > max_cost $0.001000") and its call made; the request, capped at $0.001,
    ends at total_cost_usd $0.012.
    Expected: routed_judge's routing is within the room: the judge is refused (a failed
    check), its call never made, and the request stays within its cap."""
    called: list[str] = []

    async def call(model: str, messages: list[dict[str, Any]]) -> v.Answer:
        called.append(model)  # a direct call, priced as delta would bill 3,000 tokens
        return v.Answer(model, "VERDICT: PASS\nCONFIDENCE: 90", 10, 3000, 0.012)

    router = Router(registry(up.url), Policy(quality_floor=0.0))
    judge = v.judge(routed_judge(router, call, quality_floor=0.0, allow=("delta",)), "right?")
    router.update(policy=Policy(quality_floor=0.0,
                                cascades={"*": Cascade([Step(("alpha",), judge)])}))  # fmt: skip
    up.script(wire("alpha"), reply("4"))
    with pytest.raises(NoRouteError):  # the routing the room allows: delta does not fit
        router.route(ASK, allow=("delta",), max_cost_usd=0.001, quality_floor=0.0)

    async def go() -> Any:
        async with router:
            return await router.chat(ASK, cascade="auto", max_tokens=100, max_cost_usd=0.001)

    r = _run(go())
    assert called == [], (
        f"routed_judge routed and called {called} inside a request capped at $0.001 "
        f"(total_cost_usd ${r.total_cost_usd})"
    )


# 4 ------------------------------------------------------------------------------------------
def test_a_served_checks_three_router_calls_stay_within_the_keys_budget(
    master: None, up: LocalUpstream, tmp_path: Path
) -> None:
    """Defect: served ladder [alpha, checked by a check asking the router three times
    (allow=delta, max_tokens=500: $0.002 each)] -> [gamma]; key budget $0.005; request
    max_tokens=2000 (hold ~$0.0048: alpha + gamma). Each check call is capped by the hold's
    room, but the room never subtracts the check's earlier calls (they sit on the check's
    bill until it ends): all three are made, and the key's spend settles at ~$0.006, past
    its $0.005 limit, from one request admitted within it.
    Expected: the check's calls together stay within the hold: spend <= $0.005."""
    router: Router

    async def three_asks(answer: v.Answer, ctx: Any) -> v.Verdict:
        for _ in range(3):
            await router.chat([{"role": "user", "content": "grade: 4"}], allow=("delta",),
                              max_tokens=500)  # fmt: skip
        return v.Verdict(False, 0.9, "no")

    ladder = Cascade([Step(("alpha",), three_asks), Step(("gamma",))])
    router = Router(registry(up.url), Policy(quality_floor=0.0, cascades={"*": ladder}))
    up.script(wire("alpha"), reply("4"))
    up.script(wire("gamma"), reply("4"))
    up.script(wire("delta"), *(reply("x " * 499) for _ in range(3)))
    with serving(router, tmp_path) as (url, svc):
        k = httpx.post(url + "/admin/keys", headers=ADMIN,
                       json={"name": "k", "budget_usd": 0.005, "period": "day"})  # fmt: skip
        assert k.status_code == 201, k.text
        with openai.OpenAI(base_url=url + "/v1", api_key=k.json()["key"], max_retries=0,
                           timeout=30) as c:  # fmt: skip
            c.chat.completions.create(model="auto", max_tokens=2000, messages=ASK,
                                      extra_body={"cascade": "auto"})  # fmt: skip
        limit = time.monotonic() + 10
        while True:
            (row,) = httpx.get(url + "/admin/spend", headers=ADMIN).json()["budgets"]
            if (svc.in_flight == 0 and row["held_usd"] == 0) or time.monotonic() > limit:
                break
            time.sleep(0.05)
    sent = [s.body.get("max_tokens") for s in up.seen(wire("delta"))]
    assert row["spent_usd"] <= 0.005 + 1e-9, (
        f"one request admitted under a $0.005 budget left it at ${row['spent_usd']:.6f}; "
        f"its check's delta calls were sent max_tokens {sent}"
    )
