"""Registry importers, diffs, the `registry` command, deprecation warnings and live refresh."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from satisfice import Policy, Registry, Router, sources
from satisfice.cli import main
from satisfice.errors import ConfigError, RegistryWarning
from satisfice.executor import ExecutionConfig
from satisfice.refresh import RefreshRefused, RegistryRefresher
from satisfice.registry import Price
from satisfice.testing import LocalUpstream

FIX = Path(__file__).parent / "fixtures" / "sources"


class JSONHandler(BaseHTTPRequestHandler):
    """A handler that answers JSON (`send_json`) and logs nothing."""

    def send_json(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: Any) -> None:
        pass


class _Catalogue:
    """A catalogue served over HTTP on 127.0.0.1 whose body a test replaces at will."""

    def __init__(self, body: Any) -> None:
        self.body = json.dumps(body).encode()
        self.hits = 0
        outer = self

        class H(JSONHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                self.send_json(outer.body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/map.json"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served() -> Iterator[_Catalogue]:
    c = _Catalogue({})
    yield c
    c.close()


# -- importers --------------------------------------------------------------------------------


def test_litellm_every_billed_dimension_in_usd_per_million() -> None:
    cat = sources.load("litellm", str(FIX / "litellm_prices.json"))
    sonnet = cat.listings[("anthropic", "claude-sonnet-4-7")]
    assert sonnet.price is not None
    assert (sonnet.price.input, sonnet.price.output) == (3.0, 15.0)
    assert (sonnet.price.cached_input, sonnet.price.cache_write) == (0.3, 3.75)
    assert sonnet.price.cache_write_1h == 6.0 and sonnet.price.batch_input == 1.5
    gpt = cat.listings[("openai", "gpt-5.3")].price
    assert gpt is not None and (gpt.priority_input, gpt.flex_output) == (3.0, 6.0)
    gem = cat.listings[("google", "gemini-3.2-pro-preview")]
    assert gem.price is not None and gem.price.long_context[0].above == 200_000
    assert gem.deprecation_date == date(2026, 12, 20)
    # no output price: unpriced, never $0; embeddings and the schema sample are skipped
    assert cat.listings[("groq", "moonshotai/kimi-k2-instruct-0905")].price is None
    assert not any("embedding" in m for _, m in cat.listings)
    assert not any(m == "sample_spec" for _, m in cat.listings)


def test_openrouter_strings_overrides_and_sentinels() -> None:
    cat = sources.load("openrouter", str(FIX / "openrouter_models.json"))
    gem = cat.listings[("openrouter", "google/gemini-3.2-pro-preview")].price
    assert gem is not None and gem.input == 2.0 and gem.reasoning == 12.0
    assert gem.long_context[0].above == 200_000 and gem.long_context[0].input == 4.0
    assert cat.listings[("openrouter", "openrouter/auto")].price is None  # "-1": varies
    assert cat.listings[("openrouter", "deepseek/deepseek-r2:free")].price is None
    assert cat.listings[("openrouter", "mistralai/mistral-large-2411")].deprecation_date == date(
        2026, 3, 1
    )
    assert ("openrouter", "openai/text-embedding-3-small") not in cat.listings


def test_models_dev_tiers_status_and_missing_cost() -> None:
    cat = sources.load("models.dev", str(FIX / "models_dev_api.json"))
    gem = cat.listings[("google", "gemini-3.2-pro-preview")].price
    assert gem is not None and gem.long_context[0].output == 18.0
    assert cat.listings[("groq", "groq/compound")].price is None  # no cost block
    haiku = cat.listings[("anthropic", "claude-3-5-haiku-20241022")]
    assert haiku.deprecation_date is not None  # status "deprecated": retired as seen
    assert ("google", "gemini-embedding-001") not in cat.listings


def test_bad_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown source"):
        sources.load("nope", "x")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        sources.load("litellm", str(tmp_path / "x.json"))
    with pytest.raises(ConfigError, match="'data' array"):
        sources.parse("openrouter", {"models": []})
    with pytest.raises(ConfigError, match="not a file"):
        sources.load("litellm", str(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    "url",
    ["https://999.1.1.1/x?token=SECRETTOKEN123", "https://bad..host/x?token=SECRETTOKEN123"],
    ids=["ipv4", "idna"],
)
def test_a_url_httpx_cannot_read_is_a_config_error_without_its_secrets(url: str) -> None:
    """Defect: a catalogue URL with an IPv4 address out of range or an empty host label
    raised a raw httpx.InvalidURL or UnicodeError from `_fetch`, out of a refresh
    documented to raise RefreshRefused or ConfigError. Expected: a ConfigError naming the
    URL without its query."""
    with pytest.raises(ConfigError, match=r"GET https://.*/x\?\.\.\. failed") as e:
        sources.load("litellm", url)
    assert "SECRETTOKEN123" not in str(e.value)


def test_load_over_http(served: _Catalogue) -> None:
    served.body = (FIX / "openrouter_models.json").read_bytes()
    cat = sources.load("openrouter", served.url)
    assert ("openrouter", "anthropic/claude-sonnet-4.7") in cat.listings and served.hits == 1


# -- applying and diffing ---------------------------------------------------------------------


def _reg(**price: float) -> Registry:
    return Registry.from_dict({"model": [{
        "id": "sonnet", "provider": "anthropic", "tokenizer": "claude", "context_window": 100_000,
        "max_output": 8_000, "quality": {"general": 0.9},
        "price": price or {"input": 1, "output": 2},
        "deployments": [
            {"name": "anthropic", "api": "anthropic", "base_url": "https://api.anthropic.com",
             "model": "claude-sonnet-4-7"},
            {"name": "other", "api": "openai", "base_url": "https://example.invalid/v1",
             "model": "sonnet"},
        ]}]})  # fmt: skip


def test_apply_carries_facts_and_keeps_what_the_user_set() -> None:
    cat = sources.load("litellm", str(FIX / "litellm_prices.json"))
    new, diff = sources.apply(_reg(), cat, ["gpt-5.3"])
    s = new["sonnet"]
    assert s.price is not None and s.price.input == 3.0 and s.context_window == 200_000
    assert s.quality == {"general": 0.9}  # the user's prior stays
    # the unlisted deployment keeps the price it had, pinned (not the new model price)
    other = s.deployments[1].price
    assert other is not None and (other.input, other.output) == (1.0, 2.0)
    assert "gpt-5.3" in new and new["gpt-5.3"].deployments[0].name == "openai"
    assert new.meta["source"] == "litellm"
    text = diff.render()
    assert "sonnet: price.input 1.0 -> 3.0" in text and "+ gpt-5.3" in text
    with pytest.raises(ConfigError, match="lists no chat model 'nope'"):
        sources.apply(_reg(), cat, ["nope"])


def test_a_model_to_add_whose_id_is_taken_is_refused_not_skipped(tmp_path: Path) -> None:
    # two hosts serving "gpt-5.3" reduce to the one id: the second had been dropped
    # without a word ("0 change(s)", exit 0)
    body = json.loads((FIX / "litellm_prices.json").read_text())
    body["groq/gpt-5.3"] = dict(body["gpt-5.3"], litellm_provider="groq")
    f = tmp_path / "p.json"
    f.write_text(json.dumps(body))
    cat = sources.load("litellm", str(f))
    new, _ = sources.apply(_reg(), cat, ["gpt-5.3", "gpt-5.3"])  # the same listing twice
    assert [d.name for d in new["gpt-5.3"].deployments] == ["openai"]
    with pytest.raises(ConfigError, match="'groq:gpt-5.3' would be added as model 'gpt-5.3'"):
        sources.apply(_reg(), cat, ["gpt-5.3", "groq:gpt-5.3"])


def test_a_model_listed_twice_differently_is_neither_priced_nor_added(tmp_path: Path) -> None:
    # the last of two entries had won, so the source's key order priced the model
    body = json.loads((FIX / "litellm_prices.json").read_text())
    body["anthropic/claude-sonnet-4-7"] = dict(body["claude-sonnet-4-7"],
                                               input_cost_per_token=9e-6)  # fmt: skip
    body["openai/gpt-5.3"] = dict(body["gpt-5.3"])  # the same facts twice: harmless
    f = tmp_path / "p.json"
    f.write_text(json.dumps(body))
    cat = sources.load("litellm", str(f))
    assert cat.conflicts == {("anthropic", "claude-sonnet-4-7")}
    new, diff = sources.apply(_reg(), cat, ["gpt-5.3"])
    s = new["sonnet"]
    assert s.price is not None and s.price.input == 1.0  # kept as it was, not 3 or 9
    assert "sonnet: the source lists anthropic:claude-sonnet-4-7 twice" in diff.render()
    with pytest.raises(ConfigError, match="lists anthropic:claude-sonnet-4-7 twice"):
        sources.apply(_reg(), cat, ["claude-sonnet-4-7"])
    # every parser collects the same way
    twice = {"data": [{"id": "acme/x", "pricing": {"prompt": p, "completion": p}}
                      for p in ("0.000001", "0.000002")]}  # fmt: skip
    assert sources.parse("openrouter", twice).conflicts == {("openrouter", "acme/x")}


def test_a_window_the_source_does_not_list_is_said_to_be_assumed(tmp_path: Path) -> None:
    # the new model got a context window of 8192 without a word: "+ x: added (openrouter)"
    f = tmp_path / "or.json"
    f.write_text(json.dumps({"data": [{"id": "acme/newmodel-x",
                 "pricing": {"prompt": "0.0000001", "completion": "0.0000002"}}]}))  # fmt: skip
    new, diff = sources.apply(_reg(), sources.load("openrouter", str(f)), ["acme/newmodel-x"])
    text = diff.render()
    assert "newmodel-x: the source lists no context window; 8192 tokens assumed" in text
    assert "1 change(s)" in text  # the note is not a change
    assert new["newmodel-x"].context_window == 8192


def test_absurd_changes_are_flagged() -> None:
    cat = sources.load("litellm", str(FIX / "litellm_prices.json"))
    _, ok = sources.apply(_reg(input=2.0, output=10.0), cat)
    assert ok.absurd() == []  # 2 -> 3 and 10 -> 15 are ordinary moves
    _, big = sources.apply(_reg(input=0.01, output=15.0), cat)
    flagged = {c.what for c in big.absurd()}
    assert "price.input" in flagged  # 0.01 -> 3.0 is 300x
    assert "price.output" not in flagged  # 15 -> 15


def test_a_per_request_fee_is_weighed_against_a_calls_cost_not_the_input_rate() -> None:
    """A $1 fee added to every call of a $0.20/$1.25-per-1M model (a catalogue's error, 6,898x
    a 100-token call) was set against the input rate (5x) and written without --yes."""

    reg = _reg(input=0.20, output=1.25)
    mid = next(iter(reg)).id

    def with_fee(fee: float) -> Registry:
        m = reg[mid]
        assert m.price is not None
        return reg.replace(m.replace(price=m.price.replace(per_request=fee)))

    assert {c.what for c in sources.diff(reg, with_fee(1.0)).absurd()} == {"price.per_request"}
    assert sources.diff(reg, with_fee(1)).absurd(), "an int fee is a fee too"
    assert sources.diff(reg, with_fee(0.0001)).absurd() == []  # a call's cost, 1.07x
    assert sources.diff(with_fee(0.0001), with_fee(0.0002)).absurd() == []


def test_registry_round_trips_through_toml(tmp_path: Path) -> None:
    cat = sources.load("litellm", str(FIX / "litellm_prices.json"))
    new, _ = sources.apply(_reg(), cat, ["gpt-5.3", "gemini-3.2-pro-preview"])
    p = tmp_path / "r.toml"
    p.write_text(new.to_toml())
    back = Registry.from_toml(p)
    assert [m.to_dict() for m in back] == [m.to_dict() for m in new]


# -- prices in every dimension ----------------------------------------------------------------


def test_price_tiers_fees_cache_lifetimes_and_reasoning() -> None:
    p = Price.from_dict({
        "input": 1.0, "output": 4.0, "cache_write": 1.25, "cache_write_1h": 2.0,
        "reasoning": 8.0, "per_request": 0.01,
        "long_context": [{"above": 272_000, "input": 4, "output": 9},
                         {"above": 128_000, "input": 2, "output": 6}],
    }, "p")  # fmt: skip
    assert [t.above for t in p.long_context] == [128_000, 272_000]
    assert p.cost(1e6, 0) == pytest.approx(4.0 + 0.01)  # highest tier passed: 4/M
    assert p.cost(200_000, 0) == pytest.approx(0.4 + 0.01)  # the 128k tier
    assert p.cost(1000, 1000, reasoning_tokens=400) == pytest.approx(
        (1000 * 1 + 600 * 4 + 400 * 8) / 1e6 + 0.01
    )
    assert p.cost(1000, 0, cache_write=500, cache_write_1h=500) == pytest.approx(
        (500 * 1.25 + 500 * 2.0) / 1e6 + 0.01
    )
    with pytest.raises(ConfigError, match="same prompt length"):
        Price.from_dict(
            {
                "input": 1,
                "output": 1,
                "long_context": [
                    {"above": 5, "input": 1, "output": 1},
                    {"above": 5, "input": 2, "output": 2},
                ],
            },
            "x",
        )


def test_a_per_request_fee_counts_against_max_cost() -> None:
    reg = Registry.from_dict({"model": [
        {"id": "fee", "provider": "x", "context_window": 8000, "max_output": 100,
         "price": {"input": 0.01, "output": 0.01, "per_request": 0.05}, "quality": {"general": 0.9},
         "deployments": [{"name": "x", "base_url": "https://example.invalid/v1"}]},
        {"id": "dear", "provider": "x", "context_window": 8000, "max_output": 100,
         "price": {"input": 10, "output": 10}, "quality": {"general": 0.8},
         "deployments": [{"name": "x", "base_url": "https://example.invalid/v1"}]},
    ]})  # fmt: skip
    r = Router(reg, Policy(quality_floor=0.5))
    d = r.route("hi", max_cost_usd=0.02, max_output_tokens=50)
    assert d.model == "dear"  # the 5-cent fee puts "fee" over the cap
    assert r.route("hi", max_output_tokens=50).est_cost_usd is not None


# -- deprecation and staleness ----------------------------------------------------------------


def test_attention_names_retired_retiring_and_stale() -> None:
    today = date(2026, 12, 1)
    reg = Registry.from_dict({"meta": {"prices_as_of": "2026-06-01"}, "model": [
        {"id": "old", "provider": "x", "context_window": 10, "max_output": 5,
         "deprecation_date": "2026-11-01", "successor": "new"},
        {"id": "soon", "provider": "x", "context_window": 10, "max_output": 5,
         "deprecation_date": date(2026, 12, 20)},
        {"id": "fine", "provider": "x", "context_window": 10, "max_output": 5,
         "deprecation_date": "2028-01-01"},
    ]})  # fmt: skip
    notes = reg.attention(today)
    assert len(notes) == 3
    assert "'old' was retired on 2026-11-01" in notes[0] and "'new'" in notes[0]
    assert "'soon' is retired on 2026-12-20 (in 19 days)" in notes[1]
    assert "183 days ago" in notes[2]
    assert reg.attention(today, max_price_age_days=365)[2:] == []
    with pytest.warns(RegistryWarning, match="'old' was retired"):
        Router(reg)
    with pytest.raises(ConfigError, match="must be a date"):
        Registry.from_dict({"model": [{"id": "x", "provider": "x", "context_window": 10,
                                       "max_output": 5, "deprecation_date": "soon"}]})  # fmt: skip


def test_the_bundled_registry_is_current() -> None:
    reg = Registry.default()
    as_of = date.fromisoformat(str(reg.meta["prices_as_of"]))
    for m in reg:  # nothing retired on the day it was generated
        assert m.deprecation_date is None or m.deprecation_date > as_of, m.id
        assert m.price is not None, m.id
    assert reg.reference.id == reg.meta["reference_model"]


# -- the command ------------------------------------------------------------------------------


def test_registry_command_diff_update_and_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "base.toml"
    base.write_text(_reg(input=0.01, output=15.0).to_toml())
    fix = str(FIX / "litellm_prices.json")
    assert main(["registry", "diff", fix, "--from", "litellm", "--registry", str(base)]) == 0
    assert "sonnet: price.input 0.01 -> 3.0" in capsys.readouterr().out
    # the README's order, the file after the options (Python 3.11's argparse refused it)
    assert main(["registry", "diff", "--from", "litellm", fix, "--registry", str(base)]) == 0
    assert "sonnet: price.input 0.01 -> 3.0" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["registry", "diff", "--from", "litellm", fix, "extra", "--registry", str(base)])
    out = tmp_path / "new.toml"
    args = ["registry", "update", fix, "--from", "litellm", "--registry", str(base),
            "--out", str(out), "--models", "gpt-5.3"]  # fmt: skip
    assert main(args) == 2 and not out.exists()  # 300x: refused
    assert "--yes" in capsys.readouterr().err
    assert main([*args, "--yes"]) == 0
    reg = Registry.from_toml(out)
    assert reg["sonnet"].price is not None and reg["sonnet"].price.input == 3.0
    assert "gpt-5.3" in reg
    assert main(["registry", "check", "--registry", str(out)]) == 0


def test_registry_update_reads_and_writes_json_by_its_name(tmp_path: Path) -> None:
    """A JSON registry (the bundled one's format) had been read as TOML and refused."""
    base = tmp_path / "base.json"
    base.write_text(_reg(input=0.01, output=15.0).to_json())
    out = tmp_path / "new.json"
    args = ["registry", "update", str(FIX / "litellm_prices.json"), "--from", "litellm",
            "--registry", str(base), "--out", str(out), "--yes"]  # fmt: skip
    assert main(args) == 0
    assert json.loads(out.read_text())["model"]
    reg = Registry.load(out)
    assert reg["sonnet"].price is not None and reg["sonnet"].price.input == 3.0


def test_a_catalogue_listing_none_of_the_models_checks_no_price(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty catalogue marked a two-year-old registry's prices as checked today (its
    staleness warning gone), said "no changes", and rewrote the user's file."""
    old = tmp_path / "old.toml"
    text = (
        '# my registry\n[meta]\nprices_as_of = 2025-01-01\n[[model]]\nid = "a"\n'
        "context_window = 100000\nmax_output = 4000\nprice = {input = 1.0, output = 2.0}\n"
    )
    old.write_text(text)
    (tmp_path / "cat.json").write_text("{}")
    cat = sources.load("litellm", str(tmp_path / "cat.json"))
    new, diff = sources.apply(Registry.from_toml(old), cat)
    assert str(new.meta["prices_as_of"]) == "2025-01-01" and not diff
    assert "a: not in the source (no deployment)" in diff.render()
    args = ["registry", "update", str(tmp_path / "cat.json"), "--from", "litellm"]
    assert main([*args, "--registry", str(old)]) == 0
    assert "left as it was" in capsys.readouterr().out and old.read_text() == text
    assert main(["registry", "check", "--registry", str(old)]) == 1  # still stale


# -- live refresh -----------------------------------------------------------------------------


def _litellm_map(price_in: float) -> dict[str, Any]:
    return {
        f"{m}-wire": {"litellm_provider": "openai", "mode": "chat", "max_input_tokens": 100_000,
                      "max_output_tokens": 4000, "input_cost_per_token": price_in * k / 1e6,
                      "output_cost_per_token": 4 * price_in * k / 1e6}
        for k, m in ((1, "alpha"), (2, "beta"))
    }  # fmt: skip


def _upstream_registry(url: str) -> Registry:
    return Registry.from_dict({"model": [
        {"id": m, "provider": "openai", "context_window": 100_000, "max_output": 4000,
         "price": {"input": 1.0 * k, "output": 4.0 * k}, "quality": {"general": 0.9},
         "p95_latency_ms": 100,
         "deployments": [{"name": "openai", "base_url": url + "/v1", "model": f"{m}-wire"}]}
        for k, m in ((1, "alpha"), (2, "beta"))
    ]})  # fmt: skip


async def test_refresh_swaps_prices_under_load_without_failing_a_request(
    served: _Catalogue,
) -> None:
    with LocalUpstream() as up:
        router = Router(_upstream_registry(up.url), Policy(quality_floor=0.5)).configure(
            execution=ExecutionConfig(read_timeout_s=5.0)
        )
        before = router.route("hello", max_output_tokens=100).est_cost_usd
        seen: list[float] = []
        refresher = RegistryRefresher(router, "litellm", served.url, interval_s=0.01)

        async def traffic() -> None:
            for _ in range(60):
                res = await router.chat("hello", max_tokens=100)
                assert res.text and res.cost_usd is not None
                seen.append(res.cost_usd)

        async def refreshes() -> None:
            for step in (1.5, 2.0, 2.5, 3.0):  # each move under the 10x guard
                served.body = json.dumps(_litellm_map(step)).encode()
                await refresher.refresh()
                await asyncio.sleep(0.01)

        await asyncio.gather(traffic(), traffic(), refreshes())
        after = router.route("hello", max_output_tokens=100).est_cost_usd
        assert before is not None and after == pytest.approx(before * 3.0)
        assert refresher.refreshes == 4 and len(seen) == 120
        assert router.registry["alpha"].price == Price(3.0, 12.0)
        assert router.registry.meta["prices_as_of"] == date.today()

        # a price x100 is refused and the old registry stays; confirm=True applies it
        served.body = json.dumps(_litellm_map(300.0)).encode()
        with pytest.raises(RefreshRefused, match="price.input 3.0 -> 300.0"):
            await refresher.refresh()
        assert router.registry["alpha"].price == Price(3.0, 12.0)
        await RegistryRefresher(router, "litellm", served.url, confirm=True).refresh()
        assert router.registry["alpha"].price == Price(300.0, 1200.0)
        await router.aclose()


async def test_the_refresh_loop_survives_a_broken_source(served: _Catalogue) -> None:
    router = Router(_upstream_registry("http://127.0.0.1:9"), Policy(quality_floor=0.5))
    served.body = b"{broken"
    r = RegistryRefresher(router, "litellm", served.url, interval_s=0.01)
    r.start()
    for _ in range(200):
        await asyncio.sleep(0.01)
        if r.failures >= 2:
            break
    await r.stop()
    assert r.failures >= 2 and router.registry["alpha"].price == Price(1.0, 4.0)


def test_tier_cuts_and_new_rates_far_below_their_default_are_refused() -> None:
    old = Price.from_dict(
        {
            "input": 1.0,
            "output": 4.0,
            "long_context": {"above": 200_000, "input": 2.0, "output": 8.0},
        },
        "o",
    )
    new = Price.from_dict({"input": 1.0, "output": 4.0, "cached_input": 1e-6,
                           "long_context": {"above": 200_000, "input": 0.02, "output": 0.08}},
                          "n")  # fmt: skip
    changes = sources.Diff(tuple(sources._price_changes("m", "", old, new)))
    bad = {c.what for c in changes.absurd()}
    assert {"price.cached_input", "price.long_context[0].input"} <= bad


def test_models_dev_single_long_context_field() -> None:
    cat = sources.parse("models.dev", {"anthropic": {"models": {"x": {
        "cost": {"input": 3, "output": 15, "context_over_200k": {"input": 6, "output": 22.5}},
        "limit": {"context": 1_000_000, "output": 64_000}}}}})  # fmt: skip
    p = cat.listings[("anthropic", "x")].price
    assert p is not None and p.long_context[0].above == 200_000 and p.long_context[0].input == 6


def test_usage_bills_one_hour_cache_writes_and_reasoning_at_their_rates() -> None:
    from satisfice.accounting import cost_of
    from satisfice.providers.anthropic import _usage as anthropic_usage
    from satisfice.providers.openai import _usage as openai_usage

    p = Price.from_dict({"input": 3, "output": 15, "cache_write": 3.75, "cache_write_1h": 6,
                         "reasoning": 30}, "p")  # fmt: skip
    u = anthropic_usage({"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens":
                         1000, "cache_creation": {"ephemeral_1h_input_tokens": 600}})  # fmt: skip
    assert u is not None and (u.cache_write_tokens, u.cache_write_1h_tokens) == (400, 600)
    assert cost_of(p, u) == pytest.approx((10 * 3 + 400 * 3.75 + 600 * 6 + 5 * 15) / 1e6)
    o = openai_usage({"prompt_tokens": 10, "completion_tokens": 100,
                      "completion_tokens_details": {"reasoning_tokens": 80}})  # fmt: skip
    assert o is not None and o.reasoning_tokens == 80
    assert cost_of(p, o) == pytest.approx((10 * 3 + 20 * 15 + 80 * 30) / 1e6)


def test_a_cost_cap_holds_on_a_pricier_deployment() -> None:
    reg = Registry.from_dict({"model": [{
        "id": "m", "provider": "x", "context_window": 100_000, "max_output": 1000,
        "price": {"input": 1, "output": 1}, "quality": {"general": 0.9},
        "deployments": [{"name": "cheap", "base_url": "https://a.invalid/v1"},
                        {"name": "dear", "base_url": "https://b.invalid/v1",
                         "price": {"input": 10, "output": 10}}]}]})  # fmt: skip
    r = Router(reg, Policy(quality_floor=0.5))
    d = r.route("hello", max_output_tokens=100)
    assert d.est_cost_usd == pytest.approx((d.primary.tokens_in + 100) * 10 / 1e6, rel=1e-3)


def test_one_bad_tier_leaves_that_entry_unpriced_not_the_import_failed() -> None:
    from satisfice.sources import parse_litellm

    good = {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 1e-6,
        "output_cost_per_token": 2e-6,
        "max_input_tokens": 8000,
        "max_output_tokens": 1000,
    }
    bad = {**good, "input_cost_per_token_above_200k_tokens": 1e305,
           "output_cost_per_token_above_200k_tokens": 1e-5}  # fmt: skip
    c = parse_litellm({"gpt-x": bad, "gpt-y": good})
    assert c.listings[("openai", "gpt-x")].price is None  # its rate overflows: unpriced
    assert c.listings[("openai", "gpt-y")].price is not None


@pytest.mark.parametrize(
    ("source", "data"),
    [
        ("openrouter", {"data": [{"id": "a/b", "supported_parameters": 5,
                                  "pricing": {"prompt": "0.000001", "completion": "0.000002",
                                              "overrides": True}}]}),
        ("models.dev", {"openai": {"models": {"m": {"cost": {"input": 1, "output": 2,
                                                              "tiers": 7}}}}}),
    ],
)  # fmt: skip
def test_mistyped_list_fields_are_skipped_not_fatal(source: str, data: dict[str, Any]) -> None:
    """A number where a list belongs stopped the whole catalogue (and killed the refresh
    task for good)."""
    from satisfice.sources import parse

    assert parse(source, data).listings  # the entry is read, its odd field ignored


def test_a_lone_surrogate_in_a_catalogue_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "cat.json"
    path.write_text(
        '{"gpt-x": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": '
        '1.1e-6, "output_cost_per_token": 4e-6, "successor_model": "gpt-y\\ud800"}}'
    )  # valid JSON: the escape of half a surrogate pair
    cat = sources.load("litellm", str(path))
    (entry,) = cat.listings.values()
    assert "gpt-y\ufffd" in repr(entry)  # what no terminal or file takes, replaced


@pytest.mark.parametrize("source", ["models.dev", "openrouter"])
def test_a_rate_the_sources_format_never_carries_keeps_the_registrys(source: str) -> None:
    """Defect: a refresh replaced a model's whole price with the catalogue's, so the rates a
    source's format never carries (models.dev: no 1-hour cache write, batch, priority, flex
    or per-search rate; OpenRouter: no batch, priority or flex) went to None: every refresh
    from it was refused as a change "to unknown", and, confirmed, a 1-hour cache write was
    billed at the 5-minute rate. Expected: those rates are kept; a rate the format carries
    and the entry leaves out (here the cache read) is still a change to unknown."""
    price = {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75,
             "cache_write_1h": 6.0, "batch_input": 1.5, "batch_output": 7.5,
             "priority_input": 6.0, "flex_input": 1.5}  # fmt: skip
    reg = _reg(**price)
    if source == "models.dev":
        data: dict[str, Any] = {
            "anthropic": {
                "models": {
                    "claude-sonnet-4-7": {
                        "cost": {"input": 3.5, "output": 15, "cache_read": 0.3, "cache_write": 3.75}
                    }
                }
            }
        }
    else:
        reg = reg.replace(
            reg["sonnet"].replace(
                deployments=(
                    reg["sonnet"]
                    .deployments[0]
                    .replace(name="openrouter", model="anthropic/claude-sonnet-4.7"),
                )
            )
        )
        data = {
            "data": [
                {
                    "id": "anthropic/claude-sonnet-4.7",
                    "pricing": {
                        "prompt": "0.0000035",
                        "completion": "0.000015",
                        "input_cache_read": "0.0000003",
                        "input_cache_write": "0.00000375",
                        "input_cache_write_1h": "0.000006",
                    },
                }
            ]
        }
    new, diff = sources.apply(reg, sources.parse(source, data))
    assert diff.absurd() == [], diff.render()
    got = new["sonnet"].price
    assert got is not None and got.input == 3.5
    assert (got.cache_write_1h, got.batch_input, got.priority_input) == (6.0, 1.5, 6.0)
    # kept while the input rate moved: said, as no refresh from this source checks them
    (kept,) = [c for c in diff.changes if c.what == "kept"]
    assert "price.batch_input" in kept.old and "price.input" not in kept.old.split(", ")
    assert f"{source} lists no" in str(kept) and kept.what in sources.NOTES
    if source == "models.dev":
        del data["anthropic"]["models"]["claude-sonnet-4-7"]["cost"]["cache_read"]
        _, diff = sources.apply(reg, sources.parse(source, data))
        assert [c.what for c in diff.absurd()] == ["price.cached_input"], diff.render()


def test_an_escape_code_in_a_successor_never_reaches_the_diff() -> None:
    """Defect: a catalogue's `successor_model` holding a terminal escape code (ESC [2J clears
    the screen) was carried into the registry and printed raw by `registry diff/update`
    (`Change.__str__`); a registry file's successor took one too. Expected: the catalogue's
    is dropped, as its other bad values are (the registry's own kept), and a file's is a
    ConfigError naming the model and field."""
    cat = sources.parse_litellm({"claude-sonnet-4-7": {
        "mode": "chat", "litellm_provider": "anthropic", "input_cost_per_token": 1e-6,
        "output_cost_per_token": 2e-6, "successor_model": "claude-next\x1b[2J",
    }})  # fmt: skip
    (entry,) = cat.listings.values()
    assert entry.successor is None
    reg = _reg().replace(_reg()["sonnet"].replace(successor="claude-known"))
    new, diff = sources.apply(reg, cat)
    assert "\x1b" not in diff.render() and new["sonnet"].successor == "claude-known"
    doc = reg.to_dict()
    doc["model"][0]["successor"] = "claude-next\x1b[2J"
    with pytest.raises(ConfigError, match="model 'sonnet': successor may not hold control"):
        Registry.from_dict(doc)


def test_a_window_or_output_limit_moved_tenfold_is_absurd() -> None:
    """A catalogue listing a 200k model at 1k tokens would have filtered it out of every
    route on the next refresh; it is refused like a price moved tenfold."""
    from satisfice.sources import Change, Diff

    fine = Diff((Change("m", "context_window", 128_000, 200_000),))
    assert fine.absurd() == []
    for what, old, new in (("context_window", 200_000, 1_000), ("max_output", 8_000, 1),
                           ("context_window", 8_000, 2_000_000)):  # fmt: skip
        assert [c.what for c in Diff((Change("m", what, old, new),)).absurd()] == [what]


def _reg_one() -> Registry:
    return Registry.from_dict({"model": [{
        "id": "sonnet", "provider": "anthropic", "tokenizer": "claude", "context_window": 100_000,
        "max_output": 8_000, "quality": {"general": 0.9},
        "price": {"input": 1, "output": 2},
        "deployments": [
            {"name": "anthropic", "api": "anthropic", "base_url": "https://api.anthropic.com",
             "model": "claude-sonnet-4-7"},
        ]}]})  # fmt: skip


def _conflicting_gpt53(tmp_path: Path) -> sources.Catalogue:
    body = json.loads((FIX / "litellm_prices.json").read_text())
    # openai lists gpt-5.3 twice with different prices: a conflict at the first-party host
    body["openai/gpt-5.3"] = dict(body["gpt-5.3"], input_cost_per_token=9e-6)
    # a reseller lists a model of the same name, at its own (much higher) price
    body["groq/gpt-5.3"] = dict(body["gpt-5.3"], litellm_provider="groq",
                                input_cost_per_token=5e-5)  # fmt: skip
    f = tmp_path / "p.json"
    f.write_text(json.dumps(body))
    cat = sources.load("litellm", str(f))
    assert ("openai", "gpt-5.3") in cat.conflicts
    assert ("groq", "gpt-5.3") in cat.listings
    return cat


def test_a_bare_name_whose_first_party_listing_conflicts_is_refused(tmp_path: Path) -> None:
    cat = _conflicting_gpt53(tmp_path)
    # a bare name is read first-party first: openai's conflict had let it fall through to
    # groq's listing, at groq's price
    assert cat.conflicting("gpt-5.3") == "openai:gpt-5.3"
    hit = cat.find("gpt-5.3")
    assert hit is None or hit.host == "openai", (
        f"the bare name resolved to {hit.host}:{hit.model} although openai's listing conflicts"
    )


def test_adding_a_bare_name_whose_first_party_listing_conflicts_is_refused(
    tmp_path: Path,
) -> None:
    cat = _conflicting_gpt53(tmp_path)
    try:
        new, _ = sources.apply(_reg_one(), cat, ["gpt-5.3"])
    except ConfigError as e:
        assert "twice" in str(e)
        return
    dep = new["gpt-5.3"].deployments[0]
    pytest.fail(
        f"'gpt-5.3' was added from {dep.name}:{dep.model} (the reseller, at its price) "
        "without a word, because openai's conflicting listing was taken out"
    )


def test_a_model_whose_only_listing_conflicts_is_not_said_to_be_unlisted(
    tmp_path: Path,
) -> None:
    body = json.loads((FIX / "litellm_prices.json").read_text())
    body["anthropic/claude-sonnet-4-7"] = dict(body["claude-sonnet-4-7"],
                                               input_cost_per_token=9e-6)  # fmt: skip
    f = tmp_path / "p.json"
    f.write_text(json.dumps(body))
    cat = sources.load("litellm", str(f))
    _, diff = sources.apply(_reg_one(), cat)
    text = diff.render()
    assert "twice" in text
    # was: also "? sonnet: not in the source (...)", which is false: it lists it twice
    assert "not in the source" not in text, text


def test_a_listing_without_a_price_makes_it_unpriced_and_dates_move_only_when_all_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A catalogue listing the model with no price (or $0/$0) kept the old $5/$25, said "no
    changes" and stamped the whole registry's prices as of today; one that left a priced
    model out stamped it too. An odd tier key ("²⁰⁰k") stopped the whole import."""
    old = tmp_path / "old.toml"
    old.write_text(
        '[meta]\nprices_as_of = 2025-01-01\n[[model]]\nid = "a"\ncontext_window = 100000\n'
        "max_output = 4000\nprice = {input = 5.0, output = 25.0}\n[[model.deployments]]\n"
        'name = "openai"\nbase_url = "https://api.openai.com/v1"\nmodel = "a-wire"\n'
    )
    listing = {"litellm_provider": "openai", "mode": "chat", "max_input_tokens": 100_000,
               "max_output_tokens": 4000}  # fmt: skip
    for price in ({}, {"input_cost_per_token": 0, "output_cost_per_token": 0}):
        (tmp_path / "cat.json").write_text(json.dumps({"a-wire": {**listing, **price}}))
        cat = sources.load("litellm", str(tmp_path / "cat.json"))
        new, diff = sources.apply(Registry.from_toml(old), cat)
        assert new["a"].price is None and diff.absurd(), diff.render()
        args = ["registry", "update", str(tmp_path / "cat.json"), "--from", "litellm",
                "--registry", str(old), "--out", str(tmp_path / "new.toml")]  # fmt: skip
        assert main(args) == 2 and "--yes" in capsys.readouterr().err
    # a priced model the catalogue does not list: its price unread, the date stays
    two = old.read_text() + (
        '[[model]]\nid = "b"\ncontext_window = 100000\nmax_output = 4000\n'
        "price = {input = 1.0, output = 2.0}\n"
    )
    old.write_text(two)
    priced = {"input_cost_per_token": 5e-6, "output_cost_per_token": 25e-6,
              "input_cost_per_token_above_²⁰⁰k_tokens": 1e-5,
              "output_cost_per_token_above_²⁰⁰k_tokens": 5e-5}  # fmt: skip
    (tmp_path / "cat.json").write_text(json.dumps({"a-wire": {**listing, **priced}}))
    new, _ = sources.apply(
        Registry.from_toml(old), sources.load("litellm", str(tmp_path / "cat.json"))
    )
    assert new["a"].price is not None and str(new.meta["prices_as_of"]) == "2025-01-01"
    # priced on its deployment alone, unlisted: unread all the same
    b_model = 'id = "b"\ncontext_window = 100000\nmax_output = 4000\n'
    dep_priced = two.replace(
        b_model + "price = {input = 1.0, output = 2.0}\n",
        'id = "b"\ncontext_window = 100000\nmax_output = 4000\n[[model.deployments]]\n'
        'name = "groq"\nbase_url = "https://api.groq.com/openai/v1"\nmodel = "b-wire"\n'
        "price = {input = 1.0, output = 2.0}\n",
    )
    assert dep_priced != two
    old.write_text(dep_priced)
    new, _ = sources.apply(
        Registry.from_toml(old), sources.load("litellm", str(tmp_path / "cat.json"))
    )
    assert str(new.meta["prices_as_of"]) == "2025-01-01"
    old.write_text(two.split('[[model]]\nid = "b"')[0])
    new, _ = sources.apply(
        Registry.from_toml(old), sources.load("litellm", str(tmp_path / "cat.json"))
    )
    assert str(new.meta["prices_as_of"]) != "2025-01-01"


def test_a_retirement_date_never_moves_later_on_a_refresh() -> None:
    """models.dev's "deprecated" (no date) is dated today: a model retired on 2026-11-01
    became "retired today" at each refresh, its "calls will fail" warning gone."""
    from datetime import date

    reg = _reg()
    s = reg["sonnet"]
    reg = reg.replace(s.replace(deprecation_date=date(2026, 11, 1)))
    cat = sources.load("litellm", str(FIX / "litellm_prices.json"))
    listed = cat.listings[("anthropic", "claude-sonnet-4-7")]
    fields = {f: getattr(listed, f) for f in listed.__dataclass_fields__}
    key = ("anthropic", "claude-sonnet-4-7")
    cat.listings[key] = listed.__class__(
        **{**fields, "deprecation_date": date.today(), "date_assumed": True}
    )
    new, _ = sources.apply(reg, cat)
    assert new["sonnet"].deprecation_date == date(2026, 11, 1)
    # a date the source gives does move it: a retirement postponed
    cat.listings[key] = listed.__class__(**{**fields, "deprecation_date": date(2027, 6, 30)})
    new, _ = sources.apply(reg, cat)
    assert new["sonnet"].deprecation_date == date(2027, 6, 30)


def test_a_second_deployment_listed_without_a_price_keeps_its_own() -> None:
    """Its price became None, a deployment's "the model's": it silently took the first
    deployment's price, unflagged, and the registry was stamped as checked today."""
    reg = _reg()
    s = reg["sonnet"]
    other = s.deployments[1].replace(name="openai", price=Price(2.0, 2.0))
    reg = reg.replace(s.replace(deployments=(s.deployments[0], other)))
    cat = sources.load("litellm", str(FIX / "litellm_prices.json"))
    listed = cat.listings[("anthropic", "claude-sonnet-4-7")]
    fields = {f: getattr(listed, f) for f in listed.__dataclass_fields__}
    cat.listings[("openai", "sonnet")] = listed.__class__(
        **{**fields, "host": "openai", "model": "sonnet", "price": None}
    )
    new, diff = sources.apply(reg, cat)
    assert new["sonnet"].deployments[1].price == Price(2.0, 2.0)
    assert "without a price; its price kept" in diff.render() and "prices_as_of" not in new.meta
