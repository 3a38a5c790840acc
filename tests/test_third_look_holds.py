"""A third look at the twenty-ninth session's fixes, from a separate clone. Every test here
failed on the code it was written against (two plain-request controls passed): a cut-off
call on a ladder, a race, a hedge or inside a check was settled at its estimate, not kept
whole; a request cancelled in a backoff was recorded as cancelled before any call;
httpcore's log lines went unscrubbed; a deployment's repr mangled its host around a short
password; a key inside a longer one in another case, and a percent-encoded key shouted,
came through; a ladder step excluded at routing was sent an image it cannot see; a sink
close() gave up on stayed open; a score written after close() stayed counted as lost."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from satisfice import Policy, Router, _redact
from satisfice.cascade import Cascade, Step
from satisfice.ledger import read_records
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, hang, reply

from .chat_support import registry, wire
from .server_support import ADMIN, post_chat, running
from .test_budgets_settle_as_recorded import HELLO, _key, _row, _wait_seen
from .test_sources import JSONHandler


async def _cancelled_once_seen(
    up: LocalUpstream, model: str, task: asyncio.Task[Any], after_s: float
) -> BaseException:
    """`task` cancelled `after_s` once `model`'s upstream has its call; its CancelledError."""
    deadline = time.monotonic() + 10
    while not up.seen(wire(model)):
        assert time.monotonic() < deadline, f"the call never reached {model}"
        await asyncio.sleep(0.01)
    await asyncio.sleep(after_s)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError as e:
        return e
    raise AssertionError("not cancelled")


def _budget(url: str) -> dict[str, Any]:
    (row,) = httpx.get(url + "/admin/spend", headers=ADMIN).json()["budgets"]
    return row  # type: ignore[no-any-return]


# 1 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ladder", [False, True], ids=["plain", "cascade"])
def test_a_served_request_cut_while_its_call_is_upstream_keeps_its_whole_hold(
    master: None, tmp_path: Path, ladder: bool
) -> None:
    """Defect (17769d9): a non-streamed call cut off after it was sent keeps the whole
    hold ("as documented"): router.chat() says so by `e.billed_usd = None` when
    `Executor._cut_off(run)` finds a call in `run.calling` past CONNECTING. A cascade's
    calls run on sub-runs (`Run.sub`) whose `calling` dicts are their own: the step's call
    is cut off and recorded by `Executor.cascade`'s `call` (`self._cut_off(sub)`), so the
    request's `run.calling` is empty, `_cut_off(run)` says False, and the router reports
    `billed_usd` = the estimate (and records RequestCancelled(called=False)). The server
    then settles the key's budget at the prompt's estimate though the upstream was writing
    an answer it may bill in full. Plain requests keep the hold; ladders must too."""
    with LocalUpstream() as up:
        policy = Policy(quality_floor=0.5, max_fallbacks=0)
        if ladder:
            policy = Policy(quality_floor=0.5, max_fallbacks=0,
                            cascades={"*": Cascade([Step(("alpha",))])})  # fmt: skip
        r = Router(registry(up.url), policy)
        with running(ServerConfig(ledger=str(tmp_path / "l.db")), r) as (url, app):
            svc = app.state.service
            key = _key(url, budget_usd=5.0)
            up.script(wire("alpha"), hang())
            asked: dict[str, Any] = {"model": "alpha", "max_tokens": 1000, "messages": HELLO}
            if ladder:
                asked |= {"model": "auto", "cascade": "auto"}
            s = post_chat(url, key, json.dumps(asked).encode())
            _wait_seen(up, "alpha")  # the call is in flight upstream
            time.sleep(0.2)
            held = _budget(url)["held_usd"]
            assert held > 0
            s.close()  # the client leaves
            row = _row(url, svc)
            recs = list(read_records(str(tmp_path / "l.db")))
    assert [a["outcome"] for a in recs[0]["attempts"]] == ["cancelled"]
    assert row["spent_usd"] == pytest.approx(held), (
        f"the reservation was ${held:.6f}; the key was charged ${row['spent_usd']:.6f} "
        f"(the record's estimate ${recs[0]['total_cost_usd']}) for a call cut off while the "
        "upstream was writing its answer"
    )


