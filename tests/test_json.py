"""satisfice._json: orjson on a request's path, the standard library wherever the two differ."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import json
import math

import numpy as np
import pytest

from satisfice._json import dumps, dumps_body, encode_body, loads
from satisfice.errors import BadRequestError

STDLIB = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@pytest.mark.parametrize(
    "payload",
    [
        {"model": "m", "messages": [{"role": "user", "content": "héllo 日本 🙂"}]},
        {"max_tokens": 256, "stream": False, "stop": ["\n", "</s>"], "n": [1, 2.5, True]},
        {"deep": [[[{"a": {"b": 'c\u2028d"e\\f'}}]]]},
        {"big": 2**64, "neg": -(2**70)},  # past 64 bits: orjson refuses, json writes them
        {1: "int key", "k": (1, 2)},  # a non-str key: json writes it as a string
    ],
)
def test_a_body_is_the_bytes_the_standard_library_wrote(payload: object) -> None:
    assert json.loads(dumps_body(payload)) == json.loads(STDLIB(payload).encode())
    if not any(isinstance(v, float) for v in json.loads(STDLIB(payload))):  # float spelling
        assert dumps_body(payload) == STDLIB(payload).encode()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_not_sent_as_null(bad: float) -> None:
    """orjson writes them as null, a value the caller did not send; nor are they sent as NaN,
    which is no JSON (the standard library's spelling had gone out): a BadRequestError."""
    with pytest.raises(BadRequestError, match="cannot be sent as JSON.*NaN, Infinity or a"):
        encode_body({"temperature": 0.5, "extra": {"x": bad}})
    with pytest.raises(BadRequestError, match="NaN, Infinity or a"):  # orjson refuses it first
        encode_body({"extra": {"x": bad, "big": 2**70}})
    assert dumps_body({"content": None}) == b'{"content":null}'  # a real null stays one


def test_a_number_past_4300_digits_a_caller_sent_is_refused_saying_so() -> None:
    """A served request's tool schema with a 5,000-digit integer reads as inf (`loads`); it
    had been refused as "Out of range float values are not JSON compliant", a float the
    caller never sent. A cycle is still refused as one."""
    body = loads(b'{"tools": [{"maximum": ' + b"9" * 5000 + b"}]}")
    with pytest.raises(BadRequestError, match=r"past a float's range \(or 4,300 digits\)"):
        encode_body(body)
    cycle: dict[str, object] = {"big": 2**70}
    cycle["me"] = cycle
    with pytest.raises(BadRequestError, match="Circular reference"):
        encode_body(cycle)


def test_what_the_standard_library_refuses_is_still_refused() -> None:
    @dataclasses.dataclass
    class Thing:
        x: int

    for obj in (Thing(1), datetime.datetime(2026, 1, 1), object()):  # orjson writes the first two
        with pytest.raises(BadRequestError, match="cannot be sent as JSON"):
            encode_body({"extra": obj})
    with pytest.raises(BadRequestError):
        encode_body({"content": "lone \ud800 surrogate"})


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": 1, "b": [1.5, "x\\u00e9"], "c": null}',
        b'{"maximum":18446744073709551616}',
        b'{"n": NaN, "i": Infinity}',  # orjson refuses, json reads
        b'\xef\xbb\xbf{"bom": 1}',
        b'{"s": "\\ud800"}',  # a lone surrogate's escape
        '{"str": "日本"}',
        '{"maximum": -18446744073709551616}',  # as text
        '{"s": "\ud800", "n": 123456789012345678901}',  # a lone surrogate in the text, too
        b"[1234567890123456789012]",  # the run at the body's end
        b"[123456789012345678.9012, 1e400]",  # digits split by a point: orjson reads them
    ],
)
def test_loads_reads_what_json_loads_reads(raw: bytes | str) -> None:
    try:
        want = json.loads(raw)
    except ValueError as e:
        with pytest.raises(type(e)):
            loads(raw)
        return
    assert repr(loads(raw)) == repr(want)


def test_loads_refuses_what_json_loads_refuses() -> None:
    for raw in (b"{", b'{"a": }', b"", "[1,]"):
        with pytest.raises(ValueError):
            json.loads(raw)
        with pytest.raises(ValueError):
            loads(raw)
    with pytest.raises(TypeError, match="must be str, bytes or bytearray"):  # as json.loads
        loads(memoryview(b"[1]"))  # type: ignore[arg-type]


def test_the_servers_own_json_keeps_non_ascii_and_big_integers() -> None:
    assert dumps({"t": "日本", "n": None}) == '{"t":"日本","n":null}'.encode()
    assert json.loads(dumps({"big": 2**65})) == {"big": 2**65}


