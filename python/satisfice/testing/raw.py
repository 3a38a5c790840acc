"""A raw-socket upstream: every byte of every reply is the test's. For hostile-upstream
tests (malformed JSON, lying lengths, odd numbers) that a well-behaved server cannot send.

    with RawUpstream() as raw:
        raw.push(http_response(b'{"choices": 42}'))   # the next request gets exactly this
        registry = patch_registry(registry, raw.url)

Each connection reads a request (headers and Content-Length body) and writes the next queued
reply: bytes, or an async function given the writer (to send slowly, forever, ...). The
connection is then closed, or with `keep_alive=True` it reads the next request. With the
queue empty it answers 500. It runs on its own thread's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Awaitable, Callable

Reply = bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]

__all__ = ["RawUpstream", "Reply", "http_response"]


def http_response(
    body: bytes, *, status: str = "200 OK", ctype: str = "application/json", extra: str = ""
) -> bytes:
    """A whole HTTP/1.1 response with a correct Content-Length (and `extra` header lines)."""
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


class RawUpstream:
    def __init__(self, *, keep_alive: bool = False) -> None:
        self._replies: deque[Reply] = deque()
        self.keep_alive = keep_alive
        self.requests: list[bytes] = []
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def push(self, *replies: Reply) -> RawUpstream:
        self._replies.extend(replies)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                reply = self._replies.popleft() if self._replies else _NOTHING_QUEUED
                if isinstance(reply, bytes):
                    writer.write(reply)
                    await writer.drain()
                else:
                    await reply(writer)
                if not self.keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def __enter__(self) -> RawUpstream:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            self._server.close()
            # handlers still sending (slow or endless replies): cancel them, close their sockets
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending))
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="raw-upstream")
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


_NOTHING_QUEUED = http_response(
    b'{"error": {"message": "nothing queued"}}', status="500 Internal Server Error"
)
