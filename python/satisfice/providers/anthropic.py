"""Anthropic Messages API, translated to and from the OpenAI-shaped normalized types.

Requests: system/developer messages become the top-level `system`; assistant `tool_calls`
become `tool_use` blocks; `tool` messages become `tool_result` blocks in one user turn;
image parts become image blocks; OpenAI function tools become `input_schema` tools.
`response_format` (JSON mode or a JSON schema) becomes one forced tool whose input is the
answer, because the Messages API has no JSON mode: the caller still gets JSON text.
Responses: stop reasons map to OpenAI finish reasons; usage counts cache reads and writes
inside `prompt_tokens` (Anthropic's `input_tokens` excludes them) and separately.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Coroutine
from dataclasses import replace
from typing import Any

import httpx

from .._json import encode_body
from .._redact import scrub, scrub_nested
from ..errors import BadRequestError, ProviderError, RetryableError, UnsupportedRequestError
from ..registry import ModelSpec, thinking_budget
from .base import (
    GENERATED,
    PARSE_ERRORS,
    PROGRESS,
    ChatRequest,
    ChatResponse,
    Generated,
    Halves,
    HTTPProvider,
    StreamDelta,
    ToolCall,
    Usage,
    encode_finite,
    finish_stream,
    most_billed,
    parse_event,
    quiet_after,
    sendable,
    sse_events,
    text_field,
    thinking_blocks,
    token_count,
    whole,
    wire_tool_id,
)

__all__ = ["AnthropicProvider", "arguments_object", "to_anthropic"]

API_VERSION = "2023-06-01"
# The Messages API requires max_tokens; used when the caller sets none.
DEFAULT_MAX_TOKENS = 4096


class _ToolIds:
    """A conversation's tool call ids as Anthropic's API takes them: letters, digits, "_"
    and "-" ("String should match pattern '^[a-zA-Z0-9_-]+$'"; other providers' models make
    ids such as "functions.get_weather:0") and each call's its own ("`tool_use` ids must be
    unique"; some models call every turn's first tool `call_0`). An id that breaks either
    rule is sent as a hash of it (and of how many calls had it before); a result answers
    the latest call of its id."""

    __slots__ = ("latest", "seen")
    _VALID = re.compile(r"[A-Za-z0-9_-]+")

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.latest: dict[str, str] = {}

    def call(self, call_id: Any) -> str:
        key = call_id if isinstance(call_id, str) else repr(call_id)
        n = self.seen.get(key, 0)
        self.seen[key] = n + 1
        again = f"{key}\x00{n}" if n else call_id  # (no valid id holds a NUL: hashed)
        self.latest[key] = self._wire(again)
        return self.latest[key]

    def result(self, call_id: Any) -> str:
        key = call_id if isinstance(call_id, str) else repr(call_id)
        return self.latest.get(key) or self._wire(call_id)

    def _wire(self, call_id: Any) -> str:
        return wire_tool_id(call_id, self._VALID, 24, "toolu_")


def _no_constant(word: str) -> Any:
    # json.loads reads NaN, Infinity and -Infinity: they are no JSON (RFC 8259), and an
    # object holding one is written `null` by orjson or `NaN` by json.dumps (which the SDKs
    # cannot parse)
    raise ValueError(f"{word} is not a JSON value")


def _finite(text: str) -> float:
    # a number past a float's range (1e999) reads as ±inf: written `null` as NaN is
    v = float(text)
    if v - v != 0.0:  # (inf - inf is nan)
        raise ValueError(f"{text[:20]} is past a float's range")
    return v


def arguments_object(arguments: str) -> dict[str, Any] | None:
    """A tool call's OpenAI-style `arguments` as the object Anthropic's tool_use `input`
    must be: {} for none (""), None when they hold no JSON object (invalid JSON, a call cut
    short, NaN or a number past a float's range (1e999, read as inf), nesting past the
    parser's depth, JSON that is another value). Both ways
    read them so: an earlier turn's call that holds none is refused for Anthropic models
    (`_payload`), and a model's answer holds it whole on /v1/messages
    (`server.wire.tool_input`)."""
    try:
        args = (
            json.loads(arguments, parse_constant=_no_constant, parse_float=_finite)
            if arguments
            else {}
        )
    except (ValueError, RecursionError):
        return None
    return args if isinstance(args, dict) else None


_JSON_TOOL = "satisfice_json_answer"
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    # a long turn of server tools, paused: the caller sends it back for Claude to go on
    # (read as "stop", it had reached Anthropic clients as a final "end_turn")
    "pause_turn": "pause_turn",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_RETRYABLE_EVENTS = frozenset({"overloaded_error", "api_error", "rate_limit_error"})


def _block(part: Any) -> Any:
    """An OpenAI content part as an Anthropic block; Anthropic-shaped blocks pass through."""
    if not isinstance(part, dict):
        return {"type": "text", "text": str(part)}
    kind = part.get("type")
    if kind in ("text", "input_text"):
        out = {"type": "text", "text": part.get("text", "")}
        if "cache_control" in part:
            out["cache_control"] = part["cache_control"]
        return out
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url", "") if isinstance(url, dict) else str(url or "")
        if url.startswith("data:") and ";base64," in url:
            media, data = url[5:].split(";base64,", 1)
            source = {"type": "base64", "media_type": media, "data": data}
            image = {"type": "image", "source": source}
        else:
            image = {"type": "image", "source": {"type": "url", "url": url}}
        if "cache_control" in part:  # a prompt-cache mark, as on a text part
            image["cache_control"] = part["cache_control"]
        return image
    if kind in _OPENAI_ONLY:  # OpenAI's shape, which Anthropic's API refuses or misreads
        raise UnsupportedRequestError(
            f"a {kind!r} content part is OpenAI's; Anthropic models do not take it in this "
            "shape (send it to an OpenAI model, allow=[...], or as Anthropic's own block)"
        )
    return part


# OpenAI's content parts with no translation here (a PDF's `file` is Anthropic's `document`
# only from a URL or base64 given as such)
_OPENAI_ONLY = frozenset({"input_audio", "file", "input_file", "refusal"})


def _content(content: Any) -> Any:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return [_block(p) for p in content]


def _empty_text(b: Any) -> bool:
    """A text block Anthropic refuses on an assistant turn: empty, or whitespace only."""
    text = b.get("text") if isinstance(b, dict) and b.get("type") == "text" else None
    return isinstance(b, dict) and b.get("type") == "text" and not (text or "").strip()


def _blocks(body: Any) -> list[Any]:
    """A message's content (a text, blocks or nothing) as blocks."""
    if isinstance(body, list):
        return body
    return [{"type": "text", "text": body}] if body else []


def _tool(t: dict[str, Any]) -> dict[str, Any]:
    if "input_schema" in t:  # already Anthropic-shaped
        return t
    if t.get("type") == "custom":  # had been a KeyError's name in the translation's error
        raise UnsupportedRequestError(
            f"tool {t['custom']['name']!r} is an OpenAI custom tool (free-text input), which "
            "Anthropic models do not take; give it as a function tool with parameters, or "
            "keep the request on OpenAI models (allow=[...])"
        )
    fn = t.get("function", t)
    out = {
        "name": fn["name"],
        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
    }
    if fn.get("description"):
        out["description"] = fn["description"]
    if fn.get("strict") is True:  # input that follows the schema (it had been dropped)
        out["strict"] = True
    if isinstance(t.get("cache_control"), dict):  # the caller's prompt-cache mark
        out["cache_control"] = t["cache_control"]
    return out


def _tool_choice(choice: Any) -> Any:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": choice["function"]["name"]}
    if isinstance(choice, dict) and choice.get("type") in ("auto", "any", "none", "tool"):
        return choice  # Anthropic's own (the server's /v1/messages passes them on)
    raise UnsupportedRequestError(
        f"tool_choice {choice!r:.80} has no Anthropic form (auto, required, none, a named "
        "function, or allowed_tools)"
    )


def _allowed_tools(p: dict[str, Any], choice: dict[str, Any]) -> None:
    """OpenAI's `allowed_tools` choice on Anthropic's wire, which has none: only the
    allowed tools are sent, with `auto` or `any` (required) as the choice."""
    allowed = choice["allowed_tools"]
    names = {t["function"]["name"] if "function" in t else t["name"] for t in allowed["tools"]}
    mode = allowed.get("mode", "auto")
    if mode not in ("auto", "required"):
        raise UnsupportedRequestError(f"tool_choice allowed_tools mode {mode!r:.40} is unknown")
    p["tools"] = [t for t in p.get("tools", ()) if t["name"] in names]
    if not p["tools"]:
        raise UnsupportedRequestError("tool_choice allowed_tools names none of the tools")
    p["tool_choice"] = {"type": "any" if mode == "required" else "auto"}


def to_anthropic(
    r: ChatRequest, model: str, stream: bool = False, *, thinks: bool = False
) -> dict[str, Any]:
    """The Messages API payload for a normalized request; `thinks`: for a model that thinks
    (an assistant message's `thinking_blocks` are sent back then, first in its turn, and
    left out otherwise: only thinking asks for them).

    Raises BadRequestError when a message, tool call or tool is not shaped as the OpenAI
    vocabulary says (a missing `function`, `name` or `id`): no retry would fix it.
    """
    try:
        return _payload(r, model, stream, thinks)
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as e:
        raise BadRequestError(
            f"the request cannot be translated for the Anthropic Messages API "
            f"({type(e).__name__}: {e}); check the messages' tool_calls, the tools and "
            "tool_choice against the OpenAI Chat Completions format"
        ) from None


def _payload(r: ChatRequest, model: str, stream: bool, thinks: bool) -> dict[str, Any]:
    system: list[Any] = []
    msgs: list[dict[str, Any]] = []
    ids = _ToolIds()
    for i, m in enumerate(r.messages):
        role = m.get("role")
        content = m.get("content")
        if m.get("name") and role != "tool":
            # Anthropic's messages name no speaker: dropped, the model would lose who said
            # what; refused, the request goes to a model it was routed to that reads it. (A
            # tool result's name, which frameworks add, says nothing its call id does not.)
            raise UnsupportedRequestError(
                f"messages[{i}] has a 'name', which Anthropic models do not take; put the "
                "speaker's name in the text, or keep the request on OpenAI models (allow=[...])"
            )
        if role in ("system", "developer"):
            if msgs:  # Anthropic's system prompt comes before the conversation, once
                raise UnsupportedRequestError(
                    f"messages[{i}] is a {role} message inside the conversation; Anthropic "
                    "models take system instructions only before it (moved there, they would "
                    "apply from the start): put it first, or send it as a user message"
                )
            system.append(content if isinstance(content, str) else _content(content))
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": ids.result(m.get("tool_call_id", "")),
                # blocks as they came (their prompt-cache marks too; images, which a tool
                # result here can hold), a text as it is
                "content": _content(content),
            }
            if m.get("is_error") is True:  # the tool failed (satisfice serve's /v1/messages)
                result["is_error"] = True
            if isinstance(m.get("cache_control"), dict):  # the result's prompt-cache mark
                result["cache_control"] = m["cache_control"]
            prev = msgs[-1] if msgs else None
            # Anthropic wants every result of one assistant turn in the next user turn.
            if (
                prev is not None
                and prev["role"] == "user"
                and isinstance(prev["content"], list)
                and prev["content"]
                and prev["content"][-1].get("type") == "tool_result"
            ):
                prev["content"].append(result)
            else:
                msgs.append({"role": "user", "content": [result]})
        elif role in ("user", "assistant"):
            if role == "assistant" and m.get("function_call") and not m.get("tool_calls"):
                # OpenAI's legacy form of a tool call: it had been dropped without a word
                raise UnsupportedRequestError(
                    f"messages[{i}] has a legacy function_call, which Anthropic models do not "
                    "take; send it as tool_calls"
                )
            refused = m.get("refusal") if role == "assistant" else None
            if isinstance(refused, str) and refused.strip() and not content and not (
                m.get("tool_calls") or m.get("anthropic_content")
            ):  # fmt: skip
                # OpenAI's refused turn (content null, the refusal beside it), which is how
                # a served Claude refusal comes back: its words are the turn (it had been
                # dropped, two user turns then sent, the model never told it refused)
                content = refused
            body = _content(content)
            carried = m.get("anthropic_content") if role == "assistant" else None
            if carried is not None:  # a turn in which a server tool ran, as it came
                body = [dict(b) for b in carried if thinks or b.get("type") not in _THINKING]
            calls = m.get("tool_calls") if role == "assistant" else None
            if calls:
                blocks = list(_blocks(body))
                for c in calls:
                    fn = c["function"]
                    # (arguments that are not a string: a TypeError, refused as malformed)
                    args = arguments_object(fn.get("arguments") or "")
                    if args is None:  # (another value had been sent: a 400 from the API)
                        raise UnsupportedRequestError(
                            f"messages[{i}].tool_calls: arguments of {fn['name']!r} are not "
                            "JSON, or not an object; Anthropic needs them as an object"
                        )
                    use = {"type": "tool_use", "id": ids.call(c["id"]), "name": fn["name"],
                           "input": args}  # fmt: skip
                    if isinstance(c.get("cache_control"), dict):  # the caller's cache mark
                        use["cache_control"] = c["cache_control"]
                    blocks.append(use)
                body = blocks
            thought = m.get("thinking_blocks") if role == "assistant" else None
            if thought is not None:
                thought = thinking_blocks(thought, f"messages[{i}].thinking_blocks")
                if thinks and thought:  # first in the message, as the model wrote them
                    body = thought + _blocks(body)
            if role == "assistant":
                # Anthropic refuses an empty text block and an empty turn ("text content
                # blocks must be non-empty"): an answer with no text (a reasoning model that
                # spent its limit thinking), served as "" and sent back, had been a 400 on
                # every later turn; the API reads the turns either side as one
                if isinstance(body, list):
                    body = [b for b in body if not _empty_text(b)]
                elif isinstance(body, str) and not body.strip():
                    body = ""  # ("text content blocks must contain non-whitespace text")
                if not body:
                    continue
            prev = msgs[-1] if msgs else None
            if role == "assistant" and prev is not None and prev["role"] == "assistant":
                # one turn, as Anthropic's API reads consecutive assistant messages: an
                # interleaved turn comes as several (thinking after text), in its order
                prev["content"] = _blocks(prev["content"]) + _blocks(body)
            else:
                msgs.append({"role": role, "content": body})
        else:
            raise BadRequestError(
                f"messages[{i}].role {role!r} is not one of system, developer, user, "
                "assistant, tool"
            )
    p: dict[str, Any] = {
        "model": model,
        "max_tokens": r.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": msgs,
    }
    if system:
        if all(isinstance(s, str) for s in system):
            p["system"] = "\n\n".join(system)
        else:
            p["system"] = [
                b
                for s in system
                for b in ([{"type": "text", "text": s}] if isinstance(s, str) else s)
            ]
    if r.temperature is not None:
        if r.temperature > 1:  # OpenAI's go to 2
            raise UnsupportedRequestError(
                f"Anthropic models take a temperature of 0 to 1, not {r.temperature}"
            )
        p["temperature"] = r.temperature
    if r.tools:
        p["tools"] = [_tool(t) for t in r.tools]
    if r.server_tools:  # run at Anthropic's side, as given
        p["tools"] = [*p.get("tools", ()), *r.server_tools]
    choice = r.tool_choice
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        _allowed_tools(p, choice)
    elif choice is not None:
        p["tool_choice"] = _tool_choice(choice)
    if r.response_format is not None and r.response_format.get("type") != "text":
        if r.tools or r.server_tools:
            raise UnsupportedRequestError(
                "Anthropic models take response_format as a forced tool, so it cannot be "
                "combined with tools; drop one of the two"
            )
        js = r.response_format.get("json_schema") or {}
        schema = js.get("schema") or {"type": "object"}
        tool = {"name": _JSON_TOOL, "description": "Give the answer.", "input_schema": schema}
        if js.get("strict") is True:  # an answer that follows the schema, as asked
            tool["strict"] = True
        p["tools"] = [tool]
        p["tool_choice"] = {"type": "tool", "name": _JSON_TOOL}
    if stream:
        p["stream"] = True
    if sendable(r.user, 256):  # OpenAI's `user` (Anthropic caches by prefix alone)
        p["metadata"] = {"user_id": r.user}
    if r.context_management:
        p["context_management"] = r.context_management
    if r.extra:
        p.update(r.extra)
    return p


