"""Prometheus metrics, derived from ledger records (so every number has a record behind it).

    metrics = Metrics()                     # its own CollectorRegistry, or pass one
    router.attach(metrics=metrics)          # updated off the request path
    metrics.exposition()                    # text for a /metrics endpoint

Its metric objects are for reading: `Metrics` keeps each label set's child once made, so a
series cleared or removed on them (`clear()`, `remove()`) would stop being exported while
records still counted into it; make a new `Metrics` to start over.

Label values come from the registry and the caller's key name, never from upstream text, so
the label sets stay bounded and nothing an upstream sends can reach them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError
from .ledger import _text
from .result import billed_calls

__all__ = ["Metrics"]

#: Distinct values of a label callers make (`key`, a refusal's `budget`); later ones are
#: counted as "other" (see _Capped).
MAX_KEYS = 1000
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
_OVERHEAD_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1)


class _Capped:
    """The values of a label that callers make (key names, budgets' scopes: keys are made
    and revoked for good): the first MAX_KEYS each their own, later ones "other", with a
    space added for each value of that name already labelled (a key named "other" had
    taken every later key's counts). "other" is fixed once the values are full, so it
    stays apart."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._other: str | None = None

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) < MAX_KEYS:
            self.seen.add(value)
            return value
        if self._other is None:
            label = "other"
            while label in self.seen:
                label += " "
            self._other = label
        return self._other


