"""What replicas of `satisfice serve` share: virtual keys, budget counters, rate-limit windows,
session pins and deployment cooldowns. `MemoryState` for one process; `RedisState` for
several, with Lua scripts where a check and an update must be one step.

Money is counted in integer nano-dollars, so sums are exact on every backend. A budget is
checked by *reserving* the request's worst-case cost before the call (refused when it does not
fit) and *settling* the actual cost after; a reservation that is never settled (a crash)
is released `HOLD_S` after its replica last renewed it (Redis), or ends with the process
that held it (memory).

When Redis is unreachable (see README, "Run it as a service"):
- budgets fail closed: the request is refused with 503, since spending that is not counted
  could pass any budget;
- rate limits, session pins and shared cooldowns fail open: the request is served on this
  replica's own view, and the failure is logged and counted;
- keys already seen are served from a 30-second local cache; others are refused with 503.
Everything recovers on the next request after Redis returns (a new connection is made).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from ..errors import ConfigError, SatisficeError

__all__ = [
    "Budget", "KeyChanged", "MemoryState", "RateCount", "RedisState", "Refused",
    "StateUnavailable", "VirtualKey", "hash_key",
]  # fmt: skip

NANO = 1_000_000_000
# A reservation on Redis is a lease: admission releases it HOLD_S after it was made or last
# renewed, and the replica that holds it renews it every HOLD_RENEW_S until it settles, for
# up to HOLD_MAX_S (a request that never settles, a bug, is not held for good). A replica that
# dies mid-request holds its budgets' room for HOLD_S at most (it had held it 6 hours; a
# "total" budget's, before that, for good). A call still running past its lease (a store
# away longer than HOLD_S) is counted when it settles; until then others may be admitted
# into its room.
HOLD_S = 300
HOLD_RENEW_S = 60.0
HOLD_MAX_S = 6 * 3600.0
_PERIODS = ("day", "month", "total")
KEY_PREFIX = "sk-sat-"  # every key the admin API makes starts so; an unknown one is refused


_log = logging.getLogger("satisfice.server")
_T = TypeVar("_T")


class StateUnavailable(SatisficeError):
    """The shared state store cannot be reached (the server answers 503)."""


class KeyChanged(Exception):
    """Admission found the caller's key changed (or revoked, or deleted) since this replica
    read it: the request is taken again from its key, read anew."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def period_tag(period: str, now: float | None = None) -> str:
    t = time.gmtime(now if now is not None else time.time())
    if period == "day":
        return time.strftime("%Y-%m-%d", t)
    if period == "month":
        return time.strftime("%Y-%m", t)
    return "all"


def _ttl(period: str) -> int | None:
    return {"day": 2 * 86400, "month": 62 * 86400}.get(period)


@dataclass
class Budget:
    """A USD limit over a period, for a key or a team (`scope` is "key:ID" or "team:NAME")."""

    scope: str
    limit_usd: float
    period: str = "month"
    # The period one request reserved in (`pinned`): its settlement releases the hold and
    # counts the spend there, even after the day or month has turned (settling under the
    # new period left the old hold in place and a negative hold in the new one).
    at: str | None = field(default=None, compare=False)
    # The reservation's own id (`pinned`): settling it twice, or releasing a reservation
    # whose reply was lost, changes the counters once at most.
    hold: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.period not in _PERIODS:
            raise ConfigError(f"budget period must be one of {list(_PERIODS)}")
        if not self.limit_usd >= 0:
            raise ConfigError("budget limit_usd must be >= 0")

    def pinned(self, now: float | None = None, hold: str | None = None) -> Budget:
        return replace(self, at=period_tag(self.period, now), hold=hold)

    @property
    def tag(self) -> str:
        return self.at if self.at is not None else period_tag(self.period)


@dataclass
class VirtualKey:
    """A caller's key. Only its SHA-256 is stored; the key itself is shown once, at creation."""

    id: str
    name: str
    key_hash: str = field(repr=False)  # (a repr in a log or a traceback: not the hash)
    team: str | None = None
    budget_usd: float | None = None
    period: str = "month"
    models: list[str] | None = None  # allow-list (model ids or aliases); None: all
    rpm: int | None = None
    tpm: int | None = None
    revoked: bool = False
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        # What a stored record (another version's, or written by hand) must hold: a wrong
        # type had passed here and failed later, in a request, as a TypeError (a 500).
        def real(v: object) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool)

        ok = (
            all(isinstance(v, str) for v in (self.id, self.name, self.key_hash, self.period))
            and (self.team is None or isinstance(self.team, str))
            and (self.budget_usd is None or (real(self.budget_usd) and self.budget_usd >= 0))
            and (self.models is None or (isinstance(self.models, list)
                                         and all(isinstance(m, str) for m in self.models)))
            and all(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
                    for v in (self.rpm, self.tpm))
            and isinstance(self.revoked, bool) and real(self.created_at)
        )  # fmt: skip
        if not ok:
            raise ConfigError(f"key {self.id!r:.40}: a field has the wrong type or value")

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("key_hash")
        return d

    @staticmethod
    def new(name: str, **kw: Any) -> tuple[VirtualKey, str]:
        key = KEY_PREFIX + secrets.token_urlsafe(24)
        k = VirtualKey(id=secrets.token_hex(6), name=name, key_hash=hash_key(key), **kw)
        if k.period not in _PERIODS:
            raise ConfigError(f"period must be one of {list(_PERIODS)}")
        return k, key


@dataclass(frozen=True)
class RateCount:
    """One request as a key's rate limits count it: a request, and `tokens` (prompt and
    max_tokens) against the key's rpm/tpm in the current minute."""

    key_id: str
    rpm: int | None
    tpm: int | None
    tokens: int
    # The request's own id: an admission replayed (a reply lost, the command sent again)
    # counts once, as a budget's hold does; a request with no budget had counted twice.
    hold: str | None = None


@dataclass(frozen=True)
class Refused:
    """Why `admit` refused a request: a budget it does not fit (`budget`, with `left_usd`;
    and `unheld_usd`, what spend alone leaves in the fullest of its budgets, negative past
    a limit: whether a retry may fit once requests in flight settle), else the key's rate
    limit (`retry_in_s`: until the minute turns)."""

    budget: Budget | None = None
    left_usd: float = 0.0
    unheld_usd: float = 0.0
    retry_in_s: float = 0.0


