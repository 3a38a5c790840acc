"""A stream request an Anthropic upstream answers with a whole JSON message (a proxy that
ignores `stream`), served to the official anthropic client as the event stream it asked
for: the message it reads is the upstream's, block for block."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic

from satisfice import Policy, Router
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, RawUpstream, http_response

from .chat_support import move_alpha, registry
from .server_support import running

WHOLE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "alpha-wire",
    "content": [
        {"type": "thinking", "thinking": "weigh it first", "signature": "sig-1"},
        {"type": "text", "text": "ok"},
    ],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 100, "output_tokens": 50},
}


def test_a_whole_message_in_place_of_a_stream_keeps_its_thinking(
    raw: RawUpstream, tmp_path: Path
) -> None:
    """Its thinking block had come to the client empty, its signature alone: the provider
    gave the block whole (`StreamDelta.thought`) and no piece of its text, and the served
    stream says a block's text in thinking_delta events only (as a streamed block's pieces
    come). A block sent back on the next turn with another's signature is refused."""
    raw.push(http_response(json.dumps(WHOLE).encode()))
    with LocalUpstream() as up:
        reg = move_alpha(registry(up.url), raw.url, "anthropic")
        r = Router(reg, Policy(quality_floor=0.5, max_fallbacks=0))
        with running(ServerConfig(ledger=str(tmp_path / "l.db")), r) as (url, _):
            client = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0, timeout=10)
            with client.messages.stream(
                model="alpha", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                message = stream.get_final_message()
    blocks = [b.model_dump(exclude_none=True) for b in message.content]
    assert blocks == [
        {"type": "thinking", "thinking": "weigh it first", "signature": "sig-1"},
        {"type": "text", "text": "ok"},
    ], blocks
    assert message.stop_reason == "end_turn"
