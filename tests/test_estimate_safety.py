"""Adversarial text never slips past a window or a cost cap: wherever the estimate is not
safely clear of a limit, the decision is made on the exact count. Property-tested on long
letter runs, base64, hex, DNA, punctuation runs and mixed scripts."""

from __future__ import annotations

import base64
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from satisfice import Registry, Router, _core

OUT = 50  # max_output_tokens of every request here

ALPHABETS = {
    "latin": string.ascii_letters + " ",
    "dna": "ACGT",
    "hex": "0123456789abcdef",
    "punct": "!=-*#.,;:?/\\|~^",
    "cyrillic": "абвгдежзийклмнопрстуфхцчшщъыьэюя ",
    "cjk": "的一是不了人我在有他这为之大来以个中上们",
    "rare han": "".join(chr(c) for c in range(0x20000, 0x20040)),
    "emoji": "😀🎉🚀🧬🦀🌍🔥💧",
    "greek+arabic": "αβγδεζηθικλμνξοπρστυφχψωابتثجحخدذرزسشصضطظعغفقكلمنهوي ",
    "whitespace": " \r\n\t",
}


@st.composite
def texts(draw: st.DrawFn) -> str:
    kind = draw(
        st.sampled_from(["run", "base64", "mixed", "words", "snake", "genbank", *ALPHABETS])
    )
    n = draw(st.integers(1, 6000))
    if kind in ("words", "snake", "genbank"):
        # random lower-case words: fitted-looking text the estimator under-counts ~3x
        letters = "acgt" if kind == "genbank" else string.ascii_lowercase
        length = st.integers(10, 10) if kind == "genbank" else st.integers(2, 12)
        words = draw(st.lists(st.text(letters, min_size=1, max_size=12).filter(bool)
                              if kind != "genbank" else
                              length.flatmap(lambda k: st.text(letters, min_size=k, max_size=k)),
                              min_size=1, max_size=n // 6 + 1))  # fmt: skip
        sep = "_" if kind == "snake" else " "
        return sep.join(words)
    if kind == "run":
        return draw(st.sampled_from("xaZ")) * draw(st.integers(25, 200_000))
    if kind == "base64":
        return base64.b64encode(draw(st.binary(min_size=1, max_size=4000))).decode()
    if kind == "mixed":
        parts = draw(st.lists(st.sampled_from(list(ALPHABETS.values())), min_size=2, max_size=5))
        return "".join(draw(st.text(alphabet=a, min_size=1, max_size=n // 4 + 1)) for a in parts)
    return draw(st.text(alphabet=ALPHABETS[kind], min_size=1, max_size=n))


def registry(window: int, price: float, tokenizer: str) -> Registry:
    return Registry.from_dict(
        {
            "model": [
                {
                    "id": "m",
                    "tokenizer": tokenizer,
                    "context_window": window,
                    "max_output": OUT,
                    "price": {"input": price, "output": price},
                    "deployments": [{"name": "d", "base_url": "http://127.0.0.1:1/v1"}],
                }
            ]
        }
    )


@settings(max_examples=300, deadline=None)
@given(
    text=texts(),
    tokenizer=st.sampled_from(["o200k_base", "cl100k_base"]),
    window_factor=st.floats(0.3, 3.0),
    cost_factor=st.floats(0.3, 3.0),
)
def test_window_and_cost_decisions_hold_on_the_exact_count(
    text: str, tokenizer: str, window_factor: float, cost_factor: float
) -> None:
    msgs = [{"role": "user", "content": text}]
    exact = _core.count_message_tokens(msgs, tokenizer)
    window = max(int((exact + OUT) * window_factor), OUT + 1)
    price = 1.0  # USD per 1M tokens, in and out
    exact_cost = (exact + OUT) * price / 1e6
    cap = exact_cost * cost_factor
    router = Router(registry(window, price, tokenizer))
    plan = router.snapshot.table.plan(msgs, max_output_tokens=OUT, max_cost=cap)
    fits_window = exact + OUT <= window
    fits_cap = exact_cost <= cap * (1 + 1e-9)
    if len(plan):
        # a model that passed really fits, whatever the estimate said
        assert fits_window, (exact, window, plan.candidates)
        assert fits_cap, (exact_cost, cap, plan.candidates)
    else:
        (reason,) = plan.filtered
        if reason[1] == "context_window":
            assert not fits_window, (exact, window, reason)
        else:
            assert reason[1] == "max_cost" and fits_window and not fits_cap, (reason, exact, cap)


def test_a_long_run_that_fits_a_limit_to_the_token_passes_it() -> None:
    """A pre-token past 64 KB (a run of one letter) had its count's forced-cut slack left
    standing: at a window or cap it fits to the token, it was refused. It is counted again
    whole and exactly up to 256 KB."""
    for tokenizer in ("o200k_base", "cl100k_base"):
        for n in (65_827, 131_000, 199_999):
            msgs = [{"role": "user", "content": "x" * n}]
            exact = _core.count_message_tokens(msgs, tokenizer)
            router = Router(registry(exact + OUT, 1.0, tokenizer))
            cap = (exact + OUT) / 1e6
            plan = router.snapshot.table.plan(msgs, max_output_tokens=OUT, max_cost=cap)
            assert len(plan) == 1, (tokenizer, n, exact, plan.filtered)
            over = router.snapshot.table.plan(msgs, max_output_tokens=OUT + 1, max_cost=cap)
            assert not len(over), (tokenizer, n)  # a token more does not fit
