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


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        # a health file over a SQLite ledger's write-ahead log: the records in it replaced
        ({"ledger": "l.db", "health_file": "l.db-wal"}, "[ledger].target's -wal file"),
        ({"ledger": "l.db", "unsettled_file": "l.db-shm"}, "[ledger].target's -shm file"),
        # the unsettled queue's lock file, taken for the ledger's database
        ({"unsettled_file": "u.json", "ledger": "u.json.lock"}, "[state].unsettled_file's"),
        ({"ledger": "l.db", "registry_path": "l.db-journal"}, "[ledger].target's -journal"),
    ],
)
def test_a_file_the_server_writes_beside_another_is_no_setting_s_file(
    tmp_path: Path, settings: dict[str, str], named: str
) -> None:
    given: dict[str, str] = {k: str(tmp_path / v) for k, v in settings.items()}
    if "unsettled_file" in given:  # (kept for a Redis state alone)
        given |= {"state_backend": "redis", "redis_url": "redis://127.0.0.1:6379/0"}
    with pytest.raises(ConfigError, match="name the same file") as e:
        ServerConfig(**given)  # type: ignore[arg-type]
    assert named in str(e.value)


def test_a_jsonl_ledger_writes_no_file_beside_it(tmp_path: Path) -> None:
    ServerConfig(ledger=str(tmp_path / "l.jsonl"), health_file=str(tmp_path / "l.jsonl-wal"))
