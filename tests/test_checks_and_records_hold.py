"""Checks off the loop, saved checks, a ladder that raised and its record, as a second
review found them: each test states a defect found on the code and the behaviour
expected instead."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from satisfice import validators as v
from satisfice._verdict import Answer, Context, checked
from satisfice.cascade import Cascade, Step

# -- checks of long answers, off the loop --------------------------------------------------


async def test_a_callers_extractor_runs_where_it_was_written() -> None:
    """Defect: `extracts(fn)` and `agreement(fn)` carry the caller's own function but are
    marked `runs_off_loop`, so for an answer over 64K characters `checked()` calls that
    function on a worker thread, while the docstring of `OFF_LOOP_CHARS` says "a user's
    check runs where it was written to, on the loop". A function that uses an object bound
    to the loop's thread (here a `sqlite3` connection, made on that thread: "SQLite objects
    created in a thread can only be used in that same thread") passes a short answer and
    fails the same answer once it is long, "raised ProgrammingError": the verdict depends on
    the answer's length. Expected: the same verdict for both (a check carrying a caller's
    callable is not run on a thread)."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE words (w TEXT)")
    db.execute("INSERT INTO words VALUES ('yes')")

    def known_word(text: str) -> str | None:
        last = text.split()[-1]
        row = db.execute("SELECT w FROM words WHERE w = ?", (last,)).fetchone()
        return None if row is None else row[0]

    check = v.extracts(known_word)
    short = await checked(check, Answer("m", "so: yes"), Context([]))
    long = await checked(check, Answer("m", "x " * 40_000 + "so: yes"), Context([]))
    assert short.passed
    assert long.passed, long.reason


async def test_checks_cut_off_do_not_starve_later_checks() -> None:
    """Defect: a built-in check of a long answer cut off by its deadline "runs on to its end
    on the thread" (`_verdict.checked`), and that thread is one of the event loop's default
    executor, `min(32, cpus + 4)` workers (6 on 2 cores), shared by every request (and by
    `asyncio.to_thread`/`getaddrinfo` users). When that many checks have been cut off (each
    `arithmetic()` of ~0.9 MB of `1+1=2 `, ~0.3 s alone, all cut at a 0.05 s deadline), the
    next request's check of a 70 KB JSON answer, which takes a millisecond, waits in the
    executor's queue past its own 1 s deadline and FAILS "did not finish within the
    deadline": a valid answer rejected (a ladder escalates and pays for it) because of other
    requests' abandoned work. Expected: a check that was never run is not failed by work it
    does not own (e.g. checks on their own bounded executor, cut-off work not occupying the
    workers later checks need, or the wait excluded)."""
    import json
    import os

    big = Answer("m", "1+1=2 " * 150_000)
    doc = Answer("m", json.dumps({"rows": ["x" * 100] * 700}))
    workers = min(32, (os.cpu_count() or 1) + 4)
    cut = await asyncio.gather(
        # (cut at once: arithmetic() now reads a bounded part of an answer, ~20 ms here)
        *(checked(v.arithmetic(), big, Context([]), 0.001) for _ in range(workers))
    )
    assert not any(c.passed for c in cut)
    verdict = await checked(v.json_valid(), doc, Context([]), 1.0)
    assert verdict.passed, verdict.reason


# -- saved checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "check",
    [v.json_valid(), v.json_valid({"type": "object", "required": ["total"]}), v.accept],
    ids=["json_valid", "json_valid-schema", "accept"],
)
def test_every_built_in_check_saves_and_loads(check: v.Validator) -> None:
    """Defect: `to_spec`/`from_spec` ("the built-in checks save as JSON", README) know no
    `json_valid` (with or without a schema, which is plain JSON itself) and no `accept`,
    both built-in checks of `satisfice.validators`: `to_spec` raises "validator 'json'
    cannot be saved: only the built-in checks can (a judge or your own callable is code,
    not data)", so `Cascade.to_dict()` (what `Policy.save` stores) fails for a ladder with
    a JSON step or an explicit `accept` last step. Expected: each saves, and loads back as
    the same check."""
    spec = v.to_spec(check)
    again = v.from_spec(spec)
    assert v.to_spec(again) == spec
    ladder = Cascade([Step(("alpha",), check), Step(("gamma",))])
    assert Cascade.from_dict(ladder.to_dict()).to_dict() == ladder.to_dict()
