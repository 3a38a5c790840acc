"""Models, their deployments and prices: the registry the router compiles into its table.

A registry is immutable. A refresh builds a new one and the router swaps it in one
assignment, so a request never sees half an update. A model without a price is *unpriced*:
its cost is unknown (None), never $0, and it cannot pass a `max_cost` constraint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime

from . import _core
from ._bounded import MAX_FILE_BYTES, read_bounded
from ._frozen import Value, _set
from ._real import as_count, as_real
from .errors import ConfigError, UnknownModelError, quoted

TYPE_CHECKING = False  # not typing's: Router() does not import typing (cold_start.py)
if TYPE_CHECKING:  # pathlib is imported where a path is opened: Router() does not need it
    from pathlib import Path
    from typing import Any

__all__ = ["Deployment", "LongContext", "ModelSpec", "Price", "Registry"]

_APIS = ("openai", "anthropic")


def is_env_name(value: object) -> bool:
    """Whether `value` names an environment variable (letters, digits and _, not led by a
    digit), and does not hold a key instead: a name is echoed in errors, a key must never
    be. A run of 20+ letters and digits mixed is a key's random part (gsk_..., a hex master
    key), not a word of a name. (No regex: compiling one cost a cold start 0.3 ms.)"""
    if not isinstance(value, str) or not 0 < len(value) <= 128 or not value.isascii():
        return False
    letters = value.replace("_", "")
    if value[0].isdigit() or (letters and not letters.isalnum()):
        return False
    return not any(
        len(run) >= 20 and not run.isalpha() and not run.isdigit() for run in value.split("_")
    )


def _is_url(url: str) -> bool:
    if any(c.isspace() for c in url):
        return False
    # the common case, every bundled URL: a plain ASCII host name, no port, no user
    scheme, sep, rest = url.partition("://")
    host = rest.partition("/")[0].replace(".", "").replace("-", "")
    if sep and scheme in ("http", "https") and host.isascii() and host.isalnum():
        return True
    from urllib.parse import urlsplit  # here: it costs a fresh Router() 2.4 ms

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not 0..65535)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# USD per 1M tokens (or per call): 1000x the dearest model listed anywhere. Past it a rate is
# a typo or a unit mistake, and near 1e308 a cost overflowed to inf ("est_cost_usd": Infinity).
_MAX_RATE = 1e5


def _num(
    d: Mapping[str, Any],
    key: str,
    where: str,
    *,
    required: bool = False,
    most: float = math.inf,
) -> float | None:
    v = d.get(key)
    if v is None:
        if required:
            raise ConfigError(f"{where}: {key!r} is required")
        return None
    f = as_real(v)
    if f is None or f < 0 or f > most:
        bound = ">= 0" if math.isinf(most) else f"from 0 to {most:g}"
        raise ConfigError(f"{where}: {key!r} must be a finite number {bound}, got {v!r:.40}")
    return f


class LongContext(Value):
    """Rates for a request whose prompt exceeds `above` tokens: the provider bills the
    whole request at them (Anthropic above 200k, Gemini above 200k, GPT-5.x above 272k)."""

    __match_args__ = __slots__ = ("above", "input", "output")
    above: float
    input: float
    output: float

    def __init__(self, above: float, input: float, output: float) -> None:
        _set(self, "above", above)
        _set(self, "input", input)
        _set(self, "output", output)
        self.__post_init__()

    def __post_init__(self) -> None:
        for k in ("above", "input", "output"):
            most = math.inf if k == "above" else _MAX_RATE
            _num({k: getattr(self, k)}, k, "LongContext", required=True, most=most)
            _set(self, k, float(getattr(self, k)))  # as Price's


def _tiers(v: Any, where: str) -> tuple[LongContext, ...]:
    """`long_context` is one table {above, input, output} or a list of them."""
    items = [v] if isinstance(v, Mapping) else v
    if not isinstance(items, list | tuple) or not items:
        items = [None]
    out = []
    for i, t in enumerate(items):
        w = f"{where}.long_context" + (f"[{i}]" if len(items) > 1 else "")
        if not isinstance(t, Mapping) or set(t) != {"above", "input", "output"}:
            raise ConfigError(
                f"{w} must be a table {{above = TOKENS, input = USD, output = USD}} "
                "(or a list of them, one per tier)"
            )
        above = _num(t, "above", w, required=True)
        li = _num(t, "input", w, required=True, most=_MAX_RATE)
        lo = _num(t, "output", w, required=True, most=_MAX_RATE)
        assert above is not None and li is not None and lo is not None
        out.append(LongContext(above, li, lo))
    return tuple(out)  # sorted and checked by Price


#: Optional per-1M-token rates, beside input and output, in the order a TOML writer keeps.
_OPTIONAL_RATES = (
    "cached_input",  # a prompt-cache read
    "cache_write",  # a prompt-cache write, 5-minute lifetime (Anthropic 1.25 x input)
    "cache_write_1h",  # a prompt-cache write, 1-hour lifetime (Anthropic 2 x input)
    "reasoning",  # reasoning tokens, when billed apart from output
    "batch_input",
    "batch_output",
    "priority_input",
    "priority_output",
    "flex_input",
    "flex_output",
)


class Price(Value):
    """USD per 1M tokens; `per_request` in USD per call, `per_search` in USD per web search
    (Anthropic's web search tool). Optional rates are None when the provider does not offer
    them (a cache read is then billed at the input rate, reasoning at the output rate; a
    search then has no price, and a call that searched is unpriced, never free).

    `long_context`: tiers of higher rates above a prompt length, lowest first; the highest
    tier the prompt exceeds applies to the whole request. Batch, priority and flex rates are
    carried for reports and for callers who pick a service tier; interactive calls bill the
    standard ones.
    """

    __match_args__ = __slots__ = (
        "input",
        "output",
        "cached_input",
        "cache_write",
        "batch_input",
        "batch_output",
        "long_context",
        "cache_write_1h",
        "reasoning",
        "priority_input",
        "priority_output",
        "flex_input",
        "flex_output",
        "per_request",
        "per_search",
    )
    input: float
    output: float
    cached_input: float | None
    cache_write: float | None
    batch_input: float | None
    batch_output: float | None
    long_context: tuple[LongContext, ...]
    cache_write_1h: float | None
    reasoning: float | None
    priority_input: float | None
    priority_output: float | None
    flex_input: float | None
    flex_output: float | None
    per_request: float | None
    per_search: float | None

    def __init__(
        self,
        input: float,
        output: float,
        cached_input: float | None = None,
        cache_write: float | None = None,
        batch_input: float | None = None,
        batch_output: float | None = None,
        long_context: tuple[LongContext, ...] = (),
        cache_write_1h: float | None = None,
        reasoning: float | None = None,
        priority_input: float | None = None,
        priority_output: float | None = None,
        flex_input: float | None = None,
        flex_output: float | None = None,
        per_request: float | None = None,
        per_search: float | None = None,
    ) -> None:
        _set(self, "input", input)
        _set(self, "output", output)
        _set(self, "cached_input", cached_input)
        _set(self, "cache_write", cache_write)
        _set(self, "batch_input", batch_input)
        _set(self, "batch_output", batch_output)
        _set(self, "long_context", long_context)
        _set(self, "cache_write_1h", cache_write_1h)
        _set(self, "reasoning", reasoning)
        _set(self, "priority_input", priority_input)
        _set(self, "priority_output", priority_output)
        _set(self, "flex_input", flex_input)
        _set(self, "flex_output", flex_output)
        _set(self, "per_request", per_request)
        _set(self, "per_search", per_search)
        self.__post_init__()

    def __post_init__(self) -> None:
        # Built by hand too, not only from a registry file: a NaN or negative rate would
        # bill NaN or negative USD (and pass any cost cap).
        for k in ("input", "output", "per_request", "per_search", *_OPTIONAL_RATES):
            v = getattr(self, k)
            _num({k: v}, k, "Price", required=k in ("input", "output"), most=_MAX_RATE)
            if v is not None:  # Price(3, 15): floats, as a file's are (a refresh's checks
                _set(self, k, float(v))  # read floats: an int $3 had moved to $3000 unasked)
        if not isinstance(self.long_context, tuple) or not all(
            isinstance(t, LongContext) for t in self.long_context
        ):
            raise ConfigError("Price: long_context must be a tuple of LongContext tiers")
        # lowest first, whatever order they were given in: the routing table takes the
        # first as the threshold (tiers given out of order in code had planned a 5k-token
        # prompt at the base rates, and a cost cap let a bill of 5x through)
        tiers = tuple(sorted(self.long_context, key=lambda t: t.above))
        if len({t.above for t in tiers}) != len(tiers):
            raise ConfigError("long_context: two tiers start at the same prompt length")
        _set(self, "long_context", tiers)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Price:
        known = {"input", "output", "long_context", "per_request", "per_search", *_OPTIONAL_RATES}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(
                f"{where}: unknown price field(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        inp = _num(d, "input", where, required=True, most=_MAX_RATE)
        out = _num(d, "output", where, required=True, most=_MAX_RATE)
        assert inp is not None and out is not None
        long = d.get("long_context")
        rates = {k: _num(d, k, where, most=_MAX_RATE) for k in _OPTIONAL_RATES}
        try:
            return cls(
                inp,
                out,
                long_context=_tiers(long, where) if long is not None else (),
                per_request=_num(d, "per_request", where, most=_MAX_RATE),
                per_search=_num(d, "per_search", where, most=_MAX_RATE),
                **rates,
            )
        except ConfigError as e:  # a tier's own error names its place already
            raise ConfigError(str(e) if str(e).startswith(where) else f"{where}.{e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form `from_dict` reads (unset rates left out)."""
        d: dict[str, Any] = {"input": self.input, "output": self.output}
        for k in _OPTIONAL_RATES:
            if (v := getattr(self, k)) is not None:
                d[k] = v
        if self.per_request is not None:
            d["per_request"] = self.per_request
        if self.per_search is not None:
            d["per_search"] = self.per_search
        if self.long_context:
            tiers = [{"above": t.above, "input": t.input, "output": t.output}
                     for t in self.long_context]  # fmt: skip
            d["long_context"] = tiers[0] if len(tiers) == 1 else tiers
        return d

    def tier(self, tokens_in: float) -> LongContext | None:
        """The long-context tier a prompt of `tokens_in` tokens is billed at, if any."""
        hit = None
        for t in self.long_context:
            if tokens_in > t.above:
                hit = t
        return hit

    def output_within(
        self,
        tokens_in: float,
        usd: float,
        *,
        cache_write: bool = False,
        cache_write_1h: bool = False,
    ) -> int | None:
        """The most output tokens a request with at most `tokens_in` prompt tokens (every one
        of them a cache write, when asked) can be billed for and cost at most `usd`: what a
        cost cap allows an answer on the wire. Priced by `cost` itself, an output token at
        the dearer of the text and reasoning rates, the prompt as `_dearest` bills it. None:
        output is free."""
        most: int | None = None
        for shape in self._dearest(tokens_in, cache_write, cache_write_1h):
            n, read, write, write_1h = shape
            prompt = self.cost(n, 0, read, write, cache_write_1h=write_1h)
            per_token = self._dearer(shape, 1) - prompt
            if per_token <= 0:
                continue
            q = (usd - prompt) / per_token
            if not math.isfinite(q):  # a cap so large the arithmetic overflows: no bound
                continue
            # (a bound priced from this count, as a budget's hold is, divides back to a hair
            # under it in floats: 999.9999999999 tokens had sent max_tokens 999, not 1000)
            k = max(math.floor(q * (1 + 1e-12)), 0)
            most = k if most is None else min(most, k)
        return most

    def most(
        self,
        tokens_in: float,
        tokens_out: float,
        *,
        cache_write: bool = False,
        cache_write_1h: bool = False,
    ) -> float:
        """The most a request with at most `tokens_in` prompt tokens (a cache write, when
        asked) and `tokens_out` output tokens may be billed: its output at the dearer of the
        text and reasoning rates, its prompt as `_dearest` bills it."""
        shapes = self._dearest(tokens_in, cache_write, cache_write_1h)
        return max(self._dearer(shape, tokens_out) for shape in shapes)

    def _dearer(self, shape: tuple[float, float, float, float], tokens_out: float) -> float:
        """`cost` of a prompt billed as `shape` (`_dearest`'s) and `tokens_out` output
        tokens, at the dearer of the text and reasoning rates."""
        n, read, write, write_1h = shape
        usd = self.cost(n, tokens_out, read, write, cache_write_1h=write_1h)
        if self.reasoning is not None:  # (without its rate, reasoning is billed as text)
            usd = max(usd, self.cost(n, tokens_out, read, write, cache_write_1h=write_1h,
                                     reasoning_tokens=tokens_out))  # fmt: skip
        return usd

    def _dearest(
        self, tokens_in: float, cache_write: bool, cache_write_1h: bool
    ) -> list[tuple[float, float, float, float]]:
        """The ways a prompt of at most `tokens_in` tokens may be billed that can cost the
        most, as `cost`'s (tokens_in, cached_in, cache_write, cache_write_1h). A cap's bound
        on a prompt is often above its count (the byte count), and rates need not rise with
        it: a long-context tier cheaper than the rates below it bills a prompt just under its
        threshold more than one at the bound, a cache read dearer than input bills the
        prompt read from the cache more, and a write cheaper than input bills it more when
        no write is made (a $0.01 cap had been billed $0.04 by a 357-token prompt priced at
        its 1,256-token bound's tier). The bound's own way comes first."""
        read_dearer = self.cached_input is not None and self.cached_input > self.input
        shapes = []
        for n in (tokens_in, *(t.above for t in self.long_context if t.above < tokens_in)):
            shapes.append((n, 0.0, n if cache_write else 0.0, n if cache_write_1h else 0.0))
            if cache_write or cache_write_1h:
                shapes.append((n, 0.0, 0.0, 0.0))
            if read_dearer:
                shapes.append((n, n, 0.0, 0.0))
        return shapes

    def cost(
        self,
        tokens_in: float,
        tokens_out: float,
        cached_in: float = 0.0,
        cache_write: float = 0.0,
        *,
        cache_write_1h: float = 0.0,
        reasoning_tokens: float = 0.0,
    ) -> float:
        """USD for one request. `tokens_in` counts every prompt token, cached reads and cache
        writes included; `tokens_out` counts every output token, reasoning included. Each
        part is billed at its own rate, and the whole request at a long-context tier's rates
        when the prompt is longer than its threshold."""
        parts = cached_in or cache_write or cache_write_1h or reasoning_tokens
        if not (parts or self.long_context) and tokens_in >= 0 and tokens_out >= 0:
            # the usual call, its prompt and output alone: the sum below without its parts
            # at 0 tokens (each adds 0.0), in the same order, so bit for bit the same (about
            # 620 of a call's 3,100 instructions spared, callgrind)
            return (tokens_in * self.input + tokens_out * self.output) / 1e6 + (
                self.per_request or 0.0
            )
        inp, out = self.input, self.output
        scale = 1.0
        if self.long_context:
            long = self.tier(tokens_in)
            if long is not None:
                inp, out = long.input, long.output
                scale = inp / self.input if self.input else 1.0  # tiers scale with the input rate
        fresh = tokens_in - cached_in - cache_write - cache_write_1h
        fresh = 0.0 if fresh < 0.0 else fresh  # (max(fresh, 0.0), without max()'s call)
        # Only the parts a call has are priced (most calls have no cache reads, writes or
        # reasoning): a part at 0 tokens adds 0.0, so skipping it leaves the sum, summed in
        # the same order, bit for bit what it was, at half the work per call. (Rates are
        # finite: a 0-token part at any rate is 0.0.)
        usd = fresh * inp
        if cached_in:
            usd += cached_in * (
                (self.cached_input if self.cached_input is not None else self.input) * scale
            )
        if cache_write or cache_write_1h:
            write_rate = (self.cache_write if self.cache_write is not None else self.input) * scale
            usd += cache_write * write_rate
            if cache_write_1h:
                write_1h = (
                    self.cache_write_1h * scale if self.cache_write_1h is not None else write_rate
                )
                usd += cache_write_1h * write_1h
        reasoning = min(reasoning_tokens, tokens_out) if self.reasoning is not None else 0.0
        usd += (tokens_out - reasoning) * out
        if reasoning and self.reasoning is not None:  # (`reasoning` is 0 without the rate)
            usd += reasoning * self.reasoning * (out / self.output if self.output else 1.0)
        usd /= 1e6
        return usd + (self.per_request or 0.0)


#: Query parameters of a base URL whose values are credentials (a gateway's `?key=...`).
_SECRET_PARAMS = ("key", "token", "secret", "sig", "password", "auth", "credential")


def url_secrets(url: str, userinfo: bool = True) -> list[str]:
    """The credentials a base URL carries in its query (`?key=...`, `?access_token=...`)
    and, with `userinfo`, before its host (`user:password@`: the password, and the pair a
    Basic header encodes; `token@` alone: the token), as written and as read
    (percent-encoded, `+` for a space), which a repr masks and the provider scrubs from what
    the upstream sends back, as it does a key's."""
    if "?" not in url and "@" not in url:
        return []
    from urllib.parse import unquote, unquote_plus, urlsplit

    out: list[str] = []
    try:
        parts = urlsplit(url)
        password, user = parts.password, parts.username
    except ValueError:  # (a port that is no number: no credentials read from it)
        return out
    if userinfo and password:
        pair = f"{unquote(user or '')}:{unquote(password)}"
        out += dict.fromkeys([password, unquote(password), pair])
    elif userinfo and user and len(user) >= 16:  # a token as the user name, as some gateways
        out += dict.fromkeys([user, unquote(user)])  # take one (a short name is no token)
    for pair in parts.query.split("&") if "?" in url else ():
        name, _, value = pair.partition("=")
        if value and any(p in unquote_plus(name).lower() for p in _SECRET_PARAMS):
            out += dict.fromkeys([value, unquote_plus(value), value.replace("+", " ")])
    return out


class Deployment(Value):
    """One place to call a model: an API wire format, a base URL and a key variable."""

    __match_args__ = __slots__ = (
        "name",
        "api",
        "base_url",
        "model",
        "api_key_env",
        "price",
        "p95_latency_ms",
    )
    name: str
    api: str
    base_url: str
    model: str
    api_key_env: str | None
    price: Price | None
    p95_latency_ms: float | None

    def __init__(
        self,
        name: str,
        api: str,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        price: Price | None = None,
        p95_latency_ms: float | None = None,
    ) -> None:
        # checked here, not only from a file: one built in code (or .replace()d) had taken a
        # key pasted as api_key_env and echoed it in every error naming the variable
        if api not in _APIS:
            # echoed only when it reads as a name: a key pasted here must not reach a log
            got = f", got {api!r:.40}" if is_env_name(api) else ""
            raise ConfigError(f"api must be one of {list(_APIS)}{got}")
        if not isinstance(base_url, str) or not _is_url(base_url):
            # its start only: a key pasted in the wrong field must not reach a log
            got = f"{base_url[:12]!r}..." if isinstance(base_url, str) else repr(base_url)[:40]
            raise ConfigError(
                f"base_url must be an http(s) URL with a host and no spaces, got {got}"
            )
        if api_key_env is not None and not is_env_name(api_key_env):
            # Never echo it: a key pasted here by mistake must not reach a log.
            raise ConfigError(
                "api_key_env must name an environment variable (like OPENAI_API_KEY), not "
                "hold the key itself; put the key in that variable"
            )
        if not isinstance(name, str) or not name:
            raise ConfigError("name must be a non-empty string")
        if "/" in name:  # health is keyed "MODEL/NAME", and a model id may hold a "/"
            raise ConfigError(
                f"deployment name {name!r:.80} may not hold a '/': health is kept per "
                "MODEL/NAME, which model 'a' deployment 'b/c' would share with model 'a/b' "
                "deployment 'c'"
            )
        if not isinstance(model, str) or not model:
            raise ConfigError(f"model (the id sent on the wire) must be a non-empty string, "
                              f"got {model!r:.40}")  # fmt: skip
        _printable(name, "name")
        _printable(model, "model (the id sent on the wire)")
        if price is not None and not isinstance(price, Price):
            raise ConfigError(f"price must be a Price, got {type(price).__name__}")
        p95 = None if p95_latency_ms is None else as_real(p95_latency_ms)
        if p95_latency_ms is not None and (p95 is None or p95 < 0):
            raise ConfigError(
                f"p95_latency_ms must be a finite number >= 0, got {p95_latency_ms!r:.40}"
            )
        _set(self, "name", name)
        _set(self, "api", api)
        _set(self, "base_url", base_url.rstrip("/"))
        _set(self, "model", model)
        _set(self, "api_key_env", api_key_env)
        _set(self, "price", price)
        _set(self, "p95_latency_ms", p95)

    def __repr__(self) -> str:
        # a base URL may carry a password (https://user:pass@host): never in a repr, which
        # logs and tracebacks print (the file it came from keeps it, as `to_dict` does)
        from urllib.parse import urlsplit  # here, as in _is_url

        out = super().__repr__()
        parts = urlsplit(self.base_url)
        shown = self.base_url
        query = parts.query
        for secret in url_secrets(self.base_url, userinfo=False):  # (?key=...): there only
            query = query.replace(secret, "***")  # (the user info is masked whole below)
        netloc = parts.netloc
        if parts.password:
            netloc = netloc.replace(f":{parts.password}@", ":***@")
        elif parts.username:  # a token as the user name
            netloc = "***@" + netloc.rpartition("@")[2]
        if (netloc, query) != (parts.netloc, parts.query):
            shown = parts._replace(netloc=netloc, query=query).geturl()
        return out.replace(repr(self.base_url), repr(shown), 1)

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
        price = d.get("price")
        if price is not None and not isinstance(price, Mapping):
            raise ConfigError(f"{where}: price must be a table like {{input = 1.0, output = 2.0}}")
        api = d.get("api", "openai")
        try:
            return cls(
                name=d.get("name", api),
                api=api,
                base_url=d.get("base_url"),  # type: ignore[arg-type]
                model=d.get("model", default_model),
                api_key_env=d.get("api_key_env"),
                price=Price.from_dict(price, f"{where}.price") if price is not None else None,
                p95_latency_ms=d.get("p95_latency_ms"),
            )
        except ConfigError as e:
            if str(e).startswith(where):
                raise
            raise ConfigError(f"{where}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "api": self.api, "base_url": self.base_url}
        if self.api_key_env is not None:
            d["api_key_env"] = self.api_key_env
        d["model"] = self.model
        if self.price is not None:
            d["price"] = self.price.to_dict()
        if self.p95_latency_ms is not None:
            d["p95_latency_ms"] = self.p95_latency_ms
        return d


class Effort(Value):
    """One reasoning-effort level of a model: the reasoning tokens it spends per call on top
    of the answer (billed at the reasoning rate, else the output rate) and the change it
    makes to the model's P(good) priors."""

    __match_args__ = __slots__ = ("reasoning_tokens", "quality")
    reasoning_tokens: int
    quality: float

    def __init__(self, reasoning_tokens: int, quality: float = 0.0) -> None:
        _set(self, "reasoning_tokens", reasoning_tokens)
        _set(self, "quality", quality)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Effort:
        if not isinstance(d, Mapping) or not set(d) <= {"reasoning_tokens", "quality"}:
            raise ConfigError(f"{where} must be a table {{reasoning_tokens = N, quality = DELTA}}")
        n = d.get("reasoning_tokens")
        q = d.get("quality", 0.0)
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2**24:
            raise ConfigError(f"{where}.reasoning_tokens must be an integer >= 0, got {n!r:.40}")
        if isinstance(q, bool) or not isinstance(q, int | float) or not -0.5 < q < 0.5:
            raise ConfigError(f"{where}.quality must be a number in (-0.5, 0.5), got {q!r:.40}")
        return cls(n, float(q))


#: Anthropic's smallest extended-thinking budget_tokens.
ANTHROPIC_MIN_THINKING = 1024


def thinking_budget(
    effort: str | None, reasoning_tokens: int | None, cap: int | None = None
) -> int:
    """Extended thinking's budget_tokens for an effort variant (0: no thinking). The wire
    max_tokens is the answer's plus this, as the Messages API spends it within max_tokens.
    `cap`: the caller's most thinking tokens (`Constraints.max_reasoning_tokens`, what
    Anthropic's `thinking.budget_tokens` says), the budget sent when it is the smaller
    (and one Anthropic takes)."""
    if effort is None or effort == "none" or not reasoning_tokens:
        return 0
    budget = max(reasoning_tokens, ANTHROPIC_MIN_THINKING)
    if cap is not None and ANTHROPIC_MIN_THINKING <= cap < budget:
        return cap
    return budget


def lowered_budget(m: ModelSpec, most: int, registry: Registry) -> bool:
    """Whether row `m`, over a caller's `most` thinking tokens, is sent a budget of `most`
    instead: a row thinking within a budget on Anthropic's API (which takes any budget
    from 1,024), the smallest of its model's. A caller's budget_tokens under a model's
    smallest row (1,024 to 2,047 on Claude Haiku 4.5) had no row to call, a 400 that
    Anthropic's own API does not give; the rows above it are not lowered, which had
    made them the one request at a quality they do not have at that budget."""
    if (
        most < ANTHROPIC_MIN_THINKING
        or m.base is None
        or m.thinking is not None  # adaptive: the model decides, no budget to lower
        or not m.deployments
        or any(d.api != "anthropic" for d in m.deployments)
    ):
        return False
    own = thinking_budget(m.effort, m.reasoning_tokens)
    if not own or m.base not in registry:
        return False
    base = registry[m.base]
    return own == min(
        (b for name in base.efforts
         if (b := thinking_budget(name, base.efforts[name].reasoning_tokens))),
        default=0,
    )  # fmt: skip


#: Effort names the APIs accept (OpenAI's reasoning_effort up to "xhigh"; Anthropic's
#: output_config.effort up to "max", or a token budget), lowest first.
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
#: The efforts a model with adaptive thinking takes (`output_config.effort`: "max" from
#: Claude Opus 4.6 and Sonnet 4.6 on, "xhigh" from Opus 4.7 on; "none" is the row sent no
#: thinking).
ADAPTIVE_EFFORTS = frozenset(("none", "low", "medium", "high", "xhigh", "max"))


def _printable(text: str, where: str) -> None:
    """Refuse a registry's text (a deployment's name and wire model, a model's provider and
    successor) holding control or format characters or a lone surrogate, as an id is
    refused: an escape code reached `registry diff`'s terminal as it was, and a surrogate,
    which no UTF-8 file or request body takes, failed `registry update` or every call to
    the model later, raw (blaming the caller's messages)."""
    if not text.isprintable():
        raise ConfigError(
            f"{where} may not hold control or format characters, odd spaces or lone "
            f"surrogates, got {text!r:.60}"
        )


def _bad_id(mid: str) -> str | None:
    """Why `mid` cannot be a model's id, or None. An id is what callers send as `model`,
    metrics label and logs print: blank ones, spaces at an end, control or format
    characters (a NUL, a right-to-left override that prints it reversed) had loaded and
    routed; and "auto" is the name that routes (`satisfice serve`), which a model had
    taken over."""
    if mid == "auto":
        return '"auto" is the name that routes (model="auto"); give the model another id'
    if mid != mid.strip():
        return "an id may not start or end with spaces"
    if not mid.isprintable():  # (format characters are not printable either)
        return "an id may not hold control or format characters or odd spaces"
    return None


#: The least rate (USD per 1M tokens) no warning is given for: no listed model charges
#: less than a cent per million, and a per-token price is a millionth of one that does.
_LEAST_RATE = 0.001


def _json_once(text: str) -> Any:
    """JSON whose objects name each key once, as TOML requires (a repeated "input" had
    silently taken the last of two prices)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise ConfigError(f"the key {k!r:.80} is given twice in one object")
            out[k] = v
        return out

    return json.loads(text, object_pairs_hook=pairs)


class ModelSpec(Value):
    """One model. `price=None` means unpriced (cost unknown), never free."""

    __match_args__ = __slots__ = (
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
        "deprecation_date",
        "successor",
        "efforts",
        "effort",
        "base",
        "reasoning_tokens",
        "thinking",
    )
    id: str
    provider: str
    context_window: int
    max_output: int
    tokenizer: str
    price: Price | None
    capabilities: frozenset[str]
    p95_latency_ms: float | None
    quality: Mapping[str, float]
    deployments: tuple[Deployment, ...]
    disabled: bool
    deprecation_date: date | None  # the provider retires it on this day
    successor: str | None  # the model the provider names as its replacement
    # Reasoning-effort levels. The registry adds one routable variant per level, with id
    # "MODEL@LEVEL", `effort` set and `base` naming this model (see Registry).
    efforts: Mapping[str, Effort]
    effort: str | None
    base: str | None
    reasoning_tokens: int  # a variant's expected reasoning tokens per call
    # How an Anthropic model's effort rows think: None, extended thinking with a token
    # budget; "adaptive", adaptive thinking at the row's effort (`output_config.effort`),
    # which Claude Opus 4.7 alone takes (a budget is a 400 there) and Claude 4.6 prefers
    thinking: str | None

    def __init__(
        self,
        id: str,
        provider: str,
        context_window: int,
        max_output: int,
        tokenizer: str = "o200k_base",
        price: Price | None = None,
        capabilities: frozenset[str] = frozenset(),
        p95_latency_ms: float | None = None,
        quality: Mapping[str, float] | None = None,
        deployments: tuple[Deployment, ...] = (),
        disabled: bool = False,
        deprecation_date: date | None = None,
        successor: str | None = None,
        efforts: Mapping[str, Effort] | None = None,
        effort: str | None = None,
        base: str | None = None,
        reasoning_tokens: int = 0,
        thinking: str | None = None,
    ) -> None:
        _set(self, "id", id)
        _set(self, "provider", provider)
        _set(self, "context_window", context_window)
        _set(self, "max_output", max_output)
        _set(self, "tokenizer", tokenizer)
        _set(self, "price", price)
        _set(self, "capabilities", capabilities)
        _set(self, "p95_latency_ms", p95_latency_ms)
        _set(self, "quality", {} if quality is None else quality)
        _set(self, "deployments", deployments)
        _set(self, "disabled", disabled)
        _set(self, "deprecation_date", deprecation_date)
        _set(self, "successor", successor)
        _set(self, "efforts", {} if efforts is None else efforts)
        _set(self, "effort", effort)
        _set(self, "base", base)
        _set(self, "reasoning_tokens", reasoning_tokens)
        _set(self, "thinking", thinking)
        self.__post_init__()

    def __post_init__(self) -> None:
        where = f"model {self.id!r}"
        if not self.id or not isinstance(self.id, str):
            raise ConfigError("a model needs a non-empty string id")
        if (why := _bad_id(self.id)) is not None:  # built from a file, in code or .replace()d
            raise ConfigError(f"model id {self.id!r:.80}: {why}")
        for k in ("context_window", "max_output"):
            v = getattr(self, k)
            n = as_count(v)
            if n is None or not 0 < n < 2**32:
                raise ConfigError(f"{where}: {k} must be an integer in [1, 2**32), got {v!r:.40}")
            object.__setattr__(self, k, n)
        if self.max_output > self.context_window:
            raise ConfigError(f"{where}: max_output exceeds context_window")
        # the fields a file's reader checks as it parses, checked for a model built in code
        # (or .replace()d) too: a str price or a non-Deployment failed later, raw
        if not isinstance(self.provider, str):
            raise ConfigError(f"{where}: provider must be a string, got {self.provider!r:.40}")
        if self.successor is not None and not isinstance(self.successor, str):
            raise ConfigError(f"{where}: successor must be a model id, got {self.successor!r:.40}")
        for k in ("provider", "successor"):
            if (text := getattr(self, k)) is not None:
                _printable(text, f"{where}: {k}")
        if self.price is not None and not isinstance(self.price, Price):
            raise ConfigError(f"{where}: price must be a Price or None (unpriced), got "
                              f"{type(self.price).__name__}")  # fmt: skip
        if isinstance(self.deployments, list):  # as written by hand: kept as a tuple
            object.__setattr__(self, "deployments", tuple(self.deployments))
        if not isinstance(self.deployments, tuple) or not all(
            isinstance(d, Deployment) for d in self.deployments
        ):
            raise ConfigError(f"{where}: deployments must be a tuple of Deployment")
        p95 = self.p95_latency_ms
        if p95 is not None and ((f := as_real(p95)) is None or f < 0):
            raise ConfigError(
                f"{where}: p95_latency_ms must be a finite number >= 0, got {p95!r:.40}"
            )
        if not isinstance(self.disabled, bool):
            raise ConfigError(f"{where}: disabled must be True or False, got {self.disabled!r:.40}")
        if self.thinking not in (None, "adaptive"):
            raise ConfigError(f"{where}: thinking must be \"adaptive\" or left out (a "
                              f"thinking budget), got {self.thinking!r:.40}")  # fmt: skip
        if self.thinking == "adaptive" and (odd := sorted(set(self.efforts) - ADAPTIVE_EFFORTS)):
            raise ConfigError(f"{where}: adaptive thinking takes the efforts "
                              f"{sorted(ADAPTIVE_EFFORTS)}, not {odd}")  # fmt: skip
        if not isinstance(self.efforts, Mapping) or not all(
            k in EFFORTS and isinstance(e, Effort) for k, e in self.efforts.items()
        ):
            raise ConfigError(f"{where}: efforts must map levels {EFFORTS} to Effort values")
        n, given = as_count(self.reasoning_tokens), self.reasoning_tokens  # numpy's ints too
        if n is None or n < 0:
            raise ConfigError(f"{where}: reasoning_tokens must be an integer >= 0, got {given!r}")
        object.__setattr__(self, "reasoning_tokens", n)
        if self.tokenizer not in _core.FAMILIES:
            raise ConfigError(
                f"{where}: tokenizer {self.tokenizer!r} unknown; use one of {_core.FAMILIES}"
            )
        bad = set(self.capabilities) - set(_core.CAPABILITIES)
        if bad:
            raise ConfigError(
                f"{where}: unknown capabilities {sorted(bad)}; known: {_core.CAPABILITIES}"
            )
        quality = {}
        for task, q in self.quality.items():
            if task not in _core.TASKS:
                raise ConfigError(f"{where}: quality task {task!r} unknown; use {_core.TASKS}")
            f = as_real(q)
            if f is None or not 0.0 < f < 1.0:
                raise ConfigError(f"{where}: quality[{task!r}] must be in (0, 1), got {q!r:.40}")
            quality[task] = f
        object.__setattr__(self, "quality", quality)  # plain floats, as JSON and TOML take
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
    def prices(self) -> list[Price | None]:
        """What each of the model's deployments bills at (its own price, else the model's)."""
        return [d.price if d.price is not None else self.price for d in self.deployments] or [
            self.price
        ]

    @property
    def priced(self) -> bool:
        """Whether every call to it is priced (by the model's price, or each deployment's
        own): what routing checks a cost cap against and billing bills. A model priced on
        its deployments alone had been listed as unpriced, while routing priced it."""
        return all(p is not None for p in self.prices)

    def quality_prior(self, task: str = "general") -> float:
        """Prior P(good) for a task: the task's entry, else `general`, else 0.7."""
        return float(self.quality.get(task, self.quality.get("general", 0.7)))

    @property
    def quoted_price(self) -> Price | None:
        """The price its figures quote (the reference's cost, the saving a report shows):
        its own, else (priced on its deployments alone) its first deployment's; None when
        unpriced. Not the dearest deployment's: a reference priced at its dearest host
        overstates what routing saved."""
        return None if not self.priced else self.price or self.prices[0]

    def cost(self, tokens_in: float, tokens_out: float, cached_in: float = 0.0) -> float | None:
        """USD for a request at `quoted_price`, or None when the model is unpriced."""
        price = self.quoted_price
        return None if price is None else price.cost(tokens_in, tokens_out, cached_in)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        mid = d.get("id")
        if not isinstance(mid, str) or not mid:
            # its fields' names, not their values: a key may be pasted into any of them
            raise ConfigError(
                f"every model needs a string 'id'; got a model with fields {sorted(map(str, d))}"
            )
        where = f"model {mid!r}"
        # a model's own fields: an effort variant's (effort, base, reasoning_tokens) come from
        # its base's `efforts`, never from the file
        known = set(ModelSpec.__match_args__) - {"effort", "base", "reasoning_tokens"}
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
        for key in ("provider", "tokenizer"):  # (["x"] had been read as the text "['x']")
            if key in d and not isinstance(d[key], str):
                raise ConfigError(f"{where}: {key} must be a string, got {d[key]!r:.40}")
        return cls(
            id=mid,
            provider=d.get("provider", "unknown"),
            context_window=int(d["context_window"]),
            max_output=int(d["max_output"]),
            tokenizer=d.get("tokenizer", "o200k_base"),
            price=Price.from_dict(price, f"{where}.price") if price is not None else None,
            capabilities=frozenset(caps),
            p95_latency_ms=_num(d, "p95_latency_ms", where),
            quality=dict(quality),
            deployments=tuple(
                Deployment.from_dict(x, f"{where}.deployments[{i}]", mid)
                for i, x in enumerate(deps)
            ),
            disabled=disabled,
            deprecation_date=_date(d.get("deprecation_date"), f"{where}.deprecation_date"),
            successor=_opt_str(d.get("successor"), f"{where}.successor"),
            efforts=_efforts(d.get("efforts"), where),
            thinking=_opt_str(d.get("thinking"), f"{where}.thinking"),
        )

    def effort_ids(self) -> tuple[str, ...]:
        """The ids of this model's effort rows ("MODEL@LEVEL", `variant`)."""
        return tuple(f"{self.id}@{name}" for name in self.efforts)

    def variant(self, name: str) -> ModelSpec:
        """This model at one effort level: its own row in the routing table, priced with
        the level's reasoning tokens and its priors moved by the level's quality delta."""
        e = self.efforts[name]
        tokens = e.reasoning_tokens
        if tokens and name != "none" and any(d.api == "anthropic" for d in self.deployments):
            # what the call will spend: Anthropic's smallest thinking budget (a lower level
            # was priced at its own figure, passed a cost cap, and then could not be called)
            tokens = max(tokens, ANTHROPIC_MIN_THINKING)
        q = {t: min(max(v + e.quality, 0.01), 0.99) for t, v in self.quality.items()}
        if not q:
            q = {"general": min(max(0.7 + e.quality, 0.01), 0.99)}
        return self.replace(
            id=f"{self.id}@{name}",
            quality=q,
            efforts={},
            effort=name,
            base=self.id,
            reasoning_tokens=tokens,
            # reasoning tokens stream at roughly 100/s before the answer starts
            p95_latency_ms=None
            if self.p95_latency_ms is None
            else self.p95_latency_ms + tokens * 10.0,
        )

    def to_dict(self) -> dict[str, Any]:
        """The TOML form `from_dict` reads (defaults left out)."""
        d: dict[str, Any] = {
            "id": self.id,
            "provider": self.provider,
            "tokenizer": self.tokenizer,
            "context_window": self.context_window,
            "max_output": self.max_output,
            "capabilities": sorted(self.capabilities),
        }
        if self.p95_latency_ms is not None:
            d["p95_latency_ms"] = self.p95_latency_ms
        if self.price is not None:
            d["price"] = self.price.to_dict()
        if self.quality:
            d["quality"] = dict(self.quality)
        if self.deprecation_date is not None:
            d["deprecation_date"] = self.deprecation_date
        if self.successor is not None:
            d["successor"] = self.successor
        if self.disabled:
            d["disabled"] = True
        if self.thinking is not None:
            d["thinking"] = self.thinking
        if self.efforts:
            d["efforts"] = {
                k: {"reasoning_tokens": e.reasoning_tokens, "quality": e.quality}
                for k, e in self.efforts.items()
            }
        d["deployments"] = [dep.to_dict() for dep in self.deployments]
        return d


def _iso(v: object) -> str:
    if isinstance(v, date):
        return v.isoformat()
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


def _date(v: Any, where: str) -> date | None:
    """A TOML date (or "YYYY-MM-DD" from JSON), None when absent."""
    if v is None or (isinstance(v, date) and not isinstance(v, datetime)):
        return v
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, str):
        try:
            return date.fromisoformat(v.strip())
        except ValueError:
            pass
    raise ConfigError(f"{where} must be a date like 2026-12-01, got {v!r:.40}")


