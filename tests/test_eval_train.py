"""Training the item-response predictor on small synthetic outcome sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from satisfice.errors import DatasetError
from satisfice.eval import train as T
from satisfice.eval.datasets import OutcomeSet
from satisfice.predict import QualityModel

FAST = T.TrainConfig(k=2, steps=150, learning_rate=0.1, hash_buckets=64)


def easy_and_hard(n: int = 120) -> OutcomeSet:
    """Short questions every model gets; long arithmetic that only the strong model gets."""
    prompts, scores = [], []
    for i in range(n):
        if i % 2 == 0:
            prompts.append(f"What is the capital of country number {i}?")
            scores.append([1.0, 1.0])
        else:
            terms = " + ".join(f"{(i * 37 + j) % 997} * {j + 3}" for j in range(40))
            prompts.append(f"Compute exactly, showing every step: {terms} = ?\n" * 3)
            scores.append([0.0, 1.0])
    return OutcomeSet(
        prompts=prompts,
        models=["weak", "strong"],
        scores=np.array(scores),
        costs=np.tile([0.001, 0.01], (n, 1)),
        groups=["g"] * n,
        ids=[str(i) for i in range(n)],
    )


def test_fit_learns_which_prompts_need_the_strong_model() -> None:
    data = easy_and_hard()
    model = T.fit(data, FAST)
    p = T.predict(model, data)
    easy, hard = p[0::2], p[1::2]
    assert easy[:, 0].mean() > 0.8 and hard[:, 0].mean() < 0.2
    assert p[:, 1].mean() > 0.8
    assert model.weights.shape == (32 + 64, 3) and model.weights.dtype == np.float32
    assert model.models["weak"].n_obs == len(data) and model.models["weak"].source == "trained"


def test_fit_is_deterministic_and_reports_progress() -> None:
    seen: list[int] = []
    a = T.fit(easy_and_hard(), FAST, progress=lambda step, total, loss: seen.append(step))
    b = T.fit(easy_and_hard(), FAST)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert seen[-1] == FAST.steps and seen[0] == 20
    assert float(str(a.meta["final_loss"])) < 0.3


def test_missing_outcomes_and_several_sets_with_different_models() -> None:
    first = easy_and_hard(60)
    holes = first.scores.copy()
    holes[:10, 0] = np.nan
    first = OutcomeSet(first.prompts, first.models, holes, first.costs, first.groups, first.ids)
    second = easy_and_hard(40).select_models(["strong"])
    second = OutcomeSet(
        second.prompts, ["third"], second.scores, second.costs, second.groups, second.ids
    )
    model = T.fit([first, second], FAST)
    assert list(model.models) == ["weak", "strong", "third"]
    assert model.models["weak"].n_obs == 50
    assert model.models["third"].n_obs == 40
    assert T.predict(model, second).shape == (40, 1)


def test_predict_refuses_unknown_models_and_accepts_extra_params() -> None:
    data = easy_and_hard(40)
    model = T.fit(data.select_models(["strong"]), FAST)
    with pytest.raises(DatasetError, match=r"no parameters for \['weak'\]"):
        T.predict(model, data)
    p = T.predict(model, data, extra={"weak": model.models["strong"]})
    np.testing.assert_allclose(p[:, 0], p[:, 1])


def test_prior_map_follows_the_given_priors() -> None:
    model = T.fit(easy_and_hard(), FAST, priors={"weak": 0.5, "strong": 0.9})
    a, b = model.prior_map
    for name, prior in (("weak", 0.5), ("strong", 0.9)):
        assert a * np.log(prior / (1 - prior)) + b == pytest.approx(model.models[name].bias)


def test_saved_predictor_predicts_the_same(tmp_path: Path) -> None:
    data = easy_and_hard(40)
    model = T.fit(data, FAST)
    model.save(tmp_path / "p.npz")
    again = QualityModel.load(tmp_path / "p.npz")
    np.testing.assert_allclose(T.predict(again, data), T.predict(model, data), rtol=1e-6)


def test_fit_refuses_empty_data() -> None:
    empty = easy_and_hard(4).subset([])
    with pytest.raises(DatasetError, match="no training rows"):
        T.fit(empty, FAST)


def test_cost_model_recovers_a_linear_price() -> None:
    data = easy_and_hard(30)
    tokens = np.arange(30, dtype=float) * 10 + 5
    costs = np.column_stack([1e-4 + 2e-6 * tokens, 3e-3 + 5e-5 * tokens])
    priced = OutcomeSet(data.prompts, data.models, data.scores, costs, data.groups, data.ids)
    cm = T.fit_cost_model(priced, tokens)
    np.testing.assert_allclose(cm.intercept, [1e-4, 3e-3], rtol=1e-6)
    np.testing.assert_allclose(cm.per_token, [2e-6, 5e-5], rtol=1e-6)
    np.testing.assert_allclose(cm.estimate(priced, tokens), costs, rtol=1e-6)
    unpriced = OutcomeSet(
        data.prompts, data.models, data.scores, np.full((30, 2), np.nan), data.groups, data.ids
    )
    with pytest.raises(DatasetError, match="no recorded cost"):
        T.fit_cost_model(unpriced, tokens)
