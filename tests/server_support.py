"""`satisfice serve` in a thread of the test process, on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from satisfice.server import ServerConfig, create_app
from satisfice.server._http import http_protocol

from .servers import free_port

#: The master key the served tests set (`master` in conftest.py), and its admin header.
MASTER = "master-test-key-0123456789abcdef"
ADMIN = {"authorization": f"Bearer {MASTER}"}


@contextlib.contextmanager
def running(config: ServerConfig | None = None, router: Any = None) -> Iterator[tuple[str, Any]]:
    """Yields (base URL, app). Stops the server (graceful) on exit."""
    config = config or ServerConfig()
    app = create_app(config, router=router)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="error",
            lifespan="on",
            access_log=False,  # as `satisfice serve` runs it
            http=http_protocol(config.read_timeout_s),
        )
    )
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not t.is_alive():
            raise RuntimeError("satisfice serve did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        t.join(30)


@contextlib.contextmanager
def serving(router: Any, tmp_path: Any) -> Iterator[tuple[str, Any]]:
    """`running` the router with a SQLite ledger in `tmp_path`: (base URL, the Service)."""
    with running(ServerConfig(ledger=str(tmp_path / "l.db")), router) as (url, app):
        yield url, app.state.service


def post_chat(url: str, key: str, body: bytes) -> socket.socket:
    """A /v1/chat/completions request sent on a socket of its own (the caller closes it,
    as a client that leaves does): the connection, open."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
        b"content-type: application/json\r\nauthorization: Bearer %s\r\n"
        b"content-length: %d\r\n\r\n%s" % (key.encode(), len(body), body)
    )
    return s
