"""Cost-quality metrics for routers: RouterBench's AIQ, RouteLLM's APGR and CPT, baselines.

Conventions. Quality is a mean score in [0, 1]; cost is mean USD per request. A *policy* is
one model choice per prompt; sweeping a knob (lambda, a quality floor, a threshold) gives a
`Curve` of (cost, quality) points. Inputs with NaN scores or costs are refused with a
DatasetError: drop or select rows first (`OutcomeSet.drop_missing()`), never silently.

- AIQ (RouterBench, Hu et al. 2024): area under the non-decreasing convex hull of the
  (cost, quality) points, from the cheapest point, extended flat to `max_cost`, divided by
  `max_cost`. Give several routers the same `max_cost` to compare them.
- Strong-share curve, APGR, CPT (RouteLLM, Ong et al. 2024; their `evals/evaluate.py`):
  thresholds at the quantiles of a per-prompt router score; a prompt goes to the strong
  model when its score >= threshold (the top threshold uses >, so the curve runs from 100%
  to 0% strong calls). APGR = (area under quality vs strong share - weak) / (strong - weak);
  CPT(x) = smallest strong share at which quality reaches weak + x (strong - weak).
- Baselines: each single model; random routing at matched cost, which mixes the two
  adjacent models on the single models' hull (so its AIQ is the hull's AIQ); the oracle,
  which picks per prompt the cheapest model reaching that prompt's best score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _core
from ..errors import DatasetError

__all__ = [
    "Curve",
    "ModelPoint",
    "Point",
    "StrongShareCurve",
    "Summary",
    "aiq",
    "apgr",
    "best_single",
    "cost_to_reach",
    "cpt",
    "default_lambdas",
    "non_decreasing_hull",
    "oracle",
    "policy_point",
    "random_routing_quality",
    "single_models",
    "strong_share_curve",
    "summarize",
    "sweep_floor",
    "sweep_lambda",
]

Floats = Sequence[float] | np.ndarray

# Two qualities closer than this are equal: means of 0/1 scores differ by at least 1/n.
_TOL = 1e-12


@dataclass(frozen=True)
class Point:
    """Mean USD per request and mean score of one policy."""

    cost: float
    quality: float


@dataclass(frozen=True)
class ModelPoint:
    """A single model sent every request."""

    model: str
    cost: float
    quality: float


@dataclass(frozen=True, eq=False)
class Curve:
    """(cost, quality) of a policy at each setting of its knob (`params`, e.g. lambda)."""

    costs: np.ndarray
    qualities: np.ndarray
    params: np.ndarray
    label: str = "router"

    def points(self) -> list[Point]:
        return [Point(float(c), float(q)) for c, q in zip(self.costs, self.qualities, strict=True)]


@dataclass(frozen=True, eq=False)
class StrongShareCurve:
    """Quality against the share of prompts sent to the strong model (two-model routing)."""

    shares: np.ndarray  # ascending, from 0.0 to 1.0
    qualities: np.ndarray
    thresholds: np.ndarray
    weak_quality: float
    strong_quality: float


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    # Written out: np.trapz is deprecated in numpy 2 and np.trapezoid is missing in numpy 1.
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def _complete(name: str, values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    bad = np.isnan(arr)
    if bad.any():
        rows = int(bad.any(axis=-1).sum()) if arr.ndim > 1 else int(bad.sum())
        # a column with nothing known is a model never measured or never priced: dropping
        # rows cannot help (drop_missing keeps them), leaving the model out does
        whole = [int(j) for j in np.flatnonzero(bad.all(axis=0))] if arr.ndim > 1 else []
        fix = (
            f"select models without column(s) {whole} (OutcomeSet.select_models), which "
            "have no known value on any row" if whole else
            "drop those rows (OutcomeSet.drop_missing())"
        )  # fmt: skip
        raise DatasetError(
            f"{name} has NaN in {rows} row(s); a metric cannot score a missing outcome or an "
            f"unknown cost: {fix}"
        )
    return arr


def _matrix_pair(scores: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s, c = _complete("scores", scores), _complete("costs", costs)
    if s.ndim != 2 or s.shape != c.shape or s.shape[0] == 0:
        raise DatasetError(f"scores {s.shape} and costs {c.shape} must be the same (n>0, m)")
    return s, c


def non_decreasing_hull(costs: Floats, qualities: Floats) -> np.ndarray:
    """Vertices (k, 2) of the upper-left hull: from the cheapest point up to the cheapest
    point of highest quality, concave, quality strictly increasing with cost.

    Every point on it is reachable by randomly mixing two adjacent policies per request.
    """
    x = np.asarray(costs, dtype=np.float64)
    y = np.asarray(qualities, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise DatasetError("costs and qualities must be equal-length, non-empty 1-d sequences")
    _complete("costs", x)
    _complete("qualities", y)
    order = np.lexsort((-y, x))  # by cost, best quality first among equal costs
    x, y = x[order], y[order]
    top = int(np.flatnonzero(y >= y.max() - _TOL)[0])  # cheapest point of best quality
    hull: list[tuple[float, float]] = []
    for px, py in zip(x[: top + 1].tolist(), y[: top + 1].tolist(), strict=True):
        if hull and px == hull[-1][0]:
            continue  # same cost, lower quality: dominated
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            # Drop the middle vertex when it lies on or below the chord to the new point.
            if (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0) >= 0.0:
                hull.pop()
            else:
                break
        hull.append((px, py))
    return np.array(hull, dtype=np.float64).reshape(-1, 2)


def aiq(costs: Floats, qualities: Floats, max_cost: float | None = None) -> float:
    """RouterBench's AIQ of a set of (cost, quality) points; see the module docstring.

    `max_cost` defaults to the largest cost among the points; pass the largest cost over
    every router (and single model) being compared so their AIQs share one scale.
    """
    hull = non_decreasing_hull(costs, qualities)
    x_max = float(np.max(np.asarray(costs, dtype=np.float64))) if max_cost is None else max_cost
    if x_max == 0.0 and hull[-1, 0] == 0.0:
        # every point free (local models): no cost range to integrate quality over, so 0, as
        # for models that all cost the same (eval's note says so); it had failed the whole
        # evaluation of a log of free models after it was computed
        return 0.0
    if not x_max > 0.0:
        raise DatasetError(f"max_cost must be > 0 USD, got {x_max}")
    if x_max < hull[-1, 0] - _TOL * max(1.0, x_max):
        raise DatasetError(
            f"max_cost {x_max:g} is below the hull's last point ({hull[-1, 0]:g}); "
            f"pass the largest cost among the compared curves"
        )
    area = _trapezoid(hull[:, 1], hull[:, 0]) + (x_max - float(hull[-1, 0])) * float(hull[-1, 1])
    return area / x_max


def policy_point(choice: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> Point:
    """Mean cost and quality when prompt i goes to model `choice[i]`."""
    s, c = _matrix_pair(scores, costs)
    pick = np.asarray(choice, dtype=np.intp)
    if pick.shape != (s.shape[0],) or pick.min() < 0 or pick.max() >= s.shape[1]:
        raise DatasetError(f"choice must hold one model index in [0, {s.shape[1]}) per prompt")
    rows = np.arange(s.shape[0])
    return Point(float(c[rows, pick].mean()), float(s[rows, pick].mean()))


def single_models(models: Sequence[str], scores: np.ndarray, costs: np.ndarray) -> list[ModelPoint]:
    """Each model sent every request, in `models` order."""
    s, c = _matrix_pair(scores, costs)
    if len(models) != s.shape[1]:
        raise DatasetError(f"{len(models)} model names for {s.shape[1]} score columns")
    return [
        ModelPoint(m, float(c[:, j].mean()), float(s[:, j].mean())) for j, m in enumerate(models)
    ]


def best_single(singles: Sequence[ModelPoint]) -> ModelPoint:
    """The single model of highest quality (the cheaper one on a tie)."""
    if not singles:
        raise DatasetError("no single models to compare")
    return min(singles, key=lambda p: (-p.quality, p.cost))


def oracle(scores: np.ndarray, costs: np.ndarray) -> Point:
    """Per prompt, the cheapest model that reaches that prompt's best score."""
    s, c = _matrix_pair(scores, costs)
    best = s >= s.max(axis=1, keepdims=True) - _TOL
    choice = np.argmin(np.where(best, c, np.inf), axis=1)
    return policy_point(choice, s, c)


