"""The two APIs the server speaks, translated to one routed request and back.

OpenAI Chat Completions: every parameter the official SDK sends is either carried to the
routed request or refused with a 400 that names it (satisfice routes across providers whose
APIs differ: a parameter only some of them honour would be silently dropped on the others).
satisfice's own constraints arrive as extra body fields (`extra_body=` in the SDK) or
`x-satisfice-*` headers. Anthropic Messages: translated to the same request, answered in
Anthropic's shape.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._extra import header_text, server_turns
from .._json import NON_FINITE, dumps
from ..errors import BadRequestError, InputError, quoted, quoted_names
from ..providers.anthropic import arguments_object, server_result, server_tool
from ..providers.base import thinking_blocks
from ..registry import EFFORTS

__all__ = [
    "Routed",
    "anthropic_request",
    "anthropic_response",
    "openai_request",
    "openai_response",
    "tool_input",
]

# Parameters carried to the routed request (each provider translates them).
_CALL = {
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "tools",
    "tool_choice",
    "response_format",
    "stop",
    "top_p",
}
# Accepted and used by the server itself.
_SERVER = {
    "model",
    "messages",
    "stream",
    "stream_options",
    "user",
    "prompt_cache_key",
    "metadata",
    "store",
    "n",
    "reasoning_effort",
}
# satisfice's constraints, as extra body fields.
_CONSTRAINTS = {
    "max_cost_usd",
    "latency_slo_ms",
    "quality_floor",
    "needs",
    "lam",
    "strict_floor",
    "reasoning",
    "max_reasoning_tokens",
    "allow",
    "deny",
    "timeout",
}

_OPENAI = frozenset(_CALL | _SERVER | _CONSTRAINTS | {"cascade"})  # what openai_request reads
# Parameters taken only at the value that changes nothing (the API's default, which clients
# and frameworks send explicitly: refused, such a client could not call at all). Any other
# value is refused with the rest.
_DEFAULTS: dict[str, Any] = {
    "parallel_tool_calls": True,
    "logprobs": False,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": {},
    "modalities": ["text"],
    "service_tier": "auto",  # (the API's default: the project's tier)
}


def _needs(v: str) -> list[str]:
    return [x.strip() for x in v.split(",") if x.strip()]


_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _number(v: str) -> float:
    """A header's number, written as JSON writes one (float() also took `1_0` as 10, and
    `nan`, `infinity`: a cost cap of 1_0 meant as 1.0 had let a request spend ten times)."""
    v = v.strip()
    if not _DECIMAL.fullmatch(v):
        raise ValueError(v)
    return float(v)


# header, the option it sets, how its value is read
_HEADER_CONSTRAINTS: tuple[tuple[str, str, Any], ...] = tuple(
    (f"x-satisfice-{h}", h.replace("-", "_"), conv)
    for h, conv in {
        "max-cost-usd": _number,
        "latency-slo-ms": _number,
        "quality-floor": _number,
        "needs": _needs,
    }.items()
)


@dataclass
class Routed:
    """One request as the router takes it."""

    messages: list[dict[str, Any]]
    model: str
    stream: bool = False
    include_usage: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # chat()/stream() options
    session: str | None = None
    metadata: dict[str, str] | None = None  # the caller's own (OpenAI's `metadata`): recorded
    # the request says how the model thinks (OpenAI's `reasoning_effort`, Anthropic's
    # `thinking` or `output_config.effort`): a model it names stands for its effort rows too
    efforts: bool = False


def _bad(msg: str) -> InputError:
    return InputError(msg)


def _cascade(body: Mapping[str, Any]) -> dict[str, Any]:
    """`"cascade": "auto"`: climb the policy's tuned ladder (checks run on the server).
    Null is not sent, as for every other parameter."""
    if body.get("cascade") is None:
        return {}
    if body["cascade"] != "auto":
        raise _bad(
            "'cascade' takes \"auto\" only over HTTP: the ladder `satisfice calibrate "
            "--strategy cascade` tuned into the server's policy (a custom ladder's checks are "
            "code, which only the Python API takes)"
        )
    if body.get("stream") is True:
        raise _bad("'cascade' answers are checked before one is returned: use stream=false")
    return {"cascade": "auto"}


def constraints_from(body: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {k: body[k] for k in _CONSTRAINTS & body.keys()}
    for h, k, conv in _HEADER_CONSTRAINTS:
        v = headers.get(h)
        if v is not None:
            try:
                out[k] = conv(v)
            except ValueError:
                raise _bad(f"header {h}: {v!r:.40} is not valid") from None
    return out


def _check_call(body: Mapping[str, Any]) -> None:
    """Types of the call parameters, checked here so none reaches a provider misread."""
    # (top_p is a probability mass: every API takes [0, 1]; a 1.5 had gone upstream, a 400)
    for k, most in (("temperature", 2), ("top_p", 1)):
        v = body.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)
                              or v != v or not 0 <= v <= most):  # fmt: skip
            raise _bad(f"'{k}' must be a number in [0, {most}], got {v!r:.40}")
    for k in ("max_tokens", "max_completion_tokens"):
        v = body.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 2**31):
            raise _bad(f"'{k}' must be a positive integer, got {v!r:.40}")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _bad("'stream' must be true or false")
    stop = body.get("stop", body.get("stop_sequences"))
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(x, str) for x in stop))
    ):
        raise _bad("'stop' must be a string or a list of strings")
    if body.get("tools") is not None and not (
        isinstance(body["tools"], list) and all(isinstance(t, Mapping) for t in body["tools"])
    ):
        raise _bad("'tools' must be a list of tool objects")


def session_key(raw: Any) -> str | None:
    """A session id as stored: its SHA-256 (any string, even lone surrogates, is a valid
    session; the store sees only hex)."""
    if raw is None or raw == "":
        return None
    import hashlib

    return hashlib.sha256(str(raw).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def openai_request(body: Any, headers: Mapping[str, str]) -> Routed:
    if not isinstance(body, Mapping):
        raise _bad("the request body must be a JSON object")
    cascade = _cascade(body)
    # a parameter sent as null is not sent, as OpenAI's API reads it (clients that write
    # every unset option as null: `seed`, `top_logprobs`, `service_tier` had been 400s)
    unknown = {
        k for k in body.keys() - _OPENAI
        if not (body[k] is None or (k in _DEFAULTS and _same(body[k], _DEFAULTS[k])))
    }  # fmt: skip
    if unknown:
        at = sorted(f"{k}: {json.dumps(v)}" for k, v in _DEFAULTS.items() if k in unknown)
        raise _bad(
            f"unsupported parameter(s) {quoted_names(unknown)}: satisfice routes across providers "
            "whose APIs differ, and these would be honoured by some and dropped by others; "
            f"remove them. Supported: {sorted(_CALL | _SERVER)}, and satisfice constraints "
            f"{sorted(_CONSTRAINTS)}"
            + (f"; taken only at their default ({', '.join(at)})" if at else "")
        )
    _check_call(body)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("'messages' must be a non-empty array of messages")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required: a model id from GET /v1/models, or 'auto'")
    n = body.get("n", 1)
    if n is not None and (type(n) is not int or n != 1):  # (true == 1 had passed)
        raise _bad("'n' must be 1: satisfice returns one routed answer per request")
    if body.get("store") is not None and body.get("store") is not False:
        raise _bad(
            "'store' must be false or left out: satisfice does not ask a provider to keep "
            "the completion (its own ledger records every request: [ledger] in the config)"
        )
    opts: dict[str, Any] = {}
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        # as OpenAI's API refuses them: the first had been dropped without a word
        raise _bad(
            "'max_tokens' and 'max_completion_tokens' cannot both be set: send one "
            "('max_completion_tokens' bounds the reasoning and the answer together)"
        )
    mt = body.get("max_completion_tokens", body.get("max_tokens"))
    if mt is not None:
        opts["max_tokens"] = mt
    if body.get("max_completion_tokens") is not None:
        # OpenAI's limit on the reasoning and the answer together: a Claude row's thinking
        # budget is sent within it, not on top of it
        opts["output_includes_thinking"] = True
    for k in ("temperature", "tools", "tool_choice", "response_format"):
        if body.get(k) is not None:
            opts[k] = body[k]
    extra = {k: body[k] for k in ("stop", "top_p") if body.get(k) is not None}
    if extra:
        opts["extra"] = extra
    opts.update(constraints_from(body, headers))
    effort = body.get("reasoning_effort")
    if effort is not None:  # the rows of that effort, which send it
        if effort not in EFFORTS:
            raise _bad(f"'reasoning_effort' must be one of {list(EFFORTS)}")
        _reasoning(opts, {"reasoning": effort}, "reasoning_effort")
    opts.update(cascade)
    so = body.get("stream_options")
    if so is not None:
        if not body.get("stream"):
            # as OpenAI's API refuses it (it had been taken, and ignored, without a word)
            raise _bad("'stream_options' is only allowed with \"stream\": true")
        # as OpenAI's API checks it: "include_usage": "no" had been read as true
        if not isinstance(so, Mapping) or set(so) - {"include_usage", "include_obfuscation"}:
            raise _bad("'stream_options' must be an object with 'include_usage' (and "
                       "'include_obfuscation')")  # fmt: skip
        for k, v in so.items():
            if v is not None and not isinstance(v, bool):
                raise _bad(f"'stream_options.{k}' must be true or false")
    for k in ("user", "prompt_cache_key"):  # sent on where they are taken (see ChatRequest)
        v = body.get(k)
        if v is not None and not isinstance(v, str):
            raise _bad(f"'{k}' must be a string")
        if v:
            opts[k] = v
    session = headers.get("x-satisfice-session") or opts.get("prompt_cache_key") or opts.get("user")
    return Routed(
        messages=list(msgs),
        model=model,
        stream=body.get("stream") is True,
        include_usage=so is not None and so.get("include_usage") is True,
        options=opts,
        session=session_key(session),
        metadata=_metadata(body.get("metadata")),
        efforts=effort is not None,
    )


def _reasoning(opts: dict[str, Any], asked: Mapping[str, Any], field: str) -> None:
    """`asked` (reasoning constraints a request's own field says) into `opts`, unless the
    request's satisfice constraints say otherwise: then a 400 naming both."""
    for k, v in asked.items():
        if opts.get(k, v) != v:
            raise _bad(f"'{field}' asks {k}={v!r} and the request's '{k}' {opts[k]!r}; "
                       "send one of them")  # fmt: skip
        opts[k] = v


def _thinking(t: Any) -> dict[str, Any]:
    """Anthropic's `thinking` as reasoning constraints: "adaptive" (what coding agents send
    by default) leaves the effort to routing, as the model would choose its own; "enabled"
    asks for rows that think, within `budget_tokens` (rows expecting more are left out);
    "disabled" for rows that do not."""
    if t is None:
        return {}
    if not isinstance(t, Mapping) or set(t) - {"type", "budget_tokens", "display"}:
        raise _bad("'thinking' must be an object: {\"type\": \"adaptive\"}, {\"type\": "
                   "\"disabled\"} or {\"type\": \"enabled\", \"budget_tokens\": N}")  # fmt: skip
    kind = t.get("type")
    if kind == "adaptive":
        return {}
    if kind == "disabled":
        return {"reasoning": "none"}
    if kind == "enabled":
        b = t.get("budget_tokens")
        if isinstance(b, bool) or not isinstance(b, int) or not 0 < b < 2**31:
            raise _bad("'thinking.budget_tokens' must be a positive integer")
        return {"reasoning": "on", "max_reasoning_tokens": b}
    raise _bad("'thinking.type' must be 'adaptive', 'enabled' or 'disabled'")


def _unthought_loop(messages: list[Any]) -> bool:
    """Whether the conversation is a tool loop whose last assistant turn, a tool call, does
    not begin with thinking (a model without thinking made it)."""
    last = next(
        (m for m in reversed(messages) if isinstance(m, Mapping) and m.get("role") == "assistant"),
        None,
    )
    blocks = last.get("content") if last is not None else None
    if not isinstance(blocks, list) or not blocks:
        return False
    calls = any(isinstance(b, Mapping) and b.get("type") == "tool_use" for b in blocks)
    return calls and not _is_thinking(blocks[0])


#: Anthropic's effort levels (`output_config.effort`), each one of the router's.
_ANTHROPIC_EFFORTS = ("low", "medium", "high", "xhigh", "max")


def _output_config(oc: Any) -> tuple[str | None, dict[str, Any] | None]:
    """Anthropic's `output_config`: its `effort` (how much the model spends, thinking
    included) as the (model, effort) rows of that effort, and its `format` (a JSON schema
    the answer follows) as `response_format`."""
    if oc is None:
        return None, None
    if not isinstance(oc, Mapping) or set(oc) - {"effort", "format"}:
        raise _bad("'output_config' must be an object with 'effort' and/or 'format'")
    effort = oc.get("effort")
    if effort is not None and effort not in _ANTHROPIC_EFFORTS:
        # (the value is not quoted back: a field that takes one of five words may hold
        # anything, a key pasted in the wrong place too)
        raise _bad(f"'output_config.effort' must be one of {list(_ANTHROPIC_EFFORTS)}")
    fmt = oc.get("format")
    if fmt is None:
        return effort, None
    if (
        not isinstance(fmt, Mapping)
        or fmt.get("type") != "json_schema"
        or not isinstance(fmt.get("schema"), Mapping)
    ):
        raise _bad('\'output_config.format\' must be {"type": "json_schema", "schema": {...}}')
    return effort, {"type": "json_schema",
                    "json_schema": {"name": "output", "schema": dict(fmt["schema"])}}  # fmt: skip


def _same(v: Any, default: Any) -> bool:
    """`v` is `default` as JSON says it (1 is not true, nor 0.0 false)."""
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (v, default))
    return (numbers or type(v) is type(default)) and v == default


