"""A race or hedge bills what reached an upstream, and only that."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

import satisfice.executor as executor_module
from satisfice.testing import LocalUpstream, reply, status

from .chat_support import router

HELLO = [{"role": "user", "content": "say hi"}]


def wire(model: str) -> str:
    return f"{model}-wire"


def _same_turn(first: str) -> Any:
    """An `asyncio` for the executor whose `wait` hands back every call that ends within
    0.5 s at once, `first`'s model's call looked at first: two answers that reach the
    event loop in one turn, as they do on a busy one."""
    real = asyncio.wait

    async def wait(fs: Any, *, timeout: Any = None, return_when: Any = None) -> Any:
        done, pending = await real(fs, timeout=0.5, return_when=asyncio.ALL_COMPLETED)
        if not done:
            return await real(fs, timeout=timeout, return_when=return_when)
        tasks = dict(fs) if isinstance(fs, dict) else {}
        ordered = sorted(done, key=lambda f: tasks.get(f, (None,))[0].model != first)
        return ordered, pending

    shim = types.SimpleNamespace(**{k: getattr(asyncio, k) for k in dir(asyncio) if k[0] != "_"})
    shim.wait = wait
    return shim


def test_a_racer_launched_and_cancelled_before_it_ran_is_not_billed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defect: `_concurrent` launches a replacement racer (a task) when a call fails, and
    when the winner is in the same turn it returns at once: `_cancel` cancels the new
    task before its first step, so it never reached `_bounded` (nothing in `run.calling`,
    no request sent), yet `_cancelled` put it on the record as a call cut off upstream,
    billed its prompt at an estimate (and `run.cut` set: a budget's settlement took the
    bill as unknown), with a slow mark on the deployment's health. Expected: on record at
    $0, 'cancelled before its request was sent', as a call cut off in line is."""
    with LocalUpstream() as up:
        up.script(wire("alpha"), status(500))
        up.script(wire("beta"), reply("hi", latency=0.05))
        r = router(up.url, max_retries=0)
        monkeypatch.setattr(executor_module, "asyncio", _same_turn("alpha"))

        async def go() -> Any:
            async with r:
                return await asyncio.wait_for(r.chat(HELLO, race=2, max_tokens=50), 10)

        res = asyncio.run(go())
        monkeypatch.undo()
        gamma_seen = len(up.seen(wire("gamma")))
    assert res.model == "beta"
    gamma = [a for a in res.attempts if a.model == "gamma"]
    assert gamma, [(a.model, a.outcome) for a in res.attempts]
    assert gamma_seen == 0  # the replacement never left
    billed = [a for a in gamma if a.cost_usd]
    assert not billed, (
        f"a racer never sent is billed: {[(a.outcome, a.cost_usd, a.error) for a in gamma]}"
    )
    assert all(a.cost_usd == 0.0 for a in gamma)
    beta = next(a for a in res.attempts if a.model == "beta")
    assert res.total_cost_usd == pytest.approx(beta.cost_usd)


@pytest.mark.parametrize("mode", [{"race": 2}, {"hedge": True}], ids=["race", "hedge"])
def test_an_answer_cut_off_while_its_accept_check_runs_is_billed_its_usage(
    mode: dict[str, Any], tmp_path: Any
) -> None:
    """Defect: `_concurrent` takes an answered call out of `running` and awaits its
    `accept` check before the answer is on record. A caller gone during that check (a
    timeout, a client that hung up) left it to router.chat()'s `_cut_off`, which put it
    on record as a call cut off upstream: its prompt alone, estimated. The upstream had
    answered and reported 2,900 output tokens ($0.00116); the record said $0.0000008.
    Expected: the answer's own usage and cost on its attempt, in the result's error and
    the ledger alike."""
    from satisfice.ledger import read_records

    async def slow(answer: Any, ctx: Any) -> Any:
        from satisfice import validators as v

        await asyncio.sleep(5)
        return v.Verdict(True, 1.0, "ok")

    with LocalUpstream() as up:
        up.script(wire("alpha"), reply("hi", usage=(10, 2900, 0)))
        up.script(wire("beta"), reply("late", latency=3))
        r = router(up.url)
        path = tmp_path / "ledger.jsonl"
        r.attach(ledger=path)

        async def go() -> None:
            async with r:
                task = asyncio.create_task(r.chat(HELLO, accept=slow, max_tokens=3000, **mode))
                for _ in range(200):  # until alpha's answer is being checked
                    await asyncio.sleep(0.01)
                    if up.seen(wire("alpha")) and (not mode.get("race") or up.seen(wire("beta"))):
                        break
                await asyncio.sleep(0.3)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(task, 10)

        asyncio.run(go())
    (rec,) = read_records(path)
    alpha = [a for a in rec["attempts"] if a["model"] == "alpha"]
    assert len(alpha) == 1, alpha
    usage = alpha[0]["usage"] or {}
    assert usage.get("completion_tokens") == 2900, alpha[0]
    assert alpha[0]["cost_usd"] == pytest.approx((10 * 0.10 + 2900 * 0.40) / 1e6)
    assert rec["total_cost_usd"] >= alpha[0]["cost_usd"]


def test_a_race_whose_answers_every_check_rejected_says_why() -> None:
    """Defect: the AllAttemptsFailedError of a race (or hedge) whose every answer its
    `accept` check rejected listed them as "rejected (None)": `_lines` printed the
    attempt's `error`, which a rejected answer has none of. Expected: the check's reason."""
    from satisfice import validators as v
    from satisfice.errors import AllAttemptsFailedError

    with LocalUpstream() as up:
        up.default = reply("not json")
        r = router(up.url)

        async def go() -> None:
            async with r:
                await asyncio.wait_for(
                    r.chat(HELLO, race=2, accept=v.json_valid(), allow=["alpha", "beta"]), 10
                )

        with pytest.raises(AllAttemptsFailedError) as err:
            asyncio.run(go())
    assert "(None)" not in str(err.value), str(err.value)
    assert str(err.value).count("rejected (its check failed it: ") == 2, str(err.value)
