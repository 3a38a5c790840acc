"""`satisfice eval`: a hand-made outcomes file (always) and slices of the shared data (CI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from satisfice.cli import main

from .data_support import DATA, needs_data

KEYS = {
    "n",
    "models",
    "aiq",
    "apgr",
    "cpt50",
    "cpt80",
    "best_single",
    "oracle",
    "cost_at_best_quality",
    "cost_at_95pct_best_quality",
    "curve",
}
PNG = b"\x89PNG\r\n\x1a\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["eval", "--quiet", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def write_outcomes(path: Path, n: int = 160) -> Path:
    """Short lookups both models get right; long arithmetic only the pricier model gets."""
    lines = []
    for i in range(n):
        if i % 2 == 0:
            prompt = f"What is the capital of country number {i}?"
            small, large = 1.0, 1.0
        else:
            terms = " + ".join(f"{(i * 37 + j) % 997} * {j + 3}" for j in range(30))
            prompt = f"Compute exactly, showing every step: {terms} = ?"
            small, large = 0.0, 1.0
        lines.append(
            json.dumps(
                {
                    "prompt": prompt,
                    "outcomes": {
                        "small": {"score": small, "cost_usd": 0.0001},
                        "large": {"score": large, "cost_usd": 0.002},
                    },
                    "group": "easy" if i % 2 == 0 else "hard",
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_outcomes_json_plot_and_saved_predictor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_outcomes(tmp_path / "log.jsonl")
    png, npz = tmp_path / "curve.png", tmp_path / "p.npz"
    code, out, err = run(
        capsys,
        "--format", "outcomes", str(data), "--test-split", "hash:0.4", "--json",
        "--plot", str(png), "--save-predictor", str(npz),
    )  # fmt: skip
    assert code == 0, err
    res = json.loads(out)
    assert set(res) >= KEYS
    assert res["models"] == ["small", "large"] and res["split"]["n_test"] == res["n"]
    assert res["split"]["n_train"] + res["n"] == 160
    # The features separate the two kinds of prompt, so the router must beat random routing
    # clearly: APGR is 0.5 for random and 1 - 0.5/2 = 0.75 for a perfect router when half the
    # prompts need the large model; a perfect router recovers half the gap at 25% large calls.
    assert res["aiq"] > res["random"]["aiq"] + 0.05
    assert res["apgr"] > 0.65 and res["cpt50"] < 0.35
    assert res["best_single"]["model"] == "large" and res["oracle"]["quality"] == 1.0
    assert res["cost_at_best_quality"] < 0.75 * res["best_single"]["cost"]
    assert all(0.0 <= p["quality"] <= 1.0 for p in res["curve"]) and len(res["curve"]) > 10
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    assert npz.stat().st_size > 0


def test_saved_predictor_is_never_scored_on_its_training_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_outcomes(tmp_path / "log.jsonl")
    fresh = write_outcomes(tmp_path / "fresh.jsonl", 40)
    text = fresh.read_text().replace("country number", "nation no.")
    fresh.write_text(text.replace("showing every step", "step by step"))
    half, full = tmp_path / "half.npz", tmp_path / "full.npz"
    code, out, err = run(capsys, "--format", "outcomes", str(data), "--test-split", "hash:0.5",
                         "--save-predictor", str(half), "--json")  # fmt: skip
    assert code == 0, err
    n_train = json.loads(out)["split"]["n_train"]
    # Scored on the whole file later, it sees only the rows it was not trained on.
    code, out, err = run(capsys, "--format", "outcomes", str(data), "--predictor", str(half),
                         "--json")  # fmt: skip
    assert code == 0, err
    res = json.loads(out)
    # (a Bloom filter: a rare unseen prompt is dropped too, a seen one never slips through)
    assert 160 - n_train - 2 <= res["n"] <= 160 - n_train
    assert not res["predictor"]["trained_here"]
    assert any(f"dropped {160 - res['n']} test rows" in note for note in res["notes"])
    # Trained on every row of log.jsonl (tested on fresh prompts), it refuses log.jsonl.
    code, out, err = run(capsys, "--format", "outcomes", str(fresh), "--train", str(data),
                         "--save-predictor", str(full), "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["n"] == 40
    code, _, err = run(capsys, "--format", "outcomes", str(data), "--predictor", str(full))
    assert code == 2 and "in-sample" in err
    # --train with the very file under test: every test prompt is a training prompt.
    code, _, err = run(capsys, "--format", "outcomes", str(data), "--train", str(data))
    assert code == 2 and "every test prompt also occurs in the training data" in err


def test_human_report_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_outcomes(tmp_path / "log.jsonl", 80)
    code, out, err = run(capsys, "--format", "outcomes", str(data), "--test-split", "group:hard")
    # Training on easy prompts only: both models always right there, the test is all hard.
    assert code == 0, err
    assert "AIQ" in out and "best single model: large" in out and "oracle" in out
    code, _, err = run(capsys, "--format", "outcomes", str(data), "--test-split", "hash:2")
    assert code == 2 and "FRACTION must be in (0, 1)" in err
    code, _, err = run(capsys, "--format", "outcomes", str(data), "--test-split", "group:nope")
    assert code == 2 and "do not occur" in err
    code, _, err = run(capsys, "--format", "outcomes", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "no such file" in err
    onnx = str(tmp_path / "p.onnx")
    code, _, err = run(capsys, "--format", "outcomes", str(data), "--test-split", "hash:0.3",
                       "--save-onnx", onnx)  # fmt: skip
    assert code == 2 and "--no-embedding" in err and not Path(onnx).exists()


def test_cascade_strategy_needs_recorded_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_outcomes(tmp_path / "log.jsonl", 40)
    code, _, err = run(capsys, "--format", "outcomes", str(data), "--strategy", "cascade")
    assert code == 2 and "recorded answers" in err


# -- the shared data, on small slices -----------------------------------------------------

shared = needs_data


def _check(res: dict[str, object], models: int) -> None:
    assert set(res) >= KEYS
    assert len(res["models"]) == models  # type: ignore[arg-type]
    curve = res["curve"]
    assert isinstance(curve, list) and curve
    costs = np.array([p["cost"] for p in curve])
    assert np.all(costs > 0)
    assert isinstance(res["aiq"], float) and 0.0 < res["aiq"] <= 1.0


@shared
def test_routerbench_slice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "rb.png"
    code, out, err = run(
        capsys, "--format", "routerbench", f"{DATA}/routerbench", "--max-rows", "400",
        "--test-split", "hash:0.3", "--json", "--plot", str(png),
    )  # fmt: skip
    assert code == 0, err
    res = json.loads(out)
    _check(res, 11)
    assert res["apgr"] is None and res["cpt50"] is None
    assert res["best_single"]["model"] == "gpt-4-1106-preview"
    assert png.read_bytes()[:8] == PNG
    # an unwritable --plot path: said before the evaluation runs (it had run in full first)
    code, out, err = run(
        capsys, "--format", "routerbench", f"{DATA}/routerbench", "--max-rows", "400",
        "--test-split", "hash:0.3", "--json", "--plot", str(tmp_path / "no-dir" / "rb.png"),
    )  # fmt: skip
    assert code == 2 and out == "" and "--plot" in err


@shared
def test_routellm_subject_split(capsys: pytest.CaptureFixture[str]) -> None:
    subjects = ("abstract_algebra", "astronomy", "global_facts", "management", "marketing")
    files = [f"{DATA}/routellm/mmlu/mmlu_{s}.csv" for s in subjects]
    code, out, err = run(capsys, "--format", "routellm", *files,
                         "--test-split", "group:astronomy,marketing", "--json")  # fmt: skip
    assert code == 0, err
    res = json.loads(out)
    _check(res, 2)
    assert res["split"]["test_groups"] == ["astronomy", "marketing"]
    assert 0.0 <= res["apgr"] <= 1.0 and 0.0 <= res["cpt50"] <= res["cpt80"] <= 1.0
    assert res["weak_strong"] == ["mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"]


@shared
def test_llmrouter_slice(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--format", "llmrouter", f"{DATA}/llmrouter",
                         "--max-rows", "500", "--test-split", "hash:0.3:1", "--json")  # fmt: skip
    assert code == 0, err
    _check(json.loads(out), 9)


@shared
def test_shipped_predictor_refuses_its_own_training_data(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "--format", "llmrouter", f"{DATA}/llmrouter", "--max-rows", "50")
    assert code == 2 and "in-sample" in err


@shared
@pytest.mark.parametrize(
    ("fmt", "sub"), [("routerbench", "routerbench"), ("routellm", "routellm/gsm8k")]
)
def test_cascade_strategy_on_a_slice_of_real_responses(
    capsys: pytest.CaptureFixture[str], fmt: str, sub: str
) -> None:
    assert DATA is not None
    code, out, err = run(
        capsys, "--format", fmt, str(Path(DATA) / sub), "--strategy", "cascade",
        "--max-rows", "300", "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["strategy"] == "cascade"
    assert report["split"]["n_test"] + report["split"]["n_tune"] == 300
    # a split that leaves one side (nearly) empty: an error that says so, not a numpy one
    code, _, err = run(capsys, "--format", fmt, str(Path(DATA) / sub), "--strategy", "cascade",
                       "--max-rows", "40", "--test-split", "hash:0.99")  # fmt: skip
    assert code == 2 and "tuning row(s)" in err


def test_plot_without_matplotlib_still_prints_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *a: Any, **kw: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    data = write_outcomes(tmp_path / "log.jsonl", 80)
    code, out, err = run(capsys, "--format", "outcomes", str(data), "--test-split", "hash:0.5",
                         "--plot", str(tmp_path / "c.png"))  # fmt: skip
    assert code == 1 and "AIQ" in out and "plotting needs matplotlib" in err
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("local_usd", [0.0001, 0.0], ids=["cheap", "free"])
def test_the_train_chosen_baseline_shares_the_routers_aiq_scale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], local_usd: float
) -> None:
    """The cheaper model is also the better one, so the training rows' hull is that model
    alone: its AIQ was taken on its own scale (its own cost), 0.0 beside the router's 0.99
    for the same routing, and a free one failed the whole run after it had been evaluated
    ("max_cost must be > 0 USD")."""
    lines = []
    for i in range(120):
        local = 1.0 if i % 10 else 0.0  # 90% right
        lines.append(json.dumps({"prompt": f"Question number {i}: what is {i} squared?",
                                 "outcomes": {"local": {"score": local, "cost_usd": local_usd},
                                              "paid": {"score": float(i % 2),
                                                       "cost_usd": 0.01}}}))  # fmt: skip
    data = tmp_path / "o.jsonl"
    data.write_text("\n".join(lines) + "\n")
    code, out, err = run(capsys, "--format", "outcomes", str(data), "--test-split", "hash:0.3",
                         "--json")  # fmt: skip
    assert code == 0, err
    r = json.loads(out)
    assert r["train_chosen_random"]["models"] == ["local"]
    # routing everything to the one model: the same AIQ as the router's random among the
    # single models' hull (which is that model too), on one scale
    assert r["train_chosen_random"]["aiq"] == pytest.approx(r["random_aiq"])
    assert r["train_chosen_random"]["aiq"] > 0.5
