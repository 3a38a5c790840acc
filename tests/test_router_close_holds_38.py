"""Router.close() called on a running event loop (`with Router(...) as r:` in async code, a
framework's synchronous shutdown hook): it waits for no request that loop runs, as none of
them can run while it waits. Failed on the code before its fix."""

from __future__ import annotations

import asyncio

import pytest

import satisfice.router as router_module
from satisfice import Policy, Router
from satisfice.testing import LocalUpstream, reply

from .chat_support import ORDER, registry


async def test_close_on_a_loop_waits_for_none_of_that_loops_requests(
    up: LocalUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A request in flight on this loop, and close() called on it: the grace wait polled for
    # that request, which the blocked loop could not run, until the grace ran out (30 s of a
    # server's loop by default, the request no nearer its end), then closed all the same.
    # Its clock here moves a minute a read, so a wait through the grace ends all the same.
    for m in ORDER:
        up.script(f"{m}-wire", reply("slow", latency=0.3))
    r = Router(registry(up.url), Policy(quality_floor=0.5))
    task = asyncio.ensure_future(r.chat("hi"))
    while not up.requests:  # on its way: in flight on this loop
        await asyncio.sleep(0.01)
    now = [0.0]

    def clock() -> float:
        now[0] += 60.0
        return now[0]

    monkeypatch.setattr(router_module, "perf_counter", clock)
    r.close(grace_s=3600.0)
    assert now[0] < 3600.0, f"close() waited {now[0]:.0f} s (fake) for this loop's request"
    monkeypatch.undo()
    assert (await task).text == "slow"  # ended once its loop ran again
    assert up.wait_idle(), "its connection was kept past close()"
