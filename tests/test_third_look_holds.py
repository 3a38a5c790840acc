"""A third look at the session's latest fixes (a check's room held while in flight, streamed
tool calls, Anthropic's empty turns), as reviewed. Every test here failed on the code it
was written against; each docstring says the defect and what should hold instead."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from satisfice import Policy, Router
from satisfice import validators as v
from satisfice.cascade import Cascade, Step
from satisfice.testing import LocalUpstream, reply

from .chat_support import registry, wire

ASK = [{"role": "user", "content": "What is 2+2?"}]
GRADE = [{"role": "user", "content": "grade: 4"}]


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def _checked_by(up: LocalUpstream, calls: Any, *delta: Any) -> tuple[Any, list[str]]:
    """A request under a $0.05 cap climbing [alpha, checked by a check that runs
    `calls(router)`] -> [gamma]; delta (the check's own calls) answers `delta`: the result,
    and the errors the check's calls raised."""
    errors: list[str] = []
    router = Router(registry(up.url), Policy(quality_floor=0.0))

    async def check(answer: v.Answer, ctx: Any) -> bool:
        try:
            await calls(router)
        except Exception as e:  # said by the assertion
            errors.append(f"{type(e).__name__}: {e}"[:200])
            raise
        return True

    up.script(wire("alpha"), reply("4"))
    up.script(wire("gamma"), reply("4"))
    up.script(wire("delta"), *delta)
    ladder = Cascade([Step(("alpha",), check), Step(("gamma",))])

    async def go() -> Any:
        async with router:
            return await router.chat(ASK, cascade=ladder, max_tokens=100, max_cost_usd=0.05)

    return _run(go()), errors


# 1: room_for -------------------------------------------------------------------------------
def test_a_checks_decide_holds_no_room_its_chat_then_needs(up: LocalUpstream) -> None:
    """Defect: a check under a $0.05 cap calls `router.decide(GRADE, allow=delta)` (a
    routing: it calls nothing), then `router.chat(GRADE, allow=delta, max_tokens=10)`.
    decide() goes through `_prepare`, whose `room_for` holds (hold=True) the whole room for
    the task, and no `routed_call` ever lets it go: the chat finds "no room" (NoRouteError)
    and the check fails, the request escalating to gamma, though ~$0.00005 was spent.
    Expected: a routing alone holds nothing (as routed_judge's): the chat is made and
    alpha's answer accepted."""

    async def calls(router: Router) -> None:
        await router.decide(GRADE, allow=("delta",), max_tokens=10)
        await router.chat(GRADE, allow=("delta",), max_tokens=10)

    r, errors = _checked_by(up, calls, reply("yes"))
    assert not errors and r.model == "alpha", (
        f"decide() then chat() in a check under a $0.05 cap: {errors}; answered by {r.model}"
    )


def test_a_checks_stream_left_mid_way_gives_back_its_hold(up: LocalUpstream) -> None:
    """Defect: a check under a $0.05 cap streams `router.stream(GRADE, allow=delta,
    max_tokens=10)` and leaves the loop at its first piece (`break`, no `async with`),
    then calls `router.chat(...)` the same way. The stream's generator is closed by the
    loop's finalizer in a task of its own, where `routed_call` pops that task's hold, not
    the check's: the check task's hold of the whole room stays, and the chat finds "no
    room" (NoRouteError), the request escalating to gamma.
    Expected: a stream left mid-way lets its hold go (its spend is on the bill): the chat
    is made and alpha's answer accepted."""

    async def calls(router: Router) -> None:
        async for _d in router.stream(GRADE, allow=("delta",), max_tokens=10):
            break
        for _ in range(5):  # the finalizer's aclose() runs
            await asyncio.sleep(0.01)
        await router.chat(GRADE, allow=("delta",), max_tokens=10)

    r, errors = _checked_by(up, calls, reply("yes yes yes"), reply("yes"))
    assert not errors and r.model == "alpha", (
        f"a stream left mid-way, then chat() in a check under a $0.05 cap: {errors}; "
        f"answered by {r.model}"
    )


# 2: streamed tool calls --------------------------------------------------------------------
def test_a_streamed_call_restating_its_id_and_name_in_its_last_piece_stays_one_call() -> None:
    """Defect: an OpenAI-compatible upstream that streams tool calls with no `index` and
    restates the call's id and name on every piece sends one call get_weather as
    '{"city": "Paris"}' then a last piece of '' (same id, same name). The new rule ("a
    name again with the same id after whole arguments starts a new call") splits it: the
    result has two calls, ('call_0', '{"city": "Paris"}') and a phantom
    ('call_<new id>', get_weather, '') the caller would run with no arguments. Before the
    change it was one call. Expected: one tool call, get_weather('{"city": "Paris"}')."""
    from .chat_support import streamed_from_raw

    def piece(args: str) -> dict[str, Any]:
        fn = {"name": "get_weather", "arguments": args}
        return {"tool_calls": [{"id": "call_0", "type": "function", "function": fn}]}

    res = streamed_from_raw([piece('{"city": "Paris"}'), piece("")])
    got = [(c.id, c.name, c.arguments) for c in res.tool_calls]
    assert [(n, a) for _, n, a in got] == [("get_weather", '{"city": "Paris"}')], (
        f"one streamed call came out as: {got}"
    )


# 3: Anthropic's empty turns ----------------------------------------------------------------
def test_a_whitespace_only_assistant_answer_is_not_sent_to_claude() -> None:
    """Defect: `to_anthropic` drops an assistant turn's empty text blocks and empty turns,
    but an answer of whitespace alone ("\\n\\n" beside a tool call, as many OpenAI-wire models
    write one, or "  ") is sent as it is: {"type": "text", "text": "\\n\\n"} before the
    tool_use, and an assistant turn whose content is "  ". Anthropic's API refuses both
    with 400 "messages: text content blocks must contain non-whitespace text", on every
    later turn of the conversation (the case the change was made for).
    Expected: no assistant turn sent holds a text of whitespace alone."""
    from satisfice.providers.anthropic import to_anthropic
    from satisfice.providers.base import ChatRequest

    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "\n\n", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "assistant", "content": "  "},
        {"role": "user", "content": "again"},
    ]
    sent = to_anthropic(ChatRequest(msgs), "claude-x")["messages"]
    blank = []
    for m in sent:
        if m["role"] != "assistant":
            continue
        blocks = m["content"] if isinstance(m["content"], list) else [m["content"]]
        for b in blocks:
            text = b if isinstance(b, str) else (b.get("text") if b.get("type") == "text" else "x")
            if not str(text).strip():
                blank.append(b)
    assert not blank, f"whitespace-only assistant text sent to Claude: {blank!r}; {sent}"


