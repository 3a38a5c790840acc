"""On every shared data set and split kind, the router at full budget (lambda 0: a setting
chosen without the test rows, not the curve's best point, which the test rows pick) is never
worse than the single model a user would have picked from the training rows (tolerance
0.005), and the humility margin is what makes it so where the learned predictor alone is
worse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from satisfice.cli import main
from satisfice.eval import OutcomeSet
from satisfice.eval import train as T
from satisfice.eval.humble import Humility

from .data_support import DATA, needs_data

SPLITS = [
    ("llmrouter", "llmrouter", "hash:0.3"),
    ("llmrouter", "llmrouter", "fold:0/3"),
    ("llmrouter", "llmrouter", "fold:1/3"),
    ("llmrouter", "llmrouter", "fold:2/3"),
    ("routerbench", "routerbench", "hash:0.3"),
    ("routerbench", "routerbench", "fold:0/3"),
    ("routerbench", "routerbench", "fold:1/3"),
    ("routerbench", "routerbench", "fold:2/3"),
    ("routellm", "routellm/mmlu", "fold:0/3"),
    ("routellm", "routellm/mmlu", "fold:1/3"),
    ("routellm", "routellm/mmlu", "fold:2/3"),
    ("routellm", "routellm/gsm8k", "hash:0.3"),
]


def _eval(fmt: str, sub: str, split: str, capsys: pytest.CaptureFixture[str], *extra: str) -> Any:
    assert DATA is not None
    code = main(["eval", "--format", fmt, str(Path(DATA) / sub), "--test-split", split,
                 "--json", "--quiet", *extra])  # fmt: skip
    assert code == 0
    return json.loads(capsys.readouterr().out)


@needs_data
@pytest.mark.parametrize(("fmt", "sub", "split"), SPLITS, ids=[f"{s}-{p}" for _, s, p in SPLITS])
def test_never_worse_than_the_train_chosen_best_model(
    fmt: str, sub: str, split: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _eval(fmt, sub, split, capsys)
    best = out["train_best_single"]["quality"]
    full = out["router_full_budget"]["quality"]
    assert full >= best - 0.005, (full, best, out["humility"])
    assert out["switches"]["share_switched"] <= 1.0 and out["train_chosen_random"]["models"]


@needs_data
def test_humility_is_what_holds_it_on_a_shifted_split(capsys: pytest.CaptureFixture[str]) -> None:
    """RouterBench, tested on a benchmark the predictor never saw: without humility the
    router at full budget falls far below the train-best model; with it, it does not."""
    raw = _eval("routerbench", "routerbench", "fold:1/3", capsys, "--no-humility")
    held = _eval("routerbench", "routerbench", "fold:1/3", capsys)
    best = held["train_best_single"]["quality"]
    assert raw["router_full_budget"]["quality"] < best - 0.05
    assert held["router_full_budget"]["quality"] >= best - 0.005
    sw = raw["switches"]
    assert sw["predicted_gain"] > 0 > sw["realised_gain"]  # the overconfidence, measured


@needs_data
def test_a_cascade_tuned_on_other_files_is_the_one_the_split_tunes() -> None:
    """`eval --strategy cascade --train`: tuning on separate rows gives exactly what the
    hash split gives when those rows are its tuning part."""
    from satisfice.eval.cascade_eval import evaluate_cascade
    from satisfice.eval.datasets import load

    assert DATA is not None
    data = load("routellm", Path(DATA) / "routellm" / "gsm8k").drop_missing()
    tune, test = data.split_by_hash(0.5, 0)
    a = evaluate_cascade(data, test_fraction=0.5, seed=0)
    b = evaluate_cascade(test, train=tune)
    assert b["split"]["method"] == "separate tuning files"
    assert a["apgr_cascade"] == pytest.approx(b["apgr_cascade"])


def _two_models(n: int = 240) -> OutcomeSet:
    """Model "top" is right on most prompts, "low" on fewer, both more on short ones."""
    rng = np.random.default_rng(1)
    prompts = [("why " * (1 + i % 12)) + f"item {i}" for i in range(n)]
    easy = np.array([1.0 - (i % 12) / 12 for i in range(n)])
    scores = np.column_stack([rng.random(n) < 0.75 + 0.2 * easy, rng.random(n) < 0.3 + 0.6 * easy])
    return OutcomeSet(prompts, ["top", "low"], scores.astype(float), np.tile([1e-3, 1e-4], (n, 1)),
                      ["g"] * n, [str(i) for i in range(n)])  # fmt: skip


def test_the_margin_on_the_others_leaves_the_anchor_as_it_was() -> None:
    """On the others' side, the margin takes the same full-budget choices as raising the
    anchor's logit would, but leaves the anchor's P(good) alone: raised, a model right on
    most prompts is pushed to P(good) ~ 1, where its prompt-to-prompt differences (what
    ranks prompts at every other budget, and RouteLLM's APGR) vanish. Registry-seeded
    models are lowered too."""
    data = _two_models()
    qm = T.fit(data, T.TrainConfig(steps=150))
    margin = 1.5
    held = Humility("top", margin, [], side="others").apply(qm)
    p0, p1 = T.predict(qm, data), T.predict(held, data)
    assert np.allclose(p1[:, 0], p0[:, 0], atol=1e-6)  # the anchor: unchanged
    z0 = np.log(p0 / (1 - p0))
    z1 = np.log(p1 / (1 - p1))
    assert np.allclose(z1[:, 1], z0[:, 1] - margin, atol=1e-3)
    raised = z0.copy()
    raised[:, 0] += margin
    assert (np.argmax(z1, axis=1) == np.argmax(raised, axis=1)).all()
    # the anchor's own spread over prompts is kept: raising it would shrink it
    assert np.ptp(p1[:, 0]) == pytest.approx(np.ptp(p0[:, 0]), rel=1e-5)
    # a model seeded from a registry prior sits below its unadjusted seed by the margin
    a, b = qm.prior_map
    a1, b1 = held.prior_map
    assert a1 == a and b1 == pytest.approx(b - margin)
    assert Humility("top", 0.0, [], side="others").apply(qm) is qm


def _stub_choice(n_models: int, p_anchor: float, p_others: float, noise: float) -> Humility:
    """`choose` on rows where the anchor (column 0) is always right and the others never,
    with a predictor that says P(good) = p_anchor for it and p_others (+ noise that puts
    others above it) for the rest: every switch loses, so the margin is > 0."""
    from satisfice.eval.humble import choose

    n = 90
    scores = np.zeros((n, n_models))
    scores[:, 0] = 1.0
    models = [f"m{j}" for j in range(n_models)]
    data = OutcomeSet([f"prompt {i}" for i in range(n)], models, scores,
                      np.tile(np.linspace(1e-3, 1e-4, n_models), (n, 1)),
                      [f"g{i % 3}" for i in range(n)], [str(i) for i in range(n)])  # fmt: skip

    def predict(_qm: object, held: OutcomeSet) -> np.ndarray:
        rng = np.random.default_rng(len(held))
        p = np.full((len(held), n_models), p_others) + rng.normal(0, noise, (len(held), n_models))
        p[:, 0] = p_anchor
        return np.clip(p, 0.01, 0.99)

    return choose([data], models, fit=lambda _parts: None, predict=predict)


def test_the_margin_goes_on_the_side_that_keeps_the_predictions_resolution() -> None:
    # two models, the anchor right on most prompts: raising it would flatten it at ~1
    two = _stub_choice(2, 0.9, 0.85, 0.05)
    assert two.margin > 0 and two.side == "others", two.to_dict()
    # many models and a large margin: lowering them all would flatten every one at ~0
    many = _stub_choice(8, 0.6, 0.55, 0.25)
    assert many.margin >= 2 and many.side == "anchor", many.to_dict()
    assert set(many.to_dict()["slope_by_side"]) == {"anchor", "others"}
