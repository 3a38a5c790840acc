"""chat_sync(), close() and aclose() under threads, forks and requests in flight (round 12
of adversarial testing): each test failed on the code before its fix."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from satisfice import Policy, Router
from satisfice.errors import RouterClosedError
from satisfice.ledger import read_records
from satisfice.testing import LocalUpstream, reply, status

from .chat_support import registry, router, wire
from .polling import until

ROOT = str(Path(__file__).resolve().parent.parent)

# A process that used chat_sync() forks (os.fork, gunicorn --preload, multiprocessing): run in
# a fresh interpreter, so the test process (with its threads) never forks.
FORK = """
import asyncio, os, sys, threading
sys.path.insert(0, sys.argv[1])
from satisfice.testing import LocalUpstream
from tests.chat_support import router

def child(r):
    {child}

with LocalUpstream() as up:
    r = router(up.url)
    r.chat_sync("parent")  # one kept-alive connection in the pool
    pid = os.fork()
    if pid == 0:
        os._exit(child(r))
    _, st = os.waitpid(pid, 0)
    again = r.chat_sync("parent again")
    print("child", os.waitstatus_to_exitcode(st), "parent", again.model, len(again.attempts))
    r.close()
"""


def _fork(child: str) -> str:
    code = FORK.format(child=child)
    out = subprocess.run(
        [sys.executable, "-c", code, ROOT], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_chat_sync_answers_in_a_forked_child() -> None:
    # the child's chat_sync() waited forever on its parent's loop thread
    child = """out = []
    t = threading.Thread(target=lambda: out.append(r.chat_sync("child").model), daemon=True)
    t.start()
    t.join(10)
    return 0 if out == ["alpha"] else 1"""
    assert _fork(child) == "child 0 parent alpha 1"


def test_a_child_using_the_router_leaves_the_parents_pool_working() -> None:
    # the child closed the inherited connection through the parent's loop object, taking it
    # out of the epoll instance both share: the parent's next request on it timed out (2 s)
    # and went to beta
    child = """res = asyncio.run(asyncio.wait_for(r.chat("child"), 5))
    return 0 if res.model == "alpha" else 1"""
    assert _fork(child) == "child 0 parent alpha 1"


def _loop_threads() -> int:
    return sum(t.name == "satisfice-sync" and t.is_alive() for t in threading.enumerate())


def test_chat_sync_from_many_threads_on_a_fresh_router(up: LocalUpstream) -> None:
    # each racing thread started a loop thread (close() stopped one), and some calls failed
    # with configure()'s "must be called before the first chat()" or another loop's future
    r = Router(registry(up.url), Policy(quality_floor=0.5))  # not configured yet
    before = _loop_threads()
    barrier = threading.Barrier(12)
    models: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        barrier.wait()
        try:
            models.append(r.chat_sync("hi").model)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and models == ["alpha"] * 12
    assert _loop_threads() - before == 1
    r.close()
    assert _loop_threads() == before


def _in_flight(r: Router, out: list[Any], up: LocalUpstream) -> threading.Thread:
    seen = len(up.requests)

    def call() -> None:
        try:
            out.append(r.chat_sync("in flight").text)
        except Exception as e:
            out.append(e)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    # the request is on the wire once the upstream has seen it (polled, not a fixed sleep
    # a stalled CI machine can outlast)
    assert until(lambda: len(up.requests) > seen), "the upstream never saw the request"
    return t


def test_close_lets_a_chat_sync_in_flight_answer(up: LocalUpstream) -> None:
    # close() stopped the loop under the request: its chat_sync() waited forever
    r = router(up.url)
    r.chat_sync("warm")
    up.script(wire("alpha"), reply("late", latency=0.5))
    out: list[Any] = []
    t = _in_flight(r, out, up)
    r.close()
    t.join(5)
    assert out == ["late"]
    with pytest.raises(RouterClosedError):
        r.chat_sync("after close")


def test_close_cancels_a_chat_sync_past_its_grace_period(up: LocalUpstream) -> None:
    before = _loop_threads()
    r = router(up.url)
    r.chat_sync("warm")
    up.script(wire("alpha"), reply("too late", latency=1.5))
    out: list[Any] = []
    t = _in_flight(r, out, up)
    started = time.monotonic()
    r.close(grace_s=0.2)
    t.join(5)
    assert time.monotonic() - started < 1.0
    assert len(out) == 1 and isinstance(out[0], RouterClosedError)
    assert _loop_threads() == before


async def test_aclose_waits_for_requests_in_flight(up: LocalUpstream, tmp_path: Path) -> None:
    # aclose() closed the client and the ledger at once: the answered calls lost their
    # records, and the ones retrying after a 503 raised the client's raw RuntimeError
    path = tmp_path / "ledger.db"
    r = router(up.url).attach(ledger=path)
    up.script(wire("alpha"), *[status(503, latency=0.2)] * 5, *[reply(latency=0.3)] * 5)
    tasks = [asyncio.create_task(r.chat(f"q{i}", allow=["alpha"])) for i in range(10)]
    await asyncio.sleep(0.1)  # all ten are on the wire
    await r.aclose()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [getattr(res, "model", res) for res in results] == ["alpha"] * 10
    assert len(list(read_records(path))) == 10
    with pytest.raises(RouterClosedError):
        await r.chat("after aclose")


async def test_a_raw_exception_inside_chat_is_recorded(tmp_path: Path) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a defect")

    path = tmp_path / "ledger.db"
    http = httpx.AsyncClient(transport=httpx.MockTransport(broken))
    r = Router(registry("http://127.0.0.1:9"), Policy(quality_floor=0.5))
    async with http, r.configure(http=http).attach(ledger=path):
        with pytest.raises(RuntimeError, match="a defect"):
            await r.chat("hi")
    (rec,) = read_records(path)
    assert rec["error_type"] == "RuntimeError"


def test_a_forked_childs_close_does_not_wait_for_its_parents_requests() -> None:
    # the child inherited the parent's set of requests in flight, one of which (a thread's
    # chat_sync) it would never see end: its close() waited out the whole 30 s grace
    code = """