class Metrics:
    def __init__(self, registry: Any = None, prefix: str = "satisfice") -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise ConfigError(
                "metrics need prometheus-client: pip install 'satisfice[server]'"
            ) from None
        self.registry = registry if registry is not None else CollectorRegistry()
        r, p = self.registry, prefix
        lab = ("model", "deployment", "task", "key")
        self.requests = Counter(f"{p}_requests", "Requests by outcome", (*lab, "outcome"),
                                registry=r)  # fmt: skip
        # by the model and deployment called (a request's calls to several, each on its own)
        self.tokens = Counter(f"{p}_tokens", "Tokens billed", (*lab, "direction"), registry=r)
        self.cost = Counter(f"{p}_cost_usd", "USD billed (known costs)", lab, registry=r)
        self.unpriced = Counter(f"{p}_unpriced_requests", "Billed calls whose cost is unknown "
                                "(an unpriced model, a call cut off in flight)", lab,
                                registry=r)  # fmt: skip
        self.latency = Histogram(f"{p}_request_latency_seconds", "Request latency", ("model",),
                                 buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.overhead = Histogram(f"{p}_router_overhead_seconds", "Time satisfice added",
                                  buckets=_OVERHEAD_BUCKETS, registry=r)  # fmt: skip
        self.fallbacks = Counter(f"{p}_fallbacks", "Attempts that failed over to another "
                                 "model or deployment", ("model", "deployment", "reason"),
                                 registry=r)  # fmt: skip
        self.escalations = Counter(f"{p}_cascade_escalations", "Cascade steps that escalated",
                                   ("step",), registry=r)  # fmt: skip
        # (named for what such answers usually do; it counts the answers, not the cooldowns
        # the breaker opens on other failures: said so, where it had claimed to count those)
        self.cooldowns = Counter(f"{p}_cooldowns", "Attempts the upstream answered 429, 503 "
                                 "or 529 (rate limited or overloaded)", ("model", "deployment"),
                                 registry=r)  # fmt: skip
        self.budget_refusals = Counter(f"{p}_budget_refusals", "Requests refused by a budget",
                                       ("key", "budget"), registry=r)  # fmt: skip
        self.over_hold = Counter(f"{p}_settled_over_hold_usd", "USD settled above the "
                                 "requests' holds (an upstream billed past the worst case "
                                 "counted): how far budgets may end past their limits",
                                 registry=r)  # fmt: skip
        self.cache_hits = Counter(f"{p}_cache_hits", "Requests answered from a cache",
                                  registry=r)  # fmt: skip
        self.ledger_backlog = Gauge(f"{p}_ledger_backlog", "Records waiting for the ledger",
                                    registry=r)  # fmt: skip
        self.ledger_dropped = Counter(f"{p}_ledger_dropped", "Records dropped: buffer full",
                                      registry=r)  # fmt: skip
        self._dropped_seen: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._dropped_lock = threading.Lock()  # see dropped()
        self._ledgers: weakref.WeakSet[Any] = weakref.WeakSet()  # whose backlogs are summed
        self._key = _Capped()  # the `key` label's values
        self._budget = _Capped()  # a refusal's `budget` label: "key:<id>", "team:<name>"
        self._kids: dict[tuple[Any, ...], Any] = {}  # (metric, *labels) -> its child

    def _kid(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, kept: prometheus-client checks the label values and
        takes a lock on every labels() call (2.3 against 0.6 µs a count, timeit). The label
        sets are bounded (registry ids, tasks, outcomes, at most MAX_KEYS keys), as
        prometheus-client's own children are. Each value as the ledger writes it (`_text`):
        half a surrogate pair in a caller's key name had made every later exposition()
        raise UnicodeEncodeError."""
        k = (metric, *labels)
        kid = self._kids.get(k)
        if kid is None:
            kid = self._kids[k] = metric.labels(*(_text(v) for v in labels))
        return kid

    def observe(self, rec: Mapping[str, Any]) -> None:
        """Count one ledger record."""
        meta = rec.get("metadata") or {}
        key = self._key(str(meta.get("key") or ""))  # a caller's own keys: capped labels
        task = str(rec.get("task") or "")
        model = str(rec.get("model") or (rec.get("decision") or {}).get("model") or "")
        dep = str(rec.get("deployment") or "")
        # str(), as labels() makes every value: a cached child is keyed by the value itself, and
        # values equal but not alike (1, 1.0, True) would share one series
        outcome = str(rec.get("outcome", "ok"))
        self._kid(self.requests, model, dep, task, key, outcome).inc()
        # each billed call on the model and deployment called, answered or not (a
        # cascade's rejected call, a race's loser had been counted on the answering model,
        # their tokens on none); unknown costs apart, never $0
        for m, d, usd, t_in, t_out in billed_calls(rec):
            if usd is None:
                self._kid(self.unpriced, m, d, task, key).inc()
            else:
                self._kid(self.cost, m, d, task, key).inc(usd)
            if t_in:
                self._kid(self.tokens, m, d, task, key, "in").inc(t_in)
            if t_out:
                self._kid(self.tokens, m, d, task, key, "out").inc(t_out)
        if outcome == "ok":
            self._kid(self.latency, model).observe(rec.get("latency_s") or 0.0)
            self.overhead.observe(rec.get("overhead_s") or 0.0)
            if rec.get("cache_hit"):
                self.cache_hits.inc()
        for a in rec.get("attempts") or ():
            am, ad = str(a.get("model", "")), str(a.get("deployment", ""))
            if a.get("outcome") in ("error", "skipped"):
                why = str(a.get("error_type") or a.get("outcome"))
                self._kid(self.fallbacks, am, ad, why).inc()
            if a.get("status") in (429, 503, 529):
                self._kid(self.cooldowns, am, ad).inc()
        casc = rec.get("cascade")
        if isinstance(casc, Mapping):
            for i, step in enumerate(casc.get("steps") or ()):
                if step.get("status") == "escalated":
                    self._kid(self.escalations, str(i)).inc()

    def refused(self, key: str, budget: str) -> None:
        """Count a request `budget` refused ("rate_limit", or a budget's scope) for `key`,
        both labels capped as `observe` caps keys: a key's own budget is named by its id,
        so keys made and revoked, each refused once, had added a series each for good.
        "rate_limit" is one fixed value, never capped: past MAX_KEYS budgets it had been
        counted as "other", a budget's refusal."""
        if budget != "rate_limit":
            budget = self._budget(budget)
        self._kid(self.budget_refusals, self._key(key), budget).inc()

    def watch(self, ledger: Any) -> None:
        """Report `ledger`'s backlog, with every other ledger's counted here, as it stands
        when scraped: live even while a writer is stalled, and nothing to set on the
        request path (a gauge's set takes a lock)."""
        if not self._ledgers:
            ledgers = self._ledgers
            self.ledger_backlog.set_function(lambda: sum(x.backlog for x in list(ledgers)))
        self._ledgers.add(ledger)

    def dropped(self, ledger: Any) -> None:
        """Count what `ledger` dropped (buffer full) since it was last asked: each ledger
        apart, so that several feeding these metrics add up. Under a lock: it is asked from
        the request's thread and the ledger's writer at once, and two that both read the
        same count as last seen had each added what was new since (counted twice)."""
        n = ledger.dropped
        if n:
            with self._dropped_lock:
                seen = self._dropped_seen.get(ledger, 0)
                if n > seen:
                    self._dropped_seen[ledger] = n
                    self.ledger_dropped.inc(n - seen)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))
