"""A text's scrub (`_redact.scrub`, every streamed piece's) asks Rust first whether any
spelling of a key is there (`_core.Spellings.found_in`), as an answer's bytes' scrub does,
and a stream's held end is Rust's (`Spellings.key_start`): what they give is what they
gave."""

from __future__ import annotations

import base64
import random
import urllib.parse

import pytest

from satisfice import _redact as r

_STATE = ("_secrets", "_folded", "_folded_b", "_exact", "_exact_b", "_spellings")
KEYS = ["sk-test-42-" + "a1B2c3D4" * 4, "clé-secrète-42-" + "Zz9" * 6]


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    for name in _STATE:
        monkeypatch.setattr(r, name, getattr(r, name))  # (restored after: registered here)
    for k in KEYS:
        r.register(k)
    return KEYS


def _scrub_before(text: str) -> str:
    """`scrub` as it was before its first test moved to Rust: every spelling looked for in
    turn (the server's key prefix aside, which no test here registers)."""
    if r._folded:
        low = text.lower()
        for k in r._folded:
            if k in low:
                text = r._any_case(text, low if text.isascii() else r._fold(text), r._folded,
                                   r.REDACTED)  # fmt: skip
                break
    for s in r._exact:
        if s in text:
            text = text.replace(s, r.REDACTED)
    if r._secrets and ("%" in text or "&#" in text):
        text = r._unencode(text)
    return text


def _spellings(key: str) -> list[str]:
    out = [key, key.upper(), key.lower(), key.swapcase()]
    out += [base64.b64encode(pad.encode() + key.encode()).decode() for pad in ("", "x", "xy")]
    out += [urllib.parse.quote(key, safe=""), "&#115;" + key[1:]]
    return out


def test_a_texts_scrub_gives_what_it_gave_for_every_spelling_of_a_key(keys: list[str]) -> None:
    """3,000 texts holding a key as it is, in other cases, in base64, percent-encoded, as a
    character reference, a key that is not ASCII, beside an unpaired surrogate, the Kelvin
    sign and a dotted I (which str.lower() makes ASCII, and the ASCII fold leaves), or
    none: the same text as before, character for character."""
    rng = random.Random(42)
    spellings = [s for k in keys for s in _spellings(k)]
    fillers = ["hello", "é ü ß À", "Ωmega", "%", "&", "", "\ud800", "\u212a", "\u0130", "SK-"]
    found = 0
    for _ in range(3000):
        parts = [rng.choice(fillers) for _ in range(rng.randint(0, 4))]
        if rng.random() < 0.5:
            parts.insert(rng.randint(0, len(parts)), rng.choice(spellings))
        text = rng.choice(["", " "]).join(parts)
        out = r.scrub(text)
        assert out == _scrub_before(text), ascii(text)
        found += out != text
    assert found > 1000  # (the keys were there to be found)


def test_a_key_split_anywhere_across_pieces_is_held_and_removed(keys: list[str]) -> None:
    """Each key in each spelling that is no encoding, split at every place between two
    pieces (and the second piece split again), after text that ends in a surrogate or a
    key's first letters: what the whole text's scrub gives, the key removed."""
    # (a key that is not ASCII is found as it is only: its upper case is no spelling)
    spellings = [s for k in keys for s in _spellings(k)[:7] if r.scrub(s) != s]
    assert len(spellings) == 11
    for i, key in enumerate(spellings):
        lead = ["x ", "\ud800", "sk-te ", "ÉT "][i % 4]
        for cut in range(1, len(key)):
            s = r.StreamScrubber()
            out = s.feed(lead + key[:cut]) + s.feed(key[cut:] + " y") + s.flush()
            whole = r.scrub(lead + key + " y")
            assert out == whole != lead + key + " y", (ascii(key), cut, ascii(out))


def test_lines_scrubbed_as_one_text_are_each_line_scrubbed(
    keys: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event stream's lines read whole are scrubbed as one text (`sse_events`): for
    2,000 blocks of lines holding keys in every spelling, encoded ones among them, a
    server key by its prefix, at a line's start and end, the same as scrubbing each line
    (no spelling holds a line's end, nor does a run an encoding is read in)."""
    monkeypatch.setattr(r, "_prefixed", None)
    r.register_prefix("sk-sat-")
    rng = random.Random(4242)
    spellings = [s for k in keys for s in _spellings(k)] + ["sk-sat-" + "Qw3" * 11, "sk-sat-x"]
    fillers = ['data: {"a": "', '"}', "", "event: x", "%", "&#", "é", "\ud800", ": ping", " "]
    for _ in range(2000):
        lines = []
        for _ in range(rng.randint(1, 5)):
            parts = [rng.choice(fillers) for _ in range(rng.randint(0, 3))]
            if rng.random() < 0.5:
                parts.insert(rng.randint(0, len(parts)), rng.choice(spellings))
            lines.append("".join(parts))
        assert r.scrub("\n".join(lines)) == "\n".join(map(r.scrub, lines)), ascii(lines)


def test_a_long_integer_is_told_as_before_in_bytes_and_text() -> None:
    """`_json._may_hold_long` (19 digits in a row: maybe an integer past 64 bits, read by
    json.loads) in Rust now: what a search for 19 ASCII digits finds, in 20,000 bytes and
    texts of digits, other ASCII, non-ASCII digits (which are no JSON digits), surrogates
    and runs of every length around 19; and a long integer still read exactly."""
    import re

    from satisfice import _json

    rng = random.Random(19)
    run = re.compile(rb"[0-9]{19}")
    parts = ["1", "23", "456789", "0" * 9, " ", '"', "x", "\u0663", "\ud800", "é", "-", "."]
    for _ in range(20000):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 30)))
        raw = text.encode("utf-8", "surrogatepass")
        want = run.search(raw) is not None
        assert _json._may_hold_long(text) is want, ascii(text)
        assert _json._may_hold_long(raw) is want, raw
        assert _json._may_hold_long(bytearray(raw)) is want, raw
    assert _json._may_hold_long(memoryview(b"1")) is True  # (json.loads decides)
    assert _json.loads(b'{"n": 123456789012345678901}') == {"n": 123456789012345678901}
