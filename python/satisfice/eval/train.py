"""Train the item-response quality predictor of `satisfice.predict` on outcome data.

The model (see `satisfice.predict`), for a prompt with Featurizer vector x and a model m:

    [e(x), d(x)] = W x + c
    P(good | m, x) = sigmoid(bias_m + ability_m . e(x) - d(x))

is fitted by full-batch Adam on the cross-entropy between predicted P(good) and the
recorded scores (fractional scores are soft labels), over every (prompt, model) pair that
has an outcome: several data sets with different model lists train one predictor, and NaN
outcomes are simply not observed. numpy only; the result is a `QualityModel` that the Rust
DispatchTable evaluates exactly.

Dense features are standardised while training (the scaling is folded back into W and c on
export); the hashed n-gram block gets a stronger L2 penalty than the dense block because
n-grams identify topics, and a router must generalise to topics it has not seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .. import _core
from ..errors import DatasetError
from ..feedback import fisher_moments
from ..predict import ModelParams, QualityModel, floats32, logit, sigmoid
from ._set import OutcomeSet
from .membership import META_KEY, PromptFilter

__all__ = [
    "CostModel",
    "TrainConfig",
    "featurize",
    "fit",
    "fit_cost_model",
    "predict",
]

DENSE = _core.DENSE  # named dense features ahead of the hashed block
MIN_SCALE = 0.02  # smallest standard deviation a dense feature is divided by

Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults are the ones the README figures were measured with."""

    k: int = 4  # skill dimensions e(x); difficulty d(x) is one more
    steps: int = 400
    learning_rate: float = 0.05
    l2_dense: float = 1e-4  # on W's dense rows (standardised features)
    l2_hashed: float = 3e-3  # on W's hashed n-gram rows
    l2_model: float = 1e-3  # on abilities
    # Dense features only by default: hashed n-grams (e.g. 1024 buckets) mostly name topics,
    # added nothing on held-out subjects or benchmarks of the shared data, and train 30x slower.
    hash_buckets: int = 0
    seed: int = 0  # initialisation only; the Featurizer's hash seed is its own
    # Rows off a dense feature's median needed to learn its weight: at least this many...
    min_support: int = 20
    # ...and this share of the rows (a rare pattern, e.g. a script seen in 0.5% of benchmark
    # prompts, otherwise gets a weight that dominates the prompts where it is common).
    min_support_share: float = 0.01
    # A per-model logistic on the static embedding (`_core.embed`), its logit averaged with
    # the IRT one: helped on MMLU subjects, GSM8K and LLMRouter; see README "Routing quality".
    embedding: bool = True
    name: str = "trained"

    def __post_init__(self) -> None:
        if (
            self.k < 1
            or self.steps < 1
            or self.hash_buckets < 0
            or self.min_support < 1
            or not 0.0 <= self.min_support_share < 1.0
        ):
            raise DatasetError(
                "TrainConfig needs k >= 1, steps >= 1, hash_buckets >= 0 and min_support >= 1"
            )


def featurize(prompts: Sequence[str], hash_buckets: int = 1024) -> np.ndarray:
    """(n, 32 + hash_buckets) float32 features, in one call into the Rust core."""
    out: np.ndarray = _core.Featurizer(hash_buckets).featurize_batch(list(prompts))
    return out


@dataclass(frozen=True, eq=False)
class _Problem:
    x: np.ndarray  # (n, dim) float32
    y: np.ndarray  # (n, M) float32, 0 where unobserved
    observed: np.ndarray  # (n, M) bool
    models: list[str]


def _stack(sets: Sequence[OutcomeSet], hash_buckets: int) -> _Problem:
    models = list(dict.fromkeys(m for s in sets for m in s.models))
    col = {m: j for j, m in enumerate(models)}
    n = sum(len(s) for s in sets)
    y = np.full((n, len(models)), np.nan, dtype=np.float64)
    start = 0
    for s in sets:
        cols = [col[m] for m in s.models]
        y[start : start + len(s), cols] = s.scores
        start += len(s)
    observed = ~np.isnan(y)
    if not observed.any():
        raise DatasetError("no outcomes to train on: every score is missing")
    x = featurize([p for s in sets for p in s.prompts], hash_buckets)
    return _Problem(x, np.where(observed, y, 0.0).astype(np.float32), observed, models)


