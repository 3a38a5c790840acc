"""Humility: leave the model that is best on average only when the predicted gain is real.

A learned predictor is overconfident about *which* model wins on a prompt: on held-out rows
its switches away from the best single model expect far more than they realise, and on
shifted data they lose. The fix here is one number, chosen on the training rows alone:

- the **anchor** is the model with the best mean score on the training rows (what a user
  could have picked without a router);
- the **margin** (logit units): the router leaves the anchor only where another model's
  predicted logit beats the anchor's by more than the margin. It is the
  smallest margin whose switches did not lose, at full budget, on any cross-fitted fold of the
  training rows (fit on the other folds, scored on this one; folds by group when the rows
  have several groups, the shift that hurts, else by hash). When no margin in the grid is
  safe, the largest is used: at full budget the router then stays on the anchor;
- the **side** the margin goes on: the anchor's logit raised by it, or every other model's
  lowered by it. Both make the same choices at full budget but not at other budgets, where
  the router ranks prompts by differences of P(good): a shift that pushes predictions into a
  flat end of the sigmoid squeezes those differences out. A raised anchor that is right on
  most prompts goes to P(good) ~ 1 (two models, RouteLLM MMLU subject fold 2/3, margin
  0.75: APGR 0.575, against 0.597 with the weaker model lowered); a large margin taken off
  many models sends them all to ~0 (RouterBench, margin 5: AIQ 0.82 on the anchor's side,
  0.74 on the others'). The side is the one that keeps the larger summed slope p(1 - p) of
  the out-of-fold predictions; the anchor's on a tie.

The adjusted predictor is an ordinary QualityModel (biases moved), so serving and
evaluation rank with it through the same Rust table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..predict import ModelParams, QualityModel
from ._set import OutcomeSet
from .membership import prompt_key

__all__ = ["Humility", "choose", "switch_report"]

GRID = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


@dataclass(frozen=True)
class Humility:
    anchor: str
    margin: float
    folds: list[dict[str, Any]]
    side: str = "anchor"  # "anchor": its logit raised by the margin; "others": theirs lowered
    slopes: dict[str, float] | None = None  # the out-of-fold predictions' slope, by side

    def apply(self, qm: QualityModel) -> QualityModel:
        p = qm.models.get(self.anchor)
        if p is None or self.margin == 0:
            return qm
        if self.side == "anchor":
            return qm.with_model(self.anchor, _shifted(p, self.margin))
        out = qm.with_models(
            {m: q if m == self.anchor else _shifted(q, -self.margin) for m, q in qm.models.items()}
        )
        # Models seeded from a registry prior (the prior map's line) are lowered too.
        a, b = qm.prior_map
        object.__setattr__(out, "prior_map", (a, b - self.margin))  # a fresh copy: ours to set
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"anchor": self.anchor, "margin_logit": self.margin, "side": self.side,
                "slope_by_side": self.slopes, "folds": self.folds}  # fmt: skip


def _shifted(p: ModelParams, by: float) -> ModelParams:
    """A model's parameters with its logit moved by `by`: both logits the prediction
    averages (the IRT one and the embedding one) move by it, so the average does too."""
    emb = None if p.emb is None else (*p.emb[:-1], p.emb[-1] + by)
    return p.replace(bias=p.bias + by, emb=emb)


def _stack(parts: Sequence[OutcomeSet], models: Sequence[str]) -> OutcomeSet:
    """The training parts as one set over `models` (NaN where a part lacks a model)."""
    sets = []
    for p in parts:
        scores = np.column_stack([p.scores[:, p.models.index(m)] if m in p.models
                                  else np.full(len(p), np.nan) for m in models])  # fmt: skip
        costs = np.column_stack([p.costs[:, p.models.index(m)] if m in p.models
                                 else np.full(len(p), np.nan) for m in models])  # fmt: skip
        sets.append((p.prompts, scores, costs, p.groups, p.ids))
    return OutcomeSet(
        [x for s in sets for x in s[0]], list(models), np.vstack([s[1] for s in sets]),
        np.vstack([s[2] for s in sets]), [g for s in sets for g in s[3]],
        [i for s in sets for i in s[4]],
    )  # fmt: skip


def anchor_of(train: OutcomeSet) -> str:
    with np.errstate(invalid="ignore"):
        means = np.nanmean(train.scores, axis=0)
    return train.models[int(np.nanargmax(means))]


def _folds(data: OutcomeSet, k: int) -> list[np.ndarray]:
    groups = sorted(set(data.groups))
    if len(groups) >= 2:  # a shift between groups is the one that hurts: fold by group
        k = min(k, len(groups))
        of = {g: i % k for i, g in enumerate(groups)}
        label = np.array([of[g] for g in data.groups])
    else:
        label = np.array([hashlib.blake2b(i.encode(), digest_size=2).digest()[0] % k
                          for i in data.ids])  # fmt: skip
    # Every copy of a prompt (`prompt_key`) in the fold of its first: a log's repeats, under
    # request ids of their own (or in two groups), had been split across folds, so the margin
    # was chosen on held-out rows the fold's fit had trained on.
    first: dict[str, int] = {}
    for row, prompt in enumerate(data.prompts):
        label[row] = label[first.setdefault(prompt_key(prompt), row)]
    return [np.where(label == f)[0] for f in range(k)]


def _logits(pred: np.ndarray) -> np.ndarray:
    z: np.ndarray = np.log(np.clip(pred, 1e-6, 1 - 1e-6) / np.clip(1 - pred, 1e-6, 1))
    return z


def _full_budget_quality(pred: np.ndarray, scores: np.ndarray, anchor: int, margin: float) -> float:
    """Mean score of argmax P(good) with the anchor's logit raised by `margin`."""
    z = _logits(pred)
    z[:, anchor] += margin
    choice = np.argmax(z, axis=1)
    got = scores[np.arange(len(scores)), choice]
    return float(np.nanmean(got))


