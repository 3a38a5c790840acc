"""Live health per deployment: latency, errors, 429s, cooldowns and a circuit breaker.

A deployment is *cooling* after a Retry-After (for exactly that long, capped) or after the
breaker opens (several failures in a row, or a high error rate): it is skipped until the
cooldown ends. Then it is *half-open*: one request per `base_cooldown_s` window probes it;
a success closes the breaker, a failure reopens it for twice as long (up to a cap).
An auth failure (401/403) *disables* a deployment until `enable()` is called: a rejected
key never fixes itself. (A key that is merely not set is not a failure: the executor skips
that deployment while its variable is empty and uses it as soon as it is set.) Request
faults (bad request, context length) say nothing about the deployment and are not recorded
here.

`Health` keeps this in memory, for one process. Other stores (Redis for several replicas)
implement `HealthStore`: its methods are synchronous because they sit on every request; a
shared store should answer from a local mirror and push its records in the background.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ._atomic import write_atomic
from ._bounded import MAX_FILE_BYTES, read_bounded
from .errors import ConfigError

__all__ = ["Health", "HealthConfig", "HealthStore"]


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Breaker and smoothing settings. Defaults suit interactive LLM traffic."""

    alpha: float = 0.2  # EWMA weight of the newest sample
    consecutive_failures: int = 3  # failures in a row that open the breaker
    error_rate: float = 0.5  # smoothed error rate that opens it ...
    min_samples: int = 10  # ... once this many calls were seen
    base_cooldown_s: float = 5.0
    max_cooldown_s: float = 120.0
    max_retry_after_s: float = 600.0  # longer Retry-After values are capped to this


class HealthStore(Protocol):
    """What the executor needs from a health store (in-memory `Health`, or a shared one)."""

    def unavailable(self, key: str) -> str | None:
        """None when `key` may be called now, else why not (disabled, cooling ...)."""

    def blocked(self) -> frozenset[str]:
        """Keys that are disabled or cooling now (no side effects; usually empty)."""

    def retry_in(self, key: str) -> float | None:
        """Seconds until a cooling `key` may be called again; None if it is not cooling
        (or is disabled, which no wait fixes)."""

    def record_success(self, key: str, latency_s: float) -> None: ...

    def record_slow(self, key: str, at_least_s: float) -> None:
        """A call cancelled after `at_least_s` (a hedge or race loser): its latency is at
        least that, which counts when it is more than the deployment's usual."""

    def record_failure(
        self, key: str, *, rate_limited: bool, retry_after: float | None, reason: str
    ) -> None: ...

    def disable(self, key: str, reason: str) -> None: ...

    def enable(self, key: str) -> None: ...

    def p95_s(self, key: str) -> float | None:
        """Live p95 latency estimate once enough calls were seen, else None."""

    def snapshot(self) -> dict[str, dict[str, Any]]: ...


class _State:
    __slots__ = (
        "consecutive",
        "cool_kind",
        "cool_until",
        "disabled",
        "err",
        "last_error",
        "lat_mean",
        "lat_var",
        "n_429",
        "n_err",
        "n_ok",
        "opens",
        "reason",
    )

    def __init__(self) -> None:
        self.lat_mean = 0.0
        self.lat_var = 0.0
        self.err = 0.0
        self.n_ok = 0
        self.n_err = 0
        self.n_429 = 0
        self.consecutive = 0
        self.opens = 0
        self.cool_until = 0.0
        self.cool_kind = ""  # "retry_after" | "breaker" | "probe"
        self.reason = ""
        self.last_error = ""
        self.disabled: str | None = None


#: Every Health, given a new lock in a forked child (one another thread of the parent held
#: at the fork stays held there for good).
_STORES: weakref.WeakSet[Health] = weakref.WeakSet()


def _new_locks_in_child() -> None:
    for h in list(_STORES):
        h._lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_in_child)


