"""`ServerConfig._files_apart` (ff97094) runs in `__post_init__` on every path as given.

Defect: a `ServerConfig` built in code with a path holding a NUL character, or with a
`pathlib.Path` (which the ledger, the health file and the registry took, read through
`str()`/`open()`), raised a raw ValueError ("embedded null byte") or TypeError ("argument of
type 'PosixPath' is not iterable") where it was built. Expected: a ConfigError naming the
setting for a NUL; a Path taken, and compared, as its text."""

from __future__ import annotations

from pathlib import Path

import pytest

from satisfice.errors import ConfigError
from satisfice.server import ServerConfig


@pytest.mark.parametrize("field", ["ledger", "health_file", "registry_path", "policy_path"])
def test_a_nul_in_a_path_is_a_config_error(field: str) -> None:
    with pytest.raises(ConfigError, match="NUL"):
        ServerConfig(**{field: "state\x00.json"})


def test_a_path_object_is_taken_and_compared_as_its_text(tmp_path: Path) -> None:
    cfg = ServerConfig(ledger=tmp_path / "l.db", health_file=tmp_path / "h.json")  # type: ignore[arg-type]
    assert cfg.health_file == tmp_path / "h.json"
    with pytest.raises(ConfigError, match="name the same file"):
        ServerConfig(ledger=tmp_path / "x.json", health_file=str(tmp_path / "x.json"))  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["ledger", "health_file"])
def test_a_directory_given_in_code_is_a_config_error(tmp_path: Path, field: str) -> None:
    """Load's check (`_file`) had been skipped for a config made in code: the app's making
    raised a raw IsADirectoryError reading the health file."""
    with pytest.raises(ConfigError, match="is a directory; name a file in it"):
        ServerConfig(**{field: str(tmp_path)})
