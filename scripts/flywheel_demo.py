"""The flywheel closing its loop on replayed outcomes (RouterBench, from SATISFICE_DATA_DIR).

    python scripts/flywheel_demo.py [--seed 0] [--explore 0.2]

1. Split RouterBench's rows by a hash of their id: half is traffic, half is held out.
2. Traffic: each prompt is routed by the starting predictor (the hand-set prior, every model
   seeded with the same 0.7 prior: a user who knows nothing about these models yet), by the
   router's rule (argmax P(good) - lambda * cost, lambda at the median of the sweep), with a
   share of requests explored at random (a flywheel that never tries a model never learns
   about it). The chosen model's *recorded* score is the feedback; the request (its messages,
   model, cost and score) is written to a SQLite ledger through satisfice's Ledger.
3. `train_from_ledger` (what `satisfice train --from-ledger` runs) refits the predictor on
   the ledger alone.
4. Both predictors are scored by `satisfice eval`'s metrics on the held-out half, which
   neither saw: AIQ of the cost-quality curve and calibration of P(good).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from satisfice.eval import train as T
from satisfice.eval.datasets import load
from satisfice.eval.evaluate import decision_costs, evaluate_predictor, predict_for
from satisfice.flywheel import score_predictor, train_from_ledger
from satisfice.ledger import Ledger
from satisfice.predict import QualityModel
from satisfice.registry import ModelSpec, Registry


def _half(i: str, seed: int) -> bool:
    return hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest()[0] < 128


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--explore", type=float, default=0.2)
    a = ap.parse_args()
    root = Path(os.environ.get("SATISFICE_DATA_DIR", "../shared/data")) / "routerbench"
    data = load("routerbench", root)
    mask = np.array([_half(i, a.seed) for i in data.ids])
    traffic, test = data.subset(np.where(mask)[0]), data.subset(np.where(~mask)[0])
    reg = Registry([ModelSpec(m, "x", 10**6, 10**5, quality={"general": 0.7}) for m in data.models])
    before = QualityModel.prior()
    dc, _ = decision_costs([traffic], traffic)
    pred = predict_for(before, traffic, reg)
    lam = float(np.median(pred.max(axis=1) - pred.min(axis=1)) / max(np.median(dc), 1e-12))
    rng = np.random.default_rng(a.seed)
    with tempfile.TemporaryDirectory() as d:
        ledger_path = Path(d) / "ledger.db"
        ledger = Ledger.open(ledger_path)
        for i in range(len(traffic)):
            if rng.random() < a.explore:
                j = int(rng.integers(len(data.models)))
            else:
                j = int(np.argmax(pred[i] - lam * dc[i]))
            ledger.put(
                {
                    "request_id": traffic.ids[i],
                    "started_at": 0,
                    "outcome": "ok",
                    "messages": [{"role": "user", "content": traffic.prompts[i]}],
                    "model": data.models[j],
                    "total_cost_usd": float(traffic.costs[i, j]),
                    "feedback": float(traffic.scores[i, j]),
                }
            )
        ledger.close()
        after, report = train_from_ledger(
            ledger_path,
            start=before,
            registry=reg,
            holdout=0.0,
            config=T.TrainConfig(name="ledger"),
        )
    out = {
        "traffic_rows": len(traffic),
        "held_out_rows": len(test),
        "explore": a.explore,
        "ledger_rows_trained": report["train_rows"],
    }
    costs, _ = decision_costs([traffic], test)
    for name, qm in (("before (prior)", before), ("after (trained on the ledger)", after)):
        p = predict_for(qm, test, reg)
        ev = evaluate_predictor(test, p, costs).to_dict()
        full = test.select_models(test.models)
        obs = {k: round(v, 4) for k, v in score_predictor(qm, full, reg).items()}
        out[name] = {
            "aiq": round(ev["aiq"], 4),
            "random_aiq": round(ev["random"]["aiq"], 4),
            "best_single_quality": round(ev["best_single"]["quality"], 4),
            "router_best_quality": round(max(pt["quality"] for pt in ev["curve"]), 4),
            "log_loss": obs["log_loss"],
            "brier": obs["brier"],
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
