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


def _near_limit_router() -> tuple[Router, list[str]]:
    """The bundled registry with one o200k model whose window is just above these 4 KB
    prompts' exact counts: the estimate's bounds straddle it, so the route must count."""
    from satisfice import Registry, _core

    ps = prompts(4096)
    reg = Registry.default()
    m = next(m for m in reg if m.base is None and m.tokenizer == "o200k_base")
    window = int(max(_core.count_tokens(p) for p in ps) * 1.08) + 600
    near = m.replace(context_window=window, max_output=min(m.max_output, 512))
    return Router(registry=reg.replace(near)), ps


@pytest.mark.benchmark(group="route-limits")
@pytest.mark.parametrize("where", ["far", "near"])
def test_route_4kb_window(benchmark, where: str) -> None:
    """Near a context window (an exact count decides) against the same route far from it."""
    router, ps = _near_limit_router() if where == "near" else (ROUTER, prompts(4096))
    nxt = cycle(ps).__next__
    assert benchmark(lambda: router.route(nxt(), max_output_tokens=256)).model


@pytest.mark.benchmark(group="route-limits")
@pytest.mark.parametrize("where", ["far", "near"])
def test_route_4kb_cost_cap(benchmark, where: str) -> None:
    """max_cost_usd 2% above the cheapest candidate's estimate (an exact count decides
    whether it fits) against a cap far above every model's cost."""
    ps = prompts(4096)
    cands = ROUTER.route(ps[0], quality_floor=0.0).candidates
    cheapest = min(c.est_cost_usd for c in cands if c.est_cost_usd)
    cap = cheapest * 1.02 if where == "near" else 100.0
    nxt = cycle(ps).__next__
    assert benchmark(lambda: ROUTER.route(nxt(), max_cost_usd=cap, quality_floor=0.0)).model


@pytest.mark.benchmark(group="route-scale")
@pytest.mark.parametrize("n", [500, 2000])
def test_route_4kb_many_models(benchmark, n: int) -> None:
    """route() with n models (copies of the bundled ones under new ids, without effort
    levels, as a catalogue import such as OpenRouter's makes): one row per model."""
    from satisfice import Registry

    base = [m.replace(efforts={}) for m in Registry.default() if m.base is None]
    models = [base[i % len(base)].replace(id=f"{base[i % len(base)].id}-{i}") for i in range(n)]
    router = Router(registry=Registry(models))
    nxt = cycle(prompts(4096)).__next__
    assert benchmark(lambda: router.route(nxt())).model


@pytest.mark.benchmark(group="route")
@pytest.mark.parametrize("embedding", ["without", "with"])
def test_route_4kb_embedding(benchmark, embedding: str) -> None:
    """A trained predictor with a per-model logistic on the static embedding (`_core.embed`)
    against the same predictor without it: what the embedding adds to a route (its weights'
    values do not change the cost, so every model gets the same ones here)."""
    from satisfice import Policy, QualityModel

    qm = QualityModel.prior()
    emb = (0.01,) * 65 if embedding == "with" else None
    reg = ROUTER.registry
    qm = qm.with_models({m.id: qm.params_for(m).replace(emb=emb) for m in reg})
    router = Router(reg, Policy(quality=qm))
    # The first route loads the word table (~10 ms): outside the timing, or pytest-benchmark
    # calibrates its rounds on it.
    router.route("warm up")
    nxt = cycle(prompts(4096)).__next__
    assert benchmark(lambda: router.route(nxt())).model