def _metadata(m: Any) -> dict[str, str] | None:
    """OpenAI's `metadata` (at most 16 string pairs, keys to 64 characters, values to
    512), kept in the request's record under `caller`; it had been accepted and dropped."""
    if m is None:
        return None
    if not isinstance(m, Mapping) or len(m) > 16 or not all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
        for k, v in m.items()
    ):  # fmt: skip
        raise _bad(
            "'metadata' must be an object of at most 16 string values (keys up to 64 "
            "characters, values up to 512)"
        )
    return dict(m) if m else None


def decision_field(res: Any) -> dict[str, Any]:
    d = res.decision
    return {
        "request_id": res.request_id,
        "model": res.model,
        "deployment": res.deployment,
        "routed_to": d.model,
        "why": d.reasons(),
        "est_cost_usd": d.est_cost_usd,
        "cost_usd": res.total_cost_usd,
        "cost_estimated": any(a.cost_estimated for a in res.attempts),
        "attempts": [
            {
                "model": a.model,
                "deployment": a.deployment,
                "outcome": a.outcome,
                "error_type": a.error_type,
                "status": a.status,
            }
            for a in res.attempts
        ],
        # cascade="auto": the ladder's steps (models, checks' verdicts, cost), or why not
        "cascade": None if res.cascade is None else res.cascade.to_dict(),
        "cascade_skipped": res.cascade_skipped,
    }


