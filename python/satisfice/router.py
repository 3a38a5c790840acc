"""Router: `route()` (pure, synchronous, microseconds) and the request path built on it."""

from __future__ import annotations

import itertools
import os
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence, Sized
from functools import partial
from time import perf_counter, time
from types import MappingProxyType

from . import _core
from ._bill import CHECK_BILL
from ._extra import LIMITS, extra_text, header_text, server_turns, text_bytes
from ._real import as_count, as_real
from .decision import Candidate, Decision, Snapshot
from .errors import (
    ConfigError,
    InputError,
    NoRouteError,
    RegistryWarning,
    RouterClosedError,
    SatisficeError,
    UnknownModelError,
    UpstreamTimeoutError,
)
from .feedback import FeedbackLog, score_of
from .policy import _NO_CONSTRAINTS, Constraints, Policy
from .predict import ModelParams
from .registry import Registry

TYPE_CHECKING = False  # not typing's: Router() does not import typing (cold_start.py)
if TYPE_CHECKING:  # httpx costs ~100 ms to import: only chat() and stream() load it
    from pathlib import Path
    from typing import Any, Literal, Unpack

    import httpx

    from ._options import RequestOptions
    from ._verdict import RoomHold
    from .cascade import Cascade
    from .executor import ChatStream, ExecutionConfig, Executor, Run
    from .ledger import Ledger
    from .metrics import Metrics
    from .providers.base import StreamDelta
    from .record import Recorder
    from .result import Attempt, ChatResult
    from .state import HealthStore
    from .tracing import Tracing
    from .validators import Validator

    Messages = str | Sequence[Mapping[str, Any]]
    #: What `Router._prepare` makes of a request: the executor, the decision, the call's
    #: parameters, the deadline, the metadata, the messages (copied) and, when it routed
    #: around cooling deployments, how to route again without leaving them out.
    _Prepared = tuple[
        Executor,
        Decision,
        Mapping[str, Any],
        float | None,
        dict[str, Any],
        list[dict[str, Any]],
        Callable[[], Awaitable[Decision]] | None,
    ]

__all__ = ["Candidate", "Decision", "RequestOptions", "Router"]


def __getattr__(name: str) -> object:
    if name == "RequestOptions":  # imported when asked for: it needs typing
        from ._options import RequestOptions

        return RequestOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_CALL_FIELDS = (
    "max_tokens", "temperature", "tools", "tool_choice", "response_format", "extra", "user",
    "prompt_cache_key", "anthropic_beta", "context_management", "thinking_display",
    "no_thinking", "server_tools",
)  # fmt: skip
#: Wire fields `extra` may not set: what the router routes, prices and reads by.
_OWNED = frozenset(
    ("model", "messages", "system", "stream", "stream_options", "tools", "tool_choice",
     "response_format", "functions", "function_call")
)  # fmt: skip
# The call of a request that sets none of its fields (the usual one): shared, read-only (a
# request that sets one copies it), and told by identity where the wire request is built
# (`Executor.run`), which then passes its fields' defaults without 13 lookups.
NO_CALL: Mapping[str, Any] = MappingProxyType({**dict.fromkeys(_CALL_FIELDS), "no_thinking": False})
# RequestOptions' keys (a test checks them): the call's, the request's own, and the
# constraint overrides. The TypedDict is in a module of its own, imported when asked for
# (`satisfice.RequestOptions`), since it needs typing and Router() does not.
_OPTIONS = frozenset(
    {*_CALL_FIELDS, "timeout", "metadata", "decision", "prefer", *Constraints.__match_args__}
)
_CLOSED = (
    "the router is closed (aclose(), close() or the end of `with router:`): make requests "
    "before closing it, or make a new Router"
)
# Every router's locks, made anew in a forked child: a lock another thread of the parent
# held at the fork stays held there for good (its owner does not exist in the child), and
# the child's first request, or update(), would wait on it forever. Its requests in flight
# are the parent's, which the child never runs (its aclose() would wait out the whole grace).
_ROUTERS: weakref.WeakSet[Router] = weakref.WeakSet()


def _new_locks_in_child() -> None:
    from . import decision

    decision._ID_LOCK = threading.Lock()  # taken by every request's request_id
    for r in list(_ROUTERS):
        r._swap, r._setup = threading.Lock(), threading.RLock()  # (its FeedbackLog's: its own)
        r._in_flight = set()
        if r._io is not None:
            r._io.after_fork()


os.register_at_fork(after_in_child=_new_locks_in_child)

# Prompts above this many bytes, or of more messages, are routed on a worker thread (the
# GIL is released there): reading 300,000 empty messages had held the loop for 0.5 s.
_ROUTE_INLINE_BYTES = 32 * 1024
_ROUTE_INLINE_MESSAGES = 1024
#: The most messages a request may hold: Anthropic's API limit (100,000), which no
#: provider's goes past; a million tiny ones had held the event loop for seconds.
MAX_MESSAGES = 100_000


def _route_inline(
    msgs: list[dict[str, Any]], extra: str | None = None, size: int | None = None
) -> bool:
    """Whether to route on the event loop: not when an exact count could be long (a large
    prompt, or many messages) or must wait for the tokenizers' build (a process's first
    second). `size`: the messages' text, when `_plain_size` told it."""
    if len(msgs) > _ROUTE_INLINE_MESSAGES:
        return False
    if size is None:
        # as many content parts and tool calls as that are read one by one too (by the
        # count, and by text_bytes itself): not on the loop either
        size = text_bytes(msgs, _ROUTE_INLINE_MESSAGES)
        if size is None:
            return False
    size += len(extra) if extra else 0
    return size < _ROUTE_INLINE_BYTES and _core.tokenizers_ready()


class ClientClosedStream(Exception):
    """The record's error for a stream its caller closed before the end."""

    # the call it cut off is on record (the executor estimates it: the prompt, the text
    # sent), and between calls none was in flight: its calls' bills are its total
    cost_unknown = False

    def __init__(self, why: str | None = None) -> None:
        super().__init__(why or "the caller closed the stream before its end")


class RequestCancelled(Exception):
    """The record's error for a request its caller cancelled before the answer."""

    def __init__(self, called: bool = True, cut: bool | None = None) -> None:
        # `called`: routed, so calls may have been made; `cut`: one was cut off after it
        # was sent (on record at an estimate). With none cut, what its calls were billed is
        # its total ($0 while it was routed, or waiting between calls)
        self.cost_unknown = called if cut is None else cut
        self.result: Any = None  # a ladder's steps so far (CascadeResult), for the record
        super().__init__(
            "the caller cancelled the request before its answer" if called else
            "the caller cancelled the request while it was routed, before any call"
        )  # fmt: skip


def _known_bill(attempts: list[Any]) -> float | None:
    """What `attempts` were billed, by the rule of `total_cost_usd` (None: one unpriced)."""
    from .result import billed_cost  # (result imports the providers: not at import time)

    out = billed_cost(attempts)
    return None if out is None else out[0]


def _as_sent(messages: Messages) -> Messages:
    """A copy of the messages as a request sends them, for its record (`record_prompts`):
    the caller's list, its dicts and their parts are the caller's to change meanwhile (a
    chat loop appends its turns to one list, a stream's caller its answer as it comes)."""
    from ._json import dumps, loads

    if isinstance(messages, str):
        return messages
    try:
        out: Messages = loads(dumps(messages))
        return out
    except (TypeError, ValueError):  # not JSON: the list and its dicts, at least
        return [dict(m) if isinstance(m, Mapping) else m for m in messages]


def _shaped(c: Constraints, tools: Any, rf: Any) -> tuple[Constraints, str | None]:
    """What a request's tools and response_format ask of routing: a model with tool use or
    JSON output (`needs`), and their text, which providers bill as prompt tokens (so
    windows, costs and a server's budget reservation count it). One rule for chat(),
    stream(), route() and the server's pre-routing."""
    if tools is None and rf is None:  # the usual request
        return c, None
    _check_shape(tools, rf)
    needs: tuple[str, ...] = ()
    if tools:
        needs += ("tools",)
    if rf is not None and rf.get("type") != "text":
        needs += ("json",)
    if needs and not set(needs) <= set(c.needs):
        c = Constraints.of(c, needs=tuple(sorted({*c.needs, *needs})))
    return c, extra_text(tools, rf)


def _plain_size(msgs: list[dict[str, Any]]) -> int | None:
    """The text of `msgs` (characters), when each is a plain turn, a role that is not the
    assistant's and a str content, nothing else (the usual request): `text_bytes` of them,
    and neither `server_turns` nor `_thinks_refused` is true of them, told in one pass
    without their three calls. None: any other message (those ask them)."""
    size = 0
    for m in msgs:
        content, role = m.get("content"), m.get("role")
        # (two keys, a str content and a role: no key but these two)
        if len(m) != 2 or content.__class__ is not str or role is None or role == "assistant":
            return None
        size += len(content)
    return size


