"""Exact counts where the Rust hot path cuts a long prompt, and at the counters' limits, as
reviewed (rust/tokens.rs). Every test here failed on the code it was written against; each
docstring names the defect, the minimal input found, and what should hold instead."""

from __future__ import annotations

import pytest

from satisfice import Registry, Router, _core
from satisfice.errors import NoRouteError

from .reference import tiktoken_encoding

CAPS = ["json", "tools", "streaming", "system_prompt"]

# A run of non-ASCII decimal digits (Devanagari, 3 bytes each) after two ASCII letters.
# Both encodings cut a number run into pre-tokens of 3 digits from the run's start; o200k
# encodes the aligned chunk "०७२" as 3 tokens, the chunk shifted by two ("२०७") as 1.
DEVA = "xy" + "०७२" * 2000  # 18,002 bytes, 6,001 o200k tokens
# The same for cl100k with full-width digits: "００１" is 3 tokens, "１００" 2.
FULL = "xy" + "００１" * 2000  # 18,002 bytes, 6,001 cl100k tokens


def _registry(tokenizer: str, window: int, price_in: float = 1.0) -> Registry:
    return Registry.from_dict(
        {
            "model": [
                {
                    "id": "m",
                    "provider": "openai",
                    "tokenizer": tokenizer,
                    "context_window": window,
                    "max_output": 1000,
                    "capabilities": CAPS,
                    "p95_latency_ms": 100,
                    "price": {"input": price_in, "output": 0.0},
                    "quality": {"general": 0.9},
                    "deployments": [
                        {
                            "name": "m-dep",
                            "api": "openai",
                            "base_url": "http://127.0.0.1:9/v1",
                            "model": "m-wire",
                        }
                    ],
                }
            ]
        }
    )


def _exact(text: str, encoding: str) -> int:
    """tiktoken's count of one user message plus the per-message/request overhead."""
    n = len(tiktoken_encoding(encoding).encode_ordinary(text))
    assert _core.count_message_tokens([{"role": "user", "content": text}], encoding) == n + 7
    return n + 7


@pytest.mark.parametrize(
    ("encoding", "text"), [("o200k_base", DEVA), ("cl100k_base", FULL)], ids=["o200k", "cl100k"]
)
def test_forced_cut_inside_non_ascii_digit_run_does_not_route_past_the_window(
    encoding: str, text: str
) -> None:
    """Defect: the router's count (`Counter::upto` -> `count_on(force=true)`) cuts a 4 KB
    stretch with no exact cut at a char boundary and allows 8 tokens of slack per cut; but
    inside a run of non-ASCII digits (`digit_chunk_end` only realigns ASCII runs) the cut
    moves the 3-digit pre-token alignment of everything after it, so every piece is
    mis-counted. `"xy" + "०७२" * 2000` (18 KB, 6,001 o200k tokens, tiktoken) is counted as
    2,911 + 4x8 slack; `"xy" + "００１" * 2000` as 4,456 in cl100k. A 6,008-token prompt is
    routed to a 4,506-token window (Candidate tokens_in=2918, 4463).
    Expected: a model whose window the exact count (plus the answer) overflows is filtered
    out ("no cliffs near limits"; windows decided on counts)."""
    _core.wait_for_tokenizers()
    exact = _exact(text, encoding)
    window = exact * 3 // 4
    router = Router(_registry(encoding, window))
    try:
        d = router.route(text, max_output_tokens=10)
    except NoRouteError:
        return  # nothing fits the window: correct
    pytest.fail(f"routed {exact} tokens (+10 out) to a {window}-token window: {d.candidates[0]}")


@pytest.mark.parametrize(
    ("encoding", "text"), [("o200k_base", DEVA), ("cl100k_base", FULL)], ids=["o200k", "cl100k"]
)
def test_forced_cut_inside_non_ascii_digit_run_does_not_break_max_cost(
    encoding: str, text: str
) -> None:
    """Defect: as above, the same forced-cut miscount decides `max_cost_usd`: at $1/M input,
    `"xy" + "०७२" * 2000` (6,008 tokens with overhead: $0.006008) passes a $0.004506 cap,
    estimated at $0.002918 (cl100k, `"xy" + "００１" * 2000`: $0.004463).
    Expected: a model whose cost at the exact count exceeds the cap is filtered out."""
    _core.wait_for_tokenizers()
    exact = _exact(text, encoding)
    cap = exact * 0.75e-6
    router = Router(_registry(encoding, 10**6))
    try:
        d = router.route(text, max_output_tokens=10, max_cost_usd=cap)
    except NoRouteError:
        return  # refused: correct
    c = d.candidates[0]
    assert c.est_cost_usd >= exact * 1e-6, (
        f"routed under a ${cap:.6f} cap a prompt costing ${exact * 1e-6:.6f}: {c}"
    )


def test_count_prompt_count_is_not_a_third_of_the_prompt() -> None:
    """Defect: with `count_prompt=True` (what the server's `/v1/messages/count_tokens`
    answers from) the prompt "counted for every candidate" is the forced-cut miscount:
    `"xy" + "०७२" * 2000` -> tokens_in 2,918 for a 6,008-token prompt (o200k).
    Expected: a count within the forced cuts' declared slack (8 a cut) of the exact one."""
    _core.wait_for_tokenizers()
    exact = _exact(DEVA, "o200k_base")
    router = Router(_registry("o200k_base", 10**6))
    d = router.route(DEVA, max_output_tokens=10, count_prompt=True)
    tokens_in = d.candidates[0].tokens_in
    cuts = len(DEVA.encode()) // 4096
    assert abs(tokens_in - exact) <= 8 * cuts, f"counted {tokens_in} of {exact} tokens"


def test_count_tokens_till_limit_with_a_huge_limit_is_not_none() -> None:
    """Defect: `count_tokens_till_limit("hello", 2**64 - 1)` returns None ("over the
    limit") for a 1-token text: `(limit as f32 / ratio).floor() as usize + 1` saturates to
    usize::MAX and wraps to 0 (release build, no overflow check). Any limit >= 2**64 - 2**39
    does it. Expected: 1 (the exact count), or a ValueError for a limit out of range."""
    for limit in (2**64 - 1, 2**64 - 2**39):
        try:
            got = _core.count_tokens_till_limit("hello", limit)
        except (ValueError, OverflowError):
            continue
        assert got == 1, f"limit {limit}: {got}"


def test_count_tokens_till_limit_is_exact_past_2_to_the_24_tokens() -> None:
    """Defect: `count_tokens_till_limit` (documented "Exact count") rounds the count
    through f32 (`(tally.tokens as f32 * ratio).round()`, even for ratio 1.0), so a text of
    16,777,217 tokens (`"a1" * 8388608 + "a"`: one token per character in both encodings)
    is returned as 16,777,216 (count_tokens says 16,777,217).
    Expected: the exact count, equal to count_tokens."""
    text = "a1" * 8388608 + "a"
    small = "a1" * 50 + "a"
    assert len(tiktoken_encoding("o200k_base").encode_ordinary(small)) == len(small)
    got = _core.count_tokens_till_limit(text, 10**9)
    assert got == len(text) == 16_777_217, got
