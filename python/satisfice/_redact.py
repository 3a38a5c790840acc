"""Keys never leave the process through satisfice: every API key a provider reads is
registered here, and text or bytes that came from an upstream (bodies, stream lines, error
messages) pass through `scrub` before anything else sees them. An upstream that echoes the
request's Authorization header then shows "[redacted]" in errors, attempts, health, reprs
and records.

The registry is a tuple replaced whole, so readers on any thread never see it half-built.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "REDACTED",
    "StreamScrubber",
    "register",
    "scrub",
    "scrub_bytes",
    "scrub_json",
    "scrub_nested",
    "scrub_values",
]

REDACTED = "[redacted]"
MIN_KEY_CHARS = 8  # shorter values would redact ordinary words (a shorter key is refused)
_secrets: tuple[str, ...] = ()
_secrets_b: tuple[bytes, ...] = ()


def register(value: str) -> None:
    """Remember a key so that `scrub` removes it from anything derived from upstream text."""
    global _secrets, _secrets_b
    if len(value) >= MIN_KEY_CHARS and value not in _secrets:
        # longest first: a key that contains another is removed whole
        _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))
        _secrets_b = tuple(s.encode() for s in _secrets)


def scrub(text: str) -> str:
    for s in _secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def scrub_values(data: Any) -> Any:
    """`data` (parsed JSON) with every string scrubbed, keys included."""
    if not _secrets:
        return data
    if isinstance(data, str):
        return scrub(data)
    if isinstance(data, list):
        return [scrub_values(v) for v in data]
    if isinstance(data, dict):
        return {scrub(k) if isinstance(k, str) else k: scrub_values(v) for k, v in data.items()}
    return data


def scrub_json(text: str) -> str:
    """`text` (already scrubbed) with a key removed from what it says once JSON-decoded as
    well: JSON a caller decodes later (tool arguments, a JSON answer) may write a key with
    an escape (\\u0073k-...), whole only after decoding. Re-encoded only when a key was
    there; text that is not JSON, or has no backslash to hide one behind, is returned as is."""
    if not _secrets or "\\" not in text:
        return text
    import json  # here: `import satisfice` had paid 2.4 ms for it

    try:
        data = json.loads(text)
        clean = scrub_values(data)
    except (ValueError, RecursionError):
        return text
    if clean == data:
        return text
    return json.dumps(clean, ensure_ascii=False, separators=(",", ":"))


def scrub_nested(data: Any) -> Any:
    """`data` (parsed JSON) with `scrub_json` applied to every string: for a reply known to
    hide a key inside a string that is JSON itself (a tool call's arguments)."""
    if isinstance(data, str):
        return scrub_json(data)
    if isinstance(data, list):
        return [scrub_nested(v) for v in data]
    if isinstance(data, dict):
        return {k: scrub_nested(v) for k, v in data.items()}
    return data


# A run of printable ASCII (no space, quote or backslash) and JSON \\u escapes: where a key
# spelled with escapes (\\u0073k-...) would sit, whole only once a JSON decoder reads it; the
# same read backwards from a text's end (its characters reversed), with an escape there that
# the next piece may finish (a match from the start, with no search for where it begins); one
# escape. Compiled on first use (half a millisecond that `import satisfice` need not pay).
_ASCII = r"[!#-\[\]-~]"
_PATTERNS: tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]] | None = None


def _patterns() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    global _PATTERNS
    if _PATTERNS is None:
        _PATTERNS = (
            re.compile(rf"(?:{_ASCII}|\\u[0-9a-fA-F]{{4}})+"),
            re.compile(rf"(?:[0-9a-fA-F]{{0,3}}u\\|\\)?(?:[0-9a-fA-F]{{4}}u\\|{_ASCII})*"),
            re.compile(r"\\u([0-9a-fA-F]{4})"),
        )
    return _PATTERNS


def _unescaped(run: str) -> str:
    return _patterns()[2].sub(lambda m: chr(int(m.group(1), 16)), run)


def _escaped(text: str) -> str:
    """`text` fit to stand inside a JSON string again."""
    return "".join(c if c >= " " and c not in '"\\' else f"\\u{ord(c):04x}" for c in text)


def _unhide(text: str) -> str:
    """`text` (already scrubbed) with each run that spells a key once its \\u escapes are
    read replaced by that run read and scrubbed: what `scrub_json` does for whole JSON,
    for text that comes in pieces (a streamed JSON answer) and may never parse whole."""

    def clean(m: re.Match[str]) -> str:
        run = m.group(0)
        if "\\" not in run:
            return run
        read = _unescaped(run)
        out = scrub(read)
        return run if out == read else _escaped(out)

    return _patterns()[0].sub(clean, text)


class StreamScrubber:
    """Scrubs text that arrives in pieces: a key split across two pieces is still caught,
    and so is one spelled with JSON escapes (a streamed JSON answer's, which its caller
    decodes). Only a piece's end that could be the start of a key is held back, until the
    next piece says whether it is one (usually nothing is held: text rarely ends like a key
    begins, and a run with an escape in it ends at the next space or quote)."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = ""

    def feed(self, piece: str) -> str:
        if not _secrets:
            return piece
        text = scrub(self._held + piece)
        hold = 0
        if "\\" in text:
            text = _unhide(text)
            # The run at the end may go on and spell a key when it does: held, as far back
            # as a key's escapes could reach (6 characters each), so holding stays bounded.
            reach = 6 * len(_secrets[0]) + 6
            tail = _patterns()[1].match(text[: -reach - 1 : -1]).group(0)  # type: ignore[union-attr]
            if "\\" in tail:
                hold = len(tail)
        for s in _secrets:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold] if hold else text

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


def scrub_bytes(data: bytes) -> bytes:
    for s in _secrets_b:
        if s in data:
            data = data.replace(s, REDACTED.encode())
    return data