def random_routing_quality(singles: Sequence[ModelPoint], cost: float) -> float | None:
    """Quality of random routing at mean cost `cost`: a per-request coin between the two
    adjacent models on the single models' hull. None below the cheapest model's cost."""
    hull = non_decreasing_hull([p.cost for p in singles], [p.quality for p in singles])
    if cost < hull[0, 0]:
        return None
    return float(np.interp(cost, hull[:, 0], hull[:, 1]))


def cost_to_reach(curve: Curve, target_quality: float) -> float | None:
    """Lowest cost among the curve's points whose quality reaches `target_quality`.

    No interpolation between points, so the figure is what one fixed setting achieves.
    None when no point reaches the target.
    """
    ok = curve.qualities >= target_quality - _TOL
    return float(curve.costs[ok].min()) if ok.any() else None


def default_lambdas(decision_costs: np.ndarray, k: int = 200) -> np.ndarray:
    """Lambdas (quality per USD) for a sweep: 0, then k geometric steps scaled to the price
    gaps in `decision_costs`, then inf (always the cheapest model)."""
    dc = _complete("decision_costs", decision_costs)
    gaps = np.diff(np.sort(dc, axis=1), axis=1)
    gaps = gaps[gaps > 0]
    if gaps.size == 0:
        return np.array([0.0, np.inf])
    # Low end: a quality difference of 1e-3 outweighs the largest price gap. High end: a
    # difference of 1 is outweighed by all but the smallest 1% of price gaps.
    lo, hi = 1e-3 / float(gaps.max()), 1.0 / float(np.quantile(gaps, 0.01))
    return np.concatenate([[0.0], np.geomspace(lo, max(hi, lo * 10.0), k), [np.inf]])


