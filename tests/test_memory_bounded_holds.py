"""What a long-running server keeps per value its callers choose stays under a cap: a new
key, session or budget a request must not add a series, an entry or a byte for good."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from satisfice import Policy, Router
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream

from .chat_support import registry
from .server_support import ADMIN, running


def _series(exposition: str, family: str) -> list[str]:
    return [x for x in exposition.splitlines() if x.startswith(family + "{")]


def test_refusals_by_key_keep_the_label_cap(
    up: LocalUpstream, tmp_path: Path, master: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Budget and rate-limit refusals were counted under the key's own name and its
    budget's scope ("key:<id>"), past the cap every other series keeps (the first MAX_KEYS
    keys, later ones "other"): keys made and revoked, each refused once, had added a series
    each for good (1,500 keys: 3,037 series to 11,645, 0.4 to 1.6 MB a scrape)."""
    from satisfice import metrics

    monkeypatch.setattr(metrics, "MAX_KEYS", 3)
    reg = tmp_path / "r.toml"
    reg.write_text(registry(up.url).to_toml())
    cfg = ServerConfig(registry_path=str(reg), ledger=str(tmp_path / "l.db"))
    router = Router(registry(up.url), Policy(quality_floor=0.5))
    ask: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    with running(cfg, router) as (url, _app), httpx.Client(base_url=url, timeout=30) as c:
        for i in range(12):  # half refused by their rpm, half by their budget
            limit = {"rpm": 1} if i % 2 else {"budget_usd": 1e-9}
            k = c.post("/admin/keys", headers=ADMIN, json={"name": f"k{i}", **limit}).json()
            auth = {"authorization": f"Bearer {k['key']}"}
            if i % 2:
                assert c.post("/v1/chat/completions", headers=auth, json=ask).status_code == 200
            assert c.post("/v1/chat/completions", headers=auth, json=ask).status_code == 429
            c.delete(f"/admin/keys/{k['id']}", headers=ADMIN)
        text = c.get("/metrics", headers=ADMIN).text
    refusals = _series(text, "satisfice_budget_refusals_total")
    assert sum(float(x.rsplit(" ", 1)[1]) for x in refusals) == 12  # every refusal counted
    keys = {x.split('key="', 1)[1].split('"', 1)[0] for x in refusals}
    assert len(keys) <= 3 + 1, keys  # the first 3 keys and "other"
    assert len(refusals) <= 2 * (3 + 1), refusals


async def test_a_replica_forgets_the_keys_and_teams_it_read_long_ago(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On Redis, a replica keeps each key it read (and each team's budget) for 30 s, to
    serve it without a round trip and through an outage; an entry was only ever replaced,
    never dropped, so every key ever used (keys made and revoked, a new one per caller)
    stayed in each replica's memory for good: 3,000 keys read a second apart, 3,000
    entries of each, where 30 s of them are live."""
    import time

    import satisfice.server.state as st
    from satisfice.server.state import RedisState, VirtualKey

    from .servers import redis

    now = {"t": time.time()}

    class Clock:  # the state module's time, whose clock the test moves
        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        def time(self) -> float:
            return now["t"]

    monkeypatch.setattr(st, "time", Clock())
    with redis() as server:
        s = RedisState(server.url)
        try:
            for i in range(3000):
                k, secret = VirtualKey.new(f"k{i}", team=f"t{i}")
                await s.put_key(k)
                assert await s.key_by_secret(secret) == k
                assert await s.team(f"t{i}") is None
                now["t"] += 1.0
            cached = len(s._key_cache), len(s._team_cache)
            assert max(cached) <= 1100, cached
            assert await s.key_by_secret(secret) == k  # the live ones still served
        finally:
            await s.close()


def test_rate_limit_refusals_keep_their_label_past_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refusal's `budget` label is capped as keys are (the first MAX_KEYS values, later
    ones "other"), but "rate_limit" is one fixed value, not a caller's: once MAX_KEYS keys'
    own budgets had refused a request each, every later rate-limit refusal was counted as
    budget="other", among the budget refusals, and a rate-limit alert saw none."""
    from satisfice import metrics

    monkeypatch.setattr(metrics, "MAX_KEYS", 3)
    m = metrics.Metrics()
    for i in range(5):
        m.refused(f"k{i}", f"key:{i}")
    m.refused("k9", "rate_limit")
    text = m.exposition().decode()
    budgets = {x.split('budget="', 1)[1].split('"', 1)[0]
               for x in _series(text, "satisfice_budget_refusals_total")}  # fmt: skip
    assert "rate_limit" in budgets, budgets
    assert len(budgets) <= 3 + 2, budgets  # the first 3, "other" and "rate_limit"
