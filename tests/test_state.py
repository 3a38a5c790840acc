"""Health: Retry-After cooldowns, the circuit breaker, disable/enable, live p95, snapshot."""

from __future__ import annotations

import math

from satisfice.state import Health, HealthConfig


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fail(h: Health, key: str = "m/d", retry_after: float | None = None, code: int = 500) -> None:
    h.record_failure(key, rate_limited=code == 429, retry_after=retry_after, reason=f"HTTP {code}")


def test_retry_after_cools_for_exactly_that_long_and_a_success_does_not_lift_it() -> None:
    clock = Clock()
    h = Health(clock=clock)
    assert h.unavailable("m/d") is None and h.blocked() == frozenset()
    fail(h, retry_after=3.0, code=429)
    why = h.unavailable("m/d")
    assert why is not None and "cooling for 3.00s" in why and "Retry-After" in why
    assert h.blocked() == {"m/d"}
    h.record_success("m/d", 0.1)  # a request that was already in flight
    assert h.unavailable("m/d") is not None
    clock.t += 3.01
    assert h.unavailable("m/d") is None and h.blocked() == frozenset()
    snap = h.snapshot()["m/d"]
    assert snap["state"] == "ok" and snap["rate_limited"] == 1 and snap["last_error"] == "HTTP 429"


def test_retry_after_is_capped() -> None:
    clock = Clock()
    h = Health(HealthConfig(max_retry_after_s=10), clock=clock)
    fail(h, retry_after=1e9, code=429)
    clock.t += 10.01
    assert h.unavailable("m/d") is None


def test_breaker_opens_half_opens_and_closes() -> None:
    clock = Clock()
    h = Health(HealthConfig(consecutive_failures=3, base_cooldown_s=5), clock=clock)
    fail(h)
    fail(h)
    assert h.unavailable("m/d") is None  # two failures: still closed
    fail(h)
    assert "breaker open (3 failures in a row" in (h.unavailable("m/d") or "")
    fail(h)  # a call that was in flight when it opened does not lengthen the cooldown
    assert h.retry_in("m/d") == 5.0
    assert h.snapshot()["m/d"]["state"] == "cooling"
    clock.t += 5.01
    assert h.unavailable("m/d") is None  # half-open: this caller probes ...
    assert "half-open" in (h.unavailable("m/d") or "")  # ... and the next waits
    assert h.snapshot()["m/d"]["state"] == "half_open"
    fail(h)  # the probe failed: open again, twice as long
    clock.t += 5.01
    assert h.unavailable("m/d") is not None
    clock.t += 5.0
    assert h.unavailable("m/d") is None  # probe
    h.record_success("m/d", 0.2)
    assert h.unavailable("m/d") is None and h.unavailable("m/d") is None
    assert h.snapshot()["m/d"]["state"] == "ok" and h.blocked() == frozenset()


def test_error_rate_opens_the_breaker_without_a_streak() -> None:
    h = Health(
        HealthConfig(consecutive_failures=100, min_samples=10, error_rate=0.5), clock=Clock()
    )
    for _ in range(6):
        h.record_success("m/d", 0.1)
    for _ in range(4):
        fail(h)
        if h.unavailable("m/d"):
            break
        h.record_success("m/d", 0.1)
        fail(h)
    assert "error rate" in (h.unavailable("m/d") or "")
    assert h.snapshot()["m/d"]["error_rate"] >= 0.5


def test_disable_until_enabled() -> None:
    h = Health(clock=Clock())
    h.disable("m/d", "HTTP 401: bad key")
    assert h.unavailable("m/d") == "disabled: HTTP 401: bad key"
    assert h.blocked() == {"m/d"}
    snap = h.snapshot()["m/d"]
    assert snap["state"] == "disabled" and snap["reason"] == "HTTP 401: bad key"
    h.enable("m/d")
    assert h.unavailable("m/d") is None and h.blocked() == frozenset()


def test_latency_ewma_and_p95() -> None:
    h = Health(clock=Clock())
    for i in range(19):
        h.record_success("m/d", 0.1 + (i % 2) * 0.02)
    assert h.p95_s("m/d") is None  # too few samples to trust
    h.record_success("m/d", 0.11)
    p95 = h.p95_s("m/d")
    assert p95 is not None and 0.105 < p95 < 0.14
    snap = h.snapshot()["m/d"]
    assert math.isclose(snap["ewma_latency_ms"], 110, rel_tol=0.1)
    assert snap["successes"] == 20 and snap["failures"] == 0


def test_a_half_open_probe_answered_by_429_reopens_the_breaker() -> None:
    clock = Clock()
    h = Health(HealthConfig(consecutive_failures=1, base_cooldown_s=5), clock=clock)
    fail(h)
    clock.t += 5.01
    assert h.unavailable("m/d") is None  # the probe goes out ...
    fail(h, retry_after=1.0, code=429)  # ... and is rate-limited
    assert h.snapshot()["m/d"]["state"] == "cooling"
    clock.t += 1.01  # the Retry-After alone has passed: the breaker is still open
    assert "breaker open (half-open probe failed" in (h.unavailable("m/d") or "")
    clock.t += 9.0  # twice the base cooldown
    assert h.unavailable("m/d") is None
