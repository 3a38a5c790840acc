"""Keep a running router's prices true: refresh its registry from a catalogue on an interval.

Each refresh reads the source off the event loop, carries its prices, windows and deprecation
dates into the router's current registry (`sources.apply`, adding no models), and refuses a
snapshot with absurd changes (a price x10 or /10, to 0, or to unknown) unless `confirm=True`.
An accepted one is swapped in with one assignment (`Router.update`): requests in flight
finish on the snapshot they started with, the next ones use the new prices. Feedback the
router learned lives in its policy and survives the swap. A failed refresh keeps the old
registry and is logged; the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any

from . import sources
from ._real import as_real
from .errors import ConfigError, SatisficeError

if TYPE_CHECKING:
    from .registry import Registry
    from .router import Router

__all__ = ["RefreshRefused", "RegistryRefresher"]

_log = logging.getLogger("satisfice.refresh")


class RefreshRefused(SatisficeError):
    """A refresh found changes too large to apply without confirmation."""

    def __init__(self, diff: sources.Diff, bad: list[sources.Change]):
        self.diff, self.bad = diff, bad
        super().__init__(
            "refresh refused: " + "; ".join(map(str, bad)) + " (check them at the provider; "
            "pass confirm=True to apply)"
        )


class RegistryRefresher:
    """Refreshes `router`'s registry from `source` every `interval_s` seconds.

    `on_diff(diff)` is called after each applied refresh that changed something (for logs,
    metrics or alerts). `start()` runs the loop as a task; `refresh()` runs one refresh.
    """

    def __init__(
        self,
        router: Router,
        source: str,
        location: str | os.PathLike[str] | None = None,
        *,
        interval_s: float = 3600.0,
        max_ratio: float = 10.0,
        confirm: bool = False,
        timeout_s: float = 30.0,
        on_diff: Callable[[sources.Diff], None] | None = None,
    ) -> None:
        if source not in sources.SOURCES:
            raise ConfigError(f"unknown source {source!r}; use one of {list(sources.SOURCES)}")
        interval, ratio, timeout = as_real(interval_s), as_real(max_ratio), as_real(timeout_s)
        if interval is None or ratio is None or not (interval > 0 and ratio > 1):
            raise ConfigError("interval_s must be > 0 and max_ratio > 1")
        if timeout is None or not 0 < timeout <= 3600:
            # as [registry].refresh takes it: unchecked here, NaN, 0 or -1 failed every
            # refresh as "not downloaded within nans", and 1e300, "x" or None raw
            raise ConfigError(f"timeout_s must be a number of seconds in (0, 3600], got "
                              f"{timeout_s!r:.40}")  # fmt: skip
        self.router, self.source, self.location = router, source, location
        self.interval_s, self.max_ratio, self.confirm = interval, ratio, confirm
        self.timeout_s, self.on_diff = timeout, on_diff
        self.refreshes = self.failures = self.refused = 0
        self.last_diff: sources.Diff | None = None
        self._catalogue: tuple[Any, date] | None = None  # the last applied, read when (`onto`)
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> sources.Diff:
        """One refresh: read, apply, validate, swap. Raises RefreshRefused or ConfigError
        (the old registry stays)."""
        read = date.today()
        cat = await asyncio.to_thread(sources.load, self.source, self.location,
                                      timeout_s=self.timeout_s)  # fmt: skip
        current = self.router.registry
        new, diff = sources.apply(current, cat, prices_as_of=read)
        bad = diff.absurd(self.max_ratio)
        if bad and not self.confirm:
            self.refused += 1
            raise RefreshRefused(diff, bad)
        applied = bool(diff) or new.meta.get("prices_as_of") != current.meta.get("prices_as_of")
        if applied:
            # also when nothing changed: the prices were checked today, not stale
            self.router.update(registry=new)
            _log.info(
                "registry refreshed from %s: %d change(s)", self.source,
                sum(1 for c in diff.changes if c.what not in sources.NOTES),
                extra={"event": "registry_refresh", "changes": [str(c) for c in diff.changes]},
            )  # fmt: skip
        self.refreshes += 1
        self.last_diff = diff
        self._catalogue = cat, read
        if applied and self.on_diff is not None:
            try:  # the caller's hook: its failure is its own, the refresh was applied
                self.on_diff(diff)
            except Exception as e:
                _log.error("registry refresh hook on_diff failed: %s: %s", type(e).__name__, e,
                           extra={"event": "registry_refresh_hook_failed"})  # fmt: skip
        return diff

    def onto(self, registry: Registry) -> Registry:
        """`registry` (a file read again: `/admin/reload`) with the prices the last refresh
        brought, as that refresh checked them (a reload had put the file's old prices back
        until the next refresh, up to interval_s later); as it is before any refresh."""
        if self._catalogue is None:
            return registry
        cat, read = self._catalogue  # (dated as read: a reload checks no price)
        new, diff = sources.apply(registry, cat, prices_as_of=read)
        if diff.absurd(self.max_ratio) and not self.confirm:
            return registry  # (the next refresh says so, and refuses it)
        return new

    async def _loop(self) -> None:
        while True:
            if self.router._closed:  # nobody routes on what it would fetch: done
                _log.info("registry refresh from %s stopped: its router was closed",
                          self.source, extra={"event": "registry_refresh_stopped"})  # fmt: skip
                return
            try:
                await self.refresh()
            except Exception as e:  # any failure: the old registry stays, the loop goes on
                self.failures += 1
                why = str(e) if isinstance(e, SatisficeError) else f"{type(e).__name__}: {e}"
                _log.warning("registry refresh from %s failed: %s", self.source, why[:500],
                             extra={"event": "registry_refresh_failed"})  # fmt: skip
            await asyncio.sleep(self.interval_s)

    def start(self) -> asyncio.Task[None]:
        """Run refreshes every `interval_s` (the first one now) until `stop()`."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
