"""Review of 0396232 (`_core.Spellings`): a str's spellings are looked for in what the str
itself holds, whatever class it is of. A str that holds an unpaired surrogate is read as its
`surrogatepass` bytes; these were asked of the text's own `encode`, so a str subclass that
overrides `encode` had its key let through by `scrub` (or raised out of it), where the old
scrub, all str methods of the text, removed it."""

from __future__ import annotations

import pytest

from satisfice import _redact as r

_STATE = ("_secrets", "_folded", "_folded_b", "_exact", "_exact_b", "_spellings")
KEY = "sk-review-42-" + "Q7w8E9r0" * 3


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    for name in _STATE:
        monkeypatch.setattr(r, name, getattr(r, name))  # (restored after: registered here)
    r.register(KEY)
    return KEY


class _EmptyEncode(str):
    def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
        return b""


class _RaisingEncode(str):
    def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
        raise RuntimeError("encode")


@pytest.mark.parametrize("cls", [str, _EmptyEncode, _RaisingEncode])
@pytest.mark.parametrize("spelling", [KEY, KEY.upper()])
def test_a_str_subclass_is_read_as_the_str_it_is(key: str, cls: type, spelling: str) -> None:
    text = cls("\ud800 before " + spelling + " after")
    assert r.scrub(text) == "\ud800 before [redacted] after"
    assert r._spellings.found_in(text)
    assert r._key_start(cls("\ud800 x " + spelling[:5])) == 5
