"""Where models and prices come from: importers for the catalogues users already trust.

Each source has its own schema; each importer maps it to `Listing`s, one per (host, model
name at that host), with prices in USD per 1M tokens. `apply()` then carries a catalogue's
facts (prices, windows, deprecation) into a registry's deployments, and adds the models
named, and `Diff` says what changed before anything is written or swapped in.

- LiteLLM's `model_prices_and_context_window.json`: USD per token; keys like
  `claude-sonnet-4-6` or `gemini/gemini-3.5-flash`, the host in `litellm_provider`.
- OpenRouter's `GET /api/v1/models`: USD per token as decimal strings under `pricing`;
  every model is a deployment on the OpenRouter host.
- models.dev's `api.json`: providers, each with models; USD per 1M tokens under `cost`.

A listing without a price, with a negative sentinel (OpenRouter's -1 on routers), or priced at
0 for both input and output, is *unpriced*: the importers never turn a missing price into $0.
(OpenRouter documents 0 as free; a free variant is rate-limited and changes without notice, so
it is left for the user to price by hand rather than routed to as costless.)
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .registry import Deployment, ModelSpec, Price, Registry, _date

__all__ = [
    "HOSTS",
    "SOURCES",
    "Catalogue",
    "Change",
    "Diff",
    "Host",
    "Listing",
    "apply",
    "load",
    "parse",
]

SOURCES = ("litellm", "openrouter", "models.dev")
DEFAULT_URLS = {
    "openrouter": "https://openrouter.ai/api/v1/models",
    "models.dev": "https://models.dev/api.json",
}
MAX_SOURCE_BYTES = 128 * 1024 * 1024  # LiteLLM's map is ~1.5 MB; anything far past is wrong


@dataclass(frozen=True, slots=True)
class Host:
    """A place that serves models, and how each source names it."""

    name: str  # the deployment name in a registry
    vendor: str  # `provider` of a model first served here
    api: str
    base_url: str
    api_key_env: str
    tokenizer: str
    litellm: str  # `litellm_provider`
    models_dev: str | None = None  # provider key in models.dev


HOSTS: dict[str, Host] = {
    h.name: h
    for h in (
        Host("openai", "openai", "openai", "https://api.openai.com/v1", "OPENAI_API_KEY",
             "o200k_base", "openai", "openai"),
        Host("anthropic", "anthropic", "anthropic", "https://api.anthropic.com",
             "ANTHROPIC_API_KEY", "claude", "anthropic", "anthropic"),
        Host("google", "google", "openai", "https://generativelanguage.googleapis.com/v1beta/openai",
             "GEMINI_API_KEY", "gemini", "gemini", "google"),
        Host("mistral", "mistral", "openai", "https://api.mistral.ai/v1", "MISTRAL_API_KEY",
             "mistral", "mistral", "mistral"),
        Host("deepseek", "deepseek", "openai", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY",
             "deepseek", "deepseek", "deepseek"),
        Host("xai", "xai", "openai", "https://api.x.ai/v1", "XAI_API_KEY", "other", "xai",
             "xai"),
        Host("groq", "meta", "openai", "https://api.groq.com/openai/v1", "GROQ_API_KEY", "llama",
             "groq", "groq"),
        Host("together", "meta", "openai", "https://api.together.xyz/v1", "TOGETHER_API_KEY",
             "llama", "together_ai", "togetherai"),
        Host("fireworks", "meta", "openai", "https://api.fireworks.ai/inference/v1",
             "FIREWORKS_API_KEY", "llama", "fireworks_ai", "fireworks-ai"),
        Host("openrouter", "openrouter", "openai", "https://openrouter.ai/api/v1",
             "OPENROUTER_API_KEY", "other", "openrouter", "openrouter"),
    )
}  # fmt: skip
_BY_LITELLM = {h.litellm: h.name for h in HOSTS.values()}
_BY_MODELS_DEV = {h.models_dev: h.name for h in HOSTS.values() if h.models_dev}
# The model families an open-weight model's name gives away (tokenizer and vendor).
_FAMILIES = (
    ("llama", "meta", "llama"), ("qwen", "qwen", "qwen"), ("mistral", "mistral", "mistral"),
    ("mixtral", "mistral", "mistral"), ("deepseek", "deepseek", "deepseek"),
    ("gemma", "google", "gemini"), ("kimi", "moonshot", "other"),
    ("gpt-oss", "openai", "o200k_base"), ("glm", "zhipu", "other"),
)  # fmt: skip
# An OpenRouter id's vendor prefix, where it names the tokenizer ("other": estimated; a
# model's own vocabulary had been counted as o200k_base, and called exact)
_OPENROUTER_TOKENIZERS = {
    "openai": "o200k_base", "anthropic": "claude", "google": "gemini", "mistralai": "mistral",
    "deepseek": "deepseek", "meta-llama": "llama", "qwen": "qwen",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Listing:
    """One model at one host, as a source lists it. `price=None`: the source has no price."""

    host: str
    model: str
    price: Price | None
    context_window: int | None = None
    max_output: int | None = None
    capabilities: frozenset[str] = frozenset()
    deprecation_date: date | None = None
    successor: str | None = None
    date_assumed: bool = False  # deprecation_date is the day the source was read


@dataclass(frozen=True, slots=True)
class Catalogue:
    """What one source says, keyed by (host, model name at that host). A model the source
    lists twice with different facts is in `conflicts`, not in `listings`: which entry is
    right cannot be known, and keeping the last had silently priced it by the source's order."""

    source: str
    listings: Mapping[tuple[str, str], Listing]
    conflicts: frozenset[tuple[str, str]] = frozenset()
    # the price fields the source's format carries: a rate it never carries (models.dev has
    # no 1-hour cache write, OpenRouter no batch rate) is no word on it, and `apply` keeps
    # the registry's (a refresh had made it unknown, and a 1-hour write billed at 5 minutes')
    rates: frozenset[str] = frozenset(Price.__match_args__)

    def find(self, name: str) -> Listing | None:
        """A listing by `host:model` or by a bare model name (first-party hosts first)."""
        key = self._key(name)
        return None if key is None else self.listings.get(key)

    def conflicting(self, name: str) -> str | None:
        """`host:model` when `name`, as `find` reads it, is listed twice, differently."""
        key = self._key(name)
        return f"{key[0]}:{key[1]}" if key is not None and key in self.conflicts else None

    def _key(self, name: str) -> tuple[str, str] | None:
        """What `name` names: `host:model`, or a bare name's first host that lists it, even
        twice (a first-party conflict is not another host's listing, at its price)."""
        if ":" in name and name.split(":", 1)[0] in HOSTS:
            host, model = name.split(":", 1)
            return host, model
        return next(
            ((h, name) for h in HOSTS if (h, name) in self.listings or (h, name) in self.conflicts),
            None,
        )


