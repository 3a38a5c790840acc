"""`satisfice.toml`: one file for the service. Every field is checked; errors name it.

[server]
host = "127.0.0.1"          # anything but loopback requires keys (a master key)
port = 4000
max_body_bytes = 33554432   # 32 MiB, what Anthropic's Messages API takes (a few screenshots)
read_timeout_s = 30         # a request head not in by then: closed; a body: 408
shutdown_grace_s = 30
master_key_env = "SATISFICE_MASTER_KEY"   # the admin API's key, read from this variable
require_keys = false        # true: every /v1 request needs a virtual key, /metrics the master key

[registry]
path = "registry.toml"      # default: the bundled registry
refresh = { source = "litellm", location = "...", interval_s = 3600 }  # a file, or a URL
# (every relative path here is read from the config file's folder)

[policy]
path = "policy.json"        # default: the bundled policy

[aliases]                    # model names that route, with their constraints
auto-cheap = { quality_floor = 0.6 }
auto-best = { quality_floor = 0.9, strict_floor = false }

[state]
backend = "memory"          # or "redis"
redis_url = "redis://127.0.0.1:6379/0"
# unsettled_file = "unsettled.json"  # redis: settlements it missed, kept for the next start

[ledger]
target = "satisfice-ledger.db"   # SQLite path, *.jsonl or postgresql://...
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._bounded import MAX_FILE_BYTES, read_bounded
from ..errors import ConfigError
from ..policy import Constraints
from ..registry import is_env_name

if TYPE_CHECKING:
    from ..registry import Registry

__all__ = ["ServerConfig"]

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _table(d: Mapping[str, Any], key: str, known: set[str]) -> dict[str, Any]:
    v = d.get(key, {})
    if not isinstance(v, Mapping):
        raise ConfigError(f"[{key}] must be a table")
    bad = set(v) - known
    if bad:
        raise ConfigError(f"[{key}]: unknown field(s) {sorted(bad)}; known: {sorted(known)}")
    return dict(v)


# 16+ characters, no space, letters and digits: a key's shape
_KEYLIKE = re.compile(r"(?=\S*[A-Za-z])(?=\S*\d)\S{16,}")


def _shown(v: Any) -> str:
    """A value the file gave, as an error quotes it: not a string that could be a key pasted
    into the wrong field (16+ characters, no space, letters and digits), which a log of the
    failed start would keep; cut at 40 characters."""
    if isinstance(v, str) and _KEYLIKE.fullmatch(v):
        return f"a {len(v)}-character string (not shown: it may be a key)"
    return f"{v!r:.40}"


def _int(v: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{where} must be an integer in [{lo}, {hi}], got {_shown(v)}")
    return v


def _num(v: Any, where: str, hi: float = 1e9, lo: float = 0.0) -> float:
    """A finite number in (lo, hi] (TOML has inf and nan, and a grace of inf overflowed);
    `lo` itself is taken when it is above 0 (a read timeout of 1e-300 had been taken, and
    every request would have been a 408)."""
    num = not isinstance(v, bool) and isinstance(v, int | float)
    if not num or not (lo <= v <= hi if lo > 0 else 0 < v <= hi):
        span = f"[{lo:g}, {hi:g}]" if lo > 0 else f"(0, {hi:g}]"
        raise ConfigError(f"{where} must be a number in {span}, got {_shown(v)}")
    return float(v)


def _redis_url(v: Any) -> str | None:
    """A Redis URL whose port and database parse (redis-py failed on them at start-up with a
    raw ValueError, and served a non-numeric database as 0)."""
    if v is None:
        return None
    what = "[state].redis_url"  # not echoed: the URL may hold Redis's password
    if not (isinstance(v, str) and v.startswith(("redis://", "rediss://", "unix://"))):
        raise ConfigError(f"{what} must be a redis://, rediss:// or unix:// URL")
    try:
        parts = urlsplit(v)
        if parts.scheme != "unix":
            parts.port  # noqa: B018 -- parsing it is the check: a port not in 0-65535 raises
    except ValueError:  # an unclosed IPv6 bracket, or a port that is not 0-65535
        raise ConfigError(f"{what}: its host or port cannot be read (the port must be an "
                          "integer in [0, 65535])") from None  # fmt: skip
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(f"{what}: a unix:// URL needs the socket's path")
    elif not parts.hostname:
        raise ConfigError(f"{what}: needs a host, e.g. redis://127.0.0.1:6379/0")
    else:
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ConfigError(f"{what}: the database after the host must be a number, e.g. /0")
    try:
        from .state import connection_factory

        connection_factory(v)  # its options, as the connections will take them
    except ImportError:
        raise ConfigError(
            f"{what}: the redis state backend needs redis-py: pip install redis"
        ) from None
    except Exception as e:  # redis-py's words name the option (ValueError, RedisError)
        said = str(e)
        if parts.password:  # never the password, whatever the words quote
            said = said.replace(parts.password, "***")
        raise ConfigError(f"{what}: {said}") from None
    return v


def _file(path: str | None, where: str) -> str | None:
    """A file the server writes: not a directory, and in one that exists (each had failed
    at the first write, a probe's results after its paid calls)."""
    if path is not None and "://" not in path:
        if Path(path).is_dir():
            raise ConfigError(f"{where} {path!r} is a directory; name a file in it")
        if not Path(path).resolve().parent.is_dir():
            raise ConfigError(f"{where} {path!r}: its directory does not exist; create it")
    return path


def _ledger(target: str | None) -> str | None:
    """[ledger].target: a file the server writes, or a postgresql:// URL."""
    if target is None:
        return None
    from ..ledger import target_kind

    try:
        target_kind(target)
    except ConfigError as e:
        raise ConfigError(f"[ledger].target: {e}") from None
    return _file(target, "[ledger].target")


#: The shortest master key `satisfice serve` takes (it guards the admin API).
MIN_MASTER_KEY = 16


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 4000
    # 32 MiB: Anthropic's Messages API takes requests to 32 MB (images to 5 MB each); at 4
    # MiB an agent's conversation with one screenshot was a 413 on every later turn
    max_body_bytes: int = 32 * 1024 * 1024
    read_timeout_s: float = 30.0
    shutdown_grace_s: float = 30.0
    master_key_env: str = "SATISFICE_MASTER_KEY"
    require_keys: bool = False
    registry_path: str | None = None
    # out of the repr: its location may be a URL with a password or a token in it
    refresh: dict[str, Any] | None = field(default=None, repr=False)
    policy_path: str | None = None
    aliases: dict[str, dict[str, Any]] = field(default_factory=dict)
    state_backend: str = "memory"
    # out of the repr: either may be a URL with a password in it
    redis_url: str | None = field(default=None, repr=False)
    ledger: str | None = field(default=None, repr=False)
    probe_interval_s: float | None = None
    probe_budget_usd: float | None = None
    health_file: str | None = None
    # settlements Redis missed, kept here until it takes them (across a restart too)
    unsettled_file: str | None = None

    def __post_init__(self) -> None:
        # here, not only in load(): `satisfice serve --host/--port` override the file's
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError("[server].host (--host) must be a host name or address")
        _int(self.port, "[server].port (--port)", 0, 65535)
        for name, c in self.aliases.items():
            from ..registry import _bad_id

            # a name callers send as `model`, as a model's id is ("" and "cheap " had loaded)
            why = "it is empty" if not name else None if name == "auto" else _bad_id(name)
            if why is not None:
                raise ConfigError(f"[aliases] name {name!r:.80}: {why}")
            if not isinstance(c, Mapping):
                raise ConfigError(f"[aliases].{name} must be a table of constraints")
            try:
                Constraints.of(c)
            except ConfigError as e:
                raise ConfigError(f"[aliases].{name}: {e}") from None
        if self.state_backend not in ("memory", "redis"):
            raise ConfigError(
                f"[state].backend must be memory or redis, got {_shown(self.state_backend)}"
            )
        if self.state_backend == "redis" and not self.redis_url:
            raise ConfigError("[state].backend = redis needs [state].redis_url")
        if self.state_backend == "memory" and self.redis_url:
            # replicas on this config would share nothing (each key's budget enforced once
            # per replica) while the file says Redis
            raise ConfigError(
                "[state].redis_url is set but [state].backend is memory: set backend = "
                '"redis" to share state through it, or remove redis_url'
            )
        if self.unsettled_file is not None and self.state_backend != "redis":
            # budgets on memory state end with the process: there is nothing to settle later
            raise ConfigError(
                "[state].unsettled_file keeps the settlements Redis missed until it takes "
                'them; it needs [state].backend = "redis": remove it, or set the backend'
            )
        if not self.loopback and not self.require_keys:
            raise ConfigError(
                f"[server].host = {_shown(self.host)} is not loopback: set require_keys = true "
                "(and a master key in the variable [server].master_key_env names) before serving "
                "beyond this machine"
            )
        self._files_apart()

    def _files_apart(self) -> None:
        """ConfigError when two settings name one file: the server would write a record
        over another's (a health file and an unsettled file both "state.json" had each
        replaced the other's at every write) or over the registry or policy it reads."""
        seen: dict[str, str] = {}
        # the files each setting has the server write beside the one it names: SQLite's
        # journal files, the unsettled queue's lock (a health file named "x.db-wal" had
        # replaced a SQLite ledger's write-ahead log, and the records in it)
        for where, path, beside in (
            ("[ledger].target", self.ledger, ("-wal", "-shm", "-journal")),
            ("[probe].health_file", self.health_file, ()),
            ("[state].unsettled_file", self.unsettled_file, (".lock",)),
            # only read: one file for both overwrites nothing (their loaders say what is
            # wrong with it), but one the server writes must be another
            ("[registry].path", self.registry_path, None),
            ("[policy].path", self.policy_path, None),
        ):
            if path is None:
                continue
            path = os.fspath(path)  # (a pathlib.Path built in code, as the readers take it)
            if "\x00" in path:  # (realpath's raw "embedded null byte" ValueError)
                raise ConfigError(f"{where} holds a NUL character; give a file path")
            if "://" in path:
                continue
            written = beside is not None
            if written:  # (a config made in code skips load's checks: a directory had been
                _file(path, where)  # a raw IsADirectoryError as the app was made)
            if where == "[ledger].target":
                from ..ledger import target_kind

                if target_kind(path) == "jsonl":
                    beside = ()  # a JSONL ledger is the one file (locked itself)
            key = os.path.realpath(path)  # the same file however spelled or linked
            files = {key: where, **{key + end: f"{where}'s {end} file" for end in beside or ()}}
            for f, what in files.items():
                if f in seen:
                    raise ConfigError(
                        f"{seen[f]} and {what} name the same file ({f!r:.200}): the server "
                        f"writes {seen[f]} there, over what {what} holds; give each a file "
                        "of its own"
                    )
            if written:
                seen.update(files)

    @property
    def loopback(self) -> bool:
        if self.host in _LOOPBACK:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: Path | None = None) -> ServerConfig:
        bad = set(d) - {"server", "registry", "policy", "aliases", "state", "ledger", "probe"}
        if bad:
            raise ConfigError(
                f"unknown table(s) {sorted(bad)}; known: server, registry, policy, aliases, "
                "state, ledger, probe"
            )
        probe = _table(d, "probe", {"interval_s", "budget_usd", "health_file"})
        srv = _table(
            d,
            "server",
            {
                "host",
                "port",
                "max_body_bytes",
                "read_timeout_s",
                "shutdown_grace_s",
                "master_key_env",
                "require_keys",
            },
        )
        reg = _table(d, "registry", {"path", "refresh"})
        pol = _table(d, "policy", {"path"})
        state = _table(d, "state", {"backend", "redis_url", "unsettled_file"})
        led = _table(d, "ledger", {"target"})
        aliases = d.get("aliases", {})
        if not isinstance(aliases, Mapping):
            raise ConfigError("[aliases] must be a table of NAME = { constraints }")

        def rel(p: Any, where: str) -> str | None:
            if p is None:
                return None
            if not isinstance(p, str) or not p:
                raise ConfigError(f"{where} must be a path")
            if "\x00" in p:  # (a TOML "\u0000" escape had been a traceback at the open)
                raise ConfigError(f"{where} holds a NUL character; give a file path")
            if "://" in p or base is None or Path(p).is_absolute():
                return p
            return str(base / p)

        refresh = reg.get("refresh")
        if refresh is not None:
            if not isinstance(refresh, Mapping) or not {"source"} <= set(refresh) <= {
                "source",
                "location",
                "interval_s",
                "max_ratio",
                "timeout_s",
            }:
                raise ConfigError(
                    "[registry].refresh must be { source = litellm|openrouter|models.dev, "
                    "location = FILE_OR_URL, interval_s = 3600, max_ratio = 10, "
                    "timeout_s = 30 }"
                )
            from ..sources import SOURCES, is_url, shown

            refresh = dict(refresh)
            if refresh["source"] not in SOURCES:
                raise ConfigError(
                    f"[registry].refresh.source must be one of {list(SOURCES)}, got "
                    f"{_shown(refresh['source'])}"
                )
            loc = refresh.get("location")
            if loc is not None and (not isinstance(loc, str) or not loc.strip()):
                # ("" had passed, and every refresh failed, said only in the log)
                raise ConfigError(
                    "[registry].refresh.location must be a file path or URL (leave it out "
                    "for the source's own)"
                )
            # a file: said now, where it had been said by the first refresh's log line after
            # the server started (read from the working directory, as the refresher reads it)
            if loc and not is_url(loc):
                # a file: beside the config file, as [registry].path is (it had been read
                # from the working directory, the one path here that was)
                refresh["location"] = loc = rel(loc, "[registry].refresh.location")
            if loc and not is_url(loc) and not Path(loc).is_file():
                raise ConfigError(
                    f"[registry].refresh.location {shown(loc)!r:.200} is not a file: give the "
                    "catalogue's file, or an http(s) URL"
                )
            for k in ("interval_s", "max_ratio"):
                if k in refresh:
                    refresh[k] = _num(refresh[k], f"[registry].refresh.{k}")
            if "timeout_s" in refresh:  # seconds one download may take (the log line of a
                # slow download says to raise it: it had been an unknown field)
                refresh["timeout_s"] = _num(
                    refresh["timeout_s"], "[registry].refresh.timeout_s", 3600, 1
                )
            if refresh.get("max_ratio", 10) <= 1:  # (had passed, and the server crashed)
                raise ConfigError(
                    "[registry].refresh.max_ratio must be above 1: a price that moves by more "
                    "than this factor is refused, which at 1 or less is every change"
                )
            if refresh.get("interval_s", 3600) < 60:  # 1e-300 had fetched back to back
                raise ConfigError(
                    "[registry].refresh.interval_s must be at least 60 (seconds): each "
                    "refresh reads the whole catalogue"
                )
        host = srv.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host:
            raise ConfigError("[server].host must be a host name or address")
        require = srv.get("require_keys", False)
        if not isinstance(require, bool):
            raise ConfigError("[server].require_keys must be true or false")
        env = srv.get("master_key_env", "SATISFICE_MASTER_KEY")
        if not is_env_name(env):  # never echoed: a key pasted here must not reach a log
            raise ConfigError(
                "[server].master_key_env must name an environment variable (like "
                "SATISFICE_MASTER_KEY), not hold the key itself; put the key in that variable"
            )
        return cls(
            host=host,
            port=_int(srv.get("port", 4000), "[server].port", 0, 65535),
            max_body_bytes=_int(
                srv.get("max_body_bytes", 32 << 20), "[server].max_body_bytes", 1024, 1 << 30
            ),
            read_timeout_s=_num(srv.get("read_timeout_s", 30), "[server].read_timeout_s", 3600, 1),
            shutdown_grace_s=_num(
                srv.get("shutdown_grace_s", 30), "[server].shutdown_grace_s", 86_400
            ),
            master_key_env=env,
            require_keys=require,
            registry_path=rel(reg.get("path"), "[registry].path"),
            refresh=refresh,
            policy_path=rel(pol.get("path"), "[policy].path"),
            aliases={str(k): dict(v) if isinstance(v, Mapping) else v for k, v in aliases.items()},
            state_backend=str(state.get("backend", "memory")),
            redis_url=_redis_url(state.get("redis_url")),
            ledger=_ledger(rel(led.get("target"), "[ledger].target")),
            probe_interval_s=_probe_interval(probe),
            probe_budget_usd=None if "budget_usd" not in probe
            else _num(probe["budget_usd"], "[probe].budget_usd"),
            health_file=_file(rel(probe.get("health_file"), "[probe].health_file"),
                              "[probe].health_file"),
            unsettled_file=_file(rel(state.get("unsettled_file"), "[state].unsettled_file"),
                                 "[state].unsettled_file"),
        )  # fmt: skip

    def master_key(self) -> str | None:
        """The master key from [server].master_key_env, trimmed as HTTP trims the caller's
        (a secret file's trailing newline had made every right key a 401), None if unset."""
        return (os.environ.get(self.master_key_env) or "").strip() or None

    def check_keys(self) -> None:
        """ConfigError when keys are required but none can ever be made: memory state, and
        no master key in [server].master_key_env for the admin API that makes them. (With
        Redis another replica's admin API may make them.) Checked as the app is made, since
        the variable is read then."""
        master = self.master_key()
        if self.require_keys and self.state_backend == "memory" and master is None:
            raise ConfigError(
                f"[server].require_keys = true, but ${self.master_key_env} "
                "([server].master_key_env) is not set: no key could ever be made, and every "
                "request would be refused; set the variable to a master key"
            )
        if master and len(master) < MIN_MASTER_KEY:  # (a 3-character one had been taken)
            raise ConfigError(
                f"${self.master_key_env} ([server].master_key_env) holds {len(master)} "
                f"characters: the master key guards keys, budgets and the registry, so use at "
                f'least {MIN_MASTER_KEY}; make one with: python -c "import secrets; '
                'print(secrets.token_urlsafe(32))"'
            )

    @classmethod
    def load(cls, path: str | Path | None) -> ServerConfig:
        if path is None:
            return cls()
        p = Path(path)
        try:
            raw = read_bounded(p, f"config file {p} is over {MAX_FILE_BYTES >> 20} MB, which "
                               "no config needs; give the config's own file")  # fmt: skip
            data = tomllib.loads(raw.decode("utf-8-sig"))  # a byte-order mark is no error
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}"[:300]) from None
        except RecursionError:
            raise ConfigError(f"config file {p} nests its tables or arrays too deeply") from None
        except OSError as e:  # a directory, no permission
            raise ConfigError(f"config file {p} cannot be read: {e.strerror}") from None
        return cls.from_dict(data, p.parent)


