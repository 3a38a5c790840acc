"""regex() checks keep re's flags and run off the loop inside all_of/any_of; a quick check
is not failed behind backtracking ones; a ladder its caller left keeps its steps on the
record (a review of the latest commits: each test failed on the code it was written
against, because of the defect it names)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import warnings

from satisfice import validators as V
from satisfice._verdict import checked
from satisfice.validators import Answer, Context, from_spec, to_spec

CTX = Context([{"role": "user", "content": "q"}])


def _a(text: str) -> Answer:
    return Answer(model="m", text=text)


def test_regex_ascii_flag_is_kept() -> None:
    """Promise: `regex(pattern, flags=re.ASCII)` matches as Python's `re` does with that
    flag (the check takes re's flags and compiled re.Patterns; README: 'searched with the
    regex module' as a drop-in). What happens: `_Regex.__init__` hands re's flag integers
    to `regex.compile` unchanged; re.ASCII is 256, which in the `regex` module is VERSION1
    (regex.ASCII is 128), so the ASCII flag is dropped and the pattern is silently
    compiled as V1 (full case folding, nested sets): `^\\w+$` with re.ASCII passes 'café'
    (re: no match), and the saved spec round-trips into the same wrong check.
    Fix: translate re's flags to regex's (re.I->regex.I, re.M, re.S, re.X, re.A->regex.A,
    re.L->regex.L) instead of passing the integer through."""
    for check in (
        V.regex(r"^\w+$", flags=re.ASCII),
        V.regex(re.compile(r"^\w+$", re.ASCII)),
        from_spec(to_spec(V.regex(r"^\w+$", flags=re.ASCII))),
    ):
        assert re.search(r"^\w+$", "café", re.ASCII) is None
        assert not check(_a("café"), CTX).passed


def test_regex_ascii_pattern_valid_in_re_is_accepted() -> None:
    """Promise: a pattern Python's `re` compiles is a valid regex() check (a saved policy
    that worked before still loads). What happens: with re.ASCII (256 = regex.VERSION1)
    the pattern is parsed with V1's set syntax, where `[` opens a nested set: `[[]` (a set
    holding '[', fine in re) raises ConfigError 'unterminated character set'.
    Fix: map re.ASCII to regex.ASCII (and never set VERSION1) when compiling."""
    with warnings.catch_warnings():  # re's FutureWarning 'Possible nested set'
        warnings.simplefilter("ignore", FutureWarning)
        re.compile(r"[[]", re.ASCII)
        check = V.regex(r"[[]", flags=re.ASCII)
    assert check(_a("a [ b"), CTX).passed


def test_regex_inside_all_of_runs_off_the_loop(monkeypatch) -> None:
    """Promise (README, commit 91943b8): 'A regex() check always runs there' (on the
    checks' worker threads), whatever the answer's length, so a backtracking pattern
    cannot hold the event loop. What happens: `_verdict.checked` looks for `may_backtrack`
    on the check it was given; `all_of`, `any_of` and `calibrated` forward `runs_off_loop`
    but not `may_backtrack`, so `all_of(regex(p), json_valid())` on a short answer runs on
    the loop thread and a backtracking pattern holds it for the regex timeout (and more:
    the timeout counts CPU time) per answer.
    Fix: give the combinators a `may_backtrack` property (any part's), as they have
    `runs_off_loop`."""
    threads: list[int] = []
    real = V._Regex.__call__

    def spy(self, answer, ctx):  # type: ignore[no-untyped-def]
        threads.append(threading.get_ident())
        return real(self, answer, ctx)

    monkeypatch.setattr(V._Regex, "__call__", spy)

    async def main() -> list[bool]:
        loop_thread = threading.get_ident()
        out = []
        for check in (
            V.regex(r"\d"),
            V.all_of(V.regex(r"\d"), V.regex(r"x")),
            V.any_of(V.regex(r"\d"), V.regex(r"y")),
        ):
            threads.clear()
            v = await checked(check, _a("x 1 y"), CTX)
            assert v.passed
            out.append(all(t != loop_thread for t in threads) and bool(threads))
        return out

    assert asyncio.run(main()) == [True, True, True]


def test_fast_regex_check_not_failed_behind_backtracking_ones() -> None:
    """Promise: moving regex() off the loop keeps one request's backtracking pattern from
    failing other requests (commit 91943b8: it 'had held ... every request'). What
    happens: every regex() check now queues on the checks' four worker threads
    (`_verdict._off_loop`, max_workers=4), each backtracking search holds one for at least
    REGEX_TIMEOUT_S (CPU seconds, so longer on a loaded machine); a fifth request's
    instant check of a 2-letter answer waits behind them and fails 'did not finish within
    the deadline' (0.3 s left), where before it ran on the loop at once and passed. In a
    ladder that failed check escalates to a dearer step.
    Fix: give regex checks their own (larger) pool, or run short answers' searches on the
    loop with a small timeout and only long/slow ones on threads."""

    async def main() -> bool:
        slow = V.regex(r"(a|aa)+$")
        hog = [asyncio.ensure_future(checked(slow, _a("a" * 40 + "b"), CTX)) for _ in range(4)]
        await asyncio.sleep(0.05)  # the four have their threads
        fast = await checked(V.regex(r"ok"), _a("ok"), CTX, time_left_s=0.3)
        await asyncio.gather(*hog)
        return fast.passed

    assert asyncio.run(main())


async def test_a_ladder_the_caller_left_keeps_its_steps_on_the_record(up, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Promise (cascade.run's `steps=`, commit 2352fdc): 'a list the step records are kept
    in as they are made, for a caller whose request may be cancelled midway (its record
    keeps the steps that ran and their verdicts)'; README: a ladder that raises records
    'its steps, which the report's escalation rates count'. What happens: the executor's
    cancel path only marks the attempts (`marked(...)`, executor.py ~1511); the steps
    list goes nowhere: `ledger.failure_record` puts `cascade` on the record for a
    CascadeBudgetError alone, so a request whose step 0 was rejected (escalated) before the
    caller left has no cascade steps on its record and the report does not count the
    escalation. Fix: carry the CascadeResult(steps) on the cancellation (or on the run)
    and let failure_record write `cascade` for any ladder that ended without an answer."""
    from pathlib import Path

    from satisfice import Policy, Router
    from satisfice.cascade import Cascade, Step
    from satisfice.ledger import read_records
    from satisfice.report import rows, summarize
    from satisfice.testing import reply

    from .chat_support import registry, wire

    path = Path(str(tmp_path)) / "l.jsonl"
    r = Router(registry(up.url), Policy(quality_floor=0.0))
    r.attach(ledger=path)
    up.script(wire("alpha"), reply("no"))
    up.script(wire("gamma"), reply("42", latency=3.0))
    ladder = Cascade([Step(("alpha",), V.regex("42")), Step(("gamma",))])
    async with r:
        task = asyncio.ensure_future(r.chat("Say 42.", cascade=ladder))
        for _ in range(200):  # until gamma's call is on its way (step 0 was rejected)
            await asyncio.sleep(0.02)
            if any(q.model == wire("gamma") for q in up.requests):
                break
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert r.ledger is not None and r.ledger.flush()
    up.wait_idle()
    up.reset_script()
    (rec,) = list(read_records(path))
    alpha = [a for a in rec["attempts"] if a["model"] == "alpha"]
    assert alpha and alpha[0]["outcome"] == "rejected"  # (the part that was fixed)
    steps = (rec.get("cascade") or {}).get("steps") or []
    assert [s["models"] for s in steps][:1] == [["alpha"]], rec.get("cascade")
    esc = summarize(rows(path))["escalation"]
    assert esc.get("0", {}).get("escalated") == 1, esc
