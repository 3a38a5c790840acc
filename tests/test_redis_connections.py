"""`RedisState`'s own connection handling (`state._Connections`): redis-py's connections taken
and given back one command at a time, on a real redis-server and on a raw-socket one whose
every byte the test controls.

What must hold: a connection the server closed while it sat idle is replaced without the
caller seeing it; a command cancelled or timed out mid-reply never leaves its reply for the
next command to read; an error reply leaves the connection in use; no more connections than
the bound are opened, and a caller that finds none free within its wait is told the state is
unavailable; the URL's pool options (`max_connections`, `timeout`) still set the bound and the
wait (`timeout` had reached each connection: a TypeError every call); close() leaves no
connection open, in flight or not; an outage does not build a connection object a call."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from satisfice.server.state import (
    Budget,
    RedisState,
    StateUnavailable,
    VirtualKey,
    _Connections,
)

from .servers import free_port, redis


async def _clients(s: RedisState) -> int:
    """Connections the server has open, this one included."""
    listing = await s._r.call("CLIENT", "LIST")
    return len(listing.decode().strip().splitlines())


async def test_a_connection_the_server_closed_while_idle_is_replaced_unseen() -> None:
    with redis() as server:
        s = RedisState(server.url)
        k, secret = VirtualKey.new("k")
        await s.put_key(k)
        assert await _clients(s) == 1
        # the server's idle `timeout`, or an admin's CLIENT KILL, closes it while it is idle
        idle = await s._r.call("CLIENT", "ID")
        admin = _Connections(server.url)
        await admin.call("CLIENT", "KILL", "ID", idle)
        await admin.close()
        assert (await s.key_by_secret(secret)) == k
        assert s.errors == 0
        assert await _clients(s) == 1
        await s.close()


async def test_a_flushed_script_is_loaded_again_on_the_same_connection() -> None:
    with redis() as server:
        s = RedisState(server.url)
        b = Budget("key:k", 1.0, "total").pinned()
        assert await s.admit([b], 0.25) is None
        await s._r.call("SCRIPT", "FLUSH")  # a restart without persistence, or an admin
        before = await s._r.call("CLIENT", "ID")
        assert await s.admit([b.pinned()], 0.5) is None  # NOSCRIPT, loaded, sent again
        assert await s.spent(b) == (0.0, pytest.approx(0.75))
        assert await s._r.call("CLIENT", "ID") == before  # the error reply cost no connection
        assert s.errors == 0
        await s.close()


class _ScriptedRedis:
    """A raw-socket server speaking RESP: `+OK` to whatever a connection sends as it starts
    (redis-py's CLIENT SETINFO), and to `ECHO x` the reply `x` after `delay` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.accepted = 0
        self.open = 0
        self.most_open = 0

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                head = await r.readline()
                if not head:
                    return
                parts = []
                for _ in range(int(head[1:])):
                    size = int((await r.readline())[1:])
                    parts.append((await r.readexactly(size + 2))[:-2])
                if parts[0].upper() == b"ECHO":
                    await asyncio.sleep(self.delay)
                    w.write(b"$%d\r\n%s\r\n" % (len(parts[1]), parts[1]))
                else:
                    w.write(b"+OK\r\n")
                await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.open -= 1
            w.close()

    @contextlib.asynccontextmanager
    async def url(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            yield f"redis://127.0.0.1:{port}/0"


async def test_a_command_cancelled_mid_reply_leaves_nothing_for_the_next() -> None:
    fake = _ScriptedRedis(delay=0.2)
    async with fake.url() as url:
        conns = _Connections(url)
        first = asyncio.ensure_future(conns.call("ECHO", "first"))
        await asyncio.sleep(0.05)  # sent, its reply not yet there
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.sleep(0.3)  # the reply to "first" arrives (on a connection let go)
        assert await conns.call("ECHO", "second") == b"second"
        assert await conns.call("ECHO", "third") == b"third"
        assert fake.accepted == 2  # the cancelled one's connection was not used again
        await conns.close()


async def test_a_timed_out_reply_is_not_read_by_the_next_command() -> None:
    fake = _ScriptedRedis(delay=2.5)  # past the 2 s socket timeout
    async with fake.url() as url:
        conns = _Connections(url)
        with pytest.raises(TimeoutError):
            await conns.call("ECHO", "late")
        fake.delay = 0.0
        assert await conns.call("ECHO", "now") == b"now"
        await conns.close()


async def test_no_more_connections_than_the_bound_and_a_caller_waits_then_gives_up() -> None:
    fake = _ScriptedRedis(delay=0.3)
    async with fake.url() as url:
        conns = _Connections(url, size=3, wait_s=5.0)
        replies = await asyncio.gather(*(conns.call("ECHO", str(i)) for i in range(12)))
        assert replies == [str(i).encode() for i in range(12)]  # each its own reply
        assert fake.most_open == 3
        assert fake.accepted == 3  # reused, not reopened
        await conns.close()

        tight = _Connections(url, size=1, wait_s=0.1)
        busy = asyncio.ensure_future(tight.call("ECHO", "busy"))
        await asyncio.sleep(0.05)
        with pytest.raises(Exception, match="no Redis connection free"):
            await tight.call("ECHO", "waits")
        assert await busy == b"busy"
        await tight.close()


async def test_a_state_call_with_no_connection_free_is_state_unavailable() -> None:
    fake = _ScriptedRedis(delay=0.5)
    async with fake.url() as url:
        s = RedisState(url)
        s._r = _Connections(url, size=1, wait_s=0.05)
        busy = asyncio.ensure_future(s._r.call("ECHO", "busy"))
        await asyncio.sleep(0.05)
        with pytest.raises(StateUnavailable, match="redis unavailable"):
            await s.spent(Budget("key:k", 1.0, "total").pinned())
        await busy
        await s.close()


async def test_a_hash_read_as_a_resp3_map_reads_the_same() -> None:
    with redis() as server:
        for url in (server.url, server.url + "?protocol=3"):
            s = RedisState(url)
            await s.set_disabled("m/d", "maintenance")
            assert await s.disabled_now() == {"m/d": "maintenance"}
            await s.close()


@pytest.mark.parametrize(
    "args",
    [
        ("PING",),
        ("EVALSHA", "ab" * 20, 2, "satisfice:k1", "k2", 123456789012345, -1, "", b"\xff\x00"),
        ("SET", "satisfice:pin:anon:é🙂", "gpt-x", "EX", 3600),
        ("HSET", "h", "f", "x" * 70_000),  # past redis-py's buffer cutoff
    ],
)
def test_a_command_packs_to_the_bytes_redis_py_sends(args: tuple[str | int | bytes, ...]) -> None:
    import redis.asyncio as aioredis

    from satisfice.server.state import _pack

    conn = aioredis.ConnectionPool.from_url("redis://127.0.0.1:1/0", protocol=2).make_connection()
    assert _pack(args) == b"".join(conn.pack_command(*args))


async def test_the_url_pool_options_redis_py_honoured_still_apply() -> None:
    """`?timeout=` (the wait for a free connection) and `?max_connections=` were redis-py's
    pool options, honoured before; `timeout` now reached the connection, a TypeError on every
    call (not StateUnavailable: nothing failed open), and `max_connections` was ignored."""
    fake = _ScriptedRedis(delay=0.3)
    async with fake.url() as url:
        conns = _Connections(url + "?timeout=0.1&max_connections=2")
        busy = [asyncio.ensure_future(conns.call("ECHO", str(i))) for i in range(2)]
        await asyncio.sleep(0.05)
        t = time.monotonic()
        try:
            await conns.call("ECHO", "waits")
            raise AssertionError("a third call found a connection past max_connections=2")
        except Exception as e:
            assert "no Redis connection free" in str(e), repr(e)
        # the URL's wait, not the default 5 s (which a busy call frees a connection inside:
        # the message above tells them apart); loose for a stalled CI machine
        assert time.monotonic() - t < 2.0
        assert await asyncio.gather(*busy) == [b"0", b"1"]
        assert fake.most_open == 2
        await conns.close()


async def test_close_with_calls_in_flight_leaves_no_connection_open() -> None:
    fake = _ScriptedRedis(delay=0.3)
    async with fake.url() as url:
        conns = _Connections(url)
        calls = [asyncio.ensure_future(conns.call("ECHO", str(i))) for i in range(5)]
        await asyncio.sleep(0.1)
        await conns.close()
        await asyncio.gather(*calls, return_exceptions=True)
        await asyncio.sleep(0.1)
        assert fake.open == 0, f"{fake.open} connections left open after close()"


async def test_an_outage_does_not_build_a_connection_object_a_call() -> None:
    """While Redis is away every call fails to connect; a connection object per call (redis-py
    8's constructor reads the package metadata, ~0.6 ms) made each failed state call about 5x
    the CPU it took through redis-py's pool, which kept its connection objects."""
    s = RedisState(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    made = 0
    make = s._r._make

    def counted() -> object:
        nonlocal made
        made += 1
        return make()

    s._r._make = counted
    for _ in range(50):
        assert await s.pin("a") is None  # fails open
    assert made == 1, f"{made} connection objects for 50 calls one after another"
    await asyncio.gather(*(s.pin("a") for _ in range(50)))
    assert made <= 50, f"{made} connection objects for 50 more calls at once"
    await s.close()


async def test_redis_that_does_not_answer_costs_one_timeout_not_one_a_call() -> None:
    """A hung Redis had cost every state call its 2 s timeout (a request with a session and
    a team budget waited 6 s); after one timeout the calls of the next second fail at once,
    then one call tries again."""
    fake = _ScriptedRedis(delay=30.0)  # never answers in time
    async with fake.url() as url:
        s = RedisState(url)
        s._r = _Connections(url, timeout_s=0.3)
        with pytest.raises(StateUnavailable):
            await s._do(s._r.call("ECHO", "x"))
        before = fake.accepted  # a timed-out connection is dropped: a command needs a new one
        for _ in range(5):  # within the second after: none reaches Redis
            assert await s.disabled_now() is None  # fails open, as when Redis is down
        assert fake.accepted == before
        s._away_until = 1e-9  # the second is over: the next call tries Redis again
        fake.delay = 0.0
        assert await s._do(s._r.call("ECHO", "y")) == b"y"
        assert s._away_until == 0.0 and fake.accepted == before + 1
        await s.close()