import os, sys, threading, time
sys.path.insert(0, sys.argv[1])
from satisfice.testing import LocalUpstream, reply
from tests.chat_support import router, wire

with LocalUpstream() as up:
    r = router(up.url, read_timeout_s=30.0, attempt_timeout_s=30.0)
    r.chat_sync("warm")
    up.script(wire("alpha"), reply("slow", latency=4.0))
    t = threading.Thread(target=lambda: r.chat_sync("in flight"), daemon=True)
    t.start()
    time.sleep(0.3)  # the parent's request is on the wire
    pid = os.fork()
    if pid == 0:
        r.chat_sync("child")  # its own loop thread, whose close() waits for requests
        t0 = time.monotonic()
        r.close()
        os._exit(0 if time.monotonic() - t0 < 2.0 else 1)
    _, st = os.waitpid(pid, 0)
    t.join(10)
    r.close()
    print("child", os.waitstatus_to_exitcode(st))
"""
    out = subprocess.run(
        [sys.executable, "-c", code, ROOT], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "child 0"


async def test_a_closed_router_opens_nothing_again(up: LocalUpstream) -> None:
    # enable(), disable() and `async with` after aclose() had quietly built a new executor
    # and HTTP client, which nothing would close
    r = router(up.url)
    async with r:
        await r.chat("hi")
    for call in (lambda: r.enable("alpha"), lambda: r.disable("alpha")):
        with pytest.raises(RouterClosedError):
            call()
    with pytest.raises(RouterClosedError):
        async with r:
            pass
    assert r._io is None


async def test_a_call_its_caller_cut_off_is_on_the_record_at_an_estimate(
    up: LocalUpstream, tmp_path: Path
) -> None:
    """A chat() cancelled (a timeout, a server's client gone) while its call was at the
    upstream, and a stream left before its first piece, were recorded with no attempt and
    no cost, though the upstream had the call: now a "cancelled" attempt at the prompt's
    estimated cost, and the record says the cost is estimated."""
    from satisfice.testing import hang

    db = tmp_path / "l.jsonl"
    up.script(wire("alpha"), hang(), hang())
    async with router(up.url).attach(ledger=db) as r:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.chat("hi"), 0.3)

        async def first_piece() -> None:
            async with r.stream("hi") as s:
                async for _ in s:
                    break

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(first_piece(), 0.3)
        assert r.ledger is not None and r.ledger.flush()
    recs = list(read_records(db))
    assert len(recs) == 2
    for rec in recs:
        (a,) = rec["attempts"]
        assert (a["model"], a["outcome"]) == ("alpha", "cancelled") and a["cost_usd"] > 0
        assert rec["total_cost_usd"] == a["cost_usd"] and rec["cost_estimated"]
    from satisfice.report import rows, summarize

    summary = summarize(rows(db))  # counted by the report too (it said 0 estimated)
    assert summary["estimated_cost_requests"] == 2


def test_a_fork_while_another_thread_holds_the_routers_locks_leaves_the_child_working() -> None:
    # a lock held by another thread at the fork stayed held in the child for good: its first
    # chat_sync() (which builds the loop thread under the setup lock, and whose new loop
    # asks the transport for a pool of its own under the transport's lock) and update() hung
    code = """
import os, sys, threading
sys.path.insert(0, sys.argv[1])
from satisfice.testing import LocalUpstream
from tests.chat_support import router

with LocalUpstream() as up:
    r = router(up.url)
    r.chat_sync("parent")  # its transport's pool, on the parent's loop: the child's is another
    held, release = threading.Event(), threading.Event()

    def hold():
        import satisfice.decision as d

        pools = r._io.client.pool._others_lock  # (the transport's: its other loops' pools)
        with r._setup, r._swap, r._feedback._lock, d._ID_LOCK, pools:
            held.set()
            release.wait()

    threading.Thread(target=hold, daemon=True).start()
    held.wait()
    pid = os.fork()
    if pid == 0:
        out = []

        def child():
            r.update(r.registry)
            assert r.route("child").request_id  # the id lock and the feedback log's
            out.append(r.chat_sync("child").model)

        t = threading.Thread(target=child, daemon=True)
        t.start()
        t.join(10)
        os._exit(0 if out == ["alpha"] else 1)
    release.set()
    _, st = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(st))
    r.close()
