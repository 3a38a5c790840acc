"""What a conversation sends beside its content strings is counted, and what an upstream
reports is taken only when it can be a bill (round 15):

- an agent's history (assistant tool calls, a legacy function_call, names, tool call ids) and
  a refusal part are billed as prompt tokens: the router had counted the prompt without them
  and let a call 3x over `max_cost_usd` through;
- images are counted at the router's typical figure, and a count with images is estimated
  (a prompt of 8 images had been billed as its 10 text tokens, "counted" as if exact);
- usage of 0 prompt tokens, or of 0 output tokens beside an answer, is no usage: the call
  had been recorded and settled at $0.
"""

from __future__ import annotations

import json

import pytest

from satisfice import NoRouteError, _core
from satisfice.testing import LocalUpstream, reply

from .chat_support import router

ARGS = json.dumps({"rows": [f"record {i}: value {i * 7}" for i in range(300)]})
TOOL_HISTORY = [
    {"role": "user", "content": "Fetch the records."},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "fetch", "arguments": ARGS}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "done"},
    {"role": "user", "content": "Summarise them."},
]  # fmt: skip
REFUSAL = [
    {"role": "user", "content": "Tell me."},
    {"role": "assistant", "content": [{"type": "refusal", "refusal": ARGS}]},
]
LEGACY = [
    {"role": "assistant", "content": None, "function_call": {"name": "fetch", "arguments": ARGS}},
    {"role": "function", "name": "fetch", "content": "done"},
]
# OpenAI's custom tools: free-form input, not JSON arguments (it had been counted as nothing)
CUSTOM = [
    {"role": "user", "content": "Fetch the records."},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "custom", "custom": {"name": "fetch", "input": ARGS}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "done"},
]  # fmt: skip


@pytest.mark.parametrize(
    "msgs", [TOOL_HISTORY, REFUSAL, LEGACY, CUSTOM], ids=["tools", "refusal", "fc", "custom"]
)
def test_an_agents_history_is_counted_whole(msgs: list[dict[str, object]]) -> None:
    args = _core.count_tokens(ARGS, "o200k_base")
    assert _core.count_message_tokens(msgs, "o200k_base") > args
    assert _core.estimate_message_tokens(msgs, "o200k_base") > args / 2


async def test_a_cost_cap_counts_the_tool_calls_it_sends(up: LocalUpstream) -> None:
    async with router(up.url) as r:
        whole = r.route(TOOL_HISTORY, allow=("alpha",))
        # an estimate far from every limit: it had been the ~30 tokens of the contents
        assert whole.tokens_in("alpha") > _core.count_tokens(ARGS, "o200k_base") / 2
        with pytest.raises(NoRouteError, match="max_cost"):
            await r.chat(TOOL_HISTORY, allow=("alpha",), max_cost_usd=whole.est_cost_usd / 2)


def test_arguments_given_as_a_dict_are_counted_not_refused() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"k": "v" * 50}}}
    msgs = [{"role": "assistant", "content": None, "tool_calls": [call]}]
    assert _core.count_message_tokens(msgs, "o200k_base") > 10


IMG = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


async def test_images_are_counted_and_the_count_is_not_called_exact(up: LocalUpstream) -> None:
    msgs = [{"role": "user", "content": [{"type": "text", "text": "what is this"}, IMG, IMG]}]
    text_only = _core.count_message_tokens([{"role": "user", "content": "what is this"}])
    assert _core.count_message_tokens(msgs) >= text_only + 2 * 700
    up.default = reply("A cat.", usage=False)
    async with router(up.url) as r:
        alpha = r.registry["alpha"]
        r.update(r.registry.replace(alpha.replace(capabilities=alpha.capabilities | {"vision"})))
        res = await r.chat(msgs, allow=("alpha",))
    assert res.usage.source == "estimated" and res.usage.prompt_tokens >= 2 * 700


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("usage", [(0, 0, 0), (50, 0, 0)], ids=["none", "no-output"])
async def test_a_usage_of_nothing_beside_an_answer_is_counted_not_free(
    up: LocalUpstream, stream: bool, usage: tuple[int, int, int]
) -> None:
    up.default = reply("word " * 200, usage=usage)
    async with router(up.url) as r:
        if stream:
            res = await r.stream("Write two hundred words.", allow=("alpha",)).result()
        else:
            res = await r.chat("Write two hundred words.", allow=("alpha",))
    assert res.usage.source != "provider" and res.usage.completion_tokens >= 150
    assert res.total_cost_usd is not None and res.total_cost_usd > 0


def test_a_huge_tool_call_history_is_estimated_not_counted_on_the_loop() -> None:
    """The size that sends a count to an estimate (or routing to a worker thread) had read
    contents only: 4 MB of tool-call arguments were counted exactly, 2 s on the event loop."""
    from satisfice import Router
    from satisfice.accounting import usage_of
    from satisfice.providers.base import ChatResponse

    Router()  # builds the exact counters' tokenizers: until then every count is estimated
    _core.wait_for_tokenizers()

    call = {
        "id": "c",
        "type": "function",
        "function": {"name": "f", "arguments": "x1 " * 1_400_000},
    }
    msgs = [{"role": "assistant", "content": None, "tool_calls": [call]}]
    u = usage_of(msgs, "o200k_base", ChatResponse("ok", {}, None, "stop"))
    assert u.source == "estimated" and u.prompt_tokens > 500_000
