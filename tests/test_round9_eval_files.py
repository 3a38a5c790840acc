"""Round 9: damaged predictor files, interrupted saves, and outcome files that are valid JSON
but not usable data (huge integers, lone surrogates, costs that overflow to NaN metrics)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from satisfice import Policy, Router
from satisfice.cli import main
from satisfice.errors import ConfigError, DatasetError
from satisfice.eval import datasets as ds
from satisfice.predict import QualityModel


def saved_predictor(tmp_path: Path) -> Path:
    path = tmp_path / "good.npz"
    QualityModel.prior().save(path)
    return path


def without_k(good: Path, out: Path) -> None:
    with np.load(good) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        weights, intercept = z["weights"], z["intercept"]
    del meta["k"]
    with out.open("wb") as f:
        np.savez_compressed(
            f, weights=weights, intercept=intercept,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        )  # fmt: skip


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing k"])
def test_a_damaged_predictor_is_a_config_error_naming_the_file(damage: str, tmp_path: Path) -> None:
    good = saved_predictor(tmp_path)
    bad = tmp_path / "bad.npz"
    if damage == "truncated":  # a save cut short
        raw = good.read_bytes()
        bad.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        without_k(good, bad)
    (tmp_path / "policy.json").write_text(json.dumps({"predictor": "bad.npz"}))
    with pytest.raises(ConfigError, match="bad.npz.*(save it again|retrain)"):
        Policy.load(tmp_path / "policy.json")
    with pytest.raises(ConfigError, match="bad.npz"):
        QualityModel.load(bad)


def failing_fsync(fd: int) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_policy_or_predictor_save_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = Router()
    pol, pred = tmp_path / "policy.json", tmp_path / "policy.npz"
    router.save_policy(pol, pred)
    before = {p: p.read_bytes() for p in (pol, pred)}
    changed = Policy(quality_floor=0.5)
    monkeypatch.setattr(os, "fsync", failing_fsync)  # the disk fills during the write
    with pytest.raises(OSError, match="No space left") as e:
        changed.save(pol, pred)
    assert e.value.filename == str(pol)
    with pytest.raises(OSError, match="No space left") as e:
        QualityModel.prior(hash_buckets=16).save(pred)
    assert e.value.filename == str(pred)
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in (pol, pred)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.json", "policy.npz"]
    Policy.load(pol).quality_model()  # both still read back
    changed.save(pol, pred)  # and a save that succeeds replaces the file
    assert Policy.load(pol).quality_floor == 0.5


def outcome_lines(last: str) -> str:
    lines = [
        json.dumps({"prompt": f"question {i}", "outcomes": {
            "a": {"score": i % 2, "cost_usd": 0.001}, "b": {"score": 1, "cost_usd": 0.01}}})
        for i in range(3)
    ]  # fmt: skip
    return "\n".join([*lines, last]) + "\n"


def test_an_integer_too_large_for_a_float_is_a_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    path.write_text(outcome_lines(
        '{"prompt": "x", "outcomes": {"a": {"score": 1, "tokens_in": 1' + "0" * 400
        + ', "tokens_out": 5}, "b": {"score": 1, "cost_usd": 0.01}}}'
    ))  # fmt: skip
    with pytest.raises(DatasetError, match=r"o\.jsonl:4\.outcomes\['a'\]\.tokens_in: .*finite"):
        ds.load("outcomes", [path])
    path.write_text(outcome_lines('{"prompt": "x", "outcomes": {"a": {"score": 1' + "0" * 5000))
    with pytest.raises(DatasetError, match=r"o\.jsonl:4: "):  # too many digits for Python
        ds.load("outcomes", [path])


@pytest.mark.parametrize(
    "last",
    [
        '{"prompt": "caf\\ud800e", "outcomes": {"a": {"score": 1}, "b": {"score": 1}}}',
        '{"messages": [{"role": "user", "content": "\\udc80"}], "outcomes": {"a": {"score": 1}}}',
        '{"prompt": "x", "outcomes": {"a": {"score": 1, "response": "\\ud83d"}}}',
    ],
)
def test_a_lone_surrogate_is_a_dataset_error_naming_the_line(last: str, tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    path.write_text(outcome_lines(last))
    with pytest.raises(DatasetError, match=r"o\.jsonl:4.* lone surrogate"):
        ds.load("outcomes", [path], keep_missing=True).split_by_hash(0.3)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the point here
def test_eval_json_is_strict_json_when_a_metric_is_nan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A cost of 1e308 USD is finite, but the mean overflows and AIQ comes out NaN.
    path = tmp_path / "o.jsonl"
    path.write_text("\n".join(
        json.dumps({"prompt": f"question number {i} about topic {i * 7}", "group": f"g{i % 3}",
                    "outcomes": {"a": {"score": i % 2, "cost_usd": 0.001},
                                 "b": {"score": 1, "cost_usd": 0.01},
                                 "c": {"score": (i // 2) % 2, "cost_usd": 1e308}}})
        for i in range(40)
    ) + "\n")  # fmt: skip
    code = main(["eval", "--quiet", "--json", "--format", "outcomes", str(path),
                 "--test-split", "hash:0.3"])  # fmt: skip
    assert code == 0

    def strict(constant: str) -> None:
        raise AssertionError(f"bare {constant} in --json output")

    out = json.loads(capsys.readouterr().out, parse_constant=strict)
    assert out["aiq"] is None