def check_aliases(aliases: Mapping[str, Mapping[str, Any]], registry: Registry) -> None:
    """An alias neither hides a model nor names one the registry lacks, nor leaves no model
    (each had been accepted: the alias answered where the model was asked for, or failed
    every request)."""
    for name, c in aliases.items():
        if name == "auto" or name in registry:
            raise ConfigError(
                f"[aliases].{name} has the name of {'the router' if name == 'auto' else 'a model'}"
                ", which it would hide; give it another name"
            )
        ids = Constraints.of(c)  # as routing reads them: one id is one id, not its letters
        for kind in ("allow", "deny"):
            unknown = [m for m in getattr(ids, kind) or () if m not in registry]
            if unknown:
                raise ConfigError(
                    f"[aliases].{name}.{kind} names models the registry lacks: {unknown}"
                )
        if ids.allow is not None and not set(ids.allow) - set(ids.deny):
            # (loaded, and every request to it had failed with no route)
            raise ConfigError(
                f"[aliases].{name} leaves no model to route to: its allow list is empty or "
                "every model on it is denied"
            )


#: The shortest time between two probe runs: each run calls every model it probes (paid
#: calls), and 1e-300 had run them back to back.
PROBE_MIN_INTERVAL_S = 60


def _probe_interval(probe: Mapping[str, Any]) -> float | None:
    """[probe].interval_s, at least PROBE_MIN_INTERVAL_S; a budget without it is refused
    (it would bound nothing: the server probes only with an interval)."""
    if "interval_s" not in probe:
        if "budget_usd" in probe:
            raise ConfigError(
                "[probe].budget_usd is set but [probe].interval_s is not: the server probes "
                "only every interval_s seconds; set it, or remove budget_usd"
            )
        return None
    every = _num(probe["interval_s"], "[probe].interval_s")
    if every < PROBE_MIN_INTERVAL_S:
        raise ConfigError(
            f"[probe].interval_s must be at least {PROBE_MIN_INTERVAL_S} (seconds): each run "
            "calls the models it probes"
        )
    return every
