"""An upstream reply whose usage holds an integer past Python's 4,300-digit limit, from a
raw-socket upstream whose every byte the test sets. Defect: `json.loads` refused the whole
document ("Exceeds the limit (4300 digits) for integer string conversion"), so the answer
that came with such a report failed (a stream had its text cut off, an unstreamed answer
was lost). Expected: the number reads as infinity, which no token count takes, so the
usage report is set aside and the tokens are counted, as for any implausible report."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from satisfice.testing import LocalUpstream, RawUpstream, http_response

from .chat_support import move_alpha, registry, router
from .test_round15_wire import an_event, oa_chunk, sse

MSGS = [{"role": "user", "content": "hello there"}]
HUGE = b"9" * 5000


def _huge(doc: dict[str, Any], field: str) -> bytes:
    """`doc` as JSON with the integer 0 at `field` replaced by 5,000 nines."""
    out = json.dumps(doc).encode()
    assert out.count(f'"{field}": 0'.encode()) == 1
    return out.replace(f'"{field}": 0'.encode(), f'"{field}": '.encode() + HUGE)


async def _call(raw: RawUpstream, up: LocalUpstream, api: str, streamed: bool) -> Any:
    async with router(up.url, max_retries=0) as r:
        r.update(move_alpha(registry(up.url), raw.url, api))
        if streamed:
            return await asyncio.wait_for(r.stream(MSGS, timeout=10).result(), 20)
        return await asyncio.wait_for(r.chat(MSGS, timeout=10), 20)


def _counted(res: Any, text: str) -> None:
    assert res.text == text and res.model == "alpha", res
    assert res.usage.source != "provider" and res.usage.prompt_tokens < 1000, res.usage
    assert res.cost_usd is not None and res.cost_usd < 1.0, res.cost_usd


async def test_an_openai_stream_with_a_huge_usage_count_is_answered_and_counted(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    usage = b"data: " + _huge(
        {"choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": 3}}, "prompt_tokens"
    ) + b"\n\n"  # fmt: skip
    raw.push(sse(
        oa_chunk({"role": "assistant", "content": "The answer is 4"}),
        oa_chunk({}, finish="stop"),
        usage,
        b"data: [DONE]\n\n",
    ))  # fmt: skip
    _counted(await _call(raw, up, "openai", True), "The answer is 4")


async def test_an_openai_answer_with_a_huge_usage_count_is_answered_and_counted(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    body = _huge({
        "id": "c", "object": "chat.completion", "created": 1, "model": "w",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "The answer is 4"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 0},
    }, "completion_tokens")  # fmt: skip
    raw.push(http_response(body))
    _counted(await _call(raw, up, "openai", False), "The answer is 4")


async def test_an_anthropic_stream_with_a_huge_usage_count_is_answered_and_counted(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    start = _huge(
        {"type": "message_start", "message": {"role": "assistant", "content": [],
                                              "usage": {"input_tokens": 0, "output_tokens": 1}}},
        "input_tokens",
    )  # fmt: skip
    raw.push(sse(
        b"event: message_start\ndata: " + start + b"\n\n",
        an_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        an_event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Four"}),
        an_event("content_block_stop", index=0),
        an_event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 2}),
        an_event("message_stop"),
    ))  # fmt: skip
    _counted(await _call(raw, up, "anthropic", True), "Four")


# A tool call's input holding a number JSON cannot write back (5,000 digits read as inf,
# 1e999, NaN): Anthropic's `input` object becomes the call's `arguments` text. Defect: it
# was written `Infinity` or `NaN`, text no JSON parser takes, and handed to the caller as
# the model's call. Expected: alpha's answer fails as a broken reply, saying why, and
# another model answers.
BAD_NUMBERS = [HUGE, b"1e999", b"NaN", b"-Infinity"]


def _tool_use_answer(number: bytes) -> bytes:
    body = json.dumps({
        "id": "m", "type": "message", "role": "assistant", "model": "w",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"n": 0}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 3},
    }).encode()  # fmt: skip
    return body.replace(b'"n": 0', b'"n": ' + number)


def _failed_over(res: Any) -> None:
    assert res.model != "alpha", res.tool_calls
    alpha = [a for a in res.attempts if a.model == "alpha"]
    assert alpha and all(a.outcome != "ok" for a in alpha), alpha
    assert "number" in (alpha[0].error or ""), alpha[0].error


async def test_an_anthropic_tool_input_with_a_number_json_cannot_write_fails_the_answer(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    for number in BAD_NUMBERS:
        raw.push(http_response(_tool_use_answer(number)))
        _failed_over(await _call(raw, up, "anthropic", False))


async def test_an_anthropic_streamed_tool_input_with_a_number_json_cannot_write_fails(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    for number in BAD_NUMBERS:
        start = json.dumps({
            "type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"n": 0}},
        }).encode().replace(b'"n": 0', b'"n": ' + number)  # fmt: skip
        raw.push(sse(
            an_event("message_start", message={"role": "assistant", "content": [],
                                               "usage": {"input_tokens": 5, "output_tokens": 1}}),
            b"event: content_block_start\ndata: " + start + b"\n\n",
            an_event("content_block_stop", index=0),
            an_event("message_delta", delta={"stop_reason": "tool_use"},
                     usage={"output_tokens": 2}),
            an_event("message_stop"),
        ))  # fmt: skip
        _failed_over(await _call(raw, up, "anthropic", True))
