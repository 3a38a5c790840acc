"""The server's state stores, memory and Redis alike (a real redis-server on loopback).

A reservation is settled in the period it was made in: a request that reserves before
midnight and is answered after it releases yesterday's hold and counts there, leaving the new
day's budget whole (settling under the new day left a negative hold that let the key spend
up to twice its limit). A key is replaced only if nobody changed it meanwhile (a PATCH wrote
back a copy read before a revoke, and un-revoked the key)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from satisfice.server.state import Budget, MemoryState, RateCount, RedisState, period_tag

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


class _Clock:
    """A replica's time module whose clock reads `at()`; the rest is the real module's."""

    def __init__(self, at: Callable[[], float]) -> None:
        self._at = at

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def time(self) -> float:
        return self._at()


def _behind() -> _Clock:
    """The time module of a replica whose clock runs 60 s slow."""
    return _Clock(lambda: time.time() - 60.0)


async def test_a_reservation_settles_in_its_own_period(
    state: MemoryState | RedisState, monkeypatch: pytest.MonkeyPatch
) -> None:
    import satisfice.server.state as st

    now = {"t": (time.time() // DAY + 1) * DAY - 1.0}  # a second before midnight UTC

    monkeypatch.setattr(st, "time", _Clock(lambda: now["t"]))
    b = Budget(f"key:k{time.time_ns()}", 0.05, "day")
    pinned = b.pinned()
    assert await state.admit([pinned], 0.04) is None
    yesterday = pinned.at
    now["t"] += 2.0  # the day turns while the upstream answers
    assert period_tag("day", now["t"]) != yesterday
    await state.settle([pinned], 0.04, 0.03)
    assert await state.spent(b) == (0.0, 0.0)  # the new day: untouched
    assert await state.spent(pinned) == (pytest.approx(0.03), 0.0)  # yesterday: settled there
    assert await state.admit([b.pinned()], 0.05) is None  # the whole new day is there
    assert await state.admit([b.pinned()], 0.001) is not None  # and no more


async def test_a_key_is_replaced_only_if_unchanged(state: MemoryState | RedisState) -> None:
    from dataclasses import replace

    from satisfice.server.state import VirtualKey

    k, _ = VirtualKey.new("team-a", budget_usd=1.0)
    await state.put_key(k)
    revoked = replace(k, revoked=True)
    assert await state.replace_key(k, revoked)
    assert not await state.replace_key(k, replace(k, rpm=5))  # read before the revoke
    (stored,) = await state.list_keys()
    assert stored.revoked and stored.rpm is None


async def test_expired_session_pins_do_not_accumulate() -> None:
    s = MemoryState()
    for i in range(25_000):
        await s.set_pin(f"s{i}", "m", ttl_s=-1.0)  # already expired
    assert len(s._pins) <= 10_001


async def test_a_refusing_redis_is_unavailable_state() -> None:
    """OOM or READONLY replies are not a reachable store either (a raw ResponseError gave
    a 500 and left the hold)."""
    import redis.exceptions

    from satisfice.server.state import StateUnavailable

    s = RedisState("redis://127.0.0.1:1/0")

    async def refuse() -> None:
        raise redis.exceptions.ResponseError("OOM command not allowed")

    with pytest.raises(StateUnavailable, match="ResponseError"):
        await s._do(refuse())
    await s.close()


async def test_a_reservation_counts_once_however_often_it_is_replayed(
    state: MemoryState | RedisState,
) -> None:
    """A store reply lost after the store acted made the server queue and replay the call:
    a settle replayed counted the spend twice (left rose above the limit), and a reserve
    whose reply was lost left its hold for good."""
    b = Budget(f"key:k{time.time_ns()}", 1.0, "total")
    one = [b.pinned(hold="r1")]
    assert await state.admit(one, 0.25) is None
    assert await state.admit(one, 0.25) is None  # replayed: held once
    assert await state.spent(b) == (0.0, pytest.approx(0.25))
    await state.settle(one, 0.25, 0.1)
    await state.settle(one, 0.25, 0.1)  # replayed: counted once
    assert await state.spent(b) == (pytest.approx(0.1), 0.0)
    await state.settle([b.pinned(hold="never-reserved")], 0.5, 0.0)  # a release of nothing
    assert await state.spent(b) == (pytest.approx(0.1), 0.0)


async def test_a_request_one_limit_refuses_takes_nothing_from_the_other(
    state: MemoryState | RedisState,
) -> None:
    """A tpm refusal used up an rpm slot: a key locked itself out for the minute."""
    for _ in range(3):
        assert (
            await state.admit((), 0, RateCount("k", 3, 2000, 5000)) is not None
        )  # over tpm: refused
    assert (
        await state.admit((), 0, RateCount("k", 3, 2000, 100)) is None
    )  # the rpm slots are all there
    assert await state.admit((), 0, RateCount("k", 3, 2000, 100)) is None
    assert await state.admit((), 0, RateCount("k", 3, 2000, 100)) is None
    refused = await state.admit((), 0, RateCount("k", 3, 2000, 100))  # the fourth in the minute
    assert refused is not None and refused.budget is None and 0 < refused.retry_in_s <= 60


async def test_a_replayed_rate_count_counts_once(state: MemoryState | RedisState) -> None:
    """A request with a rate limit and no budget had no hold: its admission, sent again
    after a lost reply, took two of the key's rpm slots."""
    kid = f"r{time.time_ns()}"
    first = RateCount(kid, 2, 1000, 10, hold="req-1")
    assert await state.admit((), 0, first) is None
    assert await state.admit((), 0, first) is None  # replayed: counted once
    assert await state.admit((), 0, RateCount(kid, 2, 1000, 10, hold="req-2")) is None
    refused = RateCount(kid, 2, 1000, 10, hold="req-3")
    assert await state.admit((), 0, refused) is not None
    assert await state.admit((), 0, refused) is not None  # a refused one, replayed: refused


