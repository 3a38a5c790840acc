"""`satisfice serve`'s scheduled probes keep their schedule across a restart.

Defect: `[probe]` runs every `interval_s` (a day, say, within `budget_usd` a run), but the
first run came at every start: a replica restarted ten times a day (deploys, a crash loop)
paid ten runs. Expected: with a `[probe].health_file` the last run's time is kept beside
the latencies, and a start runs its first probes an interval after it."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from satisfice.server import ServerConfig
from satisfice.state import Health
from satisfice.testing import LocalUpstream

from .chat_support import registry
from .polling import until
from .server_support import running


def _config(upstream: LocalUpstream, tmp_path: Path, every: float) -> tuple[ServerConfig, Path]:
    reg = tmp_path / "r.toml"
    reg.write_text(registry(upstream.url).to_toml())
    health = tmp_path / "health.json"
    cfg = ServerConfig(registry_path=str(reg), probe_interval_s=every, probe_budget_usd=1.0,
                       health_file=str(health))  # fmt: skip
    return cfg, health


def test_a_restart_within_the_interval_does_not_probe_again(
    upstream: LocalUpstream, tmp_path: Path
) -> None:
    upstream.reset_script()  # (the module's upstream: no other test's requests)
    cfg, health = _config(upstream, tmp_path, 3600.0)
    ran_at = time.time() - 60
    health.write_text(json.dumps({"version": 1, "latency": {}, "probed_at": ran_at}))
    with running(cfg) as (_, app):
        svc = app.state.service
        time.sleep(1.0)  # a run at start would be under way by now (it takes ~0.1 s here)
        assert svc.probe_runs == 0 and not upstream.requests, upstream.requests[:3]
    # the stop keeps the last run's time with the latencies
    assert json.loads(health.read_text())["probed_at"] == ran_at


def test_a_restart_past_the_interval_probes_at_once_and_keeps_the_time(
    upstream: LocalUpstream, tmp_path: Path
) -> None:
    cfg, health = _config(upstream, tmp_path, 3600.0)
    health.write_text(json.dumps({"version": 1, "latency": {}, "probed_at": time.time() - 4000}))
    t0 = time.time()
    with running(cfg) as (_, app):
        svc = app.state.service
        assert until(lambda: svc.probe_runs >= 1, 30)
        assert until(lambda: json.loads(health.read_text()).get("probed_at", 0) >= t0, 5)
    assert svc.probe_runs == 1  # then not again within the hour


def test_a_first_start_probes_at_once(upstream: LocalUpstream, tmp_path: Path) -> None:
    cfg, health = _config(upstream, tmp_path, 3600.0)  # no health file yet
    with running(cfg) as (_, app):
        svc = app.state.service
        assert until(lambda: svc.probe_runs >= 1, 30)
    assert json.loads(health.read_text())["probed_at"] <= time.time()


def test_a_health_file_that_cannot_be_written_is_said_naming_the_setting(
    upstream: LocalUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run's save that failed had been said as the probe run failing (it had run, and
    been paid), the shutdown's dropped unsaid. Expected: each says which setting's file
    was not written and what is lost; the run is counted."""
    cfg, health = _config(upstream, tmp_path, 3600.0)

    def save(*_: object) -> None:
        raise PermissionError(13, "Permission denied", str(health))

    monkeypatch.setattr(Health, "save", save)
    with caplog.at_level(logging.WARNING, logger="satisfice.server"), running(cfg) as (_, app):
        svc = app.state.service
        assert until(lambda: svc.probe_runs >= 1, 30)
    said = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "health_not_kept"]
    assert len(said) == 2, caplog.text  # the run's, the shutdown's
    assert all("[probe].health_file" in m and "PermissionError" in m for m in said), said
    assert "probe run failed" not in caplog.text