def anthropic_wire(
    r: ChatRequest, model: str, stream: bool, budget: int, adaptive: str | None = None
) -> dict[str, Any]:
    """The Messages API body of `r` for `model`, with extended thinking of `budget` tokens
    (0: none), or, given `adaptive` (an effort), adaptive thinking at that effort with
    `budget` tokens of room. UnsupportedRequestError where Anthropic documents it refuses
    what comes beside thinking (`_thinking_refuses`): refused here, the request goes on to
    the next model it was routed to; sent, the 400 had ended it there."""
    p = to_anthropic(r, model, stream=stream, thinks=bool(budget) or adaptive is not None)
    if "stop" in p:  # OpenAI's `stop` (a string or a list) is Anthropic's stop_sequences
        stop = p.pop("stop")
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop):
            raise BadRequestError("stop must be a non-empty string or a list of them")
        p["stop_sequences"] = stop
    if not budget and adaptive is None:
        _without_thinking_edits(p)
    else:
        why = _thinking_refuses(p)
        if why is not None:
            how = (f"adaptive thinking at effort {adaptive}" if adaptive is not None
                   else f"extended thinking, {budget} tokens")  # fmt: skip
            raise UnsupportedRequestError(
                f"{model} thinks before it answers ({how}), and Anthropic refuses {why} with "
                "thinking; leave it out, or ask for a model without thinking (an effort of "
                "none)"
            )
        if adaptive is not None:
            # the model decides how much to think, at this effort (a budget is a 400 on
            # the models that take only this)
            oc = p.get("output_config", {})
            if not isinstance(oc, dict):  # a caller's `extra`, merged into the body
                raise BadRequestError("extra output_config must be an object")
            p["thinking"] = {"type": "adaptive"}
            p["output_config"] = {**oc, "effort": adaptive}
        else:
            # extended thinking: the budget is spent before the answer, within max_tokens
            p["thinking"] = {"type": "enabled", "budget_tokens": budget}
            if r.thinking_within and budget >= p["max_tokens"]:
                # Anthropic's API wants the budget under max_tokens (refused here, the
                # request goes on to the next model it was routed to)
                raise UnsupportedRequestError(
                    f"{model} thinks within a budget of {budget} tokens, which max_tokens "
                    f"{p['max_tokens']} must exceed (it holds the thinking too): raise "
                    "max_tokens, or ask for less thinking"
                )
        if r.thinking_display is not None:  # whether the thinking comes back as text
            p["thinking"]["display"] = r.thinking_display
        if not r.thinking_within:  # the answer's limit: the thinking's room on top
            p["max_tokens"] = p["max_tokens"] + budget
    why = _sampling_refused(model, p)
    if why is not None:  # refused here, the request goes on to its next model
        raise UnsupportedRequestError(f"{model} {why}")
    return p