def _efforts(v: Any, where: str) -> dict[str, Effort]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}.efforts must be a table of LEVEL = {{reasoning_tokens = N}}")
    bad = set(v) - set(EFFORTS)
    if bad:
        raise ConfigError(f"{where}.efforts: unknown level(s) {sorted(bad)}; use {list(EFFORTS)}")
    return {k: Effort.from_dict(e, f"{where}.efforts.{k}") for k, e in v.items()}


def _opt_str(v: Any, where: str) -> str | None:
    if v is None or (isinstance(v, str) and v):
        return v
    raise ConfigError(f"{where} must be a non-empty string, got {v!r:.40}")


def _default_effort(m: Any) -> Any:
    """A model with effort levels, called without one, runs at the provider's default: a
    declared `medium` level is that default (OpenAI, Gemini) and prices the model; without
    one, or on Anthropic's API, whose default is no extended thinking (the call is sent
    none), priced with none."""
    if not isinstance(m, ModelSpec) or m.base is not None or not m.efforts:
        return m
    medium = m.efforts.get("medium")
    anthropic = bool(m.deployments) and all(d.api == "anthropic" for d in m.deployments)
    tokens = medium.reasoning_tokens if medium is not None and not anthropic else 0
    return m if tokens == m.reasoning_tokens else m.replace(reasoning_tokens=tokens)


