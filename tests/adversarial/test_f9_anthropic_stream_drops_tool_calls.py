"""F9: a streamed /v1/messages answer that is a tool call loses the call: the events carry
stop_reason "tool_use" but no tool_use content block (anthropic_events only emits text), so
Anthropic SDKs / coding agents (which stream) never see the tool call. Non-streamed is fine."""

import anthropic
import pytest

from satisfice.testing import reply
from tests.chat_support import wire

from .harness import LocalUpstream, serve

TOOLS = [
    {
        "name": "get_weather",
        "description": "w",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


@pytest.mark.parametrize("model", ["alpha", "beta"])  # OpenAI- and Anthropic-wire upstreams
def test_streamed_messages_carry_the_tool_call(model):
    with LocalUpstream() as up, serve(up) as (url, _, _):
        up.script(wire(model), reply(tool_call=("get_weather", '{"city": "Oslo"}')))
        c = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
        with c.messages.stream(
            model=model,
            max_tokens=100,
            tools=TOOLS,
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
        ) as s:
            final = s.get_final_message()
        c.close()
        assert final.stop_reason == "tool_use"
        blocks = [b for b in final.content if b.type == "tool_use"]
        # observed: only a text block, no tool_use block
        assert blocks and blocks[0].name == "get_weather" and blocks[0].input == {"city": "Oslo"}, (
            final.content
        )
