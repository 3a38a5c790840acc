"""OpenAI-compatible Chat Completions (OpenAI, OpenRouter, Together, Groq, vLLM, Ollama, ...)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Coroutine, Mapping
from typing import Any

import httpx

from .._json import encode_body
from .._redact import scrub
from ..errors import ProviderError, RetryableError, UnsupportedRequestError
from .base import (
    GENERATED,
    MAX_REPORTED_TOKENS,
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
    finish_stream,
    most_billed,
    parse_event,
    sendable,
    sse_events,
    stream_error,
    text_field,
    token_count,
    whole,
    wire_tool_id,
)

__all__ = ["OpenAIProvider"]

# OpenAI's reasoning models reject `max_tokens` and want `max_completion_tokens`; every other
# OpenAI-compatible server understands `max_tokens`.
_COMPLETION_TOKENS_MODELS = re.compile(r"^(o\d|gpt-5)")
# OpenAI's reasoning models (the o-series, gpt-5 but its -chat models) refuse a request
# that sets how they sample ("Unsupported parameter: 'stop' is not supported with this
# model"), which had ended a routed request with a 400; gpt-5.1 and later take temperature,
# top_p and logprobs at an effort of none, their default
_REASONING_MODELS = re.compile(r"^(o\d|gpt-5(?!(\.\d+)?-chat))")
_SAMPLES_AT_NONE = re.compile(r"^gpt-5\.[1-9]")


def _whole(pieces: list[str]) -> bool:
    """Whether a tool call's arguments so far are one whole JSON value."""
    try:
        json.loads("".join(pieces))
    except (ValueError, RecursionError):
        return False
    return True


def _usage(u: Any) -> Usage | None:
    """The reported usage; None when absent, incomplete (no prompt or no completion count:
    a missing count is not zero) or implausible (negative, huge, not integers, more cached
    and written than sent): the executor then counts the tokens itself."""
    if u.__class__ is dict:
        # The usual report, first: two counts as JSON gives them (ints, no bool), no cache
        # or reasoning figures (their fields absent, or zeros, or details dicts that hold
        # zeros), which the checks below would read as these same figures. Anything else
        # takes the checks.
        prompt, out = u.get("prompt_tokens"), u.get("completion_tokens")
        details = u.get("prompt_tokens_details")
        done = u.get("completion_tokens_details")
        if (
            prompt.__class__ is int
            and out.__class__ is int
            and 0 <= prompt <= MAX_REPORTED_TOKENS
            and 0 <= out <= MAX_REPORTED_TOKENS
            and (not details or (details.__class__ is dict and not details.get("cached_tokens")
                                 and not details.get("cache_write_tokens")))
            and (not done or (done.__class__ is dict and not done.get("reasoning_tokens")))
            and not u.get("prompt_cache_hit_tokens")
        ):  # fmt: skip
            return Usage(prompt, out)  # (the rest its defaults: none cached, "provider")
    return _checked_usage(u)


def _checked_usage(u: Any) -> Usage | None:
    """`_usage` of any report: each figure checked (`token_count`)."""
    if not isinstance(u, dict) or u.get("prompt_tokens") is None:
        return None
    if u.get("completion_tokens") is None:
        return None
    details = u.get("prompt_tokens_details")
    done = u.get("completion_tokens_details")
    try:
        prompt = token_count(u["prompt_tokens"], "usage.prompt_tokens")
        out = token_count(u["completion_tokens"], "usage.completion_tokens")
        cached = written = reasoning = 0
        if details and isinstance(details, dict):  # most answers have none, or zeros
            cached = token_count(
                details.get("cached_tokens") or 0, "usage.prompt_tokens_details.cached_tokens"
            )
            # prompt-cache writes, which OpenRouter reports for models that bill them
            written = token_count(
                details.get("cache_write_tokens") or 0,
                "usage.prompt_tokens_details.cache_write_tokens",
            )
        if not cached and u.get("prompt_cache_hit_tokens"):
            # DeepSeek's own API says its cache hits at the top level (billed at its cached
            # rate: read as none, they had been billed ~50x over)
            cached = token_count(u["prompt_cache_hit_tokens"], "usage.prompt_cache_hit_tokens")
        if done and isinstance(done, dict):
            reasoning = token_count(
                done.get("reasoning_tokens") or 0,
                "usage.completion_tokens_details.reasoning_tokens",
            )
    except ValueError:
        return None
    if cached + written > prompt or reasoning > out:
        return None
    return Usage(prompt, out, cached, written, "provider", 0, reasoning)  # by position