_THINKING = ("thinking", "redacted_thinking")

# Claude Opus 4.7 and later Opus models take no sampling parameters: any value but the
# default is a 400 ("`temperature` is deprecated for this model"); a dated id's digits
# (claude-opus-4-20250514) are not a version
_NO_SAMPLING = re.compile(r"claude-opus-4-[7-9](?!\d)")
# Claude 4.5 and later take temperature or top_p, not both ("`temperature` and `top_p`
# cannot both be specified for this model"): an OpenAI client's pair is a 400 there
_ONE_SAMPLER = re.compile(r"claude-(?:opus|sonnet|haiku)-4-[5-9](?!\d)")


def _sampling_refused(model: str, p: dict[str, Any]) -> str | None:
    """What of body `p` Anthropic refuses on `model` among the sampling parameters, if
    anything (a default value, which changes nothing, is left out of `p`)."""
    if "temperature" not in p and "top_p" not in p and "top_k" not in p:
        return None  # (the usual request: no model's names read)
    if not _NO_SAMPLING.search(model):
        if _ONE_SAMPLER.search(model) and "temperature" in p and "top_p" in p:
            # an OpenAI client's usual pair has a default top_p of 1: only values that
            # change something are the pair refused
            for k in ("top_p", "temperature"):
                if p[k] is None or p[k] == 1:
                    del p[k]
                    return None
            return "takes temperature or top_p, not both; send one of them"
        return None
    for k in ("temperature", "top_p", "top_k"):
        if k in p and (p[k] is None or (k != "top_k" and p[k] == 1)):
            del p[k]
    asked = [f"{k} {p[k]!r:.20}" for k in ("temperature", "top_p", "top_k") if k in p]
    if asked:
        return (f"takes no sampling parameters ({', '.join(asked)}); leave them out, or "
                "ask for another model")  # fmt: skip
    return None