def _message_list(messages: object) -> list[dict[str, Any]]:
    """The caller's messages as a list of fresh dicts (theirs are never changed)."""
    if type(messages) is list and len(messages) <= MAX_MESSAGES:  # the usual case: no ABCs
        # (copied first, checked by the count: no generator's frame for `all`; a loop: a
        # comprehension's own frame cost more than its appends for a few messages)
        copied = []
        for m in messages:
            if type(m) is dict:
                copied.append(m.copy())
        if len(copied) == len(messages):
            return copied
    elif (
        isinstance(messages, Sized)
        and not isinstance(messages, str)  # one prompt: its length is in characters
        and len(messages) > MAX_MESSAGES
    ):
        raise InputError(
            f"{len(messages):,} messages: a request holds at most {MAX_MESSAGES:,} (the most "
            "any provider's API takes); send fewer, e.g. the conversation's recent turns"
        )
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if isinstance(messages, Sequence) and all(isinstance(m, Mapping) for m in messages):
        return [dict(m) for m in messages]
    raise InputError(
        "messages must be a str or a list of {'role': ..., 'content': ...} dicts, got "
        f"{type(messages).__name__}" + (" holding a non-dict" if isinstance(messages, list) else "")
    )


def _on_anthropic(registry: Registry, c: Constraints, tools: list[dict[str, Any]]) -> Constraints:
    """`c`, allowing only models with an Anthropic deployment: a request with Anthropic's
    server tools (run at its side while the model answers) can go to Claude models alone;
    one that may search, to those whose price has a `per_search` when any is allowed (a
    search on another is billed at a price nobody knows)."""
    from .providers.anthropic import prices_searches, runs_server_tools, searches

    claude = {m.id for m in registry if runs_server_tools(m)}
    allow = sorted(claude) if c.allow is None else [m for m in c.allow if m in claude]
    if any(searches(t) for t in tools):
        allow = [m for m in allow if prices_searches(registry[m])] or allow
    if not allow:
        among = "the models the request allows" if c.allow is not None else "the registry"
        raise NoRouteError(
            "this request can go to models on Anthropic's API alone (it has Anthropic's "
            "server tools, such as web search, or ends on an assistant turn to continue), "
            f"and no model in {among} has an Anthropic deployment; ask for a Claude model, "
            "or leave those out"
        )
    return Constraints.of(c, allow=tuple(allow))


def _check_shape(tools: object, rf: object) -> None:
    """Tools and a response format the providers can take, checked before anything is
    routed or sent (a chat() given its decision too), so that none reaches a provider's
    translation misread."""
    if rf is not None:
        if not isinstance(rf, Mapping):
            raise ConfigError(
                f"response_format must be a dict such as {{'type': 'json_object'}}, got "
                f"{type(rf).__name__}; for a pydantic model pass {{'type': 'json_schema', "
                "'json_schema': {'name': ..., 'schema': Model.model_json_schema()}}"
            )
        _check_response_format(rf)
    if tools is not None:
        _check_tools(tools)


def _named(d: object) -> bool:
    return isinstance(d, Mapping) and isinstance(d.get("name"), str) and bool(d["name"])


_TOOL_SHAPE = "{'type': 'function', 'function': {'name': ..., 'parameters': {...JSON schema}}}"


def _check_tools(tools: object) -> None:
    """Tools in a shape the providers take: OpenAI's function or custom tool, or an
    Anthropic tool (which has an input_schema, a custom one too). A custom tool of
    OpenAI's (free-text input) is refused by Anthropic-wire models, with a BadRequestError
    that says so."""
    if not isinstance(tools, list):
        raise ConfigError(f"tools must be a list of tool dicts, got {type(tools).__name__}")
    for i, t in enumerate(tools):
        if not isinstance(t, Mapping):
            raise ConfigError(f"tools must be a list of tool dicts, got {type(t).__name__} "
                              f"at tools[{i}]")  # fmt: skip
        if "input_schema" in t:  # Anthropic's own shape, a custom tool's too
            ok = _named(t) and isinstance(t["input_schema"], Mapping)
        elif "function" in t:
            fn = t["function"]
            ok = t.get("type", "function") == "function" and _named(fn)
            ok = ok and isinstance(fn.get("parameters") or {}, Mapping)
            ok = ok and isinstance(fn.get("description") or "", str)
        elif t.get("type") == "custom":
            ok = _named(t.get("custom"))
        else:
            ok = False
        if not ok:
            raise ConfigError(
                f"tools[{i}] is not a tool: expected {_TOOL_SHAPE} (a name, and parameters "
                f"as a JSON-schema object), got {t!r:.80}"
            )


_FORMATS = ("text", "json_object", "json_schema")


def _check_response_format(rf: Mapping[str, Any]) -> None:
    kind = rf.get("type")
    if kind not in _FORMATS:
        raise ConfigError(f"response_format's type must be one of {', '.join(_FORMATS)}, "
                          f"got {kind!r:.40}")  # fmt: skip
    if kind == "json_schema":
        js = rf.get("json_schema")
        if (
            not isinstance(js, Mapping)
            or not _named(js)
            or not isinstance(js.get("schema", {}), Mapping)
        ):
            raise ConfigError(
                "response_format json_schema must be {'type': 'json_schema', 'json_schema': "
                "{'name': ..., 'schema': {...}}}"
            )


#: tool_choice objects by type: OpenAI's (function, custom, allowed_tools) and Anthropic's
#: (auto, any, none, tool), with what names the tool, if anything does.
_CHOICES: dict[str, str | None] = {
    "function": "function", "custom": "custom", "allowed_tools": None,
    "auto": None, "any": None, "none": None, "tool": "",
}  # fmt: skip


def _check_tool_choice(choice: object, tools: object) -> None:
    if choice is None:
        return
    named = None  # the tool a choice names
    if isinstance(choice, str):
        ok = choice in ("none", "auto", "required")
    elif (
        isinstance(choice, Mapping)
        and isinstance(kind := choice.get("type"), str)  # a list or dict is no key (a 500)
        and kind in _CHOICES
    ):
        where = _CHOICES[kind]
        named = None if where is None else choice if where == "" else choice.get(where)
        ok = where is None or _named(named)
    else:
        ok = False
    if not ok:
        raise ConfigError(
            "tool_choice must be 'none', 'auto', 'required', {'type': 'function', "
            "'function': {'name': ...}} (or Anthropic's {'type': 'tool', 'name': ...}, "
            f"'auto', 'any', 'none'), got {choice!r:.60}"
        )
    says_none = choice == "none" or (isinstance(choice, Mapping) and choice["type"] == "none")
    if not tools and not says_none:
        raise ConfigError(f"tool_choice {choice!r:.60} needs tools; pass tools=[...]")
    names: list[object] = []
    if isinstance(named, Mapping):
        names.append(named["name"])
    elif isinstance(choice, Mapping) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools")
        listed = allowed.get("tools") if isinstance(allowed, Mapping) else None
        if not isinstance(listed, list) or not listed:
            raise ConfigError("tool_choice allowed_tools needs {'mode': ..., 'tools': [...]}")
        names += [_tool_name(t) for t in listed]
    if names and isinstance(tools, list):
        defined = {_tool_name(t) for t in tools}
        for name in names:
            if name not in defined:
                raise ConfigError(f"tool_choice names {name!r:.60}, which tools does not define")


def _tool_name(t: Any) -> object:
    """A tool's name in any of the shapes `_check_tools` takes."""
    if not isinstance(t, Mapping):
        return None
    inner = t.get("function") if "function" in t and "input_schema" not in t else t.get("custom")
    return (inner if isinstance(inner, Mapping) else t).get("name")


def _prompt_mark(messages: object, extra: str | None) -> tuple[int, int, int, int]:
    """What a decision remembers of the prompt it was routed for: its text's length (as the
    exact count reads it, tools and schema included), its messages, its content parts (an
    image is a part) and a hash of its texts (a str caches its hash: the server's second
    look at the same strings is cheap). Numbers, taken when it is routed: a prompt grown in
    place later is not the one routed, and neither is another text of the same length."""
    h = hash(extra)
    if isinstance(messages, str):
        return len(messages) + (len(extra) if extra else 0), 1, 0, hash((h, messages))
    msgs = messages if isinstance(messages, list | tuple) else list(messages)  # type: ignore[call-overload]
    parts = 0
    for m in msgs:
        c = m.get("content")
        if isinstance(c, str):
            h = hash((h, c))
        elif isinstance(c, list | tuple):
            parts += len(c)
            for p in c:
                if isinstance(p, Mapping) and isinstance(t := p.get("text"), str):
                    h = hash((h, t))
        if calls := m.get("tool_calls"):  # an agent's turns: their arguments are text too
            for tc in calls if isinstance(calls, list | tuple) else ():
                fn = tc.get("function") if isinstance(tc, Mapping) else None
                if isinstance(fn, Mapping) and isinstance(a := fn.get("arguments"), str):
                    h = hash((h, a))
    return text_bytes(msgs) + (len(extra) if extra else 0), len(msgs), parts, h


def _marked(d: Decision) -> Decision:
    """`d` with its prompt's mark (`_prompt_mark`) taken now, as it is handed out (by
    route(), aroute() and decide()): a prompt grown in place later is not the one routed.
    A chat()'s own decision keeps a reference until a caller gives it back (`result.decision`),
    so the usual request pays nothing for it."""
    if d._asked is not None and len(d._asked) == 2:
        d._asked = _prompt_mark(*d._asked)
    return d


def _check_asked(
    given: Decision, msgs: list[dict[str, Any]], tools: object, response_format: object
) -> None:
    """A decision is called with the prompt it was routed for: its cost cap's output limit,
    its window and its capabilities (vision) were worked out for that prompt (100 tool
    definitions added at the call had been sent under a cap they broke 28 times over)."""
    asked = _marked(given)._asked
    if asked is None or len(asked) != 4:
        return
    now = _prompt_mark(msgs, extra_text(tools, response_format))
    if now != asked:
        (chars, n, parts, _), (was, n0, parts0, _) = now, asked
        raise ConfigError(
            f"decision= was routed for another prompt ({was:,} characters in {n0} message(s) "
            f"and {parts0} part(s), tools and response_format included; this call sends "
            f"{chars:,} in {n} and {parts}): its cost cap, window and capabilities were "
            "worked out for that prompt; pass the messages, tools and response_format it "
            "was decided on, or decide again"
        )


