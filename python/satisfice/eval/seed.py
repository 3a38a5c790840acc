"""Give registry models parameters in a trained predictor, from their public quality priors.

A predictor trained on benchmark outcomes knows the benchmark's models; the models a user
routes between are usually others. Their parameters come from the registry's `quality`
priors (public benchmark scores per task):

- bias = a * logit(q_general) + b, with (a, b) the trained `prior_map` (fitted on the data
  models whose public scores are known), so a prior lands on the trained logit scale;
- ability on the trained skills = the data models' mean ability;
- one extra skill per task flag (code, math, ...; e(x) = the Featurizer's flag, 0 or 1),
  on which the model's ability is a * (logit q_task - logit q_general): the registry's
  belief that, say, a reasoning model does better on math than its general score says.
  Data models get 0 there, since their per-task differences are already trained in.

The difficulty d(x) and the trained skills stay as trained: those are what transfer.
Feedback (`router.feedback`) then refines every ability from the user's own traffic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import _core
from ..errors import ConfigError
from ..feedback import fisher_moments as feedback_moments
from ..predict import TASK_FLAGS, ModelParams, QualityModel, floats32, logit
from ..registry import Registry

__all__ = ["TASK_FLAGS", "fisher_moments", "seed_registry_models"]


def fisher_moments(qm: QualityModel, features: np.ndarray) -> dict[str, object]:
    """`feedback.fisher_moments` of the models the predictor knows, over `features`."""
    z = qm.latent(features).astype(np.float64)
    # feedback weighs the IRT part of each model
    params = [ModelParams(p.bias, p.ability) for p in qm.models.values()]
    p = qm.p_good(features, params) if params else np.full((z.shape[0], 1), 0.5)
    return feedback_moments(z[:, : qm.k], p)


def seed_registry_models(
    qm: QualityModel,
    registry: Registry,
    *,
    aliases: Mapping[str, str] | None = None,
    features: np.ndarray | None = None,
    tasks: Sequence[str] = tuple(TASK_FLAGS),
) -> QualityModel:
    """`qm` with one skill per task flag added and parameters for every registry model.

    `aliases` maps a registry id to a data model id whose trained parameters it takes
    (the same weights under another name). `features` (training prompts) refreshes the
    moments feedback uses for the enlarged latent.
    """
    names = list(_core.Featurizer.dense_names())
    unknown = [t for t in tasks if t not in TASK_FLAGS]
    if unknown:
        raise ConfigError(f"no task flags known for {unknown}; use {list(TASK_FLAGS)}")
    k, n_t = qm.k, len(tasks)
    flags = np.zeros((qm.dim, n_t), dtype=np.float32)
    for t, task in enumerate(tasks):
        for f in TASK_FLAGS[task]:
            flags[names.index(f), t] = 1.0
    weights = np.concatenate([qm.weights[:, :k], flags, qm.weights[:, k:]], axis=1)
    intercept = np.concatenate(
        [qm.intercept[:k], np.zeros(n_t, dtype=np.float32), qm.intercept[k:]]
    ).astype(np.float32)

    zeros = (0.0,) * n_t
    models: dict[str, ModelParams] = {
        m: ModelParams(p.bias, (*p.ability, *zeros), p.n_obs, p.source, p.emb)
        for m, p in qm.models.items()
    }
    mean_ability = (
        tuple(float(v) for v in np.mean([p.ability for p in qm.models.values()], axis=0))
        if qm.models
        else (0.0,) * k
    )
    a, b = qm.prior_map
    for spec in registry:
        alias = (aliases or {}).get(spec.id)
        if alias is not None:
            if alias not in qm.models:
                raise ConfigError(f"alias {spec.id!r} -> {alias!r}: the predictor lacks it")
            base = models[alias]
            models[spec.id] = ModelParams(
                base.bias, base.ability, base.n_obs, f"trained:{alias}", base.emb
            )
            continue
        g = logit(spec.quality_prior("general"))
        deltas = tuple(a * (logit(spec.quality_prior(t)) - g) for t in tasks)
        models[spec.id] = ModelParams(a * g + b, (*mean_ability, *deltas), 0.0, "prior")
    meta = dict(qm.meta)
    meta["task_skills"] = list(tasks)
    meta["registry_seeded"] = [s.id for s in registry]
    out = QualityModel(
        qm.name,
        k + n_t,
        qm.hash_buckets,
        qm.seed,
        floats32(weights),
        floats32(np.asarray(intercept)),
        models,
        qm.prior_map,
        qm.feature_version,
        meta,
    )
    if features is not None:
        meta["fisher"] = fisher_moments(out, features)
    return out
