"""Broken upstreams, byte for byte from a raw socket: what the upstream said (its status, a
JSON error or answer in place of an event stream) is what the attempt records, however
broken the bytes around it."""

from __future__ import annotations

import asyncio

import pytest

from satisfice.errors import ProviderError
from satisfice.testing import RawUpstream

from .chat_support import move_alpha, registry, router

MSGS = [{"role": "user", "content": "hello there"}]

# The head says the status; the body after it cannot be read (cut by a close, or a gzip
# body that is not gzip).
UNREADABLE = {
    "cut": lambda status: (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 7\r\n"
        'content-length: 500\r\nconnection: close\r\n\r\n{"error": {"mess'
    ).encode(),
    "corrupt-gzip": lambda status: (
        (
            f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 7\r\n"
            "content-encoding: gzip\r\ncontent-length: 18\r\nconnection: close\r\n\r\n"
        ).encode()
        + b"\x1f\x8b\x08\x00not gzip at all!"
    ),
}


@pytest.mark.parametrize("body", list(UNREADABLE))
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "error_type", "retry_after"),
    [
        ("401 Unauthorized", "AuthError", None),
        ("429 Too Many Requests", "RetryableError", 7.0),
        ("400 Bad Request", "BadRequestError", None),
    ],
)
async def test_an_error_status_whose_body_cannot_be_read_is_still_that_status(
    body: str, stream: bool, status: str, error_type: str, retry_after: float | None
) -> None:
    # The status had been lost with the body: a "connection failed" RetryableError with no
    # status, so a 401 was retried (and its deployment not disabled), a 400 retried, and a
    # 429's Retry-After ignored.
    with RawUpstream() as raw:
        raw.push(UNREADABLE[body](status))
        async with router(raw.url, max_retries=0) as r:
            r.update(move_alpha(registry(raw.url), raw.url, "openai"))

            async def call() -> None:
                if stream:
                    async for _ in r.stream(MSGS, allow=["alpha"]):
                        pass
                else:
                    await r.chat(MSGS, allow=["alpha"])

            with pytest.raises(ProviderError) as info:
                await asyncio.wait_for(call(), 10)
    # (a 400 is the caller's to fix: raised as itself, the attempt on it)
    (a,) = [a for a in info.value.attempts if a.outcome == "error"]
    assert a.error_type == error_type, a
    assert a.status == int(status[:3]), a
    assert a.retry_after == retry_after, a
    assert "its body could not be read" in (a.error or ""), a.error
    assert len(raw.requests) == 1  # not retried by the transport either
