"""What `satisfice serve` sends, read strictly as the official `openai` and `anthropic`
SDKs' own types read it (`model_validate(..., strict=True)`), over a real socket, an
upstream of either wire format behind it. Every test here failed on the code it was
written against."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import ErrorResponse, ModelInfo
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from satisfice import Policy, Registry, Router
from satisfice.server import ServerConfig
from satisfice.testing import RawUpstream, http_response

from .server_support import running

ENV = "SATISFICE_WIRE_CONFORMS_KEY"
U = [{"role": "user", "content": "hello"}]


def registry(url: str) -> Registry:
    """`oa` answers in OpenAI's format, `an` in Anthropic's, both from `url`."""
    return Registry.from_dict({"model": [{
        "id": mid, "provider": api, "context_window": 100_000, "max_output": 4000,
        "tokenizer": "o200k_base" if api == "openai" else "claude",
        "price": {"input": 1.0, "output": 2.0}, "quality": {"general": 0.9},
        "capabilities": ["json", "tools", "streaming", "system_prompt"],
        "deployments": [{"name": f"{mid}-dep", "api": api, "api_key_env": ENV, "model": "w",
                         "base_url": url + ("/v1" if api == "openai" else "")}],
    } for mid, api in (("oa", "openai"), ("an", "anthropic"))]})  # fmt: skip


@pytest.fixture(scope="module")
def raw() -> Iterator[RawUpstream]:
    os.environ[ENV] = "sk-wire-conforms-0123456789"
    try:
        with RawUpstream(keep_alive=True) as r:
            yield r
    finally:
        del os.environ[ENV]


@pytest.fixture(scope="module")
def url(raw: RawUpstream) -> Iterator[str]:
    router = Router(registry(raw.url), Policy(quality_floor=0.5, max_fallbacks=0))
    with running(ServerConfig(), router) as (base, _app):
        yield base


def sse(*events: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    head += b"transfer-encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


def oa_chunk(delta: dict[str, Any] | None, finish: str | None = None, **more: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + json.dumps({"choices": choices, **more}).encode() + b"\n\n"


USAGE = {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}


def oa_answer(finish: str, stream: bool) -> bytes:
    """An OpenAI-format answer "one two" that ended with `finish`."""
    if stream:
        return sse(
            oa_chunk({"role": "assistant", "content": "one two"}),
            oa_chunk({}, finish),
            oa_chunk(None, usage=USAGE),
            b"data: [DONE]\n\n",
        )
    return http_response(json.dumps({
        "id": "c", "object": "chat.completion", "created": 1, "model": "w", "usage": USAGE,
        "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": "one two"}}],
    }).encode())  # fmt: skip


def an_event(kind: str, **data: Any) -> bytes:
    return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, **data}).encode() + b"\n\n"


def an_answer(stop: str, stream: bool) -> bytes:
    """An Anthropic-format answer "one two" that ended with `stop`."""
    if stream:
        text = {"type": "text", "text": ""}
        return sse(
            an_event("message_start", message={"role": "assistant", "content": [],
                                               "usage": {"input_tokens": 10}}),
            an_event("content_block_start", index=0, content_block=text),
            an_event("content_block_delta", index=0,
                     delta={"type": "text_delta", "text": "one two"}),
            an_event("content_block_stop", index=0),
            an_event("message_delta", delta={"stop_reason": stop}, usage={"output_tokens": 5}),
            an_event("message_stop"),
        )  # fmt: skip
    return http_response(json.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "w",
        "content": [{"type": "text", "text": "one two"}], "stop_reason": stop,
        "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 5},
    }).encode())  # fmt: skip


def chat(url: str, body: dict[str, Any]) -> httpx.Response:
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=20)
    assert r.status_code == 200, r.text
    return r


def chunks(r: httpx.Response) -> list[dict[str, Any]]:
    lines = [ln for ln in r.text.split("\n") if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln[6:]) for ln in lines[:-1]]


# -- finish reasons ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["oa", "an"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_finish_reason_openai_does_not_give_reaches_openai_clients_as_one_it_does(
    raw: RawUpstream, url: str, model: str, stream: bool
) -> None:
    """An upstream's finish reason outside OpenAI's five (an OpenAI-compatible server's
    `eos`, Anthropic's `pause_turn`) was passed on as it came: the `openai` SDK's
    ChatCompletion and ChatCompletionChunk refuse it."""
    raw.push(oa_answer("eos", stream) if model == "oa" else an_answer("pause_turn", stream))
    r = chat(url, {"model": model, "messages": U, "stream": stream})
    if not stream:
        c = ChatCompletion.model_validate(r.json(), strict=True)
        assert (c.choices[0].finish_reason, c.choices[0].message.content) == ("stop", "one two")
        return
    last = [ChatCompletionChunk.model_validate(c, strict=True) for c in chunks(r)][-1]
    assert last.choices[0].finish_reason == "stop"


# -- models -----------------------------------------------------------------------------------


def test_anthropic_clients_read_models_the_sdks_modelinfo_takes(url: str) -> None:
    """GET /v1/models[/{id}] in Anthropic's shape left out `lifecycle`, a field the
    `anthropic` SDK's ModelInfo requires."""
    with anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=20) as c:
        listed = c.models.with_raw_response.list().http_response.json()["data"]
        one = c.models.with_raw_response.retrieve("an").http_response.json()
    for m in [*listed, one]:
        assert ModelInfo.model_validate_json(json.dumps(m), strict=True).lifecycle == "active"


def test_a_path_an_anthropic_client_asks_that_is_not_served_is_answered_in_its_shape(
    url: str,
) -> None:
    """A path the server does not answer (the SDK's Files API, /v1/files) was
    answered in OpenAI's error shape to the Anthropic SDK, which sent anthropic-version as
    it does on every request: no ErrorResponse, and `e.type` "invalid_request_error" for a
    404. GET /v1/models, which reads the same header, answered in Anthropic's."""
    c = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=20)
    with c, pytest.raises(anthropic.NotFoundError) as e:
        c.beta.files.list()
    assert e.value.type == "not_found_error"
    ErrorResponse.model_validate(e.value.body, strict=True)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_mistrals_model_length_reaches_clients_as_an_answer_cut_short(
    raw: RawUpstream, url: str, stream: bool
) -> None:
    """Mistral's `model_length` (the context window cut the answer) had reached an OpenAI
    client as `stop` and an Anthropic one as `end_turn`: a cut answer read as whole."""
    raw.push(oa_answer("model_length", stream))
    r = chat(url, {"model": "oa", "messages": U, "stream": stream})
    fin = (
        r.json()["choices"][0]["finish_reason"]
        if not stream
        else chunks(r)[-1]["choices"][0]["finish_reason"]
    )
    assert fin == "length"
    raw.push(oa_answer("model_length", False))
    with anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=20) as c:
        m = c.messages.create(model="oa", max_tokens=50, messages=U)  # type: ignore[arg-type]
    assert m.stop_reason == "max_tokens"
