"""`satisfice serve`: the router as an OpenAI- and Anthropic-compatible HTTP service."""

from __future__ import annotations

import math
from typing import Any

from ._http import http_protocol
from .app import Service, create_app
from .config import ServerConfig

__all__ = ["ServerConfig", "Service", "create_app", "serve"]


def serve(config: ServerConfig, app: Any = None) -> None:
    """Run the app (by default `create_app(config)`) under uvicorn until SIGINT/SIGTERM;
    in-flight requests and streams get `shutdown_grace_s` to finish."""
    import uvicorn

    uvicorn.run(
        # the process is the server's own: its heap frozen once ready
        create_app(config, freeze_heap=True) if app is None else app,
        host=config.host,
        port=config.port,
        log_level="warning",
        # whole seconds for uvicorn, rounded up: int() had cut a grace of 0.9 s to none
        timeout_graceful_shutdown=math.ceil(config.shutdown_grace_s),
        access_log=False,
        # nothing reads the client's address, so X-Forwarded-* need no middleware per request
        proxy_headers=False,
        http=http_protocol(config.read_timeout_s),
    )
