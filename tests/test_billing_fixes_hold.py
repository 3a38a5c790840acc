"""Adversarial review of the fixes made since 154dfdf (streams billing what they generated,
Anthropic content given at a block's start, the dropped-router finalizer, extra
service_tier, failed requests' attempt spans). Each test failed on the code it was
written against because of the defect its docstring names; each uses real parts
(raw-socket upstreams, the local test upstream, OpenTelemetry's SDK) on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from satisfice.errors import SatisficeError
from satisfice.result import Attempt
from satisfice.testing import LocalUpstream, RawUpstream

from .chat_support import move_alpha, registry, router
from .test_streams_hold import _AN_PRELUDE, END, MSGS, an, oa, sse_head, then_reset

# ~4,000 characters (~750 tokens): well under the rows' max_output of 4,000 tokens
CONTENT = json.dumps({"content": "lorem ipsum dolor sit amet " * 150})
REASONING = "lorem ipsum dolor sit amet " * 100


async def _cut_stream_attempt(
    up: LocalUpstream, raw: RawUpstream, api: str, body: bytes, **kw: Any
) -> tuple[str, Attempt]:
    """alpha alone (on `raw`, wire `api`), its stream reset after `body`: the text that
    reached the caller, and the failed attempt."""
    raw.push(then_reset(sse_head() + body))
    text: list[str] = []
    async with router(up.url, max_retries=0) as r:
        r.update(move_alpha(registry(up.url), raw.url, api))
        with pytest.raises(SatisficeError) as ei:
            async with asyncio.timeout(20):
                async for d in r.stream(MSGS, allow=["alpha"], timeout=10, **kw):
                    if d.text:
                        text.append(d.text)
    attempts = ei.value.attempts  # type: ignore[attr-defined]
    assert attempts and attempts[0].model == "alpha" and attempts[0].usage is not None, attempts
    return "".join(text), attempts[0]


def _an_pieces(json_tool: bool) -> bytes:
    """An Anthropic stream writing CONTENT: as a text block, or (JSON mode) as the input of
    the forced JSON tool, in 500-character pieces; never finished."""
    out = an("message_start", message={"usage": {"input_tokens": 10, "output_tokens": 1}})
    if json_tool:
        use = {"type": "tool_use", "id": "toolu_1", "name": "satisfice_json_answer", "input": {}}
        out += an("content_block_start", index=0, content_block=use)
        for i in range(0, len(CONTENT), 500):
            piece = {"type": "input_json_delta", "partial_json": CONTENT[i : i + 500]}
            out += an("content_block_delta", index=0, delta=piece)
    else:
        out += an("content_block_start", index=0, content_block={"type": "text", "text": ""})
        for i in range(0, len(CONTENT), 500):
            piece = {"type": "text_delta", "text": CONTENT[i : i + 500]}
            out += an("content_block_delta", index=0, delta=piece)
    return out


# 1 --------------------------------------------------------------------------------------------
async def test_a_cut_json_mode_anthropic_stream_bills_its_answer_once(
    up: LocalUpstream, raw: RawUpstream
) -> None:
    """Promised (f51b85a, providers/base.py `_stream_failed`, executor.py `_failed`): a cut
    stream is billed "what reached the caller, and what the stream generated *beside* it
    (a tool call's arguments, reasoning)".

    What happens: with `response_format` on an Anthropic model the answer is the forced
    JSON tool's input, and the provider streams those `input_json_delta` pieces to the
    caller as *text* (providers/anthropic.py:791-796, `json_halves`) while also keeping them
    in `tools` (anthropic.py:792). On a cut, `_stream_failed` is given every tool's pieces
    as `out` (anthropic.py:922-927), the JSON tool's included, and `_failed` bills
    `streamed + e.generated` (executor.py:1021): the same JSON counted twice. Here ~750
    tokens of JSON that reached the caller are billed as ~1,500 output tokens, twice what
    the same content streamed as a text block is billed.

    Fix: leave the forced JSON tool (`_JSON_TOOL`) out of `out` in the Anthropic provider's
    `except` (its pieces are the caller's text already), or bill max(streamed, generated)
    for it."""
    text_as_text, plain = await _cut_stream_attempt(up, raw, "anthropic", _an_pieces(False))
    text_as_json, jsoned = await _cut_stream_attempt(
        up, raw, "anthropic", _an_pieces(True), response_format={"type": "json_object"}
    )
    assert text_as_json == text_as_text == CONTENT  # the same text reached the caller
    assert plain.usage is not None and jsoned.usage is not None
    assert jsoned.usage.completion_tokens <= plain.usage.completion_tokens * 1.05, (
        f"the same {len(CONTENT)} characters streamed: billed {plain.usage.completion_tokens} "
        f"output tokens as text, {jsoned.usage.completion_tokens} as the JSON answer"
    )


def _oa_reasoning(both: bool) -> bytes:
    """An OpenAI-compatible reasoning model thinking REASONING; `both`: each delta carries
    it as `reasoning_content` and as `reasoning`, as vLLM's compatibility alias sends it."""
    out = oa({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    for i in range(0, len(REASONING), 300):
        d = {"reasoning_content": REASONING[i : i + 300]}
        if both:
            d["reasoning"] = REASONING[i : i + 300]
        out += oa({"choices": [{"index": 0, "delta": d}]})
    return out


# 2 --------------------------------------------------------------------------------------------
async def test_reasoning_sent_under_both_field_names_is_billed_once(
    up: LocalUpstream, raw: RawUpstream
) -> None:
    """Promised (f51b85a): a cut stream bills the reasoning it generated, once.

    What happens: the OpenAI provider appends a delta's `reasoning_content` *and* its
    `reasoning` to the same list (providers/openai.py:481-483). vLLM renamed
    `reasoning_content` to `reasoning` and keeps the old name as an alias that carries the
    same text in every delta (vllm-project/vllm#34030: a validator syncs the two fields),
    so every piece of thinking is counted twice: 100 repetitions of the same phrase are
    billed ~1,000 reasoning tokens instead of ~500 (the same stream under one field name).

    Fix: per delta, take `reasoning_content` or else `reasoning`, not both."""
    _, one = await _cut_stream_attempt(up, raw, "openai", _oa_reasoning(False))
    _, both = await _cut_stream_attempt(up, raw, "openai", _oa_reasoning(True))
    assert one.usage is not None and both.usage is not None
    assert both.usage.completion_tokens <= one.usage.completion_tokens * 1.05, (
        one.usage,
        both.usage,
    )


# 3 --------------------------------------------------------------------------------------------
async def test_a_json_answer_given_at_the_tool_blocks_start_reaches_a_stream(
    up: LocalUpstream, raw: RawUpstream
) -> None:
    """Promised (f51b85a): "Anthropic text and tool input given at a block's start are
    kept", as Anthropic's SDK reads it; a stream's caller is given the answer's text.

    What happens: the fix keeps a tool_use's start `input` for the final ToolCall only
    (providers/anthropic.py:837-841, 903-906). In JSON mode that tool is the answer, and
    its text reaches a stream's caller only through `input_json_delta` pieces
    (anthropic.py:795-796): given at the block's start, the JSON is in `result.text`
    (anthropic.py:910-911) but never streamed. A streaming caller (and `satisfice serve`'s
    SSE clients, which relay the deltas) gets an empty answer, while the record shows
    `{"answer": 42}`.

    Fix: on content_block_start of the forced JSON tool with a non-empty `input`, yield
    `json.dumps(input)` as text (unless input_json_delta pieces follow)."""
    blocks = an("content_block_start", index=0, content_block={
        "type": "tool_use", "id": "toolu_1", "name": "satisfice_json_answer",
        "input": {"answer": 42}}) + an("content_block_stop", index=0)  # fmt: skip
    raw.push(
        sse_head() + _AN_PRELUDE + blocks
        + an("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 9})
        + an("message_stop") + END
    )  # fmt: skip
    streamed: list[str] = []
    result = None
    async with router(up.url, max_retries=0) as r:
        r.update(move_alpha(registry(up.url), raw.url, "anthropic"))
        async with asyncio.timeout(20):
            s = r.stream(MSGS, allow=["alpha"], timeout=10,
                         response_format={"type": "json_object"})  # fmt: skip
            async for d in s:
                if d.text:
                    streamed.append(d.text)
                if d.result is not None:
                    result = d.result
    assert result is not None and json.loads(result.text) == {"answer": 42}, result
    assert "".join(streamed) == result.text, ("".join(streamed), result.text)


# 4 --------------------------------------------------------------------------------------------
async def test_anthropic_standard_only_service_tier_is_still_accepted(up: LocalUpstream) -> None:
    """Promised (72ff132): only a service tier that satisfice would price wrong (priority,
    flex) is refused; "auto" and "default" pass.

    What happens: router.py:472 refuses every value but auto/default/None. Anthropic's
    Messages API takes `service_tier: "auto" | "standard_only"`, and "standard_only" is
    exactly the standard tier's rates satisfice bills (it keeps a call off Priority Tier
    capacity): a request that worked before 72ff132 (`extra={"service_tier":
    "standard_only"}`) is now a ConfigError before any call.

    Fix: accept "standard_only" (and "standard"), refusing only the tiers billed at other
    rates ("priority", "flex", "scale")."""
    async with router(up.url) as r:
        res = await r.chat(MSGS, allow=["beta"], extra={"service_tier": "standard_only"})
    assert res.model == "beta"


# 5 --------------------------------------------------------------------------------------------
_DROPPED = textwrap.dedent(
    """
    import gc, sys, threading, time
    sys.path.insert(0, {root!r})
    from tests.chat_support import router
    from satisfice.testing import LocalUpstream
    with LocalUpstream() as up:
        for i in range(3):
            r = router(up.url)
            r.attach(ledger={tmp!r} + f"/l{{i}}.db")
            r.chat_sync([{{"role": "user", "content": "hi"}}])
            del r
            gc.collect()
        for _ in range(100):  # (bounded: 5 s at most)
            gc.collect()
            names = [t.name for t in threading.enumerate() if t.name.startswith("satisfice-")
                     and t.name != "satisfice-local-upstream"]
            if not names:
                break
            time.sleep(0.05)
        print(sorted(names))
    """
)


def test_a_router_dropped_unclosed_ends_its_own_ledgers_thread(tmp_path: Path) -> None:
    """Promised (efb6cb8): "A Router dropped unclosed after chat_sync() ends its loop
    thread and closes its own connections" rather than leave them open for the process's
    life; and a ledger attach() opened from a path "is the router's to close" (router.py
    831).

    What happens: the finalizer (router.py:1376, `_LoopThread.abandon`) ends the loop
    thread and closes the HTTP client only. The router's own ledger (attach(ledger=path),
    or the one attach(metrics=...) makes) keeps its writer thread and its open database
    for the process's life: three routers dropped leave three `satisfice-ledger` threads
    (and three SQLite connections) running.

    Fix: hand the finalizer the router's own ledger too (when `_owns_ledger`), closed
    after the loop winds down (or re-register the finalizer in attach())."""
    code = _DROPPED.format(root=str(Path(__file__).resolve().parents[1]), tmp=str(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "python")}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == "[]", out


# 6 --------------------------------------------------------------------------------------------
async def test_a_failed_requests_attempt_spans_name_their_provider(up: LocalUpstream) -> None:
    """Promised (433319d): a request whose every attempt failed is traced "with a span per
    attempt ... as `result` does"; tracing.py's attempt spans carry the GenAI semantic
    conventions' `gen_ai.provider.name` (`_gen_ai`, tracing.py:33-34).

    What happens: `Tracing.failure` writes each attempt's span with `provider=None`
    (tracing.py:124), so the spans of the requests one most needs to see (every provider
    failed) lack `gen_ai.provider.name`, while the same attempt, failed inside a request
    that a fallback answered, has it (`result` looks the model up in the registry). A
    dashboard grouping failed calls by provider sees none of them.

    Fix: look the attempt's model up in the decision's registry (or carry the provider on
    the failure record's attempts) and pass it to `_attempt` in `failure`."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from satisfice.testing import status
    from satisfice.tracing import Tracing

    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    up.script("alpha-wire", *[status(500)] * 4)
    async with router(up.url, max_retries=0) as r:
        r.attach(tracing=Tracing(provider))
        # alpha fails, beta answers: alpha's span inside a request that succeeded
        await r.chat(MSGS, allow=["alpha", "beta"])
        # alpha fails alone: alpha's span inside a request that failed
        with pytest.raises(SatisficeError):
            await r.chat(MSGS, allow=["alpha"])
    spans = exp.get_finished_spans()
    alpha = [s for s in spans if s.parent is not None and s.name == "chat alpha"
             and (s.attributes or {}).get("satisfice.outcome") == "error"]  # fmt: skip
    assert len(alpha) == 2, [(s.name, dict(s.attributes or {})) for s in spans]
    named = [(s.attributes or {}).get("gen_ai.provider.name") for s in alpha]
    assert named == ["openai", "openai"], named


# 7 --------------------------------------------------------------------------------------------
async def test_an_error_event_before_any_output_is_not_billed_for_a_zero_usage(
    up: LocalUpstream, raw: RawUpstream
) -> None:
    """Promised (f51b85a, providers/base.py `_stream_failed`): "A stream that generated
    any of it [tool calls' arguments, reasoning] is an answer the upstream bills"; an error
    event in place of an answer (nothing generated) is no answer, billed nothing, as
    `_not_an_answer` says ("an error said, not an answer cut: no estimated bill").

    What happens: `_stream_failed` marks the error `answered` whenever a usage was seen
    (`usage is not None`, base.py:697), whatever it says. Upstreams that put a usage on
    every chunk (vLLM's `continuous_usage_stats`, several OpenAI-compatible hosts) send
    `{"prompt_tokens": 10, "completion_tokens": 0}` on the very first chunk, so an error
    event before any output is now billed the prompt (estimated) and, under a budget's
    held decision, no longer retried on the deployment (`_rebills`); the same stream
    without that chunk is billed nothing. Whether a call is billed depends on a usage
    figure that says nothing was generated (this same test without the first chunk's
    `usage` records the attempt at no cost).

    Fix: in `_stream_failed`, take a reported usage as a sign of output only when its
    completion_tokens > 0 (still carry it as `reported`)."""
    first: dict[str, Any] = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    first["usage"] = {"prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10}
    body = sse_head() + oa(first) + oa({"error": {"message": "server had an error"}}) + END
    raw.push(body)
    async with router(up.url, max_retries=0) as r:
        r.update(move_alpha(registry(up.url), raw.url, "openai"))
        async with asyncio.timeout(20):
            res = await r.stream(MSGS, allow=["alpha", "beta"], timeout=10).result()
    failed = res.attempts[0]
    assert failed.model == "alpha" and failed.outcome == "error", res.attempts
    assert not failed.cost_usd, (failed.usage, failed.cost_usd, failed.cost_estimated)
