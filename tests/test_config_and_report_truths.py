"""What the user reads about money and models is true: DeepSeek's cache hits, a report with
no failures, refresh settings and aliases checked at load, a reload that keeps refreshed
prices, the models `registry check` counts. From an adversarial review: each test failed
before its fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from satisfice.errors import ConfigError
from satisfice.testing import LocalUpstream, RawUpstream, http_response

from .chat_support import move_alpha, registry, router

MSGS = [{"role": "user", "content": "hello there"}]


# -- server config ---------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", ["0.5", "1"])
def test_refresh_max_ratio_at_most_one_is_refused_naming_the_field(
    tmp_path: Path, ratio: str
) -> None:
    """[registry].refresh.max_ratio = 0.5 (or 1) passes ServerConfig.load, then the server
    prints "serving" and dies in its lifespan with a traceback of RegistryRefresher's
    "interval_s must be > 0 and max_ratio > 1" (no field named). It must be refused at load,
    naming [registry].refresh.max_ratio."""
    from satisfice.server.config import ServerConfig

    (tmp_path / "cat.json").write_text("{}")
    cfg = tmp_path / "s.toml"
    loc = (tmp_path / "cat.json").as_posix()
    cfg.write_text(
        f'[registry]\nrefresh = {{ source = "litellm", location = "{loc}", max_ratio = {ratio} }}\n'
    )
    with pytest.raises(ConfigError, match=r"refresh\.max_ratio"):
        ServerConfig.load(cfg)


# -- accounting --------------------------------------------------------------------------------


async def test_deepseek_cache_hits_are_billed_at_the_cached_rate(
    raw: RawUpstream, up: LocalUpstream
) -> None:
    """DeepSeek's own API reports prompt-cache hits as top-level `prompt_cache_hit_tokens` /
    `prompt_cache_miss_tokens` (prompt_tokens = hit + miss), not OpenAI's nested
    prompt_tokens_details.cached_tokens. satisfice reads only the nested field, so a call
    with 4,500 of 5,000 prompt tokens cached is billed at the full input rate (the bundled
    deepseek-v4-flash: $0.30/M against $0.006/M cached, 50x on the cached part)."""
    body = json.dumps({
        "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5_000, "completion_tokens": 10, "total_tokens": 5_010,
                  "prompt_cache_hit_tokens": 4_500, "prompt_cache_miss_tokens": 500},
    }).encode()  # fmt: skip
    raw.push(http_response(body))
    async with router(up.url) as r:
        r.update(move_alpha(registry(up.url), raw.url))
        res = await r.chat(MSGS, allow=["alpha"])
    assert res.model == "alpha"
    assert res.usage.prompt_tokens == 5_000
    assert res.usage.cached_tokens == 4_500
    price = r.registry["alpha"].price
    assert price is not None
    want = (500 * price.input + 4_500 * price.cached_input + 10 * price.output) / 1e6
    assert res.cost_usd == pytest.approx(want)


def test_an_empty_refresh_location_is_refused_or_read_as_the_default(tmp_path: Path) -> None:
    """`refresh = { source = "litellm", location = "" }` is accepted (the file check skips an
    empty string), and every refresh then fails in the log with 'litellm:  is not a file or
    an http(s) URL': the server runs on prices never refreshed. Either refuse it naming
    [registry].refresh.location, or read "" as the source's default location."""
    from satisfice.server.config import ServerConfig

    cfg = tmp_path / "s.toml"
    cfg.write_text('[registry]\nrefresh = { source = "litellm", location = "" }\n')
    try:
        loaded = ServerConfig.load(cfg)
    except ConfigError as e:
        assert "refresh.location" in str(e)
        return
    assert loaded.refresh is not None
    assert loaded.refresh.get("location") != "", "an empty location is kept, and never read"


def test_an_alias_that_allows_no_model_is_refused(tmp_path: Path) -> None:
    """`[aliases] x = { allow = [] }` (or allow and deny naming the same models) loads and
    the server starts; every request to the alias then fails with no route. check_aliases
    refuses unknown ids but not an alias that leaves no model at all."""
    from satisfice.registry import Registry
    from satisfice.server.config import ServerConfig, check_aliases

    reg = Registry.default()
    for text in ('[aliases]\nx = { allow = [] }\n',
                 '[aliases]\nx = { allow = ["gpt-5.4"], deny = ["gpt-5.4"] }\n'):  # fmt: skip
        cfg = tmp_path / "s.toml"
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=r"\[aliases\]\.x"):
            c = ServerConfig.load(cfg)
            check_aliases(c.aliases, reg)


# -- report -----------------------------------------------------------------------------------


