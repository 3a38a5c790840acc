"""An adversarial review of the fortieth session's request-path shortcuts: what held
differently from before them."""

from __future__ import annotations

import asyncio

from satisfice._watchdog import Deadlines, Watchdog


async def test_a_clock_set_on_the_loop_itself_times_the_deadlines() -> None:
    """A loop whose `time` is set on the loop (a virtual clock's way, mock.patch.object):
    its timers run on that clock, so its deadlines are due on it too. Read off the loop's
    class (BaseEventLoop.time, so monotonic()), a deadline 60 s away on a clock 1,000 s
    ahead was 940 s overdue as it began: it fired at once."""
    loop = asyncio.get_running_loop()
    real = loop.time
    loop.time = lambda: real() + 1000.0  # type: ignore[method-assign]
    try:
        d = Deadlines(loop)
        w = d.enter(60.0)
        try:
            await asyncio.sleep(0.01)  # not cancelled: the deadline is a minute away
        finally:
            d.leave(w)
        wd = Watchdog()
        try:
            assert await wd.wait(asyncio.sleep(0.01, "in time"), 60.0) == "in time"
        finally:
            wd.close()
    finally:
        del loop.time  # type: ignore[method-assign]