def openai_usage(u: Any) -> dict[str, Any]:
    """OpenAI's usage object, with the cached prompt tokens, prompt-cache writes and
    reasoning tokens it details (what the bill was made of: they were left out)."""
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": u.cached_tokens,
            "cache_write_tokens": u.cache_write_tokens + u.cache_write_1h_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def openai_tool_call(c: Any) -> dict[str, Any]:
    """A tool call in OpenAI's shape: a function's JSON arguments, a custom tool's input."""
    if c.type == "custom":
        return {"id": c.id, "type": "custom", "custom": {"name": c.name, "input": c.arguments}}
    return {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}


def openai_response(res: Any, *, with_decision: bool = True) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": res.text, "refusal": res.refusal}
    if res.tool_calls:
        msg["tool_calls"] = [openai_tool_call(c) for c in res.tool_calls]
    if res.thinking:  # a Claude model's, to send back on this message (ChatResult.thinking)
        msg["thinking_blocks"] = res.thinking
        # and its text, as the gateways that pass thinking on say it (streamed alike)
        msg["reasoning_content"] = reasoning_text(res.thinking)
    if not res.text and (res.tool_calls or res.refusal):
        msg["content"] = None
    u = res.usage
    out = {
        "id": f"chatcmpl-{res.request_id}",
        "object": "chat.completion",
        "created": int(res.started_at),
        "model": res.model,
        "choices": [
            {
                "index": 0,
                "message": msg,
                "finish_reason": openai_finish(res),
                "logprobs": None,
            }
        ],
        "usage": openai_usage(u),
    }
    if with_decision:
        out["satisfice"] = decision_field(res)
    return out


#: The finish reasons OpenAI's API gives, the only ones its SDKs' types take.
_OPENAI_FINISH = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


def openai_finish(res: Any) -> str:
    """OpenAI's finish_reason for a result: the upstream's when OpenAI's API could give it,
    else "stop". An upstream's own reason (Anthropic's `pause_turn` or one newer than
    satisfice, an OpenAI-compatible API's `eos` or `error`) had been passed on as it came,
    which the `openai` SDK's types refuse."""
    f = res.finish_reason or "stop"
    if f == "model_length":  # Mistral's: the context window cut the answer, OpenAI's length
        return "length"
    return f if f in _OPENAI_FINISH else "stop"


