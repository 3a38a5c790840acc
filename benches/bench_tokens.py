"""Exact counting and estimation side by side with tiktoken, on the same text in one run."""

from __future__ import annotations

import pytest
from corpus import CATEGORIES, samples
from tests.reference import fastokens_tokenizer, tiktoken_encoding

from satisfice import _core

TEXTS = {cat: "".join(samples(cat, "eval"))[: 256 * 1024] for cat in CATEGORIES}
ENC = tiktoken_encoding("o200k_base")
FAST = fastokens_tokenizer("o200k_base")
_core.count_tokens("warm")  # satisfice builds its tokenizer off the request path; not timed


@pytest.mark.parametrize("cat", CATEGORIES)
def test_tiktoken_encode(benchmark, cat: str) -> None:
    benchmark.group = f"tokens-{cat}"
    text = TEXTS[cat]
    n = benchmark(lambda: len(ENC.encode(text, disallowed_special=())))
    assert n == _core.count_tokens(text)


@pytest.mark.parametrize("cat", CATEGORIES)
def test_fastokens_encode(benchmark, cat: str) -> None:
    benchmark.group = f"tokens-{cat}"
    text = TEXTS[cat]
    assert benchmark(lambda: len(FAST.encode_ordinary(text))) == _core.count_tokens(text)


@pytest.mark.parametrize("cat", CATEGORIES)
def test_satisfice_count(benchmark, cat: str) -> None:
    benchmark.group = f"tokens-{cat}"
    text = TEXTS[cat]
    assert benchmark(_core.count_tokens, text) == len(ENC.encode(text, disallowed_special=()))


@pytest.mark.parametrize("cat", CATEGORIES)
def test_satisfice_estimate(benchmark, cat: str) -> None:
    benchmark.group = f"tokens-{cat}"
    assert benchmark(_core.estimate_tokens, TEXTS[cat]) > 0
