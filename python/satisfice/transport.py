"""A lean HTTP/1.1 keep-alive transport for httpx, used by the router's shared client.

httpx's default pool (httpcore) rescans every connection and every queued request on each
request and each release, and asks the OS whether each idle socket is readable: at 32
concurrent requests against a local upstream that is most of the client's CPU, and its
queue gives a long tail (p99 many times p50; see benches/bench_overhead.py). This
transport keeps, per origin, a stack of idle connections (the warmest is reused first), a
FIFO of waiters for a free slot, and for each connection an asyncio protocol whose buffer
the reads take from directly, behind httpx's own `AsyncBaseTransport` interface: callers
keep the httpx API, timeouts and exceptions. The router's providers POST through `post`,
which skips httpx's request and response objects (see `Poster`).

What comes from the network is bounded: the response head (1 MiB), the body (`max_body`,
counted after decompression, which happens here in small steps so a gzip bomb neither
fills memory nor holds the event loop), and connections per origin (`max_per_host`), so
one hung upstream cannot take every slot from the healthy ones. A connection goes back to
the pool only when its response was read to the end and nothing unread is waiting on it (a
body closed early is closed with its connection: that is how a caller stops an upstream that
is still generating; providers read a finished stream to its end, see `providers.base`). A
request is never re-sent by the transport: a stale keep-alive connection is an error
(`StaleConnection`) the executor re-sends, so every request sent is an attempt on the
record.

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
import os
import re
import select
import ssl
import threading
import weakref
import zlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from time import monotonic
from typing import Any

import httpx

from ._watchdog import Watchdog

#: How far a request had got when it failed or was cancelled before it was sent: WAITING in
#: line for a pooled connection, or CONNECTING. Such a call never reached the upstream,
#: which cannot bill it; one cut off WAITING ran into the router's own limit, no fault of
#: the upstream's. The transport marks what it raises then (any exception, a cancellation
#: too: `stage_of` reads it); a request cut off later, or by another transport (a client
#: of the caller's), is UNKNOWN: it may have been sent. (Told on the way out, not kept up
#: to date in a context variable set per call: that had cost about 4,000 instructions on
#: every call, for the few that fail in line.)
UNKNOWN, WAITING, CONNECTING = 0, 1, 2


def stage_of(e: BaseException) -> int:
    """How far the request had got when `e` was raised (see WAITING): marked on it, or on
    what it was raised from (`raise ... from`: a limit's TimeoutError raised from the
    cancellation it cut in with, as asyncio.timeout raises it, had lost the mark)."""
    cause: BaseException | None = e
    while cause is not None:
        stage = getattr(cause, "satisfice_stage", None)
        if stage is not None:
            return stage  # type: ignore[no-any-return]
        cause = cause.__cause__
    return UNKNOWN


def mark_stage(e: BaseException, stage: int) -> None:
    """Mark `e` with `stage`, unless a deeper step marked it first."""
    if not hasattr(e, "satisfice_stage"):
        e.satisfice_stage = stage  # type: ignore[attr-defined]


__all__ = ["PooledTransport", "Poster", "StaleConnection", "body_pieces", "read_body"]

_MAX_HEAD = 1 << 20  # largest response head accepted
_HEAD_END = b"\r\n\r\n"
_MAX_FIELDS = 256  # most trailer lines accepted after a chunked body
# A chunk's size line: hex digits, then blanks and extensions (`;name=value`) it may have.
# int(..., 16) alone took 0x10, +10, " 10" and 1_0 for sizes, which no HTTP/1.1 parser reads.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;[^\r\n]*)?\r\n")
# most 1xx heads accepted before the answer: room for a long call's `102 Processing`
# keep-alives, a bound on a flood of them
_MAX_INFORMATIONAL = 1024
# A pooled connection closed within this long of the request being sent was closed before
# the upstream read it (its keep-alive ran out): a round trip, with room for a slow network.
_STALE_WITHIN_S = 0.25
_STEP = 1 << 16  # decompressed bytes per step: bounded CPU between two awaits
_HIGH_WATER = 1 << 21  # buffered bytes at which a connection stops reading until some are taken


class _Conn(asyncio.Protocol):
    """One connection: an asyncio protocol that keeps what arrives in a buffer the reads
    below take from directly; asyncio's StreamReader put a coroutine, a future and two
    layers of calls on every read. Bytes that arrived before the connection ended stay
    readable after it."""

    __slots__ = (
        "_drained", "_paused", "_poll", "_waiter", "buf", "ended", "error", "key", "transport",
        "used", "wd",
    )  # fmt: skip

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.buf = bytearray()
        self.ended = False  # no more bytes will arrive (EOF, reset or closed)
        self.error: BaseException | None = None  # why it ended, when not a clean EOF
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set at once
        self.used = monotonic()
        self._waiter: asyncio.Future[None] | None = None  # a read waiting for bytes
        self._drained: asyncio.Future[None] | None = None  # a write waiting for room
        self._paused = False  # reading paused: the buffer is full
        self._poll: Any = None  # `usable`'s poll object on the socket, made at its first reuse
        # the read timeout of every response it carries, one timer for the head and the
        # body, armed once for the connection's life (see Watchdog)
        self.wd = Watchdog()

    # asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > _HIGH_WATER and not self._paused:
            self._paused = True  # bounded: resumed as reads take from it
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.ended = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()
        d, self._drained = self._drained, None
        if d is not None and not d.done():
            d.set_exception(exc or ConnectionResetError("the connection was closed"))

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        d, self._drained = self._drained, None
        if d is not None and not d.done():
            d.set_result(None)

    # reads and writes ------------------------------------------------------------------------
    def _wake(self) -> None:
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    def more(self) -> asyncio.Future[None]:
        """Done when more bytes arrive or the connection ends."""
        w = self._waiter = asyncio.get_running_loop().create_future()
        return w

    def take(self, n: int) -> bytes:
        """The first `n` buffered bytes, removed from the buffer."""
        buf = self.buf
        out = bytes(buf[:n]) if n < len(buf) else bytes(buf)
        del buf[:n]
        if self._paused and len(buf) <= _HIGH_WATER // 2:
            self._paused = False
            self.transport.resume_reading()
        return out

    async def drain(self) -> None:
        """Until the transport's write buffer has room again."""
        if self.ended:
            raise self.error or ConnectionResetError("the connection was closed")
        if self._drained is not None:
            await self._drained

    # the pool's checks -----------------------------------------------------------------------
    def usable(self, expiry: float) -> bool:
        """Reusable: not closed by either side, and not idle for too long."""
        if self.ended or self.transport.is_closing() or monotonic() - self.used >= expiry:
            return False
        # Bytes already buffered, or a readable socket (a FIN, or bytes nobody asked for, e.g.
        # a second response): what the next request would read would not be its answer.
        if self.buf:
            return False
        poll = self._poll
        try:
            if poll is None:
                sock = self.transport.get_extra_info("socket")
                if sock is None:
                    return True
                poll = self._poll = select.poll()  # not select(): fails for fds >= 1024
                poll.register(sock.fileno(), select.POLLIN | select.POLLPRI)
            return not poll.poll(0)
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        # No graceful TLS close: the connection is dead to us. A loop that has been closed
        # cannot abort its transport: its socket is closed here then (it had waited for
        # the garbage collector, and a pool kept had kept it open).
        self.wd.close()
        try:
            self.transport.abort()
        except RuntimeError:
            self.forget()

    def forget(self) -> None:
        """Close the socket, and nothing else: in a forked child, this process's copy (the
        transport is the parent's event loop's: abort() would unregister the socket from the
        epoll instance both processes share, and the parent would never see its answer);
        on a closed loop, which can abort nothing."""
        self.ended = True  # never reused: `usable`'s poll object holds its number, not it
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock._sock.close()  # asyncio's wrapper offers no close(); this is the socket's own


