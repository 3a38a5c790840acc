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
