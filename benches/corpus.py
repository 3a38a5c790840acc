"""Text samples for token-count benchmarks and estimator calibration, from files every machine
of this kind has (Debian's license texts, CPython's stdlib and its CJK test files), so the
numbers reproduce without downloads. Files are split by a hash of their name into a `fit`
part (calibration) and an `eval` part (reported error), so no text is scored that was fitted.
"""

from __future__ import annotations

import hashlib
import json
import random
import sysconfig
from pathlib import Path

CATEGORIES = ("prose", "code", "json", "cjk")
CHUNK = 2048


def _part(path: Path) -> str:
    return "fit" if hashlib.sha256(path.name.encode()).digest()[0] % 2 == 0 else "eval"


def _chunks(text: str, size: int = CHUNK) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size) if len(text[i : i + size]) > 64]


def _files(category: str) -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if category == "prose":
        return sorted(p for p in Path("/usr/share/common-licenses").iterdir() if p.is_file())
    if category == "code":
        return sorted(stdlib.glob("*.py"))[:120]
    if category == "cjk":
        # cp949/johab hold a line of deliberately rare Hangul syllables: codec tests, not text.
        skip = {"cp949-utf8.txt", "johab-utf8.txt"}
        files = (stdlib / "test" / "cjkencodings").glob("*-utf8.txt")
        return sorted(p for p in files if p.name not in skip)
    raise ValueError(category)


def _json_docs(part: str) -> list[str]:
    rng = random.Random(0 if part == "fit" else 1)
    words = ["alpha", "beta", "gamma", "delta", "user", "order", "status", "price", "name"]
    docs = []
    for i in range(60):
        obj = {
            "id": rng.randrange(10**9),
            "name": f"{rng.choice(words)} {rng.choice(words)}",
            "email": f"{rng.choice(words)}{i}@example.com",
            "active": rng.random() < 0.5,
            "score": round(rng.random() * 100, 3),
            "tags": rng.sample(words, 3),
            "items": [
                {
                    "sku": f"SKU-{rng.randrange(10000):04d}",
                    "qty": rng.randrange(1, 9),
                    "unit_price": round(rng.random() * 50, 2),
                }
                for _ in range(rng.randrange(1, 6))
            ],
            "created_at": f"2025-0{rng.randrange(1, 9)}-1{rng.randrange(0, 9)}T10:2{i % 10}:00Z",
        }
        docs.append(json.dumps(obj, indent=2 if i % 2 else None))
    return docs


def samples(category: str, part: str) -> list[str]:
    """Chunks of ~2 KB of one category, from the `fit` or the `eval` half of the files."""
    if category == "json":
        return _json_docs(part)
    out: list[str] = []
    for p in _files(category):
        if category == "cjk" or _part(p) == part:
            text = p.read_text("utf-8", errors="replace")
            # The CJK files are few: split each by line parity instead of by file.
            if category == "cjk":
                lines = text.splitlines(keepends=True)
                text = "".join(lines[0 if part == "fit" else 1 :: 2])
            out.extend(_chunks(text, 512 if category == "cjk" else CHUNK))
    return out