def _slope(pred: np.ndarray, anchor: int, margin: float, side: str) -> float:
    """Mean over rows of the predictions' summed sigmoid slope p(1 - p) with the margin on
    `side`: how much of the predictor's prompt-to-prompt resolution survives the shift."""
    z = _logits(pred)
    if side == "anchor":
        z[:, anchor] += margin
    else:
        z[:, np.arange(z.shape[1]) != anchor] -= margin
    p = 1.0 / (1.0 + np.exp(-z))
    return float((p * (1.0 - p)).sum(axis=1).mean())


def choose(
    parts: Sequence[OutcomeSet],
    models: Sequence[str],
    fit: Any,
    predict: Any,
    k: int = 3,
) -> Humility:
    """The anchor and the smallest safe margin, by k-fold cross-fitting on the training rows.
    `fit(OutcomeSet) -> QualityModel`; `predict(qm, OutcomeSet) -> (n, m) P(good)`."""
    data = _stack(parts, models)
    anchor = anchor_of(data)
    a = list(models).index(anchor)
    folds = []
    safe = []
    held_out: list[np.ndarray] = []
    for idx in _folds(data, k):
        if len(idx) == 0 or len(idx) == len(data):
            continue
        rest = np.setdiff1d(np.arange(len(data)), idx)
        qm = fit(data.subset(rest))
        held = data.subset(idx)
        pred = predict(qm, held)
        base = float(np.nanmean(held.scores[:, a]))
        gains = {m: _full_budget_quality(pred, held.scores, a, m) - base for m in GRID}
        by_margin = {str(m): round(g, 4) for m, g in gains.items()}
        folds.append({"rows": len(idx), "anchor_quality": round(base, 4),
                      "gain_by_margin": by_margin})  # fmt: skip
        safe.append({m for m, g in gains.items() if g >= 0})
        held_out.append(pred)
    ok = [m for m in GRID if all(m in s for s in safe)]
    margin = ok[0] if ok else GRID[-1]
    side = "anchor"
    slopes: dict[str, float] | None = None
    if margin > 0 and held_out:
        # The side that keeps more of the out-of-fold predictions' slope (every training
        # row's prediction by a predictor not fitted on it); the anchor's on a tie.
        pred_all = np.vstack(held_out)
        slope = {sd: _slope(pred_all, a, margin, sd) for sd in ("anchor", "others")}
        side = "others" if slope["others"] > slope["anchor"] + 1e-12 else "anchor"
        slopes = {sd: round(v, 4) for sd, v in slope.items()}
    return Humility(anchor, margin, folds, side, slopes)


@dataclass(frozen=True)
class Novelty:
    """How unlike the training prompts a prompt is: the mean squared z-score of its dense
    features against the training rows', and the training rows' own 99th percentile of it.
    A prompt past that threshold gets each model's training mean as its P(good): the router
    then ranks models as a user choosing by their averages would, and at full budget keeps
    the anchor."""

    mean: np.ndarray
    scale: np.ndarray
    threshold: float
    marginals: np.ndarray  # per test model, its mean score on the training rows

    @staticmethod
    def fit(parts: Sequence[OutcomeSet], models: Sequence[str], quantile: float = 0.99) -> Novelty:
        from .. import _core

        data = _stack(parts, models)
        f = _core.Featurizer(0)
        x = f.featurize_batch(data.prompts)[:, : _core.DENSE].astype(np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        d = (((x - mean) / scale) ** 2).mean(axis=1)
        with np.errstate(invalid="ignore"):
            marg = np.nanmean(data.scores, axis=0)
        return Novelty(mean, scale, float(np.quantile(d, quantile)), marg)

    def distances(self, prompts: Sequence[str]) -> np.ndarray:
        from .. import _core

        x = _core.Featurizer(0).featurize_batch(list(prompts))[:, : _core.DENSE].astype(np.float64)
        d: np.ndarray = (((x - self.mean) / self.scale) ** 2).mean(axis=1)
        return d

    def apply(self, pred: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, float]:
        far = self.distances(prompts) > self.threshold
        out = pred.copy()
        out[far] = self.marginals
        return out, float(far.mean())


def switch_report(pred: np.ndarray, test: OutcomeSet, anchor: str) -> dict[str, Any]:
    """At full budget (argmax P(good)): the share of prompts moved off the anchor, and the
    predicted vs realised gain of those moves."""
    a = test.models.index(anchor)
    choice = np.argmax(pred, axis=1)
    moved = choice != a
    rows = np.arange(len(test))
    out: dict[str, Any] = {"anchor": anchor, "share_switched": float(moved.mean())}
    if moved.any():
        out["predicted_gain"] = float((pred[rows, choice] - pred[:, a])[moved].mean())
        out["realised_gain"] = float(
            np.nanmean((test.scores[rows, choice] - test.scores[:, a])[moved])
        )
    return out
