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

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .registry import Registry

__all__ = [
    "Behavior",
    "LocalUpstream",
    "Seen",
    "context_length",
    "hang",
    "malformed",
    "patch_registry",
    "reply",
    "reset",
    "status",
]

Kind = Literal["reply", "status", "hang", "reset", "malformed"]


@dataclass(frozen=True, slots=True)
class Behavior:
    """What the upstream does with one request. Build with reply(), status(), hang(), ..."""

    kind: Kind
    latency: float = 0.0  # seconds before the first byte
    text: str | None = None  # None: "answer from <model>"
    usage: bool | tuple[int, int, int] = True  # False omits usage; (in, out, cached) fixes it
    code: int = 200
    retry_after: float | None = None
    message: str = ""
    after_chunks: int = 0  # reset: stream events (or body bytes / 8) sent before the reset
    chunk_delay: float = 0.0  # streaming: pause between events
    tool_call: tuple[str, str] | None = None  # (name, JSON arguments)


def reply(
    text: str | None = None,
    *,
    latency: float = 0.0,
    usage: bool | tuple[int, int, int] = True,
    chunk_delay: float = 0.0,
    tool_call: tuple[str, str] | None = None,
) -> Behavior:
    """A normal answer (streamed as SSE when the request asks for it)."""
    return Behavior("reply", latency, text, usage, chunk_delay=chunk_delay, tool_call=tool_call)


def status(
    code: int, *, retry_after: float | None = None, message: str = "", latency: float = 0.0
) -> Behavior:
    """An HTTP error in the API's own error shape, with Retry-After when given."""
    return Behavior("status", latency, code=code, retry_after=retry_after, message=message)


def context_length() -> Behavior:
    """The 400 a provider sends when the prompt does not fit the window."""
    return status(
        400,
        message="This model's maximum context length is 8192 tokens; "
        "your messages resulted in 9000 tokens (context_length_exceeded)",
    )


def hang() -> Behavior:
    """Accept the request and never answer (a read timeout for the client)."""
    return Behavior("hang")


def reset(after_chunks: int = 0, *, latency: float = 0.0) -> Behavior:
    """Send the headers and `after_chunks` stream events, then reset the connection (RST)."""
    return Behavior("reset", latency, after_chunks=after_chunks)


def malformed(*, latency: float = 0.0) -> Behavior:
    """A 200 whose body (or a stream event) is not valid JSON."""
    return Behavior("malformed", latency)


@dataclass(frozen=True, slots=True)
class Seen:
    """A request the upstream received."""

    api: str  # "openai" | "anthropic"
    path: str
    model: str
    body: dict[str, Any]
    headers: dict[str, str] = field(repr=False)
    behavior: Behavior


_REASON = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}
_ANTHROPIC_ERR = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _head(code: int, ctype: str, length: int | None, extra: str = "") -> bytes:
    size = (
        f"content-length: {length}\r\n" if length is not None else "transfer-encoding: chunked\r\n"
    )
    return (
        f"HTTP/1.1 {code} {_REASON.get(code, 'Status')}\r\ncontent-type: {ctype}\r\n"
        f"{size}{extra}\r\n"
    ).encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _words(messages: Any) -> int:
    n = 0
    for m in messages if isinstance(messages, list) else ():
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            n += len(c.split())
        elif isinstance(c, list):
            n += sum(len(str(p.get("text", "")).split()) for p in c if isinstance(p, dict))
    return n


