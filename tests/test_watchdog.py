"""The one-timer read timeout: it fires only on a wait that lasts too long, whatever
happens between waits, and never swallows a cancellation that came from elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import httpx
import pytest

from satisfice._watchdog import Deadlines, Watchdog
from satisfice.testing import LocalUpstream, reply


def test_a_slow_wait_times_out_and_the_task_goes_on() -> None:
    async def main() -> str:
        wd = Watchdog()
        with pytest.raises(TimeoutError):
            await wd.wait(asyncio.sleep(1.0), 0.05)
        # the task was uncancelled: it can keep awaiting, and the watchdog keeps working
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        out = await wd.wait(asyncio.sleep(0.01, "ok"), 0.5)
        wd.close()
        return out

    assert asyncio.run(main()) == "ok"


def test_many_quick_waits_outlast_the_timeout_and_idle_time_between_is_free() -> None:
    async def main() -> int:
        wd = Watchdog()
        n = 0
        # 60 x 10 ms = 0.6 s of waiting, twice the timeout, each wait far inside it (a CI
        # machine once stalled a 10 ms sleep past 0.1 s: the margin is 0.29 s now)
        for _ in range(60):
            await wd.wait(asyncio.sleep(0.01), 0.3)
            n += 1
        await asyncio.sleep(0.9)  # the caller busy elsewhere for 3 timeouts: no wait pending
        await wd.wait(asyncio.sleep(0.01), 0.3)
        wd.close()
        return n

    assert asyncio.run(main()) == 60


def test_a_shorter_timeout_than_the_armed_one_still_fires_on_time() -> None:
    async def main() -> float:
        wd = Watchdog()
        await wd.wait(asyncio.sleep(0), 10.0)  # arms a timer 10 s out
        loop = asyncio.get_running_loop()
        t = loop.time()
        with pytest.raises(TimeoutError):
            await wd.wait(asyncio.sleep(5.0), 0.05)
        wd.close()
        return loop.time() - t

    assert asyncio.run(main()) < 1.0


async def _stubborn() -> str:
    """Swallows a cancellation (as a badly written awaitable might) and returns."""
    try:
        await asyncio.sleep(1.0)
    except asyncio.CancelledError:
        return "swallowed"
    return "slept"


@pytest.mark.parametrize("swallowed_first", [False, True])
def test_an_outside_cancel_is_not_turned_into_a_timeout(swallowed_first: bool) -> None:
    """An outside cancel stays a cancel, also after a wait whose awaitable swallowed the
    watchdog's own cancellation (found by review: that expiry stayed recorded, and the next
    outside cancel came out as TimeoutError)."""

    async def main() -> None:
        wd = Watchdog()

        async def reader() -> None:
            if swallowed_first:
                assert await wd.wait(_stubborn(), 0.02) == "swallowed"
            await wd.wait(asyncio.sleep(5.0), 10.0)  # cancelled from outside below

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        wd.close()

    asyncio.run(main())


def test_no_timeout_means_no_timer() -> None:
    async def main() -> str:
        wd = Watchdog()
        return await wd.wait(asyncio.sleep(0.01, "x"), None)

    assert asyncio.run(main()) == "x"


def _live_watchdog_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    return [
        h
        for h in loop._scheduled  # type: ignore[attr-defined]
        if not h.cancelled() and getattr(h._callback, "__func__", None) is Watchdog._fire
    ]


async def test_requests_leave_no_timer_behind_but_one_per_kept_connection(
    up: LocalUpstream,
) -> None:
    """Found by review: the response head's watchdog was never closed, so each request left
    a timer for the whole read timeout, holding its finished task (and its result). A
    connection's watchdog now serves all its requests, its timer armed once: at most one
    timer per connection kept, none holding a task, a second round of requests on the kept
    connections arming none, and none left once the connections are closed."""
    from satisfice.transport import PooledTransport

    for _ in range(40):
        up.script("m", reply("ok"))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(transport=PooledTransport()) as c:

        async def one() -> int:
            r = await c.post(up.url + "/v1/chat/completions", json=body, timeout=600.0)
            return r.status_code

        assert await asyncio.gather(*(one() for _ in range(20))) == [200] * 20
        first = _live_watchdog_timers(loop)
        assert 1 <= len(first) <= 20
        assert all(h._callback.__self__._task is None for h in first)  # type: ignore[attr-defined]
        assert await asyncio.gather(*(one() for _ in range(20))) == [200] * 20
        assert set(_live_watchdog_timers(loop)) <= set(first)  # (kept: none armed anew)
    assert _live_watchdog_timers(loop) == []


async def _timed(
    wait: Callable[[Awaitable[None], float], Awaitable[None]],
    out: list[str],
    name: str,
    takes: float,
    limit: float,
) -> None:
    """`name`'s wait of `takes` seconds within `limit`, said on `out`: done, or timed out
    (and the task uncancelled)."""
    try:
        await wait(asyncio.sleep(takes), limit)
        out.append(f"{name} done")
    except TimeoutError:
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        out.append(f"{name} timed out")


def test_deadlines_time_out_each_task_on_its_own_due_time_with_one_timer() -> None:
    async def main() -> list[str]:
        d = Deadlines(asyncio.get_running_loop())
        out: list[str] = []

        def one(name: str, takes: float, limit: float) -> Awaitable[None]:
            return _timed(d.wait, out, name, takes, limit)

        # a late due armed first, then an earlier one: the timer is re-armed for it (the
        # margins are wide: a stall past the slow one's due would time both out at once)
        await asyncio.gather(one("slow", 5.0, 1.0), one("quick", 5.0, 0.05), one("ok", 0.01, 3))
        return out

    assert asyncio.run(main()) == ["ok done", "quick timed out", "slow timed out"]


def test_deadlines_leave_an_outside_cancel_alone() -> None:
    async def main() -> None:
        d = Deadlines(asyncio.get_running_loop())
        task = asyncio.create_task(d.wait(asyncio.sleep(1.0), 0.5))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await d.wait(asyncio.sleep(0.01), 1.0)  # still usable

    asyncio.run(main())


def test_tasks_taking_turns_on_one_watchdog_each_get_their_own_timeout() -> None:
    """A kept-alive connection's watchdog serves each of its requests, each its own task:
    the timer armed for one task's long wait fires for the next task's shorter one on time,
    cancels that task alone, and the watchdog keeps working for a third."""

    async def main() -> list[str]:
        wd = Watchdog()
        out: list[str] = []

        def turn(name: str, takes: float, limit: float) -> Coroutine[Any, Any, None]:
            return _timed(wd.wait, out, name, takes, limit)

        await asyncio.create_task(turn("first", 0.01, 600.0))  # arms a timer 10 minutes out
        await asyncio.create_task(turn("second", 5.0, 0.05))  # (not waited out: "done")
        await asyncio.sleep(0.1)  # a timer firing between turns, no wait pending: nothing
        await asyncio.create_task(turn("third", 0.01, 0.3))
        await asyncio.create_task(turn("fourth", 5.0, 0.05))
        wd.close()
        return out

    assert asyncio.run(main()) == [
        "first done", "second timed out", "third done", "fourth timed out"
    ]  # fmt: skip
