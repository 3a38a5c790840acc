"""Count every held-out sample of one kind once, cold: a fresh process, the tokenizer built
and used once first, untimed. benches/report.py runs it; by hand:

    python benches/cold_count.py satisfice|fastokens|tiktoken prose|code|json|cjk

Prints one JSON line: samples, bytes, MB/s of CPU time."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from corpus import CATEGORIES, samples


def main(who: str, cat: str) -> None:
    texts = samples(cat, "eval") + samples(cat, "fit")
    if who == "satisfice":
        from satisfice import _core

        def count(t: str) -> int:
            return _core.count_tokens(t)
    elif who == "fastokens":
        from tests.reference import fastokens_tokenizer

        fast = fastokens_tokenizer("o200k_base")

        def count(t: str) -> int:
            return len(fast.encode_ordinary(t))
    else:
        from tests.reference import tiktoken_encoding

        enc = tiktoken_encoding("o200k_base")

        def count(t: str) -> int:
            return len(enc.encode(t, disallowed_special=()))

    count("warm up")  # lazy set-up on first use (fastokens: ~0.2 s), untimed for all three
    size = sum(len(t.encode()) for t in texts)
    c = time.process_time()
    for t in texts:
        count(t)
    cpu = time.process_time() - c
    print(json.dumps({"samples": len(texts), "bytes": size, "mb_s": size / cpu / 1e6}))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("who", choices=("satisfice", "fastokens", "tiktoken"))
    ap.add_argument("cat", choices=CATEGORIES)
    a = ap.parse_args()
    main(a.who, a.cat)
