"""PooledTransport: keep-alive reuse, the connection limit, pool timeouts, stale
connections and cancellation, over real sockets (the protocol paths are also exercised by
every provider test, which runs on both transports)."""

from __future__ import annotations

import asyncio
import gc
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from satisfice.testing import LocalUpstream, hang, reply

from .chat_support import router

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def client(**kw: object) -> httpx.AsyncClient:
    from satisfice.transport import PooledTransport

    return httpx.AsyncClient(transport=PooledTransport(**kw))  # type: ignore[arg-type]


async def test_connections_are_kept_alive_and_reused(up: LocalUpstream) -> None:
    before = up.total_connections
    async with client() as c:
        for _ in range(50):
            r = await c.post(up.url + "/v1/chat/completions", json=BODY)
            assert r.json()["choices"][0]["message"]["content"] == "answer from m"
    assert up.total_connections - before == 1


async def test_the_connection_limit_queues_requests_in_order(up: LocalUpstream) -> None:
    up.default = reply(latency=0.02)
    try:
        before = up.total_connections
        async with client(max_connections=2, max_per_host=2) as c:
            rs = await asyncio.gather(
                *(c.post(up.url + "/v1/chat/completions", json=BODY) for _ in range(12))
            )
        assert all(r.status_code == 200 for r in rs)
        assert up.total_connections - before == 2
    finally:
        up.default = reply()


async def test_pool_timeout_when_every_slot_is_busy(up: LocalUpstream) -> None:
    up.script("m", hang())
    async with client(max_connections=1) as c:
        stuck = asyncio.create_task(c.post(up.url + "/v1/chat/completions", json=BODY))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout, match="max_connections=1"):
            await c.post(
                up.url + "/v1/chat/completions", json=BODY, timeout=httpx.Timeout(5.0, pool=0.1)
            )
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        # the cancelled request gave its slot back
        r = await c.post(up.url + "/v1/chat/completions", json=BODY)
        assert r.status_code == 200


async def test_a_connection_the_upstream_closed_is_not_reused_blindly(
    up: LocalUpstream,
) -> None:
    async with client() as c:
        for _ in range(5):
            assert (await c.post(up.url + "/v1/chat/completions", json=BODY)).status_code == 200
            up.drop_connections()  # the idle connection dies under us, FIN possibly unseen
    assert len(up.seen("m")) == 5  # each request reached the upstream exactly once


async def test_a_forgotten_connection_is_never_usable_again(up: LocalUpstream) -> None:
    """`usable` polls the socket's descriptor number, kept from its first reuse: once a
    forked child's copy is closed (`forget`), that number may belong to another socket,
    whose quiet must not pass for this connection's."""
    import socket

    from satisfice.transport import PooledTransport

    pool = PooledTransport()
    async with httpx.AsyncClient(transport=pool) as c:  # type: ignore[arg-type]
        for _ in range(2):  # the second request's reuse check makes the poll object
            assert (await c.post(up.url + "/v1/chat/completions", json=BODY)).status_code == 200
        (conn,) = [x for stack in pool._idle.values() for x in stack]
        assert conn.usable(60.0)
        fd = conn.transport.get_extra_info("socket").fileno()
        conn.forget()
        others = [socket.socketpair() for _ in range(4)]  # one of them may take its number
        try:
            assert any(s.fileno() == fd for pair in others for s in pair)
            assert not conn.usable(60.0)
        finally:
            for a, b in others:
                a.close()
                b.close()


async def test_read_timeout_and_connect_error(up: LocalUpstream) -> None:
    up.script("m", hang())
    async with client() as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post(up.url + "/v1/chat/completions", json=BODY, timeout=0.1)
        with LocalUpstream() as gone:
            url = gone.url
        with pytest.raises(httpx.ConnectError):
            await c.post(url + "/v1/chat/completions", json=BODY)


async def test_streamed_responses_arrive_piece_by_piece(up: LocalUpstream) -> None:
    up.script("m", reply("a b c", chunk_delay=0.02))
    async with client() as c:
        body = {**BODY, "stream": True}
        async with c.stream("POST", up.url + "/v1/chat/completions", json=body) as r:
            lines = [line async for line in r.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]" and len(lines) == 6