def _without_thinking_edits(p: dict[str, Any]) -> None:
    """`context_management` for a row sent no thinking: without the edits that clear
    thinking (Anthropic refuses them unless thinking is on, and this row is sent no
    thinking to clear), the others kept; none left, none sent."""
    cm = p.get("context_management")
    if not isinstance(cm, dict) or not isinstance(edits := cm.get("edits"), list):
        return
    kept = [
        e for e in edits
        if not (isinstance(e, dict) and str(e.get("type", "")).startswith("clear_thinking"))
    ]  # fmt: skip
    if len(kept) == len(edits):
        return
    if kept:
        p["context_management"] = {**cm, "edits": kept}
    else:
        del p["context_management"]


#: Events that give the caller nothing until the answer's end, yet are the upstream's
#: progress (a ping is not): a stream's idle timeout counts them (see base.PROGRESS).
_PROGRESS = frozenset({"content_block_start", "content_block_stop", "message_delta"})


def _thought(b: dict[str, Any]) -> dict[str, Any]:
    """A thinking block of an answer, as it is sent back: its own fields, checked."""
    if b["type"] == "redacted_thinking":
        return {"type": "redacted_thinking", "data": scrub(text_field(b["data"], "data"))}
    text = scrub(text_field(b["thinking"], "thinking"))
    return {
        "type": "thinking",
        "thinking": text,
        "signature": text_field(b["signature"], "signature"),
    }


