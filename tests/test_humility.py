"""On every shared data set and split kind, the router at full budget (lambda 0: a setting
chosen without the test rows, not the curve's best point, which the test rows pick) is never
worse than the single model a user would have picked from the training rows (tolerance
0.005), and the humility margin is what makes it so where the learned predictor alone is
worse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from satisfice.cli import main

from .data_support import DATA, needs_data

SPLITS = [
    ("llmrouter", "llmrouter", "hash:0.3"),
    ("llmrouter", "llmrouter", "fold:0/3"),
    ("llmrouter", "llmrouter", "fold:1/3"),
    ("llmrouter", "llmrouter", "fold:2/3"),
    ("routerbench", "routerbench", "hash:0.3"),
    ("routerbench", "routerbench", "fold:0/3"),
    ("routerbench", "routerbench", "fold:1/3"),
    ("routerbench", "routerbench", "fold:2/3"),
    ("routellm", "routellm/mmlu", "fold:0/3"),
    ("routellm", "routellm/mmlu", "fold:1/3"),
    ("routellm", "routellm/mmlu", "fold:2/3"),
    ("routellm", "routellm/gsm8k", "hash:0.3"),
]


def _eval(fmt: str, sub: str, split: str, capsys: pytest.CaptureFixture[str], *extra: str) -> Any:
    assert DATA is not None
    code = main(["eval", "--format", fmt, str(Path(DATA) / sub), "--test-split", split,
                 "--json", "--quiet", *extra])  # fmt: skip
    assert code == 0
    return json.loads(capsys.readouterr().out)


@needs_data
@pytest.mark.parametrize(("fmt", "sub", "split"), SPLITS, ids=[f"{s}-{p}" for _, s, p in SPLITS])
def test_never_worse_than_the_train_chosen_best_model(
    fmt: str, sub: str, split: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _eval(fmt, sub, split, capsys)
    best = out["train_best_single"]["quality"]
    full = out["router_full_budget"]["quality"]
    assert full >= best - 0.005, (full, best, out["humility"])
    assert out["switches"]["share_switched"] <= 1.0 and out["train_chosen_random"]["models"]


@needs_data
def test_humility_is_what_holds_it_on_a_shifted_split(capsys: pytest.CaptureFixture[str]) -> None:
    """RouterBench, tested on a benchmark the predictor never saw: without humility the
    router at full budget falls far below the train-best model; with it, it does not."""
    raw = _eval("routerbench", "routerbench", "fold:1/3", capsys, "--no-humility")
    held = _eval("routerbench", "routerbench", "fold:1/3", capsys)
    best = held["train_best_single"]["quality"]
    assert raw["router_full_budget"]["quality"] < best - 0.05
    assert held["router_full_budget"]["quality"] >= best - 0.005
    sw = raw["switches"]
    assert sw["predicted_gain"] > 0 > sw["realised_gain"]  # the overconfidence, measured


@needs_data
def test_a_cascade_tuned_on_other_files_is_the_one_the_split_tunes() -> None:
    """`eval --strategy cascade --train`: tuning on separate rows gives exactly what the
    hash split gives when those rows are its tuning part."""
    from satisfice.eval.cascade_eval import evaluate_cascade
    from satisfice.eval.datasets import load

    assert DATA is not None
    data = load("routellm", Path(DATA) / "routellm" / "gsm8k").drop_missing()
    tune, test = data.split_by_hash(0.5, 0)
    a = evaluate_cascade(data, test_fraction=0.5, seed=0)
    b = evaluate_cascade(test, train=tune)
    assert b["split"]["method"] == "separate tuning files"
    assert a["apgr_cascade"] == pytest.approx(b["apgr_cascade"])