async def test_a_request_its_rate_limit_refuses_reserves_nothing_and_the_reverse(
    state: MemoryState | RedisState,
) -> None:
    """Budget and rate limit are admitted in one step: the refused side leaves the other
    untouched (the rate refusal had reserved, then released in a second round trip)."""
    b = Budget(f"key:k{time.time_ns()}", 1.0, "total")
    rate = RateCount(f"r{time.time_ns()}", 1, None, 10)
    assert await state.admit([b.pinned(hold="a")], 0.25, rate) is None
    refused = await state.admit([b.pinned(hold="b")], 0.25, rate)  # over rpm
    assert refused is not None and refused.budget is None
    assert await state.spent(b) == (0.0, pytest.approx(0.25))  # only the first holds
    other = RateCount(f"r{time.time_ns()}", 1, None, 10)
    refused = await state.admit([b.pinned(hold="c")], 5.0, other)  # over budget
    assert refused is not None and refused.budget == b
    assert refused.left_usd == pytest.approx(0.75)
    assert refused.unheld_usd == pytest.approx(1.0)  # what spend alone leaves
    assert await state.admit([], 0, other) is None  # its rpm slot is still there


async def test_with_redis_away_rate_limits_hold_on_the_replicas_own_window() -> None:
    """They were off (every request served), where README says they fail open on the
    replica's own view; and a team seen without a budget is not failed closed."""
    from satisfice.server.state import StateUnavailable

    s = RedisState("redis://127.0.0.1:1/0")  # nothing listens there
    got = [await s.admit((), 0, RateCount("k", 3, None, 10)) for _ in range(5)]
    assert [g is None for g in got] == [True, True, True, False, False]
    with pytest.raises(StateUnavailable):
        await s.team("never-seen")  # unknown: its budget cannot be checked
    s._team_cache["seen"] = (None, 1e18)  # as a lookup moments before would have left it
    assert await s.team("seen") is None  # known to have no budget: served
    await s.close()


