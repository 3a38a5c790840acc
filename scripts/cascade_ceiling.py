"""How far the RouterBench cascade's ladders could go at a cost budget, in hindsight.

    SATISFICE_DATA_DIR=../shared/data python scripts/cascade_ceiling.py [--budget 0.3] [--seeds 3]

For each hash split `eval --strategy cascade --test-split hash:0.5:S` makes, the candidate
ladders are replayed on the *test* half itself and the best combination (one ladder per
task) within the budget is chosen there: the most quality any tuning of these ladders could
reach on those rows. It is hindsight by construction (chosen on the rows it is scored on),
so it is a ceiling for tuning, not a result. If it is below a target, no threshold or
ladder selection on the tuning half can meet that target; a new kind of check can.
"""

from __future__ import annotations

import argparse
import os

from satisfice.eval import cascade_eval as C
from satisfice.eval.datasets import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=0.3, help="share of the reference's cost")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pool-size", type=int, default=4)
    ap.add_argument("--cheap-share", type=float, default=0.15)
    args = ap.parse_args()
    data_dir = os.environ.get("SATISFICE_DATA_DIR")
    if not data_dir:
        raise SystemExit("set SATISFICE_DATA_DIR to the shared data directory")
    data = load("routerbench", os.path.join(data_dir, "routerbench")).drop_missing()
    for seed in range(args.seeds):
        _tune, test = data.split_by_hash(0.5, seed)
        ref, fronts, _kinds = C._fronts(test, None, args.cheap_share, args.pool_size, C._by_group)
        r = test.models.index(ref)
        ref_q, ref_c = float(test.scores[:, r].sum()), float(test.costs[:, r].sum())
        choice = C._choose(fronts, args.budget * ref_c)
        if choice is None:
            print(f"seed {seed}: no ladders within {args.budget:.0%} of {ref}'s cost")
            continue
        q = sum(x.quality for x in choice.values()) / ref_q
        c = sum(x.cost for x in choice.values()) / ref_c
        print(f"seed {seed}: at most {q:.1%} of {ref}'s quality at {c:.1%} of its cost "
              f"({len(test)} test rows, hindsight)")  # fmt: skip
        for task, x in choice.items():
            print(f"  {task}: {x.candidate.label}")


if __name__ == "__main__":
    main()
