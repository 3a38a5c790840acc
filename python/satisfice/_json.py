"""JSON on a request's path: by orjson where it reads and writes what the standard library
would, else by the standard library, as before.

orjson reads a small answer in a quarter of `json.loads`'s time and writes a request body in
a twentieth of `json.dumps`'s (`benches/bench_overhead.py` counts what a call spends). Where
the two differ, the standard library decides: orjson refuses NaN, Infinity, a byte-order
mark, a lone surrogate and nesting past 1,024 (json.loads reads or refuses them as it
always did), and reads an integer past 64 bits as a float without an error (a body that may
hold one goes to json.loads)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from enum import Enum
from typing import Any

import orjson

from ._core import has_digit_run
from .errors import BadRequestError

__all__ = [
    "NON_FINITE",
    "NotUTF8",
    "dumps",
    "dumps_body",
    "dumps_record",
    "encode_body",
    "encode_finite",
    "loads",
    "record_default",
    "utf8",
]


def _may_hold_long(raw: bytes | str) -> bool:
    """Whether `raw` holds 19 ASCII digits in a row: maybe an integer past 64 bits, which
    only json.loads keeps an int. In Rust (`_core.has_digit_run`: every 19th byte probed
    while it is no digit), where every byte translated to b"0" or b" " and a search for
    b"0" * 19 had cost about 2,000 instructions a streamed piece's JSON line (and a regex of
    nineteen digits, more than orjson's parse of a small answer)."""
    if raw.__class__ is not bytes and not isinstance(raw, str | bytes | bytearray):
        return True  # json.loads takes it, or refuses it with its own error
    return has_digit_run(raw, 19)


def loads(raw: bytes | str) -> Any:
    """`json.loads(raw)`: the same values, the same errors (ValueError, RecursionError), but
    bytes in UTF-16 or UTF-32, which json.loads decodes and RFC 8259 rules out: refused. An
    upstream's answer in them had got past the scrubbing of the API key, which looks for
    its UTF-8 bytes."""
    if not _may_hold_long(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    if isinstance(raw, bytes | bytearray) and not utf8(raw):
        raise NotUTF8(f"JSON must be UTF-8 (RFC 8259), not {json.detect_encoding(raw)}")
    try:
        return json.loads(raw)
    except ValueError as e:  # a parse_int hook on every read took an integer-heavy answer
        if "integer string conversion" not in str(e):  # to 2.2x json.loads's time
            raise
    return json.loads(raw, parse_int=_int)


def _int(digits: str) -> int | float:
    """A JSON integer; one past Python's limit on an int's digits (4,300) as the float it
    rounds to (inf): a number, which every check of a count or a limit refuses, where
    json.loads had refused the whole document (an upstream's usage report with one had
    failed the answer it came with)."""
    try:
        return int(digits)
    except ValueError:
        return float(digits)


class NotUTF8(ValueError):
    """JSON bytes in UTF-16 or UTF-32 (`loads` refuses them)."""


def utf8(raw: bytes | bytearray) -> bool:
    """Whether JSON `raw` is UTF-8 (a byte-order mark or not), as json.loads detects it."""
    return json.detect_encoding(raw) in ("utf-8", "utf-8-sig")


# Compact, non-ASCII kept: the bytes httpx's `json=` would send, without its per-call encoder.
encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _numpy_scalar(o: Any) -> Any:
    """A numpy number as the Python number it holds (an `np.int64` in `extra` had been
    refused as not JSON, where every other number a caller passes takes numpy's)."""
    if type(o).__module__ == "numpy" and not getattr(o, "shape", None) and hasattr(o, "item"):
        v = o.item()
        if isinstance(v, int | float):
            return v
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


# a request body's: NaN and ±Infinity are no JSON, and an upstream refuses them (or worse)
_encode_body = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_numpy_scalar
).encode
_encode_finite = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
# json.loads reads NaN and ±Infinity, and a number past a float's range (1e999) or past
# 4,300 digits (`_int`) as ±inf: such a value cannot be written back as JSON
NON_FINITE = "NaN, Infinity or a number past a float's range (or 4,300 digits): no JSON number"


def _finite_only(encode: Callable[[Any], str], obj: Any) -> str:
    try:
        return encode(obj)
    except ValueError as e:  # its "Out of range float values are not JSON compliant" names
        if str(e).startswith("Out of range float"):  # neither the value nor the cause (not
            raise ValueError(NON_FINITE) from None  # `_non_finite(obj)`: obj may be a cycle)
        raise


def encode_finite(obj: Any) -> str:
    """`encode_json(obj)` for a parsed object written back as JSON text (an Anthropic tool
    call's `input` as its `arguments`), but NaN and ±Infinity refused (a ValueError): they
    had been written `Infinity` and `NaN`, text no JSON parser takes."""
    return _finite_only(_encode_finite, obj)


