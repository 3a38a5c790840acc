"""An event stream's lines read whole are scrubbed as one text (`sse_events`, 4d160dd). The
review found a key registered that holds a line's end (a base URL's credential read with
its %0A, `url_secrets`): found across two lines, it had joined them, the data line after a
comment taken into the comment and its text lost from the answer. A key is now registered
by its lines (`_redact.register`): no spelling holds a line's end."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from satisfice import _redact as r
from satisfice.providers.base import sse_events
from satisfice.registry import url_secrets

_STATE = ("_secrets", "_folded", "_folded_b", "_exact", "_exact_b", "_spellings")


class _Pieces(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for p in self._pieces:
            yield p


async def _events(pieces: list[bytes]) -> list[tuple[str, str]]:
    return [e async for e in sse_events(httpx.Response(200, stream=_Pieces(pieces)))]


async def test_a_key_with_a_line_end_joins_no_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _STATE:
        monkeypatch.setattr(r, name, getattr(r, name))  # (restored after: registered here)
    secrets = url_secrets("http://127.0.0.1:9/v1?key=secret-token-42%0A")
    assert "secret-token-42\n" in secrets
    for s in secrets:
        r.register(s)
    body = (
        b'data: {"t": "Hello "}\n\n'
        b": proxy auth secret-token-42\n"
        b'data: {"t": "world"}\n\n'
        b"data: [DONE]\n\n"
    )
    want = [("", '{"t": "Hello "}'), ("", '{"t": "world"}'), ("", "[DONE]")]
    echoed = body.replace(b'"world"', b'"world secret-token-42"')
    said = [("", '{"t": "Hello "}'), ("", '{"t": "world [redacted]"}'), ("", "[DONE]")]
    assert await _events([echoed]) == said
    assert await _events([body]) == want
    for cut in range(1, len(body)):  # and split anywhere
        assert await _events([body[:cut], body[cut:]]) == want, cut


def test_a_key_is_registered_by_its_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each line of 8 characters or more a spelling of its own, in any case; the whole
    value's base64 spellings too (a Basic header's pair holds the line's end); no spelling
    holds one; a line too short to be a key is none; registered twice, nothing new."""
    import base64

    for name in _STATE:
        monkeypatch.setattr(r, name, getattr(r, name))  # (restored after: registered here)
    r.register("first-line-key\r\nshort\nsecond-line-key\n")
    assert not any("\n" in s or "\r" in s for s in r._secrets)
    assert r.scrub("a FIRST-LINE-KEY b second-line-key c short") == (
        "a [redacted] b [redacted] c short"
    )
    whole = base64.b64encode(b"user:first-line-key\r\nshort\nsecond-line-key\n").decode()
    r.register("user:first-line-key\r\nshort\nsecond-line-key\n")
    assert "[redacted]" in r.scrub(f"Basic {whole}")
    before = r._spellings
    r.register("first-line-key\r\nshort\nsecond-line-key\n")
    assert r._spellings is before
