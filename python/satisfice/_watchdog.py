"""A timeout for many awaits in one task, with one timer instead of one per await.

`asyncio.timeout()` schedules a timer handle and cancels it again around every await it
wraps (a heap push, and a cancelled handle left in the loop's heap). Reading a stream chunk
by chunk with a timeout per read, that was most of the client's CPU per chunk
(benches/bench_stream.py). Here a wait only records its due time; the one timer, when it
fires early, re-arms itself to the latest due time, and cancels the task only if a wait is
still pending past its due time. Cancellation is then handled as `asyncio.timeout` does:
the task is uncancelled and the wait raises TimeoutError, unless someone else also
cancelled it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["Watchdog"]


class Watchdog:
    """`await wd.wait(aw, timeout)`: `aw`, or TimeoutError if it takes longer than `timeout`
    seconds (None: no limit). Use from one task at a time; `close()` when done."""

    __slots__ = ("_cancelling", "_due", "_expired", "_handle", "_loop", "_task", "_waiting")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._waiting = False
        self._expired = False
        self._cancelling = 0

    async def wait(self, aw: Awaitable[T], timeout: float | None) -> T:
        if timeout is None:
            return await aw
        task = asyncio.current_task()
        if task is not self._task or self._loop is None:
            self.close()
            self._task, self._loop = task, asyncio.get_running_loop()
        assert task is not None and self._loop is not None
        due = self._loop.time() + max(timeout, 0.0)
        self._due = due
        h = self._handle
        if h is None or h.when() > due:  # no timer yet, or it would fire too late
            if h is not None:
                h.cancel()
            self._handle = self._loop.call_at(due, self._fire)
        self._cancelling = task.cancelling()
        self._waiting = True
        try:
            return await aw
        except asyncio.CancelledError:
            if self._expired:
                self._expired = False
                if task.uncancel() <= self._cancelling:
                    raise TimeoutError from None
            raise
        finally:
            self._waiting = False
            if self._expired:  # it fired, but `aw` swallowed the cancellation: undo ours
                self._expired = False
                task.uncancel()

    def _fire(self) -> None:
        self._handle = None
        if not self._waiting or self._loop is None or self._task is None:
            return  # the next wait arms a new timer
        if self._loop.time() < self._due:
            self._handle = self._loop.call_at(self._due, self._fire)
            return
        self._expired = True
        self._task.cancel()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