# The first loop's idle connection cannot be closed once that loop is (asyncio.run closes
# it); its socket is closed when collected, with the ResourceWarning that comes with that.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_router_survives_a_new_event_loop(upstream: LocalUpstream) -> None:
    """A module-level router used by two asyncio.run() calls, as scripts do."""
    r = router(upstream.url)
    for _ in range(2):
        res = asyncio.run(r.chat("hi"))
        assert res.text.startswith("answer from")
    asyncio.run(r.aclose())
    gc.collect()


def test_two_event_loops_at_once_keep_their_connections_apart(upstream: LocalUpstream) -> None:
    """An app's loop calling chat() while a thread calls chat_sync() (the router's own
    loop): one pool handed the connection chat_sync() had made to the app's loop, whose read
    then waited on a future the other loop's thread resolved, until its read timeout (an
    answer sent at once took 30 s), and its counts took both loops' slots as one."""
    import threading
    import time

    from satisfice.testing import reply

    from .chat_support import wire

    upstream.wait_idle()
    upstream.reset_script()
    r = router(upstream.url, read_timeout_s=10.0, attempt_timeout_s=20.0)
    upstream.script(wire("alpha"), reply(latency=0.6))  # chat_sync()'s: its slot busy a while
    sent = len(upstream.requests)
    t = threading.Thread(target=lambda: r.chat_sync("hi"))
    t.start()

    async def app() -> None:
        took = []
        end = time.monotonic() + 10
        while len(upstream.requests) == sent and time.monotonic() < end:
            await asyncio.sleep(0.01)  # until chat_sync() has its connection, in use
        for _ in range(2):
            t0 = time.perf_counter()
            assert (await r.chat("hi")).text.startswith("answer from")
            took.append(time.perf_counter() - t0)
            await asyncio.to_thread(t.join)  # chat_sync()'s connection back in the pool
        assert max(took) < 2.0, took  # answered at once, not at the read timeout
        pool = r._io.client.pool  # type: ignore[union-attr]
        mine = pool._here()
        assert mine is not pool  # this loop's own pool
        for p in (pool, mine):  # each counts its own: one connection, idle
            assert p._total == sum(len(s) for s in p._idle.values()) == 1
        await r.aclose()

    asyncio.run(app())


