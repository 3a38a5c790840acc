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
import math
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["Deadlines", "Watchdog"]

#: `asyncio.current_task(loop)` for a given loop. On Python 3.11 that is a Python function
#: around a lookup in the dict of running tasks the C tasks keep (`asyncio.tasks`'
#: `_current_tasks`): the lookup alone, without the function's frame (about 1,200
#: instructions a call, callgrind). Later versions' current_task is C already.
_current_tasks = getattr(asyncio.tasks, "_current_tasks", None)
current_task: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
    _current_tasks.get
    if sys.version_info < (3, 12) and isinstance(_current_tasks, dict)
    else asyncio.current_task
)


def clock_of(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """`loop.time`, or `time.monotonic` itself where that is all the loop's time() does (the
    standard loops'): the C function, without BaseEventLoop.time's Python frame around it
    (about 800 instructions a read). Another loop (uvloop) keeps its own clock, and so does
    one whose `time` is set on the loop itself (a test's virtual clock): asked of its class,
    such a loop's deadlines had been due on monotonic() while its timers ran on its clock
    (fired at once, or never)."""
    own = getattr(loop.time, "__func__", None)  # (the method the loop's `time` is bound to)
    return time.monotonic if own is asyncio.BaseEventLoop.time else loop.time


class Watchdog:
    """`await wd.wait(aw, timeout)`: `aw`, or TimeoutError if it takes longer than `timeout`
    seconds (None: no limit). Use from one event loop (its first wait's), by one task at a
    time; tasks may take turns (a kept-alive connection's requests, each its own task, share
    its watchdog: the timer stays armed between them, where a watchdog per request armed
    and cancelled one each through asyncio's timer heap, about 18,000 of the 174,000
    instructions of a request over a socket: `benches/instructions.py chat-socket`'s lean
    call). `close()` when done."""

    __slots__ = ("_cancelling", "_due", "_expired", "_handle", "_loop", "_now", "_task", "_waiting")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._now: Callable[[], float] = time.monotonic  # the loop's clock (`clock_of`)
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._waiting = False
        self._expired = False
        self._cancelling = 0

    async def wait(self, aw: Awaitable[T], timeout: float | None) -> T:
        if timeout is None:
            return await aw
        # the task, found on the loop of the first wait: a lookup by loop skips the running
        # loop's check, a getpid() system call on Python 3.11 (the first wait still pays it)
        task = None if self._loop is None else current_task(self._loop)
        if task is None:  # the first wait (or, misused, one on another loop: its own timer)
            self.close()
            self._loop = asyncio.get_running_loop()
            self._now = clock_of(self._loop)
            task = current_task(self._loop)
        assert task is not None and self._loop is not None
        self._task = task  # the task the timer cancels if this wait outlasts its due time
        due = self._now() + max(timeout, 0.0)
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
            self._task = None  # not kept (with its result) by a timer armed for a later wait
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


class Deadlines:
    """`await d.wait(aw, timeout)` from any number of tasks of one event loop, with one timer
    between them. A timer armed per request (asyncio.timeout, a Watchdog) is cancelled at its
    end and stays in the loop's heap until it comes first or is swept: behind the transport's
    read timers, which come due sooner, dozens pile up, and every timer pushed or popped sifts
    through them via TimerHandle.__lt__ (Python), most of a deadline's cost per request. Here
    a wait records its due time; the timer is re-armed only for a wait due before it, and
    when it fires it cancels the tasks past their due time and re-arms for the next one.

    `wait` in three steps, for a caller that awaits inside its own frame (the executor's
    attempt: a coroutine of `wait`'s around each call had cost about 1,000 instructions):
    `w = d.enter(timeout)`, then around the await, on CancelledError `d.timed_out(w)` (True:
    raise TimeoutError), and in `finally` `d.leave(w)`."""

    __slots__ = ("_armed", "_handle", "_now", "_waits", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._now = clock_of(loop)
        self._handle: asyncio.TimerHandle | None = None
        self._armed = math.inf  # when the timer fires (inf: none armed)
        # one per wait in progress: [task, due, its cancelling() at the start, expired]
        self._waits: dict[int, list[object]] = {}

    async def wait(self, aw: Awaitable[T], timeout: float) -> T:
        w = self.enter(timeout)
        try:
            return await aw
        except asyncio.CancelledError:
            if self.timed_out(w):
                raise TimeoutError from None
            raise
        finally:
            self.leave(w)

    def enter(self, timeout: float) -> list[object]:
        """A wait of the current task for `timeout` seconds begins: its record."""
        task = current_task(self.loop)  # see Watchdog.wait
        assert task is not None
        # (max(timeout, 0.0), without max()'s parsing of its arguments)
        due = self._now() + (0.0 if timeout < 0.0 else timeout)
        w: list[object] = [task, due, task.cancelling(), False]
        self._waits[id(w)] = w
        if due < self._armed:  # no timer, or it would fire too late
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self.loop.call_at(due, self._fire)
            self._armed = due
        return w

    @staticmethod
    def timed_out(w: list[object]) -> bool:
        """On a CancelledError in the wait: whether it was this deadline's (the task is then
        uncancelled, and the caller raises TimeoutError), not another canceller's."""
        if w[3]:
            w[3] = False
            return w[0].uncancel() <= w[2]  # type: ignore[attr-defined,no-any-return]
        return False

    def leave(self, w: list[object]) -> None:
        """The wait is over, however it ended."""
        del self._waits[id(w)]
        if w[3]:  # it fired, but the awaited swallowed the cancellation: undo ours
            w[0].uncancel()  # type: ignore[attr-defined]

    def _fire(self) -> None:
        self._handle = None
        self._armed = math.inf
        now = self.loop.time()
        soonest: float | None = None
        for w in self._waits.values():
            due: float = w[1]  # type: ignore[assignment]
            if w[3]:
                continue
            if due <= now:
                w[3] = True
                w[0].cancel()  # type: ignore[attr-defined]
            elif soonest is None or due < soonest:
                soonest = due
        if soonest is not None:
            self._handle = self.loop.call_at(soonest, self._fire)
            self._armed = soonest
