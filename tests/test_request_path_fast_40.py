"""The usual request's shortcuts (fortieth session) build what the full path builds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from satisfice import Router
from satisfice.errors import AllAttemptsFailedError
from satisfice.router import NO_CALL
from satisfice.testing import LocalUpstream, reply

from .chat_support import router


def _run_request(r: Router, call: Any, **constraints: Any) -> Any:
    d = r.route("hi", constraints or None)
    io = r._executor()
    return io.run(d, [{"role": "user", "content": "hi"}], call, t0=0.0).request


@pytest.mark.parametrize(
    "constraints",
    [{}, {"max_reasoning_tokens": 2048}, {"output_includes_thinking": True}],
)
def test_the_usual_calls_request_is_the_one_its_fields_build(constraints: dict[str, Any]) -> None:
    """NO_CALL (no call field set) is told by identity and built from constants: the same
    ChatRequest as a copy of it, which takes the full path, field by field."""
    r = Router()
    fast = _run_request(r, NO_CALL, **constraints)
    full = _run_request(r, dict(NO_CALL), **constraints)
    assert fast == full


def test_no_call_is_shared_read_only() -> None:
    """Shared by every usual request: a write would reach every request after it."""
    with pytest.raises(TypeError):
        NO_CALL["max_tokens"] = 5  # type: ignore[index]


async def test_a_request_that_sets_a_field_gets_its_own_call(up: LocalUpstream) -> None:
    """A request with a field of its own (max_tokens from its constraints) copies the
    shared call: the next usual request is sent without it."""
    r = router(up.url)
    up.script("alpha-wire", reply("one"), reply("two"))
    before = len(up.seen("alpha-wire"))
    await r.chat("hi", constraints={"max_output_tokens": 7})
    await r.chat("hi")
    first, second = up.seen("alpha-wire")[before:]
    assert first.body.get("max_tokens") == 7
    assert "max_tokens" not in second.body
    assert dict(NO_CALL) == {**dict.fromkeys(NO_CALL), "no_thinking": False}
    await r.aclose()


async def test_the_watchdogs_task_and_clock_are_the_loops() -> None:
    """`current_task` (the dict lookup on 3.11) finds what asyncio.current_task finds, on
    this loop and for another loop's task; `clock_of` reads the loop's own time."""
    import asyncio
    import threading

    from satisfice._watchdog import clock_of, current_task

    loop = asyncio.get_running_loop()
    assert current_task(loop) is asyncio.current_task(loop) is not None
    got: list[object] = []
    other = asyncio.new_event_loop()

    async def there() -> None:
        got.extend([current_task(other), asyncio.current_task(other), current_task(loop)])

    th = threading.Thread(target=other.run_until_complete, args=(there(),))
    th.start()
    th.join()
    other.close()
    assert got[0] is got[1] is not None and got[0] is not asyncio.current_task(loop)
    assert got[2] is asyncio.current_task(loop)  # (this loop's task, as asyncio says too)
    assert abs(clock_of(loop)() - loop.time()) < 1.0

    class Shifted(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return super().time() + 1000.0

    shifted = Shifted()
    try:
        assert clock_of(shifted)() > loop.time() + 999.0  # its own clock, not monotonic()
    finally:
        shifted.close()


# -- how far a request got: marked on what the transport raises, not kept per call ---------------
async def test_a_request_that_times_out_in_line_for_a_connection_says_so_unbilled(
    up: LocalUpstream,
) -> None:
    """One pooled connection, held by a slow answer: the next request waits in line for it
    until its deadline. It never reached the upstream: its error says so, it is not billed,
    and the deployment is not marked down for the router's own limit."""
    r = router(up.url, max_connections=1)
    up.script("alpha-wire", reply("slow", latency=1.5), reply("fast"))
    held = asyncio.ensure_future(r.chat("first", allow=["alpha"], timeout=5))
    await asyncio.sleep(0.3)  # the first holds the one connection
    with pytest.raises(AllAttemptsFailedError) as ei:
        await r.chat("second", allow=["alpha"], timeout=0.4)
    (a,) = ei.value.attempts
    assert a.error_type == "UpstreamTimeoutError" and a.cost_usd in (None, 0.0), a
    assert "no free connection in the router's pool (the request was not sent)" in (a.error or "")
    assert (await held).text == "slow"
    await r.aclose()


async def test_a_request_cancelled_in_line_or_on_the_wire_is_billed_as_far_as_it_got(
    up: LocalUpstream,
) -> None:
    """Cancelled by its caller while it waited for the pool's one connection: its call is
    known unbilled (`billed_usd` 0.0, the call on record at $0); one cancelled after its
    request went out may be billed past any estimate (`billed_usd` None)."""
    r = router(up.url, max_connections=1)
    up.script("alpha-wire", reply("slow", latency=1.5), reply("slow", latency=1.5))
    sent = asyncio.ensure_future(r.chat("first", allow=["alpha"], timeout=5))
    await asyncio.sleep(0.3)
    queued = asyncio.ensure_future(r.chat("second", allow=["alpha"], timeout=5))
    await asyncio.sleep(0.3)
    billed = []
    for task in (queued, sent):
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as ei:
            await task
        billed.append(getattr(ei.value, "billed_usd", "unset"))
    assert billed == [0.0, None]
    await r.aclose()


def test_a_plain_calls_price_is_the_full_sums_bit_for_bit() -> None:
    """Price.cost's shortcut for a call with no cache reads or writes, no reasoning and no
    long-context tier: the full sum's result, bit for bit (its parts at 0 tokens left
    out, the rest in the same order), over random counts and rates."""
    import random

    from satisfice.registry import Price

    rng = random.Random(40)
    for _ in range(20_000):
        rates = {"input": rng.choice([0.0, rng.uniform(0, 100)]), "output": rng.uniform(0, 200)}
        if rng.random() < 0.5:
            rates["reasoning"] = rng.uniform(0, 300)
        if rng.random() < 0.3:
            rates["per_request"] = rng.uniform(0, 0.01)
        p = Price(**rates)
        n_in, n_out = rng.randrange(0, 2_000_000), rng.randrange(0, 200_000)
        # the full sum's steps (Price.cost below its shortcut) for such a call: no reasoning
        # tokens (min(0, n_out) of them, or 0.0 without a reasoning rate), no cache parts
        fresh = max(n_in - 0 - 0 - 0, 0.0)
        usd = fresh * p.input
        usd += (n_out - 0.0) * p.output
        usd /= 1e6
        want = usd + (p.per_request or 0.0)
        got = p.cost(n_in, n_out)
        assert got.hex() == want.hex(), (rates, n_in, n_out, got, want)
    # a part the shortcut leaves out is priced by the full sum
    p = Price(input=1.0, output=2.0, cached_input=0.5, reasoning=3.0)
    assert p.cost(1000, 100, 400) == (600 * 1.0 + 400 * 0.5 + 100 * 2.0) / 1e6
    assert p.cost(1000, 100, reasoning_tokens=40) == (1000 * 1.0 + 60 * 2.0 + 40 * 3.0) / 1e6