"""
    out = subprocess.run(
        [sys.executable, "-c", code, ROOT], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "child 0"


async def test_what_a_record_reads_of_the_decision_is_made_while_the_call_waits(
    tmp_path: Path,
) -> None:
    """The reasons and the request id (which a record and a served answer read) are made at
    the loop's turn after the call goes out, while the upstream works, not after its answer
    on the request's own time; without a record to build, no id is made that nobody asked
    for (each takes a slot of the feedback log)."""
    decisions: list[Any] = []
    seen: dict[str, Any] = {}

    async def upstream(request: httpx.Request) -> httpx.Response:
        d = decisions[0]
        seen["sent"] = (d._reasons, d._request_id)
        await asyncio.sleep(0)  # the upstream works: the loop takes its next turn
        seen["waiting"] = (d._reasons is not None, d._request_id is not None)
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})  # fmt: skip

    http = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
    r = Router(registry("http://127.0.0.1:9"), Policy(quality_floor=0.5))
    r.configure(http=http).attach(ledger=tmp_path / "l.jsonl", on_decision=decisions.append)
    async with http, r:
        res = await r.chat("hi")
    assert seen == {"sent": (None, None), "waiting": (True, True)}
    assert res.request_id == decisions[0].request_id
    assert res.decision.reasons() == decisions[0].reasons()

    decisions.clear()
    http = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
    r = Router(registry("http://127.0.0.1:9"), Policy(quality_floor=0.5))
    async with http, r.configure(http=http).attach(on_decision=decisions.append):
        await r.chat("hi")
    assert seen["waiting"] == (False, False)
    assert r._feedback._next == 0  # no slot taken


def test_a_router_dropped_without_close_ends_its_chat_sync_loop_thread() -> None:
    """A script that makes a Router per task, calls chat_sync() and never closes it had left
    two threads a router (its loop thread and the loop's DNS worker) for the process's
    life: 5 routers, 10 threads. An unclosed router, once garbage-collected, ends them."""
    import gc

    def ours() -> int:
        return sum(t.name == "satisfice-sync" for t in threading.enumerate())

    with LocalUpstream() as up:
        before = ours()
        for _ in range(5):
            r = router(up.url)
            assert r.chat_sync("hi").text
            del r
        gc.collect()
        assert until(lambda: ours() == before), f"{ours() - before} loop threads left running"