def _custom(c: Any) -> bool:
    """Is this tool call (or its first streamed piece) a custom tool's? By its `type`, else
    by a `custom` object beside no `function` (a `"custom": null` field is no custom call)."""
    kind = c.get("type")
    if kind is not None:
        return bool(kind == "custom")
    return c.get("custom") is not None and c.get("function") is None


def _tool_call(c: Any) -> ToolCall:
    """A tool call of an answer: a function's, or an OpenAI custom tool's (free text under
    `custom.input`, which had failed the whole answer as malformed)."""
    if _custom(c):
        return ToolCall(
            text_field(c.get("id"), "tool_calls[].id"),
            text_field(c["custom"]["name"], "tool_calls[].custom.name"),
            text_field(c["custom"].get("input"), "tool_calls[].custom.input"),
            "custom",
        )
    return ToolCall(
        text_field(c.get("id"), "tool_calls[].id"),  # (none: ToolCall makes one)
        text_field(c["function"]["name"], "tool_calls[].function.name"),
        text_field(c["function"].get("arguments"), "tool_calls[].function.arguments"),
    )


class _ToolAcc:
    """Tool-call pieces of a stream, assembled by index."""

    __slots__ = ("args", "id", "name", "type")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.type = "function"
        self.args: list[str] = []


def _without_pieces(chunk: Any) -> Any:
    """A stream's last event as `raw`: its choices' text pieces left out (the whole text is
    the answer's own)."""
    if not isinstance(chunk, dict) or not chunk.get("choices"):
        return chunk
    drop = ("content", "refusal", "tool_calls")
    choices = [
        {**c, "delta": {k: v for k, v in c["delta"].items() if k not in drop}}
        if isinstance(c, dict) and isinstance(c.get("delta"), dict) else c
        for c in chunk["choices"]
    ]  # fmt: skip
    return {**chunk, "choices": choices}


def _openai_messages(
    messages: list[dict[str, Any]], ids: _IdRule | None = None
) -> list[dict[str, Any]]:
    """The messages as OpenAI's API reads them. An Anthropic-shaped request (satisfice
    serve's /v1/messages) leaves marks this API has no field for: a tool result's
    `is_error` is said in the text the model reads ("Error: ..."), and a prompt-cache mark
    on a tool call or a tool result is left out, as on a tool (a mark on a content part is
    sent on, as OpenAI-compatible gateways read it). An assistant's `thinking_blocks` (a
    Claude model's thinking, signed for Anthropic's API alone) are left out too. A tool
    result's images (which OpenAI's tool messages cannot hold) are sent in a user message
    after the turn's tool results, the result's text saying so. Given `ids` (the API's rule
    for tool call ids), every call's id as it takes them (`_wire_ids`), before the images'
    label names it. The messages themselves when they hold none of these (the usual case:
    nothing copied)."""
    for m in messages:  # a loop, not any(): no generator made on every call
        if (
            "is_error" in m
            or "cache_control" in m
            or "thinking_blocks" in m
            or ("tool_calls" in m and (ids is not None or _marked(m["tool_calls"])))
            or (ids is not None and "tool_call_id" in m)
            or (m.get("role") == "tool" and _pictured(m.get("content")))
        ):
            break
    else:
        return messages
    if ids is not None:
        messages = _wire_ids(messages, *ids)
    out: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []  # the images of this turn's tool results, labelled
    for m in messages:
        if seen and m.get("role") != "tool":  # the turn's results are over: its images
            out.append({"role": "user", "content": seen})
            seen = []
        if m.get("role") == "tool" and _pictured(m.get("content")):
            m = _unpictured(m, seen)
        split = False
        if "is_error" in m or "cache_control" in m or "thinking_blocks" in m:
            # a tool result's marks, from Anthropic's shape; a Claude model's thinking
            failed = m.get("is_error") is True and m.get("role") == "tool"
            split = "thinking_blocks" in m and m.get("role") == "assistant"
            m = {k: v for k, v in m.items() if k not in _ANTHROPIC_ONLY}
            if failed:
                m["content"] = _error_text(m.get("content"))
        if _marked(m.get("tool_calls")):
            m = {**m, "tool_calls": [
                {k: v for k, v in c.items() if k != "cache_control"} for c in m["tool_calls"]
            ]}  # fmt: skip
        if split and out and out[-1].get("role") == "assistant":
            # an interleaved turn's next part (thinking after its text or a call): one
            # assistant message again, whose calls its tool messages follow at once
            out[-1] = _joined(out[-1], m)
        elif not split or m.get("content") or m.get("tool_calls"):
            out.append(m)  # (a part that held thinking alone is left out)
    if seen:
        out.append({"role": "user", "content": seen})
    return out


