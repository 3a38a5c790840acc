"""The Rust hot path seen from Python under adversarial text: each test failed on the code
before the fix its docstring names."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx

from satisfice import Policy, Registry, Router, _core

KEY = "sk-adversarial-0123456789abcdefABCDEF"


def _router(handler: Any, window: int = 400_000) -> Router:
    os.environ["ADVERSARIAL_KEY"] = KEY
    reg = Registry.from_dict(
        {
            "model": [
                {
                    "id": "m",
                    "provider": "openai",
                    "tokenizer": "o200k_base",
                    "context_window": window,
                    "max_output": 8_000,
                    "price": {"input": 1.0, "output": 1.0},
                    "deployments": [
                        {
                            "name": "d",
                            "api": "openai",
                            "base_url": "https://api.openai.com/v1",
                            "api_key_env": "ADVERSARIAL_KEY",
                        }
                    ],
                }
            ]
        }
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Router(reg, Policy(quality_floor=0.0)).configure(http=client)


def _no_usage(req: httpx.Request) -> httpx.Response:
    message = {"role": "assistant", "content": "ok"}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return httpx.Response(200, json={"id": "c", "object": "chat.completion", "model": "m",
                                     "choices": [choice]})  # fmt: skip


def test_a_large_prompt_answered_without_usage_is_billed_as_routed() -> None:
    """An answer without a usage, to a prompt too large to count on the event loop (over
    256 KB), was billed at the estimator's raw figure, though routing had counted that
    very prompt for the model: 300 KB of punctuation, 200,008 tokens counted (a cost cap
    and a budget's hold were checked on the count), billed as 40,660. It is billed as
    routed: the decision's count, or its estimate held within the count's bounds."""
    _core.wait_for_tokenizers()
    _core.count_tokens("warm", "o200k_base")
    msgs = [{"role": "user", "content": "!@#" * 100_000}]
    exact = _core.count_message_tokens(msgs, "o200k_base")
    router = _router(_no_usage)
    for kw in ({"count_prompt": True}, {"max_cost_usd": (exact + 100) * 1.01 / 1e6}):
        res = asyncio.run(router.chat(msgs, max_output_tokens=100, **kw))
        billed = res.attempts[-1].usage
        assert billed is not None and billed.source == "estimated", billed
        assert billed.prompt_tokens >= exact, (kw, billed.prompt_tokens, exact)