# What the standard library refuses (a dataclass, a datetime, a str or int subclass orjson
# would write its own way) goes to it, to be refused or written as before.
_PASSTHROUGH = (
    orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def dumps_body(obj: Any) -> bytes:
    """`encode_json(obj).encode()`, a request body: compact, non-ASCII kept, the same
    errors, but for an `Enum` and a `UUID`, which orjson writes as their value and string
    (the standard library refused them). orjson writes NaN and ±Infinity as `null`, a
    value the caller did not send: a body with a `null` in it that holds such a float is
    refused (a ValueError, `NON_FINITE`: they are no JSON, and had been sent as NaN), as
    the standard library refuses them, so nothing is silently changed. (Every body
    with a `null` had gone to the standard library: an agent's history, whose tool-call
    turns have `"content": null`, then took 111 ms on the event loop for 20 MB.)"""
    try:
        out = orjson.dumps(obj, option=_PASSTHROUGH)
    except TypeError:  # orjson.JSONEncodeError: a type, a key or an integer it does not take
        return _finite_only(_encode_body, obj).encode()
    # `find`, not `in`: see `_redact.scrub_bytes`
    if out.find(b"null") >= 0 and _non_finite(obj):
        raise ValueError(NON_FINITE)
    return out


def encode_body(payload: Any) -> bytes:
    """The JSON body of a request (compact, non-ASCII kept: the bytes httpx's `json=` would
    send); what cannot be JSON (an object in `extra`, a non-string key, a lone surrogate)
    is the request's fault: BadRequestError, never a raw TypeError. The router checks what
    a request sends as given with it before routing (`router._check_options`)."""
    try:
        return dumps_body(payload)
    except (TypeError, ValueError, RecursionError) as e:
        raise BadRequestError(
            f"the request cannot be sent as JSON ({type(e).__name__}: {e}"[:200] + "); pass "
            "only JSON values (valid Unicode, finite numbers) in messages, tools, tool_choice, "
            "response_format, extra, context_management and server_tools"
        ) from None


def _non_finite(obj: Any) -> bool:
    """Whether `obj` holds a float that is NaN or infinite, anywhere (a walk of its dicts,
    lists and tuples: their count, not the length of their strings)."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if type(o) is float:
            if o != o or o in (math.inf, -math.inf):
                return True
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, list | tuple):
            stack.extend(o)
    return False


# Line ends to `str.splitlines()` (and so to httpx's `aiter_lines`) that JSON may leave raw:
# inside a stream's `data:` line they would cut it in two for such a client.
_LINE_ENDS = (
    (b"\xc2\x85", b"\\u0085"),
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
)


def dumps(obj: Any) -> bytes:
    """Compact JSON of the server's own making (an answer, a stream's event): orjson, else
    the standard library for what orjson refuses (an integer past 64 bits, a non-str key).
    Non-ASCII is kept, as UTF-8, but for U+0085, U+2028 and U+2029, which are escaped (as
    `ensure_ascii` had them): a line splitter would end a stream's `data:` line there. A
    lone surrogate (an upstream's tool arguments may hold one as a `\\ud800` escape, read
    back into text) is written escaped, as `ensure_ascii` writes it: UTF-8 has no byte for
    it, and an answer must not fail for it."""
    try:
        out = orjson.dumps(obj)
    except TypeError:
        try:
            out = encode_json(obj).encode()
        except UnicodeEncodeError:
            out = json.dumps(obj, separators=(",", ":")).encode()
    return _line_ends_escaped(out)


def _line_ends_escaped(out: bytes) -> bytes:
    # isascii() first: it reads a word at a time, where a two-byte find takes 1.4 µs on a
    # 1.4 KB record (timeit); `find`, not `in`: see dumps_body's `find`
    if not out.isascii() and (out.find(b"\xc2\x85") >= 0 or out.find(b"\xe2\x80") >= 0):
        for raw, escaped in _LINE_ENDS:
            out = out.replace(raw, escaped)
    return out


def record_default(v: Any) -> Any:
    """What a ledger record holds that JSON has no type for, as both of the ledger's writers
    write it: a float subclass (numpy's float64) a number, an Enum its value (as orjson
    writes one natively), anything else its `str()`."""
    if isinstance(v, float):
        return float(v)
    if isinstance(v, Enum):
        return v.value
    return str(v)


def _record_default(v: Any) -> Any:
    # a subclass of dict, list, str or int (handed here by OPT_PASSTHROUGH_SUBCLASS) may
    # have its own items() or str(), and a tuple's (a namedtuple) orjson writes as str():
    # json.dumps's own way, not orjson's
    if isinstance(v, dict | list | tuple | str | int):
        raise TypeError("a subclass")
    return record_default(v)


def dumps_record(obj: Any) -> str | None:
    """A ledger record as strict JSON text, or None where the standard library is to write
    it (a non-str key, a subclass, an integer past 64 bits, a lone surrogate, a cycle,
    nesting past 254 levels). NaN and ±Infinity are `null` and other values as
    `record_default` has them: the values the ledger's standard-library path writes (the
    text may differ: `5e-5` for `5e-05`, UTF-8 for a `\\u00e9` escape), but for the line
    ends `dumps` escapes. 16–17 → 1.6–2.0 µs on a served request's 1.4 KB record (process
    time, the least of five rounds of 4,000)."""
    try:
        # _PASSTHROUGH: a dataclass and a datetime to record_default (their str()), as
        # json.dumps(default=...) has them; no OPT_NON_STR_KEYS: json.dumps writes a
        # non-str key its own way (a NaN key "NaN", where orjson's "null" may collide
        # with a None key's)
        out = orjson.dumps(obj, default=_record_default, option=_PASSTHROUGH)
        return _line_ends_escaped(out).decode()
    except TypeError:
        return None
