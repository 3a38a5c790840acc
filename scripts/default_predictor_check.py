"""Why `Router()` still routes with the hand-set prior, not a trained predictor (issue 14, item 6).

    SATISFICE_DATA_DIR=../shared/data python scripts/default_predictor_check.py [--seeds 3]

The condition for making a trained predictor the default: on the 20 demo prompts it must not
cost more than the prior, and must send code, math and reasoning prompts to models no less
capable (by the registry's prior for the prompt's task) than the prior does. Three candidates:

- prior: `QualityModel.prior()`, the default (length and task markers, registry priors);
- trained: the benchmark predictor shipped for `satisfice eval` (data/benchmark_predictor.npz);
- prior + trained difficulty: the prior's level and task abilities, plus the trained
  predictor's prompt-specific difficulty relative to the average training prompt (its learned
  skills with the data models' mean ability, minus its difficulty; both centred on the
  training prompts), which leaves the level to the prior and the ranking of prompts to the
  learned model.

Part 2 asks whether the learned difficulty is a real signal where it was learned: on each
shared data set, 30% of prompts held out by hash (3 seeds), the AUC of each data model's
held-out outcomes by its training average plus (a) the prior's difficulty, (b) the trained
difficulty (refitted on the training part only).

Part 3 asks whether a novelty test would hand everyday prompts back to the prior: the
dense-feature distance `eval` uses (`humble.Novelty`) and the static embedding's cosine
distance to the nearest of 64 k-means centroids of the training prompts, each against the
training prompts' own percentiles.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib import resources
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_default_predictor import PUBLIC_MMLU, load_all

from satisfice import Policy, Router
from satisfice.eval import train as T
from satisfice.eval.evaluate import shipped_predictor
from satisfice.predict import ModelParams, QualityModel

LEARNED = 4  # the trained skills of the shipped predictor (the rest are the seeded task flags)
HARD = ("code", "math", "reasoning")


def centred_deviation(trained: QualityModel, features: np.ndarray) -> tuple[np.ndarray, float]:
    """The training prompts' mean learned skills and difficulty (what "average" means)."""
    z = trained.latent(features)
    return z[:, :LEARNED].mean(axis=0), float(z[:, trained.k].mean())


def prior_plus_difficulty(trained: QualityModel, features: np.ndarray) -> QualityModel:
    prior = QualityModel.prior()
    ebar, dbar = centred_deviation(trained, features)
    kp, kt = prior.k, trained.k
    w = np.concatenate(
        [
            prior.weights[:, :kp],
            trained.weights[:, :LEARNED],
            (prior.weights[:, kp] + trained.weights[:, kt])[:, None],
        ],
        axis=1,
    )
    c = np.concatenate(
        [
            prior.intercept[:kp],
            trained.intercept[:LEARNED] - ebar,
            [prior.intercept[kp] + trained.intercept[kt] - dbar],
        ]
    )
    data = [p.ability[:LEARNED] for p in trained.models.values() if p.source == "trained"]
    mean_ab = tuple(float(v) for v in np.mean(data, axis=0))
    models = {}
    for spec in Router().registry:
        p = prior.prior_params(spec)
        models[spec.id] = ModelParams(p.bias, (*p.ability, *mean_ab), 0.0, "prior")
    return QualityModel(
        "prior+trained-difficulty", kp + LEARNED, 0, 0, w.astype(np.float32),
        c.astype(np.float32), models,
    )  # fmt: skip


