"""The server's shared state when Redis misbehaves: replies it cannot read, replies that come
late or never, a restart mid-load. A RESP proxy in front of a real redis-server (written
here) rewrites, delays or cuts the replies a test picks. From an adversarial review: each
test failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from satisfice.server import ServerConfig
from satisfice.server.app import Service
from satisfice.server.state import Budget

from .polling import until_async
from .servers import redis

#: What the proxy does with one command: None forwards it; ("garbage", reply) answers that
#: instead; ("delay", s) forwards it and holds its reply s seconds; ("cut", None) forwards
#: it and closes the connection unanswered.
Rule = Callable[[list[bytes]], tuple[str, object] | None]


async def _reply(r: asyncio.StreamReader) -> bytes:
    line = await r.readuntil(b"\r\n")
    kind, n = line[:1], line[1:-2]
    if kind == b"$" and int(n) >= 0:
        return line + await r.readexactly(int(n) + 2)
    if kind == b"*" and int(n) > 0:
        return line + b"".join([await _reply(r) for _ in range(int(n))])
    return line


async def _command(r: asyncio.StreamReader) -> tuple[list[bytes], bytes]:
    head = await r.readuntil(b"\r\n")
    raw, parts = [head], []
    for _ in range(int(head[1:-2])):
        size = await r.readuntil(b"\r\n")
        data = await r.readexactly(int(size[1:-2]) + 2)
        raw += [size, data]
        parts.append(data[:-2])
    return parts, b"".join(raw)


class _Proxy:
    """A RESP proxy on a free loopback port in front of redis-server on `port`: a connection
    of its own upstream for each client connection, and `rule` applied to every command."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.rule: Rule = lambda parts: None

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        uw = None
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.port)
            while True:
                parts, raw = await _command(cr)
                act = self.rule(parts)
                if act is not None and act[0] == "garbage":
                    assert isinstance(act[1], bytes)
                    cw.write(act[1])
                    await cw.drain()
                    continue
                uw.write(raw)
                await uw.drain()
                reply = await _reply(ur)
                if act is not None and act[0] == "delay":
                    assert isinstance(act[1], float)
                    await asyncio.sleep(act[1])
                if act is not None and act[0] == "cut":
                    return
                cw.write(reply)
                await cw.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            cw.close()
            if uw is not None:
                uw.close()

    @contextlib.asynccontextmanager
    async def url(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        async with server:
            yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"


class _Once:
    """A rule: `act` on the first `command` only (`done` once it was)."""

    def __init__(self, command: bytes, act: tuple[str, object]) -> None:
        self.command, self.act, self.done = command, act, False

    def __call__(self, parts: list[bytes]) -> tuple[str, object] | None:
        if parts[0].upper() != self.command or self.done:
            return None
        self.done = True
        return self.act


async def test_one_reply_the_replica_cannot_read_does_not_end_its_sync_loop() -> None:
    """README: settlements Redis missed are settled once it answers, and a replica renews its
    holds every minute. Both run on the replica's sync loop, which let any error but
    StateUnavailable end it: one TIME answered as a single integer (a proxy's or a fake
    Redis's garbage) raised ValueError there, and the loop was gone for good, unsaid; a
    settlement queued after that was never settled (its spend never counted, its hold kept
    until it lapsed), and no hold was renewed again."""
    with redis() as server:
        proxy = _Proxy(server.port)
        proxy.rule = once = _Once(b"TIME", ("garbage", b"*1\r\n:1\r\n"))
        async with proxy.url() as url:
            svc = Service(ServerConfig(state_backend="redis", redis_url=url))
            await svc.startup()
            try:
                assert await until_async(lambda: once.done)
                b = Budget("key:k", 1.0, "total").pinned(hold="h1")
                assert await svc.state.admit([b], 0.5) is None
                svc.unsettled.append(([b], 0.5, 0.25))  # a settlement Redis missed
                assert await until_async(lambda: not svc.unsettled, limit_s=3), (
                    f"never settled: the sync loop is {svc._tasks[0]}"
                )
                assert await svc.state.spent(b) == (0.25, 0.0)
            finally:
                await svc.shutdown()
