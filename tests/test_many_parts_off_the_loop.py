"""A prompt of many content parts or tool calls in few messages is routed off the event
loop (adversarial input through `Router.chat()`): the test failed on the code it was written
against because of the defect its docstring names."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from satisfice.errors import SatisficeError
from satisfice.testing import LocalUpstream, reply

from .chat_support import router


async def _max_lag(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append(time.perf_counter() - t - 0.005)


def _parts(n: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "a"}] * n}]


def _calls(n: int, content_key: bool = True) -> list[dict[str, Any]]:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    turn: dict[str, Any] = {"role": "assistant", "tool_calls": [call] * n}
    if content_key:
        turn["content"] = None
    return [{"role": "user", "content": "q"}, turn]


def _thinking(n: int) -> list[dict[str, Any]]:
    block = {"type": "thinking", "thinking": "t", "signature": "s"}
    return [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "thinking_blocks": [block] * n},
        {"role": "user", "content": "and?"},
    ]


def _keys(n: int) -> dict[str, str]:
    return {f"k{i}": "v" for i in range(n)}


SHAPES = {
    "parts": lambda: _parts(500_000),
    "tool_calls": lambda: _calls(300_000),
    # (an assistant turn of tool calls and no content key at all: a message of two keys,
    # whose calls text_bytes had not read, nor counted)
    "tool_calls_no_content": lambda: _calls(300_000, content_key=False),
    "thinking_blocks": lambda: _thinking(300_000),
    # keys read one by one, and a container made into text (had held the loop 0.1-0.2 s)
    "message_keys": lambda: [{"role": "user", "content": "q", **_keys(100_000)}],
    "part_keys": lambda: [{"role": "user", "content": [
        {"type": "text", "text": "q", **_keys(100_000)}]}],
    "function_keys": lambda: [
        {"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
            "name": "f", "arguments": "{}", **_keys(100_000)}}]},
    ],
    "list_in_a_field": lambda: [{"role": "user", "content": "q", "extra": ["x"] * 300_000}],
}  # fmt: skip


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_many_parts_in_one_message_do_not_hold_the_loop(
    up: LocalUpstream, shape: str
) -> None:
    """Defect: whether a prompt is routed on a worker thread (`router._route_inline`) was
    decided by its message count (over 1,024: off the loop) and then by `text_bytes`, which
    walks every part and tool call on the event loop. One message of 500,000 one-letter
    parts, or an assistant turn of 300,000 tool calls, passed the message count and was
    measured there: the loop was held 0.25-0.3 s (1.2-1.4 s under a profiler) before
    routing went to its thread, where 600,000 one-letter messages take ~10 ms of loop.

    Expected (README, "Hostile upstreams": a prompt of more than 1,024 messages is routed
    on a worker thread; the loop is not held for hundreds of milliseconds): as many parts
    or calls in one message as messages are routed off the loop too."""
    up.default = reply("ok")
    messages = SHAPES[shape]()
    async with router(up.url) as r:
        await r.chat("warm up")  # the tokenizers built, as in a server's steady state
        stop, lags = asyncio.Event(), []
        ticker = asyncio.ensure_future(_max_lag(stop, lags))
        await asyncio.sleep(0.02)
        # no model's window takes them: the time the loop was held is the point
        with contextlib.suppress(SatisficeError):
            await r.chat(messages, timeout=5)
        stop.set()
        await ticker
        assert max(lags) < 0.15, f"{shape}: the event loop was held {max(lags):.2f}s"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_many_parts_are_routed_on_a_worker_thread(shape: str) -> None:
    """The decision itself, without a clock: every shape of many items is routed off the
    loop, and the usual prompt on it (an assistant turn of tool calls with no content key,
    and thinking blocks, had been left on the loop, unread and uncounted)."""
    from satisfice import Router, _core
    from satisfice.router import _message_list, _route_inline

    Router()  # (it starts the tokenizers' build, which this waits for)
    _core.wait_for_tokenizers()
    assert not _route_inline(_message_list(SHAPES[shape]()))
    assert _route_inline(_message_list([{"role": "user", "content": "q"}]))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_what_decides_stops_reading_past_its_bound(shape: str) -> None:
    """Deciding must not be the long walk itself: `text_bytes` stops once it has met more
    items (parts, calls, blocks, keys of the dicts it reads) than routing inline takes, or
    sizes a container too large to make into text without making it. A message of a million
    keys had been read key by key on the loop (0.2 s) before routing went to its thread."""
    from satisfice._extra import text_bytes
    from satisfice.router import _message_list

    got = text_bytes(_message_list(SHAPES[shape]()), 1024)
    assert got is None or got >= 1 << 40, got