def _stored(cls: type[_T], raw: str | bytes) -> _T | None:
    """A record as the store holds it (a key, a team's budget), or None when it cannot be
    read. Fields this version does not know (written by a newer one, mid-upgrade) are left
    out: one such record had made every listing, update and revocation of every key fail."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    try:
        d = json.loads(raw)
        return cls(**{k: v for k, v in d.items() if k in names})
    except (ValueError, TypeError, AttributeError, SatisficeError):
        return None


def _two_ints(reply: Any) -> tuple[int, int]:
    """A reply of two integers (TIME's seconds and microseconds; MGET's counters)."""
    a, b = reply
    return int(a), int(b)


def _admission_reply(reply: Any, n: int) -> tuple[int, int, int]:
    """`_ADMIT`'s reply for `n` budgets: (outcome, left or ms, unheld)."""
    i, left = int(reply[0]), int(reply[1])
    if not -2 <= i <= n:
        raise ValueError(f"no budget {i}")
    return i, left, int(reply[2]) if i > 0 else 0


def _pairs(raw: list[Any] | dict[Any, Any]) -> Iterable[tuple[Any, Any]]:
    """A hash as HGETALL answers it (RESP2: field, value, field, value, ...) as pairs; a map
    (RESP3, when the URL asks for `protocol=3`) as it is."""
    return raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)


#: The least change of the store's clock against a replica's that the replica takes up (s).
_SKEW_STEP_S = 0.05


def _retry_in() -> float:
    return 60 - time.time() % 60