def adaptive_effort(thinking: str | None, effort: str | None) -> str | None:
    """The effort an adaptive-thinking row sends (`ModelSpec.thinking`), whatever reasoning
    tokens its level expects; None for a row that does not think so."""
    return effort if thinking == "adaptive" and effort not in (None, "none") else None


def _thinking_refuses(p: dict[str, Any]) -> str | None:
    """What of body `p` Anthropic documents it refuses beside extended thinking, if
    anything."""
    t = p.get("temperature")
    if t is not None and t != 1:
        return f"temperature {t} (only 1)"
    top_p = p.get("top_p")
    if isinstance(top_p, int | float) and top_p < 0.95:
        return f"top_p {top_p} (0.95 to 1 only)"
    if p.get("top_k") is not None:
        return "top_k"
    msgs = p.get("messages") or ()
    if msgs and msgs[-1].get("role") == "assistant":
        return "a prefilled assistant turn (the conversation ends on one)"
    last = next((m for m in reversed(msgs) if m.get("role") == "assistant"), None)
    blocks = last.get("content") if last is not None else None
    if (
        isinstance(blocks, list)
        and any(isinstance(b, dict) and b.get("type") == "tool_use" for b in blocks)
        and not (isinstance(blocks[0], dict) and blocks[0].get("type") in _THINKING)
    ):
        # a tool loop in progress: its assistant turn must begin with the thinking that
        # led to the call, which OpenAI's messages cannot carry
        return "a tool loop whose assistant turn does not begin with its thinking block"
    choice = p.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        if choice.get("name") == _JSON_TOOL:
            return "response_format (sent as a forced tool)"
        return "a forced tool_choice"
    return None


def _usage(u: Any, out: Any = None) -> Usage | None:
    """The reported usage (`out`: the output count a stream reported apart); None when
    absent, incomplete (no input or no output count: a missing count is not zero) or
    implausible (negative, huge, not integers): the executor then counts the tokens itself."""
    if not isinstance(u, dict) or u.get("input_tokens") is None:
        return None
    if out is None:
        out = u.get("output_tokens")
    if out is None:
        return None
    try:
        read = token_count(u.get("cache_read_input_tokens") or 0, "cache_read_input_tokens")
        write = token_count(
            u.get("cache_creation_input_tokens") or 0, "cache_creation_input_tokens"
        )
        fresh = token_count(u["input_tokens"], "input_tokens")
        out_n = token_count(out, "output_tokens")
        split = u.get("cache_creation")  # {ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}
        hour = 0
        if isinstance(split, dict) and split.get("ephemeral_1h_input_tokens"):
            hour = token_count(split["ephemeral_1h_input_tokens"], "ephemeral_1h_input_tokens")
        tools = u.get("server_tool_use")  # {web_search_requests, web_fetch_requests}
        searches = 0
        if isinstance(tools, dict) and tools.get("web_search_requests"):
            searches = token_count(tools["web_search_requests"], "web_search_requests")
    except ValueError:
        return None
    if hour > write:
        return None  # implausible: count it ourselves
    return Usage(fresh + read + write, out_n, read, write - hour, cache_write_1h_tokens=hour,
                 web_searches=searches)  # fmt: skip


def server_tool(t: Any) -> bool:
    """Anthropic's web search or web fetch (a `web_search_*` or `web_fetch_*` tool type): a
    server tool, which Anthropic runs while the model answers (`ChatRequest.server_tools`)."""
    kind = t.get("type") if isinstance(t, dict) else None
    return isinstance(kind, str) and kind.startswith(("web_search_", "web_fetch_"))


def searches(t: Any) -> bool:
    """Anthropic's web search tool, billed by the search (`Price.per_search`)."""
    return server_tool(t) and t["type"].startswith("web_search_")


def thinks_on_anthropic(m: ModelSpec) -> bool:
    """Whether row `m` thinks (a budget or adaptive thinking) and is served by Anthropic's
    API alone, which refuses some requests beside thinking (`refused_beside_thinking`)."""
    return (
        bool(m.deployments)
        and all(d.api == "anthropic" for d in m.deployments)
        and (m.reasoning_tokens > 0 or adaptive_effort(m.thinking, m.effort) is not None)
    )


def refused_beside_thinking(msgs: list[dict[str, Any]]) -> bool:
    """Whether Anthropic refuses these messages (OpenAI's form) beside thinking, as
    `_thinking_refuses` finds on the wire: a conversation that ends on an assistant turn,
    or a tool loop whose last assistant turn has no thinking to begin with (which OpenAI's
    messages cannot carry). Routing skips such rows (the call's own parameters, a
    temperature, are refused at the call, which falls through to the next model): a coding
    agent's tool loop had been routed to four thinking rows of one model, each refusing
    it, and failed."""
    if msgs and msgs[-1].get("role") == "assistant":
        return True
    last = next((m for m in reversed(msgs) if m.get("role") == "assistant"), None)
    return (
        last is not None
        and bool(last.get("tool_calls"))
        and not last.get("thinking_blocks")
        and last.get("anthropic_content") is None
    )


def runs_server_tools(m: ModelSpec) -> bool:
    """Whether `m` can run Anthropic's server tools: it has an Anthropic deployment."""
    return any(d.api == "anthropic" for d in m.deployments)


