"""A server budget settles within what it held: retried answers the upstream may bill, and
the thinking a stream sent before its caller left. From an adversarial review: each test
failed before its fix."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from satisfice.testing import malformed, reset

from .chat_support import wire
from .test_server import MASTER, served, upstream  # noqa: F401  (fixtures)


@pytest.mark.parametrize("stream", [False, True])
def test_the_reservation_covers_prompts_billed_by_retried_malformed_answers(
    served: Any,  # noqa: F811  (the fixture imported above)
    stream: bool,
) -> None:
    """A 2xx whose body is malformed is billed at its prompt (the upstream generated it) and
    is RETRIED on the same deployment (max_retries=1): each deployment's prompt may be billed
    twice, but the reservation holds each deployment's prompt once. Three models answer
    garbage twice each, the fourth answers: the request settles above its hold and above
    the key's budget it was admitted under."""
    url, _, up, _ = served
    admin = {"authorization": f"Bearer {MASTER}"}
    body = {"model": "auto", "messages": [{"role": "user", "content": "word " * 6000}],
            "max_tokens": 1, "stream": stream}  # fmt: skip
    # the worst case as the server reckons it (its refusal says), then a budget of just that
    probe = httpx.post(url + "/admin/keys", headers=admin,
                       json={"name": "p", "budget_usd": 0.0001}).json()  # fmt: skip
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30,
                   headers={"authorization": f"Bearer {probe['key']}"})  # fmt: skip
    assert r.status_code == 429, r.text
    held = float(re.search(r"may cost up to \$([0-9.]+)", r.text)[1])  # type: ignore[index]
    k = httpx.post(url + "/admin/keys", headers=admin,
                   json={"name": "m", "budget_usd": held * 1.001}).json()  # fmt: skip
    for m in ("alpha", "beta", "gamma"):
        # non-streamed: a 200 with a body that is not JSON; streamed: a 200 head, then a
        # reset before any text. Both are `answered` (billed at the prompt) and RETRIED.
        bad = reset if stream else malformed
        up.script(wire(m), bad(), bad())
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30,
                   headers={"authorization": f"Bearer {k['key']}"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert '"delta"' in r.text
    spend = httpx.get(url + "/admin/spend", headers=admin).json()["budgets"]
    b = next(x for x in spend if x["scope"] == f"key:{k['id']}")
    assert b["held_usd"] == 0
    assert b["spent_usd"] <= b["limit_usd"], b  # admitted within the limit, settled past it


async def test_a_stream_left_after_its_thinking_is_billed_for_the_thinking_it_sent() -> None:
    """A stream its caller leaves is settled at "what its call may cost so far (prompt and
    text sent)". The thinking a Claude row streamed (delta.thinking, then the signed block)
    was generated and sent too, but the estimate counts `delivered` text alone plus the
    row's *expected* reasoning (6,144 for @medium): 46,000 tokens of thinking sent to the
    caller are billed as 6,144. A server budget settles at this estimate (billed_cost of
    the stream's attempts), so a coding agent's Esc after a long think under-counts spend."""
    from satisfice import Registry, Router, _core
    from satisfice.testing import LocalUpstream, reply

    _core.wait_for_tokenizers()
    said = " ".join(f"step{i}" for i in range(15000))
    async with LocalUpstream() as up, Router(up.patch(Registry.default())) as r:
        up.script("claude-sonnet-4-6", reply("the answer " * 50, thinking=said))
        s = r.stream([{"role": "user", "content": "think hard"}],
                     allow=["claude-sonnet-4-6@medium"], max_tokens=64000)  # fmt: skip
        thinking: list[str] = []
        async for d in s:
            if d.thinking:
                thinking.append(d.thinking)
            if d.thought is not None:  # the whole signed block is the caller's: it leaves
                break
        await s.aclose()
        sent = _core.count_tokens("".join(thinking), "claude")
        (a,) = s.attempts
        assert a.outcome == "cancelled" and a.usage is not None
        assert sent > 40_000
        assert a.usage.completion_tokens >= sent, (a.usage, sent)
