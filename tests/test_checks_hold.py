"""A check (`accept=`, a cascade step's validator) cannot break the request it checks: one
that raises, returns a bool or an odd value, or runs past the deadline fails the answer with
that reason; it does not escape as a raw exception (losing the attempts and the record),
hold the request past its deadline, or crash a cascade cut off mid-check."""

from __future__ import annotations

import asyncio
import time

import pytest

from satisfice import Cascade, Step
from satisfice import validators as v
from satisfice.errors import ConfigError, SatisficeError
from satisfice.testing import LocalUpstream, reply

from .chat_support import router


def boom(text: str) -> bool:
    raise ZeroDivisionError("bad check")


async def forever(text: str) -> bool:
    await asyncio.sleep(60)
    return True


async def test_a_raising_check_fails_its_answer(up: LocalUpstream) -> None:
    up.default = reply("hello")
    async with router(up.url) as r:
        try:
            res = await r.chat("hi", race=2, accept=v.check(boom))
            verdicts = [a.verdict for a in res.attempts if a.verdict]
        except SatisficeError as e:  # every answer failed its check: a satisfice error
            verdicts = [a.verdict for a in e.attempts if a.verdict]  # type: ignore[attr-defined]
        assert verdicts and all("raised ZeroDivisionError" in x["reason"] for x in verdicts)
        ladder = Cascade([Step(("alpha",), v.check(boom)), Step(("beta",))])
        res = await r.chat("hi", cascade=ladder)
        assert res.model == "beta"


async def test_a_check_that_never_returns_ends_at_the_deadline(up: LocalUpstream) -> None:
    up.default = reply("hello")
    async with router(up.url) as r:
        for kw in ({"race": 2}, {"cascade": Cascade([Step(("alpha",), v.check(forever)),
                                                      Step(("beta",))])}):  # fmt: skip
            t0 = time.perf_counter()
            with pytest.raises(Exception) if "race" in kw else _nothing():
                await r.chat("hi", timeout=1.0, accept=v.check(forever) if "race" in kw else None,
                             **kw)  # type: ignore[arg-type]  # fmt: skip
            assert time.perf_counter() - t0 < 2.5


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


async def test_a_cascade_cut_off_mid_check_reports_its_best(up: LocalUpstream) -> None:
    up.default = reply("hello")
    ladder = Cascade([Step(("alpha",), v.check(lambda t: False)), Step(("beta",), v.check(forever)),
                      Step(("gamma",))], latency_budget_ms=500)  # fmt: skip
    async with router(up.url) as r:
        res = await r.chat("hi", cascade=ladder)  # was: ValueError from a strict zip
    assert res.cascade is not None and res.cascade.budget_hit == "latency"


async def test_accept_without_a_choice_is_refused(up: LocalUpstream) -> None:
    async with router(up.url) as r:
        with pytest.raises(ConfigError, match="picks among answers"):
            await r.chat("hi", accept=v.check(lambda t: False))


async def test_a_check_whose_own_task_was_cancelled_or_whose_name_raises_fails_its_answer(
    up: LocalUpstream,
) -> None:
    """A check that re-raised a CancelledError of its own (a task inside it cancelled) ended
    chat() with a raw CancelledError though its caller never cancelled; a check whose `name`
    raised leaked a raw RuntimeError."""

    async def inner_cancelled(text: str) -> bool:
        t = asyncio.ensure_future(asyncio.sleep(10))
        t.cancel()
        return await t  # type: ignore[no-any-return]

    class Nameless:
        @property
        def name(self) -> str:
            raise RuntimeError("no name")

        def __call__(self, answer: v.Answer, ctx: v.Context) -> bool:
            return True

    up.default = reply("hello")
    async with router(up.url) as r:
        for check, why in ((v.check(inner_cancelled), "CancelledError"), (Nameless(), "name")):
            try:
                res = await r.chat("hi", race=2, accept=check)  # type: ignore[arg-type]
                verdicts = [a.verdict for a in res.attempts if a.verdict]
            except SatisficeError as e:
                verdicts = [a.verdict for a in e.attempts if a.verdict]  # type: ignore[attr-defined]
            assert verdicts and all(why in x["reason"] for x in verdicts), verdicts


async def test_prefer_names_a_model_the_registry_has(up: LocalUpstream) -> None:
    from satisfice import Registry, UnknownModelError

    async with router(up.url) as r:
        with pytest.raises(UnknownModelError, match="prefer: unknown model 'nope'"):
            await r.chat("hi", prefer="nope")
        with pytest.raises(ConfigError, match="prefer must be a model id"):
            await r.chat("hi", prefer=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="both 'model' and 'models'"):
        Registry.from_dict({"model": [], "models": []})
