"""The server's shared state when Redis misbehaves: replies it cannot read, replies that come
late or never, a restart mid-load. A RESP proxy in front of a real redis-server (written
here) rewrites, delays or cuts the replies a test picks. From an adversarial review: each
test failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from satisfice.server import ServerConfig, create_app
from satisfice.server.app import Service
from satisfice.server.state import Budget, RedisState, VirtualKey
from satisfice.testing import LocalUpstream

from .chat_support import registry
from .polling import until_async
from .server_support import ADMIN
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


def _rule_on(*command: bytes, act: tuple[str, object]) -> Rule:
    """`act` on each command that begins with `command`."""

    def rule(parts: list[bytes]) -> tuple[str, object] | None:
        return act if [parts[0].upper(), *parts[1 : len(command)]] == [*command] else None

    return rule


@pytest.mark.usefixtures("master")
async def test_replies_of_another_shape_are_the_store_unavailable_not_a_500(
    tmp_path: Path,
) -> None:
    """README: while Redis is unavailable, budgets fail closed (503 `state_unavailable`) and
    session pins fail open on the replica's own view. A reply of another shape than its
    command's (well-formed RESP: here one integer, as a fake Redis or a proxy might send)
    had raised TypeError or AttributeError out of the state: a budgeted request got a 500
    (`internal error (TypeError)`, its lost admission's hold left unreleased) and so did
    every request with a session, whose pin read the same way."""
    with redis() as server, LocalUpstream(record=False) as up:
        reg = tmp_path / "r.toml"
        reg.write_text(registry(up.url).to_toml())
        proxy = _Proxy(server.port)
        async with proxy.url() as url:
            app = create_app(
                ServerConfig(registry_path=str(reg), state_backend="redis", redis_url=url)
            )
            svc = app.state.service
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                made = await c.post("/admin/keys", headers=ADMIN,
                                    json={"name": "k", "budget_usd": 1.0})  # fmt: skip
                auth = {"authorization": f"Bearer {made.json()['key']}"}
                body = {"model": "auto", "max_tokens": 20,
                        "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
                admission = svc.state._admit.sha.encode()
                proxy.rule = _rule_on(b"EVALSHA", admission, act=("garbage", b":1\r\n"))
                r = await c.post("/v1/chat/completions", json=body, headers=auth)
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "state_unavailable"
                assert len(svc.unsettled) == 1  # its hold's release, settled once it answers
                proxy.rule = _rule_on(b"GET", act=("garbage", b":1\r\n"))
                session = {"x-satisfice-session": "s1"}
                r = await c.post("/v1/chat/completions", json=body, headers=session)
                assert r.status_code == 200, r.text
            await svc.state.close()


async def test_a_key_update_whose_reply_was_cut_is_said_as_made() -> None:
    """A command whose connection is cut before its reply is sent again on another
    (`_Connections.call`; the scripts are idempotent). A key's compare-and-set is not, as it
    was: applied the first time, sent again it found the stored record no longer the one
    read and said the key had changed meanwhile (PATCH /admin/keys answered 409, "read it and
    try again", for the change it had made)."""
    with redis() as server:
        proxy = _Proxy(server.port)
        async with proxy.url() as url:
            s = RedisState(url)
            k, _ = VirtualKey.new("k", rpm=10)
            await s.put_key(k)
            nine = replace(k, rpm=9)
            assert await s.replace_key(k, nine)  # (its script loaded)
            proxy.rule = cut = _Once(b"EVALSHA", ("cut", None))
            assert await s.replace_key(nine, replace(nine, rpm=5))
            assert cut.done
            stored = await s.key_by_id(k.id)
            await s.close()
        assert stored is not None and stored.rpm == 5
