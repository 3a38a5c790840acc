"""Probes: re-measure each model's ability with small checkable tasks, through the real path.

`satisfice probe` (or `await run_probes(router)`) sends every probe to every configured model
with `chat(allow=(model,))`, so each call goes through the same routing constraints, retries,
health and pricing as traffic. The answer is scored by the probe's check (exact numbers,
JSON fields, a multiple-choice letter, a format rule, or code run against tests in a separate
Python process with a time limit), and the score is fed back with `router.feedback()`, the
same Bayesian update users' feedback makes. Save the result with `router.save_policy()`.

Each probe carries an `example` answer that passes its own check (the tests hold the
project to that), and which a scripted upstream can send back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, NoRouteError, ProviderError, SatisficeError
from .result import billed_cost

if TYPE_CHECKING:
    from .router import Router

__all__ = ["PROBES", "Probe", "ProbeReport", "run_probes"]


@dataclass(frozen=True, slots=True)
class Probe:
    name: str
    task: str
    prompt: str
    check: Callable[[str], bool]
    example: str
    max_tokens: int = 400


def _number(expected: float) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        nums = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
        return bool(nums) and abs(float(nums[-1]) - expected) < 1e-6

    return check


def _json_fields(**want: Any) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        # the first "{" to the last "}", found in one pass each (the regex \{.*\} had
        # backtracked from every "{": 120,000 of them took 9 s, on the event loop)
        i, j = text.find("{"), text.rfind("}")
        try:
            data = json.loads(text[i : j + 1]) if 0 <= i < j else None
        except (ValueError, RecursionError):
            return False
        return isinstance(data, dict) and all(data.get(k) == v for k, v in want.items())

    return check


def _letter(expected: str) -> Callable[[str], bool]:
    from .validators import choice_letter

    return lambda text: choice_letter(text) == expected


def _words(n: int, lower: bool) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        words = text.strip().rstrip(".!").split()
        return len(words) == n and (not lower or text.strip() == text.strip().lower())

    return check


def _code(tests: str) -> Callable[[str], bool]:
    """Run the answer's first Python code block with `tests` appended, in a child Python
    (-I, no environment, its own process group, killed whole after 5 s, with every process
    it started: see `_SUPERVISE`); it passes only when
    the tests ran to the end: then the child reads a random token from a pipe and prints it,
    so code that exits early does not pass. The token is in neither the source nor the
    command line (code that printed what it found there passed without running the tests);
    code written to read the pipe itself still could: this is NOT a sandbox, the code runs
    as this user and could read what this user can. Code probes therefore run only when
    asked (`run_code=True`)."""
    from .validators import extract_code

    def check(text: str) -> bool:
        found = extract_code(text)
        if found is None:
            return False
        token = secrets.token_hex(12).encode()
        r, w = os.pipe()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "answer.py")
            with open(path, "w", encoding="utf-8") as f:
                f.write(f"{found[1]}\n{tests}\nimport os\nprint(os.read({r}, 64).decode())\n")
            try:
                os.write(w, token)
            finally:
                os.close(w)
            # every process the code starts inherits this mark, even one that leaves the
            # process group (os.setsid()): the cleanup finds and kills them by it (one
            # started with an environment of its own does not carry it: not a sandbox)
            mark = f"SATISFICE_PROBE_RUN={secrets.token_hex(8)}"
            try:
                # in the temporary directory, removed with it (it had run in the operator's
                # working directory, beside policy.json and health.json)
                p = subprocess.Popen([sys.executable, "-I", "-c", _SUPERVISE, path, "5"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, env=dict([mark.split("=")]),
                                     start_new_session=True, pass_fds=(r,), cwd=d)  # fmt: skip
            finally:
                os.close(r)
            try:
                # (the supervisor's 5 s, and its cleanup's at most 5 more)
                out = _tail(p, timeout=12)
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)  # and anything it left behind
                _kill_marked(mark.encode())
                p.wait()
                assert p.stdout is not None
                p.stdout.close()  # (a survivor that held the pipe is killed now)
        return out is not None and p.returncode == 0 and token in out

    return check


#: What a code probe's answer may print: its tests print nothing, and the done token is
#: 25 bytes. Past it the answer fails at once (all of it had been kept in memory: 1 GB
#: printed had held 2.9 GB here for the 9 s it took, and passed).
_MAX_OUTPUT = 1 << 20


def _tail(p: subprocess.Popen[bytes], timeout: float) -> bytes | None:
    """The last 4 KB the process printed, once it closed its output and ended within
    `timeout` s; None when it did not, or printed more than `_MAX_OUTPUT` bytes."""
    assert p.stdout is not None
    fd = p.stdout.fileno()
    end = time.monotonic() + timeout
    tail, size = b"", 0
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = end - time.monotonic()
            if left <= 0 or not sel.select(left):
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            size += len(chunk)
            if size > _MAX_OUTPUT:
                return None
            tail = (tail + chunk)[-4096:]
    try:
        p.wait(timeout=max(end - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        return None
    return tail


# The code's parent (Linux): a subreaper (prctl PR_SET_CHILD_SUBREAPER), so every process
# the code starts and leaves, in any session or group, becomes its child once its own parent
# is gone. After the code ends (or its time, argv[2] s, is up) it kills its children and
# reaps them until it has none: a chain of processes that each fork and exit (a new
# session each time) moves past a scan of /proc, and 16 such chains had outlived the check
# by half an hour, but cannot leave the subreaper's children. Exits 0 only if the code did,
# in time, and left no process running. The code gets 1 GiB of address space and may write
# files of 16 MiB at most (an answer had taken what memory and disk it liked for its 5 s;
# the temporary directory is often a tmpfs, in memory too).
_SUPERVISE = """
import ctypes, os, signal, sys, time
try:
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
except (OSError, AttributeError):
    pass  # not Linux: the caller's kill of the group and of the marked is all there is
