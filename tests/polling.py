"""Waiting for a condition rather than for a fixed time: a stalled CI machine outlasts a
sleep that was to order two events, not a poll for the event itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def until(condition: Callable[[], object], limit_s: float = 5.0) -> bool:
    """Whether `condition()` holds, polled every 10 ms for at most `limit_s`."""
    limit = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > limit:
            return False
        time.sleep(0.01)
    return True


async def until_async(condition: Callable[[], object], limit_s: float = 5.0) -> bool:
    """`until` on an event loop: the loop runs meanwhile."""
    limit = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > limit:
            return False
        await asyncio.sleep(0.01)
    return True
