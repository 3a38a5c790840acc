"""Jobs, feedback, the flywheel, probes and replay under hostile input, as reviewed. Every
test here failed on the code it was written against; each docstring says the defect and
what should hold."""

from __future__ import annotations

import time
import tracemalloc

from satisfice.probe import _code


def test_a_code_answer_that_floods_its_output_is_not_kept_in_memory() -> None:
    """Defect: the code probe read everything the answer printed into memory
    (`communicate()`), for up to its 12 s: an answer printing 1 GB before defining `add`
    held 2.9 GB in the probing process for the 9 s it took, and passed. Expected: what the
    child prints is read in bounded memory (only the tail, where the done token is), and
    an answer that floods its output fails at once."""
    answer = (
        "```python\nimport sys\nfor _ in range(32):\n    sys.stdout.write('x' * (1 << 20))\n"
        "def add(a, b):\n    return a + b\n```"
    )
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        ok = _code("assert add(2, 3) == 5")(answer)
        took = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"the probe held {peak >> 20} MB of the answer's output"
    assert ok is False
    assert took < 5, took
