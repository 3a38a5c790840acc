"""Tool definitions and a response schema are prompt tokens: the router counts them when it
estimates cost, checks context windows and reserves budget, but does not featurise them."""

from __future__ import annotations

from typing import Any

import pytest

from satisfice.errors import InputError, NoRouteError
from satisfice.testing import LocalUpstream

from .chat_support import TOOLS, router


async def test_tools_count_in_windows_and_costs(up: LocalUpstream) -> None:
    async with router(up.url) as r:
        plain = await r.chat("hi", max_tokens=10)
        tooled = await r.chat("hi", max_tokens=10, tools=TOOLS)
    # alpha and beta have 8k windows: the tools alone do not fit them
    assert plain.model == "alpha" and tooled.model == "gamma"
    assert tooled.decision.candidates[0].tokens_in > 30_000 > plain.decision.candidates[0].tokens_in
    assert tooled.decision.task == plain.decision.task  # counted, not featurised


async def test_a_schema_that_fits_no_window_is_no_route(up: LocalUpstream) -> None:
    huge = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "description": "field " * 300_000}}}  # fmt: skip
    async with router(up.url) as r:
        with pytest.raises(NoRouteError, match="context"):
            await r.chat("hi", response_format=huge)


async def test_tools_that_cannot_be_json_are_an_input_error(up: LocalUpstream) -> None:
    deep: Any = {}
    cur = deep
    for _ in range(100_000):
        cur["x"] = {}
        cur = cur["x"]
    async with router(up.url) as r:
        with pytest.raises(InputError, match="cannot be sent as JSON"):
            await r.chat(
                "hi", tools=[{"type": "function", "function": {"name": "f", "parameters": deep}}]
            )


async def test_counted_usage_includes_the_tools(up: LocalUpstream) -> None:
    """An upstream that reports no usage: our own count covers the tools it was sent."""
    from satisfice import _core
    from satisfice.testing import reply

    from .chat_support import wire

    few = TOOLS[:3]
    up.script(wire("alpha"), reply("ok", usage=False))
    async with router(up.url) as r:
        res = await r.chat("hi", max_tokens=10, tools=few)
    alone = _core.count_message_tokens([{"role": "user", "content": "hi"}], "o200k_base")
    assert res.usage.source == "counted" and res.usage.prompt_tokens > alone + 500


async def test_route_takes_tools_as_chat_does(up: LocalUpstream) -> None:
    async with router(up.url) as r:
        d = r.route("hi", tools=TOOLS)
        a = await r.aroute("hi", tools=TOOLS)
    assert d.model == a.model == "gamma" and "tools" in d.constraints.needs
