"""The one-timer read timeout: it fires only on a wait that lasts too long, whatever
happens between waits, and never swallows a cancellation that came from elsewhere."""

from __future__ import annotations

import asyncio

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


async def test_requests_leave_no_timer_behind(up: LocalUpstream) -> None:
    """Found by review: the response head's watchdog was never closed, so each request left
    a timer for the whole read timeout, holding its finished task (and its result)."""
    from satisfice.transport import PooledTransport

    for _ in range(20):
        up.script("m", reply("ok"))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(transport=PooledTransport()) as c:

        async def one() -> int:
            r = await c.post(up.url + "/v1/chat/completions", json=body, timeout=600.0)
            return r.status_code

        assert await asyncio.gather(*(one() for _ in range(20))) == [200] * 20
        assert _live_watchdog_timers(asyncio.get_running_loop()) == []


def test_deadlines_time_out_each_task_on_its_own_due_time_with_one_timer() -> None:
    async def main() -> list[str]:
        d = Deadlines(asyncio.get_running_loop())
        out: list[str] = []

        async def one(name: str, takes: float, limit: float) -> None:
            try:
                await d.wait(asyncio.sleep(takes), limit)
                out.append(f"{name} done")
            except TimeoutError:
                assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
                out.append(f"{name} timed out")

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
