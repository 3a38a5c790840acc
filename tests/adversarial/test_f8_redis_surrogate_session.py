"""F8: with the Redis backend, a session id holding a lone surrogate (a JSON escape like
"\\ud800" in `user` or `prompt_cache_key`) is a bare 500: redis-py cannot encode the pin key.
The memory backend serves the same body with 200."""

import httpx

from tests.servers import redis

from .harness import LocalUpstream, serve

RAW = b'{"model":"auto","user":"\\ud800abc","messages":[{"role":"user","content":"x"}]}'


def test_lone_surrogate_session_on_redis():
    with (
        LocalUpstream() as up,
        redis() as rs,
        serve(up, f'[state]\nbackend = "redis"\nredis_url = "{rs.url}"\n') as (url, _, _),
    ):
        r = httpx.post(
            url + "/v1/chat/completions", content=RAW, headers={"content-type": "application/json"}
        )
        assert r.status_code in (200, 400) and "json" in r.headers["content-type"], (
            r.status_code,
            r.text[:80],
        )
