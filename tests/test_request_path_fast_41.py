"""The forty-first session's request-path changes hold what the old path held: a
deployment's API key variable is read per request (set, unset, emptied, os.environ
replaced), and so on."""

from __future__ import annotations

import os

import pytest

from satisfice.testing import LocalUpstream

from .chat_support import registry, router, wire

MSGS = [{"role": "user", "content": "hello"}]


async def test_a_key_variable_is_read_per_request_set_emptied_unset_or_replaced(
    up: LocalUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_env_value` reads os.environ's own dict (not os.environ.get's Python frames): each
    change to the variable is seen by the next request, however it was made; and a
    process whose os.environ is replaced by a plain mapping is read through that."""
    name = "SATISFICE_TEST_KEY_41"
    monkeypatch.setenv(name, "k-1-test-key")
    reg = registry(up.url)
    alpha = reg["alpha"]
    dep = alpha.deployments[0].replace(api_key_env=name)
    async with router(up.url) as r:
        r.update(reg.replace(alpha.replace(deployments=(dep,))))
        assert (await r.chat(MSGS)).model == "alpha"
        monkeypatch.setenv(name, "")  # set, but empty: no key
        skipped = await r.chat(MSGS)
        assert skipped.model == "beta" and f"{name} is not set" in str(skipped.attempts[0].error)
        monkeypatch.setenv(name, "k-2-test-key")
        assert (await r.chat(MSGS)).model == "alpha"
        monkeypatch.delenv(name)
        assert (await r.chat(MSGS)).model == "beta"
        os.environ.update({name: "k-3-test-key"})  # os.environ's own methods, not setenv's
        assert (await r.chat(MSGS)).model == "alpha"
        monkeypatch.setattr(os, "environ", {name: "k-4-test-key"})  # replaced by a plain dict
        assert (await r.chat(MSGS)).model == "alpha"
        monkeypatch.setattr(os, "environ", {})
        assert (await r.chat(MSGS)).model == "beta"
    keys = [s.headers["authorization"] for s in up.seen(wire("alpha"))]
    # (each answer's call sent the key its provider was made with, when first called)
    assert keys == ["Bearer k-1-test-key"] * 4


def _scrub_bytes_before(data: bytes) -> bytes:
    """`scrub_bytes` as it was before its first test moved to Rust (`_core.AnyOf`, the
    forty-first session; `_core.Spellings` since): every spelling looked for with bytes' find."""
    from satisfice import _redact as r

    if not r._secrets:
        return data
    if r._folded_b:
        low = data.lower()
        for k in r._folded_b:
            if low.find(k) >= 0:
                data = r._any_case(data, low, r._folded_b, r._REDACTED_B)
                break
    for s in r._exact_b:
        if data.find(s) >= 0:
            data = data.replace(s, r._REDACTED_B)
    if r._PERCENT in data or (r._AMPERSAND in data and data.find(b"&#") >= 0):
        data = r._unencode(data.decode("latin-1")).encode("latin-1")
    return data


def test_scrub_bytes_gives_what_it_gave_for_every_spelling_of_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The usual answer's test for a key (none there) in one Rust call, the rest as before:
    bit for bit what the old `scrub_bytes` gave, for answers holding a key as it is, in
    other cases, in base64, percent-encoded, as character references, a key that is not
    ASCII, beside bytes that are not ASCII, and none."""
    import base64
    import random
    import urllib.parse

    from satisfice import _redact as r

    for name in ("_secrets", "_folded", "_folded_b", "_exact", "_exact_b",
                 "_spellings"):  # fmt: skip
        monkeypatch.setattr(r, name, getattr(r, name))  # (restored after: registered here)
    keys = ["sk-test-41-" + "a1B2c3D4" * 4, "clé-secrète-41-" + "Zz9" * 6]
    for k in keys:
        r.register(k)
    rng = random.Random(41)
    spellings = [s.encode() for k in keys for s in (k, k.upper(), k.lower())]
    spellings += [base64.b64encode(pad.encode() + keys[0].encode()) for pad in ("", "x", "xy")]
    spellings += [urllib.parse.quote(keys[0], safe="").encode(), b"&#115;" + keys[0][1:].encode()]
    fillers = [b'{"text": "hello"}', "é ü ß À".encode(), "Ωmega".encode(), b"%", b"&", b""]
    for _ in range(3000):
        parts = [rng.choice(fillers) for _ in range(rng.randint(0, 4))]
        if rng.random() < 0.5:
            parts.insert(rng.randint(0, len(parts)), rng.choice(spellings))
        data = b" ".join(parts)
        assert r.scrub_bytes(data) == _scrub_bytes_before(data), data


def test_spellings_find_each_string_in_any_ascii_case_and_nothing_else() -> None:
    """`_core.Spellings.found_in` (bytes or str): a string at the start, the end, alone, in
    upper or mixed case; bytes that are not ASCII only as they are; nothing in a text
    without one, or too short for one; an empty string refused (it occurs in every text)."""
    from satisfice import InputError, _core

    a = _core.Spellings(["sk-AbC123xyz"], ["clé-ß"])
    for hit in ("sk-abc123xyz", "xx SK-ABC123XYZ", "Sk-aBc123XyZ.", "clé-ß!", "\ud800 clé-ß"):
        assert a.found_in(hit) and a.found_in(hit.encode("utf-8", "surrogatepass")), hit
    for miss in ("", "sk-abc123xy", "sk-abc123 xyz", "CLÉ-ß", "clé-ss", "\ud800"):
        assert not a.found_in(miss), miss
        assert not a.found_in(miss.encode("utf-8", "surrogatepass")), miss
    with pytest.raises(InputError, match="empty"):
        _core.Spellings(["ok"], [""])
    with pytest.raises(TypeError):
        a.found_in(["sk-abc123xyz"])


def _key_start_before(text: str) -> int:
    """`_redact._key_start` as it was before the forty-first session: a table of the keys'
    starts by their last character, each start that ends as the text does folded on its
    own, the base64 spellings' compared with `endswith`."""
    from satisfice import _redact as r

    def table(keys: tuple[str, ...]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for key in set(keys):
            for k in range(1, len(key)):
                out.setdefault(key[k - 1], []).append(key[:k])
        for starts in out.values():
            starts.sort(key=len, reverse=True)
        return out

    if not text:
        return 0
    tail, held = text[-1], 0
    for start in table(r._folded).get(r._fold(tail), ()):
        if r._fold(text[-len(start) :]) == start:
            held = len(start)
            break
    for start in table(r._exact).get(tail, ()):
        if len(start) <= held:
            break
        if text.endswith(start):
            return len(start)
    return held


def test_a_streamed_pieces_held_end_is_what_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """How much of a streamed text's end `StreamScrubber` holds back (`_key_start`: the
    longest end that may begin a key, in any case, or a base64 spelling of one as it is),
    now with the end folded once and compared by slices: the same as before for 5,000
    ends made of keys' starts in every case, their spellings' starts, and other text."""
    import base64
    import random

    from satisfice import _redact as r

    for name in ("_secrets", "_folded", "_folded_b", "_exact", "_exact_b",
                 "_spellings"):  # fmt: skip
        monkeypatch.setattr(r, name, getattr(r, name))  # (restored after: registered here)
    keys = ["sk-test-41-" + "a1B2c3D4" * 4, "Ab9-Xy" * 5, "clé-secrète-41-" + "Zz9" * 6]
    for k in keys:
        r.register(k)
    rng = random.Random(41)
    sources = [*keys, *(base64.b64encode(p.encode() + keys[0].encode()).decode() for p in "xy")]
    # (an unpaired surrogate, which a str may hold and UTF-8 may not; the Kelvin sign and
    # dotted I, which str.lower() makes ASCII and the ASCII fold leaves)
    fillers = ["hello ", "SK-", "é À ", "a", "Ω", " ", "x9", "\ud800", "\u212a", "\u0130"]
    for _ in range(5000):
        src = rng.choice(sources)
        start = src[: rng.randint(1, len(src) - 1)]
        start = rng.choice([start, start.upper(), start.lower(), start.swapcase()])
        text = "".join(rng.choice(fillers) for _ in range(rng.randint(0, 3)))
        if rng.random() < 0.7:
            text += start
        assert r._key_start(text) == _key_start_before(text), text