class _Answer:
    """The pieces of one scripted answer, rendered in either wire format."""

    __slots__ = ("cached", "forced_tool", "n_in", "n_out", "pieces", "text", "tool", "usage")

    def __init__(self, b: Behavior, model: str, body: dict[str, Any]) -> None:
        self.text = b.text if b.text is not None else f"answer from {model}"
        words = self.text.split(" ")
        self.pieces = [w + " " for w in words[:-1]] + [words[-1]]
        self.usage = b.usage is not False
        if isinstance(b.usage, tuple):
            self.n_in, self.n_out, self.cached = b.usage
        else:
            self.n_in = _words(body.get("messages")) + 1
            self.n_out, self.cached = len(words), 0
        self.tool = b.tool_call
        choice = body.get("tool_choice")
        # Anthropic JSON mode is a forced tool: answer through it, as the real API does.
        self.forced_tool = (
            choice.get("name")
            if isinstance(choice, dict) and choice.get("type") == "tool"
            else None
        )
        if self.forced_tool and self.tool is None:
            try:
                obj = json.loads(self.text)
            except ValueError:
                obj = None
            args = self.text if isinstance(obj, dict) else json.dumps({"text": self.text})
            self.tool = (self.forced_tool, args)

    # OpenAI -------------------------------------------------------------------------------
    def openai(self, model: str) -> bytes:
        msg: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool:
            msg["tool_calls"] = [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": self.tool[0], "arguments": self.tool[1]},
                }
            ]
        out: dict[str, Any] = {
            "id": "chatcmpl-local",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {"index": 0, "message": msg, "finish_reason": "tool_calls" if self.tool else "stop"}
            ],
        }
        if self.usage:
            out["usage"] = self._openai_usage()
        return json.dumps(out).encode()

    def _openai_usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.n_in,
            "completion_tokens": self.n_out,
            "total_tokens": self.n_in + self.n_out,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        }

    def openai_events(self, model: str, include_usage: bool) -> Iterator[bytes]:
        base = {
            "id": "chatcmpl-local",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
        }

        def ev(choices: list[Any], **kw: Any) -> bytes:
            return b"data: " + json.dumps({**base, "choices": choices, **kw}).encode() + b"\n\n"

        yield ev(
            [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )
        for p in self.pieces:
            yield ev([{"index": 0, "delta": {"content": p}, "finish_reason": None}])
        if self.tool:
            name, args = self.tool
            half = len(args) // 2
            yield ev(
                [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "call_1",
                                    "type": "function",
                                    "function": {"name": name, "arguments": args[:half]},
                                }
                            ]
                        },
                        "finish_reason": None,
                    }
                ]
            )
            yield ev(
                [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [{"index": 0, "function": {"arguments": args[half:]}}]
                        },
                        "finish_reason": None,
                    }
                ]
            )
        yield ev(
            [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if self.tool else "stop"}]
        )
        if include_usage and self.usage:
            yield ev([], usage=self._openai_usage())
        yield b"data: [DONE]\n\n"

    # Anthropic ----------------------------------------------------------------------------
    def _anthropic_usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.n_in - self.cached,
            "output_tokens": self.n_out,
            "cache_read_input_tokens": self.cached,
            "cache_creation_input_tokens": 0,
        }

    def anthropic(self, model: str) -> bytes:
        content: list[Any] = []
        if not self.forced_tool:
            content.append({"type": "text", "text": self.text})
        if self.tool:
            content.append(
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": self.tool[0],
                    "input": json.loads(self.tool[1]),
                }
            )
        out: dict[str, Any] = {
            "id": "msg_local",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": "tool_use" if self.tool else "end_turn",
            "stop_sequence": None,
        }
        if self.usage:
            out["usage"] = self._anthropic_usage()
        return json.dumps(out).encode()

    def anthropic_events(self, model: str) -> Iterator[bytes]:
        def ev(kind: str, **kw: Any) -> bytes:
            return (
                f"event: {kind}\ndata: ".encode()
                + json.dumps({"type": kind, **kw}).encode()
                + b"\n\n"
            )

        msg: dict[str, Any] = {
            "id": "msg_local",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
        }
        if self.usage:
            msg["usage"] = {**self._anthropic_usage(), "output_tokens": 1}
        yield ev("message_start", message=msg)
        idx = 0
        if not self.forced_tool:
            yield ev("content_block_start", index=0, content_block={"type": "text", "text": ""})
            yield ev("ping")
            for p in self.pieces:
                yield ev("content_block_delta", index=0, delta={"type": "text_delta", "text": p})
            yield ev("content_block_stop", index=0)
            idx = 1
        if self.tool:
            name, args = self.tool
            half = len(args) // 2
            yield ev(
                "content_block_start",
                index=idx,
                content_block={"type": "tool_use", "id": "toolu_1", "name": name, "input": {}},
            )
            for part in (args[:half], args[half:]):
                yield ev(
                    "content_block_delta",
                    index=idx,
                    delta={"type": "input_json_delta", "partial_json": part},
                )
            yield ev("content_block_stop", index=idx)
        delta: dict[str, Any] = {
            "delta": {"stop_reason": "tool_use" if self.tool else "end_turn", "stop_sequence": None}
        }
        if self.usage:
            delta["usage"] = {"output_tokens": self.n_out}
        yield ev("message_delta", **delta)
        yield ev("message_stop")