code = os.fork()
if code == 0:
    try:  # the code's memory and the files it writes are bounded, with its children's
        import resource
        for lim, n in ((resource.RLIMIT_AS, 1 << 30), (resource.RLIMIT_FSIZE, 16 << 20)):
            hard = resource.getrlimit(lim)[1]
            n = n if hard == resource.RLIM_INFINITY else min(n, hard)
            resource.setrlimit(lim, (n, n))
    except (ImportError, ValueError, OSError):
        pass  # (no such limits here: the time limit is all there is)
    os.execv(sys.executable, [sys.executable, "-I", sys.argv[1]])
status, me = None, str(os.getpid()).encode()
end = time.monotonic() + float(sys.argv[2])
while status is None and time.monotonic() < end:
    pid, st = os.waitpid(code, os.WNOHANG)
    if pid:
        status = st
    else:
        time.sleep(0.005)
end, left = time.monotonic() + 5, False
kids = "/proc/%d/task/%d/children" % (os.getpid(), os.getpid())


def children():
    # this process's children now: its children file (one read, current), else a scan
    try:
        with open(kids, "rb") as f:
            return f.read().split()
    except OSError:
        pass
    out = []
    for d in os.listdir("/proc"):
        try:
            with open("/proc/" + d + "/stat", "rb") as f:
                if d.isdigit() and f.read().rsplit(b")", 1)[1].split()[1] == me:
                    out.append(d.encode())
        except (OSError, IndexError):
            pass
    return out


