"""Where a retry of an answer the upstream may bill is kept (no budget held: a cascade, a
rate-limited key, a pinned session) and where a stream ends (a second message_delta), and
tool calls with no id. From a review of the fixes for `test_settles_within_holds.py`: each
test failed before its fix."""

from __future__ import annotations

from typing import Any

import pytest

from satisfice.testing import LocalUpstream, malformed, reply

from .chat_support import router as make_router
from .chat_support import wire
from .test_server import served, upstream  # noqa: F401  (fixtures)


async def test_a_cascade_without_a_server_budget_still_retries_a_malformed_answer() -> None:
    """`_rebills` keys on `run.order`, meant as "a server budget's hold", but a cascade's
    sub-runs always have an order ([model], `Run.sub`). A plain chat(cascade=True) — no
    budget, no hold — now gives up on a model after one malformed 2xx instead of retrying
    it (max_retries=1), as it did before and as a non-cascade chat() still does."""
    with LocalUpstream() as up:
        r = make_router(up.url)
        msgs = [{"role": "user", "content": "hi"}]
        d = r.route(msgs)
        first = d.model
        # the plain call keeps its retry
        up.script(wire(first), malformed(), reply("fine"))
        res = await r.chat(msgs)
        assert res.model == first
        up.script(wire(first), malformed(), reply("fine"))
        before = len(up.requests)
        from satisfice.cascade import Cascade, Step

        ladder = Cascade([Step((first,)), Step((d.fallbacks[0],))])
        res = await r.chat(msgs, cascade=ladder)
        called = [s.body.get("model") for s in up.requests[before:]]
        assert called[:2] == [wire(first), wire(first)], called
        await r.aclose()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_call_with_no_id_field_gets_an_id_streamed_or_not(stream: bool) -> None:
    """`ToolCall.__post_init__` gives a call no id one ("some OpenAI-compatible servers give
    a call no id"). Streamed, a call whose `id` key is absent gets one; unstreamed, the
    same answer (`_tool_call` reads `c["id"]`) is a KeyError: the whole answer fails as
    malformed, and with no other model the request fails."""
    import json

    from satisfice.testing import RawUpstream, http_response

    from .chat_support import move_alpha, registry

    call = {"type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    if stream:

        def ev(e: Any) -> bytes:
            data = b"data: " + json.dumps(e).encode() + b"\n\n"
            return b"%x\r\n%s\r\n" % (len(data), data)

        body = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
            + ev({"choices": [{"delta": {"tool_calls": [{"index": 0, **call}]}}]})
            + ev({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})
            + ev({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 5}})
            + b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
        )
    else:
        body = http_response(json.dumps({
            "choices": [{"message": {"role": "assistant", "content": None,
                                     "tool_calls": [call]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5},
        }).encode())  # fmt: skip
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    with LocalUpstream() as up, RawUpstream() as raw:
        raw.push(body, body)
        async with make_router(up.url) as r:
            r.update(move_alpha(registry(up.url), raw.url))
            msgs = [{"role": "user", "content": "call f"}]
            if stream:
                res = await r.stream(msgs, allow=["alpha"], tools=tools, timeout=10).result()
            else:
                res = await r.chat(msgs, allow=["alpha"], tools=tools, timeout=10)
    (c,) = res.tool_calls
    assert c.name == "f" and c.id.startswith("call_")


def test_a_rate_limited_key_without_a_budget_keeps_its_retry_of_a_malformed_answer(
    served: Any,  # noqa: F811
) -> None:
    """`_rebills` reads `run.order` as "a server budget's hold", but the server hands chat()
    its decision (and so sets `run.order`) for any key with rpm/tpm, and for a session pin,
    with no budget held at all. A malformed 2xx on such a request is no longer retried on
    its deployment (max_retries=1): a request to one model (`model: alpha`) by a key with
    only an rpm limit fails with 502 where the same key without rpm, or before, got 200."""
    import httpx

    from .test_server import MASTER

    url, _, up, _ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    for name, extra in (("plain", {}), ("rpm", {"rpm": 1000})):
        k = httpx.post(url + "/admin/keys", headers=admin, json={"name": name, **extra}).json()
        up.script(wire("alpha"), malformed(), reply("fine"))
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30,
                       headers={"authorization": f"Bearer {k['key']}"})  # fmt: skip
        assert r.status_code == 200, (name, r.status_code, r.text[:300])


def test_a_pinned_session_without_a_budget_keeps_its_retry_of_a_malformed_answer(
    served: Any,  # noqa: F811
) -> None:
    """As above, for a session pin (`opts["prefer"]`, which also hands chat() its decision):
    a session's second turn loses the retry of a malformed 2xx and fails with 502."""
    import httpx

    url, _, up, _ = served
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    h = {"x-satisfice-session": "review-d-session"}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30, headers=h)
    assert r.status_code == 200, r.text
    up.script(wire("alpha"), malformed(), reply("fine"))
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30, headers=h)
    assert r.status_code == 200, (r.status_code, r.text[:300])


async def test_a_second_message_delta_updates_the_usage_it_is_billed_at() -> None:
    """Anthropic's stream is "one or more message_delta events" (its docs), their usage
    cumulative. The stream now ends at the first message_delta that has a stop_reason and
    output_tokens (`finish_stream` then reads and drops the rest): a later message_delta
    raising output_tokens to 3,000 is dropped and the answer billed at the first's 10."""
    import json

    from satisfice.testing import RawUpstream

    from .chat_support import move_alpha, registry

    def an(kind: str, **fields: Any) -> bytes:
        data = b"event: %s\ndata: %s\n\n" % (
            kind.encode(),
            json.dumps({"type": kind, **fields}).encode(),
        )
        return b"%x\r\n%s\r\n" % (len(data), data)

    body = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
        + an("message_start", message={"usage": {"input_tokens": 10, "output_tokens": 1}})
        + an("content_block_start", index=0, content_block={"type": "text", "text": ""})
        + an("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hello"})
        + an("content_block_stop", index=0)
        + an("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 10})
        + an("message_delta", delta={}, usage={"output_tokens": 3000})
        + an("message_stop")
        + b"0\r\n\r\n"
    )
    with LocalUpstream() as up, RawUpstream() as raw:
        raw.push(body)
        async with make_router(up.url) as r:
            r.update(move_alpha(registry(up.url), raw.url, "anthropic"))
            msgs = [{"role": "user", "content": "hi"}]
            res = await r.stream(msgs, allow=["alpha"], timeout=10).result()
    assert res.text == "Hello"
    assert res.usage.completion_tokens == 3000, res.usage