def demo(candidates: dict[str, QualityModel]) -> None:
    prompts = json.loads(
        resources.files("satisfice").joinpath("data/demo_prompts.json").read_text("utf-8")
    )
    routers = {n: Router(policy=Policy(quality=q)) for n, q in candidates.items()}
    registry = routers["prior"].registry
    print("## The demo prompts\n")
    print("| predictor | est. USD, 20 prompts | code/math/reasoning prompts sent to a model "
          "the registry rates lower for the task than the prior's choice |")  # fmt: skip
    print("|---|---:|---|")
    base = {p: routers["prior"].route(p) for p in prompts}
    for name, r in routers.items():
        total, worse = 0.0, []
        for p in prompts:
            d = r.route(p)
            total += d.est_cost_usd or 0.0
            b = base[p]
            if d.task in HARD:
                q, qb = (registry[m].quality_prior(d.task) for m in (d.model, b.model))
                if q < qb:
                    worse.append(f"{p[:28]!r}: {d.model} {q:.2f} < {b.model} {qb:.2f}")
        print(f"| {name} | {total:.4f} | {len(worse)}: {'; '.join(worse) or '—'} |")


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted half."""
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ss = s[order]
    i = 0
    while i < len(ss):  # average ranks over ties
        j = i
        while j + 1 < len(ss) and ss[j + 1] == ss[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n1 = y.sum()
    n0 = len(y) - n1
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def held_out(sets: list, names: list[str], seeds: int) -> None:
    prior = QualityModel.prior()
    print("\n## Held-out AUC of each data model's outcomes (hash 0.3, mean ± sd over seeds)\n")
    print("| data | prior's difficulty | trained difficulty (fitted on the training part) |")
    print("|---|---:|---:|")
    res: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for seed in range(seeds):
        parts = [s.split_by_hash(0.3, seed) for s in sets]
        qm = T.fit([a for a, _ in parts], T.TrainConfig(embedding=False), priors=PUBLIC_MMLU)
        mean_ab = np.mean([p.ability for p in qm.models.values()], axis=0)
        for name, (_, test) in zip(names, parts, strict=True):
            x = T.featurize(test.prompts, 0)
            z = qm.latent(x)
            learned = z[:, : qm.k] @ mean_ab - z[:, qm.k]
            by_prior = -prior.latent(x)[:, prior.k]
            a_p, a_t = [], []
            for j in range(len(test.models)):
                y = test.scores[:, j]
                ok = ~np.isnan(y)
                good = (y[ok] >= 0.5).astype(float)
                if 0 < good.sum() < len(good):
                    a_p.append(auc(good, by_prior[ok]))
                    a_t.append(auc(good, learned[ok]))
            res[name].append((float(np.mean(a_p)), float(np.mean(a_t))))
    for name, v in res.items():
        a = np.array(v)
        print(f"| {name} | {a[:, 0].mean():.3f} ± {a[:, 0].std():.3f} "
              f"| {a[:, 1].mean():.3f} ± {a[:, 1].std():.3f} |")  # fmt: skip


def kmeans(x: np.ndarray, k: int, rounds: int = 30) -> np.ndarray:
    """Spherical k-means (unit rows, cosine), seeded: centroids (k, dim)."""
    rng = np.random.default_rng(0)
    c = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(rounds):
        near = (x @ c.T).argmax(axis=1)
        for j in range(k):
            if (near == j).any():
                m = x[near == j].mean(axis=0)
                c[j] = m / (np.linalg.norm(m) + 1e-12)
    return c


def novelty(sets: list) -> None:
    from satisfice import _core
    from satisfice.eval.humble import Novelty

    prompts = json.loads(
        resources.files("satisfice").joinpath("data/demo_prompts.json").read_text("utf-8")
    )
    train = [p for s in sets for p in s.prompts]
    dense = Novelty.fit(sets, sets[0].models)
    d_train = dense.distances(train)

    def unit(ps: list[str]) -> np.ndarray:
        return np.asarray(_core.embed_batch(ps)).reshape(len(ps), -1).astype(np.float64) / 127

    e_train = unit(train)
    cent = kmeans(e_train, 64)
    c_train = 1 - (e_train @ cent.T).max(axis=1)
    d_demo, c_demo = dense.distances(prompts), 1 - (unit(prompts) @ cent.T).max(axis=1)

    def pct(v: float, ref: np.ndarray) -> float:
        return 100 * float((ref < v).mean())

    print("\n## Novelty of the demo prompts (percentile among the training prompts)\n")
    print("| prompt | dense distance | pct | embedding distance | pct |")
    print("|---|---:|---:|---:|---:|")
    for p, d, c in zip(prompts, d_demo, c_demo, strict=True):
        print(f"| {p[:40]!r} | {d:.2f} | {pct(d, d_train):.0f} | {c:.3f} | {pct(c, c_train):.0f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    root = os.environ.get("SATISFICE_DATA_DIR")
    if not root:
        sys.exit("set SATISFICE_DATA_DIR to the outcome data (e.g. ../shared/data)")
    sets = load_all(Path(root))
    trained = shipped_predictor()
    features = T.featurize([p for s in sets for p in s.prompts], 0)
    demo(
        {
            "prior": QualityModel.prior(),
            "trained": trained,
            "prior + trained difficulty": prior_plus_difficulty(trained, features),
        }
    )
    novelty(sets)
    held_out(sets, ["RouterBench", "RouteLLM MMLU", "RouteLLM GSM8K", "LLMRouter"], args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