def prices_searches(m: ModelSpec) -> bool:
    """Whether every Anthropic deployment of `m` prices a web search (`per_search`)."""
    return all(
        (p := d.price or m.price) is not None and p.per_search is not None
        for d in m.deployments
        if d.api == "anthropic"
    )


def server_result(b: Any) -> bool:
    """A server tool's result block (`web_search_tool_result`, `web_fetch_tool_result`,
    ...), which Anthropic ran; not a client tool's `tool_result`."""
    kind = b.get("type") if isinstance(b, dict) else None
    return isinstance(kind, str) and kind.endswith("_tool_result") and kind != "tool_result"


def search_ran(b: Any) -> bool:
    """A web search's result block with results: a search Anthropic bills (one whose
    content is an error, `max_uses_exceeded` say, is not billed)."""
    return (
        isinstance(b, dict)
        and b.get("type") == "web_search_tool_result"
        and isinstance(b.get("content"), list)
    )


def _searched(usage: Usage | None, searches: int) -> Usage | None:
    """`usage` billing at least the `searches` the answer shows it ran."""
    if usage is None or usage.web_searches >= searches:
        return usage
    return replace(usage, web_searches=searches)


def _json_finish(finish: str | None) -> str | None:
    """The finish reason of a JSON answer given as the forced tool's call: the call is the
    answer, so "tool_calls" reads "stop"; any other reason ("length": cut by max_tokens)
    stands."""
    return "stop" if finish == "tool_calls" else finish


