"""Review of 930d54b ("one attempt budget per attempt"): a race's calls are bounded as
before it. The first racer's whole-attempt budget had been taken when its task started,
after every racer was launched; taken at its launch instead, while the other racers are
still untried, it was halved "to leave the fallback time", a fallback that is already
racing: the router's first choice was cut at half the deadline, the other half unused."""

from __future__ import annotations

import asyncio
import json

from satisfice.testing import LocalUpstream, RawUpstream, hang

from .chat_support import move_alpha, registry, router, wire

MSGS = [{"role": "user", "content": "hello there"}]
BODY = json.dumps(
    {"choices": [{"message": {"content": "right"}, "finish_reason": "stop"}]}
).encode()


async def _trickled(writer: asyncio.StreamWriter) -> None:
    """A 200 whose head comes at once and whose body takes 0.75 s, a piece every 0.15 s
    (never a read timeout's silence), as an upstream keeping a slow answer alive does."""
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(BODY)}\r\nconnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    step = len(BODY) // 5 + 1
    for i in range(0, len(BODY), step):
        await asyncio.sleep(0.15)
        writer.write(BODY[i : i + step])
        await writer.drain()


async def test_a_race_does_not_halve_its_first_callers_budget(up: LocalUpstream) -> None:
    """race=2 over exactly two models: alpha (first choice) answers in 0.75 s of a 1.2 s
    deadline, beta never answers. Nothing is left to fall back to, so alpha's answer is
    the request's; a 0.6 s budget (half the deadline) had cut it off."""
    up.script(wire("beta"), hang())
    with RawUpstream() as raw:
        raw.push(_trickled)
        reg = move_alpha(registry(up.url), raw.url)
        async with router(up.url, max_retries=0) as r:
            r.update(reg)
            res = await r.chat(MSGS, race=2, timeout=1.2, allow=("alpha", "beta"))
    assert res.model == "alpha" and res.text == "right"