class _Listings:
    """A parser's listings as it collects them: a second, different entry for the same
    (host, model) takes both out, into `conflicts` (an identical one is harmless). The
    rates its prices are made from are the ones its format carries (`Catalogue.rates`)."""

    def __init__(self) -> None:
        self.listings: dict[tuple[str, str], Listing] = {}
        self.conflicts: set[tuple[str, str]] = set()
        self.rates: set[str] = set()

    def price(self, rates: Mapping[str, float | None], tiers: Iterable[_Tier] = ()) -> Price | None:
        """An entry's price (`_make_price`), its rates' names noted as carried."""
        self.rates.update(rates, ("long_context",))
        return _make_price(rates, tiers)

    def put(self, listing: Listing) -> None:
        key = (listing.host, listing.model)
        had = self.listings.get(key)
        if key in self.conflicts or (had is not None and had != listing):
            self.listings.pop(key, None)
            self.conflicts.add(key)
        else:
            self.listings[key] = listing

    def catalogue(self, source: str) -> Catalogue:
        return Catalogue(source, self.listings, frozenset(self.conflicts), frozenset(self.rates))


# -- parsing ---------------------------------------------------------------------------------


class _Twice:
    """A key one JSON object of a catalogue names twice with different values: json.loads
    keeps the last without a word, which had priced a model listed twice by the file's
    order. A model entry given twice is read as its entries (`_entries`), which conflict; a
    field given twice is no figure, so its entry is unpriced or skipped."""

    __slots__ = ("values",)

    def __init__(self, values: list[Any]) -> None:
        self.values = values


