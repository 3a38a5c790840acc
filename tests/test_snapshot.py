"""The routing snapshot: swapped whole under concurrent route(), kept by each decision;
feedback changes one row; eval and calibrate rank with the same Rust code as route()."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from satisfice import Policy, Registry, Router, Rule, _core
from satisfice.registry import ModelSpec

DEFAULT = Registry.default()
# The same models in reverse order: every row index now names another model.
REVERSED = Registry(list(reversed(list(DEFAULT))), DEFAULT.meta)
CHEAP = min((m for m in DEFAULT if m.price is not None), key=lambda m: m.price.input)  # type: ignore[union-attr]
WITH_RULE = Policy(rules=(Rule("code", (CHEAP.id,), task="code"),), quality_floor=0.6)
NO_RULE = Policy(quality_floor=0.7)
PROMPTS = ["write a python function that sorts a list", "hello there", "Summarise: " + "x y " * 50]


def consistent(d: object) -> None:
    """A decision agrees with its own snapshot in every name it reports."""
    from satisfice.decision import Decision

    assert isinstance(d, Decision)
    snap = d.snapshot
    assert d.model in snap.registry and all(f in snap.registry for f in d.fallbacks)
    assert d.candidates[0].model == d.model  # the plan's primary, named by the same ids
    if d.rule is not None:  # never an IndexError from another policy's rules
        assert d.rule in [r.name for r in snap.policy.rules]
    d.explain()
    d.to_dict()


def test_concurrent_swaps_never_mix_snapshots() -> None:
    router = Router(DEFAULT, WITH_RULE)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen_models: set[str] = set()

    def swapper() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            router.update(
                registry=REVERSED if i % 2 else DEFAULT, policy=NO_RULE if i % 3 else WITH_RULE
            )

    def routes() -> None:
        try:
            for k in range(400):
                d = router.route(PROMPTS[k % len(PROMPTS)])
                consistent(d)
                seen_models.add(d.model)
        except BaseException as e:  # reported below, with the thread's traceback
            errors.append(e)

    threads = [threading.Thread(target=swapper)] + [
        threading.Thread(target=routes) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join(timeout=60)
    stop.set()
    threads[0].join(timeout=10)
    assert not errors, errors[0]
    assert seen_models


def test_decision_keeps_its_snapshot_after_an_update() -> None:
    router = Router(DEFAULT, WITH_RULE)
    d = router.route(PROMPTS[0])
    assert d.rule == "code" and d.model == CHEAP.id
    router.update(registry=REVERSED, policy=NO_RULE)
    assert d.rule == "code" and d.model == CHEAP.id and d.snapshot.policy is WITH_RULE
    consistent(d)
    assert router.route(PROMPTS[0]).rule is None


def test_feedback_replaces_one_row_and_is_cheap() -> None:
    router = Router()
    d = router.route("hello there")
    before = router.snapshot
    other = next(m for m in before.ids if m != d.model)
    router.feedback(d.request_id, 0.0)
    after = router.snapshot
    assert after is not before and after.registry is before.registry
    # the answering model's P(good) went down; another model's stayed exactly the same
    now = router.route("hello there", quality_floor=0.0)
    p0 = {c.model: c.p_good for c in now.candidates}
    fresh = Router(before.registry, before.policy).route("hello there", quality_floor=0.0)
    p_before = {c.model: c.p_good for c in fresh.candidates}
    assert p0[d.model] < p_before[d.model]
    assert p0[other] == p_before[other]
    # the same table a full recompile would make
    full = Router(after.registry, after.policy).route("hello there", quality_floor=0.0)
    assert {c.model: c.p_good for c in full.candidates} == pytest.approx(p0, abs=1e-6)

    # and without compiling the table again: only the one row is replaced
    def no_compile(*a: object) -> None:
        raise AssertionError("feedback recompiled the whole table")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Policy, "compile", no_compile)
        for _ in range(5):
            router.feedback(router.route("hello there").request_id, 1.0)


def test_rank_matches_route_on_every_setting() -> None:
    router = Router(DEFAULT, WITH_RULE)
    prompts = [*PROMPTS, "Translate to French: good morning", "Solve 3x + 5 = 11", "ok"]
    p, cost, forced = router.snapshot.table.plan_batch(prompts)
    assert p.shape == (len(prompts), len(DEFAULT)) and forced[0] >= 0
    floors = [0.0, 0.3, 0.6, 0.8, 0.95, 1.0]
    picks = _core.rank(p, cost, floors, "floor", forced)
    for s, floor in enumerate(floors):
        for i, prompt in enumerate(prompts):
            d = router.route(prompt, quality_floor=floor)
            assert router.snapshot.ids[picks[s, i]] == d.model, (floor, prompt)
    lams = [0.0, 1.0, 100.0, 1e4, float("inf")]
    picks = _core.rank(p, cost, lams, "lambda", forced)
    for s, lam in enumerate(lams):
        if np.isinf(lam):
            continue  # route() takes a finite λ
        for i, prompt in enumerate(prompts):
            assert router.snapshot.ids[picks[s, i]] == router.route(prompt, lam=lam).model


def test_rank_rejects_bad_shapes() -> None:
    from satisfice.errors import InputError

    with pytest.raises(InputError, match="shape"):
        _core.rank(np.zeros((2, 3)), np.zeros((2, 2)), [0.5], "floor")
    with pytest.raises(InputError, match="floor"):
        _core.rank(np.zeros((2, 3)), np.zeros((2, 3)), [0.5], "cheapest")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="forced"):
        _core.rank(np.zeros((2, 3)), np.zeros((2, 3)), [0.5], "floor", np.array([5, 0]))


def test_table_rows_are_named_and_typed() -> None:
    good = DEFAULT.ids[0]
    spec: ModelSpec = DEFAULT[good]
    qm = Policy().quality_model()
    row = {
        "id": spec.id, "price_in": 1.0, "price_out": 2.0, "context_window": 1000,
        "max_output": 100, "capabilities": ["json"], "p95_ms": float("nan"),
        "tokenizer": "o200k_base", "bias": 0.0, "ability": [0.0] * qm.k, "disabled": False,
        "long_above": float("inf"), "long_in": float("nan"), "long_out": float("nan"), "fee": 0.0,
    }  # fmt: skip
    w = np.zeros(_core.Featurizer(qm.hash_buckets).dim * (qm.k + 1), np.float32)
    args = (w, [0.0] * (qm.k + 1), qm.k, [], [256] * 8, qm.hash_buckets)
    assert _core.DispatchTable([row], *args).model_ids == [spec.id]
    missing = {k: v for k, v in row.items() if k != "tokenizer"}
    with pytest.raises(KeyError):
        _core.DispatchTable([missing], *args)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        _core.DispatchTable([{**row, "context_window": "big"}], *args)  # type: ignore[list-item]


def test_feedback_with_a_trained_predictor_matches_a_full_recompile() -> None:
    from satisfice.eval.evaluate import shipped_predictor

    policy = Policy(quality=shipped_predictor(), quality_floor=0.0)
    router = Router(DEFAULT, policy)
    d = router.route("hello there")
    router.feedback(d.request_id, 0.0)
    live = {c.model: c.p_good for c in router.route("hello there").candidates}
    full = Router(DEFAULT, router.policy).route("hello there")
    assert live == pytest.approx({c.model: c.p_good for c in full.candidates}, abs=1e-6)