# Tool call ids as the APIs that check them take them: Mistral's (and its models' chat
# templates, wherever they are served) only 9 letters and digits ("Tool call id was
# call_0fypS1hVX but must be a-z, A-Z, 0-9, with a length of 9"), OpenAI's at most 40
# characters (an OpenAI Responses `fc_` id is 53, DeepSeek's `call_0_<uuid>` 43): each a
# 400 for a conversation whose calls another provider's model made
_IdRule = tuple[re.Pattern[str], int, str]  # valid ids; a hashed id's length and prefix
_MISTRAL_ID: _IdRule = (re.compile(r"[A-Za-z0-9]{9}"), 9, "")
_OPENAI_ID: _IdRule = (re.compile(r"(?s).{1,40}"), 24, "call_")
_MISTRAL_MODEL = re.compile(
    r"(?i)(^|/)(mistral|mixtral|ministral|magistral|codestral|devstral|pixtral|voxtral)"
)
_OPENAI_MODEL = re.compile(r"(gpt-|chatgpt|o\d)")


def _wire_ids(
    messages: list[dict[str, Any]], valid: re.Pattern[str], length: int, prefix: str
) -> list[dict[str, Any]]:
    """The messages with every tool call's id as `valid` takes it (`wire_tool_id`: a call
    and its result still pair); the messages themselves when every id already is."""

    def fixed(m: dict[str, Any]) -> dict[str, Any]:
        # (`wire_tool_id` gives a valid id back itself: `is not` tells a rewritten one)
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            new = [
                {**c, "id": i}
                if isinstance(c, dict)
                and (i := wire_tool_id(c.get("id"), valid, length, prefix)) is not c.get("id")
                else c
                for c in calls
            ]
            if any(a is not b for a, b in zip(new, calls, strict=True)):
                m = {**m, "tool_calls": new}
        if m.get("role") == "tool":
            i = wire_tool_id(m.get("tool_call_id"), valid, length, prefix)
            if i is not m.get("tool_call_id"):
                m = {**m, "tool_call_id": i}
        return m

    out = [fixed(m) for m in messages]
    return messages if all(a is b for a, b in zip(out, messages, strict=True)) else out


def _pictured(content: Any) -> bool:
    """Whether a tool message's content holds a part other than text (an image)."""
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type") != "text" for p in content
    )


def _unpictured(m: dict[str, Any], seen: list[dict[str, Any]]) -> dict[str, Any]:
    """A tool message with its text alone, saying where its images went; they are added to
    `seen` (the user message after the turn's results) under the call's id."""
    texts = [p for p in m["content"] if isinstance(p, dict) and p.get("type") == "text"]
    images = [p for p in m["content"] if not (isinstance(p, dict) and p.get("type") == "text")]
    call = m.get("tool_call_id", "")
    note = f"[{len(images)} image(s) returned: in the user message after the tool results]"
    seen.append({"type": "text", "text": f"The image(s) tool call {call} returned:"})
    seen.extend(images)
    if all(p.keys() == {"type", "text"} for p in texts):  # plain: one string, as usual
        content: Any = "\n".join([*(p["text"] for p in texts if p["text"]), note])
    else:  # a prompt-cache mark on a text part is sent on, as on any part
        content = [*texts, {"type": "text", "text": note}]
    return {**m, "content": content}


