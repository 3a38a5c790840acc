"""Deadlines against upstreams that stall, drip or refuse, found by a randomized run of
raw-socket upstreams (never accept, silence, a head then nothing, slowloris heads, bodies and
events, a huge body sent slowly, a cut chunk, 429/503 with long Retry-After) under chat,
stream, hedge, race and cascades: each request ends within its deadline and says what
happened. What that run found is pinned here, deterministically."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from satisfice.errors import AllAttemptsFailedError
from satisfice.testing import LocalUpstream, RawUpstream

from .chat_support import move_alpha, registry, router
from .test_hostile_transport import alpha_on, chunk, piece, sse_head

MSGS = [{"role": "user", "content": "hello there"}]
DONE = (
    chunk(b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n')
    + b"0\r\n\r\n"
)


def _pausing(pause: float) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    """A stream that gives its first text, is silent for `pause` seconds, then ends whole."""

    async def send(w: asyncio.StreamWriter) -> None:
        w.write(sse_head() + piece("one "))
        await w.drain()
        await asyncio.sleep(pause)
        w.write(piece("two") + DONE)
        await w.drain()

    return send


async def test_a_stream_that_pauses_past_its_first_share_of_the_deadline_ends_whole(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    """With a fallback ready, an attempt gets a share of the deadline (half of what is left,
    here 1 s of 2.5 s). A stream whose text has reached the caller can fall back no more, and
    its reads are bound by the idle timeout and the deadline; but its reads had kept that
    share as their read timeout: a 1.4 s pause after the first text, well inside the 2.5 s
    deadline and the 120 s idle timeout, cut the stream at 1 s ("no answer in time
    (ReadTimeout: no progress within 1.2498...s)") as a StreamInterruptedError."""
    raw.push(_pausing(1.4))
    async with router(up.url, read_timeout_s=120.0) as r:
        r.update(alpha_on(raw, up))
        t = time.perf_counter()
        got = [d.text async for d in r.stream(MSGS, timeout=2.5) if d.text]
        took = time.perf_counter() - t
    assert "".join(got) == "one two"
    assert took < 2.5 + 0.5


@contextlib.contextmanager
def _never_accepting() -> Iterator[str]:
    """A loopback port whose listening socket is never accepted from, its backlog full: a
    new connection's handshake never completes (its SYN is dropped)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    port = ls.getsockname()[1]
    fill = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError, OSError):
            c.connect(("127.0.0.1", port))
        fill.append(c)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for c in fill:
            c.close()
        ls.close()


async def test_a_connect_that_never_completes_says_so(up: LocalUpstream) -> None:
    """An upstream that never accepts the connection: the request ends at its deadline, as
    it did, but its error had said "no answer within 0.5s", a slow model's words, for a
    request that never reached the upstream (and, rightly, was not billed)."""
    with _never_accepting() as url:
        async with router(up.url) as r:
            r.update(move_alpha(registry(up.url), url))
            t = time.perf_counter()
            with pytest.raises(AllAttemptsFailedError) as ei:
                await r.chat(MSGS, allow=["alpha"], timeout=0.5)
            took = time.perf_counter() - t
    (a,) = ei.value.attempts
    assert a.error_type == "UpstreamTimeoutError" and a.cost_usd in (None, 0.0), a
    assert "no connection to the upstream (the request was not sent) within" in a.error, a.error
    assert took < 0.5 + 0.5
