"""A ledger sink for tests that decide what its writes do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class ScriptedSink:
    """Keeps the request ids it took in `rows`; a subclass's `refuse` says which writes fail,
    with `error` (by default as a sink that is down fails)."""

    error: type[Exception] = ConnectionError

    def __init__(self) -> None:
        self.calls = 0
        self.rows: list[str] = []

    def refuse(self, records: Sequence[Mapping[str, Any]]) -> bool:
        return False

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        self.calls += 1
        if self.refuse(records):
            raise self.error("refused")
        self.rows += [r["request_id"] for r in records]

    def feedback(self, rows: Any) -> None: ...

    def expire(self, before_ts: float) -> int:
        return 0

    def close(self) -> None: ...
