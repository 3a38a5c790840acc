"""The binding contract of satisfice._core: types, clear errors, odd and huge inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from satisfice import Router, _core
from satisfice.errors import InputError, TokenizerError

from .reference import tiktoken_encoding

ENCODINGS = ("o200k_base", "cl100k_base")
SAMPLES = [
    "",
    "hello world",
    "The quick brown fox jumps over the lazy dog.\n\n  indented   spaces\t\ttabs",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
    '{"key": "value", "n": 12345678901234, "nested": {"ok": true}}',
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "Привет, мир! Καλημέρα κόσμε! مرحبا بالعالم",
    "emoji 🙂👍🏽🇫🇷 and combining e\u0301 and zero-width \u200b joiner",
    "numbers 3.14159 1,000,000 2025-11-22 0xDEADBEEF",
    "'s 't 're 've 'm 'll 'd CAPS'S",
    " " * 100 + "\n" * 50,
]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_exact_counts_match_tiktoken(encoding: str) -> None:
    enc = tiktoken_encoding(encoding)
    for text in SAMPLES:
        assert _core.count_tokens(text, encoding) == len(enc.encode(text, disallowed_special=())), (
            text
        )


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=400))
def test_exact_count_property(text: str) -> None:
    for encoding in ENCODINGS:
        ref = len(tiktoken_encoding(encoding).encode(text, disallowed_special=()))
        assert _core.count_tokens(text, encoding) == ref


def test_batch_equals_single() -> None:
    assert _core.count_tokens_batch(SAMPLES) == [_core.count_tokens(s) for s in SAMPLES]
    est = _core.estimate_tokens_batch(SAMPLES, "claude")
    assert est == [_core.estimate_tokens(s, "claude") for s in SAMPLES]


def test_count_till_limit() -> None:
    text = "tokens " * 10_000
    n = _core.count_tokens(text)
    assert _core.count_tokens_till_limit(text, 100) is None
    assert _core.count_tokens_till_limit(text, n) == n
    assert _core.count_tokens_till_limit("", 0) == 0


def test_message_count_adds_overhead() -> None:
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert _core.count_message_tokens(msgs) == _core.count_tokens("be brief") + 1 + 2 * 4 + 3


def test_unknown_encoding_is_a_clear_error() -> None:
    with pytest.raises(TokenizerError, match="unknown tokenizer family .gpt5.*o200k_base"):
        _core.count_tokens("x", "gpt5")
    assert not _core.is_exact_family("claude")
    assert _core.is_exact_family("cl100k_base")


def test_invalid_surrogate_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unpaired surrogate"):
        _core.count_tokens("bad \ud800 text")
    f = _core.Featurizer()
    with pytest.raises(InputError, match=r"messages\[0\].content is not valid Unicode"):
        f.featurize([{"role": "user", "content": "x\udfff"}])


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        (42, "messages must be a str or a list"),
        ([1], r"messages\[0\] must be a dict"),
        ([{"content": "x"}], r"messages\[0\] has no 'role'"),
        ([{"role": "wizard", "content": "x"}], "not one of system"),
        ([{"role": "user", "content": 3}], "must be a str, a list of parts, or None"),
        ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "text must be a str"),
    ],
)
def test_malformed_messages(messages: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        _core.Featurizer().featurize(messages)  # type: ignore[arg-type]


def test_featurizer_shapes_and_determinism() -> None:
    f = _core.Featurizer(hash_buckets=256)
    assert f.dim == 32 + 256 and len(f.dense_names()) == 32
    v, info = f.featurize("Write a Python function to parse JSON")
    assert v.dtype == np.float32 and v.shape == (f.dim,)
    assert info["task"] == "code" and "json" in info["flags"]
    batch = f.featurize_batch(["Write a Python function to parse JSON", "hi"])
    assert batch.shape == (2, f.dim)
    np.testing.assert_array_equal(batch[0], v)
    # Seeded, portable hashing: a pinned bucket for a pinned word.
    v2, _ = _core.Featurizer(hash_buckets=256).featurize("Write a Python function to parse JSON")
    np.testing.assert_array_equal(v, v2)


def test_multimodal_parts() -> None:
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        }
    ]
    _, info = _core.Featurizer().featurize(msgs)
    assert info["chars"] == len("what is in this picture?")


def test_huge_and_mixed_script_prompts() -> None:
    f = _core.Featurizer()
    huge = ("Lorem ipsum dolor sit amet, 日本語, Привет 🙂 " * 30_000)[: 1 << 20]
    v, info = f.featurize(huge)
    assert np.isfinite(v).all() and info["chars"] == len(huge.encode())
    assert _core.count_tokens(huge) > 100_000
    exact = _core.count_tokens(huge)
    assert abs(_core.estimate_tokens(huge) - exact) / exact < 0.25
    v, _ = f.featurize("\x00\x01\x02 \u202e RTL override \ufeff BOM")
    assert np.isfinite(v).all()


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=300))
def test_featurize_never_crashes(text: str) -> None:
    v, info = _core.Featurizer().featurize([{"role": "user", "content": text}])
    assert np.isfinite(v).all()
    assert info["task"] in _core.TASKS
    assert _core.estimate_tokens(text) >= 0


# Anything a caller might pass as messages: the boundary answers with a route or a
# SatisficeError, never a crash or a bare Python error.
_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=50),
    st.binary(max_size=20),
    st.sampled_from(["user", "system", "assistant", "tool", "text", "image_url", "content"]),
)
_values = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(
            st.sampled_from(["role", "content", "type", "text", "x"]), inner, max_size=4
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(_values)
def test_the_boundary_never_raises_a_bare_error(messages: object) -> None:
    import contextlib

    from satisfice import SatisficeError

    for call in (_ROUTER.route, _core.count_message_tokens):
        with contextlib.suppress(SatisficeError):  # a clear error is an answer; nothing else
            call(messages)  # type: ignore[operator]


_ROUTER = Router()