def _thinks_refused(msgs: list[dict[str, Any]]) -> bool:
    """Whether Anthropic's thinking rows would refuse these messages (see
    `providers.anthropic.refused_beside_thinking`): checked only for a conversation with an
    assistant turn, so the usual request imports nothing for it."""
    for m in msgs:  # (a loop: `any` over a generator made a frame for it)
        if m.get("role") == "assistant":
            from .providers.anthropic import refused_beside_thinking

            return refused_beside_thinking(msgs)
    return False


_THINKING_ROWS: tuple[Registry, frozenset[str]] | None = None


def _thinking_on_anthropic(registry: Registry) -> frozenset[str]:
    """The rows of `registry` that think on Anthropic's API alone: worked out once per
    registry (an agent's every turn asks), the last one kept (replaced whole: any thread)."""
    global _THINKING_ROWS
    kept = _THINKING_ROWS
    if kept is None or kept[0] is not registry:
        from .providers.anthropic import thinks_on_anthropic

        kept = _THINKING_ROWS = (
            registry,
            frozenset(m.id for m in registry if thinks_on_anthropic(m)),
        )
    return kept[1]


def _ladder(cascade: object) -> Literal["auto", "given"] | None:
    """Which ladder a chat() climbs: the policy's tuned one, one it names (a Cascade), or
    none (cascade=True builds its ladder of the decision's candidates, floor and all)."""
    if cascade == "auto":
        return "auto"
    return None if cascade is None or isinstance(cascade, bool) else "given"


def _deadline(timeout: float | None, c: Constraints, t0: float | None) -> float | None:
    """The request's deadline (perf_counter time): `timeout` seconds from `t0`, else its
    latency SLO's; None without either (or without `t0`: routing alone)."""
    if timeout is None and c.latency_slo_ms is not None:
        timeout = c.latency_slo_ms / 1000.0
    return None if timeout is None or t0 is None else t0 + timeout


#: Service tiers an upstream bills at rates of their own (OpenAI's priority, flex, scale);
#: Anthropic's `standard_only` and every `auto` or default one bill at the standard rates.
_TIERS_PRICED_APART = frozenset({"priority", "flex", "scale"})


def _check_options(call: dict[str, Any], timeout: object, metadata: object) -> None:
    """The call's own options have the types the wire needs (values are checked there)."""
    extra = call["extra"]
    if extra is not None and not isinstance(extra, Mapping):
        raise ConfigError(f"extra must be a dict, got {type(extra).__name__}")
    _check_tool_choice(call["tool_choice"], call["tools"])
    if extra and (owned := sorted(_OWNED & extra.keys())):
        # merged into the wire payload last: these would replace what was routed, priced
        # and counted (another model, another prompt, a stream read as an answer)
        raise ConfigError(
            f"extra may not set {', '.join(owned)}: the router sets them from the request "
            "(pass messages, tools, tool_choice and response_format as chat()'s own "
            "arguments; the model is routed, or pinned with allow=[...])"
        )
    if extra and (limits := LIMITS & extra.keys()):
        for k in limits:
            # sent as given: a -1 had been billed as -1 tokens, a float cut from the wire
            # under a cap, a string switched the usage check off
            if (v := as_count(extra[k])) is None or v < 1:
                raise ConfigError(f"extra {k} must be an integer >= 1, got {extra[k]!r:.40}")
    if extra and isinstance(tier := extra.get("service_tier"), str) and tier in _TIERS_PRICED_APART:
        # billed at the tier's rates by the upstream, at the standard ones here: a $0.04
        # priority call had been recorded, budgeted and capped as $0.02
        raise ConfigError(
            f"extra service_tier={extra['service_tier']!r:.20}: satisfice prices calls at "
            "the standard tier's rates, so a priority or flex call would be billed wrong; "
            'leave service_tier out (or "auto")'
        )
    if extra and extra.get("n", 1) != 1:
        # a stream ran the answers' pieces into one text; a complete call took the first
        raise ConfigError(
            f"extra n={extra['n']!r:.20}: chat() and stream() return one answer, and the "
            "others would be billed unseen; make n calls, or race=n for the first good one"
        )
    if metadata is not None and not isinstance(metadata, Mapping):
        raise ConfigError(f"metadata must be a dict, got {type(metadata).__name__}")
    for k in ("user", "prompt_cache_key"):
        v = call[k]
        if v is not None and not isinstance(v, str):
            raise ConfigError(f"{k} must be a string, got {type(v).__name__}")
    beta = call["anthropic_beta"]
    if beta is not None and not header_text(beta):
        raise ConfigError(
            f"anthropic_beta must be the anthropic-beta header's value (ASCII text, up to "
            f"8,192 characters), got {beta!r:.60}"
        )
    cm = call["context_management"]
    if cm is not None:
        if not isinstance(cm, Mapping):
            raise ConfigError(
                f"context_management must be a dict (Anthropic's), got {type(cm).__name__}"
            )
        call["context_management"] = dict(cm) or None
    st = call["server_tools"]
    if st is not None:
        if not isinstance(st, Sequence) or not all(
            isinstance(t, Mapping) and isinstance(t.get("type"), str)
            and isinstance(t.get("name"), str) for t in st
        ):  # fmt: skip
            raise ConfigError(
                "server_tools must be a list of Anthropic server tool definitions, each with "
                "a 'type' and a 'name' (e.g. {'type': 'web_search_20250305', 'name': "
                "'web_search'})"
            )
        # (empty: none offered now, but a turn sent back ran one: still Anthropic's)
        call["server_tools"] = [dict(t) for t in st]
    if call["no_thinking"] is not None and not isinstance(call["no_thinking"], bool):
        raise ConfigError(f"no_thinking must be True or False, got {call['no_thinking']!r:.40}")
    call["no_thinking"] = bool(call["no_thinking"])
    display = call["thinking_display"]
    if display not in (None, "summarized", "omitted"):
        raise ConfigError(
            f"thinking_display must be 'summarized' or 'omitted' (Anthropic's thinking.display),"
            f" got {display!r:.40}"
        )
    sent = (extra, call["tool_choice"], cm, st)
    if any(v is not None for v in sent):
        # sent upstream as given, so checked as they will be encoded, before routing: a lone
        # surrogate in `stop` had been routed, admitted (a served key's rate counted) and
        # refused only when the provider encoded the request. (`user` and
        # `prompt_cache_key` are hints, sent only where `sendable`: never refused.)
        from ._json import encode_body

        encode_body(sent)  # BadRequestError, as the provider's encoding would say
    if timeout is not None and not (
        isinstance(timeout, int | float) and not isinstance(timeout, bool) and 0 < timeout < 1e9
    ):
        raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout!r:.40}")
    m = call["max_tokens"]
    if m is not None and (isinstance(m, bool) or not isinstance(m, int) or not 0 < m < 2**32):
        raise ConfigError(f"max_tokens must be an integer in [1, 2**32), got {m!r:.40}")
    t = call["temperature"]
    if t is not None and ((f := as_real(t)) is None or not 0 <= f <= 2):
        # NaN went out as a body that is no JSON; a str or -5 as given
        raise ConfigError(f"temperature must be a number from 0 to 2, got {t!r:.40}")


def _warn_attention(registry: Registry) -> None:
    """Retired or retiring models and stale prices: a warning and a log line each."""
    notes = registry.attention()
    if not notes:
        return
    import logging  # here: Router() in a fresh process is faster without it
    import warnings

    log = logging.getLogger("satisfice.router")
    for note in notes:
        log.warning("registry: %s", note, extra={"event": "registry_attention"})
        warnings.warn(note, RegistryWarning, stacklevel=3)


_ChatStream: type[ChatStream] | None = None


def _chat_stream() -> type[ChatStream]:
    """The executor's ChatStream, imported at the first stream() (httpx is slow to import:
    Router() does not load it) and kept: an import statement per call runs importlib's
    Python code (~14,000 instructions)."""
    global _ChatStream
    from .executor import ChatStream

    _ChatStream = ChatStream
    return ChatStream


