"""Review of c93db44: arguments that hold no JSON object, NaN among them; a number past a
float's range (1e999) reads as inf, which is served as `null` as NaN had been."""

from __future__ import annotations

import pytest

from satisfice._json import dumps
from satisfice.providers.anthropic import arguments_object
from satisfice.server.wire import tool_input


@pytest.mark.parametrize("arguments", ['{"t": 1e999}', '{"t": -1e400}', '{"t": [1, 2E+500]}'])
def test_a_number_past_a_float_s_range_is_kept_whole_as_nan_is(arguments: str) -> None:
    assert arguments_object(arguments) is None
    assert tool_input(arguments) == {"_raw": arguments}
    assert b"null" not in dumps(tool_input(arguments))


def test_ordinary_numbers_are_read_as_they_were() -> None:
    assert arguments_object('{"a": 1.5, "b": -2e10, "c": 1e308, "d": 5e-324, "e": 7}') == {
        "a": 1.5, "b": -2e10, "c": 1e308, "d": 5e-324, "e": 7}  # fmt: skip
