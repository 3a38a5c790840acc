"""uvicorn's HTTP/1.1 protocol, with a response's head and body sent in one write, a
bound on how long a request's head may take to arrive and on its size, what it refuses
itself answered in the API's error shape, a non-streamed request's call cancelled when its
client leaves before the answer, and streams cut by the server itself (an error event, the
hold kept) just before a shutdown's grace runs out."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Iterable
from typing import Any

__all__ = ["http_protocol", "shutdown_timeout"]

_log = logging.getLogger("satisfice.server")


def http_protocol(head_timeout_s: float = 30.0, shutdown_grace_s: float | None = None) -> Any:
    """uvicorn's `http=` for `satisfice serve`: httptools' protocol with writes joined
    (`_OneWrite`) and a connection closed when a request's head has not arrived in full
    `head_timeout_s` after the connection opened or the head began; else uvicorn's own
    choice (h11, where httptools is not installed). uvicorn bounds only the idle time
    between requests (its keep-alive timeout, which the first byte of a head cancels): a
    client that opened a connection and sent nothing, or a head a byte at a time, held the
    connection for good."""
    try:
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:
        return "auto"

    class OneWriteProtocol(HttpToolsProtocol):
        # One timer for every connection of the server, not one per request: it sweeps
        # the connections once a second while there are any, on the loop it was started on.
        _sweep_loop: asyncio.AbstractEventLoop | None = None
        _head_since: float | None = None  # when the server began waiting for this head
        _head_bytes = 0  # what has been read of it

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_OneWrite(transport, self.loop))  # type: ignore[arg-type]
            self._head_since = self.loop.time()
            self._left = Connection()
            cls = type(self)
            if cls._sweep_loop is not self.loop:  # none yet, or one on a loop now gone
                cls._sweep_loop = self.loop
                self.loop.call_later(_SWEEP_S, self._sweep)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head_since is None:
                self._head_since = self.loop.time()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # httptools keeps a head until it is whole, however long (uvicorn's h11 protocol
            # refuses one past 16 KiB): a 60 MB header had been read and served. Still
            # waiting for the head after `data`, all of it was head (but for the end of a
            # body read with it, which the bound's room takes in)
            if self._head_since is not None and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > _HEAD_MAX:
                    self._head_since = None
                    self._refuse(431, f"the request's head (its line and headers) is over "
                                 f"{_HEAD_MAX} bytes; send large values in the body",
                                 "headers_too_large")  # fmt: skip

        def send_400_response(self, msg: str) -> None:
            # uvicorn's answer to bytes that are not HTTP, in the API's error shape: it had
            # been text/plain, which the SDKs show as a bare status
            self._refuse(400, "the request is not valid HTTP/1.1 (its request line, headers, "
                         "content-length or chunk sizes); check the client, or a proxy "
                         "before the server", "invalid_http")  # fmt: skip

        def _refuse(self, status: int, message: str, code: str) -> None:
            """Answer `status` in the API's error shape (Anthropic's on /v1/messages, as
            `_no_such_route` chooses) and close the connection: what the protocol reads
            cannot reach the app. Closed unanswered where a response is under way."""
            from .app import HTTPError

            cycle = self.cycle
            if cycle is None or cycle.response_complete or not cycle.response_started:
                url = getattr(self, "url", b"")
                api = "anthropic" if url.startswith(b"/v1/messages") else "openai"
                body = json.dumps(HTTPError(status, message, "invalid_request_error", code)
                                  .body(api)).encode()  # fmt: skip
                head = [STATUS_LINE[status]]
                for name, value in self.server_state.default_headers:
                    head += (name, b": ", value, b"\r\n")
                head.append(b"content-type: application/json\r\ncontent-length: %d\r\n"
                            b"connection: close\r\n\r\n" % len(body))  # fmt: skip
                self.transport.write(b"".join(head) + body)
            self.transport.close()

        def on_headers_complete(self) -> None:
            self._head_since = None
            self._head_bytes = 0
            super().on_headers_complete()
            # every request of the connection (pipelined ones too) shares its record of
            # whether the client is still there, and of the calls that wait on its behalf
            cycle = self.cycle
            scope: Any = cycle.scope
            scope[CONNECTION] = self._left
            scope[ANSWER] = Own(cycle)  # this request's own cycle (pipelining)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            # the requests waiting for their answers and the streams being written (each
            # put its task here): the client is gone, and so is the calls' use
            left = self._left
            left.gone = True
            for task in list(left.waiting):
                left.cancelled.add(task)
                task.cancel()

        def shutdown(self) -> None:
            super().shutdown()
            if _STOPPING[0] is None:  # when the graceful shutdown began (`stopping_since`)
                _STOPPING[0] = time.monotonic()
            # uvicorn cancels what is still running once its graceful shutdown's time is up
            # (the grace in whole seconds); a stream cut so had ended with no word, and was
            # settled as if its client had left. Cut a little before, by satisfice: each
            # stream's generator then ends it with an error event and keeps its hold.
            if shutdown_grace_s is None:
                return
            grace = math.ceil(shutdown_grace_s)
            if self.cycle is not None and not self.cycle.response_complete:  # busy
                self.loop.call_later(max(0.0, grace - _CUT_EARLY_S), self._cut)
            self.loop.call_later(grace + DRAIN_S - _ABANDON_EARLY_S, self._abandon)

        def _cut(self) -> None:
            # the streams being written, and the requests waiting for an answer or a
            # stream's first piece: each then answers 503 (or an error event), hold kept
            left = self._left
            left.cut = True
            for task in {*left.streams, *left.waiting}:
                task.cancel(_CUT)

        def _abandon(self) -> None:
            # what was written (a cut stream's error event behind what a client that stopped
            # reading has not taken) had DRAIN_S past the grace to reach it; uvicorn would
            # then log an ERROR and exit with the bytes unsent: say so, and close it
            t = self.transport
            if not t.is_closing() or self._left.gone:
                return
            unsent = t.get_write_buffer_size()
            if unsent:
                _log.warning(
                    "shutdown: a client did not read its answer's end within %.0f s of the "
                    "cut; its connection is closed with %d bytes unsent", DRAIN_S, unsent,
                    extra={"event": "shutdown_unsent", "bytes": unsent},
                )  # fmt: skip
            t.abort()

        def _sweep(self) -> None:
            cls = type(self)
            now = self.loop.time()
            for conn in list(self.connections):
                if not isinstance(conn, OneWriteProtocol) or conn._head_since is None:
                    continue
                if conn.cycle is not None and not conn.cycle.response_complete:
                    # a request in progress: reading is paused behind it (a pipelined head
                    # waits unread), so the clock starts when the server waits again
                    conn._head_since = now
                elif conn._head_since < now - head_timeout_s:
                    conn._head_since = None
                    if not conn.transport.is_closing():
                        conn.transport.close()  # nothing read that a response could answer
            if self.connections:
                self.loop.call_later(_SWEEP_S, self._sweep)
            else:
                cls._sweep_loop = None

    return OneWriteProtocol


#: The bound on a request's head: far past any client's (the real APIs' fronts refuse heads
#: a fraction of this size), and a connection's hold on memory bounded by it.
_HEAD_MAX = 1 << 20
_SWEEP_S = 1.0  # how often the heads' deadline is checked: a head may take up to this longer

ANSWER = "satisfice.answer"  # a request's scope key for its `Own`
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")  # what uvicorn refuses in a header value


class Own:
    """A request's uvicorn cycle, for what the app may do on it directly, and only when it
    was handed the cycle's own `send`: under middleware, or an ASGI wrapper of the app, the
    answer goes through their `send` (they may add headers, or read what is sent)."""

    __slots__ = ("cycle",)

    def __init__(self, cycle: Any) -> None:
        self.cycle = cycle

    def owns(self, send: Any) -> bool:
        """Whether `send` is the cycle's own (nothing wraps it)."""
        return bool(send == self.cycle.send)

    def answer(self, send: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """A 200 answer sent at once (`_answer`), if `send` is the cycle's own."""
        return self.owns(send) and _answer(self.cycle, headers, body)

    def end_stream(self, last: bytes) -> None:
        """End a chunked stream being written with `last` and close the connection (the
        server is shutting down), past uvicorn's `send`, which waits for a slow reader to
        take what it was sent: the transport buffers these bytes after the rest."""
        c = self.cycle
        if c.response_complete or c.disconnected or not c.chunked_encoding:
            return
        c.transport.write_now(b"%x\r\n%b\r\n0\r\n\r\n" % (len(last), last))
        c.response_complete = True
        c.message_event.set()
        c.transport.close()


def _answer(cycle: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
    """Send a 200 answer of `headers` (lower-case names, with its content-length) and `body`
    on uvicorn's request cycle `cycle` as uvicorn's `send` would for the two ASGI messages,
    in one write, with its access log line; False, having sent nothing, where that `send`
    has more to do (a response under way, a HEAD request, writing paused, a value it would
    refuse).
    Starlette's response and uvicorn's `send` (two messages, each header's name and value
    searched by a regex) had cost a tenth of a served request's CPU."""
    if (
        cycle.response_started
        or cycle.disconnected
        or cycle.flow.write_paused
        or cycle.scope["method"] == "HEAD"
        or _BAD_VALUE.search(b"".join([v for _, v in headers]))
    ):
        return False
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    if cycle.access_log:  # as uvicorn's send logs it
        from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

        scope = cycle.scope
        cycle.access_logger.info(
            '%s - "%s %s HTTP/%s" %d', get_client_addr(scope), scope["method"],
            get_path_with_query_string(scope), scope["http_version"], 200,
        )  # fmt: skip
    head = [b"HTTP/1.1 200 OK\r\n"]
    for name, value in cycle.default_headers:
        head += (name, b": ", value, b"\r\n")
    for name, value in headers:
        head += (name, b": ", value, b"\r\n")
    if not cycle.keep_alive:
        head.append(b"connection: close\r\n")
    head += (b"\r\n", body)
    cycle.transport.write_now(b"".join(head))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
    return True


CONNECTION = "satisfice.connection"  # a request's scope key for its `Connection`

_CUT_EARLY_S = 0.5  # how long before the shutdown's grace runs out the server cuts its streams
#: How long after the shutdown's grace what was written (a cut stream's error event) has to
#: reach a client still reading it: uvicorn's own cancel and exit come after it
#: (`shutdown_timeout`). A client that had stopped reading got neither the stream's rest nor
#: its error event: the process exited with them in its buffers.
DRAIN_S = 5
_ABANDON_EARLY_S = 0.25  # a connection not drained is closed this long before uvicorn exits


_STOPPING: list[float | None] = [None]


def stopping_since() -> float | None:
    """When this process's graceful shutdown began (monotonic s: uvicorn told its first
    connection), None if no connection was open then, or it has not begun."""
    return _STOPPING[0]


def serving_again() -> None:
    """A server starts: no shutdown has begun (a second server in the process had taken
    the first's shutdown for its own, its settlements' deadline already past)."""
    _STOPPING[0] = None


def shutdown_timeout(grace_s: float) -> int:
    """uvicorn's `timeout_graceful_shutdown` for a grace of `grace_s`: whole seconds (rounded
    up: int() had cut a grace of 0.9 s to none), and `DRAIN_S` for the cut's last bytes."""
    return math.ceil(grace_s) + DRAIN_S


_CUT = "satisfice: the server is shutting down"  # the cancel's message


class Connection:
    """What the server knows of a request's client connection: whether it is gone, the
    tasks waiting on it (a non-streamed request's for its answer, a stream's while it is
    written: each adds its own), cancelled when it goes, and those cancelled because it
    went; the tasks writing its streams, and whether the server's shutdown cut them."""

    __slots__ = ("cancelled", "cut", "gone", "streams", "waiting")

    def __init__(self) -> None:
        self.gone = False
        self.waiting: set[asyncio.Task[Any]] = set()
        self.cancelled: set[asyncio.Task[Any]] = set()
        self.streams: set[asyncio.Task[Any]] = set()  # the tasks writing its streams
        self.cut = False  # its streams were cut: the server's shutdown grace is ending


class _OneWrite:
    """A connection's transport whose writes are each held until the next write or the end
    of the event loop's step, whichever comes first. uvicorn writes a response's head and
    its body apart: two syscalls and two TCP segments, each of which wakes the client, for
    every answer; joined, the head and body of an answer go out in one writev. A stream's
    pieces, written a step or more apart, go out as they did, a step later at most."""

    __slots__ = ("_held", "_loop", "_t")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._t = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._held = None
            if not self._t.is_closing():  # closed meanwhile (uvloop raises on a write then)
                self._t.writelines((held, data))

    def writelines(self, data: Iterable[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def write_now(self, data: bytes) -> None:
        """A whole response, written at once (after anything held)."""
        held, self._held = self._held, None
        if not self._t.is_closing():
            if held is None:
                self._t.write(data)
            else:
                self._t.writelines((held, data))

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._t.is_closing():
            self._t.write(held)

    def is_closing(self) -> bool:  # read for every request: not through __getattr__
        return self._t.is_closing()

    def close(self) -> None:
        self._flush()
        self._t.close()

    def write_eof(self) -> None:
        self._flush()
        self._t.write_eof()

    def abort(self) -> None:
        self._held = None
        self._t.abort()

    def get_write_buffer_size(self) -> int:
        return self._t.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:  # the rest (reading, extra info) is the socket's
        return getattr(self._t, name)
