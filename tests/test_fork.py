"""A process forked while Router() is still building the exact counters' tokenizers (on a
thread, the first second or so) must count in the child: the fork waits for the build
(os.register_at_fork), where the child used to inherit a build no thread of its own ever
finished, and every exact count in it waited forever. Found by review."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from satisfice import Router, _core
    Router()  # starts the tokenizer build on a thread
    time.sleep(0.1)  # well inside the build (about a second)
    if sys.argv[1] == "built":  # control: both tokenizers built before the fork
        _core.count_tokens("x", "o200k_base"); _core.count_tokens("x", "cl100k_base")
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)  # SIGALRM ends the child if a count never returns
        ok = _core.count_tokens("hello world", "o200k_base") == 2
        ok = ok and _core.count_tokens("hello world", "cl100k_base") == 2
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def _run(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120
    )


def test_a_child_forked_during_the_build_counts() -> None:
    r = _run("building")
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])


def test_a_child_forked_after_the_build_counts() -> None:
    r = _run("built")
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
