"""Models, their deployments and prices: the registry the router compiles into its table.

A registry is immutable. A refresh builds a new one and the router swaps it in one
assignment, so a request never sees half an update. A model without a price is *unpriced*:
its cost is unknown (None), never $0, and it cannot pass a `max_cost` constraint.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import _core
from .errors import ConfigError, UnknownModelError

__all__ = ["Deployment", "LongContext", "ModelSpec", "Price", "Registry"]

_APIS = ("openai", "anthropic")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


def _is_url(url: str) -> bool:
    if any(c.isspace() for c in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not 0..65535)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _num(d: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> float | None:
    v = d.get(key)
    if v is None:
        if required:
            raise ConfigError(f"{where}: {key!r} is required")
        return None
    try:
        ok = not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(float(v))
    except OverflowError:  # 10**400
        ok = False
    if not ok or v < 0:
        raise ConfigError(f"{where}: {key!r} must be a finite number >= 0, got {v!r:.40}")
    return float(v)


@dataclass(frozen=True, slots=True)
class LongContext:
    """Rates for a request whose prompt exceeds `above` tokens: the provider bills the
    whole request at them (Anthropic above 200k, Gemini above 200k, GPT-5.x above 272k)."""

    above: float
    input: float
    output: float


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens. Optional tiers are None when the provider does not offer them.

    `cache_write`: writing a prompt cache (Anthropic: 1.25 x input for 5 minutes);
    unset, writes are billed at the input rate. `long_context`: higher rates above a
    prompt length. Batch rates are kept for reports; interactive calls use the others.
    """

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    batch_input: float | None = None
    batch_output: float | None = None
    long_context: LongContext | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Price:
        known = {
            "input", "output", "cached_input", "cache_write", "batch_input", "batch_output",
            "long_context",
        }  # fmt: skip
        unknown = set(d) - known
        if unknown:
            raise ConfigError(
                f"{where}: unknown price field(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        inp = _num(d, "input", where, required=True)
        out = _num(d, "output", where, required=True)
        assert inp is not None and out is not None
        long = d.get("long_context")
        tier = None
        if long is not None:
            if not isinstance(long, Mapping) or set(long) != {"above", "input", "output"}:
                raise ConfigError(
                    f"{where}.long_context must be a table {{above = TOKENS, input = USD, "
                    "output = USD}}"
                )
            above = _num(long, "above", f"{where}.long_context", required=True)
            li = _num(long, "input", f"{where}.long_context", required=True)
            lo = _num(long, "output", f"{where}.long_context", required=True)
            assert above is not None and li is not None and lo is not None
            tier = LongContext(above, li, lo)
        return cls(
            inp,
            out,
            _num(d, "cached_input", where),
            _num(d, "cache_write", where),
            _num(d, "batch_input", where),
            _num(d, "batch_output", where),
            tier,
        )

    def cost(
        self, tokens_in: float, tokens_out: float, cached_in: float = 0.0, cache_write: float = 0.0
    ) -> float:
        """USD for one request. `tokens_in` counts every prompt token, cached reads and cache
        writes included; each part is billed at its own rate, and the whole request at the
        long-context rates when the prompt is longer than their threshold."""
        inp, out = self.input, self.output
        long = self.long_context
        if long is not None and tokens_in > long.above:
            inp, out = long.input, long.output
        scale = inp / self.input if self.input else 1.0  # tiers scale with the input rate
        cached_rate = (self.cached_input if self.cached_input is not None else self.input) * scale
        write_rate = (self.cache_write if self.cache_write is not None else self.input) * scale
        fresh = max(tokens_in - cached_in - cache_write, 0.0)
        return (
            fresh * inp + cached_in * cached_rate + cache_write * write_rate + tokens_out * out
        ) / 1e6


@dataclass(frozen=True, slots=True)
class Deployment:
    """One place to call a model: an API wire format, a base URL and a key variable."""

    name: str
    api: str
    base_url: str
    model: str
    api_key_env: str | None = None
    price: Price | None = None
    p95_latency_ms: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str, default_model: str) -> Deployment:
        unknown = set(d) - {
            "name",
            "api",
            "base_url",
            "model",
            "api_key_env",
            "price",
            "p95_latency_ms",
        }
        if unknown:
            raise ConfigError(f"{where}: unknown deployment field(s) {sorted(unknown)}")
        api = d.get("api", "openai")
        if api not in _APIS:
            raise ConfigError(f"{where}: api must be one of {list(_APIS)}, got {api!r}")
        base_url = d.get("base_url")
        if not isinstance(base_url, str) or not _is_url(base_url):
            raise ConfigError(
                f"{where}: base_url must be an http(s) URL with a host and no spaces, "
                f"got {base_url!r:.200}"
            )
        env = d.get("api_key_env")
        if env is not None and (not isinstance(env, str) or not _ENV_NAME.match(env)):
            # Never echo it: a key pasted here by mistake must not reach a log.
            raise ConfigError(
                f"{where}: api_key_env must name an environment variable (like "
                "OPENAI_API_KEY), not hold the key itself; put the key in that variable"
            )
        name = d.get("name", api)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: name must be a non-empty string")
        price = d.get("price")
        if price is not None and not isinstance(price, Mapping):
            raise ConfigError(f"{where}: price must be a table like {{input = 1.0, output = 2.0}}")
        return cls(
            name=name,
            api=api,
            base_url=base_url.rstrip("/"),
            model=str(d.get("model", default_model)),
            api_key_env=env,
            price=Price.from_dict(price, f"{where}.price") if price is not None else None,
            p95_latency_ms=_num(d, "p95_latency_ms", where),
        )


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model. `price=None` means unpriced (cost unknown), never free."""

    id: str
    provider: str
    context_window: int
    max_output: int
    tokenizer: str = "o200k_base"
    price: Price | None = None
    capabilities: frozenset[str] = frozenset()
    p95_latency_ms: float | None = None
    quality: Mapping[str, float] = field(default_factory=dict)
    deployments: tuple[Deployment, ...] = ()
    disabled: bool = False

    def __post_init__(self) -> None:
        where = f"model {self.id!r}"
        if not self.id or not isinstance(self.id, str):
            raise ConfigError("a model needs a non-empty string id")
        if not (0 < self.context_window < 2**32 and 0 < self.max_output < 2**32):
            raise ConfigError(f"{where}: context_window and max_output must be in [1, 2**32)")
        if self.max_output > self.context_window:
            raise ConfigError(f"{where}: max_output exceeds context_window")
        if self.tokenizer not in _core.FAMILIES:
            raise ConfigError(
                f"{where}: tokenizer {self.tokenizer!r} unknown; use one of {_core.FAMILIES}"
            )
        bad = set(self.capabilities) - set(_core.CAPABILITIES)
        if bad:
            raise ConfigError(
                f"{where}: unknown capabilities {sorted(bad)}; known: {_core.CAPABILITIES}"
            )
        for task, q in self.quality.items():
            if task not in _core.TASKS:
                raise ConfigError(f"{where}: quality task {task!r} unknown; use {_core.TASKS}")
            if not 0.0 < q < 1.0:
                raise ConfigError(f"{where}: quality[{task!r}] must be in (0, 1), got {q}")
        # Health is kept per "model/deployment": two deployments of one name would share it,
        # and one that is down would take its healthy twin with it.
        seen: set[str] = set()
        for dep in self.deployments:
            if dep.name in seen:
                raise ConfigError(
                    f"{where}: two deployments are named {dep.name!r}; give each a distinct "
                    "'name' (it keys the deployment's health and cooldowns)"
                )
            seen.add(dep.name)

    @property
    def priced(self) -> bool:
        return self.price is not None

    def quality_prior(self, task: str = "general") -> float:
        """Prior P(good) for a task: the task's entry, else `general`, else 0.7."""
        return float(self.quality.get(task, self.quality.get("general", 0.7)))

    def cost(self, tokens_in: float, tokens_out: float, cached_in: float = 0.0) -> float | None:
        """USD for a request, or None when the model is unpriced."""
        return None if self.price is None else self.price.cost(tokens_in, tokens_out, cached_in)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        mid = d.get("id")
        if not isinstance(mid, str) or not mid:
            raise ConfigError(f"every model needs a string 'id'; got {d!r:.200}")
        where = f"model {mid!r}"
        known = {
            "id",
            "provider",
            "context_window",
            "max_output",
            "tokenizer",
            "price",
            "capabilities",
            "p95_latency_ms",
            "quality",
            "deployments",
            "disabled",
        }
        unknown = set(d) - known
        if unknown:
            raise ConfigError(
                f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        for key in ("context_window", "max_output"):
            if not isinstance(d.get(key), int) or isinstance(d.get(key), bool):
                raise ConfigError(f"{where}: {key!r} must be an integer")
        price = d.get("price")
        if price is not None and not isinstance(price, Mapping):
            raise ConfigError(f"{where}: price must be a table like {{input = 1.0, output = 2.0}}")
        deps = d.get("deployments", [])
        if not isinstance(deps, list) or not all(isinstance(x, Mapping) for x in deps):
            raise ConfigError(f"{where}: deployments must be a list of tables")
        disabled = d.get("disabled", False)
        if not isinstance(disabled, bool):
            raise ConfigError(f"{where}: disabled must be true or false, got {disabled!r}")
        caps = d.get("capabilities", [])
        if not isinstance(caps, list | tuple) or not all(isinstance(x, str) for x in caps):
            raise ConfigError(f"{where}: capabilities must be a list of names")
        quality = d.get("quality", {})
        if not isinstance(quality, Mapping) or not all(
            isinstance(q, int | float) and not isinstance(q, bool) for q in quality.values()
        ):
            raise ConfigError(f"{where}: quality must be a table of task = number in (0, 1)")
        return cls(
            id=mid,
            provider=str(d.get("provider", "unknown")),
            context_window=int(d["context_window"]),
            max_output=int(d["max_output"]),
            tokenizer=str(d.get("tokenizer", "o200k_base")),
            price=Price.from_dict(price, f"{where}.price") if price is not None else None,
            capabilities=frozenset(caps),
            p95_latency_ms=_num(d, "p95_latency_ms", where),
            quality=dict(quality),
            deployments=tuple(
                Deployment.from_dict(x, f"{where}.deployments[{i}]", mid)
                for i, x in enumerate(deps)
            ),
            disabled=disabled,
        )


class Registry:
    """An immutable, validated set of models. Build with `from_toml`, `from_dict` or models."""

    __slots__ = ("_by_id", "_models", "meta")

    def __init__(self, models: Iterable[ModelSpec], meta: Mapping[str, Any] | None = None):
        self._models: tuple[ModelSpec, ...] = tuple(models)
        if not self._models:
            raise ConfigError("a registry needs at least one model")
        self._by_id: dict[str, ModelSpec] = {}
        for m in self._models:
            if not isinstance(m, ModelSpec):
                raise ConfigError(f"registry entries must be ModelSpec, got {type(m).__name__}")
            if m.id in self._by_id:
                raise ConfigError(f"model id {m.id!r} appears twice in the registry")
            self._by_id[m.id] = m
        self.meta: dict[str, Any] = dict(meta or {})
        ref = self.meta.get("reference_model")
        if ref is not None and ref not in self._by_id:
            raise ConfigError(f"meta.reference_model {ref!r} is not a model in this registry")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Registry:
        if not isinstance(d, Mapping):
            raise ConfigError(f"a registry is a table of [[model]] entries, got {type(d).__name__}")
        unknown = set(d) - {"model", "models", "meta"}
        if unknown:  # a misspelt [[modle]] would otherwise drop its models without a word
            raise ConfigError(
                f"registry: unknown top-level table(s) {sorted(unknown)}; "
                "known: [[model]] and [meta]"
            )
        models = d.get("model", d.get("models"))
        if not isinstance(models, list):
            raise ConfigError("a registry needs a list of models under 'model' ([[model]] in TOML)")
        for i, m in enumerate(models):
            if not isinstance(m, Mapping):
                raise ConfigError(f"model[{i}] must be a table, got {type(m).__name__}")
        meta = d.get("meta")
        if meta is not None and not isinstance(meta, Mapping):
            raise ConfigError(f"meta must be a table, got {type(meta).__name__}")
        return cls((ModelSpec.from_dict(m) for m in models), meta)

    @classmethod
    def from_toml(cls, path: str | Path) -> Registry:
        p = Path(path)
        try:
            with p.open("rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"registry file {p} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"registry file {p} is not valid TOML: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def default(cls) -> Registry:
        """The bundled registry of common models with dated public list prices."""
        text = resources.files("satisfice").joinpath("data/registry.toml").read_text("utf-8")
        return cls.from_dict(tomllib.loads(text))

    def __len__(self) -> int:
        return len(self._models)

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._models)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._by_id

    def __getitem__(self, model_id: str) -> ModelSpec:
        try:
            return self._by_id[model_id]
        except KeyError:
            raise UnknownModelError(
                f"unknown model {model_id!r}; the registry has: {', '.join(self.ids)}"
            ) from None

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self._models]

    @property
    def unpriced(self) -> list[str]:
        """Models whose cost is unknown: they never pass a max_cost constraint."""
        return [m.id for m in self._models if m.price is None]

    def index(self, model_id: str) -> int:
        self[model_id]  # raises UnknownModelError with the list of known ids
        return self.ids.index(model_id)

    @property
    def reference(self) -> ModelSpec:
        """The most capable model: `meta.reference_model`, else the highest general prior."""
        ref = self.meta.get("reference_model")
        if ref is not None:
            return self._by_id[ref]
        priced = [m for m in self._models if m.priced] or list(self._models)
        return max(priced, key=lambda m: m.quality_prior())

    def replace(self, *models: ModelSpec) -> Registry:
        """A new registry with these models added or replacing those with the same id."""
        new = {m.id: m for m in models}
        kept = [new.pop(m.id, m) for m in self._models]
        return Registry([*kept, *new.values()], self.meta)
