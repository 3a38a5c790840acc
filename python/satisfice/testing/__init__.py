"""A local upstream for tests: a real HTTP/1.1 server on 127.0.0.1 that speaks the OpenAI
Chat Completions and Anthropic Messages wire formats, SSE streaming included, and misbehaves
exactly as each test scripts it.

    from satisfice.testing import LocalUpstream, reply, status, hang, reset, malformed

    with LocalUpstream() as up:                  # or: async with LocalUpstream() as up
        up.script("gpt-4o-mini", status(429, retry_after=0.2), reply("hi"))
        # POST {up.url}/v1/chat/completions  model=gpt-4o-mini  -> 429, then "hi"
        # POST {up.url}/v1/messages          (Anthropic)        -> same scripting
        registry = up.patch(Registry.default())  # every deployment now points here

Behaviour is chosen per request from the queue of the request's `model` (the wire model
name), else `up.default`. The server runs its own event loop in a background thread, so it
works from sync and async tests alike, and keeps connections alive so it is fast enough to
benchmark against. `python -m satisfice.testing` runs it in the foreground (for a separate
process) and prints its URL.
"""

from .behaviors import Behavior, context_length, hang, malformed, reply, reset, status
from .raw import RawUpstream, http_response
from .upstream import LocalUpstream, Seen, patch_registry

__all__ = [
    "Behavior",
    "LocalUpstream",
    "RawUpstream",
    "Seen",
    "context_length",
    "hang",
    "http_response",
    "malformed",
    "patch_registry",
    "reply",
    "reset",
    "status",
]
