"""A lean HTTP/1.1 keep-alive transport for httpx, used by the router's shared client.

httpx's default pool (httpcore) rescans every connection and every queued request on each
request and each release, and asks the OS whether each idle socket is readable: at 32
concurrent requests against a local upstream that is most of the client's CPU, and its
queue gives a long tail (p99 many times p50; see benches/bench_overhead.py). This
transport keeps, per origin, a stack of idle connections (the warmest is reused first), a
FIFO of waiters for a free slot, and plain asyncio streams, behind httpx's own
`AsyncBaseTransport` interface: callers keep the httpx API, timeouts and exceptions.

Scope, on purpose: HTTP/1.1 over TCP or TLS, no proxies, no HTTP/2. A client that needs a
proxy keeps httpx's default transport (`Router.configure(http=httpx.AsyncClient(...))`).

Kept over httpx-aiohttp 0.2.0's AiohttpTransport (same limits; bench_overhead.py, 32 concurrent,
2 CPUs): 2,206 vs 3,032 req/s (-27%), p99 17.3 vs 12.1 ms; chat() 1,766 vs 2,403, 24.1 vs 16.7.
It also reports refused/TLS/stale-socket errors as ConnectTimeout, fails a POST on a stale
keep-alive connection rather than retry it, and breaks on a second asyncio.run().
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import ssl
from collections import deque
from collections.abc import AsyncIterator
from time import monotonic
from typing import Any

import httpx

__all__ = ["PooledTransport"]

_MAX_HEAD = 1 << 20  # largest response head accepted


class _Conn:
    __slots__ = ("key", "reader", "used", "writer")

    def __init__(
        self, key: tuple[str, str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.key = key
        self.reader = reader
        self.writer = writer
        self.used = monotonic()

    def usable(self, expiry: float) -> bool:
        """Reusable: not closed by either side, and not idle for too long."""
        if (
            self.writer.transport.is_closing()
            or self.reader.at_eof()
            or monotonic() - self.used >= expiry
        ):
            return False
        # The upstream may have closed it while our loop was busy: an idle connection that
        # is readable has a FIN (or stray bytes) waiting. One poll of this one socket.
        sock = self.writer.transport.get_extra_info("socket")
        if sock is None:
            return True
        try:
            return not select.select([sock.fileno()], [], [], 0)[0]
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        # No graceful TLS close: the connection is dead to us. A loop that has been closed
        # cannot abort its transport; the socket is then closed when it is collected.
        with contextlib.suppress(RuntimeError):
            self.writer.transport.abort()


class PooledTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive for every connection slot (see the module docstring)."""

    def __init__(
        self,
        *,
        max_connections: int = 512,
        keepalive_expiry: float = 60.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._total = 0  # open connections, idle or busy
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # pool -----------------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:  # built on first https use: it costs tens of milliseconds
            v = self._verify
            self._ssl = v if isinstance(v, ssl.SSLContext) else httpx.create_ssl_context(verify=v)
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    async def _acquire(
        self, key: tuple[str, str, int], request: httpx.Request, timeouts: dict[str, Any]
    ) -> tuple[_Conn, bool]:
        """A connection for `key`, and whether it was reused."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (e.g. a second asyncio.run()): connections and waiters of the
            # old one cannot be used from here.
            if self._loop is not None:
                for idle in self._idle.values():
                    for conn in idle:
                        conn.close()
                self._idle.clear()
                self._waiters.clear()
                self._total = 0
            self._loop = loop
        deadline = None
        while True:
            stack = self._idle.get(key)
            while stack:
                conn = stack.pop()
                if conn.usable(self._expiry):
                    return conn, True
                self._discard(conn)
            if self._total < self._max:
                self._total += 1
                try:
                    return await self._connect(key, request, timeouts.get("connect")), False
                except BaseException:
                    self._total -= 1
                    self._wake()
                    raise
            if self._drop_idle():
                continue  # freed a slot held by an idle connection to another origin
            # every slot is busy: wait in line for one
            pool = timeouts.get("pool")
            if deadline is None and pool is not None:
                deadline = monotonic() + pool
            fut = loop.create_future()
            self._waiters.append(fut)
            try:
                left = None if deadline is None else max(deadline - monotonic(), 0.0)
                async with asyncio.timeout(left):
                    await fut
            except BaseException as e:
                if fut.done() and not fut.cancelled():
                    self._wake()  # we were handed a slot we will not use: pass it on
                else:
                    fut.cancel()
                    if fut in self._waiters:
                        self._waiters.remove(fut)
                if isinstance(e, TimeoutError):
                    raise httpx.PoolTimeout(
                        f"no free connection within {pool}s (max_connections={self._max})",
                        request=request,
                    ) from None
                raise

    def _drop_idle(self) -> bool:
        for stack in self._idle.values():
            if stack:
                self._discard(stack.pop(0))  # the coldest one
                return True
        return False

    def _wake(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _discard(self, conn: _Conn) -> None:
        conn.close()
        self._total -= 1
        self._wake()

    def _release(self, conn: _Conn, reusable: bool) -> None:
        if not reusable or self._closed:
            self._discard(conn)
            return
        conn.used = monotonic()
        self._idle.setdefault(conn.key, []).append(conn)
        self._wake()

    async def _connect(
        self, key: tuple[str, str, int], request: httpx.Request, timeout: float | None
    ) -> _Conn:
        scheme, host, port = key
        tls = self._ssl_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None, limit=_MAX_HEAD
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"connect to {host}:{port} timed out", request=request
            ) from None
        except (OSError, ssl.SSLError) as e:
            raise httpx.ConnectError(
                f"connect to {host}:{port} failed: {e}", request=request
            ) from None
        return _Conn(key, reader, writer)

    # requests -------------------------------------------------------------------------------
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        https = url.scheme == "https"
        key = (url.scheme, url.host, url.port or (443 if https else 80))
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        try:
            body = request.content
        except httpx.RequestNotRead:  # a streamed upload: we send it with a length
            body = b"".join([c async for c in request.stream])  # type: ignore[union-attr]
        lines = [b"%s %s HTTP/1.1" % (request.method.encode(), url.raw_path)]
        chunked = False
        for k, v in request.headers.raw:
            if k.lower() == b"transfer-encoding":
                chunked = b"chunked" in v.lower()
                continue
            lines.append(k + b": " + v)
        if chunked:  # we have the whole body: send it with a length
            lines.append(b"Content-Length: %d" % len(body))
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        for attempt in (0, 1):
            conn, reused = await self._acquire(key, request, timeouts)
            try:
                conn.writer.write(head + body if len(body) < 65536 else head)
                if len(body) >= 65536:
                    conn.writer.write(body)
                    await _timed(
                        conn.writer.drain(), timeouts.get("write"), httpx.WriteTimeout, request
                    )
                status, reason, headers, keep = await _read_head(conn, request, timeouts)
                length = _body_length(request, status, headers)
            except _NothingRead:
                self._discard(conn)
                if reused and attempt == 0:
                    # The upstream closed this idle connection as our request went out
                    # (a clean close, not a byte of answer): one retry on a fresh one.
                    continue
                raise
            except BaseException:
                self._discard(conn)
                raise
            break
        stream = _Body(self, conn, request, length, keep, timeouts.get("read"))
        return httpx.Response(
            status,
            headers=headers,
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    async def aclose(self) -> None:
        self._closed = True
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
                self._total -= 1
        self._idle.clear()


class _NothingRead(httpx.ReadError):
    """The upstream closed the connection before sending a byte of its answer."""


async def _timed(
    aw: Any, timeout: float | None, exc: type[httpx.TimeoutException], request: httpx.Request
) -> Any:
    try:
        async with asyncio.timeout(timeout):
            return await aw
    except TimeoutError:
        raise exc(f"no progress within {timeout}s", request=request) from None


async def _read(conn: _Conn, coro: Any, timeout: float | None, request: httpx.Request) -> Any:
    try:
        return await _timed(coro, timeout, httpx.ReadTimeout, request)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise _NothingRead("the upstream closed the connection", request=request) from None
        raise httpx.ReadError(
            "the upstream closed the connection mid-response", request=request
        ) from None
    except asyncio.LimitOverrunError:
        raise httpx.RemoteProtocolError(
            "response head or chunk line too long", request=request
        ) from None
    except (ConnectionError, OSError) as e:
        raise httpx.ReadError(f"read failed: {e}", request=request) from None


async def _read_head(
    conn: _Conn, request: httpx.Request, timeouts: dict[str, Any]
) -> tuple[int, bytes, list[tuple[bytes, bytes]], bool]:
    read = timeouts.get("read")
    while True:
        raw: bytes = await _read(conn, conn.reader.readuntil(b"\r\n\r\n"), read, request)
        lines = raw[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        try:
            if not parts[0].startswith(b"HTTP/1."):
                raise ValueError(parts[0])
            status = int(parts[1])
        except (ValueError, IndexError):
            raise httpx.RemoteProtocolError(
                f"not an HTTP/1.x response: {lines[0][:80]!r}", request=request
            ) from None
        if 100 <= status < 200 and status != 101:
            continue  # 100 Continue and friends: the real answer follows
        headers = []
        keep = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            v = v.strip()
            headers.append((k.strip(), v))
            if k.strip().lower() == b"connection":
                keep = b"close" not in v.lower() if keep else b"keep-alive" in v.lower()
        return status, parts[2] if len(parts) > 2 else b"", headers, keep


def _body_length(
    request: httpx.Request, status: int, headers: list[tuple[bytes, bytes]]
) -> int | None:
    """Bytes of body to read: None until EOF, -1 chunked."""
    if request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return 0
    length = None
    for k, v in headers:
        lk = k.lower()
        if lk == b"content-length":
            if not v.isdigit():
                raise httpx.RemoteProtocolError(f"bad Content-Length {v[:40]!r}", request=request)
            length = int(v)
        elif lk == b"transfer-encoding" and b"chunked" in v.lower():
            length = -1
    return length


class _Body(httpx.AsyncByteStream):
    """The response body; gives the connection back once read to the end, else closes it."""

    __slots__ = ("_conn", "_keep", "_length", "_read", "_request", "_transport")

    def __init__(
        self,
        transport: PooledTransport,
        conn: _Conn,
        request: httpx.Request,
        length: int | None,
        keep: bool,
        read: float | None,
    ) -> None:
        self._transport = transport
        self._conn: _Conn | None = conn
        self._request = request
        self._length = length  # None: until EOF; -1: chunked
        self._keep = keep
        self._read = read

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        r, req, t = conn.reader, self._request, self._read
        try:
            if self._length is None:
                while chunk := await _read(conn, r.read(65536), t, req):
                    yield chunk
                self._done(False)
                return
            if self._length >= 0:
                left = self._length
                while left:
                    chunk = await _read(conn, r.read(min(left, 65536)), t, req)
                    if not chunk:
                        raise httpx.ReadError(
                            "the upstream closed the connection mid-body", request=req
                        )
                    left -= len(chunk)
                    yield chunk
                self._done(self._keep)
                return
            while True:  # chunked
                line = await _read(conn, r.readuntil(b"\r\n"), t, req)
                try:
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    raise httpx.RemoteProtocolError(
                        f"bad chunk size line {line[:40]!r}", request=req
                    ) from None
                if size == 0:
                    while await _read(conn, r.readuntil(b"\r\n"), t, req) != b"\r\n":
                        pass  # trailers
                    break
                data = await _read(conn, r.readexactly(size + 2), t, req)
                yield data[:-2]
            self._done(self._keep)
        except BaseException:
            self._done(False)
            raise

    def _done(self, reusable: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport._release(conn, reusable)

    async def aclose(self) -> None:
        self._done(False)  # closed before the end: the connection's state is unknown