# 1b -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [{}, {"race": 2}, {"hedge": True}], ids=["plain", "race", "hedge"])
def test_a_race_or_hedge_cut_while_its_calls_are_upstream_has_no_known_bill(
    mode: dict[str, Any],
) -> None:
    """Defect (17769d9): `Executor._concurrent` (race, hedge) runs its calls as tasks and,
    in its `finally`, `_cancel(run, running)` records each at an estimate, which pops it
    from `run.calling` (`Run.record`). By the time router.chat()'s `except BaseException`
    asks `io._cut_off(run)` whether a call was sent, `run.calling` is empty: it says False,
    and `e.billed_usd` is the estimate (and the record a RequestCancelled(called=False)),
    though both calls were at the upstream, writing. A caller settling a budget on
    `billed_usd` (the server's `_billed`) under-settles. Plain requests say None."""

    async def go(up: LocalUpstream) -> BaseException:
        router = Router(registry(up.url), Policy(quality_floor=0.5, max_fallbacks=3))
        async with router:
            task = asyncio.create_task(router.chat(HELLO, max_tokens=1000, **mode))
            return await _cancelled_once_seen(up, "alpha", task, 0.3)

    with LocalUpstream() as up:
        for m in ("alpha", "beta", "gamma", "delta"):
            up.script(wire(m), hang())
        e = asyncio.run(go(up))
    assert getattr(e, "billed_usd", "unset") is None, (
        f"billed_usd={getattr(e, 'billed_usd', 'unset')!r} for a request cut with its calls "
        "at the upstream: a budget is settled at that figure"
    )


# 2 ------------------------------------------------------------------------------------------
def test_a_request_cut_while_its_checks_router_call_is_upstream_has_no_known_bill() -> None:
    """Defect (17769d9): a check that calls the router (a judge, `routed_judge`) makes its
    call on a run of its own: cut off while that call is at the upstream, the inner
    router.chat() marks the CancelledError `billed_usd = None` (a call was sent), and then
    the outer router.chat() overwrites the same exception's `billed_usd` with the outer
    run's known bill (its own `run.calling` is empty: the step's call is on record), so a
    server settles the key's budget at an estimate for a judge call the upstream goes on
    writing (and billing). Expected: None, as for any request cut with a call sent."""

    async def go(up: LocalUpstream) -> BaseException:
        router: Router

        async def grade(answer: Any, ctx: Any) -> Any:
            from satisfice import validators as v

            await router.chat([{"role": "user", "content": "grade it"}], allow=("delta",),
                              max_tokens=500)  # fmt: skip
            return v.Verdict(True, 0.9, "ok")

        ladder = Cascade([Step(("alpha",), grade), Step(("gamma",))])
        router = Router(registry(up.url), Policy(quality_floor=0.0, cascades={"*": ladder}))
        async with router:
            task = asyncio.create_task(router.chat(HELLO, cascade="auto", max_tokens=100))
            return await _cancelled_once_seen(up, "delta", task, 0.2)

    with LocalUpstream() as up:
        up.script(wire("alpha"), reply("4"))
        up.script(wire("delta"), hang())
        e = asyncio.run(go(up))
    assert getattr(e, "billed_usd", "unset") is None, (
        f"billed_usd={getattr(e, 'billed_usd', 'unset')!r} with the judge's call cut off at "
        "the upstream: a budget is settled at that figure"
    )


# 3 ------------------------------------------------------------------------------------------
class _Echo(JSONHandler):
    """A catalogue host that redirects the GET to where the file is, its token kept in the
    Location (as an object store's or a proxy's redirect does)."""

    def do_GET(self) -> None:
        if self.path.startswith("/cat.json"):
            self.send_response(302)
            self.send_header("location", "/files" + self.path)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_json(b'{"models": []}')