async def test_a_record_this_version_cannot_read_breaks_only_itself() -> None:
    """One key record with a field from a newer version (or garbage) had made listing,
    updating and revoking every key fail, and one odd cooldown entry stopped every
    replica's sync: the record with more fields is read, garbage is skipped or refused
    alone (with a 503's error, never a TypeError)."""
    import json
    from dataclasses import asdict, replace

    from satisfice.server.state import StateUnavailable, VirtualKey, hash_key

    with redis() as server:
        s = RedisState(server.url)
        good, secret = VirtualKey.new("good")
        await s.put_key(good)
        newer, _ = VirtualKey.new("newer")
        await s.put_key(newer)
        await s._r.call(
            "HSET",  # as a newer version writes it
            "satisfice:keys",
            newer.id,
            json.dumps({**asdict(newer), "org": "x"}),
        )
        await s._r.call("HSET", "satisfice:keys", "broken", "{not json")
        mistyped = {**asdict(good), "id": "mistyped", "budget_usd": "5"}  # had failed later
        await s._r.call("HSET", "satisfice:keys", "mistyped", json.dumps(mistyped))
        assert {k.name for k in await s.list_keys()} == {"good", "newer"}
        assert (await s.key_by_id(newer.id)).name == "newer"  # type: ignore[union-attr]
        # updated as read (a PATCH): the set had compared bytes made anew from the record
        # read, which never matched one with another field or order, and answered 409
        read = await s.key_by_id(newer.id)
        assert read is not None and await s.replace_key(read, replace(read, rpm=7))
        assert (await s.key_by_id(newer.id)).rpm == 7  # type: ignore[union-attr]
        stored = json.loads(await s._r.call("HGET", "satisfice:keys", newer.id))
        assert stored["org"] == "x"  # the newer version's field is kept
        await s._r.call("HSET", "satisfice:keys", good.id,
                        json.dumps(dict(reversed(list(asdict(good).items())))))  # fmt: skip
        assert await s.replace_key(good, replace(good, rpm=3))
        assert not await s.replace_key(good, replace(good, rpm=4))  # changed meanwhile
        assert await s.key_by_id("absent") is None
        for kid in ("broken", "mistyped"):
            with pytest.raises(StateUnavailable, match="cannot be read"):
                await s.key_by_id(kid)
        assert (await s.key_by_secret(secret)).name == "good"  # type: ignore[union-attr]
        await s._r.call("HSET", "satisfice:key_hash", hash_key("sk-sat-broken"), "broken")
        with pytest.raises(StateUnavailable, match="cannot be read"):
            await s.key_by_secret("sk-sat-broken")  # its limits cannot be read: refused
        await s._r.call("HSET", "satisfice:teams", "team:t", json.dumps({"scope": "team:t"}))
        with pytest.raises(StateUnavailable, match="team 't' cannot be read"):
            await s.team("t")  # no limit: its budget cannot be checked
        await s._r.call("HSET", "satisfice:cooldowns", "odd", json.dumps([1e18, "why", "extra"]))
        await s._r.call("HSET", "satisfice:cooldowns", "a/d", json.dumps([1e18, "down"]))
        assert await s.cooldowns_now() == {"a/d": (1e18, "down", 0.0, False)}
        await s.close()