def sweep_lambda(
    pred: np.ndarray,
    decision_costs: np.ndarray,
    scores: np.ndarray,
    costs: np.ndarray,
    lambdas: Floats | None = None,
    label: str = "router",
) -> Curve:
    """Route each prompt to argmax_m pred[i, m] - lambda * decision_costs[i, m] for each lambda,
    with the router's own ranking (`_core.rank`: ties go to the cheaper model).

    `pred` is the predicted quality (n, m); `decision_costs` what the router believes each call
    costs (estimated before the call); `scores` and `costs` are the recorded outcomes used to
    measure the result.
    """
    s, c = _matrix_pair(scores, costs)
    p, dc = _matrix_pair(pred, decision_costs)
    if p.shape != s.shape:
        raise DatasetError(f"pred {p.shape} must match scores {s.shape}")
    lams = default_lambdas(dc) if lambdas is None else np.asarray(lambdas, dtype=np.float64)
    return _curve(_core.rank(p, dc, lams.tolist(), "lambda"), s, c, lams, label)


def sweep_floor(
    pred: np.ndarray,
    decision_costs: np.ndarray,
    scores: np.ndarray,
    costs: np.ndarray,
    floors: Floats | None = None,
    label: str = "router",
) -> Curve:
    """Route each prompt to the cheapest model with pred >= floor (the most likely model
    when none qualifies), for each floor, with the router's own ranking (`_core.rank`);
    default floors 0.00, 0.01, ..., 1.00."""
    s, c = _matrix_pair(scores, costs)
    p, dc = _matrix_pair(pred, decision_costs)
    if p.shape != s.shape:
        raise DatasetError(f"pred {p.shape} must match scores {s.shape}")
    grid = np.linspace(0.0, 1.0, 101) if floors is None else np.asarray(floors, np.float64)
    return _curve(_core.rank(p, dc, grid.tolist(), "floor"), s, c, grid, label)


def _curve(
    picks: np.ndarray, s: np.ndarray, c: np.ndarray, params: np.ndarray, label: str
) -> Curve:
    """Mean recorded cost and quality of each row of `picks` (settings x prompts)."""
    rows = np.arange(s.shape[0])
    return Curve(c[rows, picks].mean(axis=1), s[rows, picks].mean(axis=1), params, label)


def strong_share_curve(
    router_score: np.ndarray,
    weak_scores: np.ndarray,
    strong_scores: np.ndarray,
    n_quantiles: int | None = 10,
) -> StrongShareCurve:
    """RouteLLM's sweep: thresholds at the 0, 1/q, ..., 1 quantiles of `router_score`
    (higher = strong model needed; q = `n_quantiles`, 10 as in RouteLLM's evaluate.py, or
    None for every distinct score, the exact curve)."""
    r = _complete("router_score", router_score).ravel()
    w = _complete("weak_scores", weak_scores).ravel()
    st = _complete("strong_scores", strong_scores).ravel()
    if not r.size or r.shape != w.shape or r.shape != st.shape:
        raise DatasetError("router_score, weak_scores and strong_scores need one value per prompt")
    if n_quantiles is None:
        # Every distinct score with >=, then one strict step past the top: exact curve.
        thresholds = np.append(np.unique(r), r.max())
    else:
        if n_quantiles < 1:
            raise DatasetError(f"n_quantiles must be >= 1, got {n_quantiles}")
        thresholds = np.quantile(r, np.linspace(0.0, 1.0, n_quantiles + 1))
    shares, qualities = [], []
    for k, t in enumerate(thresholds):
        # The last threshold is strict so that the sweep ends at 0% strong calls.
        strong = r > t if k == len(thresholds) - 1 else r >= t
        shares.append(strong.mean())
        qualities.append(np.where(strong, st, w).mean())
    order = np.argsort(np.array(shares), kind="stable")
    return StrongShareCurve(
        shares=np.array(shares)[order],
        qualities=np.array(qualities)[order],
        thresholds=np.asarray(thresholds)[order],
        weak_quality=float(w.mean()),
        strong_quality=float(st.mean()),
    )


