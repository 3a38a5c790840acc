"""Sampling parameters and OpenAI's reasoning models. The o-series and gpt-5 (but its -chat
models) refuse a stop sequence, penalties and `logit_bias`, and a temperature, top_p or
logprobs but at an effort of none on gpt-5.1 and later: "Unsupported parameter: 'stop' is
not supported with this model". Such a request routed to one had ended there with that 400
(the local upstream now refuses it as OpenAI does). Now the row is refused before it is
called, saying what to change, and the request goes on to the next model it was routed to,
as a Claude row's thinking already did."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from satisfice import Registry, Router
from satisfice.errors import UnsupportedRequestError
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream

from .server_support import running


async def _chat(**kw: Any) -> tuple[Any, list[dict[str, Any]]]:
    with LocalUpstream() as up:
        router = Router(up.patch(Registry.default()))
        try:
            return await router.chat("Say hi.", **kw), [q.body for q in up.requests]
        finally:
            await router.aclose()


@pytest.mark.parametrize(
    ("model", "kw", "refused"),
    [
        ("gpt-5.4@high", {"temperature": 0.2}, "temperature 0.2 (only 1)"),
        ("gpt-5.4-nano@low", {"extra": {"top_p": 0.5}}, "top_p 0.5 (only 1)"),
        ("gpt-5.4@none", {"extra": {"stop": ["\n\n"]}}, "stop sequences"),
        ("gpt-5.5@medium", {"extra": {"presence_penalty": 0.5}}, "presence_penalty 0.5"),
        ("gpt-5.4-mini@high", {"extra": {"logprobs": True}}, "logprobs"),
    ],
)
async def test_a_named_reasoning_row_is_refused_saying_what_to_change(
    model: str, kw: dict[str, Any], refused: str
) -> None:
    with pytest.raises(UnsupportedRequestError) as e:
        await _chat(allow=[model], **kw)
    assert refused in str(e.value) and "leave it out" in str(e.value)
    # the fix it names is one that works: at none for sampling, another model for stop
    assert ("an effort of none" in str(e.value)) == ("stop" not in refused and "pen" not in refused)


@pytest.mark.parametrize(
    ("model", "kw"),
    [
        ("gpt-5.4@none", {"temperature": 0.2}),  # gpt-5.1 and later sample at none
        ("gpt-5.4", {"temperature": 0.2, "extra": {"top_p": 0.9}}),  # (none: their default)
        ("gpt-5.4@high", {"temperature": 1}),  # the default is taken
        ("claude-haiku-4-5", {"extra": {"stop": ["\n\n"]}}),
        ("gemini-3.1-flash-lite", {"temperature": 0.2}),
    ],
)
async def test_what_a_model_takes_is_sent(model: str, kw: dict[str, Any]) -> None:
    r, sent = await _chat(allow=[model], **kw)
    assert r.model == model and len(sent) == 1


async def test_a_routed_request_goes_on_to_a_model_that_takes_it() -> None:
    """A gpt-5 row that reasons refuses the stop sequence; routing's next model, which
    takes it, answers, and the attempts say why the first was passed over."""
    rows = ["gpt-5.4@high", "claude-haiku-4-5"]
    r, sent = await _chat(allow=rows, prefer=rows[0], extra={"stop": ["END"]})
    assert r.model == "claude-haiku-4-5" and len(sent) == 1
    assert sent[0]["stop_sequences"] == ["END"]
    first = r.attempts[0]
    assert (first.model, first.error_type) == ("gpt-5.4@high", "UnsupportedRequestError")


def test_the_openai_client_gets_a_400_naming_the_parameter() -> None:
    with (
        LocalUpstream() as up,
        running(ServerConfig(), Router(up.patch(Registry.default()))) as (url, _),
    ):
        client = openai.OpenAI(base_url=url + "/v1", api_key="anything", max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model="gpt-5.4@high",
                messages=[{"role": "user", "content": "hi"}],
                stop=["\n"],
            )
        assert "stop" in str(e.value) and "reasoning" in str(e.value)
        assert not up.requests  # refused before any call
        ok = client.chat.completions.create(
            model="gpt-5.4@none", messages=[{"role": "user", "content": "hi"}], temperature=0.3
        )
        assert ok.choices[0].message.content


# Found by review: a row skipped (no key, cooling) that would refuse the request too; the
# effort the body sends.
NOKEY = "SATISFICE_REVIEW_UNSET_KEY"


def _one_keyless(up: LocalUpstream, base: str) -> Registry:
    """The bundled registry on the local upstream, `base` (and so its effort rows) on a
    key variable that is not set: skipped as no_api_key when routed to."""
    reg = up.patch(Registry.default())
    models = [
        m.replace(deployments=tuple(d.replace(api_key_env=NOKEY) for d in m.deployments))
        if m.id == base else m
        for m in reg
    ]  # fmt: skip
    return Registry(models, reg.meta)


async def test_every_routed_row_refuses_stop_one_of_them_keyless_is_still_a_400(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gpt-5.4@high is called and refuses `stop`; gpt-5.5@high is skipped (no key). The
    skipped row would refuse the stop sequence too, yet `providers.carries` says an
    OpenAI-wire row carries anything, so `_failure` returns AllAttemptsFailedError (the
    server: a 503 "models unavailable") where every model refused the request's shape."""
    monkeypatch.delenv(NOKEY, raising=False)
    with LocalUpstream() as up:
        router = Router(_one_keyless(up, "gpt-5.5"))
        rows = ["gpt-5.4@high", "gpt-5.5@high"]
        try:
            with pytest.raises(UnsupportedRequestError):
                await router.chat("hi", allow=rows, prefer=rows[0], extra={"stop": ["END"]})
        finally:
            await router.aclose()


