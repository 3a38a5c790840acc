"""Leftovers from earlier closing notes, fixed in the thirty-eighth session."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from satisfice.errors import ProviderError
from satisfice.server.state import Budget, MemoryState, RateCount
from satisfice.testing import LocalUpstream, RawUpstream, http_response

from .chat_support import move_alpha, registry, router, sse_chunk

MSGS = [{"role": "user", "content": "hello there"}]


def test_memory_state_drops_the_counters_of_past_periods() -> None:
    """A budget's spend is counted per day or month. The in-memory state kept every past
    period's counters for good (20,000 of them here); Redis expires them. It now drops
    those before the last period, unless something is still held in them."""
    state = MemoryState()
    now = time.time()
    daily = Budget("key:k1", 100.0, "day")
    monthly = Budget("team:t1", 100.0, "month")
    held = Budget("key:k2", 100.0, "day").pinned(now=now - 40 * 86400, hold="h-old")

    async def run() -> None:
        assert await state.admit([held], 0.5) is None  # still held: kept whatever its age
        for day in range(20_000):
            b = [daily.pinned(now=now - (day + 3) * 86400)]
            assert await state.admit(b, 0.01) is None
            await state.settle(b, 0.01, 0.01)
        today = [daily.pinned(now=now), monthly.pinned(now=now)]
        assert await state.admit(today, 0.25) is None
        await state.settle(today, 0.25, 0.2)

    asyncio.run(run())
    assert len(state._spent) < 10_100, len(state._spent)
    assert len(state._reserved) < 10_100, len(state._reserved)
    assert asyncio.run(state.spent(daily)) == (0.2, 0.0)  # the current periods' stand
    assert asyncio.run(state.spent(monthly)) == (0.2, 0.0)
    assert asyncio.run(state.spent(held)) == (0.0, 0.5)


def test_memory_state_sweeps_rate_windows_once_they_double() -> None:
    """Past 100,000 rate-limit windows in one minute, every admitted request rebuilt the
    whole dict to drop old minutes (all were current: nothing to drop). The sweep now waits
    until the windows have doubled again, as the pins' does."""
    state = MemoryState()
    rebuilt = 0

    async def run() -> None:
        nonlocal rebuilt
        for i in range(50_010):
            before = state._windows
            assert await state.admit([], 0.0, RateCount(f"k{i}", 1000, 10**9, 10)) is None
            rebuilt += state._windows is not before

    asyncio.run(run())
    assert len(state._windows) > 100_000
    assert rebuilt <= 1, rebuilt


def _finish_error_body(text: str) -> bytes:
    import json

    usage = {"prompt_tokens": 9, "completion_tokens": 40, "total_tokens": 49}
    return json.dumps({
        "id": "x", "object": "chat.completion", "model": "alpha-wire",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "error"}],
        "usage": usage,
    }).encode()  # fmt: skip


