"""Leftovers from earlier closing notes, fixed in the thirty-eighth session."""

from __future__ import annotations

import asyncio
import time

from satisfice.server.state import Budget, MemoryState, RateCount


def test_memory_state_drops_the_counters_of_past_periods() -> None:
    """A budget's spend is counted per day or month. The in-memory state kept every past
    period's counters for good (20,000 of them here); Redis expires them. It now drops
    those before the last period, unless something is still held in them."""
    state = MemoryState()
    now = time.time()
    daily = Budget("key:k1", 100.0, "day")
    monthly = Budget("team:t1", 100.0, "month")
    held = Budget("key:k2", 100.0, "day").pinned(now=now - 40 * 86400, hold="h-old")

    async def run() -> None:
        assert await state.admit([held], 0.5) is None  # still held: kept whatever its age
        for day in range(20_000):
            b = [daily.pinned(now=now - (day + 3) * 86400)]
            assert await state.admit(b, 0.01) is None
            await state.settle(b, 0.01, 0.01)
        today = [daily.pinned(now=now), monthly.pinned(now=now)]
        assert await state.admit(today, 0.25) is None
        await state.settle(today, 0.25, 0.2)

    asyncio.run(run())
    assert len(state._spent) < 10_100, len(state._spent)
    assert len(state._reserved) < 10_100, len(state._reserved)
    assert asyncio.run(state.spent(daily)) == (0.2, 0.0)  # the current periods' stand
    assert asyncio.run(state.spent(monthly)) == (0.2, 0.0)
    assert asyncio.run(state.spent(held)) == (0.0, 0.5)


def test_memory_state_sweeps_rate_windows_once_they_double() -> None:
    """Past 100,000 rate-limit windows in one minute, every admitted request rebuilt the
    whole dict to drop old minutes (all were current: nothing to drop). The sweep now waits
    until the windows have doubled again, as the pins' does."""
    state = MemoryState()
    rebuilt = 0

    async def run() -> None:
        nonlocal rebuilt
        for i in range(50_010):
            before = state._windows
            assert await state.admit([], 0.0, RateCount(f"k{i}", 1000, 10**9, 10)) is None
            rebuilt += state._windows is not before

    asyncio.run(run())
    assert len(state._windows) > 100_000
    assert rebuilt <= 1, rebuilt
