"""What satisfice sends upstream, held to what the real APIs take: each body the local
upstream received is read as Anthropic's Messages API reads it. Every test here failed on
the code it was written against."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from satisfice import Registry, Router
from satisfice.errors import UnsupportedRequestError
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream

from .server_support import running

OPUS, SONNET, HAIKU = "claude-opus-4-7", "claude-sonnet-4-6", "claude-haiku-4-5"


def _router(up: LocalUpstream) -> Router:
    return Router(up.patch(Registry.default()))


# -- Claude Opus 4.7 takes no sampling parameters ------------------------------------------------
# ("`temperature` is deprecated for this model": a 400 for any value but the default)
@pytest.mark.parametrize("kw", [{"temperature": 0.3}, {"extra": {"top_p": 0.5}}])
async def test_opus_4_7_is_sent_no_sampling_parameter(kw: dict[str, Any]) -> None:
    with LocalUpstream() as up:
        async with _router(up) as r:
            with pytest.raises(UnsupportedRequestError, match="sampling"):
                await r.chat("hi", allow=[OPUS], **kw)
            assert up.requests == []  # refused before the call, not a 400 from Anthropic


async def test_a_temperature_request_goes_on_past_opus_4_7() -> None:
    with LocalUpstream() as up:
        async with _router(up) as r:
            res = await r.chat("hi", allow=[OPUS, HAIKU], prefer=OPUS, temperature=0.3)
            assert res.model == HAIKU
            assert [s.body["model"] for s in up.requests] == [HAIKU]


async def test_opus_4_7_at_the_default_temperature_is_sent_none() -> None:
    with LocalUpstream() as up:
        async with _router(up) as r:
            await r.chat("hi", allow=[OPUS], temperature=1.0)
            assert "temperature" not in up.requests[0].body


# -- Claude 4.5 and later: temperature or top_p, not both ----------------------------------------
# ("`temperature` and `top_p` cannot both be specified for this model. Please use only one.")
@pytest.mark.parametrize("model", [HAIKU, SONNET])
async def test_temperature_and_top_p_together_are_not_sent_to_recent_claude(model: str) -> None:
    with LocalUpstream() as up:
        async with _router(up) as r:
            with pytest.raises(UnsupportedRequestError, match="top_p"):
                await r.chat("hi", allow=[model], temperature=0.5, extra={"top_p": 0.9})
            assert up.requests == []


def test_served_temperature_and_top_p_reach_no_claude_model_together() -> None:
    body = {"model": HAIKU, "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.5, "top_p": 0.9}  # fmt: skip
    with LocalUpstream() as up, running(ServerConfig(), _router(up)) as (url, _app):
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=20)
        assert r.status_code == 400, r.text
        assert "top_p" in r.text
        assert up.requests == []


# a default (1) or an unset (None) value changes nothing: left out, what is left is sent
@pytest.mark.parametrize(
    ("model", "kw", "sent"),
    [
        (SONNET, {"temperature": 0.5, "extra": {"top_p": 1}}, {"temperature": 0.5}),
        (HAIKU, {"temperature": 1.0, "extra": {"top_p": 0.9}}, {"top_p": 0.9}),
        (SONNET, {"temperature": 1.0, "extra": {"top_p": 1.0}}, {"temperature": 1.0}),
        (SONNET, {"temperature": 0.5, "extra": {"top_p": None}}, {"temperature": 0.5}),
        (OPUS, {"extra": {"top_p": None, "top_k": None}}, {}),
    ],
)
async def test_a_default_or_unset_sampling_parameter_is_no_refusal(
    model: str, kw: dict[str, Any], sent: dict[str, Any]
) -> None:
    """An OpenAI client's usual pair is a temperature and top_p 1, its default: 7b99ede left
    out a default top_p of 1 on Claude Opus 4.7, but refused the same pair on the other
    Claude 4.5+ models ("not both"), and refused a top_p of None (not given) on either."""
    with LocalUpstream() as up:
        async with _router(up) as r:
            await r.chat("hi", allow=[model], **kw)
            (got,) = up.requests
            keys = ("temperature", "top_p", "top_k")
            assert {k: got.body[k] for k in keys if k in got.body} == sent