def test_guard_logs_scrubs_what_httpcore_logs() -> None:
    """Defect (022f119): `guard_logs()` adds its filter to the loggers named "httpx" and
    "httpcore". Python applies a logger's filters only to records logged on that logger,
    never to those a child propagates up, and httpcore logs only on children
    ("httpcore.http11", "httpcore.connection", ...): the "httpcore" filter never runs.
    With DEBUG logging on (logging.basicConfig(level=DEBUG)), a catalogue fetched from
    `...?token=...` (`sources._fetch`) that redirects with the token in its Location has
    httpcore.http11 log the response headers, token whole. Fix: filter on the handler side
    or on each httpcore.* logger (or a logging.setLogRecordFactory / a filter on the root
    handlers)."""
    from satisfice import sources

    secret = "tok-third-look-0123456789abcdef"
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    lines: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    grab = Grab(logging.DEBUG)
    root = logging.getLogger()
    old = root.level
    root.addHandler(grab)
    root.setLevel(logging.DEBUG)
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/cat.json?token={secret}"
        assert sources._fetch(url, 5.0) == b'{"models": []}'
    finally:
        root.removeHandler(grab)
        root.setLevel(old)
        srv.shutdown()
        srv.server_close()
    assert any("httpcore" in ln or "HTTP Request" in ln or "response_headers" in ln
               for ln in lines), lines  # fmt: skip
    leaked = [ln for ln in lines if secret in ln]
    assert not leaked, f"logged with the token whole: {leaked[0][:300]}"


# 4 ------------------------------------------------------------------------------------------
def test_a_deployments_repr_masks_a_short_password_without_mangling_the_host() -> None:
    """Defect (022f119): `url_secrets` now returns a base URL's password (and user:pass).
    `Deployment.__repr__` masks the password in the netloc and then replaces every
    `url_secrets` value anywhere in the URL (`shown.replace(secret, "***")`), which was
    meant for query values: a short password ("x", "ab") is also struck out of the host
    and the path, so the repr names a host that does not exist. Fix: in __repr__, only the
    query values (the user info is masked already), or replace only within the query."""
    from satisfice.registry import Deployment

    d = Deployment("d", "openai", "https://user:x@api.example.com/v1", "m")
    shown = repr(d)
    assert "x@" not in shown
    assert "api.example.com/v1" in shown, shown


# 5 ------------------------------------------------------------------------------------------
def test_a_key_inside_another_in_another_case_is_removed_whole() -> None:
    """Defect (022f119): `scrub` removes the keys as written (exact, longest first), and
    only then folds case. A registered key that holds another registered key in another
    case ("abcdefgh" and "ABCDEFGH12345678", or a lower-case echo of the longer) has its
    shorter key removed first, breaking the longer one: the fold pass no longer finds it
    and its tail is left in the text. Fix: one pass over the folded text (exact and folded
    spans together, the longest span at a position winning)."""
    _redact.register("thirdlookkeyabcd")
    _redact.register("THIRDLOOKKEYABCD-0123456789")
    out = _redact.scrub("echo: thirdlookkeyabcd-0123456789 end")
    assert "0123456789" not in out, out


# 6 ------------------------------------------------------------------------------------------
def test_a_percent_encoded_key_shouted_is_removed() -> None:
    """Defect (022f119): keys are found in any case as written, but a key found through
    its percent-encoding (`_unencode` / `_holds_key`) is compared to the keys as
    registered, case and all: an upstream's shouted echo of a request URL with the key in
    its query ("KEY=SK-THIRD%2BLOOK...") shows the key whole (only its case changed, the
    very leak the commit closed for plain text). Fix: compare `read.lower()` with
    `_folded` in `_holds_key`."""
    _redact.register("sk-third+look/abcdef0123")
    out = _redact.scrub("ERROR FOR URL ?KEY=SK-THIRD%2BLOOK%2FABCDEF0123 REJECTED")
    assert "ABCDEF0123" not in out, out


# 7 ------------------------------------------------------------------------------------------
_PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA"
    "60e6kgAAAABJRU5ErkJggg=="
)