def test_server_every_routed_row_refuses_stop_one_keyless_answers_400(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(NOKEY, raising=False)
    with (
        LocalUpstream() as up,
        running(ServerConfig(), Router(_one_keyless(up, "gpt-5.5"))) as (url, _),
    ):
        r = httpx.post(
            url + "/v1/chat/completions",
            json={
                "model": "auto",
                "messages": [{"role": "user", "content": "hi"}],
                "stop": ["END"],
                "allow": ["gpt-5.4@high", "gpt-5.5@high"],
            },
            timeout=30,
        )
        # a retry (the 503's promise) will be refused again: the request must change
        assert r.status_code == 400, (r.status_code, r.text[:400])
        assert "stop" in r.text


@pytest.mark.parametrize(
    ("model", "extra", "refused"),
    [
        # row at its default effort (none on gpt-5.1+), effort raised through `extra`:
        # the body says reasoning_effort high with a temperature, which OpenAI refuses;
        # the check read the row's effort (None) and sent it: a 400 that ended the request
        ("gpt-5.4", {"reasoning_effort": "high"}, True),
        # the row's effort lowered to none through `extra`: OpenAI takes the temperature,
        # the check (row effort high) refused it
        ("gpt-5.4@high", {"reasoning_effort": "none"}, False),
    ],
)
async def test_the_check_reads_the_effort_the_body_sends(
    model: str, extra: dict[str, Any], refused: bool
) -> None:
    with LocalUpstream() as up:
        router = Router(up.patch(Registry.default()))
        try:
            if refused:
                with pytest.raises(UnsupportedRequestError):
                    await router.chat("hi", allow=[model], temperature=0.2, extra=extra)
                assert not up.requests  # refused before the call, not by OpenAI's 400
            else:
                r = await router.chat("hi", allow=[model], temperature=0.2, extra=extra)
                assert r.text
        finally:
            await router.aclose()


def test_server_every_routed_row_refuses_stop_one_cooling_answers_400_not_503() -> None:
    """The same with the other row cooling down: `_failure`'s reroute finds gpt-5.5@high
    cooling and, `carries` saying an OpenAI row takes anything, records it skipped with its
    wait; the client is served a 503 with Retry-After (retry, and be refused again)."""
    with LocalUpstream() as up:
        router = Router(up.patch(Registry.default()))
        with running(ServerConfig(), router) as (url, _):
            router._executor().health.cool("gpt-5.5/openai", 30, "HTTP 503")
            r = httpx.post(
                url + "/v1/chat/completions",
                json={
                    "model": "auto",
                    "messages": [{"role": "user", "content": "hi"}],
                    "stop": "END",
                    "allow": ["gpt-5.4@high", "gpt-5.5@high"],
                },
                timeout=30,
            )
            assert r.status_code == 400, (r.status_code, r.headers.get("retry-after"))
