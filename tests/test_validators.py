"""Every validator: what passes, what fails and why; extraction; combinators; the arithmetic
re-check of worked solutions."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from satisfice import _arith
from satisfice import validators as v
from satisfice.errors import ConfigError


def ans(text: str, model: str = "m", **kw: object) -> v.Answer:
    return v.Answer(model, text, **kw)  # type: ignore[arg-type]


NO_CTX = v.Context()


def run(validator: v.Validator, answer: v.Answer, ctx: v.Context = NO_CTX) -> v.Verdict:
    return asyncio.run(v.resolve(validator(answer, ctx)))


# -- JSON and JSON Schema --------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


def test_json_parses_plain_and_fenced() -> None:
    assert run(v.json_valid(), ans('{"a": 1}')).passed
    assert run(v.json_valid(), ans('```json\n{"a": 1}\n```')).passed
    bad = run(v.json_valid(), ans("{'a': 1}"))
    assert not bad.passed and bad.confidence == 0.0 and "not valid JSON" in bad.reason


def test_json_schema_names_the_failing_field() -> None:
    check = v.json_valid(SCHEMA)
    assert run(check, ans('{"name": "Ada", "age": 36}')).passed
    bad = run(check, ans('{"name": "Ada", "age": -1}'))
    assert not bad.passed and "age" in bad.reason
    missing = run(check, ans('{"name": "Ada"}'))
    assert not missing.passed and "age" in missing.reason


def test_json_schema_that_is_itself_invalid_fails_at_construction() -> None:
    with pytest.raises(ConfigError, match="schema itself is invalid"):
        v.json_valid({"type": "no-such-type"})


# -- regex / format ----------------------------------------------------------------------------


def test_regex_search_fullmatch_and_forbid() -> None:
    assert run(v.regex(r"\d{3}-\d{4}"), ans("call 555-1234 now")).passed
    assert not run(v.regex(r"\d{3}-\d{4}", fullmatch=True), ans("call 555-1234 now")).passed
    assert run(v.regex(r"\d{3}-\d{4}", fullmatch=True), ans(" 555-1234\n")).passed
    hedge = run(v.regex(r"as an AI", forbid=True), ans("As an AI, I cannot"))
    assert hedge.passed  # case-sensitive by default
    hedge = run(v.regex(r"(?i)as an AI", forbid=True), ans("As an AI, I cannot"))
    assert not hedge.passed and "As an AI" in hedge.reason


def test_regex_rejects_a_bad_pattern_clearly() -> None:
    with pytest.raises(ConfigError, match="invalid pattern"):
        v.regex("(unclosed")


# -- extraction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "letter"),
    [("B", "B"), ("B\n", "B"), (" (C) because", "C"), ("A) Ian", "A"),
     ("The answer is D.", "D"), ("Answer: **b**", "B"), ("Okay,", None), ("I do", None),
     ("E", None)],
)  # fmt: skip
def test_choice_letter(text: str, letter: str | None) -> None:
    assert v.choice_letter(text, letters="ABCD") == letter


@pytest.mark.parametrize(
    ("text", "number"),
    [("so 3 x 60 = 180\n#### 540", "540"), ("#### $1,200.00", "1200"),
     ("The answer is -3.5", "-3.5"), ("\\boxed{ 42 }", "42"), ("Final answer: 7 apples", "7"),
     ("no marker 12 then 13", None)],
)  # fmt: skip
def test_final_number(text: str, number: str | None) -> None:
    assert v.final_number(text) == number


def test_final_number_fallback_takes_the_last_number() -> None:
    assert v.final_number_or_last("first 12, then 13.0") == "13"
    assert v.final_number_or_last("none") is None


def test_extract_code_fences_and_python_tags() -> None:
    assert v.extract_code("x\n```python\ndef f(): pass\n```") == ("python", "def f(): pass\n")
    assert v.extract_code("[PYTHON]\ndef f(): pass\n[/PYTHON]") == ("python", "def f(): pass\n")
    assert v.extract_code("```\nprint(1)") == ("", "print(1)")  # unterminated: to the end
    assert v.extract_code("no code") is None


def test_extracts_checks_the_format() -> None:
    assert run(v.extracts(v.choice_letter), ans("C")).passed
    no = run(v.extracts(v.choice_letter), ans("Okay, let me think"))
    assert not no.passed and "choice_letter" in no.reason


def test_code_block_language_and_syntax() -> None:
    check = v.code_block("python")
    assert run(check, ans("```python\ndef f(x):\n    return x\n```")).passed
    assert run(check, ans("```\ndef f(x):\n    return x\n```")).passed  # unnamed, parses
    js = run(check, ans("```javascript\nfunction f(x) { return x }\n```"))
    assert not js.passed and "javascript" in js.reason
    broken = run(check, ans("```python\ndef f(x)\n    return x\n```"))
    assert not broken.passed and "does not parse" in broken.reason
    assert not run(check, ans("just prose")).passed
    assert run(v.code_block(), ans("```js\nlet x = 1;\n```")).passed  # any language


# -- agreement -----------------------------------------------------------------------------------


def test_agreement_counts_peers_with_the_same_extracted_answer() -> None:
    a, b, c = ans("B", "a"), ans("(B) since", "b"), ans("C", "c")
    check = v.agreement(v.choice_letter, min_agree=2)
    ok = run(check, a, v.Context(peers=[a, b, c]))
    assert ok.passed and ok.confidence == pytest.approx(2 / 3)
    lone = run(check, c, v.Context(peers=[a, b, c]))
    assert not lone.passed and "need 2" in lone.reason
    assert not run(check, a, v.Context(peers=[a])).passed  # alone is not agreement


def test_agreement_weights_and_unextractable_answers() -> None:
    a, b = ans("A", "strong"), ans("B", "weak")
    weighted = v.agreement(v.choice_letter, min_agree=2.0, weights={"strong": 2.0})
    assert run(weighted, a, v.Context(peers=[a, b])).passed  # its own weight is 2
    assert not run(weighted, b, v.Context(peers=[a, b])).passed
    none = run(v.agreement(v.choice_letter), ans("Okay,"), v.Context(peers=[a]))
    assert not none.passed and none.confidence == 0.0


def test_agreement_on_numbers() -> None:
    x, y = ans("so #### 1,200", "x"), ans("It is 1200.", "y")
    assert run(v.agreement(v.final_number_or_last), x, v.Context(peers=[x, y])).passed
    with pytest.raises(ConfigError):
        v.agreement(v.final_number, min_agree=0)


# -- log-prob confidence ---------------------------------------------------------------------


def test_logprob_confidence() -> None:
    sure = run(v.logprob_confidence(0.8), ans("Paris", logprobs=(-0.01, -0.02)))
    assert sure.passed and sure.confidence > 0.97
    unsure = run(v.logprob_confidence(0.8), ans("Lyon", logprobs=(-1.0, -2.0)))
    assert not unsure.passed and unsure.confidence == pytest.approx(0.2231, abs=1e-3)
    assert run(v.logprob_confidence(), ans("no lps")).passed
    assert not run(v.logprob_confidence(if_missing="fail"), ans("no lps")).passed


def test_openai_logprobs_are_read_from_the_raw_body() -> None:
    raw = {"choices": [{"logprobs": {"content": [{"logprob": -0.5}, {"logprob": -0.25}]}}]}
    assert v.openai_logprobs(raw) == (-0.5, -0.25)
    assert v.openai_logprobs({"choices": [{}]}) is None


# -- judge and user callables -------------------------------------------------------------------


def judge_replying(text: str, cost: float = 0.001) -> tuple[v.JudgeCall, list[list[dict]]]:  # type: ignore[type-arg]
    seen: list[list[dict]] = []  # type: ignore[type-arg]

    async def ask(messages: list[dict]) -> v.Answer:  # type: ignore[type-arg]
        seen.append(messages)
        return v.Answer("judge-mini", text, 50, 5, cost)

    return ask, seen


def test_judge_pass_fail_confidence_and_its_bill() -> None:
    ask, seen = judge_replying("VERDICT: PASS\nCONFIDENCE: 90")
    ctx = v.Context([{"role": "user", "content": "Capital of France?"}])
    got = run(v.judge(ask, "names the capital"), ans("Paris"), ctx)
    assert got.passed and got.confidence == pytest.approx(0.9)
    assert got.calls[0].cost_usd == 0.001
    prompt = seen[0][1]["content"]
    assert "Capital of France?" in prompt and "Paris" in prompt and "names the capital" in prompt
    ask, _ = judge_replying("VERDICT: FAIL\nCONFIDENCE: 80")
    no = run(v.judge(ask, "names the capital"), ans("Lyon"), ctx)
    assert not no.passed and no.confidence == pytest.approx(0.2)


def test_judge_unreadable_reply_escalates() -> None:
    ask, _ = judge_replying("I think it's fine")
    got = run(v.judge(ask, "anything"), ans("x"))
    assert not got.passed and "no VERDICT" in got.reason and got.calls
    with pytest.raises(ConfigError):
        v.judge(ask, "  ")


def test_user_callables_sync_async_text_or_answer() -> None:
    assert run(v.check(lambda text: "ok" in text), ans("it is ok")).passed
    assert not run(v.check(lambda text: "ok" in text), ans("nope")).passed

    async def slow(answer: v.Answer, ctx: v.Context) -> v.Verdict:
        await asyncio.sleep(0)
        return v.Verdict(answer.model == "good", 0.7, "by model")

    assert run(v.check(slow), ans("x", "good")).passed
    assert not run(v.check(slow), ans("x", "bad")).passed
    with pytest.raises(ConfigError, match="return a bool or a Verdict"):
        run(v.check(lambda text: "yes"), ans("x"))


# -- combinators ------------------------------------------------------------------------------


def test_all_of_stops_at_the_first_failure_and_names_it() -> None:
    calls: list[str] = []

    def spy(text: str) -> bool:
        calls.append(text)
        return True

    combo = v.all_of(v.json_valid(), v.check(spy, name="spy"))
    bad = run(combo, ans("not json"))
    assert not bad.passed and bad.reason.startswith("json:") and calls == []
    assert run(combo, ans("[1]")).passed and calls == ["[1]"]


def test_all_of_and_any_of_with_an_async_member() -> None:
    ask, _ = judge_replying("VERDICT: PASS\nCONFIDENCE: 60")
    combo = v.all_of(v.json_valid(), v.judge(ask, "r"))
    got = combo(ans("[1]"), NO_CTX)
    assert not isinstance(got, v.Verdict)  # it had to await the judge
    verdict = asyncio.run(v.resolve(got))
    assert verdict.passed and verdict.confidence == pytest.approx(0.6) and len(verdict.calls) == 1
    either = v.any_of(v.json_valid(), v.regex("yes"))
    assert run(either, ans("yes")).passed and not run(either, ans("no")).passed


def test_calibrated_is_a_logistic_score_of_the_confidences() -> None:
    checks = [v.json_valid(), v.regex("ok")]
    combo = v.calibrated(checks, [2.0, 1.0], bias=-2.5, threshold=0.5)
    both = run(combo, ans('"ok"'))  # sigmoid(0.5)
    assert both.passed and both.confidence == pytest.approx(0.6225, abs=1e-4)
    one = run(combo, ans('"no"'))  # sigmoid(-0.5)
    assert not one.passed and "regex" in one.reason
    stricter = combo.at(0.7)
    assert not run(stricter, ans('"ok"')).passed and stricter.weights == combo.weights
    with pytest.raises(ConfigError):
        v.calibrated(checks, [1.0])


def test_accept_and_predicted() -> None:
    assert run(v.accept, ans("anything")).passed
    ctx = v.Context(p_good={"m": 0.3})
    low = run(v.predicted(0.5), ans("x"), ctx)
    assert not low.passed and low.confidence == 0.3
    assert run(v.predicted(), ans("x", "other"), ctx).confidence == 0.5


# -- GSM8K-style checks of one worked solution ----------------------------------------------------

GOOD = (
    "He runs 3 x 60 = <<3*60=180>>180 meters a session.\n"
    "So 180 x 3 = <<180*3=540>>540 meters a week.\n#### 540"
)
PROMPT = v.Context([{"role": "user", "content": "3 sprints 3 times a week, 60 meters each?"}])


def test_arithmetic_finds_the_wrong_equality() -> None:
    assert run(v.arithmetic(), ans(GOOD)).passed
    wrong = "So (12 / 20) x 100 = 55% of the students.\n#### 55"
    bad = run(v.arithmetic(), ans(wrong))
    assert not bad.passed and "it is 60" in bad.reason


@pytest.mark.parametrize(
    ("text", "checked", "wrong"),
    [("3 x 60 = 180", 1, 0), ("10 - 3 = 8", 1, 1), ("(12 / 20) x 100 = 60%", 1, 0),
     ("8 x $5 x 60% = $24", 1, 0), ("4.00/15 = 0.27", 1, 0), ("4/15 = 0.2", 1, 1),
     ("1,000 * 2 = 2,000", 1, 0), ("20 + 80/2 = 55", 1, 1), ("2 * (3 + 4) = 14", 1, 0),
     ("a = 235 / 3 = 78.33", 1, 0), ("10 × 3 = 30 and 7 − 2 = 4", 2, 1),
     ("x - 3 = 5", 0, 0), ("-3 + 5 = 2", 0, 0), ("2 + 3 = 5 - x", 0, 0),
     ("from 1:00 to 5:00 = 4 hours", 0, 0), ("5 / 0 = 1", 0, 0), ("2x + 3 = 7", 0, 0),
     ("180 meters/session * 3 = 540", 0, 0)],
)  # fmt: skip
def test_arithmetic_cases(text: str, checked: int, wrong: int) -> None:
    n, bad = _arith.check_arithmetic(text)
    assert (n, len(bad)) == (checked, wrong)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 10_000), st.sampled_from("+-*/"))
def test_arithmetic_accepts_every_true_equality(a: int, b: int, op: str) -> None:
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]
    stated = f"{value:.2f}" if op == "/" else str(value)
    n, bad = _arith.check_arithmetic(f"so {a} {op} {b} = {stated} here")
    assert n == 1 and bad == []
    n, bad = _arith.check_arithmetic(f"so {a} {op} {b} = {float(stated) + 1:g} here")
    assert n == 1 and len(bad) == 1


def test_final_answer_present_well_formed_and_whole() -> None:
    assert run(v.final_answer(integer=True), ans(GOOD)).passed
    assert not run(v.final_answer(), ans("it is 540 meters")).passed
    mixed = run(v.final_answer(), ans("#### 24 2/3"))
    assert not mixed.passed and "not one number" in mixed.reason
    frac = run(v.final_answer(integer=True), ans("#### 27.5"))
    assert not frac.passed and "whole" in frac.reason
    assert run(v.final_answer(), ans("#### 27.5")).passed


def test_consistent_final_compares_with_the_last_computed_value() -> None:
    assert run(v.consistent_final(), ans(GOOD)).passed
    jumped = run(v.consistent_final(), ans("3 x 60 = 180\n#### 200"))
    assert not jumped.passed and "180" in jumped.reason
    assert run(
        v.consistent_final(), ans("4/15 = 0.27 so 27 cents = 0.27 x 100 = 27\n#### 27")
    ).passed
    assert run(v.consistent_final(), ans("No working.\n#### 5")).confidence == 0.5
    assert not run(v.consistent_final(), ans("no final")).passed


def test_uses_inputs_flags_an_ignored_quantity() -> None:
    ok = run(v.uses_inputs(), ans(GOOD), PROMPT)
    assert ok.passed and ok.confidence == 1.0
    ctx = v.Context([{"role": "user", "content": "25 oranges, 1 is bad, 20% unripe, 2 sour"}])
    miss = run(v.uses_inputs(), ans("25 * 20/100 = 5; 5 + 2 = 7; 25 - 7 = 18\n#### 18"), ctx)
    assert not miss.passed and miss.confidence == pytest.approx(0.75) and "1" in miss.reason
    assert run(v.uses_inputs(), ans("x"), v.Context([{"role": "user", "content": "hi"}])).passed


@pytest.mark.parametrize("pattern", [5, None, ["a"]])
def test_a_regex_pattern_must_be_text(pattern: object) -> None:
    """A non-string pattern was stored as if compiled, and failed at run time with a raw
    AttributeError (in chat(cascade="auto") and when the policy was saved)."""
    from satisfice import validators
    from satisfice.errors import ConfigError

    with pytest.raises(ConfigError, match="pattern must be a string"):
        validators.from_spec({"check": "regex", "pattern": pattern})
    with pytest.raises(ConfigError, match="pattern must be a string"):
        validators.regex(pattern)  # type: ignore[arg-type]


def test_constructors_refuse_what_could_never_work_and_take_a_builtin() -> None:
    """check(max) raised a raw ValueError (no signature); all_of(5) and any_of("x") a raw
    AttributeError; judge(min_confidence=nan or 5) made a judge that never passes;
    Step(["a"], 5) failed every answer later."""
    from satisfice import Step

    assert run(v.check(bool), v.Answer("m", "x"), NO_CTX).passed
    for bad in ((5,), ("x",), (None,), ()):
        for comb in (v.all_of, v.any_of):
            with pytest.raises(ConfigError):
                comb(*bad)  # type: ignore[arg-type]
    for m in (float("nan"), 5, -0.1, "x"):
        with pytest.raises(ConfigError, match="min_confidence"):
            v.judge(lambda *_: "", "be right", min_confidence=m)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="validator"):
        Step(["a"], 5)  # type: ignore[arg-type]
