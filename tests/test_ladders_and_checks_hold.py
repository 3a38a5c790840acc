"""Cascades, their checks and their record, as reviewed: each test states a defect found on
the code as it was and the behaviour expected instead (each failed before any fix)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import tracemalloc

import pytest

from satisfice import Policy, Router
from satisfice import validators as v
from satisfice.cascade import Cascade, Step
from satisfice.errors import ConfigError
from satisfice.testing import LocalUpstream, reply

from .chat_support import registry, wire

# -- validators ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ['{"total": NaN}', "NaN", '{"total": Infinity}', "-Infinity"])
def test_json_valid_refuses_nan_and_infinity(text: str) -> None:
    """Defect: `json_valid()` (and `json_valid(schema)`) passes answers holding `NaN`,
    `Infinity` or `-Infinity`, which are no JSON (RFC 8259; the README itself says "they
    are no JSON"): Python's json module reads them by default. A cascade then accepts an
    answer a strict consumer (orjson, JSON.parse, jq) cannot parse, instead of escalating.
    Expected: the answer fails the check as not valid JSON."""
    ctx = v.Context([{"role": "user", "content": "the total as JSON"}])
    assert not v.json_valid()(v.Answer("m", text), ctx).passed  # type: ignore[union-attr]
    schema = {"type": ["object", "number"], "properties": {"total": {"type": "number"}}}
    assert not v.json_valid(schema)(v.Answer("m", text), ctx).passed  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "spec",
    [
        {"check": "regex", "pattern": "TODO", "forbid": "false"},
        {"check": "regex", "pattern": "[A-D]", "fullmatch": "no"},
        {"check": "final_answer", "integer": "false"},
        {"check": "code_block", "language": "python", "parses": "false"},
        {"check": "uses_inputs", "min_share": True},
    ],
    ids=["forbid", "fullmatch", "integer", "parses", "min_share"],
)
def test_a_saved_check_with_a_mistyped_flag_is_refused(spec: dict[str, object]) -> None:
    """Defect: a saved check (policy.json's `cascades`, read by `from_spec`) takes any value
    for its switches and uses its truthiness: `{"check": "regex", "pattern": "TODO",
    "forbid": "false"}` loads as a check that *forbids* TODO (the string "false" is true),
    the opposite of what the file says; `"integer": "false"` turns the integer rule on, and
    `"min_share": true` is taken as 1.0 (the README: `True` is not a number). Expected, as
    for every other field of a policy: a ConfigError naming the field."""
    with pytest.raises(ConfigError):
        v.from_spec(spec)
    with pytest.raises(ConfigError):
        Policy.from_dict({"cascades": {"*": {"steps": [{"models": ["a"], "check": spec},
                                                       {"models": ["b"]}]}}})  # fmt: skip


def test_calibrated_refuses_weights_that_are_no_finite_number() -> None:
    """Defect: `calibrated(...)` (and a policy's saved calibrated check) takes NaN or
    infinite weights and bias: NaN makes the check fail every answer whatever its parts
    say, an infinite weight pass every answer, and `Policy.save` then writes `NaN` /
    `Infinity` into policy.json (no JSON). Expected: a ConfigError, as for a NaN cap."""
    parts = [v.arithmetic()]
    for weights, bias in (([float("nan")], 0.0), ([float("inf")], 0.0), ([1.0], float("nan"))):
        with pytest.raises(ConfigError):
            v.calibrated(parts, weights, bias, 0.5)


# -- a check's time is bounded by the request's deadline and the ladder's budget -----------


async def test_a_check_on_a_huge_answer_is_bounded_by_the_deadline(up: LocalUpstream) -> None:
    """Defect: the built-in checks are synchronous and run on the event loop, so neither
    the ladder's `latency_budget_ms` nor the request's `timeout=` (both promised to bind
    every ladder, and "`deadline` bounds each check: one still running then fails") can cut
    one off. An upstream that answers the cheap step with ~5 MB of `1+1=2 ` (well within
    the 64 MB `max_response_bytes`) makes `arithmetic()` run for seconds: the request below
    with a 1 s budget and a 1.5 s timeout returned after ~3.5 s, and the event loop (every
    other request of a `satisfice serve` process) was held the whole time (8 MB: 8.7 s).
    Expected: the request ends within its deadline + 0.5 s (the README's bound for hostile
    upstreams), the check failing as past the deadline, and the loop stays responsive."""
    big = "1+1=2 " * 800_000  # 4.8 MB
    up.script(wire("alpha"), reply(big))
    r = Router(registry(up.url), Policy(quality_floor=0.0))
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            lags.append(now - last - 0.01)
            last = now

    async with r:
        tick = asyncio.create_task(ticker())
        ladder = Cascade([Step(("alpha",), v.arithmetic()), Step(("gamma",))],
                         latency_budget_ms=1000)  # fmt: skip
        t0 = time.perf_counter()
        with contextlib.suppress(Exception):  # a budget error is an acceptable end
            await r.chat("What is 1+1?", cascade=ladder, timeout=1.5)
        took = time.perf_counter() - t0
        stop.set()
        await tick
    # the check cut off runs on to its end on its thread: waited for, so that its work and
    # its answer are no later test's
    from satisfice import _verdict

    if _verdict._CHECKS is not None:
        await asyncio.to_thread(_verdict._CHECKS.shutdown, True)
        _verdict._CHECKS = None
    assert took <= 1.5 + 0.5 and max(lags) < 0.5, (
        f"the cascade took {took:.2f}s against a 1.5 s deadline; the event loop was held "
        f"{max(lags):.2f}s"
    )


async def test_checks_keep_no_answer_alive_after_the_request(up: LocalUpstream) -> None:
    """Defect: `final_answer`, `consistent_final` and the agreement extractors cache their
    parse in a module-level `functools.lru_cache(maxsize=64)` keyed on the answer's whole
    text, so the last 64 answers checked (each up to `max_response_bytes`, 64 MB) stay in
    memory for the life of the process: 6 cascades whose cheap model answered 2 MB kept
    ~12 MB alive after their requests ended and the router closed; 64 hostile 64 MB answers
    would pin 4 GB in a server running tuned GSM8K ladders. Expected: what a request's
    checks read is freed with the request."""
    r = Router(registry(up.url), Policy(quality_floor=0.0))
    ladder = Cascade([Step(("alpha",), v.final_answer()), Step(("gamma",))])
    tracemalloc.start()
    try:
        async with r:
            await r.chat("warm up", allow=["gamma"])
            gc.collect()
            base = tracemalloc.get_traced_memory()[0]
            for i in range(6):
                up.script(wire("alpha"), reply(f"{i} " + "step " * 400_000 + "#### 5"))
                res = await r.chat(f"Question {i}: what is 2+3?", cascade=ladder)
                assert res.model == "alpha"
                del res
        up.requests.clear()  # the test upstream's own record of what it answered
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert kept < 4_000_000, f"{kept / 1e6:.1f} MB of answers kept after the requests"


# -- a ladder's own steps are estimated from the registry, not from the routed candidates ---


async def test_a_priced_ladder_step_below_the_floor_is_not_skipped_as_unpriced(
    up: LocalUpstream,
) -> None:
    """Defect: an explicit `Cascade` takes each step's cost and p95 from the request's
    decision candidates (`estimates_from`), so a cheap model the quality floor filtered out
    (the default policy's 0.8; the very model a cascade puts first, to check its answer
    instead) has no estimate: under `max_cost_usd` its step is skipped as "no cost estimate
    for alpha under a cost cap", under a ladder's `latency_budget_ms` as "no p95 latency",
    although the registry prices it and states its p95, and the request pays the top model
    for every prompt. Expected: the step fits (its registry price and p95 are known and far
    inside the limits), runs, and its passing answer is taken."""
    reg = registry(up.url)
    reg = reg.replace(reg["alpha"].replace(quality={"general": 0.3}))
    r = Router(reg)  # the default policy (quality_floor 0.8)
    async with r:
        for cap, budget in ((0.5, None), (None, 5_000.0)):
            up.script(wire("alpha"), reply("42"))
            ladder = Cascade([Step(("alpha",), v.regex("42")), Step(("delta",))],
                             latency_budget_ms=budget)  # fmt: skip
            kw = {} if cap is None else {"max_cost_usd": cap}
            res = await r.chat("Say 42.", cascade=ladder, **kw)  # type: ignore[arg-type]
            assert res.cascade is not None
            first = res.cascade.steps[0]
            assert first.status == "accepted" and res.model == "alpha", (
                f"cap={cap} budget={budget}: step 0 {first.status}: {first.reason}"
            )
        up.reset_script()


# -- checks that read the request read it in every shape a request takes -------------------

PARTS = [{"role": "user", "content": [
    {"type": "text", "text": "Tom has 12 apples and eats 5. How many are left?"}]}]  # fmt: skip


async def test_uses_inputs_reads_a_request_sent_as_text_parts(up: LocalUpstream) -> None:
    """Defect: `uses_inputs` (a part of the tuned GSM8K checks) and the judge read only user
    messages whose content is a string. A request whose content is a list of text parts
    (what Anthropic's Messages API sends as content blocks, kept as such by `satisfice
    serve`'s /v1/messages, and what OpenAI's SDK allows) "states no numbers" to it, so an
    answer that ignores every given number passes at confidence 1.0: the cascade below
    accepts alpha's `#### 99` for "Tom has 12 apples and eats 5", which it rejects, and
    escalates, when the same text is sent as a string. Expected: the same verdict for the
    same request text, whichever shape it came in."""
    r = Router(registry(up.url), Policy(quality_floor=0.0))
    ladder = Cascade([Step(("alpha",), v.uses_inputs(1.0)), Step(("delta",))])
    async with r:
        models = []
        for msgs in ([{"role": "user", "content": PARTS[0]["content"][0]["text"]}], PARTS):
            up.script(wire("alpha"), reply("Easy. #### 99"))
            up.script(wire("delta"), reply("12 - 5 = 7 #### 7"))
            res = await r.chat(msgs, cascade=ladder)
            models.append(res.model)
        up.reset_script()
    assert models == ["delta", "delta"], f"string content -> {models[0]}, text parts -> {models[1]}"


async def test_the_judge_is_shown_a_request_sent_as_text_parts() -> None:
    """Defect: `judge(...)` builds its grading prompt from user messages whose content is
    a string only: for a request sent as text parts it is asked to grade the answer against
    an empty "Request:", so it grades without the question. Expected: the request's text
    is in the judge's prompt."""
    seen: list[str] = []

    async def ask(messages: list[dict[str, object]]) -> v.Answer:
        seen.append(str(messages[-1]["content"]))
        return v.Answer("judge", "VERDICT: PASS\nCONFIDENCE: 90", 10, 5, 0.0)

    check = v.judge(ask, "the answer is correct")
    await v.resolve(check(v.Answer("m", "7"), v.Context(PARTS)))
    assert "Tom has 12 apples" in seen[0], seen[0][:200]


# -- what a failed cascade puts on record -------------------------------------------------


@pytest.mark.parametrize("ledger", ["l.jsonl", "l.db"])
async def test_a_cascade_that_raises_records_its_rejected_answers_as_rejected(
    up: LocalUpstream, tmp_path: object, ledger: str
) -> None:
    """Defect: the verdicts of a cascade's checks are written onto its attempts (outcome
    "rejected", `verdict`) only when the cascade returns. One that raises
    `CascadeBudgetError` (`on_budget="raise"`, the latency budget cutting a later step)
    leaves the answer its check rejected as outcome "ok" with no verdict, on the error's
    `attempts` and in the ledger's record: the record says the request got an answer it
    never returned and loses the check's verdict (what `satisfice report` and the flywheel
    learn from). Expected: as for a returned cascade, "rejected" with its verdict; and its
    steps on the record, which the report's escalation rates count (a second review found
    them skipped there with every record not "ok"), in either kind of ledger."""
    from pathlib import Path

    from satisfice.errors import CascadeBudgetError
    from satisfice.ledger import read_records
    from satisfice.report import rows, summarize

    path = Path(str(tmp_path)) / ledger
    r = Router(registry(up.url), Policy(quality_floor=0.0))
    r.attach(ledger=path)
    up.script(wire("alpha"), reply("no"))
    up.script(wire("gamma"), reply("no", latency=1.0))
    ladder = Cascade([Step(("alpha",), v.regex("42")), Step(("gamma",), v.regex("42")),
                      Step(("delta",))], latency_budget_ms=500, on_budget="raise")  # fmt: skip
    async with r:
        with pytest.raises(CascadeBudgetError) as e:
            await r.chat("Say 42.", cascade=ladder)
        assert r.ledger is not None and r.ledger.flush()
    up.wait_idle()
    up.reset_script()
    alpha = [a for a in e.value.attempts if a.model == "alpha"]
    assert [(a.outcome, a.verdict is not None) for a in alpha] == [("rejected", True)]
    (rec,) = list(read_records(path))
    got = [(a["outcome"], a["verdict"]) for a in rec["attempts"] if a["model"] == "alpha"]
    assert got and got[0][0] == "rejected" and got[0][1] is not None, got
    steps = (rec.get("cascade") or {}).get("steps") or []
    assert [s["models"] for s in steps][:2] == [["alpha"], ["gamma"]], rec.get("cascade")
    esc = summarize(rows(path))["escalation"]
    assert esc.get("0", {}).get("escalated") == 1, esc


# -- ladders built in code are checked as a policy file's are ------------------------------


@pytest.mark.parametrize("ladder", [["alpha", "delta"], {"steps": [{"models": ["alpha"]}]}, None],
                         ids=["list", "saved-dict", "none"])  # fmt: skip
def test_a_policy_ladder_that_is_no_cascade_is_a_config_error(ladder: object) -> None:
    """Defect: `Policy(cascades={"*": ladder})` takes any value as a ladder: a list of ids,
    a ladder's saved dict (what policy.json holds, not yet read with `Cascade.from_dict`)
    or None pass `Policy()`, and `Router()` then fails with a raw `AttributeError: 'list'
    object has no attribute 'steps'` (README: policies and cascades that are wrong raise
    ConfigError naming the field). Expected: a ConfigError naming policy.cascades['*']."""
    with pytest.raises(ConfigError, match="cascades"):
        Router(registry("http://127.0.0.1:9"), Policy(cascades={"*": ladder}))  # type: ignore[dict-item]


def test_a_cascade_of_one_model_id_is_not_a_ladder_of_its_letters() -> None:
    """Defect: `Cascade("alpha")` (one model id where the list of steps goes) iterates the
    string and builds `Cascade([a] -> [l] -> [p] -> [h] -> [a])`, five steps of one-letter
    models, though the constructor's own rule is that "a bare model id is a one-model step,
    not its letters". Expected: one step calling alpha, or a ConfigError."""
    try:
        ladder = Cascade("alpha")  # type: ignore[arg-type]
    except ConfigError:
        return
    assert [s.models for s in ladder.steps] == [("alpha",)], repr(ladder)


# -- the server's cascade field --------------------------------------------------------------


def test_the_server_reads_cascade_null_as_not_sent(up: LocalUpstream) -> None:
    """Defect: `satisfice serve` reads every other parameter sent as JSON null as not sent
    ("clients that write every unset option as null: `seed`, `top_logprobs`, ... had been
    400s"), but `"cascade": null` is a 400 ("'cascade' takes "auto" only over HTTP"), so a
    client that writes its unset cascade option as null cannot make a plain request.
    Expected: routed as a request without a cascade."""
    import httpx

    from .server_support import running

    router = Router(registry(up.url), Policy(quality_floor=0.0))
    up.script(wire("alpha"), reply("hello"))
    with running(router=router) as (url, _app):
        got = httpx.post(url + "/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": "hi"}], "cascade": None,
            "seed": None})  # fmt: skip
    up.wait_idle()
    up.reset_script()
    assert got.status_code == 200, got.text


async def test_a_regex_check_that_backtracks_neither_holds_the_loop_nor_runs_on() -> None:
    """Python's `re` holds the interpreter's lock for a whole search, so a `regex()` check
    whose pattern backtracks (`(a|aa)+$` on 40 letters: minutes) held the event loop, and
    every request on it, until it ended, however short the answer. It is searched with the
    `regex` module off the loop, which releases the lock while it matches and stops at
    REGEX_TIMEOUT_S: the loop runs meanwhile, and the answer fails with that reason."""
    from satisfice._verdict import Answer, Context, checked
    from satisfice.validators import REGEX_TIMEOUT_S, regex

    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    v = await checked(regex(r"(a|aa)+$"), Answer("m", "a" * 40 + "b"), Context(), 30.0)
    done.set()
    await t
    assert not v.passed and f"took over {REGEX_TIMEOUT_S:g}s" in v.reason, v
    assert ticks >= 10, f"the loop turned {ticks} times while the check ran"
