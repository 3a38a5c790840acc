"""One Router as a large async service uses it: shared by several threads' event loops,
reconfigured while requests run, closed, forked. Each test failed on the code before its
fix."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

from satisfice import ModelSpec, Policy, Registry, Router
from satisfice.testing import LocalUpstream

from .chat_support import registry


class _Hooked(Registry):
    """A registry that runs `hook` once, when the executor looks up a model's deployments
    in it (`Executor.targets`): the moment another thread's request may run."""

    hook: Callable[[], None] | None = None

    def __getitem__(self, model_id: str) -> ModelSpec:
        if sys._getframe(1).f_code.co_name == "targets":
            hook, self.hook = self.hook, None
            if hook is not None:
                hook()
        return super().__getitem__(model_id)


def _priced(reg: Registry, k: float) -> Registry:
    alpha = reg["alpha"]
    assert alpha.price is not None
    price = alpha.price.replace(input=alpha.price.input * k, output=alpha.price.output * k)
    return reg.replace(alpha.replace(price=price))


async def test_a_request_on_the_old_registry_leaves_the_new_one_its_own_prices(
    up: LocalUpstream,
) -> None:
    # A refresh swapped the registry while one thread's request, routed on the old one,
    # looked up its model's deployments, and another thread's request on the new one
    # looked up the same model in between: the first stored its deployments, old prices
    # and all, in the new registry's cache, and every later request on the new registry
    # was billed the old price (1.26e-06 for 1.05e-06 seen, 4 loops and a refresh loop)
    base = registry(up.url)
    old, new = _Hooked(list(base), base.meta), _priced(base, 1.5)
    r = Router(old, Policy(quality_floor=0.5))
    io = r._executor()

    def other_thread() -> None:  # a request on another loop, routed on the new registry
        r.update(registry=new)
        io.targets(new, "alpha")

    old.hook = other_thread
    async with r:
        first = await r.chat("hi")
        assert first.decision.snapshot.registry is old
        second = await r.chat("hi")
    assert second.decision.snapshot.registry is new and second.model == "alpha"
    u = second.usage
    assert u is not None
    assert second.total_cost_usd == new["alpha"].cost(u.prompt_tokens, u.completion_tokens)
    assert first.total_cost_usd == old["alpha"].cost(u.prompt_tokens, u.completion_tokens)


def test_a_loop_shut_down_closes_its_connections_while_it_can(up: LocalUpstream) -> None:
    # A script's or a test's `asyncio.run(router.chat(...))`, called again: each run's
    # connection was kept past its loop's end, until the next run's first request closed
    # its socket behind its transport (the loop closed could abort nothing), which warned
    # when collected: 3 ResourceWarnings for 3 runs, a pytest run with -W error failed
    r = Router(registry(up.url), Policy(quality_floor=0.5))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(3):
            assert asyncio.run(r.chat("hi")).text
            assert up.wait_idle(), "the run's connection outlived its loop"
        r.close()
        gc.collect()
    assert [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)] == []


def test_close_closes_the_connections_of_requests_made_on_the_callers_loops(
    up: LocalUpstream,
) -> None:
    # An app's loop on a thread of its own made the requests (no chat_sync()), and the
    # process's shutdown called close(): it closed the ledger alone, the router's client
    # and its connection were left open for good (1 open after close())
    r = Router(registry(up.url), Policy(quality_floor=0.5))
    loop = asyncio.new_event_loop()
    app = threading.Thread(target=loop.run_forever, daemon=True)
    app.start()
    try:
        assert asyncio.run_coroutine_threadsafe(r.chat("hi"), loop).result(10).text
        assert up.open_connections == 1  # kept alive for the app's next request
        r.close()
        assert up.wait_idle(), "close() left the router's connection open"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        app.join(10)
        loop.close()


# Run in a fresh interpreter, so the test process never forks.
_FORK_WITH_A_CALL_IN_FLIGHT = """
import asyncio, os, sys, threading, time
sys.path.insert(0, sys.argv[1])
from satisfice import ModelSpec, Policy, Registry, Router
from satisfice.testing import LocalUpstream, reply
with LocalUpstream() as a, LocalUpstream() as b:
    dep = lambda name, url: {"name": name, "base_url": url + "/v1", "model": "m-wire",
                             "price": {"input": 1.0, "output": 1.0}}
    reg = Registry.from_dict({"model": [{
        "id": "m", "provider": "x", "context_window": 100_000, "max_output": 1000,
        "quality": {"general": 0.9}, "p95_latency_ms": 1000,
        "deployments": [dep("a", a.url), dep("b", b.url)],
    }]})
    r = Router(reg, Policy(quality_floor=0.5))
    a.script("m-wire", reply("slow", latency=2.0))
    t = threading.Thread(target=lambda: asyncio.run(r.chat("in flight at the fork")))
    t.start()
    deadline = time.monotonic() + 20
    while not a.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert a.requests, "the parent's call never reached its upstream"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, asyncio.run(r.chat("the child's first")).deployment.encode())
        os._exit(0)
    os.waitpid(pid, 0)
    t.join()
    print(os.read(read, 64).decode())
"""


def test_a_forked_child_counts_none_of_its_parents_calls_as_its_own() -> None:
    # Two deployments at one price, the parent's call in flight on the first at the fork:
    # the child counted it in flight for good (it never runs nor ends it), so its own
    # balancing took that deployment for busy and sent its first request to the other
    out = subprocess.run(
        [sys.executable, "-c", _FORK_WITH_A_CALL_IN_FLIGHT, str(Path(__file__).parent.parent)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "a"
