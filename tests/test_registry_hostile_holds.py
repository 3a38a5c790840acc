"""Hostile and broken catalogues, registries and refreshes, as reviewed. Every test here
failed on the code it was written against; each docstring says the defect and what should
hold instead."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from satisfice import Registry, Router, sources
from satisfice.errors import ConfigError
from satisfice.refresh import RegistryRefresher
from satisfice.registry import Deployment, ModelSpec, Price


def _sonnet() -> Registry:
    dep = Deployment("anthropic", "anthropic", "https://api.anthropic.com", "claude-sonnet-4-6")
    return Registry([ModelSpec("sonnet", "anthropic", 200_000, 64_000, "claude",
                               Price(3.0, 15.0), deployments=(dep,))])  # fmt: skip


def _litellm(input_per_token: float) -> str:
    return (
        '"claude-sonnet-4-6": {"mode": "chat", "litellm_provider": "anthropic", '
        f'"input_cost_per_token": {input_per_token}, "output_cost_per_token": 1.5e-05}}'
    )


def test_a_model_key_given_twice_in_a_catalogue_file_conflicts(tmp_path: Path) -> None:
    """A LiteLLM map naming one model's key twice with different prices had been read by
    json.loads as the last entry alone, which then priced the model ($3 to $0.30 here)
    without a word; it is listed twice with different facts, and kept as it is."""
    f = tmp_path / "map.json"
    f.write_text("{" + _litellm(3e-07) + ", " + _litellm(3e-06) + "}")
    cat = sources.load("litellm", str(f))
    assert cat.conflicts == {("anthropic", "claude-sonnet-4-6")}
    new, diff = sources.apply(_sonnet(), cat)
    assert new["sonnet"].price == Price(3.0, 15.0)
    assert "lists anthropic:claude-sonnet-4-6 twice" in diff.render()
    # the same entry twice is harmless, as a model listed twice the same is
    f.write_text("{" + _litellm(3e-06) + ", " + _litellm(3e-06) + "}")
    assert not sources.load("litellm", str(f)).conflicts


@pytest.mark.parametrize("figure", ["1e999", "NaN", "-1", "true", '"n/a"', "[6e-06]"])
@pytest.mark.parametrize(
    "field", ["input_cost_per_token_above_200k_tokens", "cache_creation_input_token_cost"]
)
def test_a_rate_given_as_no_price_makes_its_entry_unpriced(
    tmp_path: Path, field: str, figure: str
) -> None:
    """A long-context tier's or a cache write's rate given as no price (1e999, which
    json.loads reads as infinity; NaN, a negative, a bool, text) had been read as no rate:
    the tier dropped (a 500k-token prompt billed at the base rates, where the same tier at
    1e305 made the entry unpriced) or the write billed at the input rate. Such an entry is
    unpriced, as one whose input rate is no price is."""
    f = tmp_path / "map.json"
    f.write_text(
        '{"claude-sonnet-4-6": {"mode": "chat", "litellm_provider": "anthropic", '
        '"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05, '
        f'"output_cost_per_token_above_200k_tokens": 2.25e-05, "{field}": {figure}}}}}'
    )
    (listing,) = sources.load("litellm", str(f)).listings.values()
    assert listing.price is None


@pytest.mark.parametrize("name", ["registry.toml", "registry.json"])
def test_a_registry_file_past_any_size_is_refused_unread(tmp_path: Path, name: str) -> None:
    """A registry file had been read whole, however large: `--registry /dev/zero` (or a
    file of gigabytes) read until memory ran out, a MemoryError traceback. What is past
    the bound is refused, said, and not read."""
    f = tmp_path / name
    with f.open("wb") as out:  # sparse: 65 MB of NULs, taking no disk
        out.truncate(65 << 20)
    with pytest.raises(ConfigError, match=r"is over 64 MB"):
        Registry.load(f)
    with pytest.raises(ConfigError, match=r"is over 64 MB"):
        Registry.load("/dev/zero")


@pytest.mark.parametrize(
    "kw",
    [{"timeout_s": math.nan}, {"timeout_s": 0}, {"timeout_s": -1.0}, {"timeout_s": 1e300},
     {"timeout_s": "30"}, {"timeout_s": None}, {"interval_s": "60"}, {"max_ratio": "10"}],
)  # fmt: skip
def test_a_refresher_refuses_a_bad_setting_when_made(kw: dict[str, Any]) -> None:
    """`RegistryRefresher` checked interval_s and max_ratio (raw TypeErrors for text) and
    not timeout_s at all: NaN, 0 or -1 failed every refresh later, said in the log only as
    "not downloaded within nans"; 1e300 an OverflowError and a thread's traceback. Each is
    refused as the refresher is made, as [registry].refresh refuses it."""
    with pytest.raises(ConfigError, match=next(iter(kw))):
        RegistryRefresher(Router(_sonnet()), "litellm", "map.json", **kw)


def test_a_catalogue_is_read_from_a_path_as_a_registry_is() -> None:
    """`sources.load` (and so each refresh of `RegistryRefresher(router, "litellm", PATH)`)
    took a file's name as a str only: a `Path`, which `Registry.load` takes, failed each
    refresh, said in the log as "TypeError: 'PosixPath' object is not subscriptable"; a
    location of another type is refused, said as such."""
    path = Path(__file__).parent / "fixtures" / "sources" / "litellm_prices.json"
    assert sources.load("litellm", path).listings
    refresher = RegistryRefresher(Router(_sonnet()), "litellm", path)
    assert asyncio.run(refresher.refresh()) is not None
    with pytest.raises(ConfigError, match="a location is a file path or an http"):
        sources.load("litellm", 5)  # type: ignore[arg-type]
