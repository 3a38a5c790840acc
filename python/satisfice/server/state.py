"""What replicas of `satisfice serve` share: virtual keys, budget counters, rate-limit windows,
session pins and deployment cooldowns. `MemoryState` for one process; `RedisState` for
several, with Lua scripts where a check and an update must be one step.

Money is counted in integer nano-dollars, so sums are exact on every backend. A budget is
checked by *reserving* the request's worst-case cost before the call (refused when it does not
fit) and *settling* the actual cost after; a reservation that is never settled (a crash)
expires with its period.

When Redis is unreachable (see README, "Run it as a service"):
- budgets fail closed: the request is refused with 503, since spending that is not counted
  could pass any budget;
- rate limits, session pins and shared cooldowns fail open: the request is served on this
  replica's own view, and the failure is logged and counted;
- keys already seen are served from a 30-second local cache; others are refused with 503.
Everything recovers on the next request after Redis returns (redis-py reconnects).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import ConfigError, SatisficeError

__all__ = ["Budget", "MemoryState", "RedisState", "StateUnavailable", "VirtualKey", "hash_key"]

NANO = 1_000_000_000
_PERIODS = ("day", "month", "total")


_log = logging.getLogger("satisfice.server")


class StateUnavailable(SatisficeError):
    """The shared state store cannot be reached (the server answers 503)."""


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
    key_hash: str
    team: str | None = None
    budget_usd: float | None = None
    period: str = "month"
    models: list[str] | None = None  # allow-list (model ids or aliases); None: all
    rpm: int | None = None
    tpm: int | None = None
    revoked: bool = False
    created_at: float = field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("key_hash")
        return d

    @staticmethod
    def new(name: str, **kw: Any) -> tuple[VirtualKey, str]:
        key = "sk-sat-" + secrets.token_urlsafe(24)
        k = VirtualKey(id=secrets.token_hex(6), name=name, key_hash=hash_key(key), **kw)
        if k.period not in _PERIODS:
            raise ConfigError(f"period must be one of {list(_PERIODS)}")
        return k, key


class MemoryState:
    """One process's state (asyncio: every method runs to completion without a switch)."""

    backend = "memory"

    def __init__(self) -> None:
        self.keys: dict[str, VirtualKey] = {}
        self.teams: dict[str, Budget] = {}
        self._spent: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._holds: set[str] = set()  # reservations not yet settled, by id
        self._windows: dict[str, int] = {}
        self._pins: dict[str, tuple[str, float]] = {}
        self._pin_sweep_at = 10_000
        self.cooldowns: dict[str, tuple[float, str]] = {}

    async def close(self) -> None:
        pass

    # keys ------------------------------------------------------------------------------------
    async def put_key(self, k: VirtualKey) -> None:
        self.keys[k.id] = k

    async def replace_key(self, old: VirtualKey, new: VirtualKey) -> bool:
        """Write `new` only if the stored key is still `old` (False: it changed meanwhile)."""
        if self.keys.get(old.id) != old:
            return False
        self.keys[old.id] = new
        return True

    async def key_by_secret(self, secret: str) -> VirtualKey | None:
        h = hash_key(secret)
        for k in self.keys.values():
            if hmac.compare_digest(k.key_hash, h):
                return k
        return None

    async def list_keys(self) -> list[VirtualKey]:
        return list(self.keys.values())

    async def put_team(self, b: Budget) -> None:
        self.teams[b.scope] = b

    async def team(self, name: str) -> Budget | None:
        return self.teams.get(f"team:{name}")

    # budgets ---------------------------------------------------------------------------------
    async def reserve(self, budgets: Sequence[Budget], usd: float) -> tuple[Budget, float] | None:
        """Reserve `usd` under every budget, or none: returns the first budget it does not
        fit and what is left in it (USD)."""
        amount = _nano_up(usd)
        hold = budgets[0].hold if budgets else None
        if hold is not None and hold in self._holds:
            return None
        for b in budgets:
            k = f"{b.scope}:{b.tag}"
            left = _nano(b.limit_usd) - self._spent.get(k, 0) - self._reserved.get(k, 0)
            if amount > left:
                return b, max(left, 0) / NANO
        for b in budgets:
            k = f"{b.scope}:{b.tag}"
            self._reserved[k] = self._reserved.get(k, 0) + amount
        if hold is not None:
            self._holds.add(hold)
        return None

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

    async def spent(self, b: Budget) -> tuple[float, float]:
        k = f"{b.scope}:{b.tag}"
        return self._spent.get(k, 0) / NANO, self._reserved.get(k, 0) / NANO

    # rate limits -----------------------------------------------------------------------------
    async def hit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        """Count one request (and its tokens) in this minute's window; None when it fits,
        else the seconds until the window turns. Both limits are checked before either is
        counted: a request one refuses takes nothing from the other."""
        minute = int(time.time() // 60)
        wait = 60 - time.time() % 60
        rk, tk = f"rpm:{key_id}:{minute}", f"tpm:{key_id}:{minute}"
        if rpm is not None and self._windows.get(rk, 0) + 1 > rpm:
            return wait
        if tpm is not None and self._windows.get(tk, 0) + tokens > tpm:
            return wait
        self._windows[rk] = self._windows.get(rk, 0) + 1
        if tpm is not None:
            self._windows[tk] = self._windows.get(tk, 0) + tokens
        if len(self._windows) > 100_000:  # old windows: drop them
            self._windows = {k: v for k, v in self._windows.items() if k.endswith(f":{minute}")}
        return None

    # sessions and cooldowns ------------------------------------------------------------------
    async def pin(self, session: str) -> str | None:
        v = self._pins.get(session)
        return v[0] if v and v[1] > time.time() else None

    async def set_pin(self, session: str, model: str, ttl_s: float = 3600) -> None:
        now = time.time()
        self._pins[session] = (model, now + ttl_s)
        # Expired pins go, a sweep each time the dict doubles: a caller may send a new
        # session id with every request, and the memory must not grow with them.
        if len(self._pins) > self._pin_sweep_at:
            self._pins = {k: v for k, v in self._pins.items() if v[1] > now}
            self._pin_sweep_at = max(2 * len(self._pins), 10_000)

    async def push_cooldown(self, key: str, until: float, why: str) -> None:
        self.cooldowns[key] = (until, why)

    async def cooldowns_now(self) -> dict[str, tuple[float, str]]:
        now = time.time()
        return {k: v for k, v in self.cooldowns.items() if v[0] > now}


def _nano(usd: float) -> int:
    return round(usd * NANO)


def _nano_up(usd: float) -> int:
    return int(-(-usd * NANO // 1))


# KEYS[1] the keys hash; ARGV: id, the JSON read, the JSON to write.
_CAS = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

_RESERVE = """
local amount = tonumber(ARGV[1])
local n = #KEYS / 2
local hold = ARGV[2 + 2 * n]
if hold ~= '' and redis.call('EXISTS', hold) == 1 then return {0, 0} end
for i = 1, n do
  local spent = tonumber(redis.call('GET', KEYS[2*i-1]) or '0')
  local held = tonumber(redis.call('GET', KEYS[2*i]) or '0')
  local limit = tonumber(ARGV[1 + i])
  if spent + held + amount > limit then
    return {i, limit - spent - held}
  end
end
for i = 1, n do
  redis.call('INCRBY', KEYS[2*i], amount)
  local ttl = tonumber(ARGV[1 + n + i])
  if ttl > 0 then redis.call('EXPIRE', KEYS[2*i], ttl) end
end
if hold ~= '' then redis.call('SET', hold, amount, 'EX', 604800) end
return {0, 0}
"""

_SETTLE = """
local held, actual = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = #KEYS / 2
local hold = ARGV[3 + n]
if hold ~= '' and redis.call('DEL', hold) == 0 then return 1 end
for i = 1, n do
  redis.call('DECRBY', KEYS[2*i], held)
  redis.call('INCRBY', KEYS[2*i-1], actual)
  local ttl = tonumber(ARGV[2 + i])
  if ttl > 0 then redis.call('EXPIRE', KEYS[2*i-1], ttl) end
end
return 0
"""

# Both limits are checked before either is counted: a request one limit refuses takes
# nothing from the other (a tpm refusal had used up an rpm slot).
_HIT = """
local rpm, tpm, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if rpm >= 0 and tonumber(redis.call('GET', KEYS[1]) or '0') + 1 > rpm then return 1 end
if tpm >= 0 and tonumber(redis.call('GET', KEYS[2]) or '0') + n > tpm then return 2 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 120)
if tpm >= 0 then
  redis.call('INCRBY', KEYS[2], n)
  redis.call('EXPIRE', KEYS[2], 120)
end
return 0
"""


class RedisState:
    """State in Redis (redis-py asyncio), shared by every replica pointing at it."""

    backend = "redis"

    def __init__(self, url: str, prefix: str = "satisfice:") -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise ConfigError("the redis state backend needs redis-py: pip install redis") from None
        # A blocking pool: under a burst, a request waits (up to 5 s) for one of 128
        # connections instead of failing as if Redis were down.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=128, timeout=5, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        self._r = aioredis.Redis(connection_pool=pool)
        self._p = prefix
        self._reserve = self._r.register_script(_RESERVE)
        self._settle = self._r.register_script(_SETTLE)
        self._hit = self._r.register_script(_HIT)
        self._cas = self._r.register_script(_CAS)
        self._key_cache: dict[str, tuple[VirtualKey, float]] = {}
        self._team_cache: dict[str, tuple[Budget | None, float]] = {}
        self.errors = 0
        self._warned_at = -math.inf
        # rate windows while Redis is away: this replica's own view (they had no limit)
        self._local = MemoryState()

    async def close(self) -> None:
        # The pool is ours (made above), and a client given a pool does not close it itself.
        await self._r.aclose(close_connection_pool=True)

    async def _do(self, coro: Any) -> Any:
        import redis.exceptions

        try:
            return await coro
        except (redis.exceptions.RedisError, OSError) as e:
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

    # keys ------------------------------------------------------------------------------------
    async def put_key(self, k: VirtualKey) -> None:
        data = json.dumps(asdict(k))
        await self._do(self._r.hset(f"{self._p}keys", k.id, data))
        await self._do(self._r.hset(f"{self._p}key_hash", k.key_hash, k.id))
        self._key_cache.pop(k.key_hash, None)

    async def replace_key(self, old: VirtualKey, new: VirtualKey) -> bool:
        """Write `new` only if the stored key is still `old`, atomically (a compare-and-set
        in Lua): a PATCH must not write back a copy read before another replica's revoke."""
        ok = await self._do(
            self._cas(keys=[f"{self._p}keys"], args=[old.id, json.dumps(asdict(old)),
                                                      json.dumps(asdict(new))])
        )  # fmt: skip
        self._key_cache.pop(new.key_hash, None)
        return bool(int(ok))

    async def key_by_secret(self, secret: str) -> VirtualKey | None:
        h = hash_key(secret)
        hit = self._key_cache.get(h)
        try:
            kid = await self._do(self._r.hget(f"{self._p}key_hash", h))
            if kid is None:
                return None
            raw = await self._do(self._r.hget(f"{self._p}keys", kid))
        except StateUnavailable:
            if hit is not None and hit[1] > time.time():
                return hit[0]  # recently seen: serve it while Redis is away
            raise
        if raw is None:
            return None
        k = VirtualKey(**json.loads(raw))
        if not hmac.compare_digest(k.key_hash, h):
            return None
        self._key_cache[h] = (k, time.time() + 30)
        return k

    async def list_keys(self) -> list[VirtualKey]:
        raw = await self._do(self._r.hgetall(f"{self._p}keys"))
        return [VirtualKey(**json.loads(v)) for v in raw.values()]

    async def put_team(self, b: Budget) -> None:
        stored = {"scope": b.scope, "limit_usd": b.limit_usd, "period": b.period}  # not at/hold
        await self._do(self._r.hset(f"{self._p}teams", b.scope, json.dumps(stored)))
        self._team_cache.pop(b.scope.removeprefix("team:"), None)

    async def team(self, name: str) -> Budget | None:
        """The team's budget, or None. While Redis is away, what was seen in the last 30 s
        (that a team has no budget included): a team label alone must not fail its keys."""
        hit = self._team_cache.get(name)
        try:
            raw = await self._do(self._r.hget(f"{self._p}teams", f"team:{name}"))
        except StateUnavailable:
            if hit is not None and hit[1] > time.time():
                return hit[0]
            raise
        b = None if raw is None else Budget(**json.loads(raw))
        self._team_cache[name] = (b, time.time() + 30)
        return b

    # budgets ---------------------------------------------------------------------------------
    def _hold_key(self, budgets: Sequence[Budget]) -> str:
        hold = budgets[0].hold if budgets else None
        return f"{self._p}hold:{hold}" if hold else ""

    def _bkeys(self, budgets: Sequence[Budget]) -> list[str]:
        out = []
        for b in budgets:
            tag = f"{self._p}budget:{b.scope}:{b.tag}"
            out += [f"{tag}:spent", f"{tag}:held"]
        return out

    async def reserve(self, budgets: Sequence[Budget], usd: float) -> tuple[Budget, float] | None:
        if not budgets:
            return None
        args: list[int | str] = [
            _nano_up(usd),
            *(_nano(b.limit_usd) for b in budgets),
            *((_ttl(b.period) or 0) for b in budgets),
            self._hold_key(budgets),
        ]
        i, left = await self._do(self._reserve(keys=self._bkeys(budgets), args=args))
        if int(i) == 0:
            return None
        return budgets[int(i) - 1], max(int(left), 0) / NANO

    async def settle(
        self, budgets: Sequence[Budget], reserved_usd: float, actual_usd: float
    ) -> None:
        if not budgets:
            return
        args: list[int | str] = [
            _nano_up(reserved_usd),
            _nano_up(actual_usd),
            *((_ttl(b.period) or 0) for b in budgets),
            self._hold_key(budgets),
        ]
        await self._do(self._settle(keys=self._bkeys(budgets), args=args))

    async def spent(self, b: Budget) -> tuple[float, float]:
        s, h = self._bkeys([b])
        vals = await self._do(self._r.mget(s, h))
        return (int(vals[0] or 0) / NANO, int(vals[1] or 0) / NANO)

    # rate limits: fail open ------------------------------------------------------------------
    async def hit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        minute = int(time.time() // 60)
        keys = [f"{self._p}rpm:{key_id}:{minute}", f"{self._p}tpm:{key_id}:{minute}"]
        args = [rpm if rpm is not None else -1, tpm if tpm is not None else -1, tokens]
        try:
            out = await self._do(self._hit(keys=keys, args=args))
        except StateUnavailable:  # fail open: on this replica's own window
            return await self._local.hit(key_id, rpm, tpm, tokens)
        return None if int(out) == 0 else 60 - time.time() % 60

    # sessions and cooldowns: fail open -------------------------------------------------------
    async def pin(self, session: str) -> str | None:
        try:
            v = await self._do(self._r.get(f"{self._p}pin:{session}"))
        except StateUnavailable:
            return None
        return None if v is None else v.decode()

    async def set_pin(self, session: str, model: str, ttl_s: float = 3600) -> None:
        with contextlib.suppress(StateUnavailable):  # fail open
            await self._do(self._r.set(f"{self._p}pin:{session}", model, ex=int(ttl_s)))

    async def push_cooldown(self, key: str, until: float, why: str) -> None:
        with contextlib.suppress(StateUnavailable):  # fail open
            await self._do(self._r.hset(f"{self._p}cooldowns", key, json.dumps([until, why])))

    async def set_disabled(self, key: str, why: str | None) -> None:
        """Share that a deployment was disabled (`why`) or enabled again (None)."""
        with contextlib.suppress(StateUnavailable):  # fail open: this replica's view holds
            if why is None:
                await self._do(self._r.hdel(f"{self._p}disabled", key))
            else:
                await self._do(self._r.hset(f"{self._p}disabled", key, why))

    async def disabled_now(self) -> dict[str, str] | None:
        """Deployments disabled on any replica (None: the store is away, nothing known)."""
        try:
            raw = await self._do(self._r.hgetall(f"{self._p}disabled"))
        except StateUnavailable:
            return None
        return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}

    async def cooldowns_now(self) -> dict[str, tuple[float, str]]:
        try:
            raw = await self._do(self._r.hgetall(f"{self._p}cooldowns"))
        except StateUnavailable:
            return {}
        now = time.time()
        out = {}
        for k, v in raw.items():
            until, why = json.loads(v)
            if until > now:
                out[k.decode()] = (float(until), str(why))
        return out
