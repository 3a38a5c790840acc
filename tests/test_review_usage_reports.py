"""Review of f04628b (usage reported more than once, billed at the max per count, cache
reads at the min): what that rule bills where a later report is the true one."""

from __future__ import annotations

from typing import Any

from satisfice.testing import LocalUpstream, RawUpstream

from .test_round15_wire import an_event, oa_chunk, sse
from .test_stream_ends_and_reports_hold import _stream

MSGS = [{"role": "user", "content": "hello there"}]
TEXT = "word " * 200  # ~200 output tokens


def _an(start_usage: dict[str, Any], delta_usage: dict[str, Any]) -> bytes:
    return sse(
        an_event("message_start", message={"usage": start_usage}),
        an_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        an_event("content_block_delta", index=0, delta={"type": "text_delta", "text": TEXT}),
        an_event("content_block_stop", index=0),
        an_event("message_delta", delta={"stop_reason": "end_turn"}, usage=delta_usage),
        an_event("message_stop"),
    )


async def test_anthropic_message_delta_usage_failing_a_check_is_not_billed_zero_output(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    """message_delta's usage fails a check (a count that is no integer): the usage is
    unknown and is counted (as on 2809150). Since f04628b the message_start report (the
    prompt's, 0 output tokens by construction) is kept and billed as the provider's own:
    200 tokens of answer billed as 0, cost_estimated False."""
    raw.push(_an({"input_tokens": 10, "output_tokens": 1},
                 {"output_tokens": 200, "cache_read_input_tokens": "many"}))  # fmt: skip
    res = await _stream(raw, up, "anthropic")
    assert res.model == "alpha" and res.text == TEXT, res
    u = res.usage
    assert u.completion_tokens > 0, (u, res.cost_usd)


async def test_openai_last_usage_failing_a_check_does_not_leave_an_early_partial_one(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    """An upstream that reports usage on each chunk (vLLM's continuous usage stats): the
    first says 1 output token; the final one fails a check. 2809150 counted the answer
    (the final report unknown); now the first chunk's 1 token is the provider's bill."""
    raw.push(sse(
        oa_chunk({"role": "assistant", "content": TEXT},
                 usage={"prompt_tokens": 10, "completion_tokens": 1}),
        oa_chunk({}, "stop", usage={"prompt_tokens": 10, "completion_tokens": -200}),
        b"data: [DONE]\n\n",
    ))  # fmt: skip
    res = await _stream(raw, up, "openai")
    assert res.model == "alpha" and res.text == TEXT, res
    assert res.usage.completion_tokens > 1, (res.usage, res.cost_usd)


async def test_anthropic_cumulative_cache_reads_in_message_delta_are_billed_as_reads(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    """Server tools (web search) make message_delta's usage cumulative over the turn's
    samplings (Anthropic's docs): message_start says the first sampling's (50 fresh, a
    1,000-token cache write, no reads); message_delta the whole turn's (300 fresh, the
    1,000 written, 1,000 read back by the second sampling). The 1,000 reads are billed
    as fresh input since f04628b (reads at their fewest: 0), a 10x overcharge on them."""
    raw.push(_an(
        {"input_tokens": 50, "cache_creation_input_tokens": 1000,
         "cache_read_input_tokens": 0, "output_tokens": 1},
        {"input_tokens": 300, "cache_creation_input_tokens": 1000,
         "cache_read_input_tokens": 1000, "output_tokens": 200},
    ))  # fmt: skip
    res = await _stream(raw, up, "anthropic")
    u = res.usage
    assert (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens) == (2300, 1000, 1000), u


def test_most_billed_never_bills_below_a_report_and_bills_growing_reports_the_last() -> None:
    import random

    from satisfice.providers.base import Usage, most_billed
    from satisfice.registry import Price

    rnd = random.Random(7)
    price = Price(3.0, 15.0, cached_input=0.3, cache_write=3.75, cache_write_1h=6.0)

    def usage() -> Usage:
        p = rnd.randint(0, 5000)
        r = rnd.randint(0, p)
        w = rnd.randint(0, p - r)
        h = rnd.randint(0, w)
        return Usage(p, rnd.randint(0, 900), r, w - h, cache_write_1h_tokens=h)

    def bill(u: Usage) -> float:
        return price.cost(u.prompt_tokens, u.completion_tokens, u.cached_tokens,
                          u.cache_write_tokens, cache_write_1h=u.cache_write_1h_tokens)  # fmt: skip

    for _ in range(20_000):
        a, b = usage(), usage()
        m = most_billed(a, b)
        assert m is not None
        assert m.cached_tokens >= 0 and m.cache_write_tokens >= 0
        assert m.cached_tokens + m.cache_write_tokens + m.cache_write_1h_tokens <= m.prompt_tokens
        assert bill(m) >= max(bill(a), bill(b)) * (1 - 1e-12), (a, b, m)
        # cumulative: every part of b at least a's: b is the bill
        grown = Usage(a.prompt_tokens + 10 + 20 + 30, a.completion_tokens + 5,
                      a.cached_tokens + 20, a.cache_write_tokens + 30,
                      cache_write_1h_tokens=a.cache_write_1h_tokens)  # fmt: skip
        assert most_billed(a, grown) == grown, (a, grown, most_billed(a, grown))
