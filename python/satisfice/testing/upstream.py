"""The local upstream server: a real HTTP/1.1 server on 127.0.0.1 in its own thread."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..registry import Registry

from .behaviors import Behavior, reply
from .wire import (
    _Answer,
    _chunk,
    _error_response,
    _head,
    anthropic_refusal,
    mistral_refusal,
    openai_refusal,
)


@dataclass(frozen=True, slots=True)
class Seen:
    """A request the upstream received."""

    api: str  # "openai" | "anthropic"
    path: str
    model: str
    body: dict[str, Any]
    headers: dict[str, str] = field(repr=False)
    behavior: Behavior


class _Conn(asyncio.Protocol):
    """One client connection: parses requests (no pipelining needed) and answers them."""

    def __init__(self, up: LocalUpstream) -> None:
        self.up = up
        self.buf = bytearray()
        self.busy = False
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.up._conns.add(self)
        self.up.total_connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.up._conns.discard(self)
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.process()

    def process(self) -> None:
        while not self.busy and not self.closed:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if "chunked" in headers.get("transfer-encoding", ""):
                self.write(_error_response(411, "send a content-length body"), close=True)
                return
            total = end + 4 + int(headers.get("content-length", "0"))
            if len(self.buf) < total:
                return
            body = bytes(self.buf[end + 4 : total])
            del self.buf[:total]
            parts = lines[0].split(" ")
            self.up._dispatch(self, parts[1] if len(parts) > 1 else "/", headers, body)

    def write(self, data: bytes, close: bool = False) -> None:
        if self.transport is None or self.closed:
            return
        self.transport.write(data)
        if close:
            self.transport.close()

    def done(self) -> None:
        """The current response is complete: take the next request, if any."""
        self.busy = False
        self.task = None
        if self.buf:
            self.process()

    def reset(self) -> None:
        """Abort with a TCP RST, as a crashed upstream or a middlebox would."""
        if self.transport is None or self.closed:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


class LocalUpstream:
    """A scripted OpenAI + Anthropic upstream on 127.0.0.1 (see the module docstring).

    `record=False` keeps no per-request log (for long benchmark runs).
    """

    def __init__(
        self, *, port: int = 0, default: Behavior | None = None, record: bool = True
    ) -> None:
        self.default = default or reply()
        self.record = record
        self.requests: list[Seen] = []
        self.total_connections = 0
        self._port = port
        self._scripts: dict[str, deque[Behavior]] = {}
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    # scripting ----------------------------------------------------------------------------
    def script(self, model: str, *behaviors: Behavior) -> LocalUpstream:
        """Queue behaviours for the next requests naming `model`; then `default` applies."""
        with self._lock:
            self._scripts.setdefault(model, deque()).extend(behaviors)
        return self

    def reset_script(self) -> None:
        """Forget queued behaviours and the request log."""
        with self._lock:
            self._scripts.clear()
            self.requests.clear()

    def wait_idle(self, timeout: float = 2.0) -> bool:
        """Wait until no client connection is open (so nothing from an earlier test can
        still arrive and take a behaviour scripted for the next one). False on timeout."""
        deadline = time.monotonic() + timeout
        while self._conns:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    def drop_connections(self) -> None:
        """Close every client connection from the server side, as an upstream restarting
        or expiring idle keep-alive connections would."""
        loop = self._loop
        if loop is None:
            return
        done = threading.Event()

        def close() -> None:
            for c in list(self._conns):
                if c.transport is not None:
                    # The FIN goes out now: asyncio closes a socket only after the protocol
                    # has heard connection_lost, so waiting for the connections to be gone
                    # (below) could return before it did, and a client then reused one
                    # (a flaky test on a busy CI machine).
                    sock = c.transport.get_extra_info("socket")
                    with contextlib.suppress(OSError, AttributeError):
                        sock.shutdown(socket.SHUT_RDWR)
                    c.transport.close()
            done.set()

        loop.call_soon_threadsafe(close)
        done.wait(5)
        self.wait_idle()  # until the sockets are really closed (their FIN is on the wire)

    def pending(self, model: str) -> int:
        """Behaviours still queued for `model`."""
        with self._lock:
            return len(self._scripts.get(model, ()))

    def seen(self, model: str) -> list[Seen]:
        """Requests received for `model`, in order."""
        return [s for s in self.requests if s.model == model]

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT (OpenAI deployments use url + "/v1")."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the LocalUpstream is not running; use it as a context manager")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def open_connections(self) -> int:
        """Client connections open right now (for leak checks)."""
        return len(self._conns)

    def patch(self, registry: Registry, *, drop_keys: bool = True) -> Registry:
        """`registry` with every deployment pointing at this upstream (see patch_registry)."""
        return patch_registry(registry, self.url, drop_keys=drop_keys)

    # lifecycle ----------------------------------------------------------------------------
    def start(self) -> LocalUpstream:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(
                        lambda: _Conn(self),
                        "127.0.0.1",
                        self._port,
                        reuse_address=True,
                        backlog=1024,
                    )
                )
            except BaseException as e:  # report bind failures to the starting thread
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="satisfice-local-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            self._thread = None
            raise RuntimeError(f"LocalUpstream could not start: {failure[:1]}")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        done = threading.Event()

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for c in list(self._conns):  # hung requests hold connections open: drop them
                if c.transport is not None:
                    c.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()
            done.set()
            loop.stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(shutdown()))
        done.wait(10)
        thread.join(10)
        self._thread = self._loop = None

    def __enter__(self) -> LocalUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> LocalUpstream:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # serving (runs on the server thread) --------------------------------------------------
    def _next(self, model: str) -> Behavior:
        q = self._scripts.get(model)
        if q:
            with self._lock:
                if q:
                    return q.popleft()
        return self.default

    def _dispatch(self, conn: _Conn, path: str, headers: dict[str, str], raw: bytes) -> None:
        api = "anthropic" if path.endswith("/messages") else "openai"
        if not path.endswith(("/chat/completions", "/messages")):
            conn.write(
                _error_response(404, f"no route {path}; POST /v1/chat/completions or /v1/messages")
            )
            return
        try:
            body = json.loads(raw)
            model = str(body["model"])
        except (ValueError, KeyError, TypeError):
            conn.write(_error_response(400, "the body must be JSON with a 'model'", api))
            return
        if api == "anthropic":
            why = anthropic_refusal(body)
        else:
            why = mistral_refusal(body) or openai_refusal(body)
        if why is not None:  # as the provider's API refuses it (thinking or ids sent wrong)
            conn.write(_error_response(400, why, api))
            return
        b = self._next(model)
        if self.record:
            self.requests.append(Seen(api, path, model, body, headers, b))
        stream = bool(body.get("stream"))
        if b.kind == "reply" and not b.latency and not stream:  # the benchmark's fast path
            ans = _Answer(b, model, body)
            data = ans.anthropic(model) if api == "anthropic" else ans.openai(model)
            conn.write(_head(200, "application/json", len(data)) + data)
            return
        conn.busy = True
        conn.task = asyncio.get_running_loop().create_task(
            self._serve(conn, b, api, model, body, stream)
        )

    async def _serve(
        self, conn: _Conn, b: Behavior, api: str, model: str, body: dict[str, Any], stream: bool
    ) -> None:
        if b.latency:
            await asyncio.sleep(b.latency)
        if b.kind == "hang":
            await asyncio.Event().wait()  # until the client gives up or the server stops
        if b.kind == "status":
            msg = b.message or f"scripted HTTP {b.code} from the local upstream"
            conn.write(_error_response(b.code, msg, api, b.retry_after))
            conn.done()
            return
        if b.kind == "malformed":
            if stream:
                conn.write(_head(200, "text/event-stream", None))
                conn.write(_chunk(b'data: {"choices": [{"delta": {"content": "tru\n\n'))
                conn.write(b"0\r\n\r\n")
            else:
                bad = b'{"id": "chatcmpl-local", "choices": [{"message": {"content": "tru'
                conn.write(_head(200, "application/json", len(bad)) + bad)
            conn.done()
            return
        ans = _Answer(b, model, body)
        if not stream:
            data = ans.anthropic(model) if api == "anthropic" else ans.openai(model)
            if b.kind == "reset":
                conn.write(_head(200, "application/json", len(data)) + data[: b.after_chunks * 8])
                await asyncio.sleep(0.01)  # let the partial answer reach the client first
                conn.reset()
                return
            conn.write(_head(200, "application/json", len(data)) + data)
            conn.done()
            return
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        events = (
            ans.anthropic_events(model) if api == "anthropic" else ans.openai_events(model, include)
        )
        conn.write(_head(200, "text/event-stream", None))
        for i, ev in enumerate(events):
            if b.kind == "reset" and i >= b.after_chunks:
                await asyncio.sleep(0.01)
                conn.reset()
                return
            conn.write(_chunk(ev))
            if b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
        conn.write(b"0\r\n\r\n")
        conn.done()


def patch_registry(registry: Registry, url: str, *, drop_keys: bool = True) -> Registry:
    """A copy of `registry` whose deployments all point at the upstream at `url`.

    With `drop_keys`, deployments need no API key variable (nothing secret is needed).
    """
    from ..registry import Registry

    models = []
    for m in registry:
        deps = tuple(
            d.replace(
                base_url=url + ("/v1" if d.api == "openai" else ""),
                api_key_env=None if drop_keys else d.api_key_env,
            )
            for d in m.deployments
        )
        models.append(m.replace(deployments=deps))
    return Registry(models, registry.meta)
