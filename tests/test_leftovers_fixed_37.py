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


def test_a_bug_under_count_tokens_is_an_error_in_anthropics_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import anthropic

    from satisfice import Router
    from satisfice.server import ServerConfig
    from satisfice.testing import LocalUpstream

    from .chat_support import registry
    from .server_support import running

    with LocalUpstream() as up, running(ServerConfig(), Router(registry(up.url))) as (url, app):

        async def broken(*a: object, **k: object) -> None:
            raise RuntimeError("a bug quoting sk-secret-material")

        monkeypatch.setattr(app.state.service.router, "decide", broken)
        c = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
        with pytest.raises(anthropic.InternalServerError) as e:
            c.messages.count_tokens(model="auto", messages=[{"role": "user", "content": "hi"}])
    # (Starlette's text/plain 500 had no error type for the SDK, and a traceback in the log)
    assert e.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "RuntimeError" in str(e.value) and "sk-secret" not in str(e.value)


def test_a_predictor_file_that_is_text_is_not_told_to_be_unpickled(tmp_path: object) -> None:
    from pathlib import Path

    from satisfice.errors import ConfigError
    from satisfice.predict import QualityModel

    p = Path(str(tmp_path)) / "pred.npz"
    p.write_text("not a predictor at all\n")
    with pytest.raises(ConfigError, match="not an .npz archive") as e:
        QualityModel.load(p)
    assert "allow_pickle" not in str(e.value)  # numpy's advice: load it unsafely


def test_a_policy_files_empty_predictor_is_no_predictor(tmp_path: object) -> None:
    from pathlib import Path

    from satisfice.policy import Policy

    p = Path(str(tmp_path)) / "policy.json"
    p.write_text('{"predictor": ""}')
    assert Policy.load(p).quality is None  # it had been the folder: "damaged (Is a directory)"


@pytest.mark.parametrize("value", ["1_0", "nan", "infinity", "0x10", "1e"])
def test_a_constraint_header_is_a_number_as_json_writes_one(value: str) -> None:
    # float() took `1_0` as 10: a cost cap meant as 1.0 let a request spend ten times
    with pytest.raises(InputError, match="x-satisfice-max-cost-usd"):
        wire.constraints_from({}, {"x-satisfice-max-cost-usd": value})
    assert wire.constraints_from({}, {"x-satisfice-max-cost-usd": " 1.5e-3 "}) == {
        "max_cost_usd": 0.0015
    }


def test_count_tokens_till_limit_takes_any_limit() -> None:
    from satisfice import count_tokens_till_limit

    assert count_tokens_till_limit("hello world", 2**70) == 2  # had been a raw OverflowError
    with pytest.raises(InputError, match="limit must be a whole number >= 0, got -1"):
        count_tokens_till_limit("hello world", -1)


def test_a_health_file_that_is_a_directory_is_said_so(tmp_path: object) -> None:
    from satisfice.errors import ConfigError
    from satisfice.state import Health

    with pytest.raises(ConfigError, match="cannot be read: Is a directory"):
        Health.load(str(tmp_path))  # had been a raw IsADirectoryError
    assert Health.probed_at(str(tmp_path)) is None


def test_count_tokens_till_limit_takes_a_numpy_integer_as_before() -> None:
    """Defect: the limit became a PyInt argument to tell 2**70 from -1, and refused what a
    usize argument had taken, any whole number (`__index__`): a numpy integer, a limit read
    from an array, was a TypeError."""
    import numpy as np

    from satisfice import count_tokens_till_limit

    assert count_tokens_till_limit("hello world", np.int64(5)) == 2
    assert count_tokens_till_limit("hello world", np.int64(1)) is None
    with pytest.raises(InputError, match="got -3"):
        count_tokens_till_limit("hello world", np.int64(-3))
    with pytest.raises(TypeError):  # a float is no limit, as before
        count_tokens_till_limit("hello world", 5.0)  # type: ignore[arg-type]


def test_demo_says_a_dearer_route_as_a_multiple(capsys: pytest.CaptureFixture[str]) -> None:
    from satisfice.cli import main

    assert main(["demo", "--quality-floor", "1"]) == 0
    out = capsys.readouterr().out
    assert "x its cost" in out and "-" not in out.rsplit("(", 1)[1].split(";")[0]  # had been -7377%
