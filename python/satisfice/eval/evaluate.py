"""What `satisfice eval` computes: honest train/test splits, predictions, and the figures.

A router is scored on rows it was never trained on: with a split of the same files (by
prompt hash or by group), with separate training files (test rows whose prompt text also
occurs in training are dropped), or against a saved predictor whose training prompts are
recorded in a Bloom filter (`membership.py`) and dropped from the test rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from ..errors import DatasetError
from ..predict import ModelParams, QualityModel
from ..registry import Registry
from . import metrics as M
from . import train as T
from ._set import OutcomeSet
from .membership import PromptFilter, prompt_key

__all__ = [
    "EvalReport",
    "SplitSpec",
    "evaluate_predictor",
    "exclude_trained_rows",
    "feedback_note",
    "params_for_models",
    "parse_split",
    "shipped_predictor",
    "split_data",
]


@dataclass(frozen=True)
class SplitSpec:
    """`hash:FRACTION[:SEED]`, `group:G1,G2,...` or `fold:K/N` (every N-th group from K)."""

    method: str
    fraction: float = 0.3
    seed: int = 0
    groups: tuple[str, ...] = ()
    fold: tuple[int, int] = (0, 1)

    def describe(self) -> dict[str, Any]:
        if self.method == "hash":
            return {"method": "prompt hash", "test_fraction": self.fraction, "seed": self.seed}
        if self.method == "fold":
            return {"method": "group fold", "fold": f"{self.fold[0]}/{self.fold[1]}"}
        return {"method": "groups", "test_groups": list(self.groups)}


def parse_split(tokens: Sequence[str]) -> SplitSpec:
    """Parse `--test-split` (one or more tokens; extra tokens are more group names)."""
    if not tokens:
        raise DatasetError("--test-split needs a value: hash:0.3, group:NAME,... or fold:0/3")
    head, _, rest = tokens[0].partition(":")
    more = [t for tok in tokens[1:] for t in tok.split(",") if t]
    if head == "hash":
        parts = rest.split(":") if rest else ["0.3"]
        try:
            frac = float(parts[0])
            seed = int(parts[1]) if len(parts) > 1 else 0
        except ValueError:
            raise DatasetError(f"--test-split {tokens[0]!r}: use hash:FRACTION[:SEED]") from None
        if not 0.0 < frac < 1.0 or len(parts) > 2 or more:
            raise DatasetError(f"--test-split {tokens[0]!r}: FRACTION must be in (0, 1)")
        return SplitSpec("hash", fraction=frac, seed=seed)
    if head == "fold":
        k, _, n = rest.partition("/")
        try:
            fold = (int(k), int(n))
        except ValueError:
            raise DatasetError(f"--test-split {tokens[0]!r}: use fold:K/N, e.g. fold:0/3") from None
        if not 0 <= fold[0] < fold[1]:
            raise DatasetError(f"--test-split {tokens[0]!r}: need 0 <= K < N")
        return SplitSpec("fold", fold=fold)
    if head == "group":
        groups = tuple(g for g in [*rest.split(","), *more] if g)
        if not groups:
            raise DatasetError("--test-split group: name at least one group (subject, eval_name)")
        return SplitSpec("group", groups=groups)
    raise DatasetError(
        f"--test-split {tokens[0]!r}: unknown method; use hash:0.3[:SEED], group:A,B or fold:K/N"
    )


@dataclass(frozen=True, eq=False)
class Split:
    train: list[OutcomeSet]  # empty: score a saved predictor; several may have other models
    test: OutcomeSet
    info: dict[str, Any]


def _drop_seen(test: OutcomeSet, seen: Callable[[Sequence[str]], np.ndarray]) -> OutcomeSet:
    mask = seen(test.prompts)
    return test.subset(~mask) if mask.any() else test


def split_data(
    data: OutcomeSet, spec: SplitSpec | None, extra_train: Sequence[OutcomeSet] = ()
) -> Split:
    """(train, test) from the files to evaluate, their split and any extra training files.

    Test rows whose prompt is among the training rows are dropped (datasets repeat prompts
    across groups and files), so no figure is ever measured on a training prompt: compared
    by `prompt_key` (a copy with other whitespace is the same prompt).
    """
    info: dict[str, Any] = {}
    if spec is None:
        train_parts: list[OutcomeSet] = list(extra_train)
        test = data
        info["method"] = "separate training files" if extra_train else "none (saved predictor)"
    else:
        info.update(spec.describe())
        if spec.method == "hash":
            tr, test = data.split_by_hash(spec.fraction, spec.seed)
        else:
            groups = sorted(set(data.groups))
            if spec.method == "fold":
                k, n = spec.fold
                chosen = groups[k::n]
                if not chosen:
                    raise DatasetError(f"fold {k}/{n}: the data has only {len(groups)} groups")
                info["test_groups"] = chosen
            else:
                chosen = list(spec.groups)
            tr, test = data.split_by_group(chosen)
        train_parts = [tr, *extra_train]
    if train_parts:
        train_parts = [t for t in train_parts if len(t)]
        if not train_parts:
            raise DatasetError("the split leaves no training rows; choose a smaller test part")
        seen = {prompt_key(p) for t in train_parts for p in t.prompts}
        before = len(test)
        test = _drop_seen(
            test, lambda ps: np.fromiter((prompt_key(p) in seen for p in ps), np.bool_, len(ps))
        )
        info["test_rows_dropped_as_seen_in_training"] = before - len(test)
        info["n_train"] = sum(len(t) for t in train_parts)
    if not len(test):
        why = (
            "every test prompt also occurs in the training data"
            if info.get("test_rows_dropped_as_seen_in_training")
            else "the split puts no row in the test part; choose a larger test part"
        )
        raise DatasetError(f"no test rows left: {why}")
    info["n_test"] = len(test)
    return Split(train_parts, test, info)


#: The predictor trained on the public outcome data (scripts/train_default_predictor.py).
SHIPPED = "data/benchmark_predictor.npz"


def shipped_predictor() -> QualityModel:
    """The predictor `satisfice eval` scores when not told to train: the one trained on the
    public benchmark outcomes and shipped with satisfice (else the bundled one).

    It is not the router's default: trained on benchmark prompts only, it ranks everyday
    prompts (greetings, chit-chat) as hard as an average benchmark item; see README.
    """
    res = resources.files("satisfice").joinpath(SHIPPED)
    if res.is_file():
        with resources.as_file(res) as path:
            return QualityModel.load(path)
    return QualityModel.bundled()


def exclude_trained_rows(test: OutcomeSet, qm: QualityModel) -> tuple[OutcomeSet, int]:
    """Drop rows whose prompt the predictor was trained on (if it records them). Prompts
    that feedback refined it on are not recorded: `feedback_note` says so."""
    filt = PromptFilter.from_meta(qm.meta)
    if filt is None:
        return test, 0
    mask = filt.mask(test.prompts)
    if mask.all():
        raise DatasetError(
            f"all {len(test)} rows were used to train predictor {qm.name!r}, so scoring it "
            f"on them would be in-sample; evaluate on other data, or train and test on "
            f"disjoint parts with --train FILES --test-split hash:0.3 (or fold:0/3)"
        )
    return (test.subset(~mask) if mask.any() else test), int(mask.sum())


def feedback_note(qm: QualityModel) -> str | None:
    """A note for an evaluation of a predictor that feedback refined after its fit: the
    feedback log keeps no prompt text, so `exclude_trained_rows` cannot drop those prompts
    (None when no feedback is recorded)."""
    n = qm.feedback_since_fit()
    if n is None:
        return None
    return (
        f"predictor {qm.name!r} was refined by {n} feedback observation(s) after it was "
        "fitted, on prompts it does not record: test rows among them could not be excluded "
        "and are scored in-sample; evaluate the predictor as fitted (before feedback) for an "
        "out-of-sample figure"
    )


def params_for_models(
    qm: QualityModel, models: Sequence[str], registry: Registry | None = None
) -> dict[str, ModelParams]:
    """Each model's parameters: trained, else seeded from the registry's quality prior."""
    out: dict[str, ModelParams] = {}
    unknown = []
    for m in models:
        if m in qm.models:
            out[m] = qm.models[m]
            continue
        reg = registry if registry is not None else Registry.default()
        if m in reg.ids:
            out[m] = qm.params_for(reg[m])
        else:
            unknown.append(m)
    if unknown:
        raise DatasetError(
            f"predictor {qm.name!r} has no parameters for {unknown} and the registry does not "
            f"know them either; train on data with these models (--train FILES, or "
            f"--test-split hash:0.3 to train on part of the same files)"
        )
    return out


@dataclass(frozen=True, eq=False)
class EvalReport:
    summary: M.Summary
    curve_params: np.ndarray
    random_quality: list[float | None]
    weak_strong: tuple[str, str] | None
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = self.summary.to_dict()
        for point, lam, rnd in zip(
            out["curve"], self.curve_params.tolist(), self.random_quality, strict=True
        ):
            point["lambda"] = None if math.isinf(lam) else lam
            point["random_quality"] = rnd
        singles = self.summary.singles
        out["random"] = {
            "aiq": self.summary.random_aiq,
            "apgr": 0.5 if self.weak_strong else None,
            "cpt50": 0.5 if self.weak_strong else None,
            "cpt80": 0.8 if self.weak_strong else None,
        }
        best = self.summary.best_single
        for key in ("cost_at_best_quality", "cost_at_95pct_best_quality"):
            v = out[key]
            # (no share of a free best model's cost: it had failed the run, dividing by 0)
            share = None if v is None or not best.cost > 0 else v / best.cost
            out[key.replace("cost_at", "cost_share_at")] = share
        out["weak_strong"] = list(self.weak_strong) if self.weak_strong else None
        out["single_models"] = out.pop("singles")
        if singles:
            out["cheapest_single"] = min(out["single_models"], key=lambda s: s["cost"])
        out["notes"] = list(self.notes)
        out.update(self.info)
        return out


def _weak_strong(data: OutcomeSet) -> tuple[int, int] | None:
    """(weak, strong) column indices for two-model data: strong is the pricier model."""
    if len(data.models) != 2:
        return None
    mean_cost = data.costs.mean(axis=0)
    strong = int(np.argmax(mean_cost))
    return 1 - strong, strong


def evaluate_predictor(
    test: OutcomeSet,
    pred: np.ndarray,
    decision_costs: np.ndarray,
    *,
    label: str = "router",
    n_quantiles: int = 10,
) -> EvalReport:
    """Sweep lambda over `pred` (n, m P(good)) and compare with the baselines on `test`."""
    curve = M.sweep_lambda(pred, decision_costs, test.scores, test.costs, label=label)
    notes: list[str] = []
    share = None
    ws = _weak_strong(test)
    pair: tuple[str, str] | None = None
    if ws is not None:
        w, s = ws
        pair = (test.models[w], test.models[s])
        if test.scores[:, s].mean() > test.scores[:, w].mean():
            # RouteLLM's router score: how much more likely the strong model is to be right.
            share = M.strong_share_curve(
                pred[:, s] - pred[:, w], test.scores[:, w], test.scores[:, s], n_quantiles
            )
        else:
            notes.append(
                f"APGR/CPT undefined: the pricier model {pair[1]} is not better than "
                f"{pair[0]} on these rows"
            )
            pair = None
    summary = M.summarize(curve, test.models, test.scores, test.costs, share)
    costs = [p.cost for p in summary.singles]
    if max(costs) - min(costs) <= 1e-12 * max(max(costs), 1e-12):
        notes.append(
            "AIQ is 0 for every router here: the models cost the same per request, so there "
            "is no cost range to integrate quality over; compare the qualities instead"
        )
    rnd = [M.random_routing_quality(summary.singles, c) for c in curve.costs.tolist()]
    return EvalReport(summary, curve.params, rnd, pair, notes)


def predict_for(
    qm: QualityModel,
    test: OutcomeSet,
    registry: Registry | None = None,
    features: np.ndarray | None = None,
) -> np.ndarray:
    params = params_for_models(qm, test.models, registry)
    extra: Mapping[str, ModelParams] = {m: p for m, p in params.items() if m not in qm.models}
    return T.predict(qm, test, extra=extra, features=features)


def decision_costs(train: Sequence[OutcomeSet], test: OutcomeSet) -> tuple[np.ndarray, str]:
    """What the router believes each call costs before making it (a per-model line in
    prompt tokens), fitted on training rows when they have every test model's costs."""
    for part in train:
        if set(test.models) <= set(part.models):
            sub = part.select_models(test.models)
            if not np.isnan(sub.costs).all(axis=0).any():
                return T.fit_cost_model(sub).estimate(test), "fitted on the training rows"
    return _cross_fitted(test)


_IN_SAMPLE = (
    "fitted on all the test rows' recorded costs, each row's own included ({why}; no "
    "training rows had them): the decision costs are in-sample"
)


def _cross_fitted(test: OutcomeSet) -> tuple[np.ndarray, str]:
    """Decision costs for `test` with no row's estimate fitted on its own recorded cost (its
    answer's length, which the router cannot know before the call): each half of the rows is
    estimated by a line fitted on the other half. Where the rows cannot be halved, the line
    of all of them, and the note says so."""
    odd = np.arange(len(test)) % 2 == 1
    if odd.sum() < 2 or (~odd).sum() < 2:
        why = "too few rows to halve"
        return T.fit_cost_model(test).estimate(test), _IN_SAMPLE.format(why=why)
    out = np.empty((len(test), len(test.models)))
    for fit in (odd, ~odd):
        try:
            line = T.fit_cost_model(test.subset(fit))
        except DatasetError:
            why = "a model has recorded costs in one half of the rows only"
            return T.fit_cost_model(test).estimate(test), _IN_SAMPLE.format(why=why)
        out[~fit] = line.estimate(test.subset(~fit))
    return out, (
        "cross-fitted on the test rows' recorded costs: each half's from the other half (no "
        "training rows had them)"
    )
