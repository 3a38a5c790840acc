"""Review of the forty-first session's scrubbing changes (scrub_bytes' first test in Rust,
`_core.AnyOf`): what broke, each with the test that shows it."""

from __future__ import annotations

import pytest

from satisfice import _core
from satisfice import _redact as r

_STATE = ("_secrets", "_secrets_b", "_folded", "_folded_b", "_exact", "_exact_b", "_any_b")


def test_scrub_bytes_while_the_first_key_is_being_registered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`register` sets the keys' tuples one by one and `_any_b` (scrub_bytes' first test)
    last: an answer scrubbed in between (on another thread: a catalogue refresh registers
    its URL's token in a worker thread while the loop scrubs answers) saw keys registered
    and no `_any_b` yet, and raised AttributeError ('NoneType' has no 'found_in') in place
    of the answer. It is scrubbed as before the key was registered, until it is."""
    for name in _STATE:  # no key yet, the one below the first (restored after)
        monkeypatch.setattr(r, name, None if name == "_any_b" else ())
    seen: list[object] = []
    built = _core.AnyOf

    def any_of(needles: list[bytes]) -> object:
        # the moment register() builds `_any_b`: the keys' tuples set, `_any_b` not yet
        try:
            seen.append(r.scrub_bytes(b'{"text": "hello"}'))
        except Exception as e:  # (on another thread, the answer's request failed with it)
            seen.append(e)
        return built(needles)

    monkeypatch.setattr(_core, "AnyOf", any_of)
    key = "sk-review-41-" + "q7" * 10
    r.register(key)
    assert seen == [b'{"text": "hello"}']
    assert r.scrub_bytes(f"x {key.upper()} y".encode()) == b"x [redacted] y"  # registered now
