"""What the official `openai` and `anthropic` clients see from `satisfice serve`, as an
adversarial review from a separate clone found it (real sockets, the local test upstream).
Every test here failed on the code it was written against: `max_tokens` beside a different
`max_completion_tokens` was dropped without a word; a prompt no model's window takes was
`no_route`, not `context_length_exceeded` ("prompt is too long" to Anthropic clients); the
Anthropic SDK read /v1/models in OpenAI's shape; a prefill was answered anew by an OpenAI
model; a refused assistant turn was erased for Claude; a key limited to one model listed
every model; no answer or error carried the request-id headers the SDKs read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from satisfice import Policy, Router
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream

from .chat_support import registry
from .server_support import MASTER, running

ADMIN = {"authorization": f"Bearer {MASTER}"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[LocalUpstream]:
    with LocalUpstream() as up:
        yield up


@pytest.fixture
def served(
    upstream: LocalUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, LocalUpstream]]:
    """The server over alpha (OpenAI wire, cheapest), beta (Anthropic wire), gamma
    (OpenAI), delta (Anthropic), all on the local upstream."""
    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    upstream.wait_idle()
    upstream.reset_script()
    from satisfice import _core

    _core.wait_for_tokenizers()
    reg = tmp_path / "r.toml"
    reg.write_text(registry(upstream.url).to_toml())
    cfg = ServerConfig(registry_path=str(reg), ledger=str(tmp_path / "l.db"))
    router = Router(registry(upstream.url), Policy(quality_floor=0.5, max_fallbacks=3))
    with running(cfg, router) as (url, _):
        try:
            yield url, upstream
        finally:
            while _OPEN:
                _OPEN.pop().close()


_OPEN: list[Any] = []  # clients to close when the test's server stops


def _openai(url: str, key: str = "none") -> openai.OpenAI:
    c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)
    _OPEN.append(c)
    return c


def _anthropic(url: str) -> anthropic.Anthropic:
    c = anthropic.Anthropic(base_url=url, api_key="none", max_retries=0, timeout=30)
    _OPEN.append(c)
    return c


_HI = [{"role": "user", "content": "Say hello"}]


# 1 -------------------------------------------------------------------------------------------
def test_max_tokens_beside_a_different_max_completion_tokens_is_not_silently_dropped(
    served: tuple[str, LocalUpstream],
) -> None:
    """OpenAI's API refuses `max_tokens` and `max_completion_tokens` together (400: "Setting
    'max_tokens' and 'max_completion_tokens' at the same time is not supported"). satisfice
    takes the request and drops `max_tokens` without a word: the caller who asked for at
    most 10 tokens is sent, and billed for, 50."""
    url, up = served
    try:
        _openai(url).chat.completions.create(
            model="alpha", messages=_HI, max_tokens=10, max_completion_tokens=50
        )
    except openai.BadRequestError as e:
        assert "max_tokens" in str(e) and "max_completion_tokens" in str(e)
        return
    sent = up.requests[-1].body
    pytest.fail(f"answered 200; the upstream was sent max_tokens={sent.get('max_tokens')}, "
                "the caller's max_tokens=10 dropped")  # fmt: skip


# 2 -------------------------------------------------------------------------------------------
def test_a_prompt_no_models_window_takes_is_context_length_exceeded(
    served: tuple[str, LocalUpstream],
) -> None:
    """A prompt larger than every routed model's window is OpenAI's documented 400 with
    `code: "context_length_exceeded"` (what frameworks key their trimming and compaction
    on), as satisfice itself says it when the upstreams refuse the prompt
    (`_all_failed`). Refused by routing's own count, before any call, it says
    `code: "no_route"` instead."""
    url, _ = served
    with pytest.raises(openai.BadRequestError) as e:
        _openai(url).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "word " * 300_000}]
        )
    assert e.value.code == "context_length_exceeded", (e.value.code, str(e.value)[:200])


def test_a_prompt_no_window_takes_says_prompt_is_too_long_to_anthropic_clients(
    served: tuple[str, LocalUpstream],
) -> None:
    """Anthropic's API answers a prompt over the window with 400 invalid_request_error
    "prompt is too long: N tokens > M maximum", which coding agents (Claude Code's
    auto-compact) recognise. satisfice says "no model satisfies the constraints (4 by
    context_window); loosen 'context_window' first ...", which none recognises."""
    url, _ = served
    with pytest.raises(anthropic.BadRequestError) as e:
        _anthropic(url).messages.create(
            model="auto", max_tokens=100, messages=[{"role": "user", "content": "word " * 300_000}]
        )
    msg = e.value.body["error"]["message"]  # type: ignore[index]
    assert "prompt is too long" in msg.lower(), msg[:200]


