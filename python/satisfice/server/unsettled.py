"""Settlements the budget store missed (Redis away as a request ended), kept in order until it
takes them, and, with `[state].unsettled_file`, kept in that file as well: a replica stopped
(or killed) while Redis is away hands them to its next start, which settles them once Redis
answers. Without the file they end with the process, and its exit says what they were.

Settling one twice is harmless: Redis keeps each reservation's mark for a week
(`state._ADMIT`), and a settlement whose mark is gone changes nothing (`state._SETTLE`). So
the file is written as the queue changes, before anything is settled from it, and a start
after a crash may replay what was settled already. A settlement kept longer than that week
is taken for settled by Redis: its spend is not counted, which the start that loads it says.

One file per replica, as `[probe].health_file`: a second replica on the same file is refused
at start (a lock beside it), since each would write its own queue over the other's."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import time
import weakref
from collections.abc import Iterator
from dataclasses import asdict, fields
from typing import Any

from .._atomic import write_atomic
from ..errors import ConfigError
from .state import Budget

__all__ = ["Settlement", "Unsettled"]

#: (budgets, USD reserved, USD billed): what `state.settle` takes.
Settlement = tuple[list[Budget], float, float]

_log = logging.getLogger("satisfice.server")
_VERSION = 1
#: How long Redis keeps a reservation's mark (`SET hold ... EX 604800` in `state._ADMIT`).
MARK_S = 7 * 86400
_BUDGET_FIELDS = {f.name for f in fields(Budget)}


class Unsettled:
    """The queue of settlements the store missed, oldest first; kept in `path` if given."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._items: list[Settlement] = []
        self._queued_at: list[float] = []
        if path is None:
            return
        self._lock = _locked(path)
        weakref.finalize(self, self._lock.close)
        for s, at in _read(path):
            self._items.append(s)
            self._queued_at.append(at)
        if self._items:
            usd = sum(a for _, _, a in self._items)
            _log.warning(
                "%d settlement(s) the budget store missed before this start ($%.6f billed in "
                "all), kept in %s: settled once it answers",
                len(self._items), usd, path, extra={"event": "settlements_restored", "usd": usd},
            )  # fmt: skip
            stale = [s for s, at in zip(self._items, self._queued_at, strict=True)
                     if time.time() - at > MARK_S]  # fmt: skip
            if stale:
                usd = sum(a for _, _, a in stale)
                _log.error(
                    "%d of them were kept over a week: Redis no longer holds their "
                    "reservations' marks and takes them for settled; their spend, $%.6f, is "
                    "not counted in budgets %s",
                    len(stale), usd, _scopes(stale),
                    extra={"event": "settlements_lost", "usd": usd},
                )  # fmt: skip

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Settlement]:
        return iter(self._items)

    def __getitem__(self, i: int) -> Settlement:
        return self._items[i]

    def append(self, s: Settlement) -> None:
        self._items.append(s)
        self._queued_at.append(time.time())
        if s[2] > 0:  # (a release changes nothing the file keeps: see `_save`)
            self._save()

    def popleft(self) -> None:
        """The oldest one, settled."""
        s = self._items.pop(0)
        self._queued_at.pop(0)
        if s[2] > 0:
            self._save()

    def usd(self) -> float:
        return sum(a for _, _, a in self._items)

    def scopes(self) -> str:
        return _scopes(self._items)

    def close(self) -> None:
        """The file's lock let go: another replica may take the file now, so nothing is
        written to it after (the shutdown waits for its settlements before closing)."""
        if self.path is not None:
            self._lock.close()
            self.path = None

    def _save(self) -> None:
        """The queue's billed settlements to the file (none when there are none), replaced
        whole: a crash mid-write leaves the previous queue. A release (a request refused
        while the store was away frees the hold its lost admission may have made: nothing
        billed) is not kept: its hold lapses `state.HOLD_S` after its last renewal, as a
        killed replica's does, and keeping them had rewritten the file at every request
        refused during an outage. Written on the event loop: billed settlements queue only
        for requests in flight as the store went away, a few."""
        if self.path is None:
            return
        kept = [(s, at) for s, at in zip(self._items, self._queued_at, strict=True) if s[2] > 0]
        try:
            if not kept:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                return
            doc = {
                "version": _VERSION,
                "settlements": [
                    {"budgets": [asdict(b) for b in bs], "reserved_usd": r, "billed_usd": a,
                     "queued_at": at}
                    for (bs, r, a), at in kept
                ],
            }  # fmt: skip
            text = json.dumps(doc).encode()
            write_atomic(self.path, lambda f: f.write(text))
        except OSError as e:  # the queue in memory holds on; the next change tries again
            _log.error(
                "could not keep %d unsettled settlement(s) in %s (%s): a stop before the "
                "budget store takes them loses their spend ($%.6f)",
                len(kept), self.path, type(e).__name__, self.usd(),
                extra={"event": "unsettled_not_kept"},
            )  # fmt: skip


def _scopes(items: list[Settlement]) -> str:
    return ", ".join(sorted({b.scope for bs, _, _ in items for b in bs})) or "(none)"


def _locked(path: str) -> Any:
    """An open lock file beside `path`, locked for this process; ConfigError if another
    process holds it."""
    lock = open(f"{path}.lock", "a")  # noqa: SIM115 (held open for the replica's life)
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConfigError(
            f"[state].unsettled_file {path!r} is in use by another running replica: give "
            "each replica a file of its own"
        ) from None
    return lock


def _read(path: str) -> list[tuple[Settlement, float]]:
    """The queue a previous run kept in `path` (none if there is no file)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise _unreadable(path, f"{type(e).__name__}: {e}") from None
    try:
        if not isinstance(doc, dict) or doc.get("version") != _VERSION:
            raise ValueError(f"not version {_VERSION} of its format")
        out = []
        for s in doc["settlements"]:
            budgets = []
            for b in s["budgets"]:
                # its scope named, and its reservation's id, which settles it once however
                # often it is replayed (without one, `_SETTLE` counts it every time)
                if (
                    not isinstance(b, dict)
                    or not set(b) <= _BUDGET_FIELDS
                    or not isinstance(b.get("scope"), str)
                    or not isinstance(b.get("hold"), str)
                    or not b["hold"]
                ):
                    raise ValueError(f"a budget is {str(b)[:80]}")
                budgets.append(Budget(**b))
            nums = (s["reserved_usd"], s["billed_usd"], s["queued_at"])
            if not all(isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in nums):
                raise ValueError(f"amounts {nums!r:.80} are not finite non-negative numbers")
            out.append(((budgets, float(nums[0]), float(nums[1])), float(nums[2])))
        return out
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise _unreadable(path, str(e) or type(e).__name__) from None


def _unreadable(path: str, why: str) -> ConfigError:
    return ConfigError(
        f"[state].unsettled_file {path!r} is not a queue of settlements this server wrote "
        f"({why:.200}): move it aside to start without it (the spend in it then goes "
        "uncounted), or restore the file"
    )