class _Adam:
    def __init__(self, shapes: Sequence[tuple[int, ...]], lr: float) -> None:
        self.lr, self.t = lr, 0
        self.m = [np.zeros(s, dtype=np.float32) for s in shapes]
        self.v = [np.zeros(s, dtype=np.float32) for s in shapes]

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        self.t += 1
        b1, b2 = 0.9, 0.999
        scale = self.lr * math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for p, g, m, v in zip(params, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= scale * m / (np.sqrt(v) + 1e-8)


def _fit_prior_map(bias: Mapping[str, float], quality: Mapping[str, float]) -> tuple[float, float]:
    """Least-squares bias ~ a * logit(quality) + b over models that have both."""
    common = [m for m in bias if m in quality]
    if len(common) < 2:
        return (1.0, 0.0)
    q = np.array([logit(quality[m]) for m in common])
    b = np.array([bias[m] for m in common])
    if np.ptp(q) < 1e-6:
        return (1.0, float(np.mean(b - q)))
    a, c = np.polyfit(q, b, 1)
    return (float(a), float(c))


def fit(
    data: OutcomeSet | Sequence[OutcomeSet],
    config: TrainConfig | None = None,
    *,
    priors: Mapping[str, float] | None = None,
    progress: Progress | None = None,
) -> QualityModel:
    """Fit a QualityModel on one or more outcome sets (their model lists may differ).

    `priors` maps model ids to a prior P(good) (e.g. a public benchmark score, as in the
    registry's `quality.general`); the predictor stores the line from logit(prior) to the
    fitted bias so that a model it never saw is seeded from its prior. Without `priors`, each
    model's mean score in the training data stands in. `progress(step, steps, loss)` is
    called every 20 steps and at the end.
    """
    cfg = config or TrainConfig()
    sets = [data] if isinstance(data, OutcomeSet) else list(data)
    if not sets or not any(len(s) for s in sets):
        raise DatasetError("no training rows: pass at least one non-empty outcome set")
    prob = _stack(sets, cfg.hash_buckets)
    x, y, obs = prob.x, prob.y, prob.observed
    n, dim = x.shape
    n_models, k = len(prob.models), cfg.k

    # Standardise the dense block (in float64: float32 rounding makes a constant column look
    # slightly varying, and dividing by that noise gave weights in the hundreds). Columns
    # that too few rows move away from their median are not learned at all: a weight fitted
    # on a handful of rows, or on a column that never varies here (turns, scripts), would
    # extrapolate wildly on the prompts a router sees later. The scale is floored at
    # MIN_SCALE (features are built to span about 0..1) for the same reason.
    dense = x[:, :DENSE].astype(np.float64)
    support = (np.abs(dense - np.median(dense, axis=0)) > 1e-6).sum(axis=0)
    varying = support >= max(cfg.min_support, cfg.min_support_share * n)
    mu = np.zeros(dim, dtype=np.float32)
    sd = np.ones(dim, dtype=np.float32)
    mu[:DENSE][varying] = dense.mean(axis=0)[varying]
    sd[:DENSE][varying] = np.maximum(dense.std(axis=0), MIN_SCALE)[varying]
    xs = ((x - mu) / sd).astype(np.float32)
    xs[:, :DENSE][:, ~varying] = 0.0  # the intercept carries what constant columns would

    rng = np.random.default_rng(cfg.seed)
    w = (rng.standard_normal((dim, k + 1)) * 0.01).astype(np.float32)
    c = np.zeros(k + 1, dtype=np.float32)
    mean_score = np.array(
        [y[obs[:, j], j].mean() if obs[:, j].any() else 0.5 for j in range(n_models)]
    )
    bias = np.array([logit(float(q)) for q in mean_score], dtype=np.float32)
    ability = (rng.standard_normal((n_models, k)) * 0.1).astype(np.float32)
    l2_rows = np.full((dim, 1), cfg.l2_hashed, dtype=np.float32)
    l2_rows[:DENSE] = cfg.l2_dense

    n_obs = float(obs.sum())
    if not n_obs:  # (every gradient had been 0/0: a predictor of NaNs, or of no model)
        raise DatasetError("no training row holds an observed score: nothing to fit")
    opt = _Adam([w.shape, c.shape, bias.shape, ability.shape], cfg.learning_rate)
    loss = float("nan")
    for step in range(1, cfg.steps + 1):
        z = xs @ w + c
        e, d = z[:, :k], z[:, k]
        logits = e @ ability.T + bias[None, :] - d[:, None]
        # e^-logits past float32's range is inf, and p its limit 0: no warning (one prompt
        # much longer than the rest had printed "overflow encountered in exp" 32 times)
        with np.errstate(over="ignore"):
            p = 1.0 / (1.0 + np.exp(-logits))
        g = np.where(obs, p - y, 0.0).astype(np.float32) / n_obs  # d loss / d logits
        grad_e = g @ ability
        grad_d = -g.sum(axis=1)
        grad_z = np.concatenate([grad_e, grad_d[:, None]], axis=1)
        grads = [
            xs.T @ grad_z + 2.0 * l2_rows * w,
            grad_z.sum(axis=0),
            g.sum(axis=0),
            g.T @ e + 2.0 * cfg.l2_model * ability,
        ]
        opt.step([w, c, bias, ability], grads)
        if progress is not None and (step % 20 == 0 or step == cfg.steps):
            eps = 1e-7
            ce = -(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
            loss = float(ce[obs].mean())
            progress(step, cfg.steps, loss)

    # Fold the standardisation back: (x - mu) / sd @ w + c == x @ (w / sd) + (c - (mu / sd) @ w).
    w_dense = w.copy()
    w_dense[:DENSE][~varying] = 0.0
    w_export = (w_dense / sd[:, None]).astype(np.float32)
    c_export = (c - (mu / sd) @ w_dense).astype(np.float32)

    # What feedback needs to weigh one new observation against the training evidence
    # (satisfice.feedback): the second moments of [1, e(x)] and the mean curvature p(1 - p).
    z = xs @ w + c
    logits = z[:, :k] @ ability.T + bias[None, :] - z[:, k : k + 1]
    fisher = fisher_moments(z[:, :k], sigmoid(logits), obs)
    prompts = [text for part in sets for text in part.prompts]

    counts = obs.sum(axis=0)
    emb = (
        fit_embedding_logistic(_core.embed_batch(prompts), np.where(obs, y, np.nan))
        if cfg.embedding
        else [None] * len(prob.models)
    )
    # only the models some training row observes: one with no outcome here had been kept
    # as "trained" from nothing (n_obs 0, its bias the 0.5 it started at, in place of its
    # prior) and pulled the prior map toward that 0.5; unseen, it is seeded from its prior
    params = {
        m: ModelParams(
            float(bias[j]),
            tuple(float(a) for a in ability[j]),
            float(counts[j]),
            "trained",
            emb[j],
        )
        for j, m in enumerate(prob.models)
        if counts[j]
    }
    seen_quality = {m: float(mean_score[j]) for j, m in enumerate(prob.models) if counts[j]}
    prior_map = _fit_prior_map(
        {m: p.bias for m, p in params.items()}, priors if priors else seen_quality
    )
    return QualityModel(
        name=cfg.name,
        k=k,
        hash_buckets=cfg.hash_buckets,
        seed=_core.Featurizer(cfg.hash_buckets).seed,
        w=floats32(w_export),
        c=floats32(c_export),
        models=params,
        prior_map=prior_map,
        meta={
            "trained_on_rows": int(n),
            "trained_on_outcomes": int(n_obs),
            "final_loss": loss,
            "config": {
                "k": cfg.k,
                "steps": cfg.steps,
                "learning_rate": cfg.learning_rate,
                "l2_dense": cfg.l2_dense,
                "l2_hashed": cfg.l2_hashed,
                "l2_model": cfg.l2_model,
                "hash_buckets": cfg.hash_buckets,
                "min_support": cfg.min_support,
                "min_support_share": cfg.min_support_share,
            },
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "fisher": fisher,
            # Lets `satisfice eval` refuse to score this predictor on its own training rows.
            META_KEY: PromptFilter.build(prompts).to_meta(),
        },
    )


#: L2 strengths the embedding logistic chooses from, by cross-fitted log loss.
EMB_L2 = (1e-4, 1e-3, 1e-2, 1e-1)


def _logistic(u: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """Newton's method for mean soft-label cross-entropy + l2 * |w|^2 (the last column of
    `u` is the intercept, not shrunk). Returns the weights, intercept last."""
    n, d = u.shape
    w = np.zeros(d)
    reg = np.full(d, 2.0 * l2)
    reg[-1] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(u @ w, -30, 30)))
        grad = u.T @ (p - y) / n + reg * w
        hess = (u * (p * (1 - p))[:, None]).T @ u / n + np.diag(reg) + 1e-9 * np.eye(d)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return w


def fit_embedding_logistic(
    embeddings: np.ndarray, scores: np.ndarray, folds: int = 3
) -> list[tuple[float, ...] | None]:
    """Per model (a column of `scores`, NaN = no outcome), an L2 logistic on the standardised
    embedding, its strength chosen from `EMB_L2` by 3-fold cross-fitted log loss; returned
    as 64 weights on embed(x) / 127 and an intercept (the standardisation folded in)."""
    u = embeddings.astype(np.float64) / 127.0
    mu, sd = u.mean(axis=0), u.std(axis=0) + 1e-6
    us = np.c_[(u - mu) / sd, np.ones(len(u))]
    fold = np.arange(len(u)) % folds
    out: list[tuple[float, ...] | None] = []
    for j in range(scores.shape[1]):
        seen = ~np.isnan(scores[:, j])
        if seen.sum() < 20:  # too few outcomes to learn a prompt-level signal
            out.append(None)
            continue
        x, y, f = us[seen], scores[seen, j], fold[seen]
        best, best_ll = EMB_L2[0], np.inf
        for l2 in EMB_L2:
            ll = 0.0
            for k in range(folds):
                w = _logistic(x[f != k], y[f != k], l2)
                p = np.clip(1.0 / (1.0 + np.exp(-(x[f == k] @ w))), 1e-6, 1 - 1e-6)
                yk = y[f == k]
                ll -= float((yk * np.log(p) + (1 - yk) * np.log(1 - p)).sum())
            if ll < best_ll:
                best, best_ll = l2, ll
        w = _logistic(x, y, best)
        v = w[:-1] / sd
        out.append((*(float(a) for a in v), float(w[-1] - (mu / sd) @ w[:-1])))
    return out


def predict(
    model: QualityModel,
    data: OutcomeSet,
    *,
    extra: Mapping[str, ModelParams] | None = None,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """(n, m) predicted P(good) for `data`'s prompts and models.

    Every model must be known to the predictor or given in `extra` (e.g. seeded from a
    registry prior with `model.params_for(spec)`). Pass `features` to reuse a featurisation.
    """
    known = {**model.models, **(extra or {})}
    unknown = [m for m in data.models if m not in known]
    if unknown:
        raise DatasetError(
            f"the predictor has no parameters for {unknown}; train on data that includes "
            f"them (--train) or pass extra={{model: model.params_for(spec)}}"
        )
    x = featurize(data.prompts, model.hash_buckets) if features is None else features
    params = [known[m] for m in data.models]
    emb = _core.embed_batch(data.prompts) if any(p.emb is not None for p in params) else None
    return np.asarray(model.p_good(x, params, emb), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class CostModel:
    """Per-model USD estimate before the call: intercept + slope x prompt tokens.

    Evaluating a router with the recorded costs would let it see the length of answers it
    has not received yet; this is the offline stand-in for the router's own estimate.
    """

    models: list[str]
    intercept: np.ndarray  # (m,)
    per_token: np.ndarray  # (m,)

    def estimate(self, data: OutcomeSet, tokens: np.ndarray | None = None) -> np.ndarray:
        """(n, m) estimated USD per request for `data`'s prompts."""
        missing = [m for m in data.models if m not in self.models]
        if missing:
            raise DatasetError(f"no cost estimate for {missing}; fit the cost model on them")
        t = _tokens(data.prompts) if tokens is None else tokens
        cols = [self.models.index(m) for m in data.models]
        est = self.intercept[cols][None, :] + t[:, None] * self.per_token[cols][None, :]
        out: np.ndarray = np.maximum(est, 0.0)  # a negative intercept must not make calls free
        return out


def _tokens(prompts: Sequence[str]) -> np.ndarray:
    return np.asarray(_core.count_tokens_batch(list(prompts)), dtype=np.float64)


def fit_cost_model(data: OutcomeSet, tokens: np.ndarray | None = None) -> CostModel:
    """Least squares of each model's recorded cost on prompt tokens (rows with a cost)."""
    t = _tokens(data.prompts) if tokens is None else tokens
    design = np.column_stack([np.ones_like(t), t])
    intercept = np.zeros(len(data.models))
    slope = np.zeros(len(data.models))
    for j, m in enumerate(data.models):
        ok = ~np.isnan(data.costs[:, j])
        if not ok.any():
            raise DatasetError(f"model {m!r} has no recorded cost to learn from; attach prices")
        coef, *_ = np.linalg.lstsq(design[ok], data.costs[ok, j], rcond=None)
        intercept[j], slope[j] = coef
    return CostModel(list(data.models), intercept, slope)
