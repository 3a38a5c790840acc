"""An adversarial review of the fortieth session's request-path shortcuts: what held
differently from before them."""

from __future__ import annotations

import asyncio

import pytest

from satisfice._watchdog import Deadlines, Watchdog
from satisfice.errors import AllAttemptsFailedError
from satisfice.testing import LocalUpstream, reply

from .chat_support import router


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


async def test_a_stream_whose_idle_limit_runs_out_in_line_for_a_connection_is_not_billed(
    up: LocalUpstream,
) -> None:
    """The stream's idle limit runs from its start: with the pool's one connection held by a
    slow answer, it runs out while the stream's request waits in line. That request never
    reached the upstream: not billed, and its deployment not marked down for the router's
    own limit. (The limit's TimeoutError had lost how far the request got, which the
    transport marks on the cancellation it cut in with: billed its prompt, a failure on
    the deployment's health.)"""
    r = router(up.url, max_connections=1, stream_idle_timeout_s=0.4)
    up.script("alpha-wire", reply("slow", latency=1.5), reply("fast"))
    held = asyncio.ensure_future(r.chat("first", allow=["alpha"], timeout=5))
    await asyncio.sleep(0.3)  # the first holds the one connection
    with pytest.raises(AllAttemptsFailedError) as ei:
        async for _ in r.stream("second", allow=["alpha"], timeout=5):
            pass
    (a,) = ei.value.attempts
    assert a.error_type == "UpstreamTimeoutError" and "stream_idle_timeout_s" in (a.error or "")
    assert a.cost_usd in (None, 0.0), a
    assert (await held).text == "slow"
    assert r.health()["alpha/alpha-dep"]["failures"] == 0
    await r.aclose()