class Health:
    """In-memory HealthStore. Keys are "model/deployment". Thread-safe: one router's
    requests may run on several event loops at once (an app's and chat_sync()'s thread),
    and router.health() may be read from any thread, so every change is made under a lock
    (two threads dropping one ended cooldown had raised KeyError out of chat(); one
    dropping it as another disabled the deployment had unblocked it; a snapshot beside a
    request meeting a new deployment had raised "dictionary changed size")."""

    _MIN_LATENCY_SAMPLES = 20

    def __init__(self, config: HealthConfig | None = None, *, clock: Any = None) -> None:
        self.config = config or HealthConfig()
        self._clock = clock or time.perf_counter
        self._s: dict[str, _State] = {}
        # key -> until when (inf: disabled); lets the router skip cooled models in O(1)
        # when, as usual, nothing is cooling.
        self._blocked: dict[str, float] = {}
        self._lock = threading.Lock()  # (no method takes it twice: none calls another under it)
        _STORES.add(self)

    def _get(self, key: str) -> _State:
        s = self._s.get(key)
        if s is None:
            s = self._s[key] = _State()
        return s

    def unavailable(self, key: str) -> str | None:
        s = self._s.get(key)
        if s is None or (s.disabled is None and not s.cool_until):
            return None  # the usual answer, nothing to change: no lock taken for it
        with self._lock:
            if s.disabled is not None:
                return f"disabled: {s.disabled}"
            if s.cool_until:
                now = self._clock()
                if now < s.cool_until:
                    return f"cooling for {s.cool_until - now:.2f}s more ({s.reason})"
                if s.cool_kind == "breaker":
                    # Half-open: let this request probe, and hold others back for one window.
                    s.cool_until = now + self.config.base_cooldown_s
                    s.cool_kind, s.reason = "probe", "half-open: a probe is in flight"
                    self._blocked[key] = s.cool_until
                else:  # the upstream's own Retry-After has passed
                    s.cool_until, s.cool_kind, s.reason = 0.0, "", ""
            return None

    def retry_in(self, key: str) -> float | None:
        """Seconds `key` stays cooling (None when it is not, or is disabled)."""
        with self._lock:
            s = self._s.get(key)
            if s is None or s.disabled is not None:
                return None
            left = s.cool_until - self._clock()
            return left if left > 0 else None

    def blocked(self) -> frozenset[str]:
        if not self._blocked:
            return frozenset()
        with self._lock:  # (nothing cooling, as usual: no lock taken)
            now = self._clock()
            for key, until in list(self._blocked.items()):  # (no comprehension: no cell)
                if until <= now:
                    del self._blocked[key]
            return frozenset(self._blocked)

    def record_success(self, key: str, latency_s: float) -> None:
        # (acquire and release, not `with`: the statement's bound __enter__ and __exit__
        # and the three arguments parsed for __exit__ had doubled the lock's cost, about
        # 50 ns of this call's 290, on every answer)
        lock = self._lock
        lock.acquire()
        try:
            s = self._s.get(key) or self._get(key)
            a = self.config.alpha
            keep = 1.0 - a  # (float from float: int 1 less a float is Python's slow path)
            if s.n_ok == 0:
                s.lat_mean = latency_s
            else:
                d = latency_s - s.lat_mean
                s.lat_mean += a * d
                s.lat_var = keep * (s.lat_var + a * d * d)
            s.n_ok += 1
            s.err *= keep
            s.consecutive = 0
            # A success closes the breaker, but an upstream's Retry-After still holds: a request
            # that was in flight before the 429 proves nothing about the rate limit.
            if s.cool_until and s.cool_kind != "retry_after":
                s.cool_until, s.cool_kind, s.opens, s.reason = 0.0, "", 0, ""
                if s.disabled is None:
                    self._blocked.pop(key, None)
        finally:
            lock.release()

    def record_slow(self, key: str, at_least_s: float) -> None:
        with self._lock:
            s = self._s.get(key)
            if s is None or s.n_ok == 0 or at_least_s <= s.lat_mean:
                return  # a lower bound under the mean says nothing new
            a = self.config.alpha
            d = at_least_s - s.lat_mean
            s.lat_mean += a * d
            s.lat_var = (1 - a) * (s.lat_var + a * d * d)

    def record_failure(
        self, key: str, *, rate_limited: bool, retry_after: float | None, reason: str
    ) -> None:
        with self._lock:
            s = self._get(key)
            c = self.config
            s.n_err += 1
            s.n_429 += rate_limited
            s.err = s.err * (1 - c.alpha) + c.alpha
            s.consecutive += 1
            s.last_error = reason
            now = self._clock()
            if s.cool_kind == "probe":  # the half-open probe failed: reopen, Retry-After or not
                self._open(key, s, now, "half-open probe failed", reason, retry_after or 0.0)
                return
            if retry_after is not None and retry_after > 0:
                wait = min(retry_after, c.max_retry_after_s)
                if now + wait > s.cool_until:
                    s.cool_until, s.cool_kind = now + wait, "retry_after"
                    s.reason = f"Retry-After {wait:g}s: {reason}"
                    self._block(key, s.cool_until)
                return
            if s.cool_kind == "breaker" and now < s.cool_until:
                return  # calls that were in flight when it opened: already counted against it
            if s.consecutive >= c.consecutive_failures:
                why = f"{s.consecutive} failures in a row"
            elif s.n_ok + s.n_err >= c.min_samples and s.err >= c.error_rate:
                why = f"error rate {s.err:.0%}"
            else:
                return
            self._open(key, s, now, why, reason)

    def _open(
        self, key: str, s: _State, now: float, why: str, reason: str, at_least: float = 0.0
    ) -> None:
        c = self.config
        wait = min(c.base_cooldown_s * 2.0**s.opens, c.max_cooldown_s)
        wait = max(wait, min(at_least, c.max_retry_after_s))
        s.opens += 1
        s.cool_until, s.cool_kind = now + wait, "breaker"
        self._block(key, s.cool_until)
        s.reason = f"breaker open ({why}, last: {reason})"

    def _block(self, key: str, until: float) -> None:
        if self._blocked.get(key, 0.0) < until:
            self._blocked[key] = until

    def cool(self, key: str, seconds: float, reason: str) -> None:
        """Hold `key` back for `seconds` on another's word (a replica saw it fail): like a
        Retry-After, a success here does not end it early."""
        with self._lock:
            s = self._get(key)
            until = self._clock() + min(seconds, self.config.max_retry_after_s)
            if until > s.cool_until:
                s.cool_until, s.cool_kind, s.reason = until, "retry_after", reason
                self._block(key, until)

    def disable(self, key: str, reason: str) -> None:
        with self._lock:
            self._get(key).disabled = reason
            self._blocked[key] = math.inf

    def enable(self, key: str) -> None:
        """Re-enable a deployment (after fixing its key) and close its breaker."""
        with self._lock:
            s = self._get(key)
            s.disabled = None
            s.cool_until, s.cool_kind, s.opens, s.consecutive, s.reason = 0.0, "", 0, 0, ""
            self._blocked.pop(key, None)

    def p95_s(self, key: str) -> float | None:
        s = self._s.get(key)
        if s is None or s.n_ok < self._MIN_LATENCY_SAMPLES:
            return None
        return s.lat_mean + 1.645 * math.sqrt(s.lat_var)

    def save(self, path: str | Path, probed_at: float | None = None) -> None:
        """Write what was measured (latency mean/variance and counts per deployment) so a
        restart starts from it: `Health.load(path)`. Cooldowns are not kept: they are about
        the moment, and a restarted process probes again. `probed_at`: the Unix time of the
        last scheduled probe run (`Health.probed_at`), so that a restart keeps the schedule."""
        with self._lock:  # (a request on another loop may meet a new deployment meanwhile)
            data = {
                key: {"lat_mean": s.lat_mean, "lat_var": s.lat_var, "n_ok": s.n_ok, "err": s.err}
                for key, s in self._s.items()
                if s.n_ok
            }
        doc: dict[str, Any] = {"version": 1, "latency": data}
        if probed_at is not None:
            doc["probed_at"] = probed_at
        text = json.dumps(doc).encode()
        write_atomic(path, lambda f: f.write(text))  # a failed write leaves the old file

    @classmethod
    def load(cls, path: str | Path, config: HealthConfig | None = None) -> Health:
        """A Health that remembers the latencies `save()` wrote (a missing file: a new one)."""
        h = cls(config)
        p = Path(path)
        if not p.exists():
            return h
        try:
            raw = read_bounded(p, f"health file {p} is over {MAX_FILE_BYTES >> 20} MB, which "
                               "no health file needs; give one Health.save() wrote")  # fmt: skip
        except OSError as e:  # a directory, no permission
            raise ConfigError(f"health file {p} cannot be read: {e.strerror}") from None
        try:
            data = json.loads(raw.decode("utf-8"))["latency"]
            for key, v in data.items():
                s = h._get(str(key))
                s.lat_mean, s.lat_var = float(v["lat_mean"]), float(v["lat_var"])
                s.n_ok, s.err = int(v["n_ok"]), float(v["err"])
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            why = "nested too deeply" if isinstance(e, RecursionError) else e
            raise ConfigError(f"health file {p} is not one Health.save() wrote: {why}") from None
        return h

    @staticmethod
    def probed_at(path: str | Path) -> float | None:
        """When the last scheduled probe run that `save()` kept in `path` ran (Unix time);
        None if no run was kept there (or no file). A time to come is taken as now."""
        try:
            v = json.loads(read_bounded(path, "too large")).get("probed_at")
        except (OSError, ValueError, AttributeError, RecursionError, ConfigError):
            return None  # (what `load` refuses, it says)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        return min(float(v), time.time())

    def restore(self, other: Health) -> None:
        """Take the latencies another Health measured (`Health.load`'s result)."""
        with self._lock:
            for key, s in other._s.items():
                mine = self._get(key)
                mine.lat_mean, mine.lat_var = s.lat_mean, s.lat_var
                mine.n_ok, mine.err = s.n_ok, s.err

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every deployment seen so far: state, smoothed latency and error rate, counters."""
        with self._lock:
            now = self._clock()
            out: dict[str, dict[str, Any]] = {}
            for key, s in self._s.items():
                if s.disabled is not None:
                    state = "disabled"
                elif s.cool_until > now:
                    state = "half_open" if s.cool_kind == "probe" else "cooling"
                else:
                    state = "ok"
                p95 = self.p95_s(key)
                out[key] = {
                    "state": state,
                    "reason": s.disabled
                    if state == "disabled"
                    else (s.reason if state != "ok" else None),
                    "last_error": s.last_error or None,
                    "cooldown_remaining_s": round(max(s.cool_until - now, 0.0), 3),
                    "ewma_latency_ms": round(s.lat_mean * 1000, 3) if s.n_ok else None,
                    "p95_latency_ms": round(p95 * 1000, 3) if p95 is not None else None,
                    "error_rate": round(s.err, 4),
                    "successes": s.n_ok,
                    "failures": s.n_err,
                    "rate_limited": s.n_429,
                    "consecutive_failures": s.consecutive,
                }
            return out