async def test_models_answers_503_in_the_api_shape_while_the_key_store_is_away() -> None:
    """GET /v1/models with a key had answered a bare text/plain 500 when Redis was away."""
    import httpx

    from satisfice.server import ServerConfig, create_app

    app = create_app(ServerConfig(state_backend="redis", redis_url="redis://127.0.0.1:1/0"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/v1/models", headers={"authorization": "Bearer sk-sat-unknown"})
    assert r.status_code == 503 and r.json()["error"]["message"]
    await app.state.service.state.close()


async def test_a_hold_never_settled_is_released_after_its_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica killed mid-request never settles its hold: on a "total" budget (counters
    with no expiry) the hold had stayed for good, refusing the key's requests. Admission now
    releases holds past HOLD_S, and a late settlement counts its cost without releasing twice."""
    import satisfice.server.state as st

    with redis() as server:
        s = RedisState(server.url)
        b = Budget(f"key:k{time.time_ns()}", 0.01, "total")
        monkeypatch.setattr(st, "HOLD_S", -10)  # every hold is past its time at once
        assert await s.admit([b.pinned(hold="dead")], 0.008) is None
        assert await s.spent(b) == (0.0, pytest.approx(0.008))
        assert await s.admit([b.pinned(hold="next")], 0.009) is None  # "dead" released first
        assert await s.spent(b) == (0.0, pytest.approx(0.009))
        await s.settle([b.pinned(hold="dead")], 0.008, 0.001)  # it answered after all
        assert await s.spent(b) == (pytest.approx(0.001), pytest.approx(0.009))
        monkeypatch.setattr(st, "HOLD_S", 3600.0)
        await s.settle([b.pinned(hold="next")], 0.009, 0.002)  # released by its settlement
        assert await s.spent(b) == (pytest.approx(0.003), 0.0)
        # a hold of $100,000 or more: Lua had written its amount as 1.2e+14, which the sweep
        # could not read back, and every later admission to the budget failed
        big = Budget(f"key:big{time.time_ns()}", 1e6, "total")
        monkeypatch.setattr(st, "HOLD_S", -10)
        assert await s.admit([big.pinned(hold="big")], 123_456.789) is None
        assert await s.admit([big.pinned(hold="after")], 1.0) is None
        assert await s.spent(big) == (0.0, pytest.approx(1.0))
        await s.close()


async def test_admission_checks_the_key_it_was_given_against_the_stored_one() -> None:
    """A key served from the 30 s cache is checked by admission, in the same script as the
    reservation: one changed since (on any replica) raises KeyChanged and reserves nothing."""
    from dataclasses import replace

    from satisfice.server.state import KeyChanged, VirtualKey

    with redis() as server:
        a, b = RedisState(server.url), RedisState(server.url)  # two replicas
        k, secret = VirtualKey.new("k", budget_usd=1.0)
        await a.put_key(k)
        read = await b.key_by_secret(secret)
        assert read == k and await b.key_by_secret(secret, cached=True) is read  # no round trip
        budget = Budget(f"key:{k.id}", 1.0, "total")
        assert await b.admit([budget.pinned()], 0.1, None, read) is None
        assert await a.replace_key(k, replace(k, revoked=True))
        with pytest.raises(KeyChanged):
            await b.admit([budget.pinned()], 0.1, None, read)
        assert await b.spent(budget) == (0.0, pytest.approx(0.1))  # the first only
        again = await b.key_by_secret(secret, cached=True)  # the stale read was forgotten
        assert again is not None and again.revoked
        with pytest.raises(KeyChanged):  # a read older than the one now cached
            await b.admit([budget.pinned()], 0.1, None, read)
        await a.close()
        await b.close()


async def test_a_late_key_changed_reply_does_not_forget_a_key_read_anew() -> None:
    """Two requests on one replica hold the same stale key and the key changes once: the
    second's {-2} reply, handled after the first read the key anew, must not drop that read
    (the first request's retry then failed with KeyChanged: 503 after a single change)."""
    from dataclasses import replace

    from satisfice.server.state import KeyChanged, VirtualKey

    with redis() as server:
        a, b = RedisState(server.url), RedisState(server.url)
        k, secret = VirtualKey.new("k", rpm=1000)
        await a.put_key(k)
        stale = await b.key_by_secret(secret)
        assert await a.replace_key(k, replace(k, rpm=999))
        real, gate = b._do, asyncio.Event()

        async def late(coro: Any, *read: Any) -> Any:  # this request's reply is handled later
            try:
                return await real(coro, *read)
            finally:
                await gate.wait()

        b._do = late  # type: ignore[method-assign]
        second = asyncio.create_task(b.admit([], 0.0, None, stale))
        await asyncio.sleep(0.05)  # checked locally, sent
        b._do = real  # type: ignore[method-assign]
        with pytest.raises(KeyChanged):
            await b.admit([], 0.0, None, stale)
        fresh = await b.key_by_secret(secret)  # the first request, taken again
        assert fresh is not None and fresh.rpm == 999
        gate.set()
        with pytest.raises(KeyChanged):
            await second
        assert await b.admit([], 0.0, None, fresh) is None
        await a.close()
        await b.close()


async def test_a_key_admitted_is_served_30_s_more_through_an_outage() -> None:
    """Admission confirms the cached key is the stored one: it may serve 30 s more, as a read
    would (a rate-only key in use had been refused 0-30 s into an outage)."""
    from satisfice.server.state import VirtualKey

    with redis() as server:
        b = RedisState(server.url)
        k, secret = VirtualKey.new("k", rpm=1000)
        await b.put_key(k)
        read = await b.key_by_secret(secret)
        assert read is not None
        k2, _, raw = b._key_cache[read.key_hash]
        b._key_cache[read.key_hash] = (k2, time.time() + 0.3, raw)  # read 29.7 s ago
        assert await b.admit([], 0.0, None, read) is None
        server.stop()
        await asyncio.sleep(0.5)
        assert await b.key_by_secret(secret, cached=True) == read
        assert await b.key_by_secret(secret) == read  # fresh read fails: the cache serves
        server.start()
        await b.close()


async def test_an_enable_or_disable_reaches_every_replica_even_made_while_redis_was_away() -> None:
    """An enable on replica B left a deployment A had disabled (or cooled) itself disabled
    on A for good; a disable or enable made while Redis was away was dropped, and a stale
    shared entry then undid it on the replica that made it."""
    from satisfice.server.app import SharedHealth

    def state_of(h: SharedHealth, key: str) -> str:
        return h.snapshot().get(key, {"state": "ok"})["state"]

    with redis() as server:
        sa, sb = RedisState(server.url), RedisState(server.url)
        a, b = SharedHealth(sa), SharedHealth(sb)
        a.disable("m/d", "HTTP 401")  # A's own word (a rejected key)
        await asyncio.gather(*a._tasks)
        await b.sync()
        assert state_of(b, "m/d") == "disabled"
        b.enable("m/d")  # the operator, on B
        await asyncio.gather(*b._tasks)
        await a.sync()
        assert state_of(a, "m/d") == "ok"
        for _ in range(5):  # A's breaker opens
            a.record_failure("m/d", rate_limited=False, retry_after=None, reason="HTTP 500")
        assert a.retry_in("m/d") is not None
        await asyncio.gather(*a._tasks)
        await asyncio.sleep(0.01)  # the enable's stamp is later than the cooldown
        b.enable("m/d")
        await asyncio.gather(*b._tasks)
        await a.sync()
        assert a.retry_in("m/d") is None and state_of(a, "m/d") == "ok"
        server.stop()  # Redis away: A's disable waits, B's view holds
        a.disable("m/e", "maintenance")
        await asyncio.gather(*a._tasks)
        server.start()
        await a.sync()  # written now
        await b.sync()
        assert state_of(b, "m/e") == "disabled"
        server.stop()
        a.enable("m/e")  # and an enable made while it is away is not undone by the stale entry
        await asyncio.gather(*a._tasks)
        server.start()
        await a.sync()
        assert state_of(a, "m/e") == "ok"
        await b.sync()
        assert state_of(b, "m/e") == "ok"
        # a replica started later holds back what is cooling now, whatever was enabled once
        await asyncio.sleep(0.01)
        for _ in range(5):
            a.record_failure("m/d", rate_limited=False, retry_after=None, reason="HTTP 500")
        await asyncio.gather(*a._tasks)
        sc = RedisState(server.url)
        c = SharedHealth(sc)
        await c.sync()
        assert c.retry_in("m/d") is not None
        await sa.close()
        await sb.close()
        await sc.close()


async def test_an_enable_whose_writes_land_late_still_ends_a_shared_cooldown() -> None:
    """Replica B restamped another replica's cooldown at each sync: a sync between an
    enable (stamped when made) and its writes (a slow store) held the deployment back past
    the enable, on B, for good."""
    from satisfice.server.app import SharedHealth

    with redis() as server:
        sa, sb = RedisState(server.url), RedisState(server.url)
        a, b = SharedHealth(sa), SharedHealth(sb)
        for _ in range(5):  # A's breaker opens, and A shares the cooldown
            a.record_failure("m/d", rate_limited=False, retry_after=None, reason="HTTP 500")
        await asyncio.gather(*a._tasks)
        await b.sync()
        assert b.retry_in("m/d") is not None
        await asyncio.sleep(0.01)
        real = sa.set_disabled
        landed = asyncio.Event()

        async def slow(key: str, why: str | None, at: float = 0.0) -> bool:
            await asyncio.sleep(0.3)  # the store slow to take the enable's writes
            ok = await real(key, why, at)
            landed.set()
            return ok

        sa.set_disabled = slow  # type: ignore[method-assign]
        a.enable("m/d")  # stamped now; written 0.3 s later
        await asyncio.sleep(0.05)
        await b.sync()  # the cooldown is still in the store
        await landed.wait()
        await b.sync()
        assert b.retry_in("m/d") is None
        await sa.close()
        await sb.close()


async def test_a_cooldown_begun_before_an_enable_but_written_after_it_stays_ended() -> None:
    """Replica B's cooldown, begun before A's enable, reached the store after the enable's
    writes: every replica then held the deployment back until the cooldown ran out. And
    an older replica's entry (no start time) is not ended by any enable ever stamped."""
    import json

    from satisfice.server.app import SharedHealth

    with redis() as server:
        sa, sb, sc = (RedisState(server.url) for _ in range(3))
        a, b, c = SharedHealth(sa), SharedHealth(sb), SharedHealth(sc)
        real = sb.push_cooldown
        go = asyncio.Event()

        async def late(*args: Any) -> None:
            await go.wait()  # B's write is held back until after the enable's
            await real(*args)

        sb.push_cooldown = late  # type: ignore[method-assign]
        for _ in range(5):  # B's breaker opens; its share waits
            b.record_failure("m/d", rate_limited=False, retry_after=None, reason="HTTP 500")
        await asyncio.sleep(0.01)
        a.enable("m/d")  # stamped after B's cooldown began
        await asyncio.gather(*a._tasks)
        for h in (a, b, c):
            await h.sync()
        go.set()
        await asyncio.gather(*b._tasks)  # B's cooldown lands now
        for h in (a, b, c):
            await h.sync()
        assert [h.retry_in("m/d") for h in (a, b, c)] == [None, None, None]
        # an older replica's entry: [until, why], no start; enables from long ago stand
        await sa._r.call("HSET", "satisfice:cooldowns", "m/e",
                         json.dumps([time.time() + 60, "HTTP 429"]))  # fmt: skip
        await sa._r.call("HSET", "satisfice:enabled", "m/e", repr(time.time() - 3600))
        fresh = SharedHealth(RedisState(server.url))
        await fresh.sync()
        assert fresh.retry_in("m/e") is not None
        for s in (sa, sb, sc, fresh._state):
            await s.close()


async def test_a_refusal_says_what_spend_alone_leaves_even_past_the_limit(
    state: MemoryState | RedisState,
) -> None:
    """What is left is shown as 0 past the limit; the room with no holds (whether a retry
    may fit once requests in flight settle) had been read from it, and a budget its spend
    alone leaves no room in had been called retryable."""
    scope = f"key:k{time.time_ns()}"
    b = Budget(scope, 1.0, "total")
    first = [b.pinned(hold="a")]
    assert await state.admit(first, 0.5) is None
    await state.settle(first, 0.5, 0.5)  # spent 0.5
    assert await state.admit([b.pinned(hold="b")], 0.5) is None  # held 0.5
    lowered = Budget(scope, 0.6, "total")  # the limit lowered while "b" is in flight
    refused = await state.admit([lowered.pinned(hold="c")], 0.3)
    assert refused is not None and refused.budget == lowered
    assert refused.left_usd == 0.0 and refused.unheld_usd == pytest.approx(0.1)


async def test_a_refusal_says_what_spend_leaves_in_the_fullest_budget(
    state: MemoryState | RedisState,
) -> None:
    """Admission stops at the first budget refused: a key's budget full of holds (a retry
    may fit) had hidden a team's budget its spend had filled (no retry fits)."""
    key = Budget(f"key:k{time.time_ns()}", 1.0, "total")
    team = Budget(f"team:t{time.time_ns()}", 1.0, "total")
    spent = [team.pinned(hold="s")]
    assert await state.admit(spent, 0.95) is None
    await state.settle(spent, 0.95, 0.95)  # the team's spend: 0.95 of 1.0
    assert await state.admit([key.pinned(hold="h")], 0.9) is None  # the key's: held 0.9
    refused = await state.admit([key.pinned(hold="x"), team.pinned(hold="x")], 0.2)
    assert refused is not None and refused.budget == key  # the first refused
    assert refused.unheld_usd == pytest.approx(0.05)  # but the team's spend leaves 0.05


async def test_replicas_whose_clocks_differ_count_a_rate_in_one_window() -> None:
    """The minute a rate was counted in was each replica's own: a replica whose clock ran a
    minute ahead counted a key's requests in a window of its own, and let its rpm through
    again. The store's clock (TIME) decides the minute now, for every replica."""
    import satisfice.server.state as st

    with redis() as server:
        a, b = RedisState(server.url), RedisState(server.url)
        kid = f"skew{time.time_ns()}"
        try:
            if time.time() % 60 > 55:  # all of it in one minute of the store's clock
                await asyncio.sleep(60.5 - time.time() % 60)
            assert await a.admit((), 0, RateCount(kid, 3, None, 1)) is None
            assert await a.admit((), 0, RateCount(kid, 3, None, 1)) is None
            real = st.time
            st.time = _Clock(lambda: time.time() + 60.0)  # type: ignore[assignment]
            try:
                assert await b.admit((), 0, RateCount(kid, 3, None, 1)) is None
                refused = await b.admit((), 0, RateCount(kid, 3, None, 1))
            finally:
                st.time = real
            assert refused is not None and refused.budget is None
            assert 0 < refused.retry_in_s <= 60
        finally:
            await a.close()
            await b.close()


async def test_replicas_whose_clocks_differ_share_cooldowns_enables_and_periods_on_one_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cooldown's end, an enable's stamp and a budget's day were each replica's own clock:
    a 30 s cooldown shared by a replica whose clock ran a minute slow was over for the
    others before it began, and its enables looked older than the cooldowns they end. The
    store stamps cooldowns and enables (a replica sends durations, reads back durations),
    and a budget's day is the store's, by each replica's measured skew. A replica tells its
    own cooldowns by its id, not by their times, which a skew measured anew had moved (found
    by review: it took its own breaker's cooldown for another replica's)."""
    import satisfice.server.state as st

    with redis() as server:
        prefix = f"skew{time.time_ns()}:"
        slow, right = RedisState(server.url, prefix), RedisState(server.url, prefix)
        try:
            monkeypatch.setattr(st, "time", _behind())
            begun = st.time.time()
            await slow.push_cooldown("d1", begun + 30, "boom", begun)
            assert await slow.set_disabled("d2", None, begun)  # an enable, stamped now
            assert abs(slow.now() - time.time()) > 59  # not measured yet: its own clock
            await slow.sync_clock()
            assert abs(slow.now() - time.time()) < 1  # the store's time, not its own
            assert Budget("key:k", 1.0, "day").pinned(slow.now()).at == st.period_tag("day")
            monkeypatch.setattr(st, "time", time)
            until, why, made, mine = (await right.cooldowns_now())["d1"]
            assert why == "boom" and not mine
            assert 28 < until - time.time() <= 30.5
            assert abs(made - time.time()) < 2
            assert abs((await right.enabled_now())["d2"] - time.time()) < 2
            # the slow replica reads back what it shared, on its own clock, as its own
            monkeypatch.setattr(st, "time", _behind())
            until, why, made, mine = (await slow.cooldowns_now())["d1"]
            assert mine and until == pytest.approx(begun + 30, abs=0.5)
            assert made == pytest.approx(begun, abs=0.5)
        finally:
            monkeypatch.setattr(st, "time", time)
            await slow.close()
            await right.close()


async def test_a_replica_60_s_slow_and_60_ms_from_redis_measures_its_skew(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by review: a round trip over 50 ms was never taken as a measure, so a replica
    in another zone kept its own clock for a budget's day."""
    import satisfice.server.state as st

    with redis() as server:
        s = RedisState(server.url, f"rtt{time.time_ns()}:")
        call = s._r.call

        async def slow_call(*a: Any) -> Any:
            await asyncio.sleep(0.03)
            out = await call(*a)
            await asyncio.sleep(0.03)
            return out

        try:
            monkeypatch.setattr(s._r, "call", slow_call)
            monkeypatch.setattr(st, "time", _behind())
            await s.sync_clock()
            assert abs(s.now() - time.time()) < 0.5
        finally:
            monkeypatch.setattr(st, "time", time)
            await s.close()


async def test_a_replica_takes_its_own_breaker_cooldown_back_as_its_own_when_its_clock_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by review: a replica told its own shared cooldowns from others' by their end
    time read back, which moved when its clock (or its measured skew) stepped: its own
    breaker's cooldown came back as "cooled by another replica", which a success no longer
    ends. It is told by the entry's writer now."""
    import satisfice.server.app as app_mod
    import satisfice.server.state as st
    from satisfice.server.app import SharedHealth

    step = {"s": 0.0}

    stepping = _Clock(lambda: time.time() + step["s"])  # a replica whose clock steps
    monkeypatch.setattr(st, "time", stepping)
    monkeypatch.setattr(app_mod, "time", stepping)
    with redis() as server:
        s = RedisState(server.url, f"own{time.time_ns()}:")
        h = SharedHealth(s)
        try:
            for _ in range(3):
                h.record_failure("m/d1", rate_limited=False, retry_after=None, reason="boom")
            await asyncio.gather(*h._tasks)
            assert h.retry_in("m/d1") is not None
            before = h._s["m/d1"].reason
            step["s"] = 0.1  # an NTP step
            await s.sync_clock()
            await h.sync()
            assert h._s["m/d1"].reason == before  # its own, as it was
            h.record_success("m/d1", 0.1)
            assert h.retry_in("m/d1") is None  # a breaker's cooldown: a success ends it
        finally:
            await s.close()


async def test_a_shared_cooldown_keeps_its_longest_end_and_reads_the_same_at_each_sync() -> None:
    """Found by review: the last writer won (another replica's 5 s replaced a 120 s
    cooldown on every replica but the first); and an entry read against a fresh TIME at each
    sync never read the same end twice, so one that does not say when it began was taken
    for a new cooldown every 0.2 s, and an enable that landed late was ignored."""
    import json

    from satisfice.server.app import SharedHealth

    key = "m/d1"
    with redis() as server:
        prefix = f"long{time.time_ns()}:"
        ss = [RedisState(server.url, prefix) for _ in range(3)]
        a, b, c = (SharedHealth(x) for x in ss)
        try:
            for x in ss:
                await x.sync_clock()
            a.record_failure(key, rate_limited=True, retry_after=120, reason="HTTP 429")
            await asyncio.gather(*a._tasks)
            b.record_failure(key, rate_limited=True, retry_after=5, reason="HTTP 429")
            await asyncio.gather(*b._tasks)
            for h in (a, b, c):
                await h.sync()
                assert h.retry_in(key) == pytest.approx(120, abs=2)
            # an entry an older replica wrote (no start): an enable made after it was seen
            # ends it, however late its write lands
            fresh = f"old{time.time_ns()}:"
            sa, sb = RedisState(server.url, fresh), RedisState(server.url, fresh)
            ss += [sa, sb]
            hb = SharedHealth(sb)
            entry = json.dumps([time.time() + 60, "HTTP 429"])
            await sa._r.call("HSET", f"{fresh}cooldowns", key, entry)
            first = (await sb.cooldowns_now())[key][0]
            assert (await sb.cooldowns_now())[key][0] == first
            await hb.sync()
            assert hb.retry_in(key) is not None
            await asyncio.sleep(0.3)
            enabled_at = time.time()  # an enable on a; its write lands 0.3 s later
            await asyncio.sleep(0.3)
            await hb.sync()
            assert await sa.set_disabled(key, None, enabled_at)
            await hb.sync()
            assert hb.retry_in(key) is None
        finally:
            for x in ss:
                await x.close()


async def test_a_cooldown_pushed_with_no_finite_end_or_an_odd_reason_is_still_shared() -> None:
    """Found by review: an end of inf or NaN made JSON no reader took, and a reason with a
    lone surrogate raised out of the push (push_cooldown is API)."""
    with redis() as server:
        prefix = f"odd{time.time_ns()}:"
        s = RedisState(server.url, prefix)
        try:
            await s.push_cooldown("a/d", math.inf, "bad \udcff", 0.0)
            await s.push_cooldown("b/d", math.nan, "nan", 0.0)
            got = await s.cooldowns_now()
            assert set(got) == {"a/d"} and got["a/d"][1] == "bad \\udcff"
        finally:
            await s.close()


async def test_a_hold_lasts_while_its_replica_renews_it_and_not_long_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reservation on Redis is a lease its replica renews until it settles: a replica
    killed mid-request had held its budgets' room for 6 hours. (The lease is 2 s here.)"""
    import satisfice.server.state as st

    monkeypatch.setattr(st, "HOLD_S", 2)
    with redis() as server:
        a, b = RedisState(server.url), RedisState(server.url)
        budget = Budget(f"key:lease{time.time_ns()}", 1.0, "total")
        try:
            assert await a.admit([budget.pinned(hold="a1")], 0.9) is None
            for _ in range(6):  # 3 s: past the lease, renewed all along
                await asyncio.sleep(0.5)
                await a.renew_holds()
                assert await b.admit([budget.pinned(hold="b1")], 0.5) is not None
            # replica a dies: nothing renews its hold, which the next admission releases
            await asyncio.sleep(2.5)
            assert await b.admit([budget.pinned(hold="b2")], 0.5) is None
            assert await b.spent(budget) == (0.0, pytest.approx(0.5))
            # a settles late after all: its spend counts, the released hold is not freed twice
            await a.settle([budget.pinned(hold="a1")], 0.9, 0.3)
            assert await b.spent(budget) == (pytest.approx(0.3), pytest.approx(0.5))
            assert not a._leases
        finally:
            await a.close()
            await b.close()