async def test_tls_with_verification(tmp_path: Path) -> None:
    """HTTPS through the pool against a local TLS server with a throwaway certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    url = f"https://localhost:{server.sockets[0].getsockname()[1]}/x"
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        async with client(verify=trusted) as c:
            for _ in range(3):
                assert (await c.post(url, content=b"hi")).text == "ok"
        async with client() as c:  # the system trust store does not know this certificate
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await c.post(url, content=b"hi")
    finally:
        server.close()
        await server.wait_closed()


async def test_a_bad_content_length_is_a_protocol_error_and_frees_the_slot() -> None:
    answers = [b"content-length: abc", b"content-length: 2"]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\n" + answers.pop(0) + b"\r\n\r\nok")
            await writer.drain()
            await reader.read()  # until the client closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"
    try:
        async with client(max_connections=1) as c:
            with pytest.raises(httpx.RemoteProtocolError, match="Content-Length"):
                await c.post(url, content=b"hi")
            # the broken connection gave its only slot back
            r = await c.post(url, content=b"hi", timeout=httpx.Timeout(2.0, pool=0.5))
            assert r.text == "ok"
    finally:
        server.close()
        await server.wait_closed()


def test_the_routers_client_keeps_no_cookies() -> None:
    """A cookie one upstream answer sets must not go out with the next request (the
    router's one client serves every caller); httpx's own client would send it back."""
    from satisfice.executor import _Client

    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "session=caller-a; Path=/"})

    async def two_calls(client: httpx.AsyncClient) -> None:
        async with client:
            for _ in range(2):
                await client.post("http://upstream.test/v1/chat/completions", content=b"{}")

    asyncio.run(two_calls(httpx.AsyncClient(transport=httpx.MockTransport(handler))))
    assert seen == [None, "session=caller-a"]  # what a plain httpx client does
    seen.clear()
    asyncio.run(two_calls(_Client(transport=httpx.MockTransport(handler))))
    assert seen == [None, None]


def test_nothing_can_be_put_in_the_shared_empty_jar() -> None:
    """Every router client shares one empty jar: a cookie set on one would go out with
    another's requests. Found by review."""
    from satisfice.executor import _Client

    a, b = _Client(), _Client()
    with pytest.raises(ValueError, match="keeps no cookies"):
        a.cookies.set("session", "A-secret")
    with pytest.raises(ValueError, match="keeps no cookies"):
        a.cookies["session"] = "A-secret"
    from http.cookiejar import Cookie

    c = Cookie(0, "session", "A-secret", None, False, "upstream.test", True, False, "/",
               True, False, None, False, None, None, {})  # fmt: skip
    with pytest.raises(ValueError, match="keeps no cookies"):
        a.cookies.jar.set_cookie(c)  # the jar's own door too (found by review)
    assert not b.cookies
    req = b.build_request("POST", "http://upstream.test/v1/chat/completions")
    assert "cookie" not in req.headers


def test_loops_left_unclosed_or_closed_keep_no_pool_and_no_socket(
    upstream: LocalUpstream,
) -> None:
    """Threads that each ran a request on a loop of their own and left it unclosed had each
    kept a pool and its socket for the router's life (30 loops: 30 upstream connections);
    one closed after the router closed kept its sockets until collected."""
    import threading

    upstream.wait_idle()
    upstream.reset_script()
    r = router(upstream.url)
    r.chat_sync("hi")  # the first loop's pool: chat_sync()'s
    kept: list[asyncio.AbstractEventLoop] = []

    def job() -> None:
        loop = asyncio.new_event_loop()  # left open, as a worker's may be
        kept.append(loop)
        loop.run_until_complete(r.chat("hi"))

    for _ in range(10):
        t = threading.Thread(target=job)
        t.start()
        t.join()
    pool = r._io.client.pool  # type: ignore[union-attr]
    assert len(pool._others) <= 1
    r.close()
    for loop in kept:
        loop.run_until_complete(asyncio.sleep(0))  # a closing its pool left it runs
        loop.close()
    gc.collect()
    end = time.monotonic() + 5
    while upstream.open_connections > 0 and time.monotonic() < end:
        time.sleep(0.02)
    assert upstream.open_connections == 0


def test_a_pool_let_go_of_keeps_no_connection_and_none_is_made_after_close(
    upstream: LocalUpstream,
) -> None:
    """Two races on the pools of loops besides the first: a loop that began a request on
    its pool just as another thread let the pool go (its loop not running, nothing in
    flight) had released the connection into a pool no one held, open for good; and a
    request that looked for its loop's pool just before aclose() made one after it, never
    closed."""
    import threading

    from satisfice.transport import PooledTransport

    upstream.wait_idle()
    transport = PooledTransport()
    c = httpx.AsyncClient(transport=transport)
    url = upstream.url + "/v1/chat/completions"
    first = asyncio.new_event_loop()
    first.run_until_complete(c.post(url, json=BODY))  # the first loop's pool
    other = asyncio.new_event_loop()  # another loop, its own pool

    async def post() -> int:
        return (await c.post(url, json=BODY)).status_code

    def on_other() -> None:
        assert other.run_until_complete(post()) == 200

    t = threading.Thread(target=on_other)
    t.start()
    t.join()
    pool = transport._others[other]
    with transport._others_lock:  # its loop is not running, nothing in flight: let go
        transport._prune()
    assert other not in transport._others
    # ...while its loop had begun a request on it: the connection is not kept there
    assert pool._loop is other

    async def read() -> None:
        _, _, body = await pool.post(_poster(transport, url), b"{}", {})
        await body.read_all()
        await body.aclose()

    other.run_until_complete(read())
    assert pool._idle_count() == 0 and pool._total == 0
    # a request that looked before aclose() and takes the lock after it makes no pool
    with transport._others_lock:
        looked = threading.Event()

        def late() -> None:
            async def here() -> object:
                looked.set()
                return transport._here()

            assert other.run_until_complete(here()) is transport

        t = threading.Thread(target=late)
        t.start()
        looked.wait(5)
        time.sleep(0.1)  # at the lock by now
        transport._closed = True  # what aclose() does, under the lock
        transport._others.clear()
    t.join()
    assert transport._others == {}
    first.run_until_complete(c.aclose())
    for loop in (first, other):
        loop.close()


def _poster(transport: object, url: str) -> object:
    from satisfice.transport import Poster

    return Poster(transport, httpx.URL(url), httpx.Headers({"content-type": "application/json"}))  # type: ignore[arg-type]
