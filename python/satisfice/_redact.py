"""Keys never leave the process through satisfice: every API key a provider reads is
registered here, and text or bytes that came from an upstream (bodies, stream lines, error
messages) pass through `scrub` before anything else sees them. An upstream that echoes the
request's Authorization header then shows "[redacted]" in errors, attempts, health, reprs
and records.

The registry is a tuple replaced whole, so readers on any thread never see it half-built.
"""

from __future__ import annotations

import re
import threading  # (imported already: `import satisfice` has it)
from collections import deque

TYPE_CHECKING = False  # not typing's: Router() does not import typing (cold_start.py)
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "REDACTED",
    "StreamScrubber",
    "guard_logs",
    "register",
    "register_prefix",
    "scrub",
    "scrub_bytes",
    "scrub_escaped",
    "scrub_json",
    "scrub_nested",
    "scrub_values",
    "scrubbing",
]

REDACTED = "[redacted]"
_REDACTED_B = REDACTED.encode()
_PERCENT, _AMPERSAND = ord("%"), ord("&")  # bytes tested for as ints (`scrub_bytes`)
MIN_KEY_CHARS = 8  # shorter values would redact ordinary words (a shorter key is refused)
_secrets: tuple[str, ...] = ()
# The keys as registered, in lower case: found in any case (an upstream's error that
# shouted "INVALID_KEY 3F9A..." had shown a hex key whole); their base64 spellings, whose
# case is their bytes, only as they are.
_folded: tuple[str, ...] = ()
_folded_b: tuple[bytes, ...] = ()
# What is matched as it is: the base64 spellings, and a key that is not ASCII.
_exact: tuple[str, ...] = ()
_exact_b: tuple[bytes, ...] = ()
# Every spelling above, for the first test of every text scrubbed (`_core.Spellings`:
# whether any is there) and what a stream holds back (where one could begin); None: none.
# Set last by `register`: with it, every key's spellings are there.
_spellings: Any = None
_ASCII_FOLD = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
# Keys as a URL or an HTML page writes them: characters percent-encoded or as numeric
# character references, in any mix (a URL quotes some characters and not others). Where a
# text holds such an encoding (`_ENCODING`, one scan, usually finding nothing), the run of
# URL-ish characters around it is read as a browser would read it, and the run is removed
# when a key is in what it reads. A pattern per key had cost ~10 ms a key to compile and
# each scrub the text's length times the keys.
_ENCODING = re.compile(r"%[0-9a-fA-F]{2}|&#")
_RUN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~+/=:;&#%-")
_RUN = re.compile(r"[A-Za-z0-9._~+/=:;&#%-]+")
#: How far a run is followed from its encoding, per character of the longest key: its
#: widest spelling ("&#x0000002d;") with room to spare.
_RUN_PER_CHAR = 16


def _holds_key(run: str) -> bool:
    from html import unescape  # here: only a text with an encoding pays for either
    from urllib.parse import unquote

    read = unescape(unquote(run))
    low = read.lower()  # a key percent-encoded in another case too
    return any(k in read for k in _secrets) or any(k in low for k in _folded)


def _run_start(text: str, end: int, lo: int) -> int:
    """Where the run of URL-ish characters that ends at `end` begins (not before `lo`)."""
    while end > lo and text[end - 1] in _RUN_CHARS:
        end -= 1
    return end


def _unencode(text: str) -> str:
    """`text` (scrubbed of the keys as they are) with each run that spells a key encoded
    replaced by REDACTED."""
    width = _RUN_PER_CHAR * len(_secrets[0])  # the longest key's (longest first)
    shortest = len(_secrets[-1])
    out: list[str] = []
    last = pos = 0
    while (m := _ENCODING.search(text, pos)) is not None:
        left = _run_start(text, m.start(), max(m.start() - width, last))
        run = _RUN.match(text, left, left + 2 * width)
        end = run.end() if run is not None else m.end()
        # (a run shorter than the shortest key spells none: encoding only lengthens a key;
        # each short run decoded had cost a text of 100 KB of "%41 " 25 ms to scrub)
        if run is not None and end - left >= shortest and _holds_key(run.group(0)):
            out += (text[last:left], REDACTED)
            last = end
        pos = max(end, m.end())
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _encoded_tail(text: str) -> int:
    """How many characters at the end of `text` are a run with an encoding begun or under
    way, which the next piece may finish into a key (`StreamScrubber`)."""
    if not _secrets:
        return 0
    width = _RUN_PER_CHAR * len(_secrets[0])
    tail = text[_run_start(text, len(text), max(len(text) - width, 0)) :]
    return len(tail) if "%" in tail or "&" in tail else 0


