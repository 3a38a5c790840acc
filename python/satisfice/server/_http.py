"""uvicorn's HTTP/1.1 protocol, with a response's head and body sent in one write."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["http_protocol"]


def http_protocol() -> Any:
    """uvicorn's `http=` for `satisfice serve`: httptools' protocol with writes joined
    (`_OneWrite`), else uvicorn's own choice (h11, where httptools is not installed)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class OneWriteProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_OneWrite(transport, self.loop))  # type: ignore[arg-type]

    return OneWriteProtocol


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
            self._t.writelines((held, data))

    def writelines(self, data: Iterable[bytes]) -> None:
        for piece in data:
            self.write(piece)

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
