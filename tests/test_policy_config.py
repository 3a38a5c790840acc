"""A bad policy is a ConfigError that names the field, when it is loaded: never a raw Python
exception, and never a value accepted only to fail later in Router() or never to apply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from satisfice import Policy, Router
from satisfice.errors import ConfigError

RULE = {"name": "r", "use": ["gpt-5.4-nano"]}
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("floor as text", {"quality_floor": "high"}, "quality_floor"),
    ("floor null", {"quality_floor": None}, "quality_floor"),
    ("fallbacks as text", {"max_fallbacks": "x"}, "max_fallbacks"),
    ("a rule that is text", {"rules": ["x"]}, "policy.rules"),
    ("rules as an object", {"rules": {"a": 1}}, "policy.rules"),
    ("when as text", {"rules": [{**RULE, "when": "x"}]}, "'when'"),
    ("min as text", {"rules": [{**RULE, "when": {"min_tokens_in": "abc"}}]}, "min_tokens_in"),
    ("use as a number", {"rules": [{"name": "r", "use": 5}]}, "'use'"),
    ("min above max", {"rules": [{**RULE, "when": {"min_tokens_in": 100, "max_tokens_in": 10}}]},
     "above max_tokens_in"),
    ("negative bound", {"rules": [{**RULE, "when": {"max_tokens_in": -1}}]}, "max_tokens_in"),
    ("NaN bound", {"rules": [{**RULE, "when": {"max_tokens_in": float("nan")}}]}, "max_tokens_in"),
    # math.isnan(10**400) had raised a raw OverflowError
    ("huge bound", {"rules": [{**RULE, "when": {"min_tokens_in": 10**400}}]},
     "rule 'r': when.min_tokens_in"),
    ("outputs as a list", {"expected_output_tokens": [1, 2]}, "expected_output_tokens"),
    ("output as text", {"expected_output_tokens": {"general": "x"}}, "expected_output_tokens"),
    ("negative output", {"expected_output_tokens": {"general": -500}}, "expected_output_tokens"),
    ("huge output", {"expected_output_tokens": {"general": 10**30}}, "expected_output_tokens"),
    ("predictor as a number", {"predictor": 5}, "predictor"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "data", "field"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_policy_names_its_field(
    what: str, data: dict[str, Any], field: str, tmp_path: Path
) -> None:
    p = tmp_path / "policy.json"
    p.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=field):
        Router(policy=Policy.load(p))


@pytest.mark.parametrize(
    ("raw", "why"),
    [(b"\xff\xfe{}", "not valid JSON"), (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
     (b"[1, 2]", "JSON object")],
)  # fmt: skip
def test_a_policy_file_that_is_not_a_json_object(raw: bytes, why: str, tmp_path: Path) -> None:
    p = tmp_path / "policy.json"
    p.write_bytes(raw)
    with pytest.raises(ConfigError, match=why):
        Policy.load(p)
    with pytest.raises(ConfigError, match="cannot be read"):
        Policy.load(tmp_path)  # a directory


def _public_calls() -> list[tuple[str, Any]]:
    from satisfice import Cascade, ModelSpec, validators

    r = Router()
    return [
        ("Cascade([5])", lambda: Cascade([5])),
        ("Cascade(latency_budget_ms='5')", lambda: Cascade(["a"], latency_budget_ms="5")),
        ("Cascade(skip_below='0.5')", lambda: Cascade(["a"], skip_below="0.5")),
        ("judge(rubric=None)", lambda: validators.judge(lambda m: None, None)),
        ("check(5)", lambda: validators.check(5)),
        ("calibrated(threshold='x')",
         lambda: validators.calibrated([validators.arithmetic()], [1.0], threshold="x")),
        ("Router(registry=dict)", lambda: Router({"model": []})),
        ("Router(policy=dict)", lambda: Router(None, {"quality_floor": 0.5})),
        ("update(policy=str)", lambda: r.update(policy="p.json")),
        ("ModelSpec(context_window='8k')",
         lambda: ModelSpec(id="x", provider="p", context_window="8k", max_output=1)),
        ("ModelSpec(quality text)", lambda: ModelSpec(
            id="x", provider="p", context_window=8, max_output=1, quality={"general": "hi"})),
        ("feedback(list)", lambda: r.feedback(["id"], 1.0)),
    ]  # fmt: skip


@pytest.mark.parametrize("i", range(12))
def test_public_calls_with_wrong_types_say_what_to_pass(i: int) -> None:
    """Each raised a raw TypeError or AttributeError from deep inside."""
    from satisfice.errors import SatisficeError

    what, call = _public_calls()[i]
    with pytest.raises(SatisficeError):
        call()
        pytest.fail(f"{what} was accepted")


def test_a_misspelt_field_is_a_config_error_naming_it() -> None:
    """`Policy(qualityfloor=0.5)` (and Constraints, Price, `.replace`) raised Python's bare
    TypeError, naming only `__init__`; Policy.from_dict said it right. Found by review."""
    from satisfice import Constraints, Price

    cases = [
        (lambda: Policy(qualityfloor=0.5), r"Policy: unknown field\(s\) \['qualityfloor'\]"),
        (lambda: Policy().replace(qualityfloor=1), r"Policy: unknown field\(s\)"),
        (lambda: Constraints(foo=1), r"Constraints: unknown field\(s\) \['foo'\]"),
        (lambda: Price(1.0, 2.0, foo=2), r"Price: unknown field\(s\) \['foo'\].*'cached_input'"),
    ]
    for make, word in cases:
        with pytest.raises(ConfigError, match=word):
            make()  # type: ignore[no-untyped-call]
    with pytest.raises(TypeError):  # a wrong call that names no unknown field: Python's own
        Price(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)  # type: ignore[call-arg]
    assert Policy(quality_floor=0.7).replace(lam=0.1).lam == 0.1
