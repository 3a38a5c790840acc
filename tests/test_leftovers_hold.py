"""Defects the twenty-ninth session's reviews reported and left unfixed, fixed in the
thirtieth. Every test here failed on the code it was written against (02924a2)."""

from __future__ import annotations

import pytest

from satisfice.errors import ConfigError
from satisfice.server import ServerConfig

# the shape of a pasted project key: letters and digits, no space
KEY = "sk-proj-" + "Ab3xQ9" * 8


@pytest.mark.parametrize(
    "config",
    [
        {"state": {"backend": KEY}},
        {"server": {"port": KEY}},
        {"server": {"shutdown_grace_s": KEY}},
        {"server": {"host": KEY}},
        {"registry": {"refresh": {"source": KEY}}},
    ],
    ids=["backend", "port", "grace", "host", "refresh-source"],
)
def test_a_key_pasted_into_the_wrong_field_is_not_quoted(config: dict) -> None:
    """A config error named the field and quoted its value, up to 40 characters or whole: a
    key pasted into `[state].backend` went to the log of the failed start."""
    with pytest.raises(ConfigError) as e:
        ServerConfig.from_dict(config)
    said = str(e.value)
    assert KEY[:12] not in said, said
    assert "not shown" in said, said


def test_an_ordinary_wrong_value_is_still_quoted() -> None:
    """What is plainly no key stays in the message: the user sees what they wrote."""
    with pytest.raises(ConfigError, match="'mem'"):
        ServerConfig.from_dict({"state": {"backend": "mem"}})
    with pytest.raises(ConfigError, match="'8080x'"):
        ServerConfig.from_dict({"server": {"port": "8080x"}})


def test_keys_past_the_label_cap_do_not_merge_with_a_key_named_other() -> None:
    """Keys past MAX_KEYS were counted under the label "other": a real key named "other"
    among the first ones then carried every later key's requests and spend."""
    from satisfice import metrics
    from satisfice.metrics import Metrics

    m = Metrics()
    names = ["other"] + [f"k{i}" for i in range(metrics.MAX_KEYS - 1)] + ["late1", "late2"]
    for name in names:
        m.observe({"metadata": {"key": name}, "model": "a", "deployment": "d", "outcome": "ok"})
    by_key: dict[str, float] = {}
    for family in m.registry.collect():
        if family.name == "satisfice_requests":
            for s in family.samples:
                if s.name == "satisfice_requests_total":
                    by_key[s.labels["key"]] = by_key.get(s.labels["key"], 0) + s.value
    assert by_key["other"] == 1, by_key  # the real key's own request alone
    overflow = [k for k in by_key if k.strip() == "other" and k != "other"]
    assert len(overflow) == 1 and by_key[overflow[0]] == 2, by_key


def test_serve_limits_malloc_arenas_unless_told(tmp_path) -> None:
    """`satisfice serve` limits glibc's malloc arenas before its threads start: with one per
    thread its RSS grew by 16-23 MiB a 100,000 requests (benches/bench_server.py's memory
    phase), where issue 13 asks for flat. A MALLOC_ARENA_MAX the user set is left alone."""
    import os
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's arenas: Linux only")
    code = (
        "from unittest import mock\n"
        "import satisfice.cli as cli, satisfice.server as s\n"
        "calls, real = [], s.limit_malloc_arenas\n"
        "def limit(n=2):\n"
        "    calls.append(real(n)); raise SystemExit(0)\n"
        "with mock.patch.object(s, 'limit_malloc_arenas', limit):\n"
        "    try:\n"
        "        cli.main(['serve', '--port', '0'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(calls)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert out.stdout.strip() == "[True]", out.stdout + out.stderr
    told = subprocess.run([sys.executable, "-c", code], env={**env, "MALLOC_ARENA_MAX": "4"},
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert told.stdout.strip() == "[False]", told.stdout + told.stderr
