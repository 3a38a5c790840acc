"""route() latency for 100 B, 4 KB and 64 KB prompts (featurise + estimate + predict + plan).

Each round routes the next of several different prompts of the size: the same prompt again
and again would let the CPU's branch predictor learn it and flatter the figure.
"""

from __future__ import annotations

from itertools import cycle

import pytest
from corpus import samples

from satisfice import Router

ROUTER = Router()
PROSE = "".join(samples("prose", "eval")) + "".join(samples("prose", "fit"))
SIZES = {"100B": 100, "4KB": 4096, "64KB": 65536}


def prompts(size: int, n: int = 16) -> list[str]:
    step = max((len(PROSE) - size) // n, 1)
    return [PROSE[i * step : i * step + size] for i in range(n)]


@pytest.mark.benchmark(group="route")
@pytest.mark.parametrize("size", list(SIZES))
def test_route(benchmark, size: str) -> None:
    nxt = cycle(prompts(SIZES[size])).__next__
    d = benchmark(lambda: ROUTER.route(nxt()))
    assert d.model


@pytest.mark.benchmark(group="route")
def test_route_messages_4kb(benchmark) -> None:
    nxt = cycle(
        [
            [
                {"role": "system", "content": "You are a careful assistant."},
                {"role": "user", "content": p},
            ]
            for p in prompts(4096)
        ]
    ).__next__
    assert benchmark(lambda: ROUTER.route(nxt())).model


@pytest.mark.benchmark(group="route")
def test_route_4kb_with_1024_hashed_ngram_buckets(benchmark) -> None:
    """The default predictors read dense features only; one that also reads hashed n-grams
    makes the featurizer hash every word (the cost a user opts into)."""
    from satisfice import Policy, QualityModel

    router = Router(policy=Policy(quality=QualityModel.prior(hash_buckets=1024)))
    nxt = cycle(prompts(4096)).__next__
    assert benchmark(lambda: router.route(nxt())).model