# 3 -------------------------------------------------------------------------------------------
def test_anthropic_clients_read_models_in_anthropics_shape(
    served: tuple[str, LocalUpstream],
) -> None:
    """`GET /v1/models[/{id}]` answers OpenAI's shape to every client: the Anthropic SDK
    (which sends `anthropic-version` on every request) reads `type`, `display_name` and
    `created_at` as None, and its pager finds no `has_more`/`first_id`/`last_id`.
    Anthropic's API answers {"type": "model", "id", "display_name", "created_at"} and a
    page {"data", "has_more", "first_id", "last_id"}."""
    url, _ = served
    c = _anthropic(url)
    m = c.models.retrieve("alpha")
    assert (m.type, m.id) == ("model", "alpha")
    assert isinstance(m.display_name, str) and m.display_name
    assert m.created_at is not None
    page = c.models.list()
    assert page.has_more is False and page.first_id == page.data[0].id
    assert all(x.type == "model" for x in page.data)


# 4 -------------------------------------------------------------------------------------------
def test_a_prefilled_assistant_turn_is_not_answered_by_an_openai_model(
    served: tuple[str, LocalUpstream],
) -> None:
    """/v1/messages ending on an assistant turn is Anthropic's prefill: the answer continues
    that text (`{"a":` → ` 1}`). Routed to an OpenAI-wire model (alpha, the cheapest), the
    turn is sent as a trailing assistant message, which OpenAI's API does not continue: the
    answer starts afresh and the caller's `prefill + answer` is broken. It should go to a
    model that continues it (an Anthropic deployment) or be refused, not be silently
    re-meant."""
    url, up = served
    msgs = [{"role": "user", "content": "Give JSON"}, {"role": "assistant", "content": '{"a":'}]
    try:
        r = _anthropic(url).messages.create(model="auto", max_tokens=50, messages=msgs)
    except anthropic.BadRequestError:
        return
    assert r.model in ("beta", "delta"), f"the prefill was answered by {r.model} (OpenAI wire)"
    assert up.requests[-1].api == "anthropic"


# 5 -------------------------------------------------------------------------------------------
def test_an_assistant_refusal_in_the_history_is_not_erased_for_claude(
    served: tuple[str, LocalUpstream],
) -> None:
    """An OpenAI client that appends the SDK's message to its history sends a refused turn
    as {"role": "assistant", "content": null, "refusal": "..."} (satisfice itself answers a
    Claude refusal so). Sent to a Claude model the turn vanishes: the upstream gets two user
    turns in a row, the model never told it refused. A `refusal` content part moves the
    request to another model (UnsupportedRequestError); the message's field is dropped."""
    url, up = served
    msgs = [
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        {"role": "user", "content": "Then tell me a joke."},
    ]
    try:
        _openai(url).chat.completions.create(model="beta", messages=msgs)
    except openai.BadRequestError:
        return  # refused, said: fine
    sent = up.requests[-1]
    if sent.api == "anthropic":
        turns = [m["role"] for m in sent.body["messages"]]
        assert "assistant" in turns and "I can't help with that." in str(sent.body), turns