class MemoryState:
    """One process's state (asyncio: every method runs to completion without a switch)."""

    backend = "memory"

    def __init__(self, max_pins: int = 100_000) -> None:
        self.keys: dict[str, VirtualKey] = {}
        self._by_hash: dict[str, str] = {}  # a secret's hash -> its key's id
        self.teams: dict[str, Budget] = {}
        self._spent: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._spend_sweep_at = 10_000
        self._holds: set[str] = set()  # reservations not yet settled, by id
        self._windows: dict[str, int] = {}
        self._window_sweep_at = 100_000
        self._pins: dict[str, tuple[str, float]] = {}  # the least recently set first
        self._pin_sweep_at = 10_000
        self._max_pins = max_pins
        self.cooldowns: dict[str, tuple[float, str, float, bool]] = {}

    async def close(self) -> None:
        pass

    def now(self) -> float:
        """The clock shared times are stamped and read on (unix s): this process's."""
        return time.time()

    async def sync_clock(self) -> None:
        """Nothing to measure: one process, one clock."""

    # keys ------------------------------------------------------------------------------------
    async def put_key(self, k: VirtualKey) -> None:
        self.keys[k.id] = k
        self._by_hash[k.key_hash] = k.id

    async def replace_key(self, old: VirtualKey, new: VirtualKey) -> bool:
        """Write `new` only if the stored key is still `old` (False: it changed meanwhile)."""
        if self.keys.get(old.id) != old:
            return False
        self.keys[old.id] = new
        return True

    async def key_by_secret(self, secret: str, cached: bool = False) -> VirtualKey | None:
        """The key whose secret this is (`cached`: no difference here, every read is
        current). Found by its hash in a dict: a scan had compared every key's."""
        kid = self._by_hash.get(hash_key(secret))
        return None if kid is None else self.keys.get(kid)

    async def list_keys(self) -> list[VirtualKey]:
        return list(self.keys.values())

    async def key_by_id(self, kid: str) -> VirtualKey | None:
        return self.keys.get(kid)

    async def put_team(self, b: Budget) -> None:
        self.teams[b.scope] = b

    async def team(self, name: str) -> Budget | None:
        return self.teams.get(f"team:{name}")

    # admission: budgets and rate limits, checked together, counted together --------------
    async def admit(
        self,
        budgets: Sequence[Budget],
        usd: float,
        rate: RateCount | None = None,
        key: VirtualKey | None = None,
    ) -> Refused | None:
        """Reserve `usd` under every budget and count `rate` in its key's window, or neither:
        every check runs before anything is counted, so a request one refuses takes nothing
        from the others. A replayed reservation (the same hold) is admitted once. (`key`:
        see `RedisState.admit`; a key read here is always current.)"""
        amount = _nano_up(usd)
        hold = budgets[0].hold if budgets else None
        if hold is not None and hold in self._holds:
            return None
        first: tuple[Budget, int] | None = None  # the first budget it does not fit
        unheld = math.inf  # what spend alone leaves, at the fullest of the budgets
        for b in budgets:
            k = f"{b.scope}:{b.tag}"
            unheld = min(unheld, _nano(b.limit_usd) - self._spent.get(k, 0))
            left = _nano(b.limit_usd) - self._spent.get(k, 0) - self._reserved.get(k, 0)
            if first is None and amount > left:
                first = (b, left)
        if first is not None:
            return Refused(first[0], max(first[1], 0) / NANO, unheld / NANO)
        if rate is not None:
            minute = int(time.time() // 60)
            rk, tk = f"rpm:{rate.key_id}:{minute}", f"tpm:{rate.key_id}:{minute}"
            # a rate count alone, replayed: counted once (kept as long as its window, and
            # only once admitted: a refused request sent again is checked again)
            seen = f"hold:{rate.hold}:{minute}" if hold is None and rate.hold else None
            if seen is not None and seen in self._windows:
                return None
            if rate.rpm is not None and self._windows.get(rk, 0) + 1 > rate.rpm:
                return Refused(retry_in_s=_retry_in())
            if rate.tpm is not None and self._windows.get(tk, 0) + rate.tokens > rate.tpm:
                return Refused(retry_in_s=_retry_in())
            self._windows[rk] = self._windows.get(rk, 0) + 1
            if seen is not None:
                self._windows[seen] = 1
            if rate.tpm is not None:
                self._windows[tk] = self._windows.get(tk, 0) + rate.tokens
            if len(self._windows) > self._window_sweep_at:  # old windows: drop them
                keep = f":{minute}"
                self._windows = {k: v for k, v in self._windows.items() if k.endswith(keep)}
                # next when they have doubled: with more live windows in one minute than
                # the bound, every request had rebuilt the dict (about 10 ms at 100,000)
                self._window_sweep_at = max(2 * len(self._windows), 100_000)
        for b in budgets:
            k = f"{b.scope}:{b.tag}"
            self._reserved[k] = self._reserved.get(k, 0) + amount
        if hold is not None:
            self._holds.add(hold)
        return None

    async def renew_holds(self) -> None:
        """Nothing to renew: a hold here ends with the process."""

    async def settle(
        self, budgets: Sequence[Budget], reserved_usd: float, actual_usd: float
    ) -> None:
        amount, actual = _nano_up(reserved_usd), _nano_up(actual_usd)
        hold = budgets[0].hold if budgets else None
        if hold is not None:
            if hold not in self._holds:
                return  # settled already, or never reserved
            self._holds.discard(hold)
        for b in budgets:
            k = f"{b.scope}:{b.tag}"
            self._reserved[k] = self._reserved.get(k, 0) - amount
            self._spent[k] = self._spent.get(k, 0) + actual
        if len(self._spent) > self._spend_sweep_at:
            self._sweep_spend()

    def _sweep_spend(self) -> None:
        """Drop the counters of days and months before the last one, with nothing still
        held in them, as Redis expires them (`_ttl`): a budget's counters are kept per
        period, and a replica serving a thousand keys with daily budgets had grown by
        their counters every day it ran. Swept each time the counters double, as pins are."""
        now = time.time()
        t = time.gmtime(now)
        last_month = f"{t.tm_year - (t.tm_mon == 1):04d}-{(t.tm_mon - 2) % 12 + 1:02d}"
        keep = {
            "all", period_tag("day", now), period_tag("day", now - 86400),
            period_tag("month", now), last_month,
        }  # fmt: skip
        held = self._reserved
        self._spent = {
            k: v for k, v in self._spent.items() if k.rpartition(":")[2] in keep or held.get(k)
        }
        self._reserved = {k: v for k, v in held.items() if v or k in self._spent}
        self._spend_sweep_at = max(2 * len(self._spent), 10_000)

    async def spent(self, b: Budget) -> tuple[float, float]:
        k = f"{b.scope}:{b.tag}"
        return self._spent.get(k, 0) / NANO, self._reserved.get(k, 0) / NANO

    # sessions and cooldowns ------------------------------------------------------------------
    async def pin(self, session: str) -> str | None:
        v = self._pins.get(session)
        return v[0] if v and v[1] > time.time() else None

    async def set_pin(self, session: str, model: str, ttl_s: float = 3600) -> None:
        now = time.time()
        self._pins.pop(session, None)  # set again: the most recent, last
        self._pins[session] = (model, now + ttl_s)
        # Expired pins go, a sweep each time the dict doubles: a caller may send a new
        # session id with every request, and the memory must not grow with them; past
        # `max_pins` live ones, the least recently set go (a new session a request had
        # grown a replica by ~200 B each for their hour: ~700 MiB at 1,000 a second).
        if len(self._pins) > self._pin_sweep_at:
            self._pins = {k: v for k, v in self._pins.items() if v[1] > now}
            self._pin_sweep_at = max(2 * len(self._pins), 10_000)
        while len(self._pins) > self._max_pins:
            del self._pins[next(iter(self._pins))]

    def pin_left(self, session: str) -> tuple[str, float] | None:
        """(model, seconds left) of a live pin."""
        v = self._pins.get(session)
        left = 0.0 if v is None else v[1] - time.time()
        return None if v is None or left <= 0 else (v[0], left)

    def live_pins(self) -> list[str]:
        """The sessions with a live pin, the least recently set first."""
        now = time.time()
        return [k for k, (_, until) in self._pins.items() if until > now]

    async def share_pins(self) -> None:
        """(One process: nothing to share.)"""

    async def push_cooldown(self, key: str, until: float, why: str, made: float = 0.0) -> bool:
        self.cooldowns[key] = (until, why, made, True)  # one process: every one is its own
        return True

    async def cooldowns_now(self) -> dict[str, tuple[float, str, float, bool]]:
        now = time.time()
        return {k: v for k, v in self.cooldowns.items() if v[0] > now}


def _nano(usd: float) -> int:
    return round(usd * NANO)


def _nano_up(usd: float) -> int:
    """`usd` in nano-dollars, rounded up (a hold or a charge is never under-counted), but
    not for a float's noise: a cost the ledger records as $7.000000000000001e-07 (700 nano-
    dollars and a ten-trillionth) had been charged 701, a nano-dollar more than on record
    for every request whose cost the float arithmetic left a hair over a whole one."""
    n = usd * NANO
    whole = round(n)
    return whole if abs(n - whole) <= 1e-9 * max(1.0, abs(n)) else math.ceil(n)


# KEYS[1] the keys hash; ARGV: id, the JSON read, the JSON to write. The record already
# written is a success: the command sent again after its reply was lost (`_Connections.call`
# sends it again on another connection) had been told the key changed meanwhile (a 409).
_CAS = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored == ARGV[3] then return 1 end
if stored ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# KEYS: per budget its spent and held counters and its holds (a sorted set of "id:amount" by
# expiry), then (when a rate is counted) the key's rpm and tpm windows' names less their
# minute. ARGV: amount, hold id ('' none), the number of budgets, rpm, tpm (-1: no limit),
# tokens, the hold's lifetime (s), then per budget its limit, then per budget its counters'
# TTL (0: none), then the caller's key id and its record as the replica read it ('' and '':
# no check; the keys hash is then the last of KEYS).
# The clock is the store's (TIME), the same for every replica: the minute a rate is counted
# in had been each replica's own, so replicas whose clocks differed by 20 s counted a key's
# requests in two windows for a third of each minute (twice its rpm let through).
# Holds past their expiry are released first: a replica that died mid-request never settles
# its hold, and on a "total" budget, whose counters never expire, it had stayed for good.
# Every check runs before anything is counted. Returns {0, 0} admitted, {i, left} budget i
# does not fit, {-1, ms} the rate limit is reached (ms: until the minute turns), {-2, 0}
# the key's record changed.
_ADMIT = """
local amount, hold, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local rpm, tpm, tokens = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local clock = redis.call('TIME')
local now = tonumber(clock[1])
local expiry = now + tonumber(ARGV[7])
local key_id = ARGV[8 + 2 * n]
local checked = key_id ~= '' and 1 or 0
local rate = #KEYS - checked == 3 * n + 2
if checked == 1 and redis.call('HGET', KEYS[#KEYS], key_id) ~= ARGV[9 + 2 * n] then
  return {-2, 0}
end
if hold ~= '' and redis.call('EXISTS', hold) == 1 then return {0, 0} end
for i = 1, n do
  local stale = redis.call('ZRANGEBYSCORE', KEYS[3*i], '-inf', now)
  if #stale > 0 then
    local freed = 0
    for _, m in ipairs(stale) do freed = freed + tonumber(string.match(m, ':(%d+)$')) end
    redis.call('DECRBY', KEYS[3*i-1], freed)
    redis.call('ZREMRANGEBYSCORE', KEYS[3*i], '-inf', now)
  end
end
local refused, left, unheld = 0, 0, nil
for i = 1, n do
  local spent = tonumber(redis.call('GET', KEYS[3*i-2]) or '0')
  local held = tonumber(redis.call('GET', KEYS[3*i-1]) or '0')
  local limit = tonumber(ARGV[7 + i])
  if unheld == nil or limit - spent < unheld then unheld = limit - spent end
  if refused == 0 and spent + held + amount > limit then
    refused, left = i, limit - spent - held
  end
end
if refused > 0 then return {refused, left, unheld} end
if rate then
  local minute = math.floor(now / 60)
  local rk, tk = KEYS[3*n+1] .. minute, KEYS[3*n+2] .. minute
  local wait = (60 - now % 60) * 1000 - math.floor(tonumber(clock[2]) / 1000)
  if rpm >= 0 and tonumber(redis.call('GET', rk) or '0') + 1 > rpm then return {-1, wait} end
  if tpm >= 0 and tonumber(redis.call('GET', tk) or '0') + tokens > tpm then
    return {-1, wait}
  end
  redis.call('INCR', rk)
  redis.call('EXPIRE', rk, 120)
  if tpm >= 0 then
    redis.call('INCRBY', tk, tokens)
    redis.call('EXPIRE', tk, 120)
  end
end
for i = 1, n do
  redis.call('INCRBY', KEYS[3*i-1], amount)
  -- the amount as sent (an integer string): Lua would print a large number as 1.2e+14
  if hold ~= '' then redis.call('ZADD', KEYS[3*i], expiry, hold .. ':' .. ARGV[1]) end
  local ttl = tonumber(ARGV[7 + n + i])
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[3*i-1], ttl)
    redis.call('EXPIRE', KEYS[3*i], ttl)
  end
end
-- a hold with no budget is the rate count's alone: nothing settles it, it lives as a window
if hold ~= '' then redis.call('SET', hold, amount, 'EX', n > 0 and 604800 or 120) end
return {0, 0}
"""

# KEYS: the secret-hash -> id index, the keys by id. ARGV: the secret's hash. One round trip
# for what took two (the id, then the key).
_KEY = """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
return redis.call('HGET', KEYS[2], id)
"""

# A hold released by admission's sweep (past its expiry) is not released again: only the
# actual cost is counted.
_SETTLE = """
local held, actual = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = #KEYS / 3
local hold = ARGV[3 + n]
if hold ~= '' and redis.call('DEL', hold) == 0 then return 1 end
for i = 1, n do
  if hold == '' or redis.call('ZREM', KEYS[3*i], hold .. ':' .. ARGV[1]) == 1 then
    redis.call('DECRBY', KEYS[3*i-1], held)
  end
  redis.call('INCRBY', KEYS[3*i-2], actual)
  local ttl = tonumber(ARGV[2 + i])
  if ttl > 0 then redis.call('EXPIRE', KEYS[3*i-2], ttl) end
end
return 0
"""


# Shared cooldowns and enables are stamped on the store's clock, by the store: a replica
# sends how long ago it began and how long it lasts, and reads the stamps with its measured
# skew (`_stamps`). On each replica's own clock, a 30 s cooldown shared by one whose clock
# ran a minute slow was over for the others before it began. An entry also names its writer
# (a replica's random id): a replica's own cooldowns, read back, are told by it, not by a
# time that moves when its skew is measured anew. A cooldown ending later than the one
# asked for stays (the last writer had won: another replica's 5 s replaced a 120 s one).
# KEYS: the hash. ARGV: field, seconds left (or "" for an enable's stamp: then the hash's
# value is the stamp alone), why, seconds since it began (< 0: not said), writer.
_STAMP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ago = tonumber(ARGV[4])
local made = 0
if ago >= 0 then made = now - ago end
if ARGV[2] == '' then
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%.6f', made))
  return 1
end
local untl = now + tonumber(ARGV[2])
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local ok, e = pcall(cjson.decode, old)
  if ok and type(e) == 'table' and tonumber(e[1]) and tonumber(e[1]) > untl then return 0 end
end
local entry = '[' .. string.format('%.6f', untl) .. ',' .. cjson.encode(ARGV[3])
  .. ',' .. string.format('%.6f', made) .. ',' .. cjson.encode(ARGV[5]) .. ']'
redis.call('HSET', KEYS[1], ARGV[1], entry)
return 1
"""

# KEYS: holds sorted sets; ARGV: the lease (s), then per key the hold's member. A member no
# longer there (settled, or released) is not added again (XX).
_RENEW = """
local clock = redis.call('TIME')
local expiry = tonumber(clock[1]) + tonumber(ARGV[1])
for i = 1, #KEYS do redis.call('ZADD', KEYS[i], 'XX', expiry, ARGV[i + 1]) end
return 0
"""


def _pack(args: Sequence[str | int | bytes]) -> bytes:
    """A command as RESP: an array of bulk strings (the arguments here are str, int and
    bytes). Written here rather than redis-py's `pack_command`, which takes any type through
    its encoder: `benches/instructions.py serve` counted 1.84M instructions a budgeted,
    rate-limited request (three commands) with this, 2.01M with that."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


def connection_factory(
    url: str, size: int = 128, wait_s: float = 5.0, timeout_s: float = 2.0
) -> tuple[Callable[[], Any], int, float]:
    """redis-py's connection factory for `url` (its host, port, db, credentials and TLS),
    with how many connections at most and how long a command waits for one. ValueError
    naming the option an URL gives that redis-py's connection does not take or cannot
    read: checked with the config, it had made every state call a 500 (TypeError) or
    ended start-up with a traceback.

    RESP2, whose replies every redis-py and Redis version gives alike (redis-py 8 defaults
    to RESP3, which Redis before 6 lacks). The URL's options win, as they did with
    redis-py's pool; its pool's own two (`max_connections`, and `timeout`, the wait for a
    free connection) set the bound and the wait here: given to a connection, `timeout` had
    failed every command with a TypeError."""
    import redis.asyncio as aioredis
    from redis.asyncio.connection import parse_url

    opts: dict[str, Any] = {
        "socket_timeout": None, "socket_connect_timeout": timeout_s, "protocol": 2,
        **parse_url(url),
    }  # fmt: skip
    size = int(opts.pop("max_connections", size))
    wait_s = float(opts.pop("timeout", wait_s))  # redis-py 5.0 leaves it a str
    if not (size > 0 and wait_s >= 0):
        raise ValueError("max_connections must be at least 1 and timeout not negative")
    decode = opts.get("decode_responses")  # (a string, as the URL gave it)
    if decode not in (None, False) and str(decode).lower() not in ("false", "0", "no", "off"):
        raise ValueError("decode_responses must be false or left out (satisfice reads bytes)")
    opts.pop("decode_responses", None)
    for k in ("socket_timeout", "socket_connect_timeout"):
        if opts.get(k) is not None and not float(opts[k]) > 0:
            raise ValueError(f"{k} must be a positive number of seconds")
    if float(opts.get("health_check_interval") or 0) < 0:  # (its check then fails each call)
        raise ValueError("health_check_interval must not be negative")
    make: Callable[[], Any] = aioredis.ConnectionPool(**opts).make_connection
    try:
        make()  # made, not connected: its options are checked here
    except TypeError as e:
        raise ValueError(f"an option redis-py's connection does not take ({e})") from None
    return make, size, wait_s


class _Connections:
    """Connections to one Redis server: redis-py's `Connection`s (its connect, auth, TLS and
    reply parser) taken and given back here, one command each, without its client and pool,
    whose layers cost a lock or a condition, a readiness probe of the socket and
    observability hooks on every command (`benches/bench_redis.py`: redis-py's client took
    1.4-2x the CPU of this per command). The timeout is one `asyncio.timeout` around the
    command and its reply: a connection's own socket timeout sends each write through
    `asyncio.wait_for`, a task a command.
    """

    def __init__(
        self, url: str, size: int = 128, wait_s: float = 5.0, timeout_s: float = 2.0
    ) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import ResponseError

        self._make, size, wait_s = connection_factory(url, size, wait_s, timeout_s)
        self._idle: list[Any] = []
        # Connections dropped (disconnected) kept to connect again: making one costs more
        # than connecting it (redis-py 8 reads its package metadata for each), and through
        # an outage every command would make one. At most `size` are ever made.
        self._spare: list[Any] = []
        self._closed = False
        # At most `size` commands at once; past that a caller waits up to `wait_s` for a
        # connection (a burst waits rather than failing as if Redis were down).
        self._slots = asyncio.Semaphore(size)
        self._wait_s = wait_s
        self._timeout_s = timeout_s
        self._lost = RedisConnectionError
        self._error_reply = ResponseError

    async def call(self, *args: str | int | bytes) -> Any:
        """One command and its reply. A connection that sat idle may have been closed by
        the server meanwhile: when it fails so, the command is sent again on another (after a
        restart every idle one fails so, one after another; the scripts are idempotent by
        their hold id). A command not answered within `timeout_s` raises TimeoutError."""
        slots = self._slots
        if slots.locked():
            try:
                await asyncio.wait_for(slots.acquire(), self._wait_s)
            except TimeoutError:
                raise self._lost("no Redis connection free") from None
        else:
            await slots.acquire()
        try:
            command = _pack(args)
            while True:
                reused = bool(self._idle)
                if reused:
                    conn = self._idle.pop()
                else:
                    conn = self._spare.pop() if self._spare else self._make()
                try:
                    async with asyncio.timeout(self._timeout_s):
                        if not reused:
                            await conn.connect()
                        await conn.send_packed_command(command, check_health=False)
                        reply = await conn.read_response()
                except self._lost:
                    await self._drop(conn)
                    if reused:
                        continue
                    raise
                except self._error_reply:
                    await self._give_back(
                        conn
                    )  # an error reply, read whole: the connection is fine
                    raise
                except BaseException:
                    # a timeout or a cancellation mid-reply: what it would read next is unknown
                    await self._drop(conn)
                    raise
                await self._give_back(conn)
                return reply
        finally:
            slots.release()

    async def _give_back(self, conn: Any) -> None:
        if self._closed:  # in flight as close() ran: its connection goes too
            await conn.disconnect(nowait=True)
        else:
            self._idle.append(conn)

    async def _drop(self, conn: Any) -> None:
        await conn.disconnect(nowait=True)
        if not self._closed:
            self._spare.append(conn)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle, self._spare = self._idle, [], []
        for conn in idle:
            await conn.disconnect(nowait=True)


class _Script:
    """A Lua script sent by EVALSHA (its SHA-1 computed here), loaded when Redis lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


_AWAY_S = 1.0  # after a Redis command timed out, how long state calls fail at once
_LOCAL_PINS = 4096  # the session pins a replica on Redis keeps in its own view
_CACHE_SWEEP = 1024  # keys and teams cached before the first sweep (`RedisState._cached`)


class RedisState:
    """State in Redis, shared by every replica pointing at it."""

    backend = "redis"

    def __init__(self, url: str, prefix: str = "satisfice:") -> None:
        try:
            from redis.exceptions import NoScriptError
        except ImportError:
            raise ConfigError("the redis state backend needs redis-py: pip install redis") from None
        self._r = _Connections(url)
        self._no_script = NoScriptError
        self._p = prefix
        self._admit = _Script(_ADMIT)
        self._key = _Script(_KEY)
        self._settle = _Script(_SETTLE)
        self._cas = _Script(_CAS)
        self._renew = _Script(_RENEW)
        self._stamp = _Script(_STAMP)
        self.writer = secrets.token_hex(8)  # whose cooldowns are whose (see _STAMP)
        self._marked = False  # its mark was set in the store once (`lost_state`)
        # this replica's holds not yet settled, renewed by `renew_holds`: the hold's key ->
        # its holds sets, its member in them, and when it was made (monotonic)
        self._leases: dict[str, tuple[list[str], str, float]] = {}
        # a secret's hash -> its key, until when it may be served (30 s), and its stored
        # record as read (what admission checks is still the stored one)
        self._key_cache: dict[str, tuple[VirtualKey, float, bytes]] = {}
        self._team_cache: dict[str, tuple[Budget | None, float]] = {}
        self._cache_sweep_at = _CACHE_SWEEP  # (see `_cached`)
        self.errors = 0
        self._warned_at = -math.inf
        self._away_until = 0.0  # a command timed out: calls fail at once until then
        self._unreadable_at = -math.inf
        # rate windows and session pins while Redis is away: this replica's own view (they
        # had no limit, and the next turn was routed anew); the pins it set or read, the
        # most recent `_LOCAL_PINS` (a fallback: Redis holds them), and those it set while
        # Redis was away, shared once it is back (`share_pins`)
        self._local = MemoryState(max_pins=_LOCAL_PINS)
        self._unshared: dict[str, None] = {}
        # the store's clock less this replica's (s), measured by `sync_clock`
        self._skew = 0.0

    async def close(self) -> None:
        await self._r.close()

    def now(self) -> float:
        """The time by the store's clock (unix s), as last measured here (`sync_clock`):
        the day or month a budget counts in, the same for every replica (each replica's
        own clock had counted a budget in its own day around midnight). Cooldowns and
        enables are stamped by the store itself (`_STAMP`)."""
        return time.time() + self._skew

    async def sync_clock(self) -> None:
        """Measure the store's clock against this replica's (Redis TIME, at the round trip's
        middle; good to half a round trip), taken up when it moved by more than that and
        `_SKEW_STEP_S`. Raises StateUnavailable while Redis is away."""
        t0 = time.time()
        sec, usec = await self._do(self._r.call("TIME"), _two_ints)
        t1 = time.time()
        skew = sec + usec / 1e6 - (t0 + t1) / 2
        if abs(skew - self._skew) > max(_SKEW_STEP_S, t1 - t0):
            self._skew = skew

    async def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """`script` by EVALSHA, loaded again when the server lacks it (a restart, SCRIPT
        FLUSH)."""
        call = self._r.call
        try:
            return await call("EVALSHA", script.sha, len(keys), *keys, *args)
        except self._no_script:
            await call("SCRIPT", "LOAD", script.source)
            return await call("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _do(self, coro: Any, read: Callable[[Any], Any] | None = None) -> Any:
        """`coro`'s reply (as `read` reads it), or StateUnavailable. Redis that does not
        answer (hung, or a network that drops packets) costs a command its 2 s timeout:
        after one, the calls of the next `_AWAY_S` fail at once (their kinds of state fall
        back as they do when Redis is down), and then one call tries again while the
        others still fail at once. Every state call of every request had waited out its
        own timeout (a request with a session and a team budget 6 s). A reply `read`
        cannot read (a proxy's or a fake Redis's, well-formed RESP of another shape) is
        the store unavailable too: it had raised TypeError or ValueError, a 500 for a
        budgeted request (whose hold then went unreleased) and for every session's."""
        import redis.exceptions

        now = time.monotonic()
        if self._away_until:
            if now < self._away_until:
                coro.close()
                raise StateUnavailable("redis unavailable: not answering (a command timed out)")
            self._away_until = now + _AWAY_S  # this call tries it; the others wait it out
        try:
            out = await coro
            if read is not None:
                try:
                    out = read(out)
                except (TypeError, ValueError, AttributeError, IndexError):
                    # as redis-py takes a reply that is not RESP
                    raise redis.exceptions.InvalidResponse("a reply of another shape") from None
        except (redis.exceptions.RedisError, OSError) as e:
            if isinstance(e, TimeoutError | redis.exceptions.TimeoutError):  # (a connect's)
                self._away_until = time.monotonic() + _AWAY_S
            # Unreachable, or refusing (OOM, READONLY, a failover): either way the state is
            # not available, and each caller's documented outage behaviour applies (a raw
            # ResponseError had turned a billed answer into a 500 and left its hold).
            self.errors += 1
            now = time.monotonic()
            if now - self._warned_at > 10:  # logged, at most every 10 s through an outage
                self._warned_at = now
                _log.warning(
                    "redis unavailable (%s); each kind of state falls back as documented "
                    "(%d failures so far)", type(e).__name__, self.errors,
                    extra={"event": "state_unavailable"},
                )  # fmt: skip
            raise StateUnavailable(f"redis unavailable: {type(e).__name__}") from None
        self._away_until = 0.0
        return out

    # keys ------------------------------------------------------------------------------------
    async def put_key(self, k: VirtualKey) -> None:
        data = json.dumps(asdict(k))
        await self._do(self._r.call("HSET", f"{self._p}keys", k.id, data))
        await self._do(self._r.call("HSET", f"{self._p}key_hash", k.key_hash, k.id))
        self._key_cache.pop(k.key_hash, None)

    async def replace_key(self, old: VirtualKey, new: VirtualKey) -> bool:
        """Write `new` only if the stored key is still `old`, atomically (a compare-and-set
        in Lua): a PATCH must not write back a copy read before another replica's revoke.
        The set compares the stored bytes read here, once they read as `old`: bytes made
        anew from `old` never matched a record with a field this version does not know, or
        its fields in another order, and every PATCH of one answered 409."""
        keys = f"{self._p}keys"
        raw = await self._do(self._r.call("HGET", keys, old.id))
        if raw is None or _stored(VirtualKey, raw) != old:
            return False
        # the fields this version does not know are kept as they were read (a newer
        # replica's: writing this version's fields alone had dropped them)
        try:
            stored = json.loads(raw)
        except ValueError:
            stored = {}
        record = {**(stored if isinstance(stored, dict) else {}), **asdict(new)}
        ok = await self._do(self._eval(self._cas, [keys], [old.id, raw, json.dumps(record)]))
        self._key_cache.pop(new.key_hash, None)
        return bool(int(ok))

    async def key_by_secret(self, secret: str, cached: bool = False) -> VirtualKey | None:
        """The key whose secret this is. `cached`: one read in the last 30 s, without a
        round trip, for a caller whose admission checks it against the stored record
        (`admit(key=...)`, atomically with the reservation)."""
        h = hash_key(secret)
        hit = self._key_cache.get(h)
        if cached and hit is not None and hit[1] > time.time():
            return hit[0]
        try:
            keys = [f"{self._p}key_hash", f"{self._p}keys"]
            raw = await self._do(self._eval(self._key, keys, [h]))
        except StateUnavailable:
            if hit is not None and hit[1] > time.time():
                return hit[0]  # recently seen: serve it while Redis is away
            raise
        if raw is None:
            return None
        k = _stored(VirtualKey, raw)
        if k is None:  # fail closed, and say why: the key's limits cannot be read
            self._unreadable("a key")
            raise StateUnavailable("the stored record of this key cannot be read")
        if not hmac.compare_digest(k.key_hash, h):
            return None
        self._key_cache[h] = (k, time.time() + 30, raw)
        self._cached()
        return k

    async def list_keys(self) -> list[VirtualKey]:
        raw = await self._do(self._r.call("HVALS", f"{self._p}keys"), list)
        keys = [_stored(VirtualKey, v) for v in raw]
        if None in keys:  # listed without it: the others can still be managed
            self._unreadable("a key")
        return [k for k in keys if k is not None]

    async def key_by_id(self, kid: str) -> VirtualKey | None:
        raw = await self._do(self._r.call("HGET", f"{self._p}keys", kid))
        if raw is None:
            return None
        k = _stored(VirtualKey, raw)
        if k is None:
            self._unreadable("a key")
            raise StateUnavailable(f"the stored record of key {kid!r} cannot be read")
        return k

    def _unreadable(self, what: str) -> None:
        """Log (at most every 10 s) that a record in Redis could not be read: another
        version's format, or written by hand."""
        now = time.monotonic()
        if now - self._unreadable_at > 10:
            self._unreadable_at = now
            _log.warning(
                "redis holds %s record this version cannot read; it is skipped", what,
                extra={"event": "state_unreadable"},
            )  # fmt: skip

    async def put_team(self, b: Budget) -> None:
        stored = {"scope": b.scope, "limit_usd": b.limit_usd, "period": b.period}  # not at/hold
        await self._do(self._r.call("HSET", f"{self._p}teams", b.scope, json.dumps(stored)))
        self._team_cache.pop(b.scope.removeprefix("team:"), None)

    async def team(self, name: str) -> Budget | None:
        """The team's budget, or None. While Redis is away, what was seen in the last 30 s
        (that a team has no budget included): a team label alone must not fail its keys."""
        hit = self._team_cache.get(name)
        try:
            raw = await self._do(self._r.call("HGET", f"{self._p}teams", f"team:{name}"))
        except StateUnavailable:
            if hit is not None and hit[1] > time.time():
                return hit[0]
            raise
        b = None if raw is None else _stored(Budget, raw)
        if raw is not None and b is None:  # its budget cannot be checked: fail closed
            self._unreadable("a team")
            raise StateUnavailable(f"the stored budget of team {name!r} cannot be read")
        self._team_cache[name] = (b, time.time() + 30)
        self._cached()
        return b

    def _cached(self) -> None:
        """Drop the keys and teams read more than 30 s past their 30 s, each time the two
        caches together double: an entry was only ever replaced, so every key ever used
        (keys made and revoked, one per caller) stayed in each replica for good. The 30 s
        of grace leave a request read before them its admission (`admit` looks up the key
        it read, and takes a key gone from here for one changed: a retry)."""
        if len(self._key_cache) + len(self._team_cache) <= self._cache_sweep_at:
            return
        stale = time.time() - 30
        self._key_cache = {h: v for h, v in self._key_cache.items() if v[1] > stale}
        self._team_cache = {n: v for n, v in self._team_cache.items() if v[1] > stale}
        live = len(self._key_cache) + len(self._team_cache)
        self._cache_sweep_at = max(2 * live, _CACHE_SWEEP)

    # budgets ---------------------------------------------------------------------------------
    def _hold_key(self, budgets: Sequence[Budget], rate: RateCount | None = None) -> str:
        hold = budgets[0].hold if budgets else rate.hold if rate is not None else None
        return f"{self._p}hold:{hold}" if hold else ""

    def _bkeys(self, budgets: Sequence[Budget]) -> list[str]:
        out = []
        for b in budgets:
            at = b.at if b.at is not None else period_tag(b.period, self.now())
            tag = f"{self._p}budget:{b.scope}:{at}"
            out += [f"{tag}:spent", f"{tag}:held", f"{tag}:holds"]
        return out

    async def admit(
        self,
        budgets: Sequence[Budget],
        usd: float,
        rate: RateCount | None = None,
        key: VirtualKey | None = None,
    ) -> Refused | None:
        """`MemoryState.admit` in one Lua script. While Redis is away budgets fail closed
        (StateUnavailable); a rate count alone fails open, onto this replica's own window.
        With `key` (as this replica read it), the script first checks that the stored
        record is still the one read, else raises KeyChanged (and forgets the read)."""
        seen = None
        if key is not None:
            seen = self._key_cache.get(key.key_hash)
            if seen is None or seen[0] != key:  # changed here, or read anew, since
                raise KeyChanged(key.id)
        keys, args = self._admission(budgets, usd, rate, seen)
        try:
            i, left, unheld = await self._do(
                self._eval(self._admit, keys, args), lambda r: _admission_reply(r, len(budgets))
            )
        except StateUnavailable:
            if budgets or rate is None:
                raise
            return await self._local.admit((), 0.0, rate)
        if i == -2:
            assert key is not None
            # forgotten only if no request read it anew meanwhile: a late reply had dropped
            # that read, and the retried request failed (503) after a single change
            if self._key_cache.get(key.key_hash) is seen:
                self._key_cache.pop(key.key_hash, None)
            raise KeyChanged(key.id)
        if seen is not None and self._key_cache.get(seen[0].key_hash) is seen:
            # the stored record is the one read, as of now: 30 s more, as a read would give
            # (through an outage a key in use is served 30 s after its last request)
            self._key_cache[seen[0].key_hash] = (seen[0], time.time() + 30, seen[2])
        if i == 0:
            hold = self._hold_key(budgets)
            if hold:  # a lease this replica renews until it settles (the member as _ADMIT's)
                member = f"{hold}:{_nano_up(usd)}"
                self._leases[hold] = (keys[2 : 3 * len(budgets) : 3], member, time.monotonic())
            return None
        if i < 0:
            return Refused(retry_in_s=max(left, 1) / 1000)
        return Refused(budgets[i - 1], max(left, 0) / NANO, unheld / NANO)

    def _admission(
        self,
        budgets: Sequence[Budget],
        usd: float,
        rate: RateCount | None,
        seen: tuple[VirtualKey, float, bytes] | None,
    ) -> tuple[list[str], list[int | str | bytes]]:
        """The admission script's KEYS and ARGV (see `_ADMIT`); `seen`: the key's read to
        check, as cached."""
        keys = self._bkeys(budgets)
        if rate is not None:  # the script adds the minute, by the store's clock
            keys += [f"{self._p}rpm:{rate.key_id}:", f"{self._p}tpm:{rate.key_id}:"]
        if seen is not None:
            keys.append(f"{self._p}keys")
        args: list[int | str | bytes] = [
            _nano_up(usd),
            self._hold_key(budgets, rate),
            len(budgets),
            -1 if rate is None or rate.rpm is None else rate.rpm,
            -1 if rate is None or rate.tpm is None else rate.tpm,
            0 if rate is None else rate.tokens,
            HOLD_S,
            *(_nano(b.limit_usd) for b in budgets),
            *((_ttl(b.period) or 0) for b in budgets),
            "" if seen is None else seen[0].id,
            b"" if seen is None else seen[2],
        ]
        return keys, args

    async def settle(
        self, budgets: Sequence[Budget], reserved_usd: float, actual_usd: float
    ) -> None:
        if not budgets:
            return
        args: list[int | str] = [
            _nano_up(reserved_usd),
            _nano_up(actual_usd),
            *((_ttl(b.period) or 0) for b in budgets),
            hold := self._hold_key(budgets),
        ]
        await self._do(self._eval(self._settle, self._bkeys(budgets), args))
        self._leases.pop(hold, None)

    async def renew_holds(self) -> None:
        """Renew this replica's holds not yet settled (`HOLD_S` from now, by the store's
        clock), in one step; one made over `HOLD_MAX_S` ago is left to expire. Raises
        StateUnavailable while Redis is away (its leases are renewed when it is back)."""
        now = time.monotonic()
        for k in [k for k, (_, _, made) in self._leases.items() if now - made > HOLD_MAX_S]:
            del self._leases[k]
        if not self._leases:
            return
        keys, members = [], []
        for sets, member, _ in self._leases.values():
            keys += sets
            members += [member] * len(sets)
        await self._do(self._eval(self._renew, keys, [HOLD_S, *members]))

    async def spent(self, b: Budget) -> tuple[float, float]:
        s, h, _ = self._bkeys([b])
        spent, held = await self._do(
            self._r.call("MGET", s, h), lambda v: _two_ints([x or 0 for x in v])
        )
        return spent / NANO, held / NANO

    # sessions and cooldowns: fail open -------------------------------------------------------
    async def pin(self, session: str) -> str | None:
        """The session's pin; while the store is away, this replica's own view of it (the
        pins it set or read; it had forgotten them all, and the next turn was routed anew,
        its prompt cache cold)."""
        try:
            model: str | None = await self._do(
                self._r.call("GET", f"{self._p}pin:{session}"),
                lambda v: None if v is None else v.decode(),
            )
        except StateUnavailable:
            return await self._local.pin(session)
        if model is None:
            return None
        await self._local.set_pin(session, model)  # (an hour, as pins are set)
        return model

    async def set_pin(self, session: str, model: str, ttl_s: float = 3600) -> None:
        await self._local.set_pin(session, model, ttl_s)  # this replica's view, kept anyway
        self._unshared.pop(session, None)
        try:  # fail open
            await self._do(self._r.call("SET", f"{self._p}pin:{session}", model, "EX", int(ttl_s)))
        except StateUnavailable:
            # shared once the store is back (a pin set in an outage had been forgotten then,
            # and the session's next turn routed anew, its prompt cache cold)
            self._unshared[session] = None
            while len(self._unshared) > _LOCAL_PINS:
                del self._unshared[next(iter(self._unshared))]

    async def share_pins(self) -> None:
        """Share the pins set while the store was away, unless another replica pinned the
        session since (`NX`); StateUnavailable while it still is."""
        for session in list(self._unshared):
            live = self._local.pin_left(session)
            if live is not None:
                model, left = live
                key = f"{self._p}pin:{session}"
                await self._do(self._r.call("SET", key, model, "NX", "EX", max(int(left), 1)))
            self._unshared.pop(session, None)

    async def push_cooldown(self, key: str, until: float, why: str, made: float = 0.0) -> bool:
        """Share a cooldown of `key` until `until`, begun at `made` (unix s): an enable
        stamped later ends it on every replica. False: the store is away (the caller tries
        again once it is back, while the cooldown lasts)."""
        now = time.time()
        left = min(until - now, 1e9)  # finite for the script's JSON (and no NaN)
        if not left > 0:
            return True  # (over: nothing to share)
        reason = why.encode("utf-8", "backslashreplace")  # a lone surrogate too
        args = [key, left, reason, now - made if made else -1, self.writer]
        try:  # fail open, stamped by the store
            await self._do(self._eval(self._stamp, [f"{self._p}cooldowns"], args))
        except StateUnavailable:
            return False
        return True

    async def lost_state(self) -> bool:
        """Whether the store lost what this replica shared since it last asked (restarted
        without persistence, flushed): its own mark, set at its first ask, is gone. The
        replica then shares its own disables and cooldowns again (another replica had read
        a disable missing from an emptied store as an enable). False while the store is
        away. (The mark lasts a day, then is set again: a needless share of what this
        replica holds now, which changes nothing.)"""
        try:
            made = await self._do(
                self._r.call("SET", f"{self._p}replica:{self.writer}", "1", "NX", "EX", 86_400)
            )
        except StateUnavailable:
            return False
        lost, self._marked = made is not None and self._marked, True
        if lost:  # its own pins too, as it shares its disables and cooldowns again
            self._unshared.update(dict.fromkeys(self._local.live_pins()))
        return lost

    async def set_disabled(self, key: str, why: str | None, at: float = 0.0) -> bool:
        """Share that a deployment was disabled (`why`) or enabled again (None) at `at`
        (unix s): an enable also ends its shared cooldown and is stamped, so that a
        replica whose own disable or cooldown it was puts it back too. False: the store
        is away (the caller tries again once it is back)."""
        try:
            if why is None:
                await self._do(self._r.call("HDEL", f"{self._p}disabled", key))
                await self._do(self._r.call("HDEL", f"{self._p}cooldowns", key))
                ago = max(time.time() - at, 0.0) if at else 0.0  # stamped by the store
                keys = [f"{self._p}enabled"]
                await self._do(self._eval(self._stamp, keys, [key, "", "", ago, self.writer]))
            else:
                await self._do(self._r.call("HSET", f"{self._p}disabled", key, why))
        except StateUnavailable:
            return False
        return True

    async def _stamps(self, name: str) -> tuple[float, Any]:
        """A hash of stamps (`_STAMP`), and what to add to a stamp to have it on this
        replica's clock: its measured skew (`sync_clock`), which changes only by steps, so
        that a stamp reads the same at every sync (read against a fresh TIME each time, a
        cooldown's end never did, and an entry that does not say when it began was taken
        for a new one each 0.2 s: an enable landing late was ignored)."""
        return -self._skew, await self._do(self._r.call("HGETALL", f"{self._p}{name}"))

    async def enabled_now(self) -> dict[str, float]:
        """When each deployment was last enabled on any replica (unix s, this replica's
        clock; {}: the store is away, or none ever was)."""
        try:
            off, raw = await self._stamps("enabled")
        except StateUnavailable:
            return {}
        out = {}
        for k, v in _pairs(raw):
            try:
                out[k.decode(errors="replace")] = float(v) + off
            except ValueError:
                self._unreadable("an enable")
        return out

    async def disabled_now(self) -> dict[str, str] | None:
        """Deployments disabled on any replica (None: the store is away, nothing known)."""
        try:
            raw = await self._do(self._r.call("HGETALL", f"{self._p}disabled"))
        except StateUnavailable:
            return None
        return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in _pairs(raw)}

    async def cooldowns_now(self) -> dict[str, tuple[float, str, float, bool]]:
        """Each shared cooldown in force: (until, why, when it began, whether this replica
        wrote it), on this replica's clock; it began at 0 when an entry does not say (one
        written before that was kept), and an entry that does not name its writer is
        another replica's."""
        try:
            off, raw = await self._stamps("cooldowns")
        except StateUnavailable:
            return {}
        now = time.time()
        out = {}
        for k, v in _pairs(raw):
            try:
                until, why, *rest = json.loads(v)
                made = float(rest[0]) + off if rest and rest[0] else 0.0
                until, mine = float(until) + off, len(rest) > 1 and rest[1] == self.writer
            except (ValueError, TypeError):  # one odd entry had stopped every sync
                self._unreadable("a cooldown")
                continue
            if until > now:
                out[k.decode(errors="replace")] = (until, str(why), made, mine)
        return out