def _gap(curve: StrongShareCurve) -> float:
    gap = curve.strong_quality - curve.weak_quality
    if gap <= _TOL:
        raise DatasetError(
            f"the strong model ({curve.strong_quality:.4f}) is not better than the weak one "
            f"({curve.weak_quality:.4f}) on these prompts, so APGR and CPT are undefined; "
            f"check the model order (weak first) or report AIQ instead"
        )
    return gap


def apgr(curve: StrongShareCurve) -> float:
    """Average performance gap recovered: 0.5 for random routing, higher is better."""
    gap = _gap(curve)
    span = float(curve.shares[-1] - curve.shares[0])
    area = _trapezoid(curve.qualities, curve.shares)
    return (area - curve.weak_quality * span) / (gap * span)


def cpt(curve: StrongShareCurve, x: float) -> float:
    """Call-performance threshold: the smallest strong-call share (0..1) at which quality
    reaches weak + x (strong - weak), interpolating linearly between sweep points. Equals
    RouteLLM's np.interp figure when quality rises monotonically with the share."""
    if not 0.0 <= x <= 1.0:
        raise DatasetError(f"x is a fraction of the gap in [0, 1], got {x}")
    target = curve.weak_quality + x * _gap(curve)
    q, sh = curve.qualities, curve.shares
    k = int(np.flatnonzero(q >= target - _TOL)[0])  # share 1.0 reaches strong, so k exists
    if k == 0 or q[k] - q[k - 1] <= 0.0:
        return float(sh[k])
    return float(sh[k - 1] + (target - q[k - 1]) * (sh[k] - sh[k - 1]) / (q[k] - q[k - 1]))


@dataclass(frozen=True, eq=False)
class Summary:
    """The figures `satisfice eval --json` reports for one router curve."""

    n: int
    models: list[str]
    curve: Curve
    singles: list[ModelPoint]
    oracle: Point
    aiq: float
    random_aiq: float
    best_single: ModelPoint
    cost_at_best_quality: float | None
    cost_at_95pct_best_quality: float | None
    share_curve: StrongShareCurve | None = None

    @property
    def max_cost(self) -> float:
        """The cost scale its AIQs share (`aiq`'s max_cost): another AIQ beside them, on
        these prompts, must use it too to be compared."""
        return _aiq_scale(self.curve, self.singles)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; APGR and CPT are null unless a strong-share curve was given."""
        two = self.share_curve
        return {
            "n": self.n,
            "models": list(self.models),
            "aiq": self.aiq,
            "random_aiq": self.random_aiq,
            "apgr": None if two is None else apgr(two),
            "cpt50": None if two is None else cpt(two, 0.5),
            "cpt80": None if two is None else cpt(two, 0.8),
            "best_single": {
                "model": self.best_single.model,
                "quality": self.best_single.quality,
                "cost": self.best_single.cost,
            },
            "oracle": {"quality": self.oracle.quality, "cost": self.oracle.cost},
            "singles": [
                {"model": p.model, "quality": p.quality, "cost": p.cost} for p in self.singles
            ],
            "cost_at_best_quality": self.cost_at_best_quality,
            "cost_at_95pct_best_quality": self.cost_at_95pct_best_quality,
            "curve": [{"cost": p.cost, "quality": p.quality} for p in self.curve.points()],
        }


def _aiq_scale(curve: Curve, singles: Sequence[ModelPoint]) -> float:
    """The largest cost of a router's curve and the single models: one AIQ scale for all."""
    return max(float(curve.costs.max()), max(p.cost for p in singles))


def summarize(
    curve: Curve,
    models: Sequence[str],
    scores: np.ndarray,
    costs: np.ndarray,
    share_curve: StrongShareCurve | None = None,
) -> Summary:
    """Compare a router's curve with the single models, random routing and the oracle on
    the same prompts. AIQs use one scale: the largest cost of the curve and single models."""
    singles = single_models(models, scores, costs)
    best = best_single(singles)
    max_cost = _aiq_scale(curve, singles)
    return Summary(
        n=int(np.asarray(scores).shape[0]),
        models=list(models),
        curve=curve,
        singles=singles,
        oracle=oracle(scores, costs),
        aiq=aiq(curve.costs, curve.qualities, max_cost),
        random_aiq=aiq([p.cost for p in singles], [p.quality for p in singles], max_cost),
        best_single=best,
        cost_at_best_quality=cost_to_reach(curve, best.quality),
        cost_at_95pct_best_quality=cost_to_reach(curve, 0.95 * best.quality),
        share_curve=share_curve,
    )
