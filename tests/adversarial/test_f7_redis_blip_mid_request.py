"""F7: Redis going away while a budgeted request is in flight (reserve succeeded, settle
fails). Observed: the plain request, already paid upstream, answers a bare text/plain 500
(settle raises StateUnavailable, then the `finally` settles again and raises from there); a
stream is cut without its terminating chunk; and in both cases the reservation stays held
after Redis is back (not recovered: the held counter has the period's TTL, 62 days)."""

import threading
import time

import httpx
import pytest

from satisfice.testing import reply
from tests.servers import redis

from .harness import LocalUpstream, key, serve, spend


@pytest.mark.parametrize("stream", [False, True])
def test_redis_blip_mid_request(stream):
    with (
        LocalUpstream() as up,
        redis() as rs,
        serve(up, f'[state]\nbackend = "redis"\nredis_url = "{rs.url}"\n') as (url, _, _),
    ):
        k = key(url, budget_usd=1.0)
        up.default = reply("hello there", latency=1.5)
        out = {}

        def go():
            try:
                r = httpx.post(
                    url + "/v1/chat/completions",
                    timeout=30,
                    headers={"authorization": f"Bearer {k['key']}"},
                    json={
                        "model": "auto",
                        "max_tokens": 50,
                        "stream": stream,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                )
                out["status"], out["ctype"] = r.status_code, r.headers.get("content-type", "")
            except httpx.HTTPError as e:
                out["status"], out["ctype"] = "cut", repr(e)

        t = threading.Thread(target=go)
        t.start()
        time.sleep(0.5)
        rs.stop()
        t.join()
        rs.start()
        time.sleep(0.5)
        if stream:
            assert out["status"] == 200, out  # observed: "cut" (incomplete chunked read)
        else:  # the answer, or the documented 503 state_unavailable in JSON
            assert out["status"] in (200, 503) and "json" in out["ctype"], (
                out
            )  # observed: 500 text/plain
        (b,) = spend(url)
        assert b["held_usd"] == 0, b  # observed: held 0.000208 forever, spent 0.0