def test_a_ledger_without_failures_says_nothing_was_billed_for_failures() -> None:
    """With no failed request, summarize() gives failed_cost_usd None (unknown) and the HTML
    page's card reads 'billed for failed requests: unpriced': a cost claimed unknown where
    there is nothing to bill. It is $0 (or the card is left out)."""
    from satisfice.report import render_html, summarize

    rows = [
        {"request_id": f"r{i}", "outcome": "ok", "model": "m", "task": "general",
         "cost_usd": 0.01, "reference_cost_usd": 0.02, "latency_s": 0.1, "overhead_s": 1e-4,
         "day": "2026-12-01"}
        for i in range(3)
    ]  # fmt: skip
    s = summarize(rows)
    assert s["requests"] == 3 and s["failure_rate"] == 0.0
    page = render_html(s)
    assert "billed for failed requests<b>unpriced" not in page


# -- /admin/reload ----------------------------------------------------------------------------


def _priced_and_repriced(tmp_path: Path) -> tuple[Any, Path]:
    """A one-model registry (input $1/M) and a LiteLLM catalogue that reprices it ($3/M)."""
    from satisfice import Registry

    reg = Registry.from_dict({"model": [{
        "id": "alpha", "provider": "openai", "context_window": 8000, "max_output": 1000,
        "price": {"input": 1.0, "output": 2.0},
        "deployments": [{"name": "openai", "api": "openai", "base_url": "http://127.0.0.1:9/v1",
                         "model": "alpha-wire"}],
    }]})  # fmt: skip
    cat = tmp_path / "cat.json"
    cat.write_text(json.dumps({"alpha-wire": {
        "mode": "chat", "litellm_provider": "openai",
        "input_cost_per_token": 3e-6, "output_cost_per_token": 6e-6,
    }}))  # fmt: skip
    return reg, cat


def test_admin_reload_keeps_the_prices_a_refresh_brought(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server with [registry].path and [registry].refresh: the refresh carries the
    catalogue's new price in; POST /admin/reload (to pick up an edit of the registry file)
    then swaps in the file's old prices, and every request is billed (ledger, budgets) at
    them until the next refresh, up to interval_s (an hour by default) later."""
    import time

    import httpx

    from satisfice.server import ServerConfig

    from .server_support import running

    master = "master-test-key-0123456789abcdef"
    monkeypatch.setenv("SATISFICE_MASTER_KEY", master)
    reg, cat = _priced_and_repriced(tmp_path)
    path = tmp_path / "r.toml"
    path.write_text(reg.to_toml())
    cfg = ServerConfig(registry_path=str(path),
                       refresh={"source": "litellm", "location": str(cat)})  # fmt: skip
    with running(cfg) as (url, app):
        router = app.state.service.router
        deadline = time.monotonic() + 10
        while router.registry["alpha"].price.input != 3.0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert router.registry["alpha"].price.input == 3.0  # the refresh brought it
        r = httpx.post(url + "/admin/reload", headers={"authorization": f"Bearer {master}"})
        assert r.status_code == 200, r.text
        assert router.registry["alpha"].price.input == 3.0, "reload reverted the price"


async def test_a_reload_does_not_date_an_old_refresh_as_checked_today(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`RegistryRefresher.onto` re-applies the last refreshed catalogue at /admin/reload,
    dated `date.today()` at the reload, not the day that catalogue was read: with the
    source failing since (every refresh after it failed), a reload five days later says
    the prices were checked today (`prices_as_of`, which `registry check`'s price age and
    the reload's own answer read), hiding five days of unchecked prices."""
    import datetime as dt

    from satisfice import Router
    from satisfice import refresh as refresh_mod
    from satisfice.refresh import RegistryRefresher

    reg, cat = _priced_and_repriced(tmp_path)
    router = Router(registry=reg)
    r = RegistryRefresher(router, "litellm", str(cat))
    await r.refresh()
    read_on = router.registry.meta.get("prices_as_of")
    assert str(read_on) == str(dt.date.today())

    later = dt.date.today() + dt.timedelta(days=5)

    class _Later(dt.date):
        @classmethod
        def today(cls) -> dt.date:  # type: ignore[override]
            return later

    monkeypatch.setattr(refresh_mod, "date", _Later)
    reloaded = r.onto(reg)  # the file read again, five days on; the source failing since
    assert reloaded["alpha"].price.input == 3.0
    got = reloaded.meta.get("prices_as_of")
    assert str(got) == str(read_on), (
        f"a catalogue read on {read_on} is dated {got} by a reload five days later"
    )


def test_registry_check_counts_models_not_routable_rows(capsys: pytest.CaptureFixture[str]) -> None:
    """`satisfice registry check` on the bundled registry prints '48 models: nothing needs
    attention'; the registry has 18 models (48 routable rows with their effort levels), as
    the README and `registry update` ('wrote ... (19 models, 49 routable rows)') say."""
    from unittest import mock

    from satisfice.cli import main
    from satisfice.registry import Registry

    reg = Registry.default()
    models = sum(1 for m in reg if m.base is None)
    with mock.patch.object(Registry, "attention", return_value=[]):
        assert main(["registry", "check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{models} models"), out
