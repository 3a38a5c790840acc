"""The types every validator shares: an answer, a verdict, the context of a check."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from numbers import Real
from typing import Any, Protocol, TypeAlias, cast

from ._bill import CHECK_BILL
from ._real import as_count, as_real

__all__ = [
    "PASS", "Answer", "Context", "Messages", "Validator", "Verdict", "accept", "bill_mark",
    "check_name", "checked", "claim", "content_text", "flag", "made_call", "resolve",
    "routed_call",
]  # fmt: skip

Messages: TypeAlias = Sequence[Mapping[str, Any]]


def content_text(content: object) -> str:
    """A message's text, whichever shape its content came in: a string, or a list of parts
    whose text parts are joined by newlines (Anthropic's content blocks, OpenAI's text
    parts); "" when it holds none."""
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        return "\n".join(
            t for p in content if isinstance(p, Mapping) and isinstance(t := p.get("text"), str)
        )
    return ""


def flag(value: object, what: str) -> bool:
    """A check's on/off switch, which must be a bool: a saved check's `"forbid": "false"` is
    a true string, and had switched the rule on, the opposite of what its file says."""
    if not isinstance(value, bool):
        from .errors import ConfigError

        raise ConfigError(f"{what} must be true or false, got {value!r:.40}")
    return value


@dataclass(frozen=True, slots=True)
class Answer:
    """One model's answer with what it cost; what a cascade's `call` returns.

    `cost_usd` None means unknown (unpriced), never free; `cost_estimated` when it is not
    from the upstream's own usage figures (a call cut off, or answered without usage).
    `logprobs` are the completion's per-token log-probabilities when the provider returned
    them.
    """

    model: str
    text: str
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    logprobs: tuple[float, ...] | None = None
    finish_reason: str | None = None
    cost_estimated: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """Pass or fail, how sure (P(acceptable) in [0, 1]) and why. `calls` are the model calls
    the validator itself made (a judge), so the cascade can bill them to the step."""

    passed: bool
    confidence: float
    reason: str
    calls: tuple[Answer, ...] = ()


@dataclass(frozen=True, slots=True)
class Context:
    """What a validator may look at besides the answer: the request, the other answers
    (same step and earlier steps) that agreement checks compare against, and the router's
    predicted P(good) per model for this prompt."""

    messages: Messages = ()
    peers: Sequence[Answer] = ()
    p_good: Mapping[str, float] | None = None  # the router's prediction per model


class Validator(Protocol):
    @property
    def name(self) -> str: ...

    def __call__(self, answer: Answer, ctx: Context) -> Verdict | Awaitable[Verdict]: ...


async def resolve(result: Verdict | Awaitable[Verdict]) -> Verdict:
    """A verdict from a validator's return value, awaiting it if it is awaitable."""
    if isinstance(result, Verdict):
        return result
    return await result


# The model calls the check now running has made, as it makes them: `checked` bills them
# however the check ends, where a judge's bill rode only on a verdict that a later part of
# all_of (raising, or past the deadline) never let anyone see.
class _Bill(list[Answer]):
    """The calls a check has made. `recorded`: the bill reaches a request's record (a
    router request's check, whose attempts list the calls). Closed when the check ends: a
    task it spawned that calls later is a request of its own. `routed`: the entries a
    router's chat() or stream() made of itself (`routed_call`), by index: (the task that
    made it, whether it answered, claimed by a report yet)."""

    __slots__ = ("holding", "open", "recorded", "room", "routed")

    def __init__(self, recorded: bool, room: Callable[[], float | None] | None = None) -> None:
        super().__init__()
        self.open, self.recorded = True, recorded
        # what the request's cost cap (or a server budget's hold) has left (`Run.room`), for
        # the check's own router calls (`room_for`); None: the request has no cap
        self.room = room
        self.routed: dict[int, list[Any]] = {}
        # the request's room its router calls in flight hold (`room_for`), each until its
        # caller releases it (`RoomHold`)
        self.holding: dict[RoomHold, float] = {}


_CALLS = cast("ContextVar[_Bill | None]", CHECK_BILL)


def _task() -> object:
    import asyncio

    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


