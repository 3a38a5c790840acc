"""satisfice as a user gets it, the built wheel in a new virtualenv, as a review found it.
Every test here failed on the code it was written against: with the wheel installed alone
(no `[postgres]` extra), `satisfice report`, `train --from-ledger` and `calibrate
--from-ledger` on a postgresql:// ledger ended in a raw `ModuleNotFoundError: No module named
'psycopg'` traceback, where attaching such a ledger said what to install; `satisfice
--version` was an error that a command is required."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from satisfice.cli import main

DSN = "postgresql://reader@127.0.0.1:9/ledger"  # never reached: psycopg is missing first


@pytest.mark.parametrize(
    "args",
    [
        ["report", DSN],
        ["train", "--from-ledger", DSN, "--save-predictor", "{tmp}/p.npz"],
        ["calibrate", "--from-ledger", DSN, "--target", "cost:0.001", "--policy", "{tmp}/p.json"],
    ],
    ids=["report", "train", "calibrate"],
)
def test_a_postgresql_ledger_read_without_psycopg_says_what_to_install(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as in a venv without the extra
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err
    assert f"satisfice {args[0]}: error: a PostgreSQL ledger needs psycopg 3" in err
    assert "pip install 'satisfice[postgres]'" in err


def test_version_says_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`satisfice --version`, a new user's first command, had exited 2 saying "the following
    arguments are required: command"."""
    import satisfice

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"satisfice {satisfice.__version__}"
