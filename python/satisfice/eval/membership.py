"""Which prompts a predictor was trained on, kept as a Bloom filter inside the predictor.

`satisfice eval` without `--train` scores the shipped (or a saved) predictor; if the test
files overlap its training data, those rows would be scored in-sample. The filter lets eval
drop them. A Bloom filter answers "maybe seen" for about 1 in 10,000 unseen prompts (that
row is dropped too, which costs a little data, never honesty) and never misses a seen
prompt. About 2.4 bytes per training prompt; the prompts are not recoverable from it.

A prompt is known by `prompt_key`: its text in Unicode's compatibility form (NFKC) without
its invisible format characters (a zero-width space, a soft hyphen, a byte-order mark:
category Cf), every run of whitespace one space, and none at its ends. Keyed on the exact
text, a copy with a trailing newline or single spaces for double (220 of RouteLLM's 823
GSM8K prompts have them) passed as unseen; keyed with the format characters, a copy with
a zero-width space did (86 of 136 test rows of a file of such copies). A filter stored
without `"key"` (before) holds exact texts; one stored with "nfkc-spaces" (before the
format characters went) holds those keys, and a prompt is looked up there by both.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["META_KEY", "PromptFilter", "prompt_key"]

META_KEY = "training_prompts"
_KEY = "nfkc-visible-spaces"  # the meta's name of `prompt_key`
_OLD_KEY = "nfkc-spaces"  # `_spaced`'s: the format characters kept (filters saved before)
KEYS = frozenset({_KEY, _OLD_KEY})  # what a saved filter's "key" may say


def prompt_key(text: str) -> str:
    """What tells two prompts apart when leakage is checked (see the module docstring):
    the filter, the splits and the held-out sets all compare prompts by it."""
    if not text.isascii():  # (ASCII has no format characters)
        # (the format characters first: one between a letter and its accent had kept
        # NFKC from composing them, and "café" two keys)
        text = unicodedata.normalize("NFKC", text.translate(_format_characters()))
    return " ".join(text.split())


def _spaced(text: str) -> str:
    """The key filters saved before `prompt_key` dropped format characters were built on."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


@functools.cache
def _format_characters() -> dict[int, None]:
    """Every code point of Unicode's category Cf, to be deleted by str.translate (found
    once, the first time a prompt that is not ASCII is keyed)."""
    return {c: None for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf"}


def _hashes(prompt: str) -> tuple[int, int]:
    d = hashlib.blake2b(prompt.encode("utf-8"), digest_size=16, person=b"satisfice-bloom").digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little") | 1


class PromptFilter:
    """A Bloom filter over prompt texts, sized by `build` for a false-positive rate."""

    def __init__(self, bits: np.ndarray, n_hashes: int, count: int, key: str | None = _KEY) -> None:
        self._bits = bits.astype(np.uint8, copy=False)
        self._m = int(self._bits.size * 8)
        self._k = n_hashes
        self.count = count
        # prompts by `prompt_key` (_KEY), by `_spaced` (_OLD_KEY), else by their exact text
        self.key = key

    @classmethod
    def build(cls, prompts: Sequence[str], fp: float = 1e-4) -> PromptFilter:
        n = max(len(prompts), 1)
        m = max(64, math.ceil(-n * math.log(fp) / math.log(2) ** 2))
        m = (m + 7) // 8 * 8
        k = max(1, round(m / n * math.log(2)))
        f = cls(np.zeros(m // 8, dtype=np.uint8), k, 0)
        f.add(prompts)
        return f

    def _positions(self, key: str) -> list[int]:
        h1, h2 = _hashes(key)
        return [(h1 + i * h2) % self._m for i in range(self._k)]

    def _keys(self, prompt: str) -> tuple[str, ...]:
        """What `prompt` is looked up by: in a filter of `_spaced` keys, by that and by
        `prompt_key` as well (a training prompt without format characters has the two
        keys alike, so a copy of it with a zero-width space is found by the second)."""
        if self.key == _KEY:
            return (prompt_key(prompt),)
        if self.key == _OLD_KEY:
            return (_spaced(prompt), prompt_key(prompt))
        return (prompt,)

    def add(self, prompts: Iterable[str]) -> None:
        for p in prompts:
            for pos in self._positions(self._keys(p)[0]):
                self._bits[pos >> 3] |= np.uint8(1 << (pos & 7))
            self.count += 1

    def __contains__(self, prompt: object) -> bool:
        if not isinstance(prompt, str):
            return False
        return any(
            all(self._bits[pos >> 3] >> (pos & 7) & 1 for pos in self._positions(k))
            for k in self._keys(prompt)
        )

    def mask(self, prompts: Sequence[str]) -> np.ndarray:
        """Boolean (n,): True where the prompt was (probably) in the training data."""
        return np.fromiter((p in self for p in prompts), dtype=np.bool_, count=len(prompts))

    def to_meta(self) -> dict[str, object]:
        return {
            "bloom": base64.b64encode(self._bits.tobytes()).decode("ascii"),
            "hashes": self._k,
            "count": self.count,
            **({"key": self.key} if self.key is not None else {}),
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, object]) -> PromptFilter | None:
        """The filter stored in a predictor's meta, or None if it has none."""
        entry = meta.get(META_KEY)
        if not isinstance(entry, Mapping):
            return None
        bits = np.frombuffer(base64.b64decode(str(entry["bloom"])), dtype=np.uint8).copy()
        key = entry.get("key")
        return cls(bits, int(str(entry["hashes"])), int(str(entry["count"])),
                   key if key in KEYS else None)  # fmt: skip