class RoomHold:
    """What one router call a check makes holds of the request's room while it runs
    (`room_for`), until its caller `release`s it, whatever task that is (a stream left
    mid-way is closed by the loop's finaliser, in a task of its own)."""

    __slots__ = ("bill",)

    def __init__(self) -> None:
        self.bill: _Bill | None = None

    def release(self) -> None:
        if self.bill is not None:
            self.bill.holding.pop(self, None)
            self.bill = None


#: The room a routed judge holds while its call runs (`cascade.routed_judge`).
_JUDGING: ContextVar[RoomHold | None] = ContextVar("satisfice_judging", default=None)


def room_for(cap: float | None, hold: RoomHold | None = None) -> float | None:
    """The cost cap of a router call a check makes now (a judge's), given the cap it asked
    for (None: none): within what the request's cap or budget hold leaves (`_Bill.room`),
    less what the check's calls were billed and what its calls in flight hold (the check's
    calls are the request's only when it ends: two judges had each been given the same
    room, and spent 1.6x the cap). `hold`: the call holds what it is given until it is
    released (routing alone, `decide()`, holds nothing). None: no room bounds it (no
    capped request's check is running: a task a check spawned and outlived it is a
    request of its own). NoRouteError when nothing is left."""
    bill = _CALLS.get()
    if bill is None or bill.room is None or not bill.open:
        return cap
    judging = _JUDGING.get()
    if hold is not None and judging is not None and judging.bill is bill:
        # a routed judge's own call through a router: it takes over the room the judge's
        # routing held (held twice, the call had found none and been refused)
        judging.release()
    billed = [a.cost_usd for a in bill]
    spent = math.inf if None in billed else sum(c for c in billed if c is not None)
    left: float = (bill.room() or 0.0) - spent - sum(bill.holding.values())
    if left <= 0:
        from .errors import NoRouteError

        raise NoRouteError(
            "this check's call has no room: the request's cost cap (or budget hold) is spent, "
            "or held by its calls and the check's calls so far"
        )
    given = left if cap is None else min(cap, left)
    if hold is not None:
        hold.release()
        hold.bill = bill
        bill.holding[hold] = given
    return given


def made_call(answer: Answer) -> bool:
    """Put a model call a check made (a judge's) on the bill of the check now running, the
    moment it answered. It still belongs on the check's `Verdict.calls` too: `checked`
    counts a call reported both ways once. True: the bill reaches a request's record."""
    calls = _CALLS.get()
    if calls is None or not calls.open or not isinstance(answer, Answer):
        return False
    calls.append(answer)
    return calls.recorded


def routed_call(answer: Answer | None, answered: bool) -> bool:
    """A router's chat() or stream() made inside a check puts itself on the bill (None:
    nothing of it was billed). True: the bill reaches a request's record, where the call
    then is, so it is no request of its own there (it had been counted twice)."""
    calls = _CALLS.get()
    if calls is None or not calls.open:
        return False
    if answer is not None:
        calls.routed[len(calls)] = [_task(), answered, False]
        calls.append(answer)
    return calls.recorded


def bill_mark() -> int | None:
    """How many calls the running check's bill holds (None outside a check)."""
    calls = _CALLS.get()
    return None if calls is None or not calls.open else len(calls)


def claim(mark: int | None) -> bool:
    """Whether this task's router calls since `mark` (`bill_mark()`) include one that
    answered: a judge's reply is then what they answered, billed already at the router's
    figures, and needs no billing of its own (whatever text or sum it reports). A router
    call that failed (a direct call may then have answered) or another task's (a judge
    beside it) is not its reply. They are claimed: no report is merged with them again."""
    calls = _CALLS.get()
    if mark is None or calls is None or not calls.open:
        return False
    me = _task()
    mine = [e for i, e in calls.routed.items() if i >= mark and e[0] is me and not e[2]]
    if not any(e[1] for e in mine):
        return False
    for e in mine:
        e[2] = True
    return True


