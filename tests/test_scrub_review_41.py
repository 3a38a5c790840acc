"""Review of the forty-first session's scrubbing changes (scrub_bytes' first test in Rust,
`_core.AnyOf`, since `_core.Spellings`): what broke, each with the test that shows it."""

from __future__ import annotations

import pytest

from satisfice import _core
from satisfice import _redact as r

_STATE = ("_secrets", "_folded", "_folded_b", "_exact", "_exact_b", "_spellings")


def test_scrub_bytes_while_the_first_key_is_being_registered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`register` sets the keys' tuples one by one and `_any_b` (scrub_bytes' first test,
    now `_spellings`)
    last: an answer scrubbed in between (on another thread: a catalogue refresh registers
    its URL's token in a worker thread while the loop scrubs answers) saw keys registered
    and none yet, and raised AttributeError ('NoneType' has no 'found_in') in place
    of the answer. It is scrubbed as before the key was registered, until it is."""
    for name in _STATE:  # no key yet, the one below the first (restored after)
        monkeypatch.setattr(r, name, None if name == "_spellings" else ())
    seen: list[object] = []
    built = _core.Spellings

    def spellings(folded: list[str], exact: list[str]) -> object:
        # the moment register() builds `_spellings`: the keys' tuples set, it not yet
        try:
            seen.append(r.scrub_bytes(b'{"text": "hello"}'))
        except Exception as e:  # (on another thread, the answer's request failed with it)
            seen.append(e)
        return built(folded, exact)

    monkeypatch.setattr(_core, "Spellings", spellings)
    key = "sk-review-41-" + "q7" * 10
    r.register(key)
    assert seen == [b'{"text": "hello"}']
    assert r.scrub_bytes(f"x {key.upper()} y".encode()) == b"x [redacted] y"  # registered now


def test_a_stream_read_while_a_key_is_being_registered_holds_the_key_once_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`_key_start`'s table of keys' starts was made again when `_secrets` changed, and
    `register` sets `_secrets` first: a stream read in between (another thread) made the
    table from the keys before the new one and tagged it with the new `_secrets`, so it
    was never made again. Each stream after that let a key split between two pieces
    through, its first part in one piece and the rest in the next. The table is tagged
    with `_any_b`, which `register` sets last; since, the starts are `_core.Spellings`'
    (`_spellings`, set last), made with the keys and kept nowhere else."""
    from satisfice._redact import StreamScrubber

    for name in _STATE:  # (restored after: registered here)
        monkeypatch.setattr(r, name, getattr(r, name))
    before = {name: getattr(r, name) for name in _STATE}
    key = "sk-review-41-" + "w3" * 10
    r.register(key)
    after = {name: getattr(r, name) for name in _STATE}
    # register() between its first step and the rest: `_secrets` new, the others not yet
    for name in _STATE:
        setattr(r, name, after[name] if name == "_secrets" else before[name])
    s = StreamScrubber()
    s.feed("a stream read meanwhile ")
    for name in _STATE:  # register() done
        setattr(r, name, after[name])
    for cut in range(1, len(key)):
        s = StreamScrubber()
        out = s.feed("x " + key[:cut]) + s.feed(key[cut:] + " y") + s.flush()
        assert out == "x [redacted] y", (cut, out)
