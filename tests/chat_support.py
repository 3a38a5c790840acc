"""Shared pieces of the chat tests: a small registry on a LocalUpstream, and a router."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import pytest

from satisfice import Policy, Registry, Router
from satisfice.executor import ExecutionConfig
from satisfice.state import Health

# Cheapest first, equal quality: the router tries alpha, beta, gamma, delta in this order.
# alpha and beta share a small window, so a context-length error on alpha skips beta.
MODELS = [
    ("alpha", "openai", 8_000, 0.10, 0.40),
    ("beta", "anthropic", 8_000, 0.20, 0.80),
    ("gamma", "openai", 128_000, 0.50, 2.00),
    ("delta", "anthropic", 200_000, 1.00, 4.00),
]
ORDER = [m[0] for m in MODELS]

# 150 tool definitions, ~40k tokens: over alpha's and beta's windows, within gamma's.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{i}",
            "description": "look things up in the archive " * 40,
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
    for i in range(150)
]


def registry(url: str, p95_ms: float = 100.0) -> Registry:
    models: list[dict[str, Any]] = []
    for mid, api, window, p_in, p_out in MODELS:
        models.append(
            {
                "id": mid,
                "provider": api,
                "tokenizer": "o200k_base" if api == "openai" else "claude",
                "context_window": window,
                "max_output": 4_000,
                "capabilities": ["json", "tools", "streaming", "system_prompt"],
                "p95_latency_ms": p95_ms,
                "price": {"input": p_in, "output": p_out, "cached_input": p_in / 10},
                "quality": {"general": 0.9},
                "deployments": [
                    {
                        "name": f"{mid}-dep",
                        "api": api,
                        "base_url": url + ("/v1" if api == "openai" else ""),
                        "model": f"{mid}-wire",
                    }
                ],
            }
        )
    return Registry.from_dict({"model": models})


def move_alpha(reg: Registry, server_url: str, api: str = "openai") -> Registry:
    """`reg` with alpha's deployment on another server (a hostile one), in wire format `api`."""
    alpha = reg["alpha"]
    base = server_url + ("/v1" if api == "openai" else "")
    dep = alpha.deployments[0].replace(api=api, base_url=base)
    return reg.replace(alpha.replace(deployments=(dep,)))


def router(url: str, health: Health | None = None, **config: Any) -> Router:
    r = Router(registry(url), Policy(quality_floor=0.5, max_fallbacks=3))
    # Tight timeouts and short backoffs keep the fault tests fast; the logic is the same.
    cfg = {"read_timeout_s": 2.0, "attempt_timeout_s": 5.0, "backoff_base_s": 0.01} | config
    return r.configure(execution=ExecutionConfig(**cfg), health=health)


def wire(model: str) -> str:
    return f"{model}-wire"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


#: (chat() keywords, what the refusal names): what Anthropic refuses beside thinking, which
#: a thinking row refuses before sending (`providers.anthropic._thinking_refuses`).
REFUSED_BESIDE_THINKING: list[tuple[dict[str, Any], str]] = [
    ({"temperature": 0.2}, "temperature 0.2"),
    ({"extra": {"top_p": 0.5}}, "top_p 0.5"),
    ({"extra": {"top_k": 5}}, "top_k"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    (
        {
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "tool_choice": "required",
        },
        "a forced tool_choice",
    ),
]


#: What Claude Code sends on every turn: system blocks and tools marked for the prompt cache.
CLAUDE_CODE_SYSTEM = [
    {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}
]
CLAUDE_CODE_TOOLS = [{
    "name": "Bash", "description": "Run a shell command",
    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
    "cache_control": {"type": "ephemeral"},
}]  # fmt: skip


def held_routing(
    monkeypatch: pytest.MonkeyPatch, only: Router | None = None
) -> tuple[threading.Event, threading.Event]:
    """Routing made to run on a worker thread, as a large prompt's does, and held there
    (`only` that router's) until the second event is set; the first is set once it is."""
    import satisfice.router as rt

    routing, gate = threading.Event(), threading.Event()
    route = rt.Router._route

    def held(self: Router, *a: Any, **k: Any) -> Any:
        if only is None or self is only:
            routing.set()
            gate.wait(10)
        return route(self, *a, **k)

    monkeypatch.setattr(rt, "_route_inline", lambda *a: False)
    monkeypatch.setattr(rt.Router, "_route", held)
    return routing, gate


async def cancel_while_routed(aw: Any, routing: threading.Event) -> None:
    """Run `aw` as a task and cancel it once its routing is held (`held_routing`)."""
    import asyncio

    task = asyncio.ensure_future(aw)
    assert await asyncio.to_thread(routing.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


WEATHER_TOOLS = [{"type": "function", "function": {"name": "get_weather",
                                                   "parameters": {"type": "object"}}}]  # fmt: skip


def sse_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    """One OpenAI streamed chunk (alpha's), its first choice's `delta`."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "alpha-wire"}
    return json.dumps({**head, **extra, "choices": [choice]}).encode()


def streamed_from_raw(pieces: list[dict[str, Any]]) -> Any:
    """The result of streaming alpha (with `WEATHER_TOOLS`) from a raw-socket upstream
    that sends these deltas, a tool-call finish with usage and [DONE]: what the stream
    reader makes of an upstream's exact bytes."""
    import asyncio

    from satisfice.testing.raw import RawUpstream, http_response

    usage = {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    events = [sse_chunk({"role": "assistant"}), *map(sse_chunk, pieces),
              sse_chunk({}, "tool_calls", usage=usage), b"[DONE]"]  # fmt: skip
    body = b"".join(b"data: " + e + b"\n\n" for e in events)

    async def go(url: str) -> Any:
        r = Router(registry(url), Policy(quality_floor=0.0, max_fallbacks=0))
        async with r, r.stream([{"role": "user", "content": "weather?"}], allow=("alpha",),
                               tools=WEATHER_TOOLS) as s:  # fmt: skip
            out = [d async for d in s]
        return out[-1].result

    with RawUpstream(keep_alive=True) as raw:
        raw.push(http_response(body, ctype="text/event-stream"))
        return asyncio.run(asyncio.wait_for(go(raw.url), 60))