def _base64_spellings(value: str) -> set[str]:
    """The characters that spell `value` in any base64 text that holds it (an upstream's
    echo of a Basic header, a debug dump of the request): one spelling for each of its
    three alignments in the encoded bytes, in both alphabets, cut to the characters that
    only the key's own bytes decide."""
    from base64 import b64encode  # here: only a key's registration pays for it

    key = value.encode()
    out: set[str] = set()
    for lead in range(3):
        enc = b64encode(b"\0" * lead + key).decode().rstrip("=")
        first = -(-8 * lead // 6)  # the first character wholly within the key's bits
        last = 8 * (lead + len(key)) // 6  # the characters before it are wholly within
        core = enc[first:last]
        out |= {core, core.replace("+", "-").replace("/", "_")}
    return out


#: Where a key is cut into the lines it is known by (`register`)
_LINE_ENDS = re.compile(r"[\r\n]+")


def register(value: str) -> None:
    """Remember a key so that `scrub` removes it from anything derived from upstream text:
    as it is and as base64 writes it (percent-encoded, HTML-escaped and JSON-escaped
    spellings are read where they are found).

    A key that holds a line's end (a base URL's credential read with its %0A,
    `registry.url_secrets`) is known by its lines of `MIN_KEY_CHARS` or more (and by its
    base64 spellings, whole, which hold none): no spelling holds a line's end, so text read
    a line at a time (an event stream's, whose lines are scrubbed as one text,
    `sse_events`) never holds one across two lines. Found across two, such a key had joined
    them: the data line after a comment that echoed it taken into the comment, and its
    text lost from the answer."""
    if len(value) < MIN_KEY_CHARS:
        return
    # One registration at a time: each reads the registry and writes it back built anew,
    # and a key another thread registered in between had been lost (never scrubbed: a
    # provider registers its key once, when it is built, lazily on a Router shared by
    # threads). Readers take no lock: each tuple is replaced whole.
    with _REGISTERING:
        _register(value)


_REGISTERING = threading.Lock()


def _register(value: str) -> None:
    global _secrets, _folded, _folded_b, _exact, _exact_b, _spellings
    keys = [k for k in _LINE_ENDS.split(value) if len(k) >= MIN_KEY_CHARS]  # (usually [value])
    exact = _base64_spellings(value).union(*map(_base64_spellings, keys))
    exact.update(k for k in keys if not k.isascii())  # (keys are; one that is not: as it is)
    if not exact.union(keys) - set(_secrets):
        return  # registered before
    # longest first: a key that contains another is removed whole
    _secrets = tuple(sorted({*_secrets, *keys, *exact}, key=len, reverse=True))
    _folded = tuple(sorted({*_folded, *(k.lower() for k in keys if k.isascii())}, key=len,
                           reverse=True))  # fmt: skip
    _folded_b = tuple(s.encode() for s in _folded)
    _exact = tuple(sorted({*_exact, *exact}, key=len, reverse=True))
    _exact_b = tuple(s.encode() for s in _exact)
    from ._core import Spellings

    _spellings = Spellings(list(_folded), list(_exact))


#: Keys known by their prefix alone (`register_prefix`: the server's virtual keys, minted
#: by the thousand and stored hashed, so never registered one by one, each a scan of every
#: text scrubbed): (prefix, the pattern of a key that starts with it).
_prefixed: tuple[str, re.Pattern[str]] | None = None


def register_prefix(prefix: str) -> None:
    """Remember that every key starting with `prefix` (and base64url after it) is a secret,
    for `scrub` to remove: from text a client sent (a key pasted into a request's field,
    quoted back in an error that is logged and recorded), and from decoded upstream text
    that `scrub` reads (an answer that repeats one). Not from raw bytes (`scrub_bytes`) or
    stream pieces: only the server's callers hold these keys, and an upstream is never sent
    one. However few characters follow the prefix where it starts a word: an error quotes a
    value cut short (`{v!r:.60}`) before it is scrubbed, and a key it cut had kept its first
    characters. Within a word (`task-sat-score`, a CSS class in an answer; a team named
    `risk-sat-ops`), 16 or more, as a key's 32 are: any length there had redacted a word of
    an answer sent to the client, and refused such a name as holding a key."""
    global _prefixed
    p, tail = re.escape(prefix), r"[A-Za-z0-9_-]"
    _prefixed = (prefix, re.compile(rf"(?<![A-Za-z0-9]){p}{tail}+|{p}{tail}{{16,}}"))


def _fold(text: str) -> str:
    """`text` with A-Z in lower case, each character where it was (str.lower() may lengthen
    a non-ASCII one, which would move what follows)."""
    return text.lower() if text.isascii() else text.translate(_ASCII_FOLD)


def _any_case(text: Any, low: Any, keys: tuple[Any, ...], red: Any) -> Any:
    """`text` with every span where `low` (`text` folded) holds one of `keys` replaced by
    `red` (str or bytes alike)."""
    spans: list[tuple[int, int]] = []
    for k in keys:
        i = low.find(k)
        while i >= 0:
            spans.append((i, i + len(k)))
            i = low.find(k, i + len(k))
    if not spans:
        return text
    spans.sort()
    out: list[Any] = []
    last = 0
    for a, b in spans:
        if b <= last:
            continue
        out += (text[last : max(a, last)], red)
        last = b
    out.append(text[last:])
    return text[:0].join(out)


def scrub(text: str) -> str:
    spellings = _spellings
    # Whether a key is there at all, in Rust (`scrub_bytes`): a streamed piece's scrub with
    # one key registered had looked for each spelling in turn here.
    if spellings is not None and spellings.found_in(text):
        if _folded:
            # the keys in any case, in one pass (a key inside a longer one removed whole):
            # found in str.lower()'s text (fast; it can only find more), placed by the
            # exact fold
            low = text.lower()
            for k in _folded:
                if k in low:  # (str's `in`: `find` parses its arguments the slow way)
                    text = _any_case(
                        text, low if text.isascii() else _fold(text), _folded, REDACTED
                    )
                    break
        for s in _exact:  # base64 spellings
            if s in text:
                text = text.replace(s, REDACTED)
    if _secrets and ("%" in text or "&#" in text):
        text = _unencode(text)
    if _prefixed is not None and _prefixed[0] in text:
        text = _prefixed[1].sub(REDACTED, text)
    return text


def scrub_escaped(text: str) -> str:
    """`scrub`, and a key spelled with JSON escapes (`\\u0073k-...`) in text that is no
    JSON to decode (an error body cut, or not JSON at all) removed as well."""
    text = scrub(text)
    return _unhide(text) if _secrets and "\\" in text else text


def scrubbing() -> bool:
    """Whether any key is registered: else every scrub returns its input as it is."""
    return bool(_secrets) or _prefixed is not None


def scrub_values(data: Any) -> Any:
    """`data` (parsed JSON) with every string scrubbed, keys included."""
    if not _secrets and _prefixed is None:
        return data
    if isinstance(data, str):
        return scrub(data)
    if isinstance(data, list):
        return [scrub_values(v) for v in data]
    if isinstance(data, dict):
        return {scrub(k) if isinstance(k, str) else k: scrub_values(v) for k, v in data.items()}
    return data


def scrub_json(text: str) -> str:
    """`text` (already scrubbed) with a key removed from what it says once JSON-decoded as
    well: JSON a caller decodes later (tool arguments, a JSON answer) may write a key with
    an escape (\\u0073k-...), whole only after decoding. Re-encoded only when a key was
    there; text that is not JSON, or has no backslash to hide one behind, is returned as is."""
    if not _secrets or "\\" not in text:
        return text
    import json  # here: `import satisfice` had paid 2.4 ms for it

    try:
        data = json.loads(text)
        clean = scrub_values(data)
    except (ValueError, RecursionError):
        return text
    if clean == data:
        return text
    return json.dumps(clean, ensure_ascii=False, separators=(",", ":"))


def scrub_nested(data: Any) -> Any:
    """`data` (parsed JSON) with `scrub_json` applied to every string: for a reply known to
    hide a key inside a string that is JSON itself (a tool call's arguments)."""
    if isinstance(data, str):
        return scrub_json(data)
    if isinstance(data, list):
        return [scrub_nested(v) for v in data]
    if isinstance(data, dict):
        return {k: scrub_nested(v) for k, v in data.items()}
    return data


# JSON text a caller decodes may spell a key with escapes (\u0073k-..., or \/ for a "/"),
# whole only once decoded. A "run" is where such a key would sit: printable ASCII but space,
# quote and backslash, \uXXXX, \/ and \\ (taken whole, so that the "u0073" after an escaped
# backslash is read as the text it is). The patterns: a run; a run or an escape cut off at
# the text's end (which the next piece may finish); one token of a run, as it reads.
# Compiled on first use (half a millisecond that `import satisfice` need not pay).
_TOKEN = r"[!#-\[\]-~]|\\u[0-9a-fA-F]{4}|\\[/\\]"
_CUT = r"\\(?:u[0-9a-fA-F]{0,3})?\Z"
_PATTERNS: tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]] | None = None


