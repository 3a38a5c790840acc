"""Learned-routing tools against hostile artifacts and data: each failure says what to do,
never a raw traceback, and leaves the router as it was."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from satisfice import Router, _core
from satisfice.errors import ConfigError
from satisfice.eval.membership import prompt_key
from satisfice.policy import Policy
from satisfice.predict import QualityModel


def _tampered(tmp_path: Path, meta_bytes: bytes | None = None, **meta_over: object) -> Path:
    """The prior predictor saved, then its metadata changed (or replaced by `meta_bytes`)."""
    good = tmp_path / "good.npz"
    QualityModel.prior().save(good)
    with np.load(good) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        weights, intercept = z["weights"], z["intercept"]
    meta.update(meta_over)
    raw = json.dumps(meta).encode() if meta_bytes is None else meta_bytes
    out = tmp_path / "bad.npz"
    np.savez(out, weights=weights, intercept=intercept, meta=np.frombuffer(raw, np.uint8))
    return out


@pytest.mark.parametrize(
    "field,value", [("seed", -1), ("seed", 2**70), ("hash_buckets", -3), ("k", -1)]
)
def test_a_predictor_with_an_out_of_range_count_is_refused_when_read(
    tmp_path: Path, field: str, value: int
) -> None:
    # (loaded, these had failed Router() with a raw OverflowError or BufferError)
    over: dict[str, object] = {field: value}
    path = _tampered(tmp_path, **over)
    if field in ("k", "hash_buckets"):  # weights of the shape the field then asks for
        with np.load(path) as z:
            meta = bytes(z["meta"])
            k = value if field == "k" else 8
            dim = _core.DENSE + (value if field == "hash_buckets" else 0)
        zeros = np.zeros((dim, k + 1), np.float32)
        np.savez(path, weights=zeros, intercept=zeros[0], meta=np.frombuffer(meta, np.uint8))
    with pytest.raises(ConfigError, match=f"{field} must be a whole number"):
        Router(policy=Policy(quality=QualityModel.load(path)))


def test_a_predictor_with_deeply_nested_metadata_is_damaged_not_a_recursion_error(
    tmp_path: Path,
) -> None:
    path = _tampered(tmp_path, meta_bytes=b"[" * 200_000)
    with pytest.raises(ConfigError, match="damaged or not a satisfice predictor"):
        QualityModel.load(path)


def test_a_predictor_whose_array_header_claims_terabytes_is_damaged(tmp_path: Path) -> None:
    good = _tampered(tmp_path)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**7, 10**7)}
    )
    path = tmp_path / "huge.npz"
    with np.load(good) as z, zipfile.ZipFile(path, "w") as out:
        out.writestr("weights.npy", header.getvalue() + b"\0" * 16)
        for name in ("intercept", "meta"):
            buf = io.BytesIO()
            np.save(buf, z[name])
            out.writestr(f"{name}.npy", buf.getvalue())
    with pytest.raises(ConfigError, match="damaged or not a satisfice predictor"):
        QualityModel.load(path)


def test_eval_of_free_models_reports_rather_than_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log of local models that cost nothing had failed the whole evaluation, after it
    was computed, with "max_cost must be > 0 USD": AIQ has no cost range to integrate over
    there, and is 0, as the report's note says for models that cost the same."""
    from satisfice.cli import main

    lines = []
    for i in range(120):
        outcomes = {m: {"score": float((i + j) % 3 == 0), "cost_usd": 0.0}
                    for j, m in enumerate(("local-a", "local-b"))}  # fmt: skip
        lines.append(json.dumps({"prompt": f"Question {i}: what is {i} cubed?",
                                 "outcomes": outcomes}))  # fmt: skip
    data = tmp_path / "free.jsonl"
    data.write_text("\n".join(lines) + "\n")
    code = main(["eval", "--quiet", "--format", "outcomes", str(data), "--test-split",
                 "hash:0.3", "--json"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    r = json.loads(out.out)
    assert r["aiq"] == 0.0 and r["random"]["aiq"] == 0.0
    assert any("no cost range" in n for n in r["notes"])


def test_calibrate_cascade_prices_a_logs_tokens_at_the_registrys_rates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`eval --strategy cascade` prices a log's token counts at the registry's rates; the
    same file given to `calibrate --strategy cascade` with the same --registry had every
    cost unknown, and failed: "tuning a cascade needs complete scores and costs"."""
    from satisfice.cli import main

    reg = Path(__file__).parents[1] / "docs" / "examples" / "gsm8k_models.toml"
    weak, strong = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
    lines = []
    for i in range(120):
        right = {weak: i % 3 != 0, strong: i % 7 != 0}
        outcomes = {m: {"score": float(r), "tokens_in": 40 + i, "tokens_out": 90,
                        "response": f"So the answer is {i if r else i + 1}."}
                    for m, r in right.items()}  # fmt: skip
        lines.append(json.dumps({"prompt": f"Problem {i}: what is {i} plus zero?",
                                 "outcomes": outcomes}))  # fmt: skip
    data = tmp_path / "log.jsonl"
    data.write_text("\n".join(lines) + "\n")
    policy = tmp_path / "policy.json"
    code = main(["calibrate", "--strategy", "cascade", "--format", "outcomes", str(data),
                 "--registry", str(reg), "--target", "quality:90", "--policy", str(policy),
                 "--json"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["tuning"]["mean_cost_usd"] > 0
    assert "cascades" in json.loads(policy.read_text())


@pytest.mark.parametrize("groups", ["one", "two"])
def test_humility_cross_fitting_keeps_every_copy_of_a_prompt_in_one_fold(groups: str) -> None:
    """A log repeats prompts under request ids of their own (or in two groups): the margin's
    folds had split the copies, and each fold was scored on prompts its fit trained on."""
    from satisfice.eval import humble as H
    from satisfice.eval.datasets import OutcomeSet

    prompts = [f"Question {i}: what is {i} squared?" for i in range(60)]
    prompts += [f"{p}\n" for p in prompts]  # the same prompts asked again (a trailing newline)
    n = len(prompts)
    data = OutcomeSet(
        prompts=prompts,
        models=["a", "b"],
        scores=np.ones((n, 2)),
        costs=np.ones((n, 2)),
        groups=["default"] * n if groups == "one" else ["x"] * 60 + ["y"] * 60,
        ids=[f"req-{i}" for i in range(n)],
    )
    fold_of: dict[str, int] = {}
    for f, idx in enumerate(H._folds(data, 3)):
        for i in idx.tolist():
            assert fold_of.setdefault(prompt_key(prompts[i]), f) == f, prompts[i]