class AnthropicProvider(HTTPProvider):
    """One Anthropic Messages deployment on a shared `httpx.AsyncClient`."""

    __slots__ = ()

    default_deployment = "anthropic"

    @staticmethod
    def _endpoint(base_url: str) -> str:
        # Registry base URLs follow the Anthropic SDK (no /v1); accept either.
        return base_url + ("/messages" if base_url.endswith("/v1") else "/v1/messages")

    @staticmethod
    def _auth(api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    def _wire(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        effort = adaptive_effort(self.thinking, self.effort)
        if not request.no_thinking:
            budget = thinking_budget(self.effort, self.reasoning_tokens, request.thinking_cap)
            return anthropic_wire(request, self.model, stream, budget, effort)
        # the caller's effort without thinking: the effort alone, where the model takes one
        # (an adaptive row's; a budget row, Haiku 4.5's, has none to send)
        p = anthropic_wire(request, self.model, stream, 0)
        if effort is not None:
            oc = p.get("output_config", {})
            if not isinstance(oc, dict):  # a caller's `extra`, merged into the body
                raise BadRequestError("extra output_config must be an object")
            p["output_config"] = {**oc, "effort": effort}
        return p

    @staticmethod
    def _extra_headers() -> dict[str, str]:
        return {"anthropic-version": API_VERSION}

    @staticmethod
    def _beta(request: ChatRequest) -> tuple[tuple[str, str], ...] | None:
        """The request's own `anthropic-beta` header (its API's features in beta), if any."""
        beta = request.anthropic_beta
        return None if beta is None else (("anthropic-beta", beta),)

    def complete(
        self, request: ChatRequest, timeout: httpx.Timeout
    ) -> Coroutine[Any, Any, ChatResponse]:
        return self._post(self._wire(request, False), timeout, self._beta(request))  # (`_post`)

    def _answer(self, data: Any, wire: float | None) -> ChatResponse:
        """The answer a whole (unstreamed) reply's decoded JSON says."""
        try:
            texts: list[str] = []
            calls: list[ToolCall] = []
            thought: list[dict[str, Any]] = []
            searches = 0
            for b in data["content"]:
                if search_ran(b):  # one search, run by Anthropic
                    searches += 1
                elif b["type"] == "text":
                    texts.append(text_field(b["text"], "content[].text"))
                elif b["type"] in _THINKING:
                    thought.append(_thought(b))
                elif b["type"] == "tool_use":
                    calls.append(
                        ToolCall(
                            text_field(b["id"], "tool_use.id"),
                            text_field(b["name"], "tool_use.name"),
                            encode_finite(b["input"]),
                        )
                    )
            stop = text_field(data.get("stop_reason"), "stop_reason")
            if not (stop or calls or any(texts)):  # nothing said, nor why not
                raise ValueError("an answer with no content, tool call or stop_reason")
            finish = _FINISH.get(stop, stop or None)
            seq = text_field(data.get("stop_sequence"), "stop_sequence")
            if calls and calls[0].name == _JSON_TOOL:
                texts, calls = [calls[0].arguments], []
                finish = _json_finish(finish)
            return ChatResponse(
                "".join(texts), data, _searched(_usage(data.get("usage")), searches), finish,
                calls, wire, stop_sequence=(seq or None) if stop == "stop_sequence" else None,
                thinking=thought, web_searches=searches,
            )  # fmt: skip
        except PARSE_ERRORS as e:
            raise self._not_an_answer(data, e) from None

    async def stream(
        self, request: ChatRequest, timeout: httpx.Timeout
    ) -> AsyncGenerator[str | StreamDelta | ChatResponse, None]:
        body = encode_body(self._wire(request, True))
        resp = await self._open(body, timeout, self._beta(request))
        resp, whole_ = await self._json_in_place(resp)
        if whole_ is not None:
            answer = self._answer(whole_[0], None)  # (an error object: raised as said)
            for block in answer.thinking:
                # a thinking block's text, then the block, as a streamed one comes: a
                # served stream says the text in its pieces alone (the block had reached an
                # Anthropic client empty, beside the signature of its text)
                if block.get("type") == "thinking" and block.get("thinking"):
                    yield StreamDelta(thinking=block["thinking"])
                yield StreamDelta(thought=block)
            if answer.text:
                yield answer.text
            yield answer
            return
        halves = Halves()  # a surrogate pair split between two events, joined
        try:
            parts: list[str] = []
            json_halves = Halves()  # the same for a forced JSON tool's streamed text
            # index -> [id, name, json pieces] for tool_use blocks
            tools: dict[int, tuple[str, str, list[str]]] = {}
            start_input: dict[int, str] = {}  # index -> a tool_use's input given at its start
            made = GENERATED.get() or Generated()  # tool calls and thinking (billed if cut)
            # index -> [thinking pieces, signature pieces] for thinking blocks, open; the
            # blocks as they closed
            thinking: dict[Any, tuple[list[str], list[str]]] = {}
            thought: list[dict[str, Any]] = []
            think_halves = Halves()
            # index -> [a server tool's call, its input's json pieces], open; searches run
            calling: dict[Any, tuple[dict[str, Any], list[str]]] = {}
            searches = 0
            # server tools in play (offered, or a turn sent back ran one): each text block
            # is said apart, its citations its own (a paused turn's continuation runs none)
            served = request.server_tools is not None
            usage_in: dict[str, Any] = {}
            out_tokens: Any = None
            reported: Usage | None = None  # the most billed of every usage reported
            stop: str | None = None
            seq_hit: str | None = None  # the stop sequence that ended it, when told
            last: Any = None
            ended = False
            open_blocks: set[Any] = set()  # content blocks started and not yet stopped
            at_end = [False]  # the answer is whole but for message_stop
            events = quiet_after(sse_events(resp), at_end)
            try:
                async for _, data in events:
                    try:
                        ev, kept = parse_event(data)
                        kind = ev["type"]
                        last = ev
                        if kind != "ping":  # message_delta last: all but message_stop is in
                            at_end[0] = at_end[0] and kind == "message_delta"
                            if kind in _PROGRESS:  # a block's edge, a tool call's piece, ...
                                yield PROGRESS
                        if kind == "content_block_start":
                            open_blocks.add(ev.get("index"))
                        elif kind == "content_block_stop":
                            open_blocks.discard(ev.get("index"))
                            if (c_ := calling.pop(ev.get("index"), None)) is not None:
                                # its input, whole, and scrubbed whole (a key split
                                # between two pieces had reached the caller)
                                given = scrub("".join(c_[1]))
                                # (an input given whole at the block's start, with no
                                # pieces after it, is the call's)
                                yield StreamDelta(block=scrub_nested(
                                    {**c_[0], "input": json.loads(given) if given
                                     else c_[0].get("input") or {}}
                                ))  # fmt: skip
                            if (t_ := thinking.pop(ev.get("index"), None)) is not None:
                                if tail := think_halves.rest():
                                    t_[0].append(tail)
                                    yield StreamDelta(thinking=tail)
                                block = {
                                    "type": "thinking",
                                    "thinking": scrub("".join(t_[0])),
                                    "signature": scrub("".join(t_[1])),
                                }
                                thought.append(block)
                                yield StreamDelta(thought=block)
                        if kind == "content_block_delta":
                            # as sent, lone surrogate halves and all (joined with the next
                            # event's; what is left alone becomes U+FFFD)
                            d = (ev if kept is None else kept)["delta"]
                            if d["type"] == "text_delta":
                                piece = halves.take(text_field(d["text"], "text_delta.text"))
                                if piece:
                                    parts.append(piece)
                                    yield piece
                            elif d["type"] == "thinking_delta":
                                t_ = thinking[ev["index"]]
                                piece = text_field(d["thinking"], "thinking_delta.thinking")
                                if piece := think_halves.take(piece):
                                    t_[0].append(piece)
                                    made.thought.append(piece)
                                    yield StreamDelta(thinking=piece)
                            elif d["type"] == "signature_delta":
                                sig = text_field(d["signature"], "signature_delta.signature")
                                thinking[ev["index"]][1].append(sig)
                                yield PROGRESS
                            elif d["type"] == "citations_delta":  # of the text to come
                                yield StreamDelta(citation=scrub_nested(dict(d["citation"])))
                            elif d["type"] == "input_json_delta" and ev["index"] in calling:
                                piece = text_field(d["partial_json"], "partial_json")
                                calling[ev["index"]][1].append(piece)
                                made.out.append(piece)
                                yield PROGRESS
                            elif d["type"] == "input_json_delta":
                                t = tools[ev["index"]]
                                piece = text_field(d["partial_json"], "partial_json")
                                t[2].append(piece)
                                if t[1] != _JSON_TOOL:
                                    made.out.append(piece)  # (a JSON answer's is its text)
                                    yield PROGRESS  # given whole at the end
                                elif piece := json_halves.take(piece):
                                    yield piece
                        elif kind == "content_block_start":
                            b = ev["content_block"]
                            if b["type"] == "thinking":
                                first = text_field(b.get("thinking"), "thinking")
                                sig = text_field(b.get("signature"), "signature")
                                thinking[ev["index"]] = ([first] if first else [], [sig])
                                if first:
                                    made.thought.append(first)
                                    yield StreamDelta(thinking=first)
                            elif b["type"] == "redacted_thinking":  # whole, at its start
                                block = _thought(b)
                                thought.append(block)
                                yield StreamDelta(thought=block)
                            elif b["type"] == "text":
                                if served:
                                    # a text block of its own (its citations its own), as the
                                    # answer unstreamed has it
                                    yield StreamDelta(block={"type": "text", "text": ""})
                                # text given at the start, as Anthropic's SDK reads it (it
                                # had been dropped)
                                first = text_field(b.get("text"), "content_block.text")
                                if first and (piece := halves.take(first)):
                                    parts.append(piece)
                                    yield piece
                            elif b["type"] == "server_tool_use":  # whole at its end
                                if len(calling) >= 128:
                                    raise ValueError("more than 128 server tool calls")
                                calling[ev["index"]] = (dict(b), [])
                            elif server_result(b):  # a server tool's result comes whole
                                searches += search_ran(b)
                                yield StreamDelta(block=scrub_nested(dict(b)))
                            elif b["type"] == "tool_use":
                                if len(tools) >= 128:
                                    raise ValueError("more than 128 tool calls in one answer")
                                i_ = token_count(ev["index"], "content_block.index")
                                tools[i_] = (
                                    text_field(b["id"], "tool_use.id"),
                                    text_field(b["name"], "tool_use.name"),
                                    [],
                                )
                                if given_ := b.get("input"):  # its input given at the start:
                                    # the answer's unless input_json_delta pieces follow (as
                                    # Anthropic's SDK reads it; it had been "{}")
                                    if not isinstance(given_, dict):
                                        raise TypeError("tool_use.input is not an object")
                                    start_input[i_] = encode_finite(given_)
                                    if tools[i_][1] == _JSON_TOOL:  # the answer, as text
                                        yield start_input[i_]
                        elif kind == "message_start":
                            usage_in = ev["message"].get("usage") or {}
                            # the prompt's (its output_tokens, 1, is no output written yet)
                            said_ = _usage(usage_in, 0)
                            reported = made.usage = most_billed(reported, said_)
                        elif kind == "message_delta":
                            said = (ev.get("delta") or {}).get("stop_reason")
                            stop = text_field(said, "stop_reason") or stop
                            seq = (ev.get("delta") or {}).get("stop_sequence")
                            seq_hit = text_field(seq, "stop_sequence") or seq_hit
                            u = ev.get("usage") or {}
                            if u.get("output_tokens") is not None:
                                out_tokens = u["output_tokens"]  # checked by _usage
                            for k in (
                                "input_tokens",
                                "cache_read_input_tokens",
                                "cache_creation_input_tokens",
                                "server_tool_use",
                            ):
                                if u.get(k) is not None:
                                    usage_in[k] = u[k]
                            # (a later, smaller figure had lowered the bill: the larger)
                            said_ = _usage(usage_in, out_tokens)
                            reported = made.usage = most_billed(reported, said_)
                            # all but message_stop is in: waited for briefly (quiet_after)
                            at_end[0] = bool(stop) and out_tokens is not None and not open_blocks
                        elif kind == "message_stop":
                            ended = True
                            await finish_stream(events)
                            break
                        elif kind == "error":
                            err = ev.get("error") or {}
                            if not isinstance(err, dict):  # said as a bare string (or else)
                                # (read as a dict, it had been "bad stream event
                                # (AttributeError: ...)", what the upstream said lost)
                                err = {"message": err}
                            kind_ = (
                                f"{str(err['type'])[:60]}: " if err.get("type") is not None else ""
                            )
                            msg = (
                                f"{self.model_id} via {self.deployment}: error event in the "
                                f"stream: {kind_}{str(err.get('message', ''))[:300]}"
                            )
                            cls = (
                                RetryableError
                                if err.get("type") in _RETRYABLE_EVENTS
                                else ProviderError
                            )
                            raise cls(msg, model=self.model_id, deployment=self.deployment)
                    except PARSE_ERRORS as e:
                        raise self._malformed(
                            f"bad stream event ({type(e).__name__}: {e})"
                        ) from None
            except httpx.TransportError:
                if not at_end[0]:
                    raise
                # message_delta (the stop reason and the output's count) came last, all that
                # comes before message_stop, then the upstream went quiet holding the
                # connection (`quiet_after`), or cut it: the answer, not a lost one (as for
                # OpenAI's usage chunk), billed at the usage it reported
                ended = True
            if tail := halves.rest():
                parts.append(tail)
                yield tail
            if tail := json_halves.rest():
                yield tail
            if not ended:
                raise self._malformed("the stream ended before message_stop")
            if stop is None and not (parts or tools):
                # message_start and message_stop alone: no answer, and it had been one
                raise self._malformed("the stream ended without an answer or a stop_reason")
            if stop is None:
                # whole once it says why it ended (message_delta's stop_reason), as OpenAI's
                # stream at [DONE]: a message_stop after no stop_reason ends a cut answer
                raise self._malformed(
                    "the stream ended at message_stop with no stop_reason: cut short upstream"
                )
            calls = [  # a tool_use with an empty input streams no JSON: it is {}
                ToolCall(
                    scrub(i), scrub(n), whole(scrub("".join(a) or start_input.get(k, ""))) or "{}"
                )
                for k, (i, n, a) in sorted(tools.items())
            ]
            finish: str | None = _FINISH.get(stop, stop)
            text = scrub("".join(parts))  # a key split across pieces is whole only now
            if calls and calls[0].name == _JSON_TOOL:
                text, calls = calls[0].arguments, []
                finish = _json_finish(finish)
            usage = reported if out_tokens is not None else None  # (no output count: none)
            yield ChatResponse(
                text, last, _searched(usage, searches), finish, calls,
                stop_sequence=seq_hit if stop == "stop_sequence" else None, thinking=thought,
                web_searches=searches,
            )  # fmt: skip
        except (httpx.RequestError, ProviderError) as e:
            if tail := halves.rest():  # what came before the cut, half a pair included
                yield tail
            raise self._stream_failed(e, made) from None
        finally:
            await resp.aclose()