while time.monotonic() < end:
    for k in children():
        try:
            with open(b"/proc/" + k + b"/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue  # (reaped below)
            left = True
            os.kill(int(k), signal.SIGKILL)
        except (OSError, IndexError):
            pass
    try:
        while True:
            pid, st = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid == code and status is None:
                status = st
    except ChildProcessError:
        break
# passed: the code ran to its end in time, and left nothing running behind it
ok = status is not None and os.waitstatus_to_exitcode(status) == 0 and not left
sys.exit(0 if ok else 1)
"""


def _kill_marked(mark: bytes) -> None:
    """SIGKILL every process whose environment holds `mark` (Linux /proc; elsewhere the
    process group's kill is all there is). One scan: a chain of processes that each fork
    and exit faster than /proc is read moves to a new process id before the scan reaches
    it, and can outlive the check (not a sandbox)."""
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                marked = mark in f.read().split(b"\0")
        except OSError:
            continue
        if marked:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


PROBES: tuple[Probe, ...] = (
    Probe("multiply", "math", "What is 17 * 23? Reply with the number only.", _number(391),
          "391"),
    Probe("percent", "math", "A jacket costs $80 and is 15% off. What is the sale price in "
          "dollars? Reply with the number only.", _number(68), "68"),
    Probe("train", "reasoning", "A train leaves at 14:10 and arrives at 16:45. How many "
          "minutes is the trip? Reply with the number only.", _number(155), "155"),
    Probe("ages", "reasoning", "Ann is twice as old as Ben. In 5 years their ages will sum to "
          "40. How old is Ann now? Reply with the number only.", _number(20), "20"),
    Probe("invoice", "extraction", 'Extract JSON {"company": str, "amount": number} from: '
          '"Invoice from Acme GmbH, total due 1250 EUR." Reply with the JSON only.',
          _json_fields(company="Acme GmbH", amount=1250),
          '{"company": "Acme GmbH", "amount": 1250}'),
    Probe("person", "extraction", 'Extract JSON {"name": str, "age": number} from: "Maria '
          'turned 34 last week." Reply with the JSON only.',
          _json_fields(name="Maria", age=34), '{"name": "Maria", "age": 34}'),
    Probe("prime", "general", "Which is a prime number? A) 21 B) 27 C) 29 D) 33. Reply with "
          "the letter only.", _letter("C"), "C"),
    Probe("capital", "general", "Which city is the capital of Australia? A) Sydney "
          "B) Canberra C) Melbourne D) Perth. Reply with the letter only.", _letter("B"), "B"),
    Probe("three-words", "creative", "Describe the sea in exactly three words, all lowercase, "
          "nothing else.", _words(3, lower=True), "vast blue restless"),
    Probe("add", "code", "Write a Python function add(a, b) that returns a + b, in one "
          "```python code block.", _code("assert add(2, 3) == 5\nassert add(-1, 1) == 0"),
          "```python\ndef add(a, b):\n    return a + b\n```"),
    Probe("fib", "code", "Write a Python function fib(n) returning the n-th Fibonacci number "
          "with fib(0) == 0 and fib(1) == 1, in one ```python code block.",
          _code("assert [fib(i) for i in range(8)] == [0, 1, 1, 2, 3, 5, 8, 13]"),
          "```python\ndef fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n"
          "        a, b = b, a + b\n    return a\n```"),
)  # fmt: skip


@dataclass
class ProbeReport:
    """Per model: probes passed, asked and failed to answer, the USD spent, and the mean
    predicted P(good) over the probe prompts before and after the updates."""

    passed: dict[str, int] = field(default_factory=dict)
    asked: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    p_before: dict[str, float] = field(default_factory=dict)
    p_after: dict[str, float] = field(default_factory=dict)
    spent_usd: float = 0.0  # of the calls whose cost is known
    cost_unknown: bool = False  # a call of unknown cost (unpriced) was billed as well
    stopped: str | None = None  # why the run stopped early (budget)
    skipped: dict[str, str] = field(default_factory=dict)  # models not probed, and why
    first_error: str | None = None  # the first failed call's error, as said (a missing key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": {
                m: {
                    "passed": self.passed.get(m, 0),
                    "asked": self.asked.get(m, 0),
                    "errors": self.errors.get(m, 0),
                    "p_good_before": round(self.p_before[m], 4),
                    "p_good_after": round(self.p_after.get(m, self.p_before[m]), 4),
                }
                for m in self.p_before
            },
            "spent_usd": None if self.cost_unknown else round(self.spent_usd, 6),
            "stopped": self.stopped,
            "skipped": dict(self.skipped),
            "first_error": self.first_error,
        }


def _mean_p(router: Router, model: str, probes: Sequence[Probe]) -> float:
    ps = []
    for p in probes:
        d = router.route(p.prompt, allow=(model,), max_output_tokens=p.max_tokens, quality_floor=0)
        ps.append(d.primary.p_good)
    return sum(ps) / len(ps)


def _cause(e: BaseException, said: str) -> str:
    """What failed, attempt by attempt (a missing key's variable, a status), else `said`:
    an error's own words open with what every failure shares, and a progress line cut at
    200 characters had kept that alone."""
    attempts = [a for a in getattr(e, "attempts", None) or () if a.outcome != "ok"]
    if not attempts:
        return said
    return "; ".join(
        f"{a.deployment}: {a.error_type or a.outcome}" + (f": {a.error}" if a.error else "")
        for a in attempts
    )


async def run_probes(
    router: Router,
    models: Sequence[str] | None = None,
    probes: Sequence[Probe] = PROBES,
    *,
    budget_usd: float | None = None,
    progress: Callable[[str], None] | None = None,
    run_code: bool = False,
) -> ProbeReport:
    """Ask every probe of every model (default: every model the registry can call) and
    feed each score back. Stops before the next call once `budget_usd` is spent. A call
    that fails (after its retries) is counted as an error, not as a wrong answer. Code
    probes run the model's code in a child process, not a sandbox: only with run_code=True."""
    if budget_usd is not None and (
        isinstance(budget_usd, bool)
        or not isinstance(budget_usd, int | float)
        or not 0 < budget_usd < 1e9  # NaN too: every probe had then "failed" on its cap
    ):
        raise ConfigError(f"budget_usd must be a number of USD > 0, got {budget_usd!r:.40}")
    if not run_code:
        probes = [p for p in probes if p.task != "code"]
    # a model named twice is probed once: it had been asked (and paid for) twice, and its
    # ability moved twice as far on the same evidence
    ids = list(dict.fromkeys(models)) if models is not None else [
        m.id for m in router.registry if m.deployments and not m.disabled
    ]  # fmt: skip
    report = ProbeReport()
    for m in ids:
        router.registry[m]  # UnknownModelError names the known ids
        report.p_before[m] = _mean_p(router, m, probes)
    for m in ids:
        spec = router.registry[m]
        if budget_usd is not None and not spec.priced:  # (one deployment unpriced is enough)
            # no price, no bound: said and passed over (it had stopped the run, as if the
            # budget were spent, before any priced model was probed)
            report.skipped[m] = "unpriced: a budget cannot bound its calls; probe it without one"
            continue
        for p in probes:
            if report.stopped:
                break
            if budget_usd is not None and report.spent_usd >= budget_usd:
                report.stopped = f"budget ${budget_usd} spent"
                break
            report.asked[m] = report.asked.get(m, 0) + 1
            # what is left of the budget caps the call itself (its max_tokens on the wire),
            # not only whether it starts
            left = None if budget_usd is None else budget_usd - report.spent_usd
            try:
                res = await router.chat(
                    p.prompt, allow=(m,), max_tokens=p.max_tokens, metadata={"probe": p.name},
                    quality_floor=0, max_cost_usd=left,
                )  # fmt: skip
            except (ProviderError, SatisficeError) as e:
                report.errors[m] = report.errors.get(m, 0) + 1
                # what the failed request was billed, by the rule results and records use
                billed = billed_cost(getattr(e, "attempts", None) or ())
                if billed is None:
                    report.cost_unknown = True
                    if budget_usd is not None:
                        report.stopped = (
                            f"{m}: a failed call of unknown cost; the budget cannot be kept"
                        )
                else:
                    report.spent_usd += billed[0]
                if (
                    not report.stopped
                    and budget_usd is not None
                    and isinstance(e, NoRouteError)
                    and "max_cost" in str(e)
                ):
                    report.stopped = (
                        f"the budget left (${left:.6f}) is less than a probe of {m} may cost"
                    )
                why = " ".join(str(e).split())[:400]  # (scrubbed of keys, as every error is)
                report.first_error = report.first_error or f"{m}: {type(e).__name__}: {why}"
                if progress:  # the cause, not the class alone (a missing key had said nothing)
                    progress(f"{m} {p.name}: error {type(e).__name__}: {_cause(e, why)[:200]}")
                if report.stopped:
                    break
                continue
            if res.total_cost_usd is None:
                report.cost_unknown = True
                if budget_usd is not None:
                    report.stopped = (
                        f"{m} is unpriced: a budget cannot be kept; probe it without one"
                    )
            else:
                report.spent_usd += res.total_cost_usd
            # code runs in a child for up to 5 s (and 5 s of cleanup): off the event loop,
            # which it had held still meanwhile (a server's requests with it)
            ok = (
                await asyncio.to_thread(p.check, res.text)
                if p.task == "code"
                else p.check(res.text)
            )
            report.passed[m] = report.passed.get(m, 0) + int(ok)
            router.feedback(res.request_id, 1.0 if ok else 0.0, model=res.model)
            if progress:
                progress(f"{m} {p.name}: {'pass' if ok else 'fail'}")
        if report.stopped:
            break
    for m in ids:
        report.p_after[m] = _mean_p(router, m, probes)
    return report
