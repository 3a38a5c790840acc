"""The README's code runs as pasted (the TOML example is written where the snippet reads it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_readme_snippets_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (toml,) = re.findall(r"```toml\n(.*?)```", README, re.S)
    (tmp_path / "models.toml").write_text(toml)
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 3
    scope: dict[str, object] = {"__name__": "__main__"}
    for code in blocks:  # later snippets use names the earlier ones made, as a reader would
        exec(compile(code, "README.md", "exec"), scope)