_ANTHROPIC_ONLY = ("is_error", "cache_control", "thinking_blocks")


def _joined(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two assistant messages as one: their texts in order, their tool calls in order."""
    parts = [
        p
        for c in (a.get("content"), b.get("content"))
        for p in ([{"type": "text", "text": c}] if isinstance(c, str) and c else c or [])
    ]
    out = {**a, "content": parts or None}
    calls = [*(a.get("tool_calls") or []), *(b.get("tool_calls") or [])]
    if calls:
        out["tool_calls"] = calls
    return out


def _moves(chunk: dict[str, Any]) -> bool:
    """Whether a stream's chunk without text carries anything (a tool call's piece, a
    refusal's, reasoning, a finish, a usage): progress. One with an empty delta is a
    keep-alive in all but name, which the idle timeout must still cut."""
    if chunk.get("usage"):
        return True
    for c in chunk.get("choices") or ():
        if not isinstance(c, dict):
            continue
        if c.get("finish_reason"):
            return True
        d = c.get("delta")
        if isinstance(d, dict) and any(v for k, v in d.items() if k != "role"):
            return True
    return False


def _marked(calls: Any) -> bool:
    return isinstance(calls, list) and any(
        isinstance(c, dict) and "cache_control" in c for c in calls
    )


def _error_text(content: Any) -> Any:
    """A failed tool's result as OpenAI's tool message says it: "Error: " before its text."""
    if isinstance(content, list):
        first = next(
            (j for j, p in enumerate(content) if isinstance(p, dict) and "text" in p), None
        )
        if first is None:
            return [{"type": "text", "text": "Error:"}, *content]
        content = list(content)
        content[first] = {**content[first], "text": f"Error: {content[first]['text']}"}
        return content
    return f"Error: {content or ''}"


def reasoning_refusal(model: str, effort: str | None, p: Mapping[str, Any]) -> str | None:
    """Why OpenAI would refuse body `p` (its sampling fields) on `model` at `effort` (the
    body's own `reasoning_effort`, given in `extra`, wins): the end of a sentence after the
    model's id; None when it takes it."""
    if not _REASONING_MODELS.match(model):
        return None
    effort = p.get("reasoning_effort", effort)
    at_none = bool(_SAMPLES_AT_NONE.match(model))
    always = _reasoning_refuses(p, True)
    why = always or _reasoning_refuses(p, at_none and effort in (None, "none"))
    if why is None:
        return None
    how = "" if effort is None else f" (effort {effort})"
    return f"{how} is one of OpenAI's reasoning models, which refuse {why}; leave it out, or " + (
        "ask for an effort of none" if at_none and not always else "ask for another model"
    )


def _reasoning_refuses(p: Mapping[str, Any], samples: bool) -> str | None:
    """What of body `p` OpenAI's reasoning models refuse, if anything: `stop`, penalties
    and `logit_bias` always, and temperature, top_p and logprobs unless `samples` (a model
    that takes them at an effort of none, sent none)."""
    for k, default in (("frequency_penalty", 0), ("presence_penalty", 0)):
        if p.get(k) not in (None, default):
            return f"{k} {p[k]!r:.20}"
    if p.get("stop"):
        return "stop sequences (stop)"
    if p.get("logit_bias"):
        return "logit_bias"
    if samples:
        return None
    for k in ("temperature", "top_p"):
        if p.get(k) not in (None, 1):
            return f"{k} {p[k]!r:.20} (only 1)"
    if p.get("logprobs") or p.get("top_logprobs") is not None:
        return "logprobs"
    return None


class OpenAIProvider(HTTPProvider):
    """One OpenAI-compatible deployment on a shared `httpx.AsyncClient`."""

    __slots__ = ("_ids", "_max_key", "_openai")

    default_deployment = "openai"

    @staticmethod
    def _endpoint(base_url: str) -> str:
        return base_url + "/chat/completions"

    @staticmethod
    def _auth(api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"}

    def __init__(self, client: httpx.AsyncClient, **kw: Any) -> None:
        super().__init__(client, **kw)
        self._max_key = (
            "max_completion_tokens" if _COMPLETION_TOKENS_MODELS.match(self.model) else "max_tokens"
        )
        # OpenAI's own API documents `user` and `prompt_cache_key`; OpenAI-compatible hosts
        # differ (some refuse a field they do not know), so only OpenAI is sent them
        self._openai = self._url.host == "api.openai.com"
        self._ids = (
            _MISTRAL_ID if self._url.host == "api.mistral.ai" or _MISTRAL_MODEL.search(self.model)
            else _OPENAI_ID if self._openai or _OPENAI_MODEL.match(self.model)
            else None
        )  # fmt: skip

    def _payload(self, r: ChatRequest, stream: bool) -> dict[str, Any]:
        if r.server_tools is not None:  # (routing sends such a request to Claude models alone)
            raise UnsupportedRequestError(
                f"{self.model_id}: Anthropic's server tools (web search, web fetch) run on "
                "Anthropic's API alone, not on this OpenAI-style one"
            )
        messages = _openai_messages(r.messages, self._ids)
        p: dict[str, Any] = {"model": self.model, "messages": messages}
        if r.max_tokens is not None:
            p[self._max_key] = r.max_tokens
        if r.temperature is not None:
            p["temperature"] = r.temperature
        if r.tools:  # a prompt-cache mark on a tool is Anthropic's, not OpenAI's
            p["tools"] = [
                {k: v for k, v in t.items() if k != "cache_control"} if "cache_control" in t else t
                for t in r.tools
            ]
        if r.tool_choice is not None:
            p["tool_choice"] = r.tool_choice
        if r.response_format is not None:
            p["response_format"] = r.response_format
        if self.effort is not None:
            p["reasoning_effort"] = self.effort
        if stream:
            p["stream"] = True
            p["stream_options"] = {"include_usage": True}
        if self._openai:
            if sendable(r.user, 64):  # (OpenAI's limit on it, as others report it)
                p["user"] = r.user
            if sendable(r.prompt_cache_key):  # which cached prefixes it may reuse
                p["prompt_cache_key"] = r.prompt_cache_key
        if r.extra:
            p.update(r.extra)
            stop = p.get("stop")  # (only `extra` sets it)
            if self._openai and isinstance(stop, list) and len(stop) > 4:
                # OpenAI's API takes at most 4 (a 400 there): another model's may take them
                raise UnsupportedRequestError(
                    f"{self.model_id}: OpenAI's API takes at most 4 stop sequences, got {len(stop)}"
                )
        if r.temperature is not None or r.extra:  # (where a sampling field can come from)
            why = reasoning_refusal(self.model, self.effort, p)
            if why is not None:  # refused here, the request goes on to its next model
                raise UnsupportedRequestError(f"{self.model_id}{why}")
        return p

    def complete(
        self, request: ChatRequest, timeout: httpx.Timeout
    ) -> Coroutine[Any, Any, ChatResponse]:
        return self._post(self._payload(request, False), timeout)  # (see `_post`)

    def _answer(self, data: Any, wire: float | None) -> ChatResponse:
        """The answer a whole (unstreamed) reply's decoded JSON says."""
        try:
            msg = data["choices"][0]
            message = msg["message"]
            calls = message.get("tool_calls")  # (most answers have none: no list's frame)
            calls = [_tool_call(c) for c in calls] if calls else []
            # `text_field`'s checks, the usual str read at once (no call)
            text = message.get("content")
            if text.__class__ is not str:
                text = text_field(text, "message.content")
            finish = msg.get("finish_reason")
            if finish.__class__ is not str:
                finish = text_field(finish, "finish_reason")
            finish = finish or None
            refusal = message.get("refusal")  # (usually null or absent)
            if refusal is not None:
                refusal = text_field(refusal, "message.refusal") or None
            if not (text or calls or refusal or finish):  # nothing said, nor why not
                raise ValueError("an answer with no content, tool call, refusal or finish_reason")
            # by position (a class called with keywords makes a dict of them: executor.run)
            resp = ChatResponse(
                text, data, _usage(data.get("usage")), finish, calls, wire, None, refusal
            )
        except PARSE_ERRORS as e:
            raise self._not_an_answer(data, e) from None
        if finish == "error":
            err = self._generation_failed()
            err.generated, err.reported = resp.text, resp.usage  # billed at least what it made
            raise err
        return resp

    def _generation_failed(self) -> ProviderError:
        """An answer whose finish_reason is "error" (OpenRouter's, and gateways' after it,
        for a generation that failed part-way): a failed call, the upstream may bill, not an
        answer that ended as it should (OpenAI clients had been sent it as "stop")."""
        err = RetryableError(
            f"{self.model_id} via {self.deployment}: the upstream ended its answer with "
            'finish_reason "error" (its generation failed part-way); retrying or another '
            "deployment usually works",
            model=self.model_id,
            deployment=self.deployment,
            status=200,
        )
        err.answered = True
        return err

    async def stream(
        self, request: ChatRequest, timeout: httpx.Timeout
    ) -> AsyncGenerator[str | StreamDelta | ChatResponse, None]:
        resp = await self._open(encode_body(self._payload(request, True)), timeout)
        resp, whole_ = await self._json_in_place(resp)
        if whole_ is not None:
            answer = self._answer(whole_[0], None)  # (an error object: raised as said)
            if answer.text:
                yield answer.text
            yield answer
            return
        halves = Halves()  # a surrogate pair split between two events, joined
        try:
            parts: list[str] = []
            refusal: list[str] = []
            made = GENERATED.get() or Generated()  # tool calls and reasoning (billed if cut)
            tools: dict[int, _ToolAcc] = {}
            finish: str | None = None
            usage: Usage | None = None
            floor: Usage | None = None  # the most billed of every report (`most_billed`)
            last: Any = None
            done = began = False
            events = sse_events(resp)
            async for _, data in events:
                if data.startswith("[DONE]"):  # (a space after it: as openai-python)
                    done = True
                    await finish_stream(events)
                    break
                try:
                    chunk, kept = parse_event(data)
                    if chunk.get("error") is not None:  # `"error": null` is no error
                        raise stream_error(data.encode(), self.model_id, self.deployment)
                    last = chunk
                    if chunk.get("usage"):  # (reported again: the larger figures)
                        said = _usage(chunk["usage"])
                        floor = made.usage = most_billed(floor, said)  # what a cut bills
                        # the answer's: unknown (counted) when the last report fails the
                        # checks, as it was, not an earlier report's smaller figures
                        usage = None if said is None else floor
                    piece = ""
                    for c, choice in enumerate(chunk.get("choices") or ()):
                        if choice.get("index") not in (0, None):
                            continue  # the answer is the first choice (as unstreamed)
                        # its text as sent, lone surrogate halves and all (joined with
                        # the next event's; what is left alone becomes U+FFFD)
                        delta = (choice if kept is None else kept["choices"][c]).get("delta") or {}
                        piece = halves.take(text_field(delta.get("content"), "delta.content"))
                        if piece:
                            parts.append(piece)
                            yield piece
                        refusal.append(text_field(delta.get("refusal"), "delta.refusal"))
                        # one of the two names (vLLM sends the same text under both)
                        r_ = delta.get("reasoning_content") or delta.get("reasoning")
                        if isinstance(r_, str):
                            made.thought.append(r_)
                        for tc in delta.get("tool_calls") or ():
                            call_id = text_field(tc.get("id"), "tool_calls[].id")
                            if tc.get("index") is not None:
                                i = token_count(tc["index"], "tool_calls[].index")
                            else:
                                # Some upstreams (Gemini's) stream each call whole, with no
                                # index: a new id starts the next call, no id continues one,
                                # but a name again (with no id) starts one too, and so does a
                                # name again with the same id after whole arguments (two
                                # calls given one id): such calls had been merged into one
                                # of invalid JSON.
                                i = max(tools, default=0)
                                part = tc.get("function") or tc.get("custom") or {}
                                named, more = part.get("name"), part.get("arguments")
                                if tools and (
                                    (call_id and tools[i].id not in ("", call_id))
                                    or (not call_id and named and tools[i].name)
                                    # (arguments again: a call that restates its id and name
                                    # with an empty last piece is one call still)
                                    or (named and tools[i].name and _whole(tools[i].args)
                                        and isinstance(more, str) and more.strip())
                                ):  # fmt: skip
                                    i += 1
                            if i not in tools and len(tools) >= 128:
                                raise ValueError("more than 128 tool calls in one answer")
                            acc = tools.setdefault(i, _ToolAcc())
                            if not acc.id and not acc.name and _custom(tc):
                                acc.type = "custom"  # its first piece says; free text follows
                            acc.id = call_id or acc.id
                            kind, text = (
                                ("custom", "input") if acc.type == "custom" else
                                ("function", "arguments")
                            )  # fmt: skip
                            fn = tc.get(kind) or {}
                            acc.name = text_field(fn.get("name"), f"{kind}.name") or acc.name
                            acc.args.append(text_field(fn.get(text), f"{kind}.{text}"))
                            made.out.append(acc.args[-1])
                        finish = text_field(choice.get("finish_reason"), "finish_reason") or finish
                    if not piece and began and _moves(chunk):
                        # a tool call's piece, reasoning some servers stream apart, a
                        # finish, a usage (the first chunk, its role, is the start)
                        yield PROGRESS
                    began = True
                    if finish is not None and chunk.get("usage") and not chunk.get("choices"):
                        # The usage-only chunk that follows the finish (a chunk without
                        # choices leaves `finish` as the ones before it set it): all that
                        # comes before [DONE], read briefly after it. An upstream that then
                        # held the connection had failed the whole answer at the stream's
                        # idle timeout or the deadline, before the read timeout. Silence
                        # before it is a cut answer: usage may come before the finish and
                        # be updated after it, content may follow a finish (tool-call
                        # arguments), and some upstreams send a finish and a usage on
                        # every chunk.
                        done = True
                        await finish_stream(events)
                        break
                except PARSE_ERRORS as e:
                    why = f"bad stream event ({type(e).__name__}: {e})"
                    raise self._malformed(why) from None
            if tail := halves.rest():
                parts.append(tail)
                yield tail
            if not done and finish is None:
                raise self._malformed("the stream ended before [DONE]")
            if finish is None and not (parts or tools or any(refusal)):
                # an empty stream ("data: [DONE]" alone) had been an answer, and no fallback
                raise self._malformed("the stream ended without an answer or a finish_reason")
            if finish is None:
                # A stream is whole once it says why it ended, as one cut before [DONE] is
                # (above): a proxy or a gateway whose upstream failed mid-answer ends its own
                # stream with [DONE], and the half answer had been taken as whole (finish
                # None, which the server sent on as "stop"). Cut, then: billed at an
                # estimate and at least the usage reported, as any cut stream is.
                raise self._malformed(
                    "the stream ended at [DONE] with no finish_reason: cut short upstream"
                )
            if finish == "error":  # what streamed is billed, as for any stream cut
                raise self._generation_failed()
            calls = [  # whole: a surrogate pair split between two pieces is joined now
                ToolCall(whole(scrub(a.id)), whole(scrub(a.name)),
                         whole(scrub("".join(a.args))), a.type)
                for _, a in sorted(tools.items())
            ]  # fmt: skip
            # a key split across pieces is whole only now: the text, and not the last
            # event's piece of it (`raw`), where the rest of a key split with the event
            # before it had survived each event's own scrub
            yield ChatResponse(
                scrub("".join(parts)), _without_pieces(last), usage, finish, calls,
                refusal=whole(scrub("".join(refusal))) or None,
            )  # fmt: skip
        except (httpx.RequestError, ProviderError) as e:
            if tail := halves.rest():  # what came before the cut, half a pair included
                yield tail
            raise self._stream_failed(e, made) from None
        finally:
            await resp.aclose()
