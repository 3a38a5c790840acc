"""F2: with the Redis state backend, a client that disconnects during a stream leaves its
worst-case reservation held forever (until the period's key expires: 62 days for a monthly
budget) and the call's cost is never counted. Starlette cancels the stream task on disconnect
(anyio cancel scope, re-delivered at every await), so `await svc.state.settle(...)` in the
generator's `finally` is cancelled at its first network await. Memory backend: settles (no await)."""

import json
import socket
import time

import pytest

from satisfice.testing import reply
from tests.servers import redis

from .harness import LocalUpstream, key, serve, spend


def _stream_then_hang_up(url: str, secret: str, path: str) -> None:
    host, port = url.split("//")[1].split(":")
    body = json.dumps(
        {
            "model": "auto",
            "stream": True,
            "max_tokens": 200,
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode()
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    got = b""
    while len(got) < 400:  # headers and the first events, then hang up mid-stream
        got += s.recv(4096)
    s.close()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_stream_disconnect_releases_reservation_on_redis(path):
    with (
        LocalUpstream() as up,
        redis() as rs,
        serve(up, f'[state]\nbackend = "redis"\nredis_url = "{rs.url}"\n') as (url, _, _),
    ):
        k = key(url, budget_usd=1.0)
        up.default = reply("word " * 50, chunk_delay=0.1)
        _stream_then_hang_up(url, k["key"], path)
        time.sleep(3)
        (b,) = spend(url)
        assert b["held_usd"] == 0, b  # observed: held_usd 0.000808 stays, spent_usd 0.0
