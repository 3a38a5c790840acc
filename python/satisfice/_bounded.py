"""Read a file a user named, at most so many bytes: /dev/zero, or a file of gigabytes named
by mistake, had been read until memory ran out (a MemoryError traceback, or a machine made
to swap). A file missing or unreadable is the caller's to say (the OSError is left to it)."""

from __future__ import annotations

from .errors import ConfigError

TYPE_CHECKING = False  # not typing's: Router() does not import typing (cold_start.py)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import BinaryIO

__all__ = ["MAX_FILE_BYTES", "read_bounded", "read_within"]

#: The most bytes of a registry, policy, config or health file read (the bundled registry
#: is 18 kB).
MAX_FILE_BYTES = 64 << 20


def read_bounded(path: str | Path, too_large: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """`path`'s bytes; ConfigError(`too_large`) when it holds more than `limit` of them."""
    with open(path, "rb") as f:
        return read_within(f, too_large, limit)


def read_within(f: BinaryIO, too_large: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """What is left of `f` (a file, stdin); ConfigError(`too_large`) past `limit` bytes."""
    raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ConfigError(too_large)
    return raw
