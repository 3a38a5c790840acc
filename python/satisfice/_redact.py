"""Keys never leave the process through satisfice: every API key a provider reads is
registered here, and text or bytes that came from an upstream (bodies, stream lines, error
messages) pass through `scrub` before anything else sees them. An upstream that echoes the
request's Authorization header then shows "[redacted]" in errors, attempts, health, reprs
and records.

The registry is a tuple replaced whole, so readers on any thread never see it half-built.
"""

from __future__ import annotations

__all__ = ["REDACTED", "register", "scrub", "scrub_bytes"]

REDACTED = "[redacted]"
_MIN_LEN = 8  # shorter values are not keys, and would redact ordinary words
_secrets: tuple[str, ...] = ()
_secrets_b: tuple[bytes, ...] = ()


def register(value: str) -> None:
    """Remember a key so that `scrub` removes it from anything derived from upstream text."""
    global _secrets, _secrets_b
    if len(value) >= _MIN_LEN and value not in _secrets:
        # longest first: a key that contains another is removed whole
        _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))
        _secrets_b = tuple(s.encode() for s in _secrets)


def scrub(text: str) -> str:
    for s in _secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def scrub_bytes(data: bytes) -> bytes:
    for s in _secrets_b:
        if s in data:
            data = data.replace(s, REDACTED.encode())
    return data
