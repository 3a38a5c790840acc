"""A reservation is settled in the period it was made in: a request that reserves before
midnight and is answered after it releases yesterday's hold and counts there, leaving the new
day's budget whole (settling under the new day left a negative hold that let the key spend
up to twice its limit). Memory and Redis state alike."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from satisfice.server.state import Budget, MemoryState, RedisState, period_tag

from .servers import redis

DAY = 86_400.0


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[MemoryState | RedisState]:
    if request.param == "memory":
        yield MemoryState()
        return
    with redis() as server:
        s = RedisState(server.url)
        yield s
        await s.close()


async def test_a_reservation_settles_in_its_own_period(
    state: MemoryState | RedisState, monkeypatch: pytest.MonkeyPatch
) -> None:
    import satisfice.server.state as st

    now = {"t": (time.time() // DAY + 1) * DAY - 1.0}  # a second before midnight UTC
    real = st.period_tag
    monkeypatch.setattr(
        st, "period_tag", lambda period, at=None: real(period, now["t"] if at is None else at)
    )
    b = Budget(f"key:k{time.time_ns()}", 0.05, "day")
    pinned = b.pinned()
    assert await state.reserve([pinned], 0.04) is None
    yesterday = pinned.at
    now["t"] += 2.0  # the day turns while the upstream answers
    assert period_tag("day", now["t"]) != yesterday
    await state.settle([pinned], 0.04, 0.03)
    assert await state.spent(b) == (0.0, 0.0)  # the new day: untouched
    assert await state.spent(pinned) == (pytest.approx(0.03), 0.0)  # yesterday: settled there
    assert await state.reserve([b.pinned()], 0.05) is None  # the whole new day is there
    assert await state.reserve([b.pinned()], 0.001) is not None  # and no more