def test_a_stream_event_is_one_line_to_a_line_splitter() -> None:
    """U+0085, U+2028 and U+2029 end a line for `str.splitlines()` and httpx's
    `aiter_lines`: raw inside a `data:` line, they cut it in two for such a client."""
    from satisfice.server import wire

    text = "a\u2028b\x85c\u2029d é 日本"
    for event in (wire.sse_data({"t": text}), wire.openai_chunk("r", "m", 0, {"content": text})):
        (line,) = event.decode().splitlines()[:1]
        assert line.startswith("data: ")
        assert len(event.decode().strip().splitlines()) == 1
    assert json.loads(wire.sse_data({"t": text})[6:]) == {"t": text}
    assert "é 日本".encode() in wire.sse_data({"t": text})  # the rest stays UTF-8


class _Level(enum.IntEnum):
    HIGH = 3


class _Tier(enum.Enum):
    GOLD = "gold"
    PAIR = (1, 2)


class _Perm(enum.Flag):
    R = 1


class _Items(dict):  # type: ignore[type-arg]
    def items(self):  # type: ignore[no-untyped-def,override]
        return [("seen", "through items()")]


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


_Pair = collections.namedtuple("_Pair", "x y")


def _nest(n: int) -> object:
    out: object = "bottom"
    for _ in range(n):
        out = [out]
    return out


@dataclasses.dataclass
class _Point:
    x: int


ODD_METADATA = [
    {"text": "héllo 日本 🙂", "n": 3, "f": 0.1, "none": None, "flag": True},
    {"np": np.float64(0.25), "np32": np.float32(0.5), "npi": np.int64(7)},
    {"level": _Level.HIGH, "when": datetime.datetime(2026, 12, 3, 8, 0), "pt": _Point(1)},
    {"tier": _Tier.GOLD, "pair": _Tier.PAIR, "perm": _Perm.R},
    {"nan": math.nan, "inf": -math.inf, "t": (1, 2), "set": {1}},
    {"set": {1}, "bytes": b"\x00\xff"},
    {3: "int key", 2.5: "float key", 1e-7: "small", None: "none key", True: "bool key"},
    {math.nan: "a", None: "b", math.inf: "c", -math.inf: "d"},  # four keys, four values
    {_Tier.GOLD: 1, datetime.datetime(2026, 1, 2, 3, 4, 5): 2},
    {"items": _Items(a=1), "bad": _Unprintable()},
    {"big": 2**70, "surrogate": "a\ud800b", "line": "a\u2028b\u0085c\u2029d"},
    {"pair": _Pair(1, 2), "view": collections.UserDict(a=1)},
    {"pair": _Pair(1, 2), "view": collections.UserDict(a=1), "nan": math.nan},
    {"deep": _nest(100), "nan": math.nan},
    {"huge": 10**5000, 10**5000: "key"},
]


@pytest.mark.parametrize("meta", ODD_METADATA)
def test_a_ledger_record_has_the_same_values_by_orjson_or_the_standard_library(
    meta: object,
) -> None:
    """orjson writes a ledger's record where it writes what the standard library path does:
    it had written a NaN and a None key both as "null" (one value lost), an Enum key its
    value, a dict subclass past its items()."""
    from satisfice.ledger import _json, _json_stdlib

    rec = {"request_id": "r", "latency_s": 0.001, "metadata": meta, "attempts": [{"a": 1}]}
    out = _json(rec)
    back = json.loads(out, parse_constant=lambda tok: pytest.fail(f"not strict JSON: {tok}"))
    assert back == json.loads(_json_stdlib(rec))
    assert len(back["metadata"]) == len(meta)  # type: ignore[arg-type]
    for raw in ("\u2028", "\u2029", "\u0085"):  # one line to any line splitter
        assert raw not in out


def test_how_a_ledger_writes_odd_values() -> None:
    from satisfice.ledger import _json

    def meta(m: object) -> object:
        return json.loads(_json({"request_id": "r", "metadata": m}))["metadata"]

    assert meta({"tier": _Tier.GOLD, "pair": _Tier.PAIR, "level": _Level.HIGH}) == {
        "tier": "gold", "pair": [1, 2], "level": 3
    }  # fmt: skip
    assert meta({math.nan: 1, None: 2, True: 3}) == {"NaN": 1, "null": 2, "true": 3}
    assert meta({"n": math.nan, "s": {1}, "x": _Unprintable()}) == {
        "n": None, "s": "{1}", "x": "<unprintable _Unprintable>"
    }  # fmt: skip
    assert meta({"np": np.float64(0.25), "i": _Items(a=1)}) == {
        "np": 0.25, "i": {"seen": "through items()"}
    }  # fmt: skip


def test_the_servers_own_json_writes_a_lone_surrogate_escaped() -> None:
    """An answer holding one (an upstream's "\\ud800" read back into text) had raised
    UnicodeEncodeError: a 500 for the answer."""
    out = dumps({"input": {"a": "\ud800", "b": "é"}, "n": 2**70})
    assert json.loads(out) == {"input": {"a": "\ud800", "b": "é"}, "n": 2**70}