class _Conn(asyncio.Protocol):
    """One client connection: parses requests (no pipelining needed) and answers them."""

    def __init__(self, up: LocalUpstream) -> None:
        self.up = up
        self.buf = bytearray()
        self.busy = False
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.up._conns.add(self)
        self.up.total_connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.up._conns.discard(self)
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.process()

    def process(self) -> None:
        while not self.busy and not self.closed:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if "chunked" in headers.get("transfer-encoding", ""):
                self.write(_error_response(411, "send a content-length body"), close=True)
                return
            total = end + 4 + int(headers.get("content-length", "0"))
            if len(self.buf) < total:
                return
            body = bytes(self.buf[end + 4 : total])
            del self.buf[:total]
            parts = lines[0].split(" ")
            self.up._dispatch(self, parts[1] if len(parts) > 1 else "/", headers, body)

    def write(self, data: bytes, close: bool = False) -> None:
        if self.transport is None or self.closed:
            return
        self.transport.write(data)
        if close:
            self.transport.close()

    def done(self) -> None:
        """The current response is complete: take the next request, if any."""
        self.busy = False
        self.task = None
        if self.buf:
            self.process()

    def reset(self) -> None:
        """Abort with a TCP RST, as a crashed upstream or a middlebox would."""
        if self.transport is None or self.closed:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


def _error_response(
    code: int, message: str, api: str = "openai", retry_after: float | None = None
) -> bytes:
    if api == "anthropic":
        err = {
            "type": "error",
            "error": {"type": _ANTHROPIC_ERR.get(code, "api_error"), "message": message},
        }
    else:
        err = {"error": {"message": message, "type": "local_upstream", "code": code}}
    body = json.dumps(err).encode()
    extra = f"retry-after: {retry_after:g}\r\n" if retry_after is not None else ""
    return _head(code, "application/json", len(body), extra) + body


