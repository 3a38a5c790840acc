"""The usual request's shortcuts (thirty-ninth session) answer as the full checks would."""

from __future__ import annotations

import itertools
from typing import Any

from satisfice._extra import server_turns, text_bytes
from satisfice.router import _plain_size, _thinks_refused

_SHAPES: list[dict[str, Any]] = [
    {"role": "user", "content": "hi"},
    {"role": "system", "content": "be brief"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": [{"type": "text", "text": "a picture"}]},
    {"role": "user", "content": None},
    {"content": "no role"},
    {"content": "x", "anthropic_content": [{"type": "server_tool_use"}]},
    {"role": "user", "content": "x", "name": "ann"},
    {"role": None, "content": "x"},
    {"role": "tool", "content": "42", "tool_call_id": "c1"},
    {"role": "assistant", "content": "", "anthropic_content": [{"type": "text"}]},
]


def test_plain_size_speaks_only_for_messages_the_full_checks_pass() -> None:
    """`_plain_size` stands in for text_bytes, server_turns and _thinks_refused on the usual
    messages: wherever it answers, they must say what it implies."""
    answered = 0
    for n in (1, 2):
        for msgs in itertools.product(_SHAPES, repeat=n):
            ms = [dict(m) for m in msgs]
            size = _plain_size(ms)
            if size is None:
                continue
            answered += 1
            assert size == text_bytes(ms), ms
            assert not server_turns(ms), ms
            assert not _thinks_refused(ms), ms
    assert answered >= 4  # the plain shapes were answered for, not all left to the checks