def test_a_ladder_step_excluded_at_routing_is_unfit_for_an_image_it_cannot_see() -> None:
    """Defect (47538e0): `_cannot_take` (for a model the plan excluded before its hard
    filters: cooling, not allowed) checks `d.constraints.needs`, but a prompt's images
    ask for "vision" inside the Rust plan (`py.rs`: `c.required_caps |= vision` when the
    messages carry images), never in `Constraints.needs`. A ladder step naming a model
    without vision that was cooling at routing time is therefore not ruled out
    (`_unfit`), and once its cooldown is over it is sent the image. Fix: `_cannot_take`
    adds "vision" when the decision's prompt has images (the plan's image count)."""
    from satisfice import Registry
    from satisfice.executor import _unfit

    reg = registry("http://127.0.0.1:9")
    d0 = reg.to_dict() if hasattr(reg, "to_dict") else None
    assert d0 is not None
    for m in d0["model"]:
        if m["id"] == "gamma":
            m["capabilities"] = [*m["capabilities"], "vision"]
    reg = Registry.from_dict(d0)
    r = Router(reg, Policy(quality_floor=0.0))
    msgs = [{"role": "user", "content": [
        {"type": "text", "text": "what is in it?"},
        {"type": "image_url", "image_url": {"url": _PNG}},
    ]}]  # fmt: skip
    routed = r.route(msgs)
    assert routed.model == "gamma"
    assert "alpha" in _unfit(routed, msgs), "a sanity check: not excluded, alpha is ruled out"
    d = r.route(msgs, deny=("alpha",))  # (as cooling excludes it: the rule "exclude")
    assert d.filtered["alpha"][0] == "exclude"
    assert "alpha" in _unfit(d, msgs), (
        f"_unfit lets a ladder call alpha (no vision) with an image: {_unfit(d, msgs)}"
    )


# 9 ------------------------------------------------------------------------------------------
class _SlowSink:
    """A sink whose writes take 2 s (a database under load): longer than close() waits."""

    def __init__(self) -> None:
        self.written = self.scored = 0
        self.writing = False
        self.closes: list[bool] = []  # for each close(): whether a write was running

    def write(self, records: Any) -> None:
        self.writing = True
        time.sleep(2.0)
        self.writing = False
        self.written += len(records)

    def feedback(self, rows: Any) -> None:
        self.writing = True
        time.sleep(2.0)
        self.writing = False
        self.scored += len(rows)

    def expire(self, before_ts: float) -> int:
        return 0

    def close(self) -> None:
        self.closes.append(self.writing)


def _close_under_a_slow_write(score: bool) -> tuple[Any, _SlowSink, bool]:
    from satisfice.ledger import Ledger

    sink = _SlowSink()
    led = Ledger(sink, flush_interval_s=0.01)
    for i in range(3):
        led.put({"request_id": f"third-{i}", "ts": time.time(), "model": "m", "status": "ok"})
    time.sleep(0.2)  # the writer is in its write
    if score:
        led.feedback("third-0", 1.0)
    ok = led.close(timeout=0.2)  # gives up on the writer (flush, join, join 1 s: ~1.4 s)
    led._thread.join(10)  # the write lands after all, and the writer leaves
    assert not led._thread.is_alive()
    return led, sink, ok


def test_a_sink_close_gave_up_on_is_closed_once_the_write_lands() -> None:
    """Defect (47538e0): close() no longer closes a sink whose write is still running
    ("else the writer closes it as it leaves"), but the writer closes it only on its
    `_abandon` path at the top of its loop. When the running write succeeds and nothing is
    left queued, the writer leaves by the loop's last line (`if self._closing and not
    (...): return`) and the sink is never closed: its SQLite connection, JSONL fd or
    PostgreSQL connection leaks. Fix: close the sink in a `finally` of `_run` when
    `_abandon` is set (or whenever close() skipped it)."""
    led, sink, ok = _close_under_a_slow_write(score=False)
    assert not ok and sink.written == 3 and led.dropped == 0  # (the records: reconciled)
    assert sink.closes == [False], f"sink close() calls (True: under a write): {sink.closes}"


def test_a_score_counted_lost_at_close_but_written_after_all_is_not_counted_dropped() -> None:
    """Defect (47538e0): records close() counted lost that a running write lands after all
    are taken back out of `dropped` (`_acked`, `_lost`); scores are not: close() adds the
    unwritten ones to `dropped_scores`, the writer then writes them (`_fb_written` grows),
    and `dropped_scores` still counts them lost (a metric or an alert on it says scores
    were lost that are in the ledger). Fix: the same reconciliation for scores in the
    writer's feedback branch."""
    led, sink, ok = _close_under_a_slow_write(score=True)
    assert not ok
    assert sink.scored == 1 and led._fb_written == 1
    assert led.dropped_scores == 0, (
        f"dropped_scores={led.dropped_scores} though the score was written"
    )
