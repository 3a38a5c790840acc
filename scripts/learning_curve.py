"""How fast a model the predictor never saw is learned from feedback, and how strong its
registry prior should be (RouterBench from SATISFICE_DATA_DIR).

    python scripts/learning_curve.py [--model claude-v2] [--seeds 3]

Rows split by hash: half trains the predictor on every model but the held-out one, a quarter
is its feedback traffic, a quarter is the test. The held-out model starts from its registry
prior (its mean score on the training half stands in for a public benchmark score) worth
`prior_evidence` observations; each feedback row is one `FeedbackLog.observe` (what
`router.feedback` runs). Printed: log loss of its P(good) on the test quarter after n
feedback observations, per prior strength, mean over seeds; lower is better.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import numpy as np

from satisfice import Policy, Router
from satisfice.eval import train as T
from satisfice.eval.datasets import load
from satisfice.eval.evaluate import predict_for
from satisfice.feedback import FeedbackLog
from satisfice.registry import ModelSpec, Registry

COUNTS = (0, 10, 25, 50, 100, 200, 400)
STRENGTHS = (1.0, 10.0, 50.0, 100.0, 200.0, 1000.0)


def part(i: str, seed: int) -> int:
    return hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=1).digest()[0] % 4


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def run(held: str, seed: int) -> dict[float, list[float]]:
    root = Path(os.environ.get("SATISFICE_DATA_DIR", "../shared/data")) / "routerbench"
    data = load("routerbench", root)
    which = np.array([part(i, seed) for i in data.ids])
    train = data.subset(np.where(which <= 1)[0])
    pool = data.subset(np.where(which == 2)[0])
    test = data.subset(np.where(which == 3)[0])
    others = [m for m in data.models if m != held]
    h = data.models.index(held)
    reg = Registry([ModelSpec(m, "x", 10**6, 10**5,
                              quality={"general": float(np.clip(np.nanmean(train.scores[:, j]),
                                                                0.02, 0.98))})
                    for j, m in enumerate(data.models)])  # fmt: skip
    qm = T.fit(train.select_models(others), priors={m: reg[m].quality_prior() for m in others})
    router = Router(reg, Policy(quality=qm))
    latents = [router.route(p, allow=(held,), quality_floor=0).latent for p in pool.prompts]
    spec = reg[held]
    out: dict[float, list[float]] = {}
    y = test.scores[:, h]
    for strength in STRENGTHS:
        log = FeedbackLog(prior_evidence=strength)
        current = qm.params_for(spec)
        curve = []
        done = 0
        for n in COUNTS:
            while done < min(n, len(pool)):
                current = log.observe(qm, held, current, latents[done], float(pool.scores[done, h]))
                done += 1
            q = qm.with_models({**qm.models, held: current})
            p = predict_for(q, test.select_models([held]), reg)[:, 0]
            curve.append(log_loss(p, y))
        out[strength] = curve
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="claude-v2")
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    runs = [run(a.model, s) for s in range(a.seeds)]
    print(f"held-out model {a.model}: test log loss after n feedback observations "
          f"(mean of {a.seeds} seeds)\n")  # fmt: skip
    print("| prior worth | " + " | ".join(f"n={n}" for n in COUNTS) + " |")
    print("|---|" + "---:|" * len(COUNTS))
    for s in STRENGTHS:
        vals = np.mean([r[s] for r in runs], axis=0)
        print(f"| {s:g} obs | " + " | ".join(f"{v:.4f}" for v in vals) + " |")


if __name__ == "__main__":
    main()