async def test_an_answer_that_finished_with_error_falls_back(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    """finish_reason "error" (OpenRouter's, for a generation that failed part-way) had
    been taken as an answer, and reached OpenAI clients as "stop". It is now a failed call:
    the request goes on to its next model, and the failed call is billed at least what the
    upstream reported."""
    raw.push(http_response(_finish_error_body("The answer is")), http_response(
        _finish_error_body("The answer is")))  # fmt: skip
    async with router(up.url) as r:
        r.update(move_alpha(registry(up.url), raw.url))
        res = await r.chat(MSGS)
    assert res.model == "beta", res.text
    failed = [a for a in res.attempts if a.model == "alpha"]
    assert failed and all(a.outcome == "error" for a in failed), failed
    assert all('finish_reason "error"' in (a.error or "") for a in failed), failed
    assert all(a.usage is not None and a.usage.completion_tokens >= 40 for a in failed)
    assert all(a.cost_estimated and (a.cost_usd or 0) > 0 for a in failed), failed


async def test_a_stream_that_finished_with_error_is_not_whole(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    """The same at a stream's end: the text streamed, then finish_reason "error" and
    [DONE]. It had ended as a whole answer; the stream now fails as a cut one does."""
    usage = {"prompt_tokens": 9, "completion_tokens": 40, "total_tokens": 49}
    events = [sse_chunk({"role": "assistant"}), sse_chunk({"content": "The answer is"}),
              sse_chunk({}, "error", usage=usage), b"[DONE]"]  # fmt: skip
    body = b"".join(b"data: " + e + b"\n\n" for e in events)
    raw.push(http_response(body, ctype="text/event-stream"))
    async with router(up.url) as r:
        r.update(move_alpha(registry(up.url), raw.url))
        with pytest.raises(ProviderError, match='finish_reason "error"'):
            async with r.stream(MSGS, allow=("alpha",)) as s:
                async for _ in s:
                    pass


def test_attempt_spans_name_the_service_that_answered() -> None:
    """`gen_ai.provider.name` had been the model's maker: "google" for Gemini on Google's
    API, "meta" for Llama served by Groq, where the GenAI conventions name the service
    (`gcp.gemini`, `groq`). It is now the deployment's host's well-known name, else its
    wire format."""
    from satisfice import Registry
    from satisfice.tracing import _provider_name

    reg = Registry.default()
    named = {}
    specs = [reg[m] for m in reg.ids]
    for spec in specs:
        for d in spec.deployments:
            named[(spec.id, d.name)] = _provider_name(spec, d.name)
    hosts = {(m.id, d.name): d.base_url for m in specs for d in m.deployments}
    for key, url in hosts.items():
        if "googleapis.com" in url:
            assert named[key] == "gcp.gemini", (key, named[key])
        if "api.groq.com" in url:
            assert named[key] == "groq", (key, named[key])
        if "api.mistral.ai" in url:
            assert named[key] == "mistral_ai", (key, named[key])
        if "api.together.xyz" in url:
            assert named[key] == "openai", (key, named[key])  # its wire format's
    assert any("api.groq.com" in u for u in hosts.values())


async def test_the_sync_loop_asks_a_store_that_is_away_less_often() -> None:
    """With the shared store away, an idle replica's sync loop had asked it five times a
    second for as long as the outage lasted (about 9% of a CPU against a Redis refusing
    connections); it now waits twice as long each turn the store is away, up to 3.2 s."""
    from satisfice.server import ServerConfig
    from satisfice.server.app import Service
    from satisfice.server.state import StateUnavailable

    svc = Service(ServerConfig())
    asked = 0

    async def away() -> None:
        nonlocal asked
        asked += 1
        raise StateUnavailable("redis unavailable: ConnectionError")

    svc.state.sync_clock = away  # type: ignore[method-assign]
    await svc.startup()
    try:
        await asyncio.sleep(2.5)
    finally:
        await svc.shutdown()
    assert 1 <= asked <= 5, asked  # 0, 0.2, 0.6, 1.4 s (was every 0.2 s: 12 or 13)


async def test_a_refresher_stops_once_its_router_is_closed(tmp_path: Any) -> None:
    """A RegistryRefresher went on reading its catalogue and updating a router that had
    been closed, every interval, for as long as its loop ran; it now stops, and says so."""
    import json

    from satisfice import Router
    from satisfice.refresh import RegistryRefresher

    cat = tmp_path / "prices.json"
    cat.write_text(json.dumps({}))
    r = Router()
    refresher = RegistryRefresher(r, "litellm", cat, interval_s=0.05)
    task = refresher.start()
    for _ in range(500):  # its first refresh (on a thread: slow on a loaded machine)
        if refresher.refreshes + refresher.failures:
            break
        await asyncio.sleep(0.02)
    before = refresher.refreshes + refresher.failures
    assert before >= 1
    await r.aclose()
    await asyncio.sleep(0.3)
    try:
        assert task.done(), "the refresher still runs on a closed router"
        assert refresher.refreshes + refresher.failures <= before + 1
    finally:
        await refresher.stop()