def _patterns() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    global _PATTERNS
    if _PATTERNS is None:
        _PATTERNS = (
            re.compile(rf"(?:{_TOKEN})+"),
            re.compile(rf"(?:{_TOKEN})+(?:{_CUT})?|{_CUT}"),
            re.compile(r"\\u([0-9a-fA-F]{4})|\\([/\\])|(\\(?:u[0-9a-fA-F]{0,3})?\Z)|(.)", re.S),
        )
    return _PATTERNS


def _tokens(run: str) -> list[tuple[int, str | None]]:
    """(offset, what it reads as) for each token of `run`; None for an escape cut off at
    its end."""
    out: list[tuple[int, str | None]] = []
    for m in _patterns()[2].finditer(run):
        esc, lit, cut, ch = m.groups()
        out.append((m.start(), chr(int(esc, 16)) if esc else None if cut else lit or ch))
    return out


def _escaped(text: str) -> str:
    """`text` fit to stand inside a JSON string again (a lone surrogate, which an emoji's
    two escapes read one by one, written back as its escape)."""
    return "".join(
        c if c >= " " and c not in '"\\' and not "\ud800" <= c <= "\udfff" else f"\\u{ord(c):04x}"
        for c in text
    )


def _unhide(text: str) -> str:
    """`text` (already scrubbed) with each run that spells a key once its escapes are read
    replaced by that run read and scrubbed: what `scrub_json` does for whole JSON, for
    text that comes in pieces (a streamed JSON answer) and may never parse whole."""

    def clean(m: re.Match[str]) -> str:
        run = m.group(0)
        if "\\" not in run:
            return run
        read = "".join(c or "" for _, c in _tokens(run))
        out = scrub(read)
        return run if out == read else _escaped(out)

    return _patterns()[0].sub(clean, text)


