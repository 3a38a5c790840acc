"""Leftovers from earlier reviews, fixed in the thirty-seventh session."""

from __future__ import annotations

import pytest

from satisfice.errors import InputError
from satisfice.server import wire

BASE = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.mark.parametrize("parse", [wire.openai_request, wire.anthropic_request])
def test_top_p_past_one_is_refused_as_a_client_error(parse: object) -> None:
    # a probability mass: every API refuses 1.5 (a 400 upstream, after routing and a call)
    with pytest.raises(InputError, match=r"'top_p' must be a number in \[0, 1\], got 1.5"):
        parse({**BASE, "top_p": 1.5}, {})  # type: ignore[operator]
    parse({**BASE, "top_p": 1}, {})  # type: ignore[operator]
    parse({**BASE, "temperature": 1.5}, {})  # type: ignore[operator]  # (OpenAI's go to 2)


def test_a_mistyped_url_is_not_quoted_with_its_password() -> None:
    from satisfice import sources
    from satisfice.errors import ConfigError

    # one slash: no URL to split, and "is not a file" had quoted it whole, password and all
    with pytest.raises(ConfigError, match="is not a file") as e:
        sources.load("litellm", "https:/user:SECRET@host/x")
    assert "SECRET" not in str(e.value)
