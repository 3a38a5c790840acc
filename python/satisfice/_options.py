"""`RequestOptions`, the keywords `chat()` and `stream()` take: a module of its own, because
a TypedDict needs `typing`, which a fresh `Router()` does not import (cold_start.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from .decision import Decision

__all__ = ["RequestOptions"]


class RequestOptions(TypedDict, total=False):
    """What `chat()` and `stream()` accept besides the messages: the call's own parameters,
    then per-request constraint overrides (the fields of `Constraints`)."""

    max_tokens: int | None
    temperature: float | None
    tools: list[dict[str, Any]] | None
    tool_choice: Any
    response_format: dict[str, Any] | None
    extra: dict[str, Any] | None  # merged into the wire payload verbatim
    # the end user's id and a prompt-cache key: sent to OpenAI (api.openai.com) as `user`
    # and `prompt_cache_key`, to Anthropic as `metadata.user_id` (the first), left out at
    # hosts that do not document them
    user: str | None
    prompt_cache_key: str | None
    # Anthropic's `anthropic-beta` header (its API's features in beta, comma-separated):
    # sent to Anthropic deployments, which alone read it
    anthropic_beta: str | None
    # Anthropic's `context_management` (context editing), sent to Anthropic deployments only
    context_management: Mapping[str, Any] | None
    # Anthropic's server tools ({"type": "web_search_20250305", "name": "web_search", ...},
    # web_fetch_*): run at Anthropic's side, so the request routes to Claude models alone
    server_tools: list[Mapping[str, Any]] | None
    # send a Claude row its effort (`output_config.effort`) without thinking: Anthropic's
    # effort asked with no `thinking`, whose default is none (routed by effort as usual)
    no_thinking: bool | None
    # Anthropic's `thinking.display` ("summarized" or "omitted": whether a Claude model's
    # thinking comes back as text), sent with the thinking to Anthropic deployments only
    thinking_display: str | None
    timeout: float | None  # seconds for the whole request (default: the latency SLO)
    metadata: Mapping[str, Any] | None  # the caller's tags, copied onto the record
    # call as this decision says (one `decide()` made for the same request), routing
    # nothing again: for a caller that bounded the request on it (a budget), so neither a
    # reload nor a cooldown meanwhile can send the call where the bound does not reach
    decision: Decision | None
    # a model to try first when it passes the request's constraints and can be called (a
    # session's pinned model); the routed order follows it, so failover is kept
    prefer: str | None
    # constraint overrides
    max_cost_usd: float | None
    latency_slo_ms: float | None
    quality_floor: float | None
    needs: Sequence[str]
    max_output_tokens: int | None
    lam: float | None
    allow: Sequence[str] | None
    deny: Sequence[str]
    strict_floor: bool | None
    count_prompt: bool
    reasoning: str | None
    max_reasoning_tokens: int | None
    output_includes_thinking: bool
