"""One router's health store under threads: an app's event loop and chat_sync()'s loop
thread (or a monitoring thread reading router.health()) share it. Each test failed on the
code before its fix."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from satisfice.state import Health


class _Now(float):
    """A clock reading whose comparison with a cooldown's end runs `hook` once: a float
    subclass's reflected `__ge__` is asked first for `until <= now`, so the hook runs
    inside `Health.blocked()`, after it listed the cooling keys and before it drops one."""

    hook: Callable[[], None] | None = None

    def __ge__(self, other: object) -> bool:
        hook, _Now.hook = _Now.hook, None
        if hook is not None:
            hook()
        return float(self) >= other  # type: ignore[operator]


def _on_another_thread(fn: Callable[[], object], errors: list[BaseException]) -> None:
    """Run `fn` on a thread of its own, as another event loop's request would, and give it
    a moment (it may wait for the store: then it ends after the caller's call)."""

    def run() -> None:
        try:
            fn()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(1.0)  # (with the lock it waits for the caller's call: the join times out)
    _joins.append(t)


_joins: list[threading.Thread] = []


def _finish() -> None:
    for t in _joins:
        t.join(5)
    _joins.clear()


def test_two_threads_dropping_an_ended_cooldown_at_once_raise_nothing() -> None:
    # both listed the ended cooldown; the second `del` was a raw KeyError out of chat()
    t = [1000.0]
    h = Health(clock=lambda: _Now(t[0]))
    h.cool("m/d", 1.0, "Retry-After 1s")
    t[0] += 2.0
    errors: list[BaseException] = []
    _Now.hook = lambda: _on_another_thread(h.blocked, errors)
    assert h.blocked() == frozenset()
    _finish()
    assert errors == []


def test_a_deployment_disabled_on_one_thread_stays_blocked_on_the_other() -> None:
    # the other thread's blocked() dropped the key the disable had just set, as an ended
    # cooldown: routing no longer went around the disabled deployment
    t = [1000.0]
    h = Health(clock=lambda: _Now(t[0]))
    h.cool("m/d", 1.0, "Retry-After 1s")
    t[0] += 2.0
    errors: list[BaseException] = []
    _Now.hook = lambda: _on_another_thread(lambda: h.disable("m/d", "key rejected"), errors)
    h.blocked()
    _finish()
    assert errors == []
    assert h.blocked() == {"m/d"}
    assert h.unavailable("m/d") == "disabled: key rejected"


def test_router_health_read_while_requests_meet_new_deployments_raises_nothing() -> None:
    # router.health() (a monitoring thread) iterated the states while a request on another
    # loop added one: RuntimeError, dictionary changed size during iteration
    h = Health()
    errors: list[BaseException] = []
    stop = threading.Event()

    def requests() -> None:
        i = 0
        while not stop.is_set():
            try:
                h.record_success(f"m{i}/d", 0.1)
                h.record_failure(f"m{i}/d", rate_limited=False, retry_after=None, reason="500")
            except Exception as e:
                errors.append(e)
                stop.set()
            i += 1

    def monitor() -> None:
        while not stop.is_set():
            try:
                h.snapshot()
                h.blocked()
            except Exception as e:
                errors.append(e)
                stop.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: the race comes in well under a second
    try:
        threads = [threading.Thread(target=requests), threading.Thread(target=monitor)]
        for th in threads:
            th.start()
        end = time.monotonic() + 1.0
        while not stop.is_set() and time.monotonic() < end:
            time.sleep(0.01)
        stop.set()
        for th in threads:
            th.join(5)
    finally:
        sys.setswitchinterval(old)
    assert errors == []
