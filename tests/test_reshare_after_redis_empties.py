"""A replica sharing its state again after Redis came back empty leaves a later enable
standing. From a review of the fixes for `test_replicas_recover.py`: each test failed
before its fix."""

from __future__ import annotations

import asyncio

from satisfice.server.state import RedisState

from .servers import redis


def _state_of(h, key: str) -> str:  # type: ignore[no-untyped-def]
    return h.snapshot().get(key, {"state": "ok"})["state"]


async def test_an_enable_made_after_redis_came_back_empty_is_not_undone_by_reshare() -> None:
    """Replica A disabled m/d; Redis comes back empty (restart without persistence); the
    operator enables m/d on B (B's enable is written: no disable, an enable stamped now).
    A's next sync finds its mark gone and `_reshare` writes its old disable back over the
    later enable; the enable loop then skips it (`key in shared`), and B re-disables it
    from the store: both replicas end disabled, the operator's enable undone."""
    from satisfice.server.app import SharedHealth

    with redis() as server:
        sa, sb = RedisState(server.url), RedisState(server.url)
        a, b = SharedHealth(sa), SharedHealth(sb)
        await a.sync()
        await b.sync()  # marks set
        a.disable("m/d", "maintenance")
        await asyncio.gather(*a._tasks)
        await a.sync()
        await b.sync()
        assert _state_of(b, "m/d") == "disabled"
        await sa._r.call("FLUSHALL")  # Redis restarted empty
        await asyncio.sleep(0.01)
        b.enable("m/d")  # the operator, on B, after the disable
        await asyncio.gather(*b._tasks)
        for _ in range(2):
            await a.sync()
            await b.sync()
        got = (_state_of(a, "m/d"), _state_of(b, "m/d"))
        await sa.close()
        await sb.close()
        assert got == ("ok", "ok"), f"the later enable on B was undone by A's reshare: {got}"


async def test_an_enable_made_while_redis_was_away_is_not_undone_when_it_comes_back_empty() -> None:
    """The same through an outage: A disabled m/d, Redis goes away, the operator enables
    m/d on B (kept to be written), Redis comes back empty. B syncs first and writes its
    enable; A then reshares its older disable over it and keeps it: the enable is lost
    on every replica (before 659421d A took the enable)."""
    from satisfice.server.app import SharedHealth

    with redis() as server:
        sa, sb = RedisState(server.url), RedisState(server.url)
        a, b = SharedHealth(sa), SharedHealth(sb)
        await a.sync()
        await b.sync()
        a.disable("m/d", "maintenance")
        await asyncio.gather(*a._tasks)
        await a.sync()
        await b.sync()
        assert _state_of(b, "m/d") == "disabled"
        server.stop()
        await asyncio.sleep(0.01)
        b.enable("m/d")  # the operator, on B, while Redis is away
        await asyncio.gather(*b._tasks)
        server.start()
        await sb._r.call("FLUSHALL")  # back empty
        await asyncio.sleep(1.1)  # past the unreachable window
        for _ in range(3):
            await b.sync()
            await a.sync()
        got = (_state_of(a, "m/d"), _state_of(b, "m/d"))
        await sa.close()
        await sb.close()
        assert got == ("ok", "ok"), f"B's enable was undone by A's reshare: {got}"
