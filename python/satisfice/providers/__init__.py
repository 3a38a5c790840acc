"""Providers: one small protocol, one module per wire format, all on a shared httpx client."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import httpx

from .._redact import MIN_KEY_CHARS
from ..errors import AuthError, BadRequestError, UnsupportedRequestError
from ..registry import thinking_budget
from .anthropic import AnthropicProvider, adaptive_effort, anthropic_wire
from .base import ChatRequest, ChatResponse, Provider, StreamDelta, ToolCall, Usage
from .openai import OpenAIProvider, reasoning_refusal

if TYPE_CHECKING:
    from ..registry import Deployment, ModelSpec

__all__ = [
    "AnthropicProvider",
    "ChatRequest",
    "ChatResponse",
    "OpenAIProvider",
    "Provider",
    "StreamDelta",
    "ToolCall",
    "Usage",
    "carries",
    "make_provider",
]


def carries(spec: ModelSpec, dep: Deployment, request: ChatRequest) -> bool:
    """Whether `dep`'s wire format can take `request` as it is for model `spec` (its effort:
    see UnsupportedRequestError): asked of the wire alone, so a deployment whose key is not
    set is asked too."""
    if dep.api != "anthropic":  # OpenAI's wire carries what the router takes, but for
        # what OpenAI's reasoning models refuse
        if request.temperature is None and not request.extra:
            return True
        sent = {"temperature": request.temperature, **(request.extra or {})}
        return reasoning_refusal(dep.model, spec.effort, sent) is None
    try:
        anthropic_wire(
            request, dep.model, False,
            thinking_budget(spec.effort, spec.reasoning_tokens, request.thinking_cap),
            adaptive_effort(spec.thinking, spec.effort),
        )  # fmt: skip
    except (UnsupportedRequestError, BadRequestError):
        return False
    return True


def env_key(dep: Deployment) -> str:
    """The key `dep.api_key_env` holds now, as it is sent ("" when unset): trimmed, as HTTP
    trims a header's value (a key read from a secret file ends in a newline)."""
    return (os.environ.get(dep.api_key_env) or "").strip() if dep.api_key_env else ""


def make_provider(
    client: httpx.AsyncClient,
    model_id: str,
    dep: Deployment,
    effort: str | None = None,
    reasoning_tokens: int = 0,
    thinking: str | None = None,
) -> Provider:
    """The provider for a registry deployment, with its key read from the environment now.

    Raises AuthError naming the variable (never its value) when the key is not set.
    """
    key = None
    if dep.api_key_env:
        key = env_key(dep)
        if key and not (key.isascii() and key.isprintable()):
            raise AuthError(
                f"{model_id} via {dep.name}: environment variable {dep.api_key_env} holds "
                "characters an HTTP header cannot carry (non-ASCII or control characters); "
                "check how the key was pasted",
                model=model_id,
                deployment=dep.name,
            )
        if key and len(key) < MIN_KEY_CHARS:
            raise AuthError(
                f"{model_id} via {dep.name}: environment variable {dep.api_key_env} holds a "
                f"key of {len(key)} characters; satisfice keeps keys out of errors, logs and "
                "records by finding them in what upstreams send back, which it cannot do for "
                f"one shorter than {MIN_KEY_CHARS} without redacting ordinary words. Use a "
                "longer key, or leave api_key_env out for an upstream that needs none",
                model=model_id,
                deployment=dep.name,
            )
        if not key:
            raise AuthError(
                f"{model_id} via {dep.name}: environment variable {dep.api_key_env} is not set; "
                "export the API key there or remove this deployment from the registry",
                model=model_id,
                deployment=dep.name,
            )
    cls = AnthropicProvider if dep.api == "anthropic" else OpenAIProvider
    return cls(
        client,
        base_url=dep.base_url,
        model=dep.model,
        api_key=key,
        deployment=dep.name,
        model_id=model_id,
        effort=effort,
        reasoning_tokens=reasoning_tokens,
        thinking=thinking,
    )