class Router:
    """Routes requests over a registry. `Router()` uses the bundled registry and policy.

    The registry and policy are compiled into one immutable `Snapshot`; `update()` and
    `feedback()` build a new one off to the side and swap it in with one assignment, so a
    request reads one consistent snapshot and never takes a lock.
    """

    def __init__(self, registry: Registry | None = None, policy: Policy | None = None) -> None:
        self._snap = Snapshot.build(
            registry if registry is not None else Registry.default(),
            policy if policy is not None else Policy(),
        )
        _warn_attention(self._snap.registry)
        self._feedback = FeedbackLog()
        self._swap = threading.Lock()  # writers only: two updates must not lose one another
        # the executor and chat_sync()'s loop thread are made once, however many threads ask
        self._setup = threading.RLock()
        self._in_flight: set[_Request] = set()  # requests running: aclose() waits for them
        self._closed = False
        _ROUTERS.add(self)

    @property
    def snapshot(self) -> Snapshot:
        return self._snap

    @property
    def registry(self) -> Registry:
        return self._snap.registry

    @property
    def policy(self) -> Policy:
        return self._snap.policy

    def update(self, registry: Registry | None = None, policy: Policy | None = None) -> None:
        """Swap in a new registry and/or policy (compiled once, off to the side)."""
        with self._swap:
            old = self._snap
            self._snap = Snapshot.build(
                registry if registry is not None else old.registry,
                policy if policy is not None else old.policy,
            )
        if registry is not None:
            _warn_attention(registry)

    def route(
        self,
        messages: Messages,
        constraints: Constraints | Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Decision:
        """Pick a model for `messages` (a prompt string or OpenAI-style messages).

        `tools=` and `response_format=` (as chat() takes them) route as chat() would: to a
        model with tool use or JSON output, their tokens counted in the prompt's.
        Raises NoRouteError naming the constraint that emptied the candidate set (and, with
        `strict_floor`, when no model reaches the quality floor), and ConfigError for a
        constraint that does not exist or has a bad value.
        """
        if constraints is None and not overrides:  # the usual call: nothing to check or shape
            return _marked(self._route(self._snap, messages, _NO_CONSTRAINTS))
        tools, rf = overrides.pop("tools", None), overrides.pop("response_format", None)
        c, extra = _shaped(Constraints.of(constraints, **overrides), tools, rf)
        return _marked(self._route(self._snap, messages, c, extra=extra))

    def _route(
        self,
        snap: Snapshot,
        messages: Messages,
        c: Constraints,
        skip: frozenset[str] = frozenset(),
        live_p95_ms: list[tuple[int, float]] | None = None,
        *,
        extra: str | None = None,
        fallback_skip: frozenset[str] | None = None,
    ) -> Decision:
        """route() on one snapshot, with `skip` (models this request cannot call) excluded,
        measured p95 latencies (table row, ms) in place of the registry's, and `extra` (the
        request's tool definitions and response schema) counted as prompt tokens. If that
        leaves nothing, routed again skipping only `fallback_skip` (when given), so that the
        executor reports each cooldown instead of a bare "no route"."""
        policy = snap.policy
        # in order, as the stub names them (by name, the extension's matching of 13
        # keywords had been about 2,200 instructions a route)
        plan = snap.table.plan(
            messages,
            c.max_cost_usd,  # max_cost
            c.latency_slo_ms,  # latency_slo_ms
            policy.quality_floor if c.quality_floor is None else c.quality_floor,
            list(c.needs) if c.needs else None,  # needs
            c.max_output_tokens,  # max_output_tokens
            c.lam if c.lam is not None else policy.lam,  # lam
            # (nothing to exclude for the usual request: no call to `exclude` to say so)
            snap.exclude(c, skip) if skip or c is not _NO_CONSTRAINTS else None,  # exclude
            live_p95_ms,  # live_p95_ms
            extra,  # extra_text
            c.count_prompt,  # count_prompt
            c.output_includes_thinking,  # output_includes_thinking
            c.max_reasoning_tokens,  # thinking_cap
        )
        empty = not len(plan)
        if empty or (
            plan.below_floor and (policy.strict_floor if c.strict_floor is None else c.strict_floor)
        ):
            if fallback_skip is not None and skip != fallback_skip:
                return self._route(snap, messages, c, fallback_skip, live_p95_ms, extra=extra)
            raise snap.no_route(plan.filtered, c, skip) if empty else snap.below_floor(plan, c)
        d = Decision(snap, plan, c, self._feedback)
        d._asked = (messages, extra)  # marked when the decision is handed out (_marked)
        return d

    async def aroute(
        self,
        messages: Messages,
        constraints: Constraints | Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Decision:
        """`route()` for async code: on the event loop when that is cheap, else on a worker
        thread (a large prompt, or the tokenizers still being built), so the loop never
        waits for an exact count."""
        tools, rf = overrides.pop("tools", None), overrides.pop("response_format", None)
        c, extra = _shaped(Constraints.of(constraints, **overrides), tools, rf)
        msgs = _message_list(messages)
        return _marked(await self._route_off_loop(self._snap, msgs, c, extra=extra))

    async def _route_off_loop(
        self,
        snap: Snapshot,
        msgs: list[dict[str, Any]],
        c: Constraints,
        skip: frozenset[str] = frozenset(),
        live: list[tuple[int, float]] | None = None,
        *,
        extra: str | None = None,
        deadline: float | None = None,
        fallback_skip: frozenset[str] | None = None,
    ) -> Decision:
        """`_route` on the event loop when that is cheap (`_route_inline`), else on a
        worker thread, waited for until `deadline` (perf_counter time) at most."""
        if _route_inline(msgs, extra):
            return self._route(snap, msgs, c, skip, live, extra=extra, fallback_skip=fallback_skip)
        return await self._route_on_thread(
            snap, msgs, c, skip, live, extra, deadline, fallback_skip
        )

    async def _route_on_thread(
        self,
        snap: Snapshot,
        msgs: list[dict[str, Any]],
        c: Constraints,
        skip: frozenset[str],
        live: list[tuple[int, float]] | None,
        extra: str | None,
        deadline: float | None,
        fallback_skip: frozenset[str] | None,
    ) -> Decision:
        """`_route` on a worker thread (the GIL released while it counts), waited for until
        `deadline` (perf_counter time) at most."""
        import asyncio  # loaded already (we are in a coroutine); Router() alone does not need it

        route = partial(self._route, extra=extra, fallback_skip=fallback_skip)
        routing = asyncio.to_thread(route, snap, msgs, c, skip, live)
        if deadline is None:
            return await routing
        try:
            return await asyncio.wait_for(routing, max(deadline - perf_counter(), 0.0))
        except TimeoutError:
            # (a process's first seconds build the exact counters' tokenizers, which a
            # large prompt's count waits for: 1-2 s past a 0.2 s deadline)
            raise UpstreamTimeoutError(
                "the request's deadline passed while its prompt was routed (counted on a "
                "worker thread; in a process's first seconds the exact counters' tokenizers "
                "are still being built): nothing was called; retry, or give it more time"
            ) from None

    def feedback(self, request_id: str, score: float, model: str | None = None) -> ModelParams:
        """Tell the router how good an answer was (score in [0, 1]; 1 = acceptable).

        Updates the answering model's ability by a Bayesian (Laplace) step on that prompt's
        latent difficulty and skills and swaps in a snapshot with that one row changed, so
        the next route() uses it. `model` defaults to the decision's primary; pass the model
        that actually answered if a fallback did. Returns the model's new parameters.
        Persist them with `save_policy()`. A request that failed or was cancelled has no
        answer to score: its id is an InputError.
        """
        score = score_of(score)  # a plain float: the record is JSON
        if self._closed:  # (accepted, the score had reached no ledger, without a word)
            raise RouterClosedError(
                "the router is closed: a score given after aclose() would reach no ledger "
                "and no request would route with it; score answers before closing the router"
            )
        with self._swap:
            snap = self._snap
            qm = snap.policy.quality_model()
            # InputError if unknown, scored already or routed by a predictor of another k;
            # UnknownModelError names the known ids
            latent, target, embedding = self._feedback.claim(
                request_id, model, snap.registry.__getitem__, qm.k + 1
            )
            spec = snap.registry[target]
            new = self._feedback.observe(qm, target, qm.params_for(spec), latent, score, embedding)
            self._snap = snap.with_params(target, new)
        if self._rec is not None:
            # with the model it scored: `satisfice train` credits it as this update did
            self._rec.feedback(request_id, score, "feedback", target)
        return new

    def save_policy(self, policy_path: str | Path, predictor_path: str | Path) -> None:
        """Save the predictor (with every feedback update) to `predictor_path` and the policy
        JSON, pointing at it, to `policy_path`; `Policy.load(policy_path)` restores both."""
        policy = self._snap.policy
        policy.quality_model().save(predictor_path)
        policy.save(policy_path, predictor_path)

    # -- calling models: see executor.py --------------------------------------------------
    _io: Executor | None = None  # built by the first chat()/stream(), or by configure()
    _owns_client = False

    def configure(
        self,
        *,
        http: httpx.AsyncClient | None = None,
        health: HealthStore | None = None,
        execution: ExecutionConfig | None = None,
    ) -> Router:
        """Use your own httpx client, health store or timeouts/retries. Call before the
        first request; a client you pass is yours to close."""
        from .executor import ExecutionConfig, Executor, make_client
        from .state import Health

        with self._setup:
            if self._io is not None:
                raise RuntimeError("configure() must be called before the first chat() or stream()")
            cfg = execution or ExecutionConfig()
            self._owns_client = http is None
            self._io = Executor(http or make_client(cfg), health or Health(), cfg)
        return self

    def _executor(self) -> Executor:
        """The executor: configure()'s, else a default one, built by the first caller;
        none once the router is closed (enable() after aclose() had quietly opened a new
        HTTP client)."""
        io = self._io
        if io is None:
            if self._closed:
                raise RouterClosedError(_CLOSED)
            with self._setup:  # requests racing on several threads build one, not several
                if self._io is None:
                    self.configure()
                io = self._io
            assert io is not None
        return io

    def _enter(self) -> _Request:
        """Count a request in flight (aclose() waits for it), or refuse it: the router is
        closed."""
        # its thread, which runs its loop (a thread ident: Python 3.11's running-loop
        # lookup makes a getpid() system call)
        token = (threading.get_ident(), next(_SERIALS))
        self._in_flight.add(token)  # before the check: an aclose() past the check sees it
        if self._closed:
            self._in_flight.discard(token)
            raise RouterClosedError(_CLOSED)
        return token

    _rec: Recorder | None = None  # set by attach(): ledger, metrics, logs, callbacks
    _retiring: list[threading.Thread] = []  # noqa: RUF012 (replaced, never changed in place)
    _owns_ledger = False  # attach() opened it from a path: aclose() closes it

    def attach(
        self,
        *,
        ledger: Ledger | str | Path | None = None,
        metrics: Metrics | None = None,
        on_decision: Callable[[Decision], Any] | None = None,
        on_attempt: Callable[[Attempt], Any] | None = None,
        on_result: Callable[[ChatResult], Any] | None = None,
        record_prompts: bool = False,
        tracing: Tracing | None = None,
    ) -> Router:
        """Record every request: to a `Ledger` (or a path/DSN: SQLite file, *.jsonl,
        postgresql://...), into Prometheus `Metrics`, and through callbacks (plain or async;
        an exception in one is logged, never raised). `record_prompts=True` keeps each
        request's messages on its record, for `satisfice train --from-ledger` (off by
        default: prompts may hold what your users would rather not have stored). See
        satisfice.record. `tracing`: OpenTelemetry spans per request, attempt and cascade step
        (satisfice.tracing)."""
        from .ledger import Ledger
        from .record import Recorder

        if self._rec is not None and self._rec.ledger is not None:  # attached again
            if self._owns_ledger:
                # closed once the requests in flight, which record to it, have ended: closed
                # at once, it had dropped their records
                closing = _close_after(self._rec.ledger, self._in_flight)
                if closing is not None:  # aclose() waits for it
                    self._retiring = [*self._retiring, closing]
            else:
                self._rec.ledger.flush()
        # a ledger made here (from a path, or for metrics alone) is the router's to close
        self._owns_ledger = not isinstance(ledger, Ledger)
        if ledger is not None and not isinstance(ledger, Ledger):
            ledger = Ledger.open(ledger)
            # a router dropped unclosed closes the ledger it opened (its writer thread and
            # its connection had run on for the process's life), off the collecting thread
            weakref.finalize(self, _close_soon, ledger).atexit = False
        self._rec = Recorder(
            ledger, metrics, on_decision, on_attempt, on_result, record_prompts, tracing
        )
        return self

    @property
    def ledger(self) -> Ledger | None:
        return None if self._rec is None else self._rec.ledger

    async def decide(
        self,
        messages: Messages,
        constraints: Constraints | Mapping[str, Any] | None = None,
        *,
        cascade: Literal["auto"] | None = None,
        record: bool = False,
        **options: Unpack[RequestOptions],
    ) -> Decision:
        """The decision `chat()` or `stream()` would make now with these arguments: cooling
        and disabled deployments routed around, the options' max_tokens as the output
        bound, a `prefer`red model first. Pass it back as `chat(..., decision=d)` and the
        call goes where `d` says, whatever changes meanwhile: what a caller that bounds a
        budget on the decision needs (the server does). A second call given the same `d`
        is a request of its own, with an id of its own (its `result.request_id`).
        `record`: this is a request's first step (the server's, which then calls chat() with
        the decision), so a failure or cancellation here is on the record as chat()'s would
        be: no chat() follows to record it."""
        t0, started_at = perf_counter(), time()
        # a request's first step is in flight until its record (aclose() waits for it: one
        # from another thread's loop had closed the ledger before a failure's record)
        token = self._enter() if record else None
        try:
            tuned: Literal["auto"] | None = "auto" if cascade == "auto" else None
            prepared = self._prepare(messages, constraints, options, tuned)
            if not isinstance(prepared, tuple):  # (see `_prepare`)
                prepared = await prepared
            return _marked(prepared[1])
        except BaseException as e:
            if record:
                self._unstarted(e, started_at, t0, options)
            raise
        finally:
            if token is not None:
                self._in_flight.discard(token)

    def _begin(
        self,
        prepared: _Prepared,
        options: RequestOptions,
        t0: float,
        accept: Validator | None = None,
    ) -> tuple[Executor, Run, dict[str, Any]]:
        """The one request builder behind chat() and stream(): from the decision and the
        rest `_prepare` made, the request's run. (A plain function, as `_prepare` is for
        the usual request: a coroutine's frame, made and sent into, costs several hundred
        instructions more than a call.)"""
        io, decision, call, deadline, metadata, msgs, reroute = prepared
        if self._rec is not None:
            self._rec.decision(decision)
            if self._rec.ledger is not None:
                # What the record (and a served answer) will read of the decision, made at
                # the loop's next turn: while the call waits on its upstream, not after the
                # answer. Without a record, an id nobody asks for is never made.
                import asyncio  # loaded already (we are in a coroutine)

                asyncio.get_running_loop().call_soon(decision.made_for_record)
        c = decision.constraints
        if call["max_tokens"] is None and c.max_output_tokens is not None:
            call = {**call, "max_tokens": c.max_output_tokens}
        run = io.run(decision, msgs, call, t0=t0, deadline=deadline, accept=accept)
        if options.get("decision") is not None:
            # the call goes where the decision given says, and nowhere else: a caller
            # bounded a budget on its models (the server), and a context-length error had
            # sent it on down the ranked candidates, past the bound
            run.order = [decision.model, *decision.fallbacks]
        run.reroute = reroute
        return io, run, metadata

    def _prepare(
        self,
        messages: Messages,
        constraints: Constraints | Mapping[str, Any] | None,
        options: Mapping[str, Any],
        ladder: Literal["auto", "given"] | None,
        t0: float | None = None,
        hold: RoomHold | None = None,
    ) -> _Prepared | Coroutine[Any, Any, _Prepared]:
        """Check the options and route (around cooling deployments; a large prompt on a
        worker thread, so an exact count never holds the event loop, within the request's
        deadline, which it returns), or take the `decision` given. The caller's dicts are
        read, never changed. `ladder`: the request climbs a cascade, the policy's tuned one
        ("auto") or one it names ("given"), whose checks stand in for the quality floor
        (unless the policy's floor is strict): its cheap steps, below the floor by design,
        must be candidates, whose estimates its cost and latency rules read.

        What it made, or (when routing may wait: `_routed`) a coroutine for the caller to
        await: the usual request needs no coroutine of its own (its frame, made and sent
        into, cost about 700 instructions more than a call)."""
        io = self._io
        if io is None:
            io = self._executor()
        opts: dict[str, Any] = dict(options)
        call: Mapping[str, Any]
        if opts:
            unknown = opts.keys() - _OPTIONS
            if unknown:
                raise ConfigError(
                    f"unknown option(s) {sorted(unknown)}: chat() and stream() take "
                    f"{sorted(_OPTIONS)}; pass other OpenAI parameters in extra={{...}}"
                )
            fields = {}
            for k in _CALL_FIELDS:  # a loop: a comprehension made `opts` a cell on every call
                fields[k] = opts.pop(k, None)
            timeout = opts.pop("timeout", None)
            metadata = opts.pop("metadata", None)
            given = opts.pop("decision", None)
            prefer = opts.pop("prefer", None)
            _check_options(fields, timeout, metadata)
            call = fields
            metadata = dict(metadata or {})
        else:  # the usual call: no options, nothing to check
            call, timeout, metadata, given, prefer = (
                NO_CALL,
                None,
                {},
                None,
                None,
            )
        msgs = _message_list(messages)
        plain = _plain_size(msgs)
        if call["server_tools"] is None and plain is None and server_turns(msgs):
            call = {**call, "server_tools": []}  # (routed to Claude models alone: server_turns)
        if given is not None:
            if not isinstance(given, Decision):
                raise ConfigError(
                    f"decision must be one router.decide() made, got {type(given).__name__}"
                )
            ignored = sorted(opts)
            if constraints is not None or ignored or prefer is not None:
                # the call goes where the decision says, under the limits it was made with:
                # a cost cap given here as well had been dropped without a word
                raise ConfigError(
                    "decision= carries the constraints it was routed under; pass "
                    f"{ignored or (['prefer'] if prefer is not None else ['constraints'])} to "
                    "router.decide() instead, or leave decision= out"
                )
            _check_shape(call["tools"], call["response_format"])  # routed without them
            _check_asked(given, msgs, call["tools"], call["response_format"])
            if given._called:  # a second call on one decision is a request of its own
                given = given.again()
            given._called = True
            reroute = None
            if io.health.blocked():  # see Run.reroute
                snap = self._snap
                extra = extra_text(call["tools"], call["response_format"])
                reroute = partial(
                    self._route_off_loop, snap, msgs, given.constraints, snap.undeployable,
                    extra=extra,
                )  # fmt: skip
            deadline = _deadline(timeout, given.constraints, t0)
            return io, given, call, deadline, metadata, msgs, reroute
        snap = self._snap  # one snapshot for every routing of this request
        if call["max_tokens"] is not None and "max_output_tokens" not in opts:
            opts["max_output_tokens"] = call["max_tokens"]
        # (the usual request's constraints without a call that makes a dict of no keywords)
        c = (
            _NO_CONSTRAINTS
            if constraints is None and not opts
            else Constraints.of(constraints, **opts)
        )
        if CHECK_BILL.get() is not None:  # a check's call (a judge's): within the request's cap
            from ._verdict import room_for

            cap = room_for(c.max_cost_usd, hold)
            if cap != c.max_cost_usd:
                c = Constraints.of(c, max_cost_usd=cap)
        # a strict floor, the policy's or the request's, holds on a ladder's steps too
        strict = snap.policy.strict_floor if c.strict_floor is None else c.strict_floor
        if ladder == "given" and not strict:
            c = Constraints.of(c, quality_floor=0.0)
        extra = None
        if call["tools"] is not None or call["response_format"] is not None:
            c, extra = _shaped(c, call["tools"], call["response_format"])
        if call["server_tools"] is not None:
            c = _on_anthropic(snap.registry, c, call["server_tools"])
        skip = snap.undeployable
        if plain is None and _thinks_refused(msgs):
            skip = skip | _thinking_on_anthropic(snap.registry)
        blocked = io.health.blocked()
        if blocked:  # models whose every deployment is cooling or disabled are routed around
            skip = skip | io.blocked_models(snap.registry, blocked)
        # under a latency SLO, what the deployments have measured replaces the registry's p95
        live = io.live_p95_ms(snap.registry, snap.index) if c.latency_slo_ms is not None else None
        # the request's deadline bounds its routing too (a large prompt's, on a thread)
        end = None if timeout is None and c.latency_slo_ms is None else _deadline(timeout, c, t0)
        # the usual prompt is routed here, without a coroutine (`_route_off_loop`'s) to await
        inline = _route_inline(msgs, extra, plain)
        around = snap.undeployable  # if routing around the cooling ones leaves nothing
        if inline and ladder is None and prefer is None and not blocked:
            # the usual request: nothing for `_routed` to do after its routing (no ladder, no
            # preferred model, nothing cooling to route around again)
            decision = self._route(snap, msgs, c, skip, live, extra=extra, fallback_skip=around)
            return io, decision, call, end, metadata, msgs, None
        return self._routed(
            io, snap, msgs, c, skip, live, extra, end, around, inline,
            ladder, strict, prefer, blocked, call, metadata,
        )  # fmt: skip

    async def _routed(
        self,
        io: Executor,
        snap: Snapshot,
        msgs: list[dict[str, Any]],
        c: Constraints,
        skip: frozenset[str],
        live: list[tuple[int, float]] | None,
        extra: str | None,
        end: float | None,
        around: frozenset[str],
        inline: bool,
        ladder: Literal["auto", "given"] | None,
        strict: bool,
        prefer: Any,
        blocked: frozenset[str],
        call: Mapping[str, Any],
        metadata: dict[str, Any],
    ) -> _Prepared:
        """`_prepare`'s routing, from what it worked out: on a worker thread unless
        `inline`; again without the quality floor where the tuned ladder replaces it; the
        `prefer`red model first; and, when it routed around `blocked` deployments, how to
        route again without leaving them out."""
        decision = (
            self._route(snap, msgs, c, skip, live, extra=extra, fallback_skip=around)
            if inline
            else await self._route_on_thread(snap, msgs, c, skip, live, extra, end, around)
        )
        if ladder == "auto" and not strict and snap.policy.ladder_replaces_floor(decision.task):
            c = Constraints.of(c, quality_floor=0.0)
            decision = (
                self._route(snap, msgs, c, skip, live, extra=extra, fallback_skip=around)
                if inline
                else await self._route_on_thread(snap, msgs, c, skip, live, extra, end, around)
            )
        if prefer is not None and prefer != decision.model:
            if not isinstance(prefer, str):
                raise ConfigError(f"prefer must be a model id, got {prefer!r:.40}")
            if prefer not in snap.registry:  # an unknown id had been ignored without a word
                raise UnknownModelError(
                    f"prefer: unknown model {prefer!r:.80}; the registry has: "
                    f"{', '.join(snap.registry.ids)}"
                )
            decision = decision.preferring(prefer)
        reroute = None
        if blocked:  # see Run.reroute
            reroute = partial(
                self._route_off_loop, snap, msgs, c, snap.undeployable, live, extra=extra
            )
        return io, decision, call, end, metadata, msgs, reroute

    async def chat(
        self,
        messages: Messages,
        constraints: Constraints | Mapping[str, Any] | None = None,
        *,
        hedge: bool = False,
        race: int = 0,
        accept: Validator | None = None,
        cascade: Cascade | bool | Literal["auto"] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ChatResult:
        """Route `messages` and call the chosen model, falling back as needed.

        `options` are the call's parameters (max_tokens, temperature, tools, ...,
        `timeout` in seconds for the whole request, default the latency SLO; `metadata`
        copied onto the record) and constraint overrides (quality_floor=, max_cost_usd=, ...).
        `hedge=True` sends a second attempt to the next candidate when the first is slower
        than its p95; `race=n` calls n candidates at once; either way the first answer the
        `accept` validator passes wins and the rest are cancelled. `cascade` (a Cascade, or
        True for the decision's default ladder with `accept` as its check) climbs a ladder
        of models, each call through the same retries, health and pricing; "auto" climbs
        the ladder `satisfice calibrate --strategy cascade` tuned for the prompt's task and
        routes as usual a task it tuned none for (`result.cascade` is then None).
        Raises NoRouteError, AllAttemptsFailedError (`.attempts` says why), BadRequestError,
        CascadeBudgetError.
        """
        t0, started_at = perf_counter(), time()
        plain = race.__class__ is int and not race and hedge is False
        if not plain or accept is not None or cascade is not None:  # not the usual plain call
            self._check_modes(race, hedge, accept, cascade)
            if cascade is True and options.get("decision") is not None:
                # a given decision calls its model and fallbacks alone (what a caller bounded
                # on it); the ladder cascade=True builds climbs its other candidates
                raise ConfigError(
                    "cascade=True climbs a ladder of the decision's candidates, beyond the "
                    "model and fallbacks a given decision= calls; pass the ladder itself "
                    "(cascade=Cascade.from_decision(d, check)) to name its models"
                )
        rec, run = self._rec, None
        sent = _as_sent(messages) if rec is not None and rec.record_prompts else messages
        parent = None if rec is None else rec.parent()  # its spans' parent, as it began
        token = self._enter()
        # inside a check (a judge's call)? Asked once here: most requests are not
        checking = CHECK_BILL.get() is not None
        hold = _room_hold() if checking else None
        try:
            ladder = None if cascade is None else _ladder(cascade)
            prepared = self._prepare(messages, constraints, options, ladder, t0, hold)
            if not isinstance(prepared, tuple):  # (see `_prepare`)
                prepared = await prepared
            io, run, metadata = self._begin(prepared, options, t0, accept)
            if cascade:
                result = await io.cascade(run, cascade)
            elif plain:
                result = await io.complete(run)
            else:
                result = await io.complete(run, hedge=hedge, race=race)
        except Exception as e:  # raised on purpose or not: a request all the same, recorded
            err = e
            if self._closed and not isinstance(e, SatisficeError):
                # most likely the client closed under a request aclose() stopped waiting for
                err = RouterClosedError(
                    f"the router was closed while this request ran ({type(e).__name__})"
                )
            _unanswered(run)
            billed = _bill_to_check(run)
            if rec is not None:  # on the check's bill: a part of the request it checked
                self._record_failure(rec, err, run, started_at, t0, options, not billed, parent)
            if err is e:
                raise
            raise err from e
        except BaseException as e:  # cancelled by its caller (a timeout, a client gone)
            import asyncio  # loaded already (we are in a coroutine)

            _unanswered(run)
            if isinstance(e, asyncio.CancelledError):
                # the call it cut off may be billed: on record at its prompt, estimated
                if run is not None:
                    io._cut_off(run)
                # (a ladder's step, a race's loser, a judge's call: each marks `run.cut`)
                on_its_way = run is not None and run.cut[0]
                # what it was billed, for a caller settling a budget on it (the server): its
                # calls' bills when none was cut off after it was sent, else None (such a
                # call may be billed past its estimate); a request cancelled in a backoff
                # had kept its whole reservation, billed nothing. A call inside it (a
                # judge's, the same cancellation) that said None has the last word.
                if getattr(e, "billed_usd", 0.0) is not None:
                    e.billed_usd = (  # type: ignore[attr-defined]
                        None if on_its_way else 0.0 if run is None else _known_bill(run.attempts)
                    )
                billed = _bill_to_check(run)
                if rec is not None:  # a request all the same, recorded (if routed, unbilled)
                    cancelled = RequestCancelled(run is not None, on_its_way)
                    cancelled.result = None if run is None else run.climbed  # a ladder's steps
                    self._record_failure(rec, cancelled, run, started_at, t0,
                                         options, not billed, parent)  # fmt: skip
            raise
        else:
            result.started_at, result.metadata = started_at, metadata
            # the clock runs until the caller has the result (but for its record): building
            # it and handing it back up through the executor were the router's time too, as
            # is freeing the request's state (its last reference here)
            run = None
            waited = perf_counter() - t0
            result.overhead_s += waited - result.latency_s
            result.latency_s = waited
            billed = checking and _bill_answer_to_check(result)
            if rec is not None:
                rec.result(result, sent, not billed, parent)
        finally:
            if hold is not None:
                hold.release()  # (on the check's bill by now, answered or not)
            # in flight until it is on the record: an aclose() from another thread's loop
            # had seen none in flight and closed the ledger before the answer's record
            self._in_flight.discard(token)
        return result

    def _check_modes(self, race: object, hedge: object, accept: object, cascade: object) -> None:
        """chat()'s race, hedge, accept and cascade: each valid, and together meaningful."""
        if isinstance(race, bool) or not isinstance(race, int) or not 0 <= race <= 64:
            raise ConfigError(f"race must be an integer from 0 to 64, got {race!r:.40}")
        if not isinstance(hedge, bool):
            raise ConfigError(f"hedge must be True or False, got {hedge!r:.40}")
        if accept is not None and not callable(accept):
            raise ConfigError(
                "accept must be a validator (see satisfice.validators), e.g. "
                f"validators.check(lambda text: ...); got {type(accept).__name__}"
            )
        if cascade is not None and not isinstance(cascade, bool | str):
            from .cascade import Cascade

            if not isinstance(cascade, Cascade):
                # a list of ids, a saved dict, a Step, a number: each had been taken for
                # cascade=True, climbing the decision's ladder and calling unlisted models
                raise ConfigError(
                    f'cascade must be a Cascade, True or "auto", got a {type(cascade).__name__}; '
                    "build the ladder with Cascade([...]) from Steps or model ids, or "
                    "Cascade.from_dict(...) from its saved form"
                )
        if accept is not None and not (race or hedge or cascade):
            # with one answer there is nothing to choose between: it was silently ignored
            raise ConfigError(
                "accept= picks among answers: pass race=N, hedge=True or cascade=True with "
                "it; to check a single answer, call the validator on the result"
            )
        if cascade and (race or hedge):
            # a cascade makes one call per step: race and hedge were silently ignored
            raise ConfigError(
                "cascade= climbs a ladder one step at a time and cannot also race or hedge; "
                "put models side by side in one Step to call them at once, or drop race/hedge"
            )
        if isinstance(cascade, str):
            if cascade != "auto":
                raise ConfigError(f'cascade must be a Cascade, True or "auto", got {cascade!r:.40}')
            if not self.snapshot.policy.cascades:
                raise ConfigError(
                    'cascade="auto" climbs the policy\'s tuned ladders and this policy has none: '
                    "run `satisfice calibrate --strategy cascade` on outcome data, or pass "
                    "a Cascade"
                )

    def _unstarted(
        self,
        e: BaseException,
        started_at: float,
        t0: float,
        options: Mapping[str, Any],
        parent: Any = None,
    ) -> None:
        """A request that failed or was cancelled before its first call (while it was
        routed, its options checked): on the record as chat() puts one, unless a check's
        bill takes it (a judge's call, which made none: nothing billed)."""
        import asyncio  # loaded already (we are in a coroutine)

        if isinstance(e, asyncio.CancelledError):  # a caller gone: no call made, $0
            e = RequestCancelled(False)
        elif not isinstance(e, Exception):
            return
        billed = _bill_to_check(None)
        if self._rec is not None:
            self._record_failure(self._rec, e, None, started_at, t0, options, not billed, parent)

    @staticmethod
    def _record_failure(
        rec: Recorder,
        e: BaseException,
        run: Run | None,
        started_at: float,
        t0: float,
        options: Mapping[str, Any],
        own: bool = True,
        parent: Any = None,
    ) -> None:
        """`own`: a request of its own on the record (not one billed to a check); `parent`:
        its spans' parent, taken as it began (`Recorder.parent`)."""
        meta = options.get("metadata") if isinstance(options.get("metadata"), Mapping) else None
        rec.failure(
            None if run is None else run.decision,
            e,
            # the run's own attempts (a cascade's error lists its steps' failures as text)
            list(run.attempts if run is not None else getattr(e, "attempts", None) or ()),
            started_at=started_at,
            latency_s=perf_counter() - t0,
            metadata=meta,
            record=own,
            parent=parent,
        )

    def stream(
        self,
        messages: Messages,
        constraints: Constraints | Mapping[str, Any] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ChatStream:
        """Like chat(), streamed: `async with router.stream(msgs) as s: async for d in s:`.

        Text pieces arrive as `d.text` (a thinking model's thinking as `d.thinking` and
        `d.thought`; an empty item now and then while a tool call is written); the last
        item has `d.done` and `d.result` (a ChatResult). Fallbacks happen only before the
        first piece of text (or signed thinking, or 5 s of the model at work); a failure
        after it raises StreamInterruptedError. `timeout` (default: the latency SLO) bounds
        the whole stream; `ExecutionConfig.stream_idle_timeout_s` bounds each wait for more.
        """
        runs: list[Run] = []
        # its spans' parent: the context current as the caller asked for it (a stream read
        # or closed under another had its spans written under that one, or under none)
        parent = None if self._rec is None else self._rec.parent()
        return (_ChatStream or _chat_stream())(
            self._stream(messages, constraints, options, runs, parent), runs
        )

    async def _stream(
        self,
        messages: Messages,
        constraints: Constraints | Mapping[str, Any] | None,
        options: RequestOptions,
        runs: list[Run],
        parent: Any = None,
    ) -> AsyncIterator[StreamDelta]:
        t0, started_at = perf_counter(), time()
        rec, run = self._rec, None
        sent = _as_sent(messages) if rec is not None and rec.record_prompts else messages
        token = self._enter()
        hold = _room_hold()
        try:
            prepared = self._prepare(messages, constraints, options, None, t0, hold)
            if not isinstance(prepared, tuple):  # (see `_prepare`)
                prepared = await prepared
            io, run, metadata = self._begin(prepared, options, t0)
            runs.append(run)  # the stream's own view of its attempts (ChatStream.attempts)
            inner = io.stream(run, started_at=started_at, metadata=metadata)
        except BaseException as e:
            try:
                self._unstarted(e, started_at, t0, options, parent)
            finally:  # in flight until its record is queued, as chat()'s
                if hold is not None:
                    hold.release()
                self._in_flight.discard(token)
            raise
        done = billed = False
        try:
            async for delta in inner:
                if delta.done:
                    done = True
                    own = not _bill_answer_to_check(delta.result)
                    if rec is not None:
                        rec.result(delta.result, sent, own, parent)
                    # its result is out: a caller that never closes the stream holds no aclose()
                    self._in_flight.discard(token)
                yield delta
        except Exception as e:  # as chat()'s: recorded, raised on purpose or not
            billed = True  # (or nothing was billed: on no check's bill)
            err = e
            if self._closed and not isinstance(e, SatisficeError):
                # the client aclose() closed under it (a raw RuntimeError had come out)
                err = RouterClosedError(
                    f"the router was closed while this stream ran ({type(e).__name__})"
                )
            _unanswered(run)
            own = not _bill_to_check(run)
            if rec is not None:
                self._record_failure(rec, err, run, started_at, t0, options, own, parent)
            if err is e:
                raise
            raise err from e
        finally:  # an early exit releases the upstream connection now, not at collection
            await inner.aclose()
            import asyncio  # loaded already (we are in a coroutine)

            left = sys.exc_info()[0] in (GeneratorExit, asyncio.CancelledError, None)
            if not done and not billed:  # a judge's stream that ended without its answer
                if left:  # (its caller gone: a request without an answer too)
                    _unanswered(run)
                own = not _bill_to_check(run)
                if rec is not None and left:
                    # the caller left before the end: a request, with what it may have
                    # cost (the attempt the executor kept), in the record like any other
                    why = None if run is None else run.closed_because  # a server's shutdown
                    self._record_failure(
                        rec, ClientClosedStream(why), run, started_at, t0, options, own, parent
                    )
            if hold is not None:  # whichever task closes it (a loop's finaliser too)
                hold.release()
            self._in_flight.discard(token)

    def enable(self, model: str, deployment: str | None = None) -> None:
        """Put a disabled or cooling deployment (all of the model's, by default) back in
        service, e.g. after fixing a rejected key."""
        self._executor().enable(self._snap.registry, model, deployment)

    def disable(
        self, model: str, deployment: str | None = None, *, reason: str = "disabled by the operator"
    ) -> None:
        """Take a deployment (all of the model's, by default) out of service until enable()."""
        self._executor().disable(self._snap.registry, model, deployment, reason)

    def health(self) -> dict[str, dict[str, Any]]:
        """Live health per "model/deployment": state (ok, cooling, half_open, disabled), why,
        cooldown left, EWMA and p95 latency, error rate, counters."""
        return self._io.health.snapshot() if self._io is not None else {}

    async def aclose(self, grace_s: float = 30.0) -> None:
        """Refuse new requests (RouterClosedError), give those in flight up to `grace_s`
        seconds to end, answered or failed and recorded, then close the router's HTTP
        connections (not a client you passed to configure()) and write out its ledger:
        closed if attach() opened it from a path, flushed if it is yours. A request still
        running after `grace_s` is left to end without them: a call it starts then fails with
        RouterClosedError, and its record is lost."""
        await self._aclose(grace_s, None)

    async def _aclose(self, grace_s: float, blocked: int | None) -> None:
        """`aclose()`, waiting for no request on the `blocked` thread's loop: close()'s
        caller's, which runs none of them while close() waits."""
        import asyncio

        self._closed = True
        deadline = perf_counter() + grace_s
        while _waiting(self._in_flight, blocked) and perf_counter() < deadline:
            # polled: requests may run on other event loops (threads) than this one
            await asyncio.sleep(0.01)
        io, self._io = self._io, None
        if io is not None and self._owns_client:
            await io.client.aclose()
        for closing in self._retiring:  # ledgers an attach() again left to close
            await asyncio.to_thread(closing.join)
        ledger = self.ledger
        if ledger is not None:
            await asyncio.to_thread(ledger.close if self._owns_ledger else ledger.flush)

    async def __aenter__(self) -> Router:
        self._executor()  # set up now, not inside the first request's overhead
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- for scripts: the same calls without async ---------------------------------------
    _sync: _LoopThread | None = None

    def chat_sync(
        self,
        messages: Messages,
        constraints: Constraints | Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> ChatResult:
        """`chat()` for code without an event loop (scripts, notebooks' plain cells). Every
        call runs on one private event loop thread, so connections are pooled across calls;
        `close()` (or `with router:`) ends it. Inside async code, `await router.chat()`."""
        import asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop running here: the expected case
            pass
        else:
            raise RuntimeError(
                "chat_sync() was called from a running event loop; use await router.chat()"
            )
        sync = self._sync
        if sync is None or sync.pid != os.getpid():
            with self._setup:  # one loop thread, however many threads make the first call
                if self._closed:  # no loop thread is started for a refusal
                    raise RouterClosedError(_CLOSED)
                if self._sync is None or self._sync.pid != os.getpid():
                    # The first call, or the first in a forked child: there the parent's loop
                    # thread does not exist. Its loop is left as it is: closing it would
                    # unregister the parent's sockets from the epoll instance both share.
                    self._sync = _LoopThread()
                    # A router dropped unclosed ends its loop thread (and the loop's worker),
                    # closing its own client's connections (those of the loop that used them
                    # last: `PooledTransport` drops an old loop's), rather than leave them
                    # open for the process's life.
                    io = self._executor()
                    owned = io.client if self._owns_client else None
                    weakref.finalize(self, self._sync.abandon, owned).atexit = False
                sync = self._sync
        result: ChatResult = sync.run(self.chat(messages, constraints, **kw))
        return result

    def close(self, grace_s: float = 30.0) -> None:
        """`aclose()` for code without an event loop: the router's connections (those of
        chat_sync()'s loop thread and of the caller's own loops) and its ledger, as aclose()
        closes them, and chat_sync()'s loop thread; a chat_sync() still running after
        `grace_s` is cancelled and raises RouterClosedError."""
        with self._setup:
            sync, self._sync = self._sync, None
            self._closed = True  # from now on no chat_sync() starts another loop thread
        if (sync is None or sync.pid != os.getpid()) and self._io is not None:
            # Requests ran on the caller's own loops (`asyncio.run(router.chat(...))`), or
            # in a forked child, whose parent's loop thread is left alone: closed on a loop
            # thread of its own. The client had been left open, its connections with it.
            sync = _LoopThread()
        if sync is not None and sync.pid == os.getpid():
            # Called on a running loop (`with router:` in async code): its own requests do
            # not run while this waits, and are not waited for (the grace had blocked that
            # loop, a server's say, for all of `grace_s`, 30 s, none of them any nearer its end)
            sync.run(self._aclose(grace_s, _on_a_loop()))
            sync.stop()
        elif self.ledger is not None:
            (self.ledger.close if self._owns_ledger else self.ledger.flush)()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LoopThread:
    """One event loop on a daemon thread: where chat_sync() runs its requests."""

    def __init__(self) -> None:
        import asyncio

        self.pid = os.getpid()  # a forked child inherits this object, not the thread
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._open = True
        self._abandoned = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="satisfice-sync")
        self.thread.start()

    def _run(self) -> None:
        self.loop.run_forever()
        if self._abandoned:  # no stop() will close it
            self.loop.close()

    def abandon(self, client: httpx.AsyncClient | None) -> None:
        """Its router was garbage-collected without close(): cancel what still runs, close
        `client` (the router's own, whose connections are this loop's) and end the thread
        (the loop's worker threads end with the loop)."""
        import asyncio

        with self._lock:
            if not self._open or self.pid != os.getpid():  # closed, or a fork's copy
                return
            self._open = False
            self._abandoned = True
            asyncio.run_coroutine_threadsafe(_wind_down(client), self.loop)

    def run(self, coro: Any) -> Any:
        import asyncio
        import concurrent.futures

        with self._lock:  # nothing is handed to the loop once stop() began: it would never run
            if not self._open:
                coro.close()
                raise RouterClosedError(_CLOSED)
            fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result()
        except concurrent.futures.CancelledError:  # only stop() cancels work on this loop
            raise RouterClosedError(
                "the router was closed (close()) before this request ended"
            ) from None

    def stop(self) -> None:
        """Cancel what still runs on the loop (its callers wait for an answer), then end it."""
        import asyncio

        with self._lock:
            self._open = False
            fut = asyncio.run_coroutine_threadsafe(_cancel_the_rest(), self.loop)
        fut.result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _close_soon(ledger: Ledger) -> None:
    """Close `ledger` on a thread of its own (a finalizer must not wait on its flush)."""
    threading.Thread(target=ledger.close, name="satisfice-ledger-close", daemon=True).start()


#: A request in flight (`Router._enter`): the ident of the thread whose event loop runs
#: it, and a serial number of its own (a tuple: an object of a class of its own, made per
#: request, had cost about 500 instructions more).
_Request = tuple[int, int]
_SERIALS = itertools.count()


def _on_a_loop() -> int | None:
    """This thread's ident if an event loop runs on it, else None."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return threading.get_ident()


def _waiting(in_flight: set[_Request], blocked: int | None) -> bool:
    """Whether a request in flight runs on another thread's loop than `blocked`'s."""
    while True:
        try:  # (another thread may start or end one meanwhile)
            return any(thread != blocked for thread, _ in in_flight)
        except RuntimeError:
            continue


def _close_after(
    ledger: Ledger, in_flight: set[_Request], grace_s: float = 30.0
) -> threading.Thread | None:
    """Close `ledger` once the requests now `in_flight` have ended (at most `grace_s`, as
    aclose() waits for them), on a thread of its own (returned): now if none is."""
    while True:
        try:  # (a chat_sync() on another thread may start one meanwhile)
            waiting = tuple(in_flight)
            break
        except RuntimeError:
            continue
    if not waiting:
        ledger.close()
        return None

    def close() -> None:
        deadline = perf_counter() + grace_s
        while any(t in in_flight for t in waiting) and perf_counter() < deadline:
            threading.Event().wait(0.01)
        ledger.close()

    thread = threading.Thread(target=close, name="satisfice-ledger-close", daemon=True)
    thread.start()
    return thread


async def _wind_down(client: httpx.AsyncClient | None) -> None:
    """`_LoopThread.abandon`'s end of the loop, on the loop."""
    import asyncio

    await _cancel_the_rest()
    if client is not None:
        await client.aclose()
        await asyncio.sleep(0)  # the closed connections' callbacks run before the loop stops
    asyncio.get_running_loop().stop()


async def _cancel_the_rest() -> None:
    """Cancel every other task on this loop and wait until each has ended (and recorded)."""
    import asyncio

    rest = asyncio.all_tasks() - {asyncio.current_task()}
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


def _room_hold() -> RoomHold | None:
    """Inside a check, what of the request's room a router call will hold (`room_for`)."""
    if CHECK_BILL.get() is None:  # (every chat() asks)
        return None
    from ._verdict import RoomHold

    return RoomHold()


def _bill_answer_to_check(result: ChatResult) -> bool:
    """A chat() or stream() made inside a check (a judge's call) that answered puts itself
    on the check's bill, at what its calls cost (True: it did; it is then no request of its
    own on the record). The judge's own report of its reply is then left out
    (`validators.judge`): one bill, the router's figures."""
    if CHECK_BILL.get() is None:  # not inside a check: nothing to do (every chat() asks)
        return False
    from ._verdict import Answer, routed_call

    used = [a.usage for a in result.attempts if a.usage is not None]
    answer = Answer(
        result.model,
        result.text,
        sum(u.prompt_tokens for u in used),
        sum(u.completion_tokens for u in used),
        result.total_cost_usd,
        cost_estimated=any(a.cost_estimated for a in result.attempts),
    )
    return routed_call(answer, answered=True)


def _unanswered(run: Run | None) -> None:
    """A request that failed or was cancelled once routed: its id, which its error, record
    and stream carry, scores nothing (`FeedbackLog.unanswered`). Not a decision given to a
    request that failed before its run (it may be an earlier request's, answered)."""
    if run is not None:
        run.decision.unanswered()


def _bill_to_check(run: Run | None) -> bool:
    """A chat() or stream() made inside a check (a judge's call) that ends without an
    answer was billed all the same for calls that timed out, broke or were cut off (at an
    estimate): that goes on the check's bill, as an answer's does (`made_call`). Without it
    a judge cut off by a cascade's latency budget, or failing after a timeout, cost the
    request $0. True: it is on the bill (and no request of its own on the record)."""
    if CHECK_BILL.get() is None:
        return False
    from ._verdict import Answer, routed_call
    from .result import billed_cost

    attempts = run.attempts if run is not None else []
    spent = billed_cost(attempts)
    if spent is not None and not spent[1]:
        # no call reached an upstream that may bill it: nothing on the bill, and no
        # failed request of its own on the record either (a judge's skipped call)
        return routed_call(None, answered=False)
    used = [a.usage for a in attempts if a.usage is not None]
    model = next((a.model for a in reversed(attempts) if a.outcome != "skipped"), "")
    answer = Answer(
        model,
        "",
        sum(u.prompt_tokens for u in used),
        sum(u.completion_tokens for u in used),
        None if spent is None else spent[0],
        cost_estimated=any(a.cost_estimated for a in attempts),
    )
    return routed_call(answer, answered=False)
