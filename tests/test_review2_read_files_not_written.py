"""`ServerConfig._files_apart` (ff97094): two settings naming one file are refused.

Defect: the registry and the policy, both only read, naming one file were refused saying
"the server writes [registry].path there, over what [policy].path holds": the server writes
neither (what is wrong with such a file the loader that reads it says). Expected: only a
file the server writes is compared with the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from satisfice.errors import ConfigError
from satisfice.server import ServerConfig


def test_two_files_only_read_are_not_said_to_be_written(tmp_path: Path) -> None:
    same = str(tmp_path / "both.json")
    try:
        ServerConfig(registry_path=same, policy_path=same)
    except ConfigError as e:
        assert "writes" not in str(e), e
    with pytest.raises(ConfigError, match=r"\[probe\].health_file.*writes"):
        ServerConfig(registry_path=same, health_file=same)
