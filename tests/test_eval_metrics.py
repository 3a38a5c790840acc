"""Metrics against hand-computed values, property checks, and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from satisfice.errors import DatasetError
from satisfice.eval import metrics as M
from satisfice.eval.plot import plot_curve

# --- hull and AIQ ----------------------------------------------------------------------


def test_hull_keeps_the_rising_concave_frontier() -> None:
    costs = [1.0, 2.0, 3.0, 4.0, 5.0, 2.0, 3.5]
    quals = [0.5, 0.8, 0.6, 0.9, 0.7, 0.4, 0.86]
    hull = M.non_decreasing_hull(costs, quals)
    # (3, .6) is below, (5, .7) is past the best point, (2, .4) loses to (2, .8) and
    # (3.5, .86) lies under the chord from (2, .8) to (4, .9) (which gives .875 there).
    np.testing.assert_allclose(hull, [[1.0, 0.5], [2.0, 0.8], [4.0, 0.9]])


def test_hull_drops_a_point_under_the_chord_even_when_it_rises() -> None:
    hull = M.non_decreasing_hull([1.0, 2.0, 3.0], [0.5, 0.55, 0.9])
    np.testing.assert_allclose(hull, [[1.0, 0.5], [3.0, 0.9]])


def test_hull_starts_at_the_cheapest_point_even_when_it_is_bad() -> None:
    hull = M.non_decreasing_hull([2.0, 1.0], [0.9, 0.1])
    np.testing.assert_allclose(hull, [[1.0, 0.1], [2.0, 0.9]])


def test_aiq_hand_computed() -> None:
    costs, quals = [1.0, 2.0, 4.0, 3.0], [0.5, 0.8, 0.9, 0.6]
    # Area from 1 to 2: .65; from 2 to 4: 1.7; total 2.35 over max cost 4.
    assert M.aiq(costs, quals) == pytest.approx(2.35 / 4)
    # Extended flat at .9 from 4 to 5.
    assert M.aiq(costs, quals, max_cost=5.0) == pytest.approx((2.35 + 0.9) / 5)
    # Non-concave middle point removed: (.5 + .9) / 2 * 2 over 3.
    assert M.aiq([1.0, 2.0, 3.0], [0.5, 0.55, 0.9]) == pytest.approx(1.4 / 3)
    # One point: nothing below its cost counts, flat after it.
    assert M.aiq([2.0], [0.7], max_cost=4.0) == pytest.approx(0.35)


def test_aiq_refuses_bad_input() -> None:
    with pytest.raises(DatasetError, match="below the hull"):
        M.aiq([1.0, 4.0], [0.1, 0.9], max_cost=2.0)
    with pytest.raises(DatasetError, match="NaN"):
        M.aiq([1.0, float("nan")], [0.1, 0.9])
    with pytest.raises(DatasetError, match="non-empty"):
        M.aiq([], [])


points = st.lists(st.tuples(st.floats(0.001, 10.0), st.floats(0.0, 1.0)), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(points, points)
def test_aiq_properties(base: list[tuple[float, float]], more: list[tuple[float, float]]) -> None:
    xs, ys = [p[0] for p in base], [p[1] for p in base]
    hull = M.non_decreasing_hull(xs, ys)
    assert np.all(np.diff(hull[:, 0]) > 0) and np.all(np.diff(hull[:, 1]) > 0)
    slopes = np.diff(hull[:, 1]) / np.diff(hull[:, 0])
    assert np.all(np.diff(slopes) <= 1e-9 * np.maximum(1.0, np.abs(slopes[1:])))
    assert hull[0, 0] == min(xs) and hull[-1, 1] >= max(ys) - 1e-12  # equal within 1e-12
    top = max(xs + [p[0] for p in more])
    value = M.aiq(xs, ys, max_cost=top)
    assert 0.0 <= value <= max(ys) + 1e-12
    # More options never make the frontier worse.
    both = M.aiq(xs + [p[0] for p in more], ys + [p[1] for p in more], max_cost=top)
    assert both >= value - 1e-9


# --- RouteLLM strong-share curve, APGR, CPT ---------------------------------------------


def random_like_router() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """10 score levels, each holding the same 4 outcome pairs: the score says nothing about
    which model is needed, so quality grows linearly with the strong share (APGR 0.5)."""
    pairs = [(0, 1), (0, 1), (1, 1), (0, 0)]  # weak .25, strong .75
    weak = np.array([w for _ in range(10) for w, _ in pairs], dtype=float)
    strong = np.array([s for _ in range(10) for _, s in pairs], dtype=float)
    score = np.repeat(np.arange(10.0), 4)
    return score, weak, strong


@pytest.mark.parametrize("n_quantiles", [10, 4, None])
def test_random_router_recovers_half_the_gap(n_quantiles: int | None) -> None:
    curve = M.strong_share_curve(*random_like_router(), n_quantiles=n_quantiles)
    assert curve.weak_quality == 0.25 and curve.strong_quality == 0.75
    assert curve.shares[0] == 0.0 and curve.shares[-1] == 1.0
    assert M.apgr(curve) == pytest.approx(0.5)
    assert M.cpt(curve, 0.5) == pytest.approx(0.5)
    assert M.cpt(curve, 0.8) == pytest.approx(0.8)


@pytest.mark.parametrize("n_quantiles", [10, None])
def test_perfect_router_hand_computed(n_quantiles: int | None) -> None:
    # 2 prompts only the strong model gets, 6 both get, 2 neither: weak .6, strong .8.
    weak = np.array([0, 0] + [1] * 6 + [0, 0], dtype=float)
    strong = np.array([1, 1] + [1] * 6 + [0, 0], dtype=float)
    curve = M.strong_share_curve(strong - weak, weak, strong, n_quantiles=n_quantiles)
    # Curve (0, .6) -> (.2, .8) -> (1, .8): area .14 + .64 = .78; APGR (.78-.6)/.2 = .9,
    # i.e. 1 - p/2 with p = .2: even a perfect router pays for the prompts it must send up.
    assert M.apgr(curve) == pytest.approx(0.9)
    assert M.cpt(curve, 0.5) == pytest.approx(0.1)
    assert M.cpt(curve, 0.8) == pytest.approx(0.16)
    assert M.cpt(curve, 1.0) == pytest.approx(0.2)
    assert M.cpt(curve, 0.0) == 0.0


def test_inverted_router_recovers_less_than_random() -> None:
    weak = np.array([0, 0] + [1] * 6 + [0, 0], dtype=float)
    strong = np.array([1, 1] + [1] * 6 + [0, 0], dtype=float)
    curve = M.strong_share_curve(weak - strong, weak, strong, n_quantiles=None)
    # Curve (0, .6) -> (.8, .6) -> (1, .8): area .48 + .14 = .62; APGR .1; CPT(50%) .9.
    assert M.apgr(curve) == pytest.approx(0.1)
    assert M.cpt(curve, 0.5) == pytest.approx(0.9)


def test_apgr_undefined_when_strong_is_not_better() -> None:
    same = np.array([1.0, 0.0, 1.0])
    curve = M.strong_share_curve(np.array([0.1, 0.2, 0.3]), same, same)
    with pytest.raises(DatasetError, match="not better than the weak"):
        M.apgr(curve)


# --- N-model policies and baselines -----------------------------------------------------

SCORES = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
COSTS = np.array([[1.0, 2.0, 4.0]] * 4)
MODELS = ["small", "mid", "large"]


def test_single_models_oracle_and_best() -> None:
    singles = M.single_models(MODELS, SCORES, COSTS)
    assert [(p.model, p.cost, p.quality) for p in singles] == [
        ("small", 1.0, 0.25),
        ("mid", 2.0, 0.5),
        ("large", 4.0, 0.75),
    ]
    assert M.best_single(singles).model == "large"
    # Oracle: small, mid, large, and small where nobody succeeds.
    assert M.oracle(SCORES, COSTS) == M.Point(cost=2.0, quality=0.75)


def test_random_routing_interpolates_on_the_single_model_hull() -> None:
    singles = M.single_models(MODELS, SCORES, COSTS)
    assert M.random_routing_quality(singles, 3.0) == pytest.approx(0.625)
    assert M.random_routing_quality(singles, 9.0) == pytest.approx(0.75)
    assert M.random_routing_quality(singles, 0.5) is None


def test_sweep_lambda_goes_from_best_to_cheapest() -> None:
    curve = M.sweep_lambda(SCORES, COSTS, SCORES, COSTS)
    assert curve.params[0] == 0.0 and np.isinf(curve.params[-1])
    # lambda 0 with perfect predictions: the cheapest model that gets each prompt right.
    assert (curve.costs[0], curve.qualities[0]) == (2.0, 0.75)
    assert (curve.costs[-1], curve.qualities[-1]) == (1.0, 0.25)
    assert M.cost_to_reach(curve, 0.75) == 2.0
    assert M.cost_to_reach(curve, 0.8) is None
    # Equal predictions: the cheaper model wins even when cost weighs nothing.
    flipped = COSTS[:, ::-1]
    tie = M.sweep_lambda(np.ones_like(SCORES), flipped, SCORES, flipped, lambdas=[0.0])
    assert tie.costs[0] == 1.0


def test_sweep_floor() -> None:
    pred = np.array([[0.9, 0.95, 0.99], [0.2, 0.7, 0.9], [0.1, 0.3, 0.6], [0.1, 0.1, 0.2]])
    curve = M.sweep_floor(pred, COSTS, SCORES, COSTS, floors=[0.0, 0.5, 0.95])
    # Floor 0: all small. Floor .5: small, mid, large, and large (most likely) for the last.
    # Floor .95: mid for the first; large for the rest.
    np.testing.assert_allclose(curve.costs, [1.0, (1 + 2 + 4 + 4) / 4, (2 + 4 + 4 + 4) / 4])
    np.testing.assert_allclose(curve.qualities, [0.25, 0.75, 0.75])


def test_metrics_refuse_nan_outcomes() -> None:
    holes = SCORES.copy()
    holes[1, 2] = np.nan
    with pytest.raises(DatasetError, match=r"drop_missing\(\)"):
        M.oracle(holes, COSTS)


def test_summary_is_json_ready() -> None:
    curve = M.sweep_lambda(SCORES, COSTS, SCORES, COSTS)
    pair = M.strong_share_curve(SCORES[:, 2] - SCORES[:, 0], SCORES[:, 0], SCORES[:, 2])
    summary = M.summarize(curve, MODELS, SCORES, COSTS, share_curve=pair)
    out = json.loads(json.dumps(summary.to_dict()))
    assert out["n"] == 4 and out["models"] == MODELS
    assert out["best_single"] == {"model": "large", "quality": 0.75, "cost": 4.0}
    assert out["oracle"] == {"quality": 0.75, "cost": 2.0}
    assert out["cost_at_best_quality"] == 2.0
    assert out["cost_at_95pct_best_quality"] == 2.0
    assert out["apgr"] is not None and out["cpt50"] is not None
    # Router points (1, .25), (1.25, .5) (mid only where small fails, for 1/3 < lambda < 1),
    # (2, .75), flat to 4: (.09375 + .46875 + 1.5) / 4.
    assert out["aiq"] == pytest.approx(2.0625 / 4)
    # Singles' hull (1, .25) -> (2, .5) -> (4, .75), concave: (.375 + 1.25) / 4.
    assert out["random_aiq"] == pytest.approx(1.625 / 4)
    assert out["curve"][0] == {"cost": 2.0, "quality": 0.75}
    no_pair = M.summarize(curve, MODELS, SCORES, COSTS).to_dict()
    assert no_pair["apgr"] is None and no_pair["cpt80"] is None


# --- plot ------------------------------------------------------------------------------


@pytest.mark.parametrize("spread", [1.0, 1000.0])
def test_plot_writes_a_png(tmp_path: Path, spread: float) -> None:
    costs = COSTS * np.array([1.0, 10.0, spread])
    curve = M.sweep_lambda(SCORES, costs, SCORES, costs)
    singles = M.single_models(MODELS, SCORES, costs)
    path = tmp_path / "curve.png"
    plot_curve(curve, singles, M.oracle(SCORES, costs), path, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_equal_costs_get_a_note_on_aiq() -> None:
    """With no cost range AIQ is 0 for every router: the report says so instead of a bare 0."""
    import numpy as np

    from satisfice.eval import evaluate as E
    from satisfice.eval._set import OutcomeSet

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 2, (40, 2)).astype(float)
    costs = np.full((40, 2), 0.001)
    data = OutcomeSet([f"p{i}" for i in range(40)], ["a", "b"], scores, costs,
                      ["g"] * 40, [str(i) for i in range(40)])  # fmt: skip
    rep = E.evaluate_predictor(data, rng.random((40, 2)), costs).to_dict()
    assert rep["aiq"] == 0 and any("no cost range" in n for n in rep["notes"])