def _merge(made: _Bill, reported: Sequence[Answer]) -> tuple[list[Answer], list[Answer]]:
    """The check's calls once each: (the reported, with a router's own entry in place of
    its report of it, the bill's entries no report named). A report is an entry by identity,
    else the first unclaimed router call of this task to the same model that answered (a
    check that routes a call and reports it, in whatever words)."""
    left = list(range(len(made)))
    me = _task()
    out = []
    for r in reported:
        i = next((i for i in left if made[i] is r), None)
        if i is None:
            i = next(
                (
                    i
                    for i in left
                    if (e := made.routed.get(i)) is not None
                    and e[0] is me
                    and e[1]
                    and not e[2]
                    and made[i].model == r.model
                ),
                None,
            )
        if i is None:
            out.append(r)
        else:
            left.remove(i)
            out.append(made[i])
    return out, [made[i] for i in left]


def check_name(check: object) -> str:
    """A check's name: its `name`, else a plain function's `__name__` (a `name` that
    raises, one of a caller's own classes, says so rather than failing the request)."""
    try:
        return str(getattr(check, "name", None) or getattr(check, "__name__", "check"))
    except Exception as e:
        return f"{type(check).__name__} (its name raised {type(e).__name__})"


#: Answers longer than this are checked off the event loop by the built-in checks, which
#: mark themselves `runs_off_loop` (they read only the answer and the context); a user's
#: check runs where it was written to, on the loop.
OFF_LOOP_CHARS = 1 << 16
_CHECKS: Any = None  # their own threads (see _off_loop)


async def _off_loop(check: Validator, answer: Answer, ctx: Context) -> object:
    """`check(answer, ctx)` on the checks' own threads, not asyncio's default pool: a check
    cut off by its deadline runs on to its end on its thread, and six such had held every
    worker of the default pool, which routes large prompts and resolves hostnames."""
    global _CHECKS
    import asyncio
    import contextvars

    if _CHECKS is None:
        from concurrent.futures import ThreadPoolExecutor

        # eight: every regex() check runs here, and one that backtracks holds its thread for
        # up to REGEX_TIMEOUT_S; four such had made a quick check behind them miss its deadline
        _CHECKS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="satisfice-check")
    call = contextvars.copy_context().run
    return await asyncio.get_running_loop().run_in_executor(_CHECKS, call, check, answer, ctx)


async def checked(
    check: Validator,
    answer: Answer,
    ctx: Context,
    time_left_s: float | None = None,
    on_cut: Callable[[Verdict], None] | None = None,
    recorded: bool = False,
    room: Callable[[], float | None] | None = None,
) -> Verdict:
    """What a check says of `answer`, whatever the check does: one that raises, returns
    something other than a Verdict or a bool, or runs past the request's deadline
    (`time_left_s`) fails the answer with that reason instead of escaping as a raw
    exception (which lost the request's attempts and record) or holding it forever.
    Its `calls` are every model call the check made (`made_call`), however it ended: when
    the check is cancelled (a latency budget, the caller gone), they are handed to
    `on_cut` as a failing verdict before the cancellation goes on, to be billed.
    `recorded`: the caller keeps a record of the check's calls (a router request), so a
    router call made in the check writes none of its own. `room`: what the request's cost
    cap has left (`Run.room`), which the check's own router calls stay within."""
    import asyncio
    import inspect

    name = check_name(check)
    made = _Bill(recorded, room)
    token = _CALLS.set(made)
    try:
        async with asyncio.timeout(None if time_left_s is None else max(time_left_s, 0.0)):
            if getattr(check, "runs_off_loop", False) and (
                len(answer.text) > OFF_LOOP_CHARS or getattr(check, "may_backtrack", False)
            ):
                # A built-in check of a long answer runs on a worker thread: on the loop it
                # could be cut by neither the deadline nor a latency budget, and held every
                # other request meanwhile (5 MB of "1+1=2 " took arithmetic() 3 s). One cut
                # off runs on to its end on the thread (it reads only its arguments).
                out: object = await _off_loop(check, answer, ctx)
            else:
                out = check(answer, ctx)
            if not isinstance(out, Verdict) and inspect.isawaitable(out):
                out = await out
    except TimeoutError:
        out = Verdict(False, 0.0, f"the check {name!r} did not finish within the deadline")
    except Exception as e:
        out = Verdict(False, 0.0, f"the check {name!r} raised {type(e).__name__}: {e}"[:300])
    except asyncio.CancelledError as e:
        task = asyncio.current_task()
        if task is not None and not task.cancelling():
            # the check's own (a task inside it cancelled, re-raised): not the caller's,
            # whose request it had ended with a raw CancelledError
            out = Verdict(False, 0.0, f"the check {name!r} raised CancelledError: {e}"[:300])
        else:  # cancelled: no verdict, but its calls were made
            if made and on_cut is not None:
                on_cut(Verdict(False, 0.0, f"the check {name!r} was cut off", _bill_of(made)))
            raise
    except BaseException:  # interrupted: no verdict, but its calls were made
        if made and on_cut is not None:
            on_cut(Verdict(False, 0.0, f"the check {name!r} was cut off", _bill_of(made)))
        raise
    finally:
        made.open = False
        _CALLS.reset(token)
    if isinstance(out, Verdict):
        v = _well_formed(out, name)
    elif isinstance(out, bool):
        v = Verdict(out, 1.0 if out else 0.0, f"{name}: {'pass' if out else 'fail'}")
    else:
        v = Verdict(False, 0.0, f"the check {name!r} returned a {type(out).__name__}, not a "
                                "Verdict or a bool")  # fmt: skip
    calls, left = _merge(made, v.calls)  # each call once
    sane = tuple(_billable(a) for a in (*calls, *left))
    if len(sane) == len(v.calls) and all(a is b for a, b in zip(sane, v.calls, strict=True)):
        return v
    return replace(v, calls=sane)


