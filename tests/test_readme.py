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
        if "127.0.0.1:4000" in code:  # a client of `satisfice serve`: run one for it
            _against_a_server(code, scope)
            continue
        exec(compile(code, "README.md", "exec"), scope)


def _against_a_server(code: str, scope: dict[str, object]) -> None:
    from satisfice import Registry
    from satisfice.server import ServerConfig
    from satisfice.testing import LocalUpstream

    from .server_support import running

    with LocalUpstream() as up:
        reg = Path("r.toml")
        reg.write_text(up.patch(Registry.default()).to_toml())
        with running(ServerConfig(registry_path=str(reg))) as (url, _):
            exec(compile(code.replace("http://127.0.0.1:4000", url), "README.md", "exec"), scope)