def test_two_routed_judges_at_once_in_a_check_are_not_each_routed_within_the_whole_room() -> None:
    """Defect: a check (running with $0.05 of the request's room left) runs two
    `routed_judge` asks at once (asyncio.gather), each of whose calls costs ~$0.04 and
    answers after both were routed. `routed_judge` now takes its room with hold=False, so
    neither routing holds any of it while its call is in flight: both are routed within
    the whole $0.05 (max_cost_usd 0.05 each), and together the check's calls spend $0.08,
    1.6x the room: the case `room_for` was made for ("two judges had each been given the
    same room, and spent 1.6x the cap"), back for routed judges.
    Expected: judges routed at once share the room: the caps they are routed within sum
    to no more than $0.05 (or the second is refused)."""
    from satisfice._verdict import checked
    from satisfice.cascade import routed_judge

    caps: list[Any] = []

    class FakeRouter:
        def route(self, messages: Any, **kw: Any) -> Any:
            caps.append(kw.get("max_cost_usd"))

            class D:
                model = "delta"

            return D()

    async def go() -> Any:
        both = asyncio.Event()

        async def call(model: str, messages: list[dict[str, Any]]) -> v.Answer:
            if len(caps) >= 2:
                both.set()
            with contextlib.suppress(TimeoutError):  # (the second may be refused instead)
                await asyncio.wait_for(both.wait(), 1)
            return v.Answer(model, "VERDICT: PASS", 10, 3000, 0.04)

        ask = routed_judge(FakeRouter(), call)  # type: ignore[arg-type]

        async def check(answer: v.Answer, ctx: Any) -> bool:
            await asyncio.gather(ask(GRADE), ask(GRADE))
            return True

        return await checked(check, v.Answer("alpha", "4"), v.Context(), recorded=True,
                             room=lambda: 0.05)  # fmt: skip

    _run(go())
    assert caps and sum(c if c is not None else 1.0 for c in caps) <= 0.05 + 1e-9, (
        f"two judges routed at once in a check with $0.05 of room were routed within {caps}"
    )