def _billable(a: Answer) -> Answer:
    """A check's call as a bill reads it: a cost that is no number of dollars (negative,
    NaN, infinite, not a number) is unknown, as are token counts and a latency that are no
    counts; a judge's -$5 had given the request's cost cap $5 more room, a NaN had lifted it."""
    cost, ms = _at_least_0(as_real(a.cost_usd)), _at_least_0(as_real(a.latency_ms))
    t_in, t_out = _at_least_0(as_count(a.tokens_in)), _at_least_0(as_count(a.tokens_out))
    if (cost, t_in, t_out, ms) == (a.cost_usd, a.tokens_in, a.tokens_out, a.latency_ms):
        return a
    # (an unknown cost is an estimate's absence, not a figure the upstream gave)
    return replace(a, cost_usd=cost, tokens_in=t_in, tokens_out=t_out, latency_ms=ms)


def _bill_of(made: Sequence[Answer]) -> tuple[Answer, ...]:
    return tuple(_billable(a) for a in made)


def _at_least_0(x: float | None) -> Any:
    return x if x is not None and x >= 0 else None


def _well_formed(v: Verdict, name: str) -> Verdict:
    """`v` if its fields are what a cascade reads (a bool, a confidence in [0, 1], Answers
    as calls), else a failing verdict saying what was wrong: a `Verdict(True, "high", ...)`
    had escaped as a raw TypeError from the cascade's comparisons."""
    c = v.confidence
    if not isinstance(v.passed, bool):
        why = f"passed={v.passed!r:.40} (not a bool)"
    elif isinstance(c, bool) or not isinstance(c, Real) or not 0.0 <= c <= 1.0:
        why = f"confidence={c!r:.40} (not a number in [0, 1])"
    elif not isinstance(v.calls, tuple | list) or not all(isinstance(a, Answer) for a in v.calls):
        why = "calls that are not a sequence of Answers"
    elif type(c) is not float:  # a numpy float or an int: a plain float for the record
        return Verdict(v.passed, float(c), v.reason, tuple(v.calls))
    else:
        return v
    # its calls, when they are Answers, were still made and are billed
    calls = (
        tuple(a for a in v.calls if isinstance(a, Answer))
        if isinstance(v.calls, tuple | list)
        else ()
    )
    return Verdict(False, 0.0, f"the check {name!r} returned a Verdict with {why}", calls)


PASS = Verdict(True, 1.0, "ok")


class _Accept:
    name = "accept"

    def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        return PASS


accept: Validator = _Accept()
"""Passes every answer: a ladder's last step usually takes what the top model says."""
