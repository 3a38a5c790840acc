"""F3: an upstream API key that an upstream echoes \\u-escaped inside a *streamed* tool call's
id or name reaches the client in clear (and through router.stream for library users). Text,
tool arguments, non-streamed bodies and error bodies are scrubbed; streamed tool-call ids and
names are JSON-decoded after the line-level scrub and never scrubbed again
(providers/openai.py stream: acc.id/acc.name; providers/anthropic.py: ToolCall(i, n, ...))."""

import httpx
import pytest

from satisfice.testing import RawUpstream, http_response

from .harness import UPKEY, LocalUpstream, reg_with_key, serve

E = "".join(f"\\u{ord(c):04x}" for c in UPKEY)
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
OPENAI_SSE = (
    'data: {"id":"x","object":"chat.completion.chunk","model":"g","choices":[{"index":0,"delta":'
    '{"tool_calls":[{"index":0,"id":"'
    + E
    + '","type":"function","function":{"name":"'
    + E
    + '","arguments":"{}"}}]},"finish_reason":null}]}\n\n'
    'data: {"id":"x","object":"chat.completion.chunk","model":"g","choices":[{"index":0,"delta":{},'
    '"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\n\n'
    "data: [DONE]\n\n"
)
ANTHROPIC_SSE = (
    'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message","role":"assistant","model":"d","content":[],"usage":{"input_tokens":1,"output_tokens":0}}}\n\n'
    'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"'
    + E
    + '","name":"'
    + E
    + '","input":{}}}\n\n'
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{}"}}\n\n'
    'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":1}}\n\n'
    'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


@pytest.mark.parametrize("model,sse", [("gamma", OPENAI_SSE), ("delta", ANTHROPIC_SSE)])
def test_streamed_tool_call_ids_are_scrubbed(model, sse):
    with LocalUpstream() as up, RawUpstream() as raw:
        reg = reg_with_key(up.url)
        m = reg[model]
        base = raw.url + ("/v1" if m.deployments[0].api == "openai" else "")
        reg = reg.replace(m.replace(deployments=(m.deployments[0].replace(base_url=base),)))
        with serve(up, reg_text=reg.to_toml()) as (url, _, _):
            raw.push(http_response(sse.encode(), ctype="text/event-stream"))
            body = {
                "model": model,
                "stream": True,
                "tools": TOOLS,
                "max_tokens": 50,
                "messages": [{"role": "user", "content": "hi"}],
            }
            r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
            assert r.status_code == 200, r.text
            assert "tool_calls" in r.text
            assert UPKEY not in r.text  # observed: the key in clear as the tool call's id and name
