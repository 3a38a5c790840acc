"""Token-count ratios of non-OpenAI tokenizers to cl100k_base, on the fit half of the corpus.

    python scripts/measure_family_ratios.py

Only tokenizers available offline are measured: the litellm wheel ships Anthropic's public
(legacy, Claude 2 era) tokenizer, read here with the `tokenizers` library. The ratio it prints
is the `Family::Claude` constant in rust/tokens.rs. Newer Claude models' tokenizer is not
public; chat() bills from provider-reported usage, never from this estimate.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))

from corpus import samples
from tokenizers import Tokenizer

from satisfice import _core


def main() -> None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the litellm wheel, which ships the tokenizer files")
    folder = Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"
    tok = Tokenizer.from_file(str(folder / "anthropic_tokenizer.json"))
    total_theirs = total_cl100k = 0
    for cat in ("prose", "code", "json"):
        texts = samples(cat, "fit")
        theirs = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in texts)
        cl100k = sum(_core.count_tokens_batch(texts, "cl100k_base"))
        total_theirs += theirs
        total_cl100k += cl100k
        print(f"claude (legacy) / cl100k_base  {cat:5}  {theirs / cl100k:.3f}")
    print(f"claude (legacy) / cl100k_base  all    {total_theirs / total_cl100k:.3f}")


if __name__ == "__main__":
    # (no options: --help says what it does, and does nothing; it had run, and rewritten
    # rust/estimator_coefs.rs)
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    main()
