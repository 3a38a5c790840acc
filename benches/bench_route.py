"""route() latency for 100 B, 4 KB and 64 KB prompts (featurise + estimate + predict + plan)."""

from __future__ import annotations

import pytest
from corpus import samples

from tierwise import Router

ROUTER = Router()
PROSE = "".join(samples("prose", "eval"))
PROMPTS = {"100B": PROSE[:100], "4KB": PROSE[:4096], "64KB": PROSE[:65536]}


@pytest.mark.benchmark(group="route")
@pytest.mark.parametrize("size", list(PROMPTS))
def test_route(benchmark, size: str) -> None:
    prompt = PROMPTS[size]
    d = benchmark(ROUTER.route, prompt)
    assert d.model


@pytest.mark.benchmark(group="route")
def test_route_messages_4kb(benchmark) -> None:
    msgs = [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": PROMPTS["4KB"]},
    ]
    assert benchmark(ROUTER.route, msgs).model