_TRANSPORTS: weakref.WeakSet[PooledTransport] = weakref.WeakSet()


def _new_locks_in_child() -> None:
    # a lock another thread of the parent held at the fork is held for good in the child
    for t in list(_TRANSPORTS):
        t._others_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_in_child)


async def _until_shutdown(
    pool: weakref.ref[PooledTransport], loop: asyncio.AbstractEventLoop | None
) -> AsyncGenerator[None, None]:
    """Parked at its yield while `pool` uses `loop`: the loop's shutdown (asyncio.run's and
    a Runner's `shutdown_asyncgens`, pytest-asyncio's) ends it, and the pool's idle
    connections with it, while that loop can still abort them. Once the loop is closed a
    socket can only be closed behind its transport, which then warned (ResourceWarning)
    when collected: a test suite run with -W error failed on `asyncio.run(router.chat())`
    called twice, each run's connection kept for the next."""
    try:
        yield
    finally:
        p = pool()
        if p is not None and p._loop is loop and loop is not None and not loop.is_closed():
            p._close_idle()


class PooledTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive for every connection slot (see the module docstring)."""

    def __init__(
        self,
        *,
        max_connections: int = 512,
        max_per_host: int | None = None,
        keepalive_expiry: float = 60.0,
        max_body: int = 64 << 20,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._max = max_connections
        # Default: half the pool per origin, so one hung upstream leaves room for the others.
        self._max_host = max_per_host or max(max_connections // 2, 1)
        self._expiry = keepalive_expiry
        self._max_body = max_body
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._waiters: deque[tuple[tuple[str, str, int], asyncio.Future[None]]] = deque()
        self._total = 0  # open connections, idle or busy
        self._per_host: dict[tuple[str, str, int], int] = {}
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = os.getpid()  # the process whose event loop `_loop` is
        # A pool of its own for each other event loop that runs requests while `_loop` is
        # open (an app's loop and `chat_sync()`'s, on two threads): one pool had handed a
        # connection made on one loop to the other, whose reads then waited on a future
        # the first loop's thread resolved (30 s for an answer sent at once), and counted
        # slots of both as one. Looked up only when the running loop is not `_loop`.
        self._others: dict[asyncio.AbstractEventLoop, PooledTransport] = {}
        self._others_lock = threading.Lock()
        self._dropped = False  # let go of by `_prune`: kept by no one, it keeps no connection
        self._watch: AsyncGenerator[None, None] | None = None  # see `_until_shutdown`
        _TRANSPORTS.add(self)

    # pool -----------------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:  # built on first https use: it costs tens of milliseconds
            v = self._verify
            self._ssl = v if isinstance(v, ssl.SSLContext) else httpx.create_ssl_context(verify=v)
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    def _here(self) -> PooledTransport:
        """The pool of the running event loop: this one, else (another loop runs requests
        while this one's is open) that loop's own, made on its first request."""
        loop = asyncio.get_running_loop()
        if loop is self._loop or self._closed:  # (closed: `_acquire` says so)
            return self
        pool = self._others.get(loop)  # (a dict read is whole under the GIL: no lock)
        if pool is not None:
            return pool
        with self._others_lock:
            if self._closed:  # (closed since the look above: no new pool after aclose())
                return self
            old = self._loop
            if old is None or old.is_closed() or self._pid != os.getpid():
                # The first loop, or a new one after the old one closed (a second
                # asyncio.run()) or in a forked child: connections and waiters of the old one
                # cannot be used from here.
                if old is not None:
                    self._reset()
                self._loop, self._pid = loop, os.getpid()
                self._watch_loop()
                self._prune()
                return self
            self._prune()
            pool = self._others[loop] = PooledTransport(
                max_connections=self._max, max_per_host=self._max_host,
                keepalive_expiry=self._expiry, max_body=self._max_body, verify=self._verify,
            )  # fmt: skip
            pool._ssl, pool._loop = self._ssl, loop
            pool._watch_loop()
            return pool

    def _watch_loop(self) -> None:
        """Close the idle connections as the running loop shuts down (see `_until_shutdown`)."""
        watch = self._watch = _until_shutdown(weakref.ref(self), self._loop)
        with contextlib.suppress(StopIteration):  # the loop's hook keeps it from here on
            watch.asend(None).send(None)

    def _unwatch(self) -> None:
        """End the watch on a loop this pool no longer uses (its collection would schedule
        its end on that loop, closed or the parent's in a forked child)."""
        watch, self._watch = self._watch, None
        if watch is not None:
            with contextlib.suppress(StopIteration, RuntimeError):
                watch.aclose().send(None)

    def _prune(self) -> None:
        """Drop the other loops' pools that cannot be used again or need not be kept: a
        closed loop's (its sockets closed here), and one whose loop is not running with
        nothing in flight (its idle connections closed on that loop, when it next runs, or
        with it: 30 threads' loops left unclosed had kept 30 pools and their sockets; a
        loop that runs again makes a new one). Under `_others_lock`."""
        for loop, pool in list(self._others.items()):
            if loop.is_closed():
                del self._others[loop]
                pool._reset()
            elif not loop.is_running() and pool._total == pool._idle_count():
                del self._others[loop]
                # (its loop may have started a request on it meanwhile, from `_here`'s look
                # without the lock: that connection is closed when released, not kept)
                pool._dropped = True
                pool._close_soon()

    def _idle_count(self) -> int:
        return sum(len(stack) for stack in list(self._idle.values()))

    def _close_soon(self) -> None:
        """Close the idle connections on this pool's own loop, the thread that may abort its
        transports (at once if the loop is gone or is the running one)."""
        loop = self._loop
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if loop is None or loop is here or loop.is_closed() or self._pid != os.getpid():
            # (in a forked child its loop is the parent's: this process's copies closed here)
            self._close_idle()
            return
        with contextlib.suppress(RuntimeError):  # (closed meanwhile: closed with it)
            loop.call_soon_threadsafe(self._close_idle)

    def _reset(self) -> None:
        """Forget this pool's loop: its idle connections closed (in a forked child, this
        process's copy of each only), its counts and waiters dropped; the same for the
        other loops' pools in a forked child, whose loops ran on the parent's threads."""
        self._unwatch()
        self._close_idle()
        self._waiters.clear()
        self._total = 0
        self._per_host.clear()
        if self._pid != os.getpid():
            for pool in self._others.values():
                pool._reset()
            self._others.clear()

    async def _acquire(
        self, key: tuple[str, str, int], request: httpx.Request, timeouts: dict[str, Any]
    ) -> tuple[_Conn, bool]:
        """A connection for `key`, and whether it was reused (on this pool's loop: see
        `_here`)."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        loop = self._loop  # the running one (`_here` chose this pool for it)
        assert loop is not None
        deadline = None
        while True:
            stack = self._idle.get(key)
            while stack:
                conn = stack.pop()
                if conn.usable(self._expiry):
                    return conn, True
                self._discard(conn)
            host_full = self._per_host.get(key, 0) >= self._max_host
            if self._total < self._max and not host_full:
                self._count(key, +1)
                try:
                    return await self._connect(key, request, timeouts.get("connect")), False
                except BaseException as e:
                    mark_stage(e, CONNECTING)
                    self._count(key, -1)
                    self._wake()
                    raise
            if not host_full and self._drop_idle():
                continue  # freed a slot held by an idle connection to another origin
            # every slot is busy: wait in line for one
            pool = timeouts.get("pool")
            if deadline is None and pool is not None:
                deadline = monotonic() + pool
            fut = loop.create_future()
            entry = (key, fut)
            self._waiters.append(entry)
            try:
                left = None if deadline is None else max(deadline - monotonic(), 0.0)
                async with asyncio.timeout(left):
                    await fut
            except BaseException as e:
                if fut.done() and not fut.cancelled():
                    self._wake()  # we were handed a slot we will not use: pass it on
                else:
                    fut.cancel()
                    if entry in self._waiters:
                        self._waiters.remove(entry)
                if isinstance(e, TimeoutError):
                    raise httpx.PoolTimeout(
                        f"no free connection to {key[1]}:{key[2]} within {pool}s "
                        f"(max_connections={self._max}, max_per_host={self._max_host})",
                        request=request,
                    ) from None
                raise

    def _close_idle(self) -> None:
        """Close every idle connection; in a forked child, only its copy of each."""
        forked = self._pid != os.getpid()
        # taken whole first: a close and a prune on two threads had walked one dict
        idle, self._idle = self._idle, {}
        for stack in idle.values():
            for conn in stack:
                if forked:
                    conn.forget()
                else:
                    conn.close()
                self._count(conn.key, -1)

    def _drop_idle(self) -> bool:
        for stack in self._idle.values():
            if stack:
                self._discard(stack.pop(0))  # the coldest one
                return True
        return False

    def _count(self, key: tuple[str, str, int], n: int) -> None:
        self._total += n
        self._per_host[key] = self._per_host.get(key, 0) + n

    def _wake(self) -> None:
        """Hand the freed slot to the first waiter whose origin has room (FIFO otherwise)."""
        for entry in self._waiters:
            key, fut = entry
            if fut.done():
                continue
            if self._per_host.get(key, 0) < self._max_host or self._idle.get(key):
                self._waiters.remove(entry)
                fut.set_result(None)
                return

    def _discard(self, conn: _Conn) -> None:
        conn.close()
        self._count(conn.key, -1)
        self._wake()

    def _release(self, conn: _Conn, reusable: bool) -> None:
        if not reusable or self._closed or self._dropped:
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
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(key), host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"connect to {host}:{port} timed out", request=request
            ) from None
        except (OSError, ssl.SSLError) as e:
            raise httpx.ConnectError(
                f"connect to {host}:{port} failed: {e}", request=request
            ) from None
        return conn

    # requests -------------------------------------------------------------------------------
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if (pool := self._here()) is not self:
            return await pool.handle_async_request(request)
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
        status, reason, headers, stream = await self._exchange(key, head, body, timeouts, request)
        return httpx.Response(
            status,
            headers=headers,
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    async def post(
        self, poster: Poster, body: bytes, timeouts: dict[str, Any]
    ) -> tuple[int, list[tuple[bytes, bytes]], _Body]:
        """POST `body` as `poster` says: (status, headers, the body to read, decoded). What
        `handle_async_request` does for a request with a Content-Length, with the head made
        of bytes prepared once (see `Poster`) and without httpx's request and response
        objects (benches/bench_stream.py, bench_overhead.py)."""
        if (pool := self._here()) is not self:
            return await pool.post(poster, body, timeouts)
        head = poster.head + b"%d\r\n\r\n" % len(body)
        status, _, headers, stream = await self._exchange(
            poster.key, head, body, timeouts, poster.request
        )
        return status, headers, stream

    async def _exchange(
        self,
        key: tuple[str, str, int],
        head: bytes,
        body: bytes,
        timeouts: dict[str, Any],
        request: httpx.Request,
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]], _Body]:
        """Send the request and read its response's head: (status, reason, headers, body)."""
        try:
            conn, reused = await self._acquire(key, request, timeouts)
        except BaseException as e:
            mark_stage(e, WAITING)  # (unless it was connecting)
            raise
        unsent: BaseException | None = None
        sent = monotonic()
        try:
            try:
                conn.transport.write(head + body if len(body) < 65536 else head)
                if len(body) >= 65536:
                    conn.transport.write(body)
                    await _timed(conn.drain(), timeouts.get("write"), httpx.WriteTimeout, request)
            except (ConnectionError, OSError) as e:
                # An upstream may answer before it has read the whole body and close (a 413
                # from a size-limited proxy): that answer, if it came, is the one to report
                # (what arrived stays readable after the connection ends).
                unsent = e
            sent = monotonic()
            status, reason, headers, keep = await _read_head(conn, request, timeouts)
            try:
                length = _body_length(request, status, headers)
                decoder = _decoder(headers, request)
            except httpx.RemoteProtocolError as e:
                # a 2xx whose framing is refused: the upstream generated the answer, and
                # may bill it (the providers then estimate it; it had been billed $0)
                e.answered = 200 <= status < 300  # type: ignore[attr-defined]
                raise
        except _NothingRead:
            self._discard(conn)
            # Stale: the close met the request at once (it was under way before the request
            # arrived). A close long after it (an upstream that read the request, worked on
            # it and died) is the upstream failing, and is not re-sent at once.
            if reused and (unsent is not None or monotonic() - sent < _STALE_WITHIN_S):
                # Closed while it sat in the pool (its keep-alive ran out): the others kept
                # as long for this origin likely were too. Not re-sent here: the executor
                # re-sends it at once and records both (see StaleConnection).
                for old in self._idle.pop(key, []):
                    self._discard(old)
                raise StaleConnection(
                    "the upstream had closed this kept-alive connection and did not answer",
                    request=request,
                ) from None
            if unsent is not None:
                raise httpx.WriteError(
                    f"sending the request failed: {unsent}", request=request
                ) from None
            raise httpx.RemoteProtocolError(
                "the upstream closed the connection without answering", request=request
            ) from None
        except BaseException:
            self._discard(conn)
            raise
        if decoder is not None:  # decoded here, bounded; httpx must not decode it again
            headers = [(k, v) for k, v in headers if k.lower() != b"content-encoding"]
        stream = _Body(self, conn, request, length, keep, timeouts.get("read"), decoder)
        return status, reason, headers, stream

    async def aclose(self) -> None:
        """Close every pool's idle connections, each on its own loop's thread (a transport
        is aborted only there), and let go of the other loops' pools (a loop left unclosed
        had kept its pool and sockets for the transport's life)."""
        with self._others_lock:
            self._closed = True
            pools = [self, *self._others.values()]
            self._others.clear()
        for pool in pools:
            pool._closed = True
            pool._close_soon()


class Poster:
    """What a provider's every POST to one endpoint shares, prepared once for
    `PooledTransport.post`: the transport, the origin, the head up to its Content-Length
    value (request line, Host and the merged headers, in the order httpx would send them),
    and a request without a body that transport errors name."""

    __slots__ = ("head", "key", "pool", "request")

    def __init__(self, pool: PooledTransport, url: httpx.URL, headers: httpx.Headers) -> None:
        self.pool = pool
        https = url.scheme == "https"
        self.key = (url.scheme, url.host, url.port or (443 if https else 80))
        lines = [b"POST %s HTTP/1.1" % url.raw_path]
        lines += [k + b": " + v for k, v in headers.raw if k.lower() != b"content-length"]
        self.head = b"\r\n".join(lines) + b"\r\nContent-Length: "
        self.request = httpx.Request("POST", url)


class _NothingRead(httpx.ReadError):
    """The upstream closed (or reset) the connection before sending a byte of its answer."""


class StaleConnection(httpx.RemoteProtocolError):
    """A kept-alive connection from the pool was closed by the upstream and gave no byte of
    an answer: the usual race with the upstream's keep-alive timeout, not the upstream
    failing. The executor re-sends such a request once, at once, on a new connection, and
    does not count it against the deployment's health."""


async def _timed(
    aw: Any, timeout: float | None, exc: type[httpx.TimeoutException], request: httpx.Request
) -> Any:
    try:
        async with asyncio.timeout(timeout):
            return await aw
    except TimeoutError:
        raise exc(f"no progress within {timeout:.3g}s", request=request) from None


async def _more(
    conn: _Conn,
    timeout: float | None,
    request: httpx.Request,
    head: bool = False,
    eof_ok: bool = False,
) -> None:
    """Wait, within the read timeout (kept by the connection's watchdog), for
    more bytes than `conn.buf` holds; the error of a connection that ends without them.
    `head`: the read is the first of a response's head (the upstream closing before a byte of
    it is `_NothingRead`). `eof_ok`: a clean EOF is the caller's to judge (a body read until
    the upstream closes ends there): it returns, with `conn.ended` set."""
    n = len(conn.buf)
    if not conn.ended:
        try:
            await conn.wd.wait(conn.more(), timeout)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no progress within {timeout:.3g}s", request=request) from None
        if len(conn.buf) > n or not conn.ended:
            return
    e = conn.error
    if e is None and eof_ok:
        return
    nothing = head and not conn.buf
    if e is None:
        if nothing:
            raise _NothingRead("the upstream closed the connection", request=request)
        raise httpx.ReadError("the upstream closed the connection mid-response", request=request)
    if nothing:
        raise _NothingRead(f"read failed: {e}", request=request)
    raise httpx.ReadError(f"read failed: {e}", request=request)


def _bare_lf(request: httpx.Request) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(
        "a response head whose lines end in a bare LF, not CRLF", request=request
    )


async def _until(
    conn: _Conn,
    sep: bytes,
    timeout: float | None,
    request: httpx.Request,
    head: bool = False,
) -> bytes:
    """The buffered bytes up to and with `sep`, waiting for them (at most _MAX_HEAD)."""
    start = 0
    while True:
        buf = conn.buf
        i = buf.find(sep, start)
        if 0 <= i <= _MAX_HEAD:
            if sep == _HEAD_END and buf.find(b"\n\n", 0, i) >= 0:  # (bare-LF head, CRLF body)
                raise _bare_lf(request)
            return conn.take(i + len(sep))
        # (a read brings up to 256 KiB: the separator may arrive with the bytes past the limit)
        if i > _MAX_HEAD or len(buf) > _MAX_HEAD:
            raise httpx.RemoteProtocolError("response head or chunk line too long", request=request)
        if sep == _HEAD_END and b"\n\n" in buf:  # (no head of CRLF lines holds one)
            # said at once: waited for, the CRLF that never came had taken the read timeout
            # and been "no answer in time" for an answer that was there
            raise _bare_lf(request)
        start = max(len(buf) - len(sep) + 1, 0)
        await _more(conn, timeout, request, head)


async def _read_head(
    conn: _Conn, request: httpx.Request, timeouts: dict[str, Any]
) -> tuple[int, bytes, list[tuple[bytes, bytes]], bool]:
    read = timeouts.get("read")
    first = True
    informational = 0
    while True:
        raw = await _until(conn, _HEAD_END, read, request, first)
        first = False
        lines = raw[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        try:
            # Three digits exactly: int() alone took -1, 0200 and 2_00 for success codes.
            code = parts[1]
            if not (parts[0].startswith(b"HTTP/1.") and len(code) == 3 and code.isdigit()
                    and b"1" <= code[:1] <= b"5"):  # fmt: skip
                raise ValueError(parts[0])
            status = int(parts[1])
        except (ValueError, IndexError):
            raise httpx.RemoteProtocolError(
                f"not an HTTP/1.x response (a status line of {len(lines[0])} bytes)",
                request=request,
            ) from None
        if 100 <= status < 200 and status != 101:
            # 100 Continue and friends: the real answer follows (a few of them; an endless
            # run, already buffered, had held the event loop without an await)
            informational += 1
            if informational > _MAX_INFORMATIONAL:
                raise httpx.RemoteProtocolError(
                    f"more than {_MAX_INFORMATIONAL} informational (1xx) responses before "
                    "the answer",
                    request=request,
                )
            continue
        headers = []
        keep = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            v = v.strip()
            headers.append((k.strip(), v))
            if k.strip().lower() == b"connection":
                keep = b"close" not in v.lower() if keep else b"keep-alive" in v.lower()
        # (after a 101 the connection speaks another protocol: never reused for HTTP)
        return status, parts[2] if len(parts) > 2 else b"", headers, keep and status != 101


def _body_length(
    request: httpx.Request, status: int, headers: list[tuple[bytes, bytes]]
) -> int | None:
    """Bytes of body to read: None until EOF, -1 chunked."""
    if request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return 0
    length = None
    chunked = False
    for k, v in headers:
        lk = k.lower()
        if lk == b"content-length":
            if not v.isdigit() or len(v) > 18:
                raise httpx.RemoteProtocolError(
                    "a Content-Length that is not a number", request=request
                )
            if length is not None and int(v) != length:
                raise httpx.RemoteProtocolError(
                    "conflicting Content-Length headers", request=request
                )
            length = int(v)
        elif lk == b"transfer-encoding":
            if v.strip().lower() != b"chunked":
                raise httpx.RemoteProtocolError(
                    "a Transfer-Encoding other than chunked", request=request
                )
            chunked = True
    if chunked and length is not None:  # a request-smuggling shape: trust neither
        raise httpx.RemoteProtocolError(
            "both Content-Length and Transfer-Encoding: chunked", request=request
        )
    return -1 if chunked else length


def _decoder(headers: list[tuple[bytes, bytes]], request: httpx.Request) -> Any:
    """A zlib decompressor for a gzip/deflate body (None for identity). Every Content-Encoding
    line counts: httpx joins them, and would itself decode (unbounded) a coding a second line
    named that the first (`identity`) had hidden from us."""
    codings = [
        c.strip().lower()
        for k, v in headers
        if k.lower() == b"content-encoding"
        for c in v.split(b",")
    ]
    codings = [c for c in codings if c not in (b"", b"identity")]
    if not codings:
        return None
    if len(codings) == 1:
        if codings[0] in (b"gzip", b"x-gzip"):
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if codings[0] == b"deflate":
            return _Deflate()
    raise httpx.RemoteProtocolError(
        "a Content-Encoding other than gzip or deflate (satisfice asks for those only)",
        request=request,
    )


class _Deflate:
    """`deflate` as servers send it: zlib-wrapped as the spec says, or raw (as some servers
    send it, and httpx reads it), told apart by the zlib header's first two bytes. The part
    of zlib's decompressor interface `_Body` uses."""

    __slots__ = ("_dec", "_head")

    def __init__(self) -> None:
        self._dec: Any = None
        self._head = b""

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._dec is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return b""
            b0, b1 = data[0], data[1]  # zlib's CMF (deflate, window <= 32K) and check bits
            wrapped = b0 & 0x0F == 8 and b0 >> 4 <= 7 and (b0 << 8 | b1) % 31 == 0
            self._dec = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        return self._dec.decompress(data, max_length)  # type: ignore[no-any-return]

    def flush(self) -> bytes:
        return self._dec.flush() if self._dec is not None else b""

    @property
    def eof(self) -> bool:
        return self._dec is not None and self._dec.eof

    @property
    def unconsumed_tail(self) -> bytes:
        return self._dec.unconsumed_tail if self._dec is not None else b""

    @property
    def unused_data(self) -> bytes:
        return self._dec.unused_data if self._dec is not None else b""


class _Body(httpx.AsyncByteStream):
    """The response body: bounded, decoded in small steps, and its connection given back
    once read to the end (closed with it when the body is closed early)."""

    __slots__ = (
        "_chunk",
        "_conn",
        "_decoder",
        "_keep",
        "_left",
        "_read",
        "_request",
        "_size",
        "_transport",
    )

    def __init__(
        self,
        transport: PooledTransport,
        conn: _Conn,
        request: httpx.Request,
        length: int | None,
        keep: bool,
        read: float | None,
        decoder: Any = None,
    ) -> None:
        self._transport = transport
        self._conn: _Conn | None = conn
        self._request = request
        self._left = length  # bytes left; None: until EOF; -1: chunked
        self._keep = keep
        self._read = read
        self._decoder = decoder
        self._size = 0  # body bytes so far, after decoding: what max_body bounds
        self._chunk = 0  # chunked: bytes left of the chunk being read

    def _count(self, n: int) -> None:
        self._size += n
        if self._size > self._transport._max_body:
            raise httpx.RemoteProtocolError(
                f"response body larger than max_body={self._transport._max_body} bytes",
                request=self._request,
            )

    async def _raw(self, conn: _Conn) -> AsyncIterator[bytes]:
        """The body's bytes as sent (still encoded), as they arrive."""
        req, t = self._request, self._read
        if self._left is None:  # until the upstream closes the connection
            while True:
                if conn.buf:
                    yield conn.take(65536)
                elif conn.ended:
                    if conn.error is not None:
                        raise httpx.ReadError(f"read failed: {conn.error}", request=req)
                    return
                else:
                    await _more(conn, t, req, eof_ok=True)
        chunked = self._left < 0
        while True:
            if chunked and not self._chunk:
                self._chunk = await _chunk_size(conn, t, req)
                if not self._chunk:
                    self._left = 0  # the last chunk and its trailers are read
                    return
            elif not self._left:
                return
            while not conn.buf:
                if conn.ended and conn.error is None:
                    raise httpx.ReadError(
                        "the upstream closed the connection mid-body", request=req
                    )
                await _more(conn, t, req, eof_ok=not chunked)
            piece = conn.take(min(self._chunk if chunked else self._left, 65536))
            if chunked:
                self._chunk -= len(piece)
                if not self._chunk:  # a chunk ends with CRLF
                    while len(conn.buf) < 2:
                        await _more(conn, t, req)
                    if conn.take(2) != b"\r\n":
                        raise httpx.RemoteProtocolError(
                            "a chunk does not end with CRLF", request=req
                        )
            else:
                self._left -= len(piece)
            yield piece

    async def read_all(self) -> bytes:
        """The whole body (decoded). At once when it came with the head, as a small answer
        does: no generator, no await."""
        conn, left = self._conn, self._left
        if conn is None:
            return b""
        if self._decoder is None and left is not None and 0 <= left <= len(conn.buf):
            try:
                self._count(left)
            except BaseException:
                self._done(False)
                raise
            self._left = 0
            out = conn.take(left)
            self._done(self._keep)
            return out
        return b"".join([piece async for piece in self.__aiter__()])

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        try:
            dec = self._decoder
            fed = False  # compressed bytes came: an empty body (a 429's) has no stream to end
            async for raw in self._raw(conn):
                if dec is None:
                    self._count(len(raw))
                    yield raw
                    continue
                data = raw
                fed = fed or bool(raw)
                while data:  # at most _STEP decoded bytes per step, however much it inflates
                    if dec.eof:  # bytes after the compressed stream's end
                        data = data.lstrip(b"\0")  # NUL padding, which gzip readers skip
                        if not data:
                            break
                        if not b"\x1f\x8b".startswith(data[:2]):
                            raise zlib.error("bytes after the end of the compressed body")
                        # gzip's next member (valid gzip, which Python's gzip reads whole):
                        # its bytes had been dropped, an answer's usage with them
                        dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    out = dec.decompress(data, _STEP)
                    data = dec.unconsumed_tail or dec.unused_data
                    self._count(len(out))
                    if out:
                        yield out
                    await asyncio.sleep(0)  # let the loop run between two steps
            if dec is not None:
                tail = dec.flush()
                self._count(len(tail))
                if tail:
                    yield tail
                if fed and not dec.eof:  # the framing says the body is whole; the stream not
                    raise zlib.error("the compressed body ends before the end of its stream")
            self._done(self._keep and self._left is not None)
        except zlib.error as e:
            self._done(False)
            raise httpx.DecodingError(f"bad compressed body: {e}", request=self._request) from None
        except BaseException:
            self._done(False)
            raise

    def _done(self, reusable: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport._release(conn, reusable)

    async def aclose(self) -> None:
        # Closed before the end: the connection's state is unknown, and closing it is how a
        # caller stops an upstream that is still generating (and billing).
        self._done(False)


def body_pieces(resp: httpx.Response) -> AsyncIterator[bytes]:
    """A streamed response's body, piece by piece as it arrives. From this transport's own
    stream directly: httpx's `aiter_bytes()` passes each piece through three generators, a
    chunker and a decoder (none needed: `_Body` decodes), most of the CPU of reading a small
    answer (measured with py-spy on `satisfice serve`). Any other transport's: httpx's."""
    stream = resp.stream
    if type(stream) is _Body:
        return stream.__aiter__()
    return resp.aiter_bytes()


async def read_body(resp: httpx.Response) -> bytes:
    """A streamed response's whole body (what `aread()` returns; see `body_pieces`)."""
    stream = resp.stream
    if type(stream) is _Body:
        return await stream.read_all()
    return b"".join([piece async for piece in resp.aiter_bytes()])


async def _chunk_size(conn: _Conn, t: float | None, req: httpx.Request) -> int:
    """The size of a chunked body's next chunk; after the last one (0), its trailers read."""
    line = await _until(conn, b"\r\n", t, req)
    m = _CHUNK_LINE.fullmatch(line)
    if m is None:
        raise httpx.RemoteProtocolError("a chunk size that is not a number", request=req)
    size = int(m[1], 16)
    if size == 0:
        # trailers (read and dropped), as many as a head has room for: an endless run of
        # them, already buffered, had held the event loop without an await
        for _ in range(_MAX_FIELDS):
            if await _until(conn, b"\r\n", t, req) == b"\r\n":
                break
        else:
            raise httpx.RemoteProtocolError("more trailers than a response has", request=req)
    elif size > 1 << 26:
        raise httpx.RemoteProtocolError(f"a chunk of {size} bytes is too large", request=req)
    return size
