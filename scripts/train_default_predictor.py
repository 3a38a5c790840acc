"""Train the predictor shipped as python/satisfice/data/benchmark_predictor.npz.

    SATISFICE_DATA_DIR=../shared/data python scripts/train_default_predictor.py [--out PATH]

Fits `satisfice.eval.train.fit` (default TrainConfig: dense features, k=4) on every outcome
file of the shared data: RouterBench (3 evals x 11 models), RouteLLM MMLU and GSM8K
(Mixtral-8x7B vs GPT-4-1106) and LLMRouter (9 NIM-served models). None of the bundled
registry's models are in that data, so what transfers is the prompt side, W and c (difficulty
and skills). Registry models are then seeded from their quality priors (see
`satisfice.eval.seed`) through `prior_map`, the line from logit(public MMLU score) to the
trained bias, fitted on the data models below whose MMLU score is public.

`satisfice eval` scores this predictor when it is not told to train. `satisfice.Router()`
does not route with it (`QualityModel.bundled()` is the hand-set prior): trained on benchmark
items only, it rates chit-chat and one-line lookups ("Hi!", "capital of Australia?") as hard
as an average benchmark question: with the bundled registry, `satisfice demo` would cost 45x
the hand-set prior ($2.17 vs $0.048 for the 20 demo prompts;
scripts/default_predictor_check.py measures it and the alternatives). Use it with
`Policy(quality=QualityModel.load(...))` or `"predictor"` in a policy JSON for traffic that
looks like the benchmarks. Rerun this script after any FEATURE_VERSION change.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from satisfice.eval import datasets as D
from satisfice.eval import train as T
from satisfice.eval.membership import META_KEY, PromptFilter
from satisfice.eval.seed import seed_registry_models
from satisfice.predict import QualityModel
from satisfice.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "python" / "satisfice" / "data" / "benchmark_predictor.npz"

# Public 5-shot MMLU accuracy of the data models (model cards, papers and reports of each
# vendor). Models without a trustworthy public figure are left out of the prior map
# (llama3-chatqa-1.5-8b/70b, codegemma-7b, llama-3.3-nemotron-super-49b-v1).
PUBLIC_MMLU = {
    "gpt-4-1106-preview": 0.864,  # GPT-4 technical report
    "gpt-3.5-turbo-1106": 0.700,
    "claude-v2": 0.785,  # Claude 2 model card
    "claude-v1": 0.770,  # Claude 1.3
    "claude-instant-v1": 0.734,  # Claude Instant 1.1
    "meta/llama-2-70b-chat": 0.689,  # Llama 2 paper (70B)
    "meta/code-llama-instruct-34b-chat": 0.540,
    "mistralai/mixtral-8x7b-chat": 0.706,  # Mixtral paper
    "mistralai/Mixtral-8x7B-Instruct-v0.1": 0.706,
    "mistralai/mistral-7b-chat": 0.601,  # Mistral 7B paper
    "zero-one-ai/Yi-34B-Chat": 0.735,
    "WizardLM/WizardLM-13B-V1.2": 0.527,
    "qwen2.5-7b-instruct": 0.742,  # Qwen2.5 report (7B)
    "llama-3.1-8b-instruct": 0.694,  # Llama 3.1 model card
    "gemma-2-9b-it": 0.713,  # Gemma 2 report
    "mistral-7b-instruct-v0.3": 0.620,
    "llama-3.1-nemotron-51b-instruct": 0.802,  # NVIDIA model card
}

# Registry ids that are the same weights as a data model: they keep its trained parameters.
# None by default: the data's llama-3.1-8b-instruct was scored by LLMRouter's own harness
# (strict exact match), so its bias is on that data set's scale, not the registry's.
ALIASES: dict[str, str] = {}


def load_all(root: Path) -> list[D.OutcomeSet]:
    return [
        D.load("routerbench", root / "routerbench", with_responses=False),
        D.load("routellm", root / "routellm" / "mmlu"),
        D.load("routellm", root / "routellm" / "gsm8k"),
        D.load("llmrouter", root / "llmrouter"),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--refilter",
        action="store_true",
        help="only rebuild the shipped predictor's filter of its training prompts "
        "(as `satisfice eval` keys them), its weights as they are",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    root = os.environ.get("SATISFICE_DATA_DIR")
    if not root:
        sys.exit("set SATISFICE_DATA_DIR to the outcome data (e.g. ../shared/data)")
    t0 = time.perf_counter()
    sets = load_all(Path(root))
    t1 = time.perf_counter()
    if args.refilter:
        qm = QualityModel.load(OUT)
        prompts = [p for s in sets for p in s.prompts]
        qm.meta[META_KEY] = PromptFilter.build(prompts).to_meta()
        qm.save(args.out)
        print(f"refiltered {len(prompts)} prompts into {args.out}")
        return 0
    cfg = T.TrainConfig(name="satisfice-default")
    qm = T.fit(sets, cfg, priors=PUBLIC_MMLU)
    t2 = time.perf_counter()
    x = T.featurize([p for s in sets for p in s.prompts], cfg.hash_buckets)
    qm = seed_registry_models(qm, Registry.default(), aliases=ALIASES, features=x)
    qm.save(args.out)
    a, b = qm.prior_map
    rows = sum(len(s) for s in sets)
    print(f"{rows} prompts, {len(qm.models)} models; load {t1 - t0:.1f} s, fit {t2 - t1:.1f} s")
    print(f"prior map: bias = {a:.3f} * logit(MMLU) + {b:.3f}")
    for m, q in PUBLIC_MMLU.items():
        fitted = a * np.log(q / (1 - q)) + b
        print(f"  {m:<40} MMLU {q:.3f}  bias {qm.models[m].bias:+.3f}  line {fitted:+.3f}")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
