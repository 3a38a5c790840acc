"""satisfice train --from-ledger's refusal of a before/after comparison it cannot make names
the predictor that cannot be scored. Failed on the code before its fix."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from satisfice.errors import DatasetError
from satisfice.flywheel import _held_out, train_from_ledger

from .chat_support import registry


def _ledger(path: Path, name: str, model: Callable[[str, int], str]) -> Path:
    lines = [
        {"request_id": f"{name}{i}", "started_at": i, "outcome": "ok",
         "model": model(f"{name} q {i}", i), "feedback": float(i % 2),
         "messages": [{"role": "user", "content": f"{name} q {i}"}]}
        for i in range(200)
    ]  # fmt: skip
    out = path / f"{name}.jsonl"
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return out


def test_a_model_the_new_predictor_never_observes_is_said_to_be_its(tmp_path: Path) -> None:
    # custom-x, in no registry, was learned by the first run; in the second ledger it is
    # scored on held-out records alone. The before predictor has its parameters, the new one
    # none (no training record observes it), and the refusal had blamed the before one
    # ("the predictor 'ledger' cannot be scored on them")
    reg = registry("http://127.0.0.1:9")
    first = _ledger(tmp_path, "a", lambda p, i: "custom-x" if i % 2 else "alpha")
    before, _ = train_from_ledger(first, registry=reg, holdout=0.0)
    assert "custom-x" in before.models
    second = _ledger(
        tmp_path, "b", lambda p, i: "custom-x" if _held_out(p, 0.2) and i % 3 == 0 else "alpha"
    )
    with pytest.raises(DatasetError, match="custom-x") as refused:
        train_from_ledger(second, registry=reg, start=before)
    said = str(refused.value)
    assert "the new predictor none for those no training record observes" in said, said
    assert "predictor 'ledger' cannot be scored" not in said, said
