"""Where the shared outcome data is, if it is here at all: tests that read it skip, saying
why, on a machine without it (a fresh clone with no ../shared beside it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_dir = os.environ.get("SATISFICE_DATA_DIR")
DATA: Path | None = Path(_dir) if _dir and Path(_dir).is_dir() else None

needs_data = pytest.mark.skipif(
    DATA is None,
    reason=f"the outcome data is not here (SATISFICE_DATA_DIR={_dir!r}); point the variable "
    "at ../shared/data to run the tests on real outcomes",
)