def reasoning_text(thinking: list[dict[str, Any]]) -> str:
    """Thinking blocks' text, a paragraph each (each block was scrubbed of keys alone: run
    together, a key an upstream split between two would be whole again)."""
    return "\n\n".join(b["thinking"] for b in thinking if b["type"] == "thinking")


def openai_chunk(
    rid: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None
) -> bytes:
    c = {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return b"data: " + dumps(c) + b"\n\n"


def sse_data(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def header_value(s: str) -> str:
    """A model id or deployment name as a header's value: as it is when printable ASCII
    without `%`, else percent-encoded as UTF-8 (a registry may name a model `模型`, which
    the Latin-1 of headers cannot carry: the answer, called and billed, had been a 500)."""
    if s.isascii() and s.isprintable() and "%" not in s:
        return s
    from urllib.parse import quote

    return quote(s, safe="")


#: The headers an answer's request id goes out in: satisfice's own, and those the `openai`
#: and `anthropic` SDKs read it from (`_request_id`, an error's `request_id`).
ID_HEADERS = ("x-satisfice-request-id", "x-request-id", "request-id")


def id_headers(rid: str) -> dict[str, str]:
    return dict.fromkeys(ID_HEADERS, rid)


def headers_of(res: Any) -> list[tuple[bytes, bytes]]:
    """The decision's `x-satisfice-*` headers of an answer, as the bytes they are sent as."""
    cost, est = res.total_cost_usd, res.decision.est_cost_usd
    rid = res.request_id.encode("latin-1")
    return [
        *((name.encode(), rid) for name in ID_HEADERS),
        (b"x-satisfice-model", header_value(res.model).encode()),
        (b"x-satisfice-deployment", header_value(res.deployment).encode()),
        (b"x-satisfice-routed-to", header_value(res.decision.model).encode()),
        (b"x-satisfice-est-cost-usd", b"unpriced" if est is None else b"%.8f" % est),
        (b"x-satisfice-cost-usd", b"unpriced" if cost is None else b"%.8f" % cost),
        (b"x-satisfice-attempts", b"%d" % len(res.attempts)),
    ]


# -- Anthropic Messages -----------------------------------------------------------------------

_ANTHROPIC = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "tools",
    "tool_choice",
    "stream",
    "metadata",
    "thinking",
    "output_config",
    "context_management",
    "cache_control",
}
#: Messages parameters at their default, which change nothing (an SDK may send them), taken
#: as /v1/chat/completions takes its `_DEFAULTS`; any other value is refused.
_ANTHROPIC_DEFAULTS: dict[str, Any] = {"service_tier": "auto", "speed": "standard"}
_STOP = {
    "pause_turn": "pause_turn",  # a server tool's long turn, to be sent back to go on
    "stop": "end_turn",
    "length": "max_tokens",
    "model_length": "max_tokens",  # Mistral's: the context window cut the answer
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


def _text_part(b: Mapping[str, Any]) -> dict[str, Any]:
    """A text block as an OpenAI text part, its prompt-cache mark kept (it was dropped, and
    Anthropic callers lost prompt caching)."""
    text = b.get("text")
    if not isinstance(text, str):  # as Anthropic's API refuses it: str() had sent "None"
        raise _bad(f"a text block's 'text' must be a string, got {type(text).__name__}")
    part: dict[str, Any] = {"type": "text", "text": text}
    if isinstance(b.get("cache_control"), Mapping):
        part["cache_control"] = dict(b["cache_control"])
    return part


def _to_openai_content(content: Any) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad("message content must be a string or an array of blocks")
    parts: list[dict[str, Any]] = []
    for b in content:
        if not isinstance(b, Mapping):
            raise _bad("content blocks must be objects")
        if b.get("type") == "text":
            parts.append(_text_part(b))
        elif b.get("type") == "image" and isinstance(b.get("source"), Mapping):
            src = b["source"]
            if src.get("type") == "base64" and isinstance(src.get("data"), str):
                url = f"data:{src.get('media_type')};base64,{src['data']}"
            elif src.get("type") == "url" and isinstance(src.get("url"), str):
                url = src["url"]
            else:  # a file id or anything else: no routed provider can fetch it (was "None")
                raise _bad(
                    f"image source type {src.get('type')!r} is not supported: send the image "
                    "as base64 data or a URL"
                )
            part: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
            if isinstance(b.get("cache_control"), Mapping):  # kept, as on a text block
                part["cache_control"] = dict(b["cache_control"])
            parts.append(part)
        else:
            raise _bad(f"content block type {quoted(b.get('type'), 60)} is not supported here")
    return parts


def anthropic_request(body: Any, headers: Mapping[str, str]) -> Routed:
    """Anthropic Messages to one routed request; any shape it cannot read is a 400."""
    try:
        return _anthropic_request(body, headers)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise _bad(f"the request is not a valid Messages request ({type(e).__name__}: {e})"
                   [:300]) from None  # fmt: skip


def _anthropic_request(body: Any, headers: Mapping[str, str]) -> Routed:
    if not isinstance(body, Mapping):
        raise _bad("the request body must be a JSON object")
    cascade = _cascade(body)
    _check_call(body)
    system = body.get("system")
    if system is not None and not (isinstance(system, str) or (
        isinstance(system, list) and all(isinstance(b, Mapping) for b in system)
    )):  # fmt: skip
        raise _bad("'system' must be a string or a list of text blocks")
    if isinstance(system, list) and any(b.get("type") != "text" for b in system):
        raise _bad("'system' blocks must be text blocks (an image or another block would be lost)")
    tools_in = body.get("tools") or []
    if not isinstance(tools_in, list):
        raise _bad("'tools' must be an array of tool definitions")
    for t in tools_in:
        if not isinstance(t, Mapping) or not isinstance(t.get("name"), str):
            raise _bad("each tool needs a string 'name'")
        if t.get("type") not in (None, "custom") and not server_tool(t):
            # another of Anthropic's own tools (code execution, bash, computer use, ...):
            # a routed model would be offered a client tool of that name with no schema
            raise _bad(
                f"tool type {t.get('type')!r} ({t['name']!r}) is one of Anthropic's own "
                "tools, which routed providers do not run (web_search and web_fetch are "
                "carried, to Claude models); define it as a custom tool with an input_schema"
            )
    tc_in = body.get("tool_choice")
    if isinstance(tc_in, Mapping) and tc_in.get("disable_parallel_tool_use"):
        raise _bad(
            "'tool_choice.disable_parallel_tool_use' is not supported: not every routed "
            "provider can turn parallel tool calls off; remove it"
        )
    unknown = {
        k for k in set(body) - _ANTHROPIC - _CONSTRAINTS - {"cascade"}
        if not (k in _ANTHROPIC_DEFAULTS and (body[k] is None
                                             or _same(body[k], _ANTHROPIC_DEFAULTS[k])))
    }  # fmt: skip
    if unknown:
        at = sorted(f"{k}: {json.dumps(v)}" for k, v in _ANTHROPIC_DEFAULTS.items() if k in unknown)
        at_default = f" (taken only at their default: {', '.join(at)})" if at else ""
        raise _bad(f"unsupported parameter(s) {quoted_names(unknown)}; remove them{at_default}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required")
    mt = body.get("max_tokens")
    if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
        raise _bad("'max_tokens' is required: an integer >= 1")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("'messages' must be a non-empty array")
    if body.get("cache_control") is not None:
        raw = _cached_last(raw, body["cache_control"])
    msgs: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        msgs.append({
            "role": "system",
            "content": system if isinstance(system, str) else [_text_part(b) for b in system],
        })  # fmt: skip
    for i, m in enumerate(raw):
        if not isinstance(m, Mapping) or m.get("role") not in ("user", "assistant"):
            raise _bad("each message needs role 'user' or 'assistant'")
        content = m.get("content")
        if (
            m["role"] == "assistant"
            and isinstance(content, list)
            and any(server_block(b) for b in content)
        ):  # a turn in which Anthropic ran a server tool: sent back to it as it came
            msgs.append(_searched_turn(content, i))
            continue
        runs: list[tuple[list[dict[str, Any]] | None, Any]] = [(None, content)]
        if m["role"] == "assistant" and isinstance(content, list):
            runs = _runs(content, i)  # the model's thinking apart, in its order
        for thought, content in runs:
            if isinstance(content, list) and any(
                isinstance(b, Mapping) and b.get("type") in ("tool_use", "tool_result")
                for b in content
            ):
                msgs.extend(_tool_blocks(m["role"], content))
            else:
                msgs.append({"role": m["role"], "content": _to_openai_content(content)})
            if thought:
                msgs[-1]["thinking_blocks"] = thought
    # Anthropic's max_tokens holds the thinking and the answer together: a row's thinking
    # budget is sent within it (on top, 32,000 had gone out as 34,048, and 64,000 with
    # thinking on Claude Haiku 4.5 was refused though Anthropic takes it)
    opts: dict[str, Any] = {"max_tokens": mt, "output_includes_thinking": True}
    if body.get("temperature") is not None:
        opts["temperature"] = body["temperature"]
    extra = {}
    if body.get("top_p") is not None:
        extra["top_p"] = body["top_p"]
    if body.get("stop_sequences"):
        stop = body["stop_sequences"]
        if not isinstance(stop, list):
            raise _bad("'stop_sequences' must be a list of strings")
        extra["stop"] = list(stop)
    if body.get("top_k") is not None:
        raise _bad("'top_k' is not supported: not every routed provider has it; remove it")
    if extra:
        opts["extra"] = extra
    tools = [t for t in body.get("tools") or () if not server_tool(t)]
    if tools:
        opts["tools"] = [_function_tool(t) for t in tools]
    server = [dict(t) for t in body.get("tools") or () if server_tool(t)]
    # a conversation that ends on the assistant's turn is Anthropic's prefill, which the
    # answer continues: no OpenAI-style API continues it (an OpenAI model had answered
    # anew, the caller's prefill and answer then broken)
    prefill = bool(msgs) and isinstance(msgs[-1], Mapping) and msgs[-1].get("role") == "assistant"
    if server or server_turns(msgs) or prefill:
        # run at Anthropic's side (or, none offered now, run in a turn sent back), or a
        # prefill: routed to Claude models alone
        opts["server_tools"] = server
    tc = body.get("tool_choice")
    if tc is not None:
        # Anthropic's shape, checked: a string or an unknown type had been read as "auto",
        # a tool choice naming no tool sent the name None
        kind = tc.get("type") if isinstance(tc, Mapping) else None
        name = tc.get("name") if isinstance(tc, Mapping) else None
        if kind not in ("auto", "any", "tool", "none") or (
            kind == "tool" and (not isinstance(name, str) or not name)
        ):
            raise _bad(
                '\'tool_choice\' must be an object: {"type": "auto"}, {"type": "any"}, '
                f'{{"type": "none"}} or {{"type": "tool", "name": ...}}; got {tc!r:.80}'
            )
        if kind in ("any", "tool") and not tools:  # said in this API's own words
            raise _bad(f"'tool_choice' {kind!r} needs 'tools'")
        # one naming a tool `tools` does not define is the router's refusal, as on
        # /v1/chat/completions (`router._check_tool_choice`)
        if tools or kind not in ("auto", "none"):  # without tools these two say nothing
            opts["tool_choice"] = {
                "tool": {"type": "function", "function": {"name": name}},
                "any": "required",
                "none": "none",
                "auto": "auto",
            }[kind]
    opts.update(constraints_from(body, headers))
    thinking = _thinking(body.get("thinking"))  # an object, if given
    display = body["thinking"].get("display") if body.get("thinking") is not None else None
    if display is not None:  # sent on with the thinking (it had been read and dropped)
        if display not in ("summarized", "omitted"):
            raise _bad("'thinking.display' must be 'summarized' or 'omitted'")
        opts["thinking_display"] = display
    effort, fmt = _output_config(body.get("output_config"))
    if effort is not None and thinking.get("reasoning") != "none":
        # more precise than "on": the rows of that effort (thinking disabled keeps the rows
        # that do not think, which no effort row is)
        thinking = {**thinking, "reasoning": effort}
        if body.get("thinking") is None:
            # an effort without thinking (Anthropic's default is none): a Claude row is sent
            # the effort alone (the row's thinking had been sent too: the answer began with
            # a thinking block, and the caller paid for thinking it did not ask for)
            opts["no_thinking"] = True
    asked = body.get("thinking") is not None
    if asked and thinking.get("reasoning") != "none" and _unthought_loop(raw):
        # another model made the last call (no thinking to send back): a Claude model
        # that thinks cannot take this turn (Anthropic refuses it; it had been a 400), its
        # row without thinking can. This turn is answered without thinking; the next,
        # after a call made thinking, thinks again
        thinking = {"reasoning": "none"}
    _reasoning(opts, thinking, "thinking and output_config.effort")
    if fmt is not None:
        if "response_format" in opts or tools or "server_tools" in opts:
            raise _bad("'output_config.format' cannot be combined with tools")
        opts["response_format"] = fmt
    cm = body.get("context_management")
    if cm is not None:  # applied by Anthropic deployments, which alone have it
        if not isinstance(cm, Mapping):
            raise _bad("'context_management' must be an object")
        if cm:
            opts["context_management"] = dict(cm)
    opts.update(cascade)
    meta = body.get("metadata")
    if meta is None:
        meta = {}
    elif not isinstance(meta, Mapping) or set(meta) - {"user_id"}:
        # as Anthropic's API answers it (an unknown key had been dropped, a string ignored)
        raise _bad("'metadata' must be an object whose only field is 'user_id' (a string)")
    user = meta.get("user_id")
    if user is not None and not isinstance(user, str):
        raise _bad("'metadata.user_id' must be a string")
    if isinstance(user, str) and user:  # sent on as the end user's id (see ChatRequest)
        opts["user"] = user
    beta = headers.get("anthropic-beta")
    if beta:  # Anthropic's features in beta: sent on to Anthropic deployments
        if not header_text(beta):  # checked as the library checks it, said in its words
            # (its bound said too: betas past it, all ASCII, had been told to be ASCII)
            raise _bad("the anthropic-beta header must be ASCII text (beta names, commas), "
                       "up to 8,192 characters over all its headers")  # fmt: skip
        opts["anthropic_beta"] = beta
    session = headers.get("x-satisfice-session") or user
    return Routed(msgs, model, body.get("stream") is True, False, opts, session_key(session),
                  efforts=body.get("thinking") is not None or effort is not None)  # fmt: skip


def _cached_last(raw: list[Any], cc: Any) -> list[Any]:
    """The messages with Anthropic's top-level `cache_control` (automatic prompt caching:
    a cache breakpoint on the last cacheable block) set on the last message's last block,
    and then carried, priced and sent on as a mark the caller set there would be (it had
    been a 400)."""
    if not isinstance(cc, Mapping) or cc.get("type") != "ephemeral":
        raise _bad("'cache_control' must be {\"type\": \"ephemeral\"}, with an optional 'ttl'")
    last = raw[-1]
    if not isinstance(last, Mapping):
        return raw  # refused where the messages are read
    content = last.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content or not isinstance(content[-1], Mapping):
        return raw  # (as above)
    if content[-1].get("cache_control") is not None:  # marked there already
        return raw
    marked = [*content[:-1], {**content[-1], "cache_control": dict(cc)}]
    return [*raw[:-1], {**last, "content": marked}]


#: The Messages fields a count_tokens body holds too (it has `mcp_servers` besides).
_COUNTED = frozenset({
    "model", "messages", "system", "tools", "tool_choice", "thinking", "output_config",
    "context_management", "cache_control",
})  # fmt: skip


def anthropic_count_request(body: Any, headers: Mapping[str, str]) -> Routed:
    """An Anthropic `messages/count_tokens` body as the request /v1/messages would route
    (its model, messages, system, tools, tool_choice and thinking, read and checked the
    same way); a call's own fields (max_tokens, stream, sampling) are a 400, as Anthropic's
    API answers them, and so are MCP servers, which run at Anthropic's side."""
    if not isinstance(body, Mapping):
        raise _bad("the request body must be a JSON object")
    called = sorted(set(body) & (_ANTHROPIC - _COUNTED))
    if called:
        raise _bad(f"{called} are a call's fields, not count_tokens'; remove them")
    if body.get("mcp_servers"):
        raise _bad("'mcp_servers' run at Anthropic's side, which routed providers do not "
                   "reach; remove them")  # fmt: skip
    fields = {k: v for k, v in body.items() if k != "mcp_servers"}
    routed = anthropic_request({**fields, "max_tokens": 1}, headers)  # (1: read, then left out)
    # no max_tokens: routed with the expected output, as the turn would be without one
    del routed.options["max_tokens"]
    return routed


#: A custom tool's fields that every routed provider's tool can carry.
_TOOL_FIELDS = frozenset({"type", "name", "description", "input_schema", "cache_control", "strict"})


def _function_tool(t: Mapping[str, Any]) -> dict[str, Any]:
    """An Anthropic custom tool as an OpenAI function tool, its prompt-cache mark kept
    (an Anthropic upstream sends it on; an OpenAI one leaves it out) and `strict` too (both
    APIs have it: the model's input then follows the schema); a field only Anthropic's API
    reads is refused, as no other provider would honour it (it had been dropped)."""
    if odd := sorted(set(t) - _TOOL_FIELDS):
        raise _bad(
            f"tool {t['name']!r}: field(s) {odd} are not supported: a tool here must suit "
            "every model the request may be routed to; remove them"
        )
    fn: dict[str, Any] = {
        "name": t["name"],
        "description": t.get("description", ""),
        "parameters": t.get("input_schema", {}),
    }
    strict = t.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise _bad(f"tool {t['name']!r}: 'strict' must be true or false")
        fn["strict"] = strict
    out: dict[str, Any] = {"type": "function", "function": fn}
    if isinstance(t.get("cache_control"), Mapping):
        out["cache_control"] = dict(t["cache_control"])
    return out


def _is_thinking(block: Any) -> bool:
    return isinstance(block, Mapping) and block.get("type") in ("thinking", "redacted_thinking")


def _searched_turn(content: list[Any], i: int) -> dict[str, Any]:
    """An assistant turn in which Anthropic ran a server tool (a web search's call and
    result, the text citing it): its blocks as they came (`anthropic_content`), which only
    Anthropic's API reads, so the request routes to Claude models alone."""
    for b in content:
        if not isinstance(b, Mapping):
            raise _bad(f"messages[{i}].content: content blocks must be objects")
        if b.get("type") == "tool_use":
            raise _bad(
                f"messages[{i}]: a turn with a server tool's blocks and a tool call of yours "
                "is not carried; send the tool call in a turn of its own"
            )
    return {"role": "assistant", "content": "", "anthropic_content": [dict(b) for b in content]}


def _runs(content: list[Any], i: int) -> list[tuple[list[dict[str, Any]] | None, Any]]:
    """An assistant turn as (its thinking, the blocks after it) runs, in its order: the
    thinking, checked, becomes a message's `thinking_blocks`, which a Claude model that
    thinks is sent back first in that message (its tool loop needs them, signed and in the
    order it wrote them), and another model, which cannot read them, is not. A turn whose
    thinking comes after text or a tool call (interleaved) is several messages, which the
    Anthropic wire joins into one turn again."""
    if not any(_is_thinking(b) for b in content):
        return [(None, content)]
    runs: list[tuple[list[Any], list[Any]]] = [([], [])]
    for b in content:
        if _is_thinking(b):
            if runs[-1][1]:  # after text or a tool call: a run of its own
                runs.append(([], []))
            runs[-1][0].append(dict(b))
        else:
            runs[-1][1].append(b)
    try:
        return [
            (thinking_blocks(t, f"messages[{i}].content") if t else None, rest) for t, rest in runs
        ]
    except BadRequestError as e:
        raise _bad(str(e)) from None


def _tool_blocks(role: str, content: list[Any]) -> list[dict[str, Any]]:
    """A message with tool_use or tool_result blocks, as OpenAI-shaped messages. Every block
    is carried over or refused (400): none is dropped silently (an assistant's thinking is
    taken out before, `_runs`). Texts
    stay apart (they had been run together), and prompt-cache marks and `is_error` are
    kept, for an Anthropic upstream to send on (they had been dropped: an agent loop that
    marks its last tool result for the cache never hit it); an OpenAI upstream is sent
    what its API reads (`providers.openai`)."""
    out: list[dict[str, Any]] = []
    if role == "assistant":
        texts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        for b in content:
            kind = b.get("type") if isinstance(b, Mapping) else None
            if kind == "text":
                texts.append(_text_part(b))
            elif kind == "tool_use":
                # as written: \u escapes had sent an OpenAI model several times the tokens
                # of its own call (and counted them so for a Claude one)
                try:  # (NaN and ±inf, which a body's 1e999 or NaN reads as, refused:
                    # written `Infinity`, they had reached the upstream in the arguments)
                    args = json.dumps(b.get("input", {}), ensure_ascii=False, allow_nan=False)
                except ValueError:
                    raise _bad(f"messages: a tool_use input holds {NON_FINITE}") from None
                call = {"id": b["id"], "type": "function",
                        "function": {"name": b["name"], "arguments": args}}  # fmt: skip
                if isinstance(b.get("cache_control"), Mapping):
                    call["cache_control"] = dict(b["cache_control"])
                calls.append(call)
            else:
                raise _bad(
                    f"assistant content block type {quoted(kind, 60)} is not supported "
                    "beside tool_use"
                )
        out.append({"role": "assistant", "content": _texts(texts), "tool_calls": calls})
        return out
    rest: list[Any] = []  # the user's own blocks (text, images): one user message after
    for b in content:
        if not isinstance(b, Mapping):
            raise _bad("content blocks must be objects")
        if b.get("type") != "tool_result":
            rest.append(b)
            continue
        use_id = b.get("tool_use_id")
        if not isinstance(use_id, str) or not use_id:  # said in this API's words
            raise _bad("each tool_result needs a 'tool_use_id': the id of the tool_use it answers")
        c = b.get("content")
        parts = [{"type": "text", "text": c}] if isinstance(c, str) else (
            [] if c is None else _to_openai_content(c)
        )  # fmt: skip
        # text alone as a string; with images (Claude Code's Read of a screenshot), the
        # parts: Anthropic's API takes them in the result, an OpenAI model is sent them
        # after the turn's results (`providers.openai`); it had been a 400
        if any(p["type"] != "text" for p in parts):
            # the parts, empty texts left out as `_texts` leaves them (Anthropic refuses them)
            said: Any = [p for p in parts if p["type"] != "text" or p["text"]]
        else:
            said = _texts(parts) or ""
        msg: dict[str, Any] = {"role": "tool", "tool_call_id": use_id, "content": said}
        if isinstance(b.get("cache_control"), Mapping):  # the result's own mark, on it
            msg["cache_control"] = dict(b["cache_control"])
        if b.get("is_error") is True:
            msg["is_error"] = True
        out.append(msg)
    if rest:
        out.append({"role": "user", "content": _to_openai_content(rest)})
    return out


def _texts(parts: list[dict[str, Any]]) -> Any:
    """Text parts as a message's content: the one text as a string when it has no mark (the
    shape every OpenAI-compatible host takes), else the parts; None for none. Empty texts
    are left out: Anthropic's API refuses an empty text block, and a cache mark on one."""
    parts = [p for p in parts if p["text"]]
    if not parts:
        return None
    if len(parts) == 1 and "cache_control" not in parts[0]:
        return parts[0]["text"]
    return parts


def anthropic_response(res: Any) -> dict[str, Any]:
    # the model's thinking and text in the order it gave them; a refusal is text in
    # Anthropic's shape (stop "refusal"), a block of its own beside the answer's text (it
    # had been lost where both came)
    raw = res.raw.get("content") if isinstance(res.raw, Mapping) else None
    if isinstance(raw, list) and any(server_block(b) or _cites(b) for b in raw):
        # a server tool's call and result beside the text that cites them (or, a paused
        # turn's continuation, the citing text alone): the content as the (Anthropic)
        # upstream gave it, scrubbed as it was read (base.parse_json)
        blocks = [dict(b) for b in raw]
    else:
        blocks = _said(res) + [{"type": "text", "text": t} for t in (res.refusal,) if t]
        for c in res.tool_calls:
            blocks.append(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(c.arguments)}
            )
    return {
        "id": f"msg_{res.request_id}",
        "type": "message",
        "role": "assistant",
        "model": res.model,
        "content": blocks or [{"type": "text", "text": ""}],
        "stop_reason": anthropic_stop(res),
        "stop_sequence": res.stop_sequence,
        "usage": anthropic_usage(res.usage),
        "satisfice": decision_field(res),
        **_context_edits(res),
    }


def _cites(b: Any) -> bool:
    """A text block with citations (of a search's results)."""
    return isinstance(b, Mapping) and b.get("type") == "text" and bool(b.get("citations"))


def server_block(b: Any) -> bool:
    """A server tool's block: its call (`server_tool_use`) or its result (a
    `web_search_tool_result`, `web_fetch_tool_result`, ...), run at Anthropic's side."""
    return (isinstance(b, dict) and b.get("type") == "server_tool_use") or server_result(b)


def _said(res: Any) -> list[dict[str, Any]]:
    """The answer's thinking and text blocks: the thinking first, or, where an Anthropic
    upstream's answer interleaved them (thinking after text), in its order."""
    text = [{"type": "text", "text": res.text}] if res.text else []
    if not res.thinking:
        return text
    raw = res.raw.get("content") if isinstance(res.raw, Mapping) else None
    blocks = [b for b in raw if isinstance(b, Mapping)] if isinstance(raw, list) else []
    thinks = [_is_thinking(b) for b in blocks if b.get("type") != "tool_use"]
    if thinks.count(True) != len(res.thinking) or thinks == sorted(thinks, reverse=True):
        return [*res.thinking, *text]  # thinking first (or not told apart)
    out, thought = [], iter(res.thinking)
    for b in blocks:  # the upstream's texts, scrubbed as it was read (base.parse_json)
        if b.get("type") == "text" and b.get("text"):
            out.append({"type": "text", "text": b["text"]})
        elif _is_thinking(b):
            out.append(next(thought))
    return out


def _context_edits(res: Any) -> dict[str, Any]:
    """`context_management` as an Anthropic upstream answered it (the edits it applied);
    from any other, nothing: no edit was applied."""
    raw = getattr(res, "raw", None)
    cm = raw.get("context_management") if isinstance(raw, Mapping) else None
    return {"context_management": cm} if isinstance(cm, Mapping) else {}


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as Anthropic's tool_use `input`, which is always an object:
    arguments that hold no JSON object (`arguments_object`: a model's invalid, cut or
    non-object JSON, NaN) are kept whole as {"_raw": text}, streamed or not (the SDKs fail
    on anything else; NaN had been served as null, or streamed as NaN). The OpenAI endpoint
    passes them on as they came, as OpenAI's API does."""
    args = arguments_object(arguments)
    return {"_raw": arguments} if args is None else args


def anthropic_stop(res: Any) -> str:
    """Anthropic's stop_reason for a result: "stop_sequence" when the upstream said which
    of the caller's sequences ended it (it had read "end_turn", the sequence lost), and
    "tool_use" for an answer that calls a tool whatever its upstream said: OpenAI's API
    ends a call forced by a named tool_choice with "stop", which read "end_turn" beside the
    tool_use block, and an agent loop keyed on "tool_use" stopped without running it."""
    if res.stop_sequence:
        return "stop_sequence"
    if res.refusal:
        return "refusal"
    if res.tool_calls and res.finish_reason in (None, "stop"):
        return "tool_use"
    return _STOP.get(res.finish_reason or "stop", "end_turn")


def anthropic_usage(u: Any) -> dict[str, Any]:
    """Usage as Anthropic reports it: input_tokens are the uncached prompt tokens, cache
    reads and writes beside them; the web searches run, when any."""
    writes = u.cache_write_tokens + u.cache_write_1h_tokens
    out: dict[str, Any] = {
        "input_tokens": max(u.prompt_tokens - u.cached_tokens - writes, 0),
        "cache_read_input_tokens": u.cached_tokens,
        "cache_creation_input_tokens": writes,
        "output_tokens": u.completion_tokens,
    }
    if u.web_searches:
        out["server_tool_use"] = {"web_search_requests": u.web_searches}
    return out


def anthropic_event(kind: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {kind}\ndata: ".encode() + dumps({"type": kind, **data}) + b"\n\n"


def now() -> int:
    return int(time.time())