class LocalUpstream:
    """A scripted OpenAI + Anthropic upstream on 127.0.0.1 (see the module docstring).

    `record=False` keeps no per-request log (for long benchmark runs).
    """

    def __init__(
        self, *, port: int = 0, default: Behavior | None = None, record: bool = True
    ) -> None:
        self.default = default or reply()
        self.record = record
        self.requests: list[Seen] = []
        self.total_connections = 0
        self._port = port
        self._scripts: dict[str, deque[Behavior]] = {}
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    # scripting ----------------------------------------------------------------------------
    def script(self, model: str, *behaviors: Behavior) -> LocalUpstream:
        """Queue behaviours for the next requests naming `model`; then `default` applies."""
        with self._lock:
            self._scripts.setdefault(model, deque()).extend(behaviors)
        return self

    def reset_script(self) -> None:
        """Forget queued behaviours and the request log."""
        with self._lock:
            self._scripts.clear()
            self.requests.clear()

    def wait_idle(self, timeout: float = 2.0) -> bool:
        """Wait until no client connection is open (so nothing from an earlier test can
        still arrive and take a behaviour scripted for the next one). False on timeout."""
        deadline = time.monotonic() + timeout
        while self._conns:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    def drop_connections(self) -> None:
        """Close every client connection from the server side, as an upstream restarting
        or expiring idle keep-alive connections would."""
        loop = self._loop
        if loop is None:
            return
        done = threading.Event()

        def close() -> None:
            for c in list(self._conns):
                if c.transport is not None:
                    c.transport.close()
            done.set()

        loop.call_soon_threadsafe(close)
        done.wait(5)
        self.wait_idle()  # until the sockets are really closed (their FIN is on the wire)

    def pending(self, model: str) -> int:
        """Behaviours still queued for `model`."""
        with self._lock:
            return len(self._scripts.get(model, ()))

    def seen(self, model: str) -> list[Seen]:
        """Requests received for `model`, in order."""
        return [s for s in self.requests if s.model == model]

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT (OpenAI deployments use url + "/v1")."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the LocalUpstream is not running; use it as a context manager")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def open_connections(self) -> int:
        """Client connections open right now (for leak checks)."""
        return len(self._conns)

    def patch(self, registry: Registry, *, drop_keys: bool = True) -> Registry:
        """`registry` with every deployment pointing at this upstream (see patch_registry)."""
        return patch_registry(registry, self.url, drop_keys=drop_keys)

    # lifecycle ----------------------------------------------------------------------------
    def start(self) -> LocalUpstream:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(
                        lambda: _Conn(self),
                        "127.0.0.1",
                        self._port,
                        reuse_address=True,
                        backlog=1024,
                    )
                )
            except BaseException as e:  # report bind failures to the starting thread
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="satisfice-local-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            self._thread = None
            raise RuntimeError(f"LocalUpstream could not start: {failure[:1]}")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        done = threading.Event()

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for c in list(self._conns):  # hung requests hold connections open: drop them
                if c.transport is not None:
                    c.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()
            done.set()
            loop.stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(shutdown()))
        done.wait(10)
        thread.join(10)
        self._thread = self._loop = None

    def __enter__(self) -> LocalUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> LocalUpstream:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # serving (runs on the server thread) --------------------------------------------------
    def _next(self, model: str) -> Behavior:
        q = self._scripts.get(model)
        if q:
            with self._lock:
                if q:
                    return q.popleft()
        return self.default

    def _dispatch(self, conn: _Conn, path: str, headers: dict[str, str], raw: bytes) -> None:
        api = "anthropic" if path.endswith("/messages") else "openai"
        if not path.endswith(("/chat/completions", "/messages")):
            conn.write(
                _error_response(404, f"no route {path}; POST /v1/chat/completions or /v1/messages")
            )
            return
        try:
            body = json.loads(raw)
            model = str(body["model"])
        except (ValueError, KeyError, TypeError):
            conn.write(_error_response(400, "the body must be JSON with a 'model'", api))
            return
        b = self._next(model)
        if self.record:
            self.requests.append(Seen(api, path, model, body, headers, b))
        stream = bool(body.get("stream"))
        if b.kind == "reply" and not b.latency and not stream:  # the benchmark's fast path
            ans = _Answer(b, model, body)
            data = ans.anthropic(model) if api == "anthropic" else ans.openai(model)
            conn.write(_head(200, "application/json", len(data)) + data)
            return
        conn.busy = True
        conn.task = asyncio.get_running_loop().create_task(
            self._serve(conn, b, api, model, body, stream)
        )

    async def _serve(
        self, conn: _Conn, b: Behavior, api: str, model: str, body: dict[str, Any], stream: bool
    ) -> None:
        if b.latency:
            await asyncio.sleep(b.latency)
        if b.kind == "hang":
            await asyncio.Event().wait()  # until the client gives up or the server stops
        if b.kind == "status":
            msg = b.message or f"scripted HTTP {b.code} from the local upstream"
            conn.write(_error_response(b.code, msg, api, b.retry_after))
            conn.done()
            return
        if b.kind == "malformed":
            if stream:
                conn.write(_head(200, "text/event-stream", None))
                conn.write(_chunk(b'data: {"choices": [{"delta": {"content": "tru\n\n'))
                conn.write(b"0\r\n\r\n")
            else:
                bad = b'{"id": "chatcmpl-local", "choices": [{"message": {"content": "tru'
                conn.write(_head(200, "application/json", len(bad)) + bad)
            conn.done()
            return
        ans = _Answer(b, model, body)
        if not stream:
            data = ans.anthropic(model) if api == "anthropic" else ans.openai(model)
            if b.kind == "reset":
                conn.write(_head(200, "application/json", len(data)) + data[: b.after_chunks * 8])
                await asyncio.sleep(0.01)  # let the partial answer reach the client first
                conn.reset()
                return
            conn.write(_head(200, "application/json", len(data)) + data)
            conn.done()
            return
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        events = (
            ans.anthropic_events(model) if api == "anthropic" else ans.openai_events(model, include)
        )
        conn.write(_head(200, "text/event-stream", None))
        for i, ev in enumerate(events):
            if b.kind == "reset" and i >= b.after_chunks:
                await asyncio.sleep(0.01)
                conn.reset()
                return
            conn.write(_chunk(ev))
            if b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
        conn.write(b"0\r\n\r\n")
        conn.done()


def patch_registry(registry: Registry, url: str, *, drop_keys: bool = True) -> Registry:
    """A copy of `registry` whose deployments all point at the upstream at `url`.

    With `drop_keys`, deployments need no API key variable (nothing secret is needed).
    """
    from .registry import Registry

    models = []
    for m in registry:
        deps = tuple(
            replace(
                d,
                base_url=url + ("/v1" if d.api == "openai" else ""),
                api_key_env=None if drop_keys else d.api_key_env,
            )
            for d in m.deployments
        )
        models.append(replace(m, deployments=deps))
    return Registry(models, registry.meta)


def main(argv: list[str] | None = None) -> None:
    """Run a LocalUpstream in the foreground until stdin closes (for benchmarks)."""
    ap = argparse.ArgumentParser(prog="python -m satisfice.testing", description=main.__doc__)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args = ap.parse_args(argv)
    up = LocalUpstream(port=args.port, default=reply(latency=args.latency), record=False)
    with up:
        print(f"READY {up.url}", flush=True)
        sys.stdin.read()  # the parent closes stdin (or exits) to stop us


if __name__ == "__main__":
    main()