def _object(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook: a key given twice with different values as `_Twice`
    (the same value twice is harmless, and kept once)."""
    out = dict(items)
    if len(out) == len(items):  # (every object of a well-formed catalogue)
        return out
    seen: dict[str, list[Any]] = {}
    for k, v in items:
        if v not in (vs := seen.setdefault(k, [])):
            vs.append(v)
    return {k: vs[0] if len(vs) == 1 else _Twice(vs) for k, vs in seen.items()}


def _entries(d: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """`d`'s (key, entry) pairs, each entry of a key given twice (`_Twice`) in turn."""
    for k, v in d.items():
        for e in v.values if isinstance(v, _Twice) else (v,):
            yield k, e


def _usd(v: Any) -> float | None:
    """A catalogue's USD figure (a number or a decimal string); None when it gives none;
    inf for one that is no price (a bool, as float(True) is 1.0; NaN, infinity, < 0, text,
    a number too large for a float), which makes its entry unpriced as an absurd rate does.
    (Read as none, such a cache-write or reasoning rate had been billed at the input or
    output rate, and such a long-context tier dropped: a long prompt billed at the base
    rates, where the same tier at 1e305 made the entry unpriced.)"""
    if v is None:
        return None
    if isinstance(v, bool):
        return math.inf
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return math.inf
    return f if math.isfinite(f) and f >= 0 else math.inf


def _per_token(v: Any) -> float | None:
    """A per-token USD figure as USD per 1M tokens (inf when it overflows: an absurd rate)."""
    f = _usd(v)
    return None if f is None else round(f * 1e6, 6)


def _per_million(v: Any) -> float | None:
    f = _usd(v)
    return None if f is None else round(f, 6)


def _per_search(v: Any) -> float | None:
    """USD per web search from LiteLLM's `search_context_cost_per_query` (a price per
    search context size): the dearest, which no search is billed above."""
    if not isinstance(v, Mapping):
        return None
    usd = [u for u in map(_usd, v.values()) if u is not None]
    return round(max(usd), 6) if usd else None


def _positive_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    try:
        n = int(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return n if 0 < n < 2**32 else None


def _sub(e: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """`e[key]` when it is a table, else an empty one (sources leave out or null fields)."""
    v = e.get(key)
    return v if isinstance(v, Mapping) else {}


def _seq(e: Mapping[str, Any], key: str, default: Sequence[Any] = ()) -> Sequence[Any]:
    """`e[key]` when it is a list, else `default`: one mistyped field (a number where a list
    belongs) must not stop a whole catalogue, nor a background refresh, from loading."""
    v = e.get(key)
    return v if isinstance(v, list | tuple) else default


def _safe_date(v: Any) -> date | None:
    try:
        return _date(v, "")
    except ConfigError:
        return None


# A long-context tier as a source lists it, (above, input, output): checked with the rest of
# the price in _make_price, so one bad tier makes that entry unpriced (not the whole import).
_Tier = tuple[float, float, float]


def _make_price(rates: Mapping[str, float | None], tiers: Iterable[_Tier] = ()) -> Price | None:
    """A Price from parsed rates, or None (unpriced) when input or output is missing or 0: a
    source's 0 means 'not listed' far more often than 'free' (a chat model listed with a
    paid prompt and a $0 answer had been imported with free output). So does a 0 for any
    other rate (cache reads and writes, reasoning, tiers, per request or search), in every
    catalogue: the price then bills those as input or output, never as free (LiteLLM's and
    models.dev's 0 cache-read and reasoning rates had made them free)."""
    inp, out = rates.get("input"), rates.get("output")
    if not inp or not out:
        return None
    extra = {k: v for k, v in rates.items() if k not in ("input", "output") and v}
    try:
        return Price.from_dict(
            {"input": inp, "output": out, **extra,
             **({"long_context": [{"above": a, "input": i, "output": o}
                                  for a, i, o in tiers]} if tiers else {})},
            "imported price",
        )  # fmt: skip
    except ConfigError:
        return None


def _litellm_tiers(e: Mapping[str, Any]) -> list[_Tier]:
    tiers: list[_Tier] = []
    for k, v in e.items():
        if k.startswith("input_cost_per_token_above_") and k.endswith("k_tokens"):
            n = k[len("input_cost_per_token_above_") : -len("k_tokens")]
            out = _per_token(e.get(f"output_cost_per_token_above_{n}k_tokens"))
            inp = _per_token(v)
            # ASCII digits only: "²⁰⁰" is isdigit() too, and int() refused it, a whole import
            if n.isascii() and n.isdigit() and inp is not None and out is not None:
                tiers.append((int(n) * 1000, inp, out))
    return tiers


def parse_litellm(data: Mapping[str, Any]) -> Catalogue:
    listings = _Listings()
    for key, e in _entries(data):
        if not isinstance(e, Mapping) or e.get("mode") != "chat":
            continue
        host = _BY_LITELLM.get(str(e.get("litellm_provider")))
        if host is None:
            continue
        prefix = f"{e['litellm_provider']}/"
        model = key[len(prefix) :] if key.startswith(prefix) else key
        if "/" in model and host in ("openai", "anthropic"):
            continue  # another gateway's route to this vendor, not the vendor itself
        rates = {
            "input": _per_token(e.get("input_cost_per_token")),
            "output": _per_token(e.get("output_cost_per_token")),
            "cached_input": _per_token(e.get("cache_read_input_token_cost")),
            "cache_write": _per_token(e.get("cache_creation_input_token_cost")),
            "cache_write_1h": _per_token(e.get("cache_creation_input_token_cost_above_1hr")),
            "reasoning": _per_token(e.get("output_cost_per_reasoning_token")),
            "batch_input": _per_token(e.get("input_cost_per_token_batches")),
            "batch_output": _per_token(e.get("output_cost_per_token_batches")),
            "priority_input": _per_token(e.get("input_cost_per_token_priority")),
            "priority_output": _per_token(e.get("output_cost_per_token_priority")),
            "flex_input": _per_token(e.get("input_cost_per_token_flex")),
            "flex_output": _per_token(e.get("output_cost_per_token_flex")),
            "per_request": _per_million(e.get("input_cost_per_request")),
            "per_search": _per_search(e.get("search_context_cost_per_query")),
        }
        successor = e.get("successor_model")
        if not isinstance(successor, str) or not successor.isprintable():
            successor = None  # an escape code in it had reached `registry diff`'s terminal
        elif successor.startswith(prefix):
            successor = successor[len(prefix) :]
        listings.put(Listing(
            host,
            model,
            listings.price(rates, _litellm_tiers(e)),
            _positive_int(e.get("max_input_tokens") or e.get("max_tokens")),
            _positive_int(e.get("max_output_tokens")),
            _litellm_caps(e),
            _safe_date(e.get("deprecation_date")),
            successor or None,
        ))  # fmt: skip
    return listings.catalogue("litellm")


def _litellm_caps(e: Mapping[str, Any]) -> frozenset[str]:
    caps = {"streaming"}
    flags = {
        "supports_function_calling": "tools", "supports_vision": "vision",
        "supports_reasoning": "reasoning", "supports_response_schema": "json",
    }  # fmt: skip
    caps |= {cap for flag, cap in flags.items() if e.get(flag) is True}
    if e.get("supports_system_messages") is not False:
        caps.add("system_prompt")
    return frozenset(caps)


def parse_openrouter(data: Mapping[str, Any]) -> Catalogue:
    models = data.get("data")
    if not isinstance(models, list):
        raise ConfigError("an OpenRouter model list has its models in a 'data' array")
    listings = _Listings()
    for e in models:
        if not isinstance(e, Mapping) or not isinstance(mid := e.get("id"), str):
            continue
        arch = _sub(e, "architecture")
        out_mod = _seq(arch, "output_modalities") or ["text"]
        if "text" not in out_mod:
            continue
        p = _sub(e, "pricing")
        rates = {
            "input": _per_token(p.get("prompt")),
            "output": _per_token(p.get("completion")),
            "cached_input": _per_token(p.get("input_cache_read")),
            "cache_write": _per_token(p.get("input_cache_write")),
            "cache_write_1h": _per_token(p.get("input_cache_write_1h")),
            "reasoning": _per_token(p.get("internal_reasoning")),
            "per_request": _per_million(p.get("request")) or None,
            "per_search": _per_million(p.get("web_search")) or None,
        }
        tiers: list[_Tier] = []
        for o in _seq(p, "overrides"):  # {min_prompt_tokens, prompt, completion, ...}
            if isinstance(o, Mapping) and (n := _positive_int(o.get("min_prompt_tokens"))):
                li, lo = _per_token(o.get("prompt")), _per_token(o.get("completion"))
                if li is not None and lo is not None:
                    tiers.append((n, li, lo))
        top = _sub(e, "top_provider")
        params = {x for x in _seq(e, "supported_parameters") if isinstance(x, str)}
        caps = {"streaming", "system_prompt"}
        caps |= {"tools"} if "tools" in params else set()
        caps |= {"json"} if {"response_format", "structured_outputs"} & params else set()
        caps |= {"reasoning"} if {"reasoning", "include_reasoning"} & params else set()
        caps |= {"vision"} if "image" in _seq(arch, "input_modalities") else set()
        caps |= {"logprobs"} if "logprobs" in params else set()
        listings.put(Listing(
            "openrouter",
            mid,
            listings.price(rates, tiers),
            _positive_int(e.get("context_length") or top.get("context_length")),
            _positive_int(top.get("max_completion_tokens")),
            frozenset(caps),
            _safe_date(e.get("expiration_date")),
        ))  # fmt: skip
    return listings.catalogue("openrouter")


def parse_models_dev(data: Mapping[str, Any]) -> Catalogue:
    listings = _Listings()
    for pkey, prov in _entries(data):
        host = _BY_MODELS_DEV.get(pkey)
        if host is None or not isinstance(prov, Mapping):
            continue
        models = prov.get("models")
        if not isinstance(models, Mapping):
            continue
        for mid, e in _entries(models):
            if not isinstance(e, Mapping):
                continue
            mods = _sub(e, "modalities")
            if "text" not in (_seq(mods, "output") or ["text"]) or "embedding" in (
                f"{mid} {e.get('family', '')}"
            ):
                continue
            c = _sub(e, "cost")
            rates = {
                "input": _per_million(c.get("input")),
                "output": _per_million(c.get("output")),
                "cached_input": _per_million(c.get("cache_read")),
                "cache_write": _per_million(c.get("cache_write")),
                "reasoning": _per_million(c.get("reasoning")),
            }
            tiers: list[_Tier] = []
            over = c.get("context_over_200k")  # the older field, one tier above 200k
            if not c.get("tiers") and isinstance(over, Mapping):
                li, lo = _per_million(over.get("input")), _per_million(over.get("output"))
                if li is not None and lo is not None:
                    tiers.append((200_000, li, lo))
            for t in _seq(c, "tiers"):  # {input, output, tier: {type: context, size}}
                kind = t.get("tier") if isinstance(t, Mapping) else None
                if isinstance(kind, Mapping) and kind.get("type") == "context":
                    n = _positive_int(kind.get("size"))
                    li, lo = _per_million(t.get("input")), _per_million(t.get("output"))
                    if n and li is not None and lo is not None:
                        tiers.append((n, li, lo))
            lim = _sub(e, "limit")
            caps = {"streaming", "system_prompt"}
            caps |= {"tools"} if e.get("tool_call") else set()
            caps |= {"reasoning"} if e.get("reasoning") else set()
            caps |= {"json"} if e.get("structured_output") else set()
            caps |= {"vision"} if "image" in _seq(mods, "input") else set()
            # models.dev has no retirement date, only a status: a deprecated model is taken
            # as retired from the day it was seen so.
            retired = e.get("status") == "deprecated"
            listings.put(Listing(
                host,
                str(mid),
                listings.price(rates, tiers),
                _positive_int(lim.get("context")),
                _positive_int(lim.get("output")),
                frozenset(caps),
                date.today() if retired else None,
                date_assumed=retired,
            ))  # fmt: skip
    return listings.catalogue("models.dev")


_PARSERS = {
    "litellm": parse_litellm,
    "openrouter": parse_openrouter,
    "models.dev": parse_models_dev,
}


def parse(source: str, data: Any) -> Catalogue:
    if source not in _PARSERS:
        raise ConfigError(f"unknown source {source!r}; use one of {list(SOURCES)}")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a JSON object at the top, got {type(data).__name__}")
    return _PARSERS[source](data)


def bundled_litellm_map() -> Path:
    """The price map inside the installed `litellm` wheel (found without importing it:
    importing litellm fetches a remote copy of the map)."""
    import importlib.util

    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "--from litellm without a FILE or URL reads the map inside the litellm package, "
            "which is not installed; `pip install litellm` or give the file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / (
        "model_prices_and_context_window_backup.json"
    )
    if not path.is_file():
        raise ConfigError(f"the installed litellm has no price map at {path}; give the file")
    return path


def load(
    source: str, location: str | os.PathLike[str] | None = None, *, timeout_s: float = 30.0
) -> Catalogue:
    """Read a source from a file or an http(s) URL (default: the source's public URL, or
    for litellm the map inside the installed litellm package) and parse it."""
    if source not in _PARSERS:
        raise ConfigError(f"unknown source {source!r}; use one of {list(SOURCES)}")
    if location is None:
        location = str(bundled_litellm_map()) if source == "litellm" else DEFAULT_URLS[source]
    elif isinstance(location, os.PathLike):
        # a Path, as Registry.load takes one: it had failed each refresh, said in the log
        # as "'PosixPath' object is not subscriptable"
        location = os.fspath(location)
    if not isinstance(location, str):
        raise ConfigError(
            f"{source}: a location is a file path or an http(s) URL, got {type(location).__name__}"
        )
    if is_url(location):
        raw = _fetch(location, timeout_s)
    else:
        p = Path(location)
        if not p.is_file():
            raise ConfigError(f"{source}: {shown(location)} is not a file or an http(s) URL")
        if p.stat().st_size > MAX_SOURCE_BYTES:
            raise ConfigError(f"{source}: {shown(location)} is over {MAX_SOURCE_BYTES >> 20} MB")
        raw = p.read_bytes()
    from .providers.base import scrubbed

    try:
        data = json.loads(raw, object_pairs_hook=_object)
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{source}: {shown(location)} is not JSON ({e})") from None
    # a lone surrogate (\ud800), valid JSON, is no text any file or terminal takes: U+FFFD
    return parse(source, scrubbed(data, raw))


def is_url(location: str) -> bool:
    """Whether a catalogue's location is an http(s) URL (a scheme is any case: an
    "HTTPS://user:pw@..." had been read as a file name, and said whole as one)."""
    return location[:8].lower().startswith(("http://", "https://"))


def shown(location: str) -> str:
    """A catalogue's location as said in messages: a URL without its user and password and
    its query (either may hold a key); a file path as it is."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(location)
        host = u.hostname or ""
        if u.scheme.lower() in ("http", "https") and not u.netloc:
            # a URL mistyped (`https:/user:KEY@host`): not one to split, so not one to quote
            return u.scheme + "://..."
        if not u.scheme or not u.netloc:
            return location
        netloc = host if u.port is None else f"{host}:{u.port}"
    except ValueError:  # a port out of range, an odd bracket: the scheme alone is safe
        return location.split(":", 1)[0] + "://..."
    return f"{u.scheme}://{netloc}{u.path}" + ("?..." if u.query else "")


def _fetch(url: str, timeout_s: float) -> bytes:
    import httpx

    from ._redact import guard_logs, register
    from .registry import url_secrets

    # each request's credentials (user info, a ?token=): scrubbed from what httpx logs of
    # it (its URL, at INFO) and from anything said of it; registered as each is sent, as a
    # redirect's target carries its own (a signed ?X-Amz-Signature= had been logged whole)
    def register_secrets(request: httpx.Request) -> None:
        for secret in url_secrets(str(request.url)):
            register(secret)

    guard_logs()

    # httpx's timeout bounds each read; a trickle of bytes (of the head or the body) would
    # pass every one of them, so a timer closes the client when `timeout_s` is up
    late = ConfigError(
        f"GET {shown(url)}: not downloaded within {timeout_s:g}s; raise the refresh's timeout_s "
        "or use a faster mirror"
    )
    expired = threading.Event()
    hooks = {"request": [register_secrets]}
    with httpx.Client(timeout=timeout_s, follow_redirects=True, event_hooks=hooks) as client:

        def expire() -> None:
            expired.set()
            client.close()

        timer = threading.Timer(timeout_s, expire)
        timer.daemon = True
        timer.start()
        try:
            with client.stream("GET", url) as r:
                if r.status_code != 200:
                    raise ConfigError(f"GET {shown(url)} answered HTTP {r.status_code}")
                body = bytearray()
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > MAX_SOURCE_BYTES:
                        raise ConfigError(
                            f"GET {shown(url)}: the answer is over {MAX_SOURCE_BYTES >> 20} MB"
                        )
                    if expired.is_set():
                        raise late
                return bytes(body)
        # (InvalidURL, UnicodeError: a URL httpx or IDNA cannot read, https://999.1.1.1/ or
        # https://bad..host/, given or redirected to; they had escaped raw)
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeError, OSError, RuntimeError) as e:
            if expired.is_set():
                raise late from None
            raise ConfigError(f"GET {shown(url)} failed: {type(e).__name__}") from None
        finally:
            timer.cancel()


# -- applying a catalogue to a registry and saying what changed -------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    model: str
    what: str  # price.input, context_window, deprecation_date, added, unlisted, assumed, ...
    old: Any
    new: Any
    base: float | None = None  # a new rate's previous effective value (it defaulted to this)

    def __str__(self) -> str:
        if self.what == "added":
            return f"+ {self.model}: added ({self.new})"
        if self.what == "assumed":
            return (
                f"! {self.model}: the source lists no {self.old}; {self.new} (set it in the file)"
            )
        if self.what == "unlisted":
            return f"? {self.model}: not in the source ({self.old}); kept as it is"
        if self.what == "unpriced":
            return (
                f"? {self.model}: the source lists {self.old} without a price; its price kept "
                "(check it at the provider)"
            )
        if self.what == "kept":
            return (
                f"? {self.model}: {self.new} lists no {self.old}; kept as they were while "
                "its other rates moved (check them at the provider)"
            )
        if self.what == "conflicting":
            return (
                f"! {self.model}: the source lists {self.old} twice with different facts; "
                "kept as it is (check the source, or set it in the file)"
            )
        return f"~ {self.model}: {self.what} {self.old} -> {self.new}"


NOTES = ("unlisted", "assumed", "conflicting", "unpriced", "kept")  # lines that tell


@dataclass(frozen=True, slots=True)
class Diff:
    changes: tuple[Change, ...] = ()

    def __bool__(self) -> bool:
        return any(c.what not in NOTES for c in self.changes)

    def absurd(self, max_ratio: float = 10.0) -> list[Change]:
        """Changes a refresh refuses unless confirmed: a price multiplied or divided by more
        than `max_ratio`, a price gone to 0, a priced model becoming unpriced, or a context
        window or output limit multiplied or divided by more than `max_ratio` (a catalogue
        listing a 128k model at 1 token would have filtered it out of every route)."""

        def moved(old: object, new: object) -> bool:
            """Multiplied or divided by more than max_ratio (from a positive number)."""
            if not (isinstance(old, int | float) and isinstance(new, int | float)) or old <= 0:
                return False
            return not 1 / max_ratio <= new / old <= max_ratio

        bad = []
        for c in self.changes:
            if c.what in ("context_window", "max_output"):
                if moved(c.old, c.new):
                    bad.append(c)
                continue
            if not c.what.startswith("price"):
                continue
            if c.what.endswith("per_request"):
                # USD a call, not per 1M tokens: moved as much as a 1,000-in, 1,000-out
                # call's cost moves (`base`: the tokens' part); set against the input rate,
                # $1 a call on a $0.20/M model was 5x, and passed unconfirmed
                tokens = c.base or 0.0
                fees = [
                    float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0
                    for v in (c.old, c.new)
                ]
                if moved(tokens + fees[0], tokens + fees[1]):
                    bad.append(c)
                continue
            old = c.old if c.old is not None else c.base  # a new rate replaced its default
            if (c.old is not None and c.new is None) or (
                isinstance(old, float)
                and isinstance(c.new, float)
                and old > 0
                and (c.new == 0 or moved(old, c.new))
            ):
                bad.append(c)
        return bad

    def render(self) -> str:
        if not self.changes:
            return "no changes"
        real = sum(1 for c in self.changes if c.what not in NOTES)
        return "\n".join(map(str, self.changes)) + f"\n{real} change(s)"


def _price_changes(model: str, where: str, old: Price | None, new: Price | None) -> list[Change]:
    if old == new:
        return []
    if old is None or new is None:
        return [Change(model, f"price{where}", None if old is None else old.to_dict(),
                       None if new is None else new.to_dict())]  # fmt: skip
    a, b = _flat(old), _flat(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) == b.get(k):
            continue
        base = None
        if k == "per_search":  # USD a search, not per 1M tokens: no rate it defaulted to
            base = None
        elif k == "per_request":  # a 1,000-in, 1,000-out call's tokens, which the fee adds to
            base = (old.input + old.output) / 1000
        elif a.get(k) is None and not k.endswith("above"):  # it defaulted to its side's rate
            base = old.output if "output" in k or "reasoning" in k else old.input
        out.append(Change(model, f"price{where}.{k}", a.get(k), b.get(k), base))
    return out


def _flat(p: Price) -> dict[str, Any]:
    """A price's rates by name, long-context tiers as long_context[i].input/output/above."""
    d = p.to_dict()
    tiers = d.pop("long_context", None)
    if tiers is not None:
        for i, t in enumerate(tiers if isinstance(tiers, list) else [tiers]):
            for k, v in t.items():
                d[f"long_context[{i}].{k}"] = float(v)
    return d


def diff(old: Registry, new: Registry) -> Diff:
    out: list[Change] = []
    for m in new:
        if m.base is not None:
            continue
        if m.id not in old:
            out.append(Change(m.id, "added", None, ", ".join(d.name for d in m.deployments)))
            continue
        o = old[m.id]
        out += _price_changes(m.id, "", o.price, m.price)
        for dep in m.deployments:  # effective prices: an own price, else the model's
            od = next((x for x in o.deployments if x.name == dep.name), None)
            if od is None:
                continue
            was, now = od.price or o.price, dep.price or m.price
            if (was, now) != (o.price, m.price):
                out += _price_changes(m.id, f"[{dep.name}]", was, now)
        for f in ("context_window", "max_output", "deprecation_date", "successor"):
            if getattr(o, f) != getattr(m, f):
                out.append(Change(m.id, f, getattr(o, f), getattr(m, f)))
    return Diff(tuple(out))


def _listing_for(cat: Catalogue, dep: Deployment) -> Listing | None:
    return cat.listings.get((dep.name, dep.model))


def apply(
    registry: Registry,
    cat: Catalogue,
    add: Sequence[str] = (),
    *,
    prices_as_of: date | None = None,
) -> tuple[Registry, Diff]:
    """`registry` with the catalogue's prices, windows and deprecation dates carried into
    the models it lists (matched per deployment by host and model name), plus the models
    named in `add` (`model` or `host:model`). Qualities, latencies, capabilities and
    deployments a user configured are kept. Models the source does not list, or lists twice
    with different facts, are kept as they are and reported."""
    models: list[ModelSpec] = []
    notes: list[Change] = []  # unlisted models, conflicting listings, assumed facts
    checked = False  # some model's facts were compared with the catalogue's
    unchecked = False  # a priced model's price was not: the registry's date cannot move
    for m in registry:
        if m.base is not None:  # an effort variant: rebuilt from its model
            continue
        twice = [d for d in m.deployments if (d.name, d.model) in cat.conflicts]
        for dep in twice:
            notes.append(Change(m.id, "conflicting", f"{dep.name}:{dep.model}", None))
        hits = [(d, h) for d in m.deployments if (h := _listing_for(cat, d)) is not None]
        if not hits:
            if len(twice) < len(m.deployments) or not m.deployments:  # a listing twice is
                # no "not in the source"; a model with no deployment is in no catalogue
                where = ", ".join(f"{d.name}:{d.model}" for d in m.deployments if d not in twice)
                notes.append(Change(m.id, "unlisted", where or "no deployment", None))
            unchecked = unchecked or m.price is not None or any(d.price for d in m.deployments)
            models.append(m)
            continue
        checked = True
        # a deployment besides the first listed without a price keeps its own (a
        # deployment's None is "the model's": it had silently taken the first's)
        unpriced = [d for d, h in hits if h.price is None and d is not m.deployments[0]]
        notes += [Change(m.id, "unpriced", f"{d.name}:{d.model}", None) for d in unpriced]
        unchecked = unchecked or bool(unpriced) or len(hits) < len(m.deployments)
        models.append(_updated(m, hits, cat.rates))
        if kept := _kept_rates(m, models[-1], cat.rates):
            notes.append(Change(m.id, "kept", ", ".join(kept), cat.source))
    known = {m.id for m in models}
    for name in add:
        hit = cat.find(name)
        if hit is None and (dup := cat.conflicting(name)) is not None:
            raise ConfigError(
                f"{cat.source} lists {dup} twice with different facts, so it cannot be "
                "added from it; add it to the registry file by hand"
            )
        if hit is None:
            raise ConfigError(
                f"{cat.source} lists no chat model {name!r}; name it as the host calls it, "
                f"optionally as host:model with host one of {list(HOSTS)}"
            )
        mid = hit.model.rsplit("/", 1)[-1]
        if mid in known:
            had = next(m for m in models if m.id == mid)
            if any(_listing_for(cat, d) == hit for d in had.deployments):
                continue  # already in the registry, and updated above
            # a different listing under the same id: skipping it had said nothing at all
            at = ", ".join(f"{d.name}:{d.model}" for d in had.deployments) or "no deployment"
            raise ConfigError(
                f"{name!r} would be added as model {mid!r}, which the registry already has "
                f"({at}); in the registry file, add it to that model as a deployment if it "
                "is the same model, else as a model with an id of its own"
            )
        known.add(mid)
        checked = True
        m = _new_model(mid, hit)
        models.append(m)
        if not hit.context_window:  # a window made up without a word had looked like a fact
            notes.append(Change(mid, "assumed", "context window",
                                   f"{m.context_window} tokens assumed"))  # fmt: skip
    meta = dict(registry.meta)
    # a catalogue that lists none of the models checked no price: not "fresh"; nor does one
    # that leaves some priced model out (its price had been stamped as of today unread)
    if checked:
        meta["source"] = cat.source
        if not unchecked:
            meta["prices_as_of"] = prices_as_of or date.today()
    new = Registry(models, meta)
    d = diff(registry, new)
    return new, Diff(d.changes + tuple(notes))


def _listed_price(listed: Price | None, had: Price | None, rates: frozenset[str]) -> Price | None:
    """A listing's price over the one it replaces: a rate the source's format never carries
    keeps its old value; one it carries is the source's, unknown (None) where it lists none."""
    if listed is None or had is None:
        return listed
    return listed.replace(**{k: getattr(had, k) for k in Price.__match_args__ if k not in rates})


def _kept_rates(old: ModelSpec, new: ModelSpec, rates: frozenset[str]) -> list[str]:
    """The rates `new` kept from `old` (the source's format carries none of them) beside
    rates of the same price the source moved: said, as the kept ones may no longer fit
    (a batch rate above a cut input rate), and no refresh ever checks them."""
    out: set[str] = set()
    for was, now in zip(old.prices, new.prices, strict=True):
        if was is None or now is None or was == now:
            continue
        out |= {f"price.{k}" for k in Price.__match_args__
                if k not in rates and getattr(was, k) is not None}  # fmt: skip
    return sorted(out)


def _updated(
    m: ModelSpec, hits: list[tuple[Deployment, Listing]], rates: frozenset[str]
) -> ModelSpec:
    """The model's price follows its first deployment's listing; another deployment keeps
    an own price where its listing differs, and one the source does not list keeps the price
    it had (pinned, so it does not silently inherit the first deployment's new price). The
    rates the source never carries (`rates`: those it does) are kept from the old price."""
    listed = {id(d): h for d, h in hits}
    head = listed.get(id(m.deployments[0])) if m.deployments else None
    # the first deployment listed without a price makes the model unpriced (which a
    # refresh refuses unconfirmed): the old price had been kept and stamped as checked;
    # another keeps its own (see `apply`)
    model_price = m.price if head is None else _listed_price(head.price, m.price, rates)
    deps = []
    for dep in m.deployments:
        had = dep.price if dep.price is not None else m.price
        h = listed.get(id(dep))
        now = (
            _listed_price(h.price, had, rates)
            if h is not None and (h.price is not None or h is head)
            else had
        )
        deps.append(dep.replace(price=None if now == model_price else now))
    windows = [h.context_window for _, h in hits if h.context_window]
    outs = [h.max_output for _, h in hits if h.max_output]
    window = min(windows) if windows else m.context_window
    max_out = min(min(outs) if outs else m.max_output, window)
    first = head or hits[0][1]
    return m.replace(
        price=model_price,
        context_window=window,
        max_output=max_out,
        deployments=tuple(deps),
        # a date the source only assumed (models.dev's "deprecated": the day it was read)
        # never moves a known one: it had moved a past retirement forward at each refresh;
        # a date the source gives does (a postponed retirement)
        deprecation_date=(
            m.deprecation_date
            if first.date_assumed and m.deprecation_date
            else first.deprecation_date or m.deprecation_date
        ),
        successor=first.successor or m.successor,
    )


def _new_model(mid: str, hit: Listing) -> ModelSpec:
    host = HOSTS[hit.host]
    vendor, tokenizer = host.vendor, host.tokenizer
    low = mid.lower()
    if host.name == "openrouter":
        tokenizer = _OPENROUTER_TOKENIZERS.get(hit.model.split("/", 1)[0], tokenizer)
        if re.match(r"openai/gpt-(3\.5|4)(-|$)", hit.model):  # before GPT-4o: cl100k
            tokenizer = "cl100k_base"
    for key, v, t in _FAMILIES:
        if key in low:
            vendor, tokenizer = v, t
            break
    window = hit.context_window or 8192
    dep = Deployment(host.name, host.api, host.base_url, hit.model, host.api_key_env)
    return ModelSpec(
        id=mid,
        provider=vendor if host.name != "openrouter" else hit.model.split("/", 1)[0],
        context_window=window,
        max_output=min(hit.max_output or min(window, 4096), window),
        tokenizer=tokenizer,
        price=hit.price,
        capabilities=hit.capabilities,
        deployments=(dep,),
        deprecation_date=hit.deprecation_date,
        successor=hit.successor,
    )
