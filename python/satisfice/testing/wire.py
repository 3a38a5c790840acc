"""The bytes the local upstream sends: OpenAI and Anthropic bodies, SSE events, errors."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

from .behaviors import Behavior

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


def signature(thinking: str) -> str:
    """The local upstream's signature of a thinking block: what it checks when the block
    comes back (as Anthropic's API does), so a block changed on the way fails."""
    return "sig-" + hashlib.sha256(thinking.encode()).hexdigest()[:32]


_REDACTED = "cmVkYWN0ZWQgdGhpbmtpbmc="  # a redacted_thinking block's (opaque) data


_ANTHROPIC_ID = re.compile(r"[A-Za-z0-9_-]+")
_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")


def mistral_refusal(body: dict[str, Any]) -> str | None:
    """Why Mistral's API would refuse `body` (sent to a model whose name says Mistral): a
    tool call's id that is not 9 letters and digits."""
    msgs = body.get("messages")
    if "mistral" not in str(body.get("model")).lower() or not isinstance(msgs, list):
        return None
    for m in msgs:
        if not isinstance(m, dict):
            continue
        ids = [c.get("id") for c in m.get("tool_calls") or () if isinstance(c, dict)]
        if m.get("role") == "tool":
            ids.append(m.get("tool_call_id"))
        for call_id in ids:
            if not _MISTRAL_ID.fullmatch(str(call_id)):
                return f"Tool call id was {call_id} but must be a-z, A-Z, 0-9, with a length of 9."
    return None


def openai_refusal(body: dict[str, Any]) -> str | None:
    """Why OpenAI's API would refuse `body`: on an OpenAI model a tool call id over 40
    characters; on a reasoning model (the o-series, gpt-5 but its -chat models) a stop
    sequence or a penalty at any effort, a temperature, top_p or
    logprobs but at an effort of none on gpt-5.1 and later (their default)."""
    model = str(body.get("model"))
    for m in body.get("messages") or () if re.match(r"(gpt-|chatgpt|o\d)", model) else ():
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        for c in calls if isinstance(calls, list) else ():
            if isinstance(c, dict) and len(str(c.get("id"))) > 40:
                return (
                    "Invalid 'tool_calls.id': string too long. Expected a string with "
                    "maximum length 40"
                )
    if not re.match(r"(o\d|gpt-5(?!(\.\d+)?-chat))", model):
        return None
    bad = [k for k in ("stop", "logit_bias") if body.get(k)]
    bad += [k for k in ("frequency_penalty", "presence_penalty") if body.get(k) not in (None, 0)]
    at_none = body.get("reasoning_effort") in (None, "none") and re.match(r"gpt-5\.[1-9]", model)
    if not at_none:
        bad += [k for k in ("temperature", "top_p") if body.get(k) not in (None, 1)]
        bad += [k for k in ("logprobs", "top_logprobs") if body.get(k) not in (None, False)]
    return f"Unsupported parameter: '{bad[0]}' is not supported with this model." if bad else None


def anthropic_refusal(body: dict[str, Any]) -> str | None:
    """Why Anthropic's API would refuse `body` for its thinking, if it would: thinking on,
    a tool loop whose assistant turn does not begin with its thinking; a thinking block
    whose signature does not match what it was given; thinking off, context editing that
    clears thinking."""
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        return None
    uses: set[Any] = set()
    for i, m in enumerate(msgs):
        blocks = m.get("content") if isinstance(m, dict) else None
        for b in blocks if isinstance(blocks, list) else ():
            if (
                isinstance(b, dict)
                and b.get("type") == "thinking"
                and b.get("signature") != signature(str(b.get("thinking")))
            ):
                return f"messages.{i}.content: Invalid `signature` in `thinking` block"
        for j, b in enumerate(blocks if isinstance(blocks, list) else ()):
            kind = b.get("type") if isinstance(b, dict) else None
            key = {"tool_use": "id", "tool_result": "tool_use_id"}.get(str(kind))
            if key is not None and not _ANTHROPIC_ID.fullmatch(str(b.get(key))):
                return (
                    f"messages.{i}.content.{j}.{b['type']}.{key}: String should match "
                    "pattern '^[a-zA-Z0-9_-]+$'"
                )
            if kind == "tool_use":
                if b.get("id") in uses:
                    return f"messages.{i}.content.{j}: `tool_use` ids must be unique"
                uses.add(b.get("id"))
    thinking = body.get("thinking")
    thinks = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    cm = body.get("context_management")
    edits = cm.get("edits") if isinstance(cm, dict) else None
    for e in edits if isinstance(edits, list) and not thinks else ():
        kind = str(e.get("type", "")) if isinstance(e, dict) else ""
        if kind.startswith("clear_thinking"):
            return f"`{kind}` strategy requires `thinking` to be enabled"
    if not thinks:
        return None
    last = next((m for m in reversed(msgs) if m.get("role") == "assistant"), None)
    blocks = last.get("content") if last is not None else None
    if (
        isinstance(blocks, list)
        and any(isinstance(b, dict) and b.get("type") == "tool_use" for b in blocks)
        and blocks[0].get("type") not in ("thinking", "redacted_thinking")
    ):
        return (
            "messages: Expected `thinking` or `redacted_thinking`, but found "
            f"`{blocks[0].get('type')}`. When `thinking` is enabled, a final `assistant` "
            "message must start with a thinking block"
        )
    return None


class _Answer:
    """The pieces of one scripted answer, rendered in either wire format."""

    __slots__ = (
        "cached", "edits", "forced_tool", "n_in", "n_out", "pieces", "search", "text", "thought",
        "tool", "usage",
    )  # fmt: skip

    def __init__(self, b: Behavior, model: str, body: dict[str, Any]) -> None:
        self.text = b.text if b.text is not None else f"answer from {model}"
        words = self.text.split(" ")
        self.pieces = [w + " " for w in words[:-1]] + [words[-1]]
        # thinking, when an Anthropic request asks for it: the block as the API gives it
        t = body.get("thinking")
        self.thought: dict[str, Any] | None = None
        if isinstance(t, dict) and t.get("type") in ("enabled", "adaptive"):
            said = b.thinking if b.thinking is not None else f"{model} thinks it over"
            self.thought = (
                {"type": "redacted_thinking", "data": _REDACTED} if said == "redacted" else
                {"type": "thinking", "thinking": said, "signature": signature(said)}
            )  # fmt: skip
        self.usage = b.usage is not False
        if isinstance(b.usage, tuple):
            self.n_in, self.n_out, self.cached = b.usage
        else:
            self.n_in = _words(body.get("messages")) + 1
            self.n_out, self.cached = len(words), 0
        self.tool = b.tool_call
        # Anthropic's web search server tool, when offered: one search, run "at Anthropic's
        # side", its result and the answer's citation of it, as the API gives them
        tools: list[Any] = body["tools"] if isinstance(body.get("tools"), list) else []
        searches = [t for t in tools if isinstance(t, dict) and str(t.get("type")).startswith(
            "web_search_")]  # fmt: skip
        self.search = searches[0] if searches else None
        # context editing asked of an Anthropic model: it says which edits it applied (none
        # here), as the real API does
        self.edits = "context_management" in body
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

    def _searched(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """The web search's blocks: its call, its result, and the text's citation of it."""
        assert self.search is not None
        use = {"type": "server_tool_use", "id": "srvtoolu_1", "name": self.search["name"],
               "input": {"query": "satisfice"}}  # fmt: skip
        result = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [
            {"type": "web_search_result", "url": "https://example.com/a", "title": "A",
             "encrypted_content": "EqgfCioIARgB", "page_age": None},
        ]}  # fmt: skip
        cite = {"type": "web_search_result_location", "url": "https://example.com/a",
                "title": "A", "encrypted_index": "Eo8BCioIAhgB",
                "cited_text": "a page"}  # fmt: skip
        return use, result, cite

    def anthropic(self, model: str) -> bytes:
        content: list[Any] = [self.thought] if self.thought else []
        if self.search is not None:
            use, result, cite = self._searched()
            content += [use, result, {"type": "text", "text": self.text, "citations": [cite]}]
        elif not self.forced_tool:
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
            if self.search is not None:
                out["usage"]["server_tool_use"] = {"web_search_requests": 1}
        if self.edits:
            out["context_management"] = {"applied_edits": []}
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
        t = self.thought
        if t is not None and t["type"] == "redacted_thinking":
            yield ev("content_block_start", index=0, content_block=t)
            yield ev("content_block_stop", index=0)
            idx = 1
        elif t is not None:
            start = {"type": "thinking", "thinking": "", "signature": ""}
            yield ev("content_block_start", index=0, content_block=start)
            words = t["thinking"].split(" ")
            for p in [w + " " for w in words[:-1]] + [words[-1]]:
                yield ev("content_block_delta", index=0,
                         delta={"type": "thinking_delta", "thinking": p})  # fmt: skip
            sig = {"type": "signature_delta", "signature": t["signature"]}
            yield ev("content_block_delta", index=0, delta=sig)
            yield ev("content_block_stop", index=0)
            idx = 1
        cite = None
        if self.search is not None:
            use, result, cite = self._searched()
            yield ev("content_block_start", index=idx, content_block={**use, "input": {}})
            query = json.dumps(use["input"])
            for part in (query[:5], query[5:]):
                yield ev("content_block_delta", index=idx,
                         delta={"type": "input_json_delta", "partial_json": part})  # fmt: skip
            yield ev("content_block_stop", index=idx)
            yield ev("content_block_start", index=idx + 1, content_block=result)
            yield ev("content_block_stop", index=idx + 1)
            idx += 2
        if not self.forced_tool or self.search is not None:
            yield ev("content_block_start", index=idx, content_block={"type": "text", "text": ""})
            yield ev("ping")
            if cite is not None:
                yield ev("content_block_delta", index=idx,
                         delta={"type": "citations_delta", "citation": cite})  # fmt: skip
            for p in self.pieces:
                yield ev("content_block_delta", index=idx, delta={"type": "text_delta", "text": p})
            yield ev("content_block_stop", index=idx)
            idx += 1
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
            if self.search is not None:
                delta["usage"]["server_tool_use"] = {"web_search_requests": 1}
        yield ev("message_delta", **delta)
        yield ev("message_stop")


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
