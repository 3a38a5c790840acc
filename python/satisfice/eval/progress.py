"""A one-line progress display on stderr for long offline runs (no dependency).

On a terminal the line is redrawn in place; when stderr is a file or a pipe (CI logs) each
stage prints one line when it ends, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressLine"]


_LOG_EVERY_S = 10.0  # how often progress is written as lines when not to a terminal


class ProgressLine:
    """`stage(name)`, then `update(done, total, note)` as work advances, then `done()`."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled
        self._tty = enabled and self._stream.isatty()
        self._name = ""
        self._note = ""
        self._t0 = time.perf_counter()
        self._last = 0.0

    def stage(self, name: str) -> None:
        self.done()
        self._name, self._note = name, ""
        self._t0 = self._last = time.perf_counter()
        self._draw(f"{name} ...")
        if self._enabled and not self._tty:  # a log, not a terminal: a line as it starts
            self._stream.write(f"{name} ...\n")
            self._stream.flush()

    def update(self, done: int, total: int, note: str = "") -> None:
        self._note = note
        now = time.perf_counter()
        # A redraw per call would cost more than the work on fast loops.
        if self._tty and (now - self._last > 0.1 or done >= total):
            self._last = now
            pct = 100.0 * done / total if total else 100.0
            self._draw(f"{self._name}: {done}/{total} ({pct:.0f}%) {note}")
        elif self._enabled and not self._tty and now - self._last > _LOG_EVERY_S:
            # not a terminal (CI, a pipe): a line now and then, where it had been silent
            # until the stage ended, minutes of training
            self._last = now
            pct = 100.0 * done / total if total else 100.0
            self._stream.write(f"{self._name}: {done}/{total} ({pct:.0f}%) {note}".rstrip() + "\n")
            self._stream.flush()

    def done(self) -> None:
        if not self._name or not self._enabled:
            self._name = ""
            return
        elapsed = time.perf_counter() - self._t0
        note = f" {self._note}" if self._note else ""
        line = f"{self._name}: done in {elapsed:.1f} s{note}"
        if self._tty:
            self._stream.write("\r\x1b[K" + line + "\n")
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._name = ""

    def _draw(self, text: str) -> None:
        if self._tty:
            self._stream.write("\r\x1b[K" + text[:150])
            self._stream.flush()
