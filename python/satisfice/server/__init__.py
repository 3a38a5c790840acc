"""`satisfice serve`: the router as an OpenAI- and Anthropic-compatible HTTP service."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
from typing import Any

from ..errors import ConfigError
from ._http import http_protocol, shutdown_timeout
from .app import Service, create_app
from .config import ServerConfig

__all__ = ["ServerConfig", "Service", "create_app", "limit_malloc_arenas", "listen", "serve"]


def listen(host: str, port: int) -> list[socket.socket]:
    """The server's listening sockets, bound now: one for every address `host` resolves to
    (`localhost` is often ::1 and 127.0.0.1, as uvicorn binds it), so that a host that does
    not resolve or a port another process holds is said, with what to do, before "serving"
    (uvicorn logged a bare `[Errno 98] ...` after it, and exited 3). With port 0, every
    address gets the port the first was given."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        why = e.strerror if isinstance(e, socket.gaierror) else str(e)
        raise ConfigError(
            f"[server].host = {host!r} does not resolve ({why}): give an IP address, or a "
            "name this machine resolves"
        ) from None
    out: list[socket.socket] = []
    seen = set()
    for family, kind, proto, _, addr in found:
        if addr[:2] in seen:
            continue
        seen.add(addr[:2])
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            if family == socket.AF_INET6:  # its own family only: 127.0.0.1 is another socket
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if out and port == 0:
                addr = (addr[0], out[0].getsockname()[1], *addr[2:])
            sock.bind(addr)
        except OSError as e:
            sock.close()
            for s in out:
                s.close()
            hint = (
                "another process listens there: stop it, or choose another port (--port, "
                "[server].port)"
                if e.errno == errno.EADDRINUSE
                else "the address is not this machine's: choose one of its addresses"
                if e.errno == errno.EADDRNOTAVAIL
                else "choose another port (--port, [server].port)"
            )
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}): {hint}") from None
        out.append(sock)
    return out


#: glibc's M_ARENA_MAX (mallopt's parameter, as MALLOC_ARENA_MAX sets it)
_M_ARENA_MAX = -8


def limit_malloc_arenas(n: int = 2) -> bool:
    """At most `n` glibc malloc arenas in this process, unless MALLOC_ARENA_MAX says
    otherwise; called before the server's threads start. With an arena per thread (up to 8
    per CPU), a replica's RSS grew in steps of 10-20 MiB over its second 100,000 requests
    (memory the loop's thread allocates and the ledger's writer thread frees); with 2 it
    stayed within 5 MiB (benches/bench_server.py's memory phase). Python allocates under
    the GIL, so fewer arenas cost no parallelism. True if the limit was set."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library to ask, or not glibc's
        return False
    return bool(mallopt(_M_ARENA_MAX, n))


def serve(
    config: ServerConfig, app: Any = None, sockets: list[socket.socket] | None = None
) -> None:
    """Run the app (by default `create_app(config)`) under uvicorn until SIGINT/SIGTERM;
    in-flight requests and streams get `shutdown_grace_s` to finish. `sockets`: those
    `listen()` bound (by default, bound here)."""
    import uvicorn

    sockets = listen(config.host, config.port) if sockets is None else sockets
    server = uvicorn.Server(
        uvicorn.Config(
            # the process is the server's own: its heap frozen once ready
            create_app(config, freeze_heap=True) if app is None else app,
            host=config.host,
            port=config.port,
            log_level="warning",
            timeout_graceful_shutdown=shutdown_timeout(config.shutdown_grace_s),
            access_log=False,
            # nothing reads the client's address, so X-Forwarded-* need no middleware
            proxy_headers=False,
            http=http_protocol(config.read_timeout_s, config.shutdown_grace_s),
        )
    )
    try:
        server.run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
