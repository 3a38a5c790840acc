"""What a router does with each finished request: ledger, metrics, logs and callbacks.

`Router.attach(ledger=..., metrics=..., on_decision=..., on_attempt=..., on_result=...)`
installs one `Recorder`. On the request path it costs one queue append (the record is built
and written by the ledger's thread, and metrics are counted there from the record) plus the
callbacks the user gave. With nothing attached, a router has no recorder and pays nothing.

Callbacks may be plain functions or coroutine functions (scheduled on the running loop). An
exception in a callback is logged under `satisfice.hooks` and counted in `hook_errors`; it
never reaches the request. `on_attempt` is called for each attempt of a request when the
request ends, in order; `on_decision` as soon as the request is routed.

A chat() or stream() made inside a check (a judge's call) that put itself on the check's
bill (`_verdict.made_call`) is no record of its own: its cost is a `check` attempt on the
record of the request it checked (as its own record too, it had been counted twice in the
ledger, the report and the metrics). Its hooks and trace still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .ledger import Ledger, failure_record

if TYPE_CHECKING:
    from .decision import Decision
    from .metrics import Metrics
    from .result import Attempt, ChatResult
    from .tracing import Tracing

__all__ = ["Recorder"]

_hooks_log = logging.getLogger("satisfice.hooks")
_req_log = logging.getLogger("satisfice.request")
_att_log = logging.getLogger("satisfice.attempt")


class _NullSink:
    """For metrics without a ledger: records are counted, then let go."""

    def write(self, records: Any) -> None:
        pass

    def feedback(self, rows: Any) -> None:
        pass

    def expire(self, before_ts: float) -> int:
        return 0

    def close(self) -> None:
        pass


class Recorder:
    def __init__(
        self,
        ledger: Ledger | None = None,
        metrics: Metrics | None = None,
        on_decision: Callable[[Decision], Any] | None = None,
        on_attempt: Callable[[Attempt], Any] | None = None,
        on_result: Callable[[ChatResult], Any] | None = None,
        record_prompts: bool = False,
        tracing: Tracing | None = None,
    ) -> None:
        self.record_prompts, self.tracing = record_prompts, tracing
        if ledger is None and metrics is not None:
            ledger = Ledger(_NullSink())
        if ledger is not None and metrics is not None:
            ledger.on_record = self._count
            metrics.watch(ledger)
        self.ledger, self.metrics = ledger, metrics
        self.on_decision, self.on_attempt, self.on_result = on_decision, on_attempt, on_result
        self.hook_errors = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    def _count(self, rec: Mapping[str, Any]) -> None:
        assert self.metrics is not None and self.ledger is not None
        self.metrics.observe(rec)
        self.metrics.dropped(self.ledger)

    def _call(self, fn: Callable[[Any], Any], arg: Any) -> None:
        try:
            out = fn(arg)
            if inspect.isawaitable(out):
                task = asyncio.ensure_future(out)
                self._tasks.add(task)
                task.add_done_callback(self._done)
        except Exception as e:
            self.hook_errors += 1
            _hooks_log.error("%s raised %s: %s", getattr(fn, "__name__", "hook"),
                             type(e).__name__, e)  # fmt: skip

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            self.hook_errors += 1
            _hooks_log.error("async hook raised %s: %s", type(e).__name__, e)

    def decision(self, d: Decision) -> None:
        if _req_log.isEnabledFor(logging.DEBUG):
            _req_log.debug("routed %s to %s", d.request_id, d.model, extra={
                "event": "decision", "request_id": d.request_id, "model": d.model,
                "fallbacks": d.fallbacks, "task": d.task, "reasons": d.reasons(),
            })  # fmt: skip
        if self.on_decision is not None:
            self._call(self.on_decision, d)

    def parent(self) -> Any:
        """The tracing context current as a request begins (its spans' parent, given back
        to result() or failure()), or None without tracing."""
        return None if self.tracing is None else self.tracing.begin()

    def result(
        self, r: ChatResult, messages: Any = None, record: bool = True, parent: Any = None
    ) -> None:
        """`record`: a request of its own on the record (False: a call on a check's bill,
        on the record of the request it checked). `parent`: its spans' parent (`parent()`
        as it began; None: the context current now)."""
        if self.metrics is not None and self.ledger is not None:  # live even if the sink stalls
            self.metrics.dropped(self.ledger)
        if self.tracing is not None:
            try:
                self.tracing.result(r, parent)
            except Exception as e:  # a tracing backend's fault never reaches the request
                _hooks_log.error("tracing failed: %s: %s", type(e).__name__, e)
        if self.ledger is not None and record:
            # with record_prompts, the messages as sent (copied as the request began:
            # router._as_sent)
            self.ledger.put((r, messages) if self.record_prompts and messages is not None else r)
        if _att_log.isEnabledFor(logging.INFO):
            for a in r.attempts:
                if a.outcome in ("error", "skipped"):
                    _att_log.info("%s via %s: %s (%s); falling back", a.model, a.deployment,
                                  a.outcome, a.error_type or a.error, extra={
                                      "event": "fallback", "request_id": r.request_id,
                                      "model": a.model, "deployment": a.deployment,
                                      "status": a.status, "error_type": a.error_type})  # fmt: skip
        if _req_log.isEnabledFor(logging.INFO):
            _req_log.info("%s answered by %s via %s in %.3fs, $%s", r.request_id, r.model,
                          r.deployment, r.latency_s, r.total_cost_usd, extra={
                              "event": "result", "request_id": r.request_id, "model": r.model,
                              "deployment": r.deployment, "cost_usd": r.total_cost_usd,
                              "latency_s": r.latency_s, "overhead_s": r.overhead_s,
                              "attempts": len(r.attempts)})  # fmt: skip
        if self.on_attempt is not None:
            for a in r.attempts:
                self._call(self.on_attempt, a)
        if self.on_result is not None:
            self._call(self.on_result, r)

    def failure(
        self,
        decision: Decision | None,
        error: BaseException,
        attempts: list[Attempt],
        *,
        started_at: float,
        latency_s: float,
        metadata: Mapping[str, Any] | None,
        record: bool = True,
        parent: Any = None,
    ) -> None:
        rec = failure_record(decision, error, attempts, started_at=started_at,
                             latency_s=latency_s, metadata=metadata)  # fmt: skip
        with contextlib.suppress(AttributeError):  # the record's id, for a server's answer
            error.request_id = rec["request_id"]  # type: ignore[attr-defined]
        _req_log.warning("%s failed: %s: %s", rec["request_id"], type(error).__name__,
                         rec["error"][:300], extra={"event": "failure",
                                                  "request_id": rec["request_id"],
                                                  "error_type": type(error).__name__})  # fmt: skip
        if self.tracing is not None:
            try:
                reg = None if decision is None else decision.registry
                self.tracing.failure(rec, parent, registry=reg)
            except Exception as e:
                _hooks_log.error("tracing failed: %s: %s", type(e).__name__, e)
        if self.ledger is not None and record:
            self.ledger.put(rec)
        if self.on_attempt is not None:
            for a in attempts:
                self._call(self.on_attempt, a)

    def feedback(self, request_id: str, score: float, source: str, model: str | None) -> None:
        """A score for `model`'s answer to the request (None: the answering model's)."""
        if self.ledger is not None:
            self.ledger.feedback(request_id, score, source, model)
