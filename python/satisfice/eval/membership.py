"""Which prompts a predictor was trained on, kept as a Bloom filter inside the predictor.

`satisfice eval` without `--train` scores the shipped (or a saved) predictor; if the test
files overlap its training data, those rows would be scored in-sample. The filter lets eval
drop them. A Bloom filter answers "maybe seen" for about 1 in 10,000 unseen prompts (that
row is dropped too, which costs a little data, never honesty) and never misses a seen
prompt. About 2.4 bytes per training prompt; the prompts are not recoverable from it.

A prompt is known by `prompt_key`: its text in Unicode's compatibility form (NFKC) with
every run of whitespace one space, and none at its ends. Keyed on the exact text, a copy
with a trailing newline or single spaces for double (220 of RouteLLM's 823 GSM8K prompts
have them) passed as unseen. A filter stored without `"key"` (before) holds exact texts.
"""

from __future__ import annotations

import base64
import hashlib
import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["META_KEY", "PromptFilter", "prompt_key"]

META_KEY = "training_prompts"
_KEY = "nfkc-spaces"  # the meta's name of `prompt_key`


def prompt_key(text: str) -> str:
    """What tells two prompts apart when leakage is checked (see the module docstring):
    the filter, the splits and the held-out sets all compare prompts by it."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _hashes(prompt: str) -> tuple[int, int]:
    d = hashlib.blake2b(prompt.encode("utf-8"), digest_size=16, person=b"satisfice-bloom").digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little") | 1


class PromptFilter:
    """A Bloom filter over prompt texts, sized by `build` for a false-positive rate."""

    def __init__(self, bits: np.ndarray, n_hashes: int, count: int, keyed: bool = True) -> None:
        self._bits = bits.astype(np.uint8, copy=False)
        self._m = int(self._bits.size * 8)
        self._k = n_hashes
        self.count = count
        self.keyed = keyed  # prompts by `prompt_key` (else by their exact text, as before)

    @classmethod
    def build(cls, prompts: Sequence[str], fp: float = 1e-4) -> PromptFilter:
        n = max(len(prompts), 1)
        m = max(64, math.ceil(-n * math.log(fp) / math.log(2) ** 2))
        m = (m + 7) // 8 * 8
        k = max(1, round(m / n * math.log(2)))
        f = cls(np.zeros(m // 8, dtype=np.uint8), k, 0)
        f.add(prompts)
        return f

    def _positions(self, prompt: str) -> list[int]:
        h1, h2 = _hashes(prompt_key(prompt) if self.keyed else prompt)
        return [(h1 + i * h2) % self._m for i in range(self._k)]

    def add(self, prompts: Iterable[str]) -> None:
        for p in prompts:
            for pos in self._positions(p):
                self._bits[pos >> 3] |= np.uint8(1 << (pos & 7))
            self.count += 1

    def __contains__(self, prompt: object) -> bool:
        if not isinstance(prompt, str):
            return False
        return all(self._bits[pos >> 3] >> (pos & 7) & 1 for pos in self._positions(prompt))

    def mask(self, prompts: Sequence[str]) -> np.ndarray:
        """Boolean (n,): True where the prompt was (probably) in the training data."""
        return np.fromiter((p in self for p in prompts), dtype=np.bool_, count=len(prompts))

    def to_meta(self) -> dict[str, object]:
        return {
            "bloom": base64.b64encode(self._bits.tobytes()).decode("ascii"),
            "hashes": self._k,
            "count": self.count,
            **({"key": _KEY} if self.keyed else {}),
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, object]) -> PromptFilter | None:
        """The filter stored in a predictor's meta, or None if it has none."""
        entry = meta.get(META_KEY)
        if not isinstance(entry, Mapping):
            return None
        bits = np.frombuffer(base64.b64decode(str(entry["bloom"])), dtype=np.uint8).copy()
        keyed = entry.get("key") == _KEY
        return cls(bits, int(str(entry["hashes"])), int(str(entry["count"])), keyed)
