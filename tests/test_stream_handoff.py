"""A streamed request after the handler returned its response: /health's count of requests
in flight had dropped it there (a stream was "done" once its first piece was read), and a
client that leaves at once must still have its stream closed and its budget hold settled."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from satisfice import Router
from satisfice.server import ServerConfig, create_app
from satisfice.server.state import Budget, VirtualKey
from satisfice.testing import LocalUpstream, reply

from .chat_support import registry


async def _asgi(
    app: Any, body: dict[str, Any], secret: str, *, leave: bool, seen: Any = None
) -> list[Any]:
    """One request as uvicorn delivers it (ASGI http 2.3). `leave`: the client is gone by
    the time the response starts, so `receive()` says disconnect at once."""
    sent: list[Any] = []
    raw = json.dumps(body).encode()
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": raw, "more_body": False}
        if not leave:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)
        if seen is not None and msg.get("body"):
            seen()

    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5000),
        "headers": [(b"content-type", b"application/json"),
                    (b"authorization", f"Bearer {secret}".encode())],
    }  # fmt: skip
    await app(scope, receive, send)
    return sent


async def test_a_client_gone_before_the_first_byte_releases_everything(
    up: LocalUpstream,
) -> None:
    up.default = reply("one two three four five six seven eight")
    app = create_app(ServerConfig(), router=Router(registry(up.url)))
    svc = app.state.service
    key, secret = VirtualKey.new("k", budget_usd=1.0)
    await svc.state.put_key(key)
    body = {"model": "alpha", "stream": True, "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    try:
        sent = await _asgi(app, body, secret, leave=True)
        for _ in range(100):  # the settlement runs as a task of its own
            await asyncio.sleep(0.01)
            spent, reserved = await svc.state.spent(Budget(f"key:{key.id}", 1.0, key.period))
            if reserved == 0:
                break
        assert reserved == 0, "the stream's budget hold was never settled"
        assert 0 < spent < 0.01  # the call it had opened, at its estimated cost
        assert svc.in_flight == 0
        assert not +svc.router._executor()._in_flight  # the upstream stream was closed

        # and a stream the client reads to its end counts as in flight until then
        counts: list[int] = []
        up.default = reply("a b c d e f g h")
        sent = await asyncio.wait_for(
            _asgi(app, body, secret, leave=False, seen=lambda: counts.append(svc.in_flight)), 10
        )
        assert b"[DONE]" in b"".join(m.get("body", b"") for m in sent)
        assert counts and min(counts) == 1, counts
        assert svc.in_flight == 0
    finally:
        await svc.router.aclose()