# 6 -------------------------------------------------------------------------------------------
def test_models_list_only_what_the_callers_key_may_use(
    served: tuple[str, LocalUpstream],
) -> None:
    """A key limited to alpha lists (and retrieves) every model and alias, though each
    other one is refused to it with a 403; OpenAI's /v1/models lists what the caller's key
    can use. A client picking from the list picks models it may not call."""
    url, _ = served
    asked = {"name": "only-alpha", "models": ["alpha"]}
    k = httpx.post(url + "/admin/keys", headers=ADMIN, json=asked).json()
    c = _openai(url, k["key"])
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(model="beta", messages=_HI)
    ids = {m.id for m in c.models.list()}
    assert ids == {"alpha"}, sorted(ids)
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("beta")


# 7 -------------------------------------------------------------------------------------------
def test_answers_carry_the_request_id_header_the_sdks_read(
    served: tuple[str, LocalUpstream],
) -> None:
    """The SDKs expose each answer's id for support and logs from a header of their API's:
    `x-request-id` (openai: `completion._request_id`) and `request-id` (anthropic:
    `message._request_id`). satisfice sends `x-satisfice-request-id` alone, so both read
    None, the ledger record's id out of the client's reach on an error."""
    url, _ = served
    r = _openai(url).chat.completions.create(model="alpha", messages=_HI)
    assert r._request_id is not None
    m = _anthropic(url).messages.create(model="beta", max_tokens=20, messages=_HI)
    assert m._request_id is not None
    with pytest.raises(openai.BadRequestError) as e:
        _openai(url).chat.completions.create(model="alpha", messages=_HI, seed=1)
    assert e.value.request_id is not None  # the failed request's too


# 8 -------------------------------------------------------------------------------------------
def test_stream_options_without_a_stream_is_refused(served: tuple[str, LocalUpstream]) -> None:
    """OpenAI's API refuses `stream_options` on a request that does not stream; it was
    taken, and ignored, without a word (the review's suspicion, confirmed here)."""
    url, _ = served
    with pytest.raises(openai.BadRequestError) as e:
        _openai(url).chat.completions.create(
            model="alpha", messages=_HI, stream_options={"include_usage": True}
        )
    assert "stream_options" in str(e.value)


@pytest.mark.parametrize(
    "options", ["x", 5, [], {"include_usage": "no"}, {"bogus": 1}, {"include_obfuscation": 1}]
)
def test_stream_options_that_are_not_openais_shape_are_refused(
    served: tuple[str, LocalUpstream], options: Any
) -> None:
    """`stream_options` was read only for whether it was there: "include_usage": "no"
    turned the usage chunk on, and a string, a number or an unknown key streamed on
    without a word (OpenAI's API refuses each)."""
    url, _ = served
    r = httpx.post(url + "/v1/chat/completions", json={"model": "alpha", "messages": _HI,
                   "stream": True, "stream_options": options})  # fmt: skip
    assert r.status_code == 400 and "stream_options" in r.json()["error"]["message"], r.text


async def test_more_stop_sequences_than_openais_api_takes_go_to_another_model(
    upstream: LocalUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI's API takes at most 4 stop sequences (a 400 there); six were sent to it. The
    request now moves on to a model whose wire takes them, the skip recorded."""
    from .chat_support import router as make_router

    monkeypatch.setenv("SATISFICE_TEST_OPENAI_KEY", "sk-test-not-a-real-key-123")
    r = make_router(upstream.url)
    reg = r.registry
    alpha = reg["alpha"]
    dep = alpha.deployments[0].replace(
        base_url="https://api.openai.com/v1", api_key_env="SATISFICE_TEST_OPENAI_KEY"
    )
    r.update(reg.replace(alpha.replace(deployments=(dep,))))
    async with r:
        res = await r.chat(
            _HI, allow=["alpha", "beta"], extra={"stop": ["a", "b", "c", "d", "e", "f"]}
        )
    assert res.model == "beta"
    (skipped,) = [a for a in res.attempts if a.model == "alpha"]
    assert skipped.error_type == "UnsupportedRequestError", skipped