def _key_start(text: str) -> int:
    """How many characters at the end of `text` could be where a key begins: the longest
    end that is the start of one (a key's in any case, a base64 spelling's as it is). In
    Rust (`_core.Spellings.key_start`), where a table of starts by their last character,
    kept here and checked against the text's end one by one, had cost about 6,900
    instructions a streamed piece with one key registered (callgrind)."""
    spellings = _spellings
    return 0 if spellings is None else spellings.key_start(text)


def _escaped_hold(text: str, hold: int) -> int:
    """`hold` (characters at the end of `text` that may start a key as written) widened for
    the run at its end as it reads: to where its last characters that read as the start of
    a key begin, or to an escape cut off; and moved back to the start of a token."""
    last = deque(_patterns()[1].finditer(text), maxlen=1)
    if not last or last[0].end() != len(text):
        return hold
    base = last[0].start()
    toks = [(base + i, c) for i, c in _tokens(last[0].group(0))]
    read = [i for i, c in toks if c is not None]  # where each character that reads begins
    k = _key_start("".join(c for _, c in toks if c is not None))
    if k:
        hold = max(hold, len(text) - read[-k])
    elif toks[-1][1] is None:  # an escape cut off
        hold = max(hold, len(text) - toks[-1][0])
    first = len(text) - hold
    if hold and first > base:  # inside a token: from its start
        hold = len(text) - max(i for i, _ in toks if i <= first)
    return hold


