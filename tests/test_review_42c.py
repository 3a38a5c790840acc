"""Review of 17ae644 (has_digit_run) and d725817 (register by lines): one bug found, and
it is older than both. `_redact.register` read the registry, built the new one and wrote
it back with no lock. A second thread that registered a key inside that window lost the
key: the first thread wrote back what it had read. Providers register their keys when they
are built (lazily, on a Router shared by threads), so the lost key was never scrubbed."""

from __future__ import annotations

import threading

import pytest

from satisfice import _redact as r

_STATE = ("_secrets", "_folded", "_folded_b", "_exact", "_exact_b", "_spellings")


def test_a_key_registered_by_another_thread_meanwhile_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in _STATE:
        monkeypatch.setattr(r, name, getattr(r, name))  # (restored after: registered here)
    other = threading.Thread(target=r.register, args=("other-thread-key-7f3a",))
    started = False
    real_sorted = sorted

    def sorted_(*a, **k):  # type: ignore[no-untyped-def]
        # the first registration's registry has been read, not written yet: the other
        # thread registers its key now (blocked there if register holds a lock)
        nonlocal started
        if not started:
            started = True
            other.start()
            other.join(0.3)
        return real_sorted(*a, **k)

    monkeypatch.setattr(r, "sorted", sorted_, raising=False)
    r.register("first-thread-key-91c2")
    other.join()
    for key in ("first-thread-key-91c2", "other-thread-key-7f3a"):
        assert key in r._secrets, key
        assert key in r._folded, key
        assert r.scrub(f"a {key.upper()} b") == "a [redacted] b", key
