"""The flywheel: feedback on the ledger becomes training data for the predictor.

A router attached with `record_prompts=True` writes each request's messages on its record;
`router.feedback()` (explicit scores) and a cascade's validator verdicts (implicit ones) land
on the same record. `satisfice train --from-ledger LEDGER` turns every record that has both
into one row of outcomes (the prompt, the model that answered, its score; the other models
unobserved, but for those `router.feedback(rid, score, model=M)` scored on it, each credited
with its own score) and refits the predictor on them with the trainer `satisfice eval` uses, holding
out a hash-chosen share of the records: the report compares the old and the new predictor's
calibration (log loss, Brier) on those held-out records only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError

__all__ = ["ledger_outcomes", "ledger_prompts", "score_predictor", "train_from_ledger"]


def _score(rec: Mapping[str, Any]) -> float | None:
    """Explicit feedback, else the last validator verdict of the answering model."""
    fb = rec.get("feedback")
    if isinstance(fb, int | float) and not isinstance(fb, bool):
        return float(fb)
    for a in reversed(rec.get("attempts") or ()):
        v = a.get("verdict")
        if a.get("model") == rec.get("model") and isinstance(v, Mapping) and "passed" in v:
            return 1.0 if v["passed"] else 0.0
    return None


def ledger_prompts(target: str | Path) -> list[str]:
    """The prompts of every request a ledger recorded with its messages (for `satisfice
    calibrate --from-ledger`, which re-picks the floor or lambda on real traffic). A record
    whose messages cannot be read is named, as `satisfice train` names it (calibrate had said
    "messages[0].content must be ..." or "prompts[5]: ... not valid Unicode", no record)."""
    from .ledger import read_records

    out = [_prompt_of(r) for r in read_records(target) if r.get("messages")]
    if not out:
        raise DatasetError("the ledger has no recorded prompts: attach it with record_prompts=True")
    return out


def _held_out(key: str, share: float) -> bool:
    h = int.from_bytes(
        hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"
    )
    return h / 2**64 < share


def _observed(rec: Mapping[str, Any]) -> dict[str, tuple[float, Any]]:
    """{model: (score, cost or None)} a record observes: its answering model's score
    (`_score`) at the record's cost, and each other model's feedback score (`feedback_for`:
    scored beside the answer, so its own cost is not on the record)."""
    out: dict[str, tuple[float, Any]] = {}
    others = rec.get("feedback_for")
    if isinstance(others, Mapping):
        for m, v in others.items():
            if isinstance(m, str) and isinstance(v, int | float) and not isinstance(v, bool):
                out[m] = (float(v), None)
    if rec.get("model") and (s := _score(rec)) is not None:
        out[rec["model"]] = (s, rec.get("total_cost_usd"))
    return out


def _prompt_of(rec: Mapping[str, Any]) -> str:
    """The record's prompt text, or a DatasetError naming the record (its messages had been
    refused as "messages[0] must be an object ...", no record named)."""
    from .eval._outcomes import messages_to_text

    where = f"ledger record {rec['request_id']!r:.60}"
    fix = "delete that record from the ledger (or restore it from a backup) and train again"
    try:
        text = messages_to_text(rec["messages"])
        text.encode("utf-8")
    except DatasetError as e:
        raise DatasetError(f"{where}: {e}; {fix}") from None
    except UnicodeEncodeError:
        raise DatasetError(
            f"{where}: its messages are not valid Unicode (an unpaired surrogate); {fix}"
        ) from None
    return text


def ledger_outcomes(
    records: Iterable[Mapping[str, Any]],
    holdout: float = 0.2,
    *,
    counts: dict[str, int] | None = None,
) -> tuple[Any, Any]:
    """(train, held-out) OutcomeSets from ledger records with messages and a score. Each row
    observes the models scored on it (the answering one, and any `feedback_for`); every other
    model's score and cost are NaN (never 0). A request id met again (a JSONL ledger
    appended twice) is one row: the repeats are skipped, and counted in `counts`
    ("duplicates_skipped") when given."""
    from .eval._set import OutcomeSet
    from .eval.membership import prompt_key

    rows = []
    ids: set[str] = set()
    repeats = 0
    for r in records:
        msgs = r.get("messages")
        if not msgs or r.get("outcome", "ok") != "ok":
            continue
        if seen := _observed(r):
            if r["request_id"] in ids:  # (each copy had been a row: trained on twice)
                repeats += 1
                continue
            ids.add(r["request_id"])
            rows.append((r["request_id"], _prompt_of(r), seen))
    if counts is not None:
        counts["duplicates_skipped"] = repeats
    if not rows:
        raise DatasetError(
            "the ledger has no records with both messages and a score: attach the ledger "
            "with record_prompts=True and give feedback (router.feedback) or use validators"
        )

    def build(part: Sequence[tuple[Any, ...]]) -> Any:
        # the models this part observes: a model scored on held-out records alone had been
        # a training column with no observation, fitted as "trained" from nothing
        models = sorted({m for _, _, seen in part for m in seen})
        col = {m: j for j, m in enumerate(models)}
        n = len(part)
        scores = np.full((n, len(models)), np.nan)
        costs = np.full((n, len(models)), np.nan)
        for i, (_, _, seen) in enumerate(part):
            for m, (s, c) in seen.items():
                scores[i, col[m]] = s
                costs[i, col[m]] = np.nan if c is None else c
        return OutcomeSet([p for _, p, _ in part], list(models), scores, costs,
                          ["ledger"] * n, [rid for rid, *_ in part])  # fmt: skip

    # held out by prompt, not by request: the same prompt asked again (or answered by
    # another model) must not sit on both sides of the split
    test = [r for r in rows if _held_out(r[1], holdout)]
    train = [r for r in rows if not _held_out(r[1], holdout)]
    # nor the same prompt with other whitespace (`prompt_key`): such a copy is not held out
    trained = {prompt_key(r[1]) for r in train}
    test = [r for r in test if prompt_key(r[1]) not in trained]
    if not train:
        raise DatasetError("every scored record fell in the held-out share; lower --holdout")
    return build(train), (build(test) if test else None)


def score_predictor(qm: Any, test: Any, registry: Any = None) -> dict[str, float]:
    """Log loss and Brier score of `qm`'s P(good) for each model scored on a held-out
    record (the one that answered, and any scored beside it), against its recorded score."""
    from .eval.evaluate import predict_for

    pred = predict_for(qm, test, registry)
    obs = ~np.isnan(test.scores)
    p = np.clip(pred[obs], 1e-4, 1 - 1e-4)
    y = test.scores[obs]
    return {
        "n": int(obs.sum()),
        "log_loss": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()),
        "brier": float(((p - y) ** 2).mean()),
        "mean_predicted": float(p.mean()),
        "mean_observed": float(y.mean()),
    }


def train_from_ledger(
    target: str | Path,
    *,
    start: Any = None,
    registry: Any = None,
    holdout: float = 0.2,
    config: Any = None,
    progress: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """Fit a predictor on the ledger's scored records; returns it and a before/after report
    on the held-out records. `start` is the predictor the new one would replace, scored as
    "before" (default: the policy default's); the registry's priors seed the fit.
    `progress` (a `ProgressLine`) shows each stage on stderr: reading a large ledger and
    fitting take minutes."""
    from .eval import train as T
    from .eval.progress import ProgressLine
    from .ledger import read_records
    from .policy import Policy
    from .registry import Registry

    if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 <= holdout < 1:
        raise DatasetError(f"holdout must be a share in [0, 1), got {holdout!r:.40}")
    show = progress if progress is not None else ProgressLine(enabled=False)
    reg = registry if registry is not None else Registry.default()
    before = start if start is not None else Policy().quality_model()
    show.stage("reading the ledger")
    counts: dict[str, int] = {}
    train, test = ledger_outcomes(read_records(target), holdout, counts=counts)
    show.done()
    # checked before the fit: the comparison needs their parameters or priors, from both
    # predictors (the new one learns only the models the training records observe)
    known = set(reg.ids) | (set(before.models) & set(train.models))
    unknown = sorted(set(test.models) - known) if test is not None else []
    if unknown:
        # (one `before` learned, scored on held-out records alone, had been blamed on it)
        raise DatasetError(
            f"the ledger's models {unknown[:10]} are not in the registry, so the before/after "
            f"comparison cannot score them ({before.name!r} has no parameters for those it "
            "never learned, the new predictor none for those no training record observes): "
            "pass --registry FILE with them, or --holdout 0 to train without the comparison"
        )
    priors = {m.id: m.quality_prior() for m in reg if m.id in train.models}
    show.stage(f"training on {len(train)} records")
    qm = T.fit(
        train,
        config or T.TrainConfig(name="ledger"),
        priors=priors or None,
        progress=lambda step, total, loss: show.update(step, total, f"loss {loss:.4f}"),
    )
    show.done()
    report: dict[str, Any] = {"train_rows": len(train), "held_out_rows": 0 if test is None else
                              len(test), "models": list(train.models)}  # fmt: skip
    if counts["duplicates_skipped"]:
        report["duplicates_skipped"] = counts["duplicates_skipped"]
    if test is not None:
        # Both scored on the held-out records "before" was not trained on (its prompt filter):
        # a first run with --holdout 0 had trained it on every record, and the next run's
        # "before" was then scored on its own training rows, the comparison tilted its way.
        from .eval.membership import PromptFilter

        filt = PromptFilter.from_meta(getattr(before, "meta", {}) or {})
        seen = filt.mask(test.prompts) if filt is not None else np.zeros(len(test), dtype=bool)
        report["held_out_in_before_training"] = int(seen.sum())
        if seen.all():
            report["note"] = (
                f"all {len(test)} held-out records trained the before predictor "
                f"{before.name!r}: no out-of-sample comparison; the new predictor alone is "
                "scored on them"
            )
            report["after"] = score_predictor(qm, test, reg)
        else:
            fair = test.subset(np.flatnonzero(~seen)) if seen.any() else test
            show.stage(f"scoring before and after on {len(fair)} held-out records")
            report["before"] = score_predictor(before, fair, reg)
            report["after"] = score_predictor(qm, fair, reg)
        show.done()
    return qm, report