class StreamScrubber:
    """Scrubs text that arrives in pieces: a key split across two pieces is still caught,
    and so is one spelled with JSON escapes (a streamed JSON answer's, which its caller
    decodes). Only a piece's end that could be the start of a key is held back, until the
    next piece says whether it is one: text that ends like a key begins, as it is written
    or as it reads, or an escape cut off (usually nothing is held). What is held starts
    where a token does, so the next piece's text is read from where reading stopped; it is
    at most a key's length (6 characters a letter when escaped), so each piece costs its
    own length and a key's, whatever the text."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = ""

    def feed(self, piece: str) -> str:
        if not _secrets:
            return piece
        text = scrub(self._held + piece)
        if "\\" in text:
            text = _unhide(text)
            hold = _escaped_hold(text, _key_start(text))
        else:
            hold = _key_start(text)
        if "%" in text or "&" in text:  # a key begun encoded, which the next piece may finish
            hold = max(hold, _encoded_tail(text))
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold] if hold else text

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


def scrub_bytes(data: bytes) -> bytes:
    """`scrub` for bytes."""
    spellings = _spellings
    if spellings is None:
        return data
    # Whether a key is there at all, every spelling looked for in Rust (`_core.Spellings`,
    # ASCII letters in any case: it finds all that the tests below find, and more), where each
    # was looked for here in turn, about 2,500 instructions apiece on a small answer
    # (bytes' `find` parses its arguments the slow way): a 252-byte answer's scrub 11,800
    # instructions with one key registered, 26,800 with three; now 3,300 and 4,800
    # (callgrind). An answer with none in it (the usual one) has only an encoded spelling
    # left to look for.
    if spellings.found_in(data):
        if _folded_b:
            low = data.lower()  # (ASCII letters only: each byte where it was)
            for k in _folded_b:
                # `find`, not `in`: Python 3.11's `bytes in bytes` first tries its operand
                # as an int and formats the TypeError it gets, ~1,200 instructions a test.
                # One byte is tested for as an int (`0x25 in data`): one memchr, where
                # `find` parses its arguments the slow way (~1,600 instructions a test)
                if low.find(k) >= 0:  # the keys in any case, in one pass
                    data = _any_case(data, low, _folded_b, _REDACTED_B)
                    break
        for s in _exact_b:  # base64 spellings
            if data.find(s) >= 0:
                data = data.replace(s, _REDACTED_B)
    if _PERCENT in data or (_AMPERSAND in data and data.find(b"&#") >= 0):
        # read as latin-1, every byte one character and back: the runs are ASCII
        data = _unencode(data.decode("latin-1")).encode("latin-1")
    return data


_GUARDED = False


_HTTP_LOGGERS = ("httpx", "httpcore", "httpcore.connection", "httpcore.http11",
                 "httpcore.http2", "httpcore.proxy", "httpcore.socks")  # fmt: skip


def _scrubbed_arg(a: object) -> object:
    """`a` as it is unless its text holds a key (a %r or %d then reads it as before)."""
    if isinstance(a, int | float):
        return a
    text = str(a)
    clean = scrub(text)
    return a if clean == text else clean


def guard_logs() -> None:
    """Scrub what httpx and httpcore log (a request's URL at INFO, with the credentials a
    base URL or a catalogue's location may carry in it): a filter on their loggers, once."""
    global _GUARDED
    if _GUARDED:
        return
    import logging  # here: Router() does not import logging (cold_start.py)

    class _Scrubbed(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if _secrets:
                record.msg = scrub(str(record.msg))
                if isinstance(record.args, dict):
                    record.args = {k: _scrubbed_arg(v) for k, v in record.args.items()}
                elif record.args:
                    record.args = tuple(_scrubbed_arg(a) for a in record.args)
            return True

    # each logger that logs: a filter applies to the records of its own logger alone (not a
    # child's: httpcore logs on httpcore.http11, .connection, ..., where a Location with a
    # catalogue's ?token= had come through)
    for name in _HTTP_LOGGERS:
        logging.getLogger(name).addFilter(_Scrubbed())
    _GUARDED = True
