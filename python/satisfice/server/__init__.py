"""`satisfice serve`: the router as an OpenAI- and Anthropic-compatible HTTP service."""

from __future__ import annotations

import errno
import math
import socket
from typing import Any

from ..errors import ConfigError
from ._http import http_protocol
from .app import Service, create_app
from .config import ServerConfig

__all__ = ["ServerConfig", "Service", "create_app", "listen", "serve"]


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound now, so that a host that does not resolve or a
    port another process holds is said, with what to do, before "serving" (uvicorn logged
    a bare `[Errno 98] ...` after it, and exited 3)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as e:
        why = e.strerror if isinstance(e, socket.gaierror) else str(e)
        raise ConfigError(
            f"[server].host = {host!r} does not resolve ({why}): give an IP address, or a "
            "name this machine resolves"
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        sock.bind(addr)
    except OSError as e:
        sock.close()
        hint = (
            "another process listens there: stop it, or choose another port (--port, [server].port)"
            if e.errno == errno.EADDRINUSE
            else "the address is not this machine's: choose one of its addresses"
            if e.errno == errno.EADDRNOTAVAIL
            else "choose another port (--port, [server].port)"
        )
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}): {hint}") from None
    return sock


def serve(config: ServerConfig, app: Any = None, sock: socket.socket | None = None) -> None:
    """Run the app (by default `create_app(config)`) under uvicorn until SIGINT/SIGTERM;
    in-flight requests and streams get `shutdown_grace_s` to finish. `sock`: the socket
    `listen()` bound (by default, bound here)."""
    import uvicorn

    sock = listen(config.host, config.port) if sock is None else sock
    server = uvicorn.Server(
        uvicorn.Config(
            # the process is the server's own: its heap frozen once ready
            create_app(config, freeze_heap=True) if app is None else app,
            host=config.host,
            port=config.port,
            log_level="warning",
            # whole seconds for uvicorn, rounded up: int() had cut a grace of 0.9 s to none
            timeout_graceful_shutdown=math.ceil(config.shutdown_grace_s),
            access_log=False,
            # nothing reads the client's address, so X-Forwarded-* need no middleware
            proxy_headers=False,
            http=http_protocol(config.read_timeout_s),
        )
    )
    with sock:
        server.run(sockets=[sock])
