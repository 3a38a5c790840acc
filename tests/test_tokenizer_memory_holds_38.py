"""Waiting for the exact counters' tokenizers costs the waiting thread no memory.

`_core.wait_for_tokenizers()` (the server's readiness wait, on an executor thread, and
every fork's) had finished the build's first encode itself when the build thread had not
yet made it; the tokenizers give the thread that encodes its own caches (a copy of a table
of every short vocabulary word, 48 MiB for the two), so an executor thread that only
waited held them for good: RssAnon 265 MiB against 201 for a process that did not wait.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import os, sys, time
    from concurrent.futures import ThreadPoolExecutor
    from satisfice import Router, _core

    def rss_anon_mib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024

    def builder_alive():
        for t in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{t}/comm") as f:
                if f.read().startswith("satisfice-token"):
                    return True
        return False

    Router()  # starts the build on a thread of its own
    pool = ThreadPoolExecutor(1)  # kept, as asyncio's default executor keeps its threads
    time.sleep(0.2)  # the build under way, as when a server's startup reaches its wait
    if sys.argv[1] == "wait":
        pool.submit(_core.wait_for_tokenizers).result(timeout=60)
    else:  # control: the same idle thread, no wait
        pool.submit(int).result()
    deadline = time.monotonic() + 60
    while (not _core.tokenizers_ready() or builder_alive()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _core.tokenizers_ready() and not builder_alive()
    print(rss_anon_mib())
    """
)


def _rss_anon(mode: str) -> float:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return float(r.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_thread_that_waits_for_the_tokenizers_holds_no_caches_of_theirs() -> None:
    waited, control = _rss_anon("wait"), _rss_anon("control")
    # the caches a first encode gives its thread are 48 MiB; the rest is run-to-run noise
    assert waited - control < 24, (waited, control)