def is_json_name(path: str | Path) -> bool:
    """Whether `Registry.load` reads (and `registry update` writes) `path` as JSON."""
    return str(path).lower().endswith(".json")


class Registry:
    """An immutable, validated set of models. Build with `load` (a TOML or JSON file),
    `from_dict` or models."""

    __slots__ = ("_by_id", "_models", "meta")

    def __init__(self, models: Iterable[ModelSpec], meta: Mapping[str, Any] | None = None):
        declared = [m for m in models if not (isinstance(m, ModelSpec) and m.base is not None)]
        # Each effort level of a model is routed as a model of its own ("MODEL@LEVEL"),
        # placed right after it; the model itself stands for the provider's default effort.
        self._models: tuple[ModelSpec, ...] = tuple(
            v
            for m in declared
            for v in (_default_effort(m), *(m.variant(k) for k in getattr(m, "efforts", {})))
        )
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
        if ref is not None and (not isinstance(ref, str) or ref not in self._by_id):
            raise ConfigError(
                f"meta.reference_model {ref!r:.80} is not a model id in this registry"
            )

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
        if "model" in d and "models" in d:  # one was read and the other dropped unread
            raise ConfigError("a registry has both 'model' and 'models'; put every model under one")
        models = d.get("model", d.get("models"))
        if not isinstance(models, list):
            raise ConfigError("a registry needs a list of models under 'model' ([[model]] in TOML)")
        for i, m in enumerate(models):
            if not isinstance(m, Mapping):
                raise ConfigError(f"model[{i}] must be a table, got {type(m).__name__}")
        meta = d.get("meta")
        if meta is not None and not isinstance(meta, Mapping):
            raise ConfigError(f"meta must be a table, got {type(meta).__name__}")
        if meta is not None and meta.get("prices_as_of") is not None:  # a date, from TOML or JSON
            meta = {**meta, "prices_as_of": _date(meta["prices_as_of"], "meta.prices_as_of")}
        return cls((ModelSpec.from_dict(m) for m in models), meta)

    @classmethod
    def from_toml(cls, path: str | Path) -> Registry:
        import tomllib  # here: the bundled registry is JSON, so Router() never imports it

        return cls._read(path, "TOML", tomllib.loads)

    @classmethod
    def from_json(cls, path: str | Path) -> Registry:
        return cls._read(path, "JSON", _json_once)

    @classmethod
    def load(cls, path: str | Path) -> Registry:
        """A registry file: JSON if its name ends in .json (the bundled registry's format,
        `to_json`), else TOML (`to_toml`)."""
        return cls.from_json(path) if is_json_name(path) else cls.from_toml(path)

    @classmethod
    def _read(cls, path: str | Path, kind: str, parse: Any) -> Registry:
        from pathlib import Path

        p = Path(path)
        try:
            raw = read_bounded(p, f"registry file {p} is over {MAX_FILE_BYTES >> 20} MB, "
                               "which no registry needs; give the registry's own file")  # fmt: skip
        except FileNotFoundError:
            raise ConfigError(f"registry file {p} does not exist") from None
        except OSError as e:
            raise ConfigError(f"registry file {p} cannot be read: {e.strerror}") from None
        try:
            # utf-8-sig: a byte-order mark, which editors on Windows write, is no error
            data = parse(raw.decode("utf-8-sig"))
        except ConfigError as e:  # a key given twice (`_json_once`); before ValueError's
            raise ConfigError(f"registry file {p} is not valid {kind}: {e}"[:400]) from None
        except (ValueError, RecursionError) as e:
            # (ValueError: JSON's and TOML's errors, UTF-8's, and an integer past the 4,300
            # digits Python reads, which had escaped raw)
            hint = " (a JSON registry's name must end in .json)" if kind == "TOML" else ""
            raise ConfigError(
                f"registry file {p} is not valid {kind} (UTF-8){hint}: {e}"[:400]
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"registry file {p} must hold a table of models, not a {type(data).__name__}"
            )
        return cls.from_dict(data)

    @classmethod
    def default(cls) -> Registry:
        """The bundled registry of common models with dated public list prices (JSON, which
        parses in a quarter of the time TOML took: it is read by every fresh `Router()`)."""
        import os.path

        with open(os.path.join(os.path.dirname(__file__), "data", "registry.json"), "rb") as f:
            text = f.read().decode("utf-8")
        return cls.from_dict(json.loads(text))

    def to_json(self) -> str:
        """The registry as JSON that `from_dict(json.loads(...))` reads back to an equal one."""
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False, default=_iso) + "\n"

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
                f"unknown model {quoted(model_id)}; the registry has: {', '.join(self.ids)}"
            ) from None

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self._models]

    @property
    def unpriced(self) -> list[str]:
        """Models whose cost is unknown: they never pass a max_cost constraint."""
        return [m.id for m in self._models if not m.priced]

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

    def attention(
        self, today: date | None = None, *, max_price_age_days: int = 90, soon_days: int = 60
    ) -> list[str]:
        """What a user should act on: models past or within `soon_days` of their
        deprecation date (naming the successor), and prices older than `max_price_age_days`.
        The router emits these as `RegistryWarning`s when it loads the registry."""
        today = today or date.today()
        notes = []
        for m in self._models:
            # once per model: its effort rows (m@low, ...) share its date and successor
            if m.deprecation_date is None or m.disabled or m.base is not None:
                continue
            left = (m.deprecation_date - today).days
            move = (
                f"move to its successor {m.successor!r}"
                if m.successor
                else "replace it, or disable it"
            )
            if left < 0:
                notes.append(
                    f"model {m.id!r} was retired on {m.deprecation_date}: calls to it will "
                    f"fail; {move}"
                )
            elif left <= soon_days:
                notes.append(
                    f"model {m.id!r} is retired on {m.deprecation_date} (in {left} days); {move}"
                )
        for m in self._models:
            # USD per 1M tokens: a per-token figure given there ($2.5e-06) had made a model
            # a million times too cheap, and every cost cap and budget meaningless (on a
            # deployment's own price as on the model's)
            for p in dict.fromkeys(m.prices) if m.base is None else ():
                if p is not None and 0 < min(p.input, p.output) < _LEAST_RATE:
                    notes.append(
                        f"model {m.id!r} is priced ${p.input:g} in / ${p.output:g} out per "
                        f"1M tokens, under ${_LEAST_RATE:g}: prices are USD per 1M tokens; "
                        "multiply a per-token price by 1,000,000"
                    )
        as_of = self.meta.get("prices_as_of")
        if as_of is not None:
            try:
                day = _date(as_of, "meta.prices_as_of")
            except ConfigError:
                day = None
            if day is not None and (today - day).days > max_price_age_days:
                notes.append(
                    f"prices are as of {day} ({(today - day).days} days ago); refresh them "
                    "with `satisfice registry update --from litellm|openrouter|models.dev`"
                )
        return notes

    def to_dict(self) -> dict[str, Any]:
        """The declared models (effort variants are written as their model's `efforts`)."""
        models = [m.to_dict() for m in self._models if m.base is None]
        return {"meta": dict(self.meta), "model": models}

    def to_toml(self, header: str = "") -> str:
        """The registry as TOML that `from_toml` reads back to an equal registry."""
        import tomli_w

        def written(v: Any) -> Any:
            # TOML has no null: a key set to null (a JSON registry's "reference_model":
            # null) is a key not set, as reading it back takes it (it had been a traceback)
            if isinstance(v, Mapping):
                return {k: written(x) for k, x in v.items() if x is not None}
            return [written(x) for x in v] if isinstance(v, list) else v

        try:
            return header + tomli_w.dumps(written(self.to_dict()))
        except TypeError as e:  # a null inside a list, which no key-dropping can mean
            raise ConfigError(f"the registry cannot be written as TOML: {e}") from None

    def replace(self, *models: ModelSpec) -> Registry:
        """A new registry with these models added or replacing those with the same id."""
        new = {m.id: m for m in models}
        kept = [new.pop(m.id, m) for m in self._models]
        return Registry([*kept, *new.values()], self.meta)
