"""`OutcomeSet`: per-prompt outcomes of m models, the one type every loader returns."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DatasetError

__all__ = ["OutcomeSet", "concat", "prompt_id"]

log = logging.getLogger("satisfice.eval")


def _digest(text: str) -> int:
    # blake2b is in the standard library and identical on every platform and Python version,
    # so ids and hash splits never move between machines or releases.
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def prompt_id(prompt: str) -> str:
    """A stable 16-hex-digit id for a prompt that has no id of its own."""
    return f"{_digest(prompt):016x}"


@dataclass(frozen=True, eq=False)
class OutcomeSet:
    """What each of m models scored and cost on each of n prompts.

    `scores[i, j]` is model j's quality on prompt i in [0, 1]; NaN means no outcome was
    recorded (never 0). `costs[i, j]` is the USD that query cost; NaN means unknown or
    unpriced (never 0). `responses` and `latency_ms` (n x m, NaN = not recorded) are there
    when the source has them. The arrays are read-only so a set can be shared between splits.
    """

    prompts: list[str]
    models: list[str]
    scores: np.ndarray
    costs: np.ndarray
    groups: list[str]
    ids: list[str]
    responses: list[list[str | None]] | None = None
    latency_ms: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, m = len(self.prompts), len(self.models)
        if m == 0:
            raise DatasetError("an outcome set needs at least one model; the data named none")
        if len(set(self.models)) != m:
            raise DatasetError(f"model ids must be unique, got {self.models}")
        scores = np.array(self.scores, dtype=np.float64)
        costs = np.array(self.costs, dtype=np.float64)
        for name, arr in (("scores", scores), ("costs", costs)):
            if arr.shape != (n, m):
                raise DatasetError(f"{name} has shape {arr.shape}, expected (n, m) = ({n}, {m})")
        for name, col in (("groups", self.groups), ("ids", self.ids)):
            if len(col) != n:
                raise DatasetError(f"{name} has {len(col)} entries for {n} prompts")
        if self.responses is not None and (
            len(self.responses) != n or any(len(r) != m for r in self.responses)
        ):
            raise DatasetError(f"responses must be an n x m = {n} x {m} list of lists")
        known = scores[~np.isnan(scores)]
        if known.size and (known.min() < 0.0 or known.max() > 1.0):
            raise DatasetError(
                f"scores must lie in [0, 1] (NaN for no outcome); found "
                f"[{known.min():g}, {known.max():g}]: rescale them before loading"
            )
        if np.isinf(scores).any():
            raise DatasetError("scores contain inf; use NaN for a missing outcome")
        priced = costs[~np.isnan(costs)]
        if priced.size and (priced.min() < 0.0 or np.isinf(priced).any()):
            raise DatasetError("costs must be finite and >= 0 USD (NaN for unknown)")
        if self.latency_ms is not None:
            latency = np.array(self.latency_ms, dtype=np.float64)
            if latency.shape != (n, m):
                raise DatasetError(f"latency_ms has shape {latency.shape}, expected ({n}, {m})")
            latency.setflags(write=False)
            object.__setattr__(self, "latency_ms", latency)
        scores.setflags(write=False)
        costs.setflags(write=False)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "costs", costs)

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        return (
            f"OutcomeSet(n={len(self)}, models={self.models}, "
            f"groups={len(set(self.groups))}, missing_rows={int(self.missing_mask().sum())})"
        )

    def subset(self, idx: Sequence[int] | np.ndarray) -> OutcomeSet:
        """Rows `idx` (integer positions or a boolean mask of length n), in that order."""
        rows = np.asarray(idx)
        if rows.dtype == np.bool_:
            if rows.shape != (len(self),):
                raise DatasetError(f"a boolean mask needs {len(self)} entries, got {rows.shape}")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.intp, copy=False)
        pick = rows.tolist()
        return OutcomeSet(
            prompts=[self.prompts[i] for i in pick],
            models=list(self.models),
            scores=self.scores[rows],
            costs=self.costs[rows],
            groups=[self.groups[i] for i in pick],
            ids=[self.ids[i] for i in pick],
            responses=None if self.responses is None else [self.responses[i] for i in pick],
            latency_ms=None if self.latency_ms is None else self.latency_ms[rows],
        )

    def select_models(self, models: Sequence[str]) -> OutcomeSet:
        """The same rows with only `models`, in the order given (e.g. a weak/strong pair)."""
        missing = [m for m in models if m not in self.models]
        if missing:
            raise DatasetError(f"models {missing} are not in this set; it has {self.models}")
        cols = [self.models.index(m) for m in models]
        return OutcomeSet(
            prompts=list(self.prompts),
            models=list(models),
            scores=self.scores[:, cols],
            costs=self.costs[:, cols],
            groups=list(self.groups),
            ids=list(self.ids),
            responses=None
            if self.responses is None
            else [[r[c] for c in cols] for r in self.responses],
            latency_ms=None if self.latency_ms is None else self.latency_ms[:, cols],
        )

    def split_by_group(self, test_groups: Iterable[str]) -> tuple[OutcomeSet, OutcomeSet]:
        """(train, test): rows whose group is in `test_groups` go to test, the rest to train.

        Splitting by subject is the honest test of a router that must generalise to topics it
        was not trained on.
        """
        wanted = set(test_groups)
        unknown = wanted - set(self.groups)
        if unknown:
            raise DatasetError(
                f"test groups {sorted(unknown)} do not occur in this set; "
                f"its groups are {sorted(set(self.groups))}"
            )
        mask = np.fromiter((g in wanted for g in self.groups), dtype=np.bool_, count=len(self))
        return self.subset(~mask), self.subset(mask)

    def split_by_hash(
        self, test_fraction: float = 0.2, seed: int = 0
    ) -> tuple[OutcomeSet, OutcomeSet]:
        """(train, test) by a hash of (seed, prompt text).

        A row's side depends only on its prompt, never on row order, file order or a random
        generator, so the split is reproducible and a prompt that occurs twice cannot leak
        from train into test.
        """
        if not 0.0 < test_fraction < 1.0:
            raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}")
        cut = test_fraction * 2.0**64
        mask = np.fromiter(
            (_digest(f"{seed}\x00{p}") < cut for p in self.prompts),
            dtype=np.bool_,
            count=len(self),
        )
        return self.subset(~mask), self.subset(mask)

    def missing_mask(self) -> np.ndarray:
        """Boolean (n,): rows where at least one model has no recorded score, or an unknown
        cost where its other rows' are known (the metrics take neither: a row with a blank
        cost had been kept, and the metrics' advice to drop_missing() then changed nothing).
        A model with no known cost at all is unpriced, not a gap in some rows: its rows are
        kept, for `select_models` to leave it out (the metrics say so)."""
        unknown = np.isnan(self.costs)
        gaps = unknown & ~unknown.all(axis=0)
        mask: np.ndarray = np.isnan(self.scores).any(axis=1) | gaps.any(axis=1)
        return mask

    def drop_missing(self, *, source: str = "outcome set") -> OutcomeSet:
        """Only the rows where every model has a score and a known cost; logs how many rows
        were dropped.

        Metrics compare models on the same prompts, so a row where one model has no outcome
        cannot be scored fairly. Raises DatasetError when nothing would remain.
        """
        missing = self.missing_mask()
        dropped = int(missing.sum())
        if dropped == 0:
            return self
        if dropped == len(self):
            raise DatasetError(
                f"{source}: every one of the {dropped} rows lacks a score or a cost for at "
                "least one model: give outcomes where the models answered the same prompts "
                "(on the command line, fewer models or other files; in Python, load with "
                "keep_missing=True and use select_models(...) to keep those measured together)"
            )
        log.warning(
            "%s: dropped %d of %d rows where some model has no score or an unknown cost "
            "(load with keep_missing=True to keep them as NaN)",
            source,
            dropped,
            len(self),
        )
        return self.subset(~missing)


def concat(sets: Sequence[OutcomeSet]) -> OutcomeSet:
    """Rows of several sets over the same models (columns aligned by model id)."""
    if not sets:
        raise DatasetError("no outcome data to combine: the paths named no data files")
    models = sets[0].models
    for s in sets[1:]:
        if set(s.models) != set(models):
            raise DatasetError(
                f"files disagree on the models: {sorted(models)} vs {sorted(s.models)}; "
                f"load them separately or make the model columns match"
            )
    aligned = [s if s.models == models else s.select_models(models) for s in sets]
    with_responses = any(s.responses is not None for s in aligned)
    responses: list[list[str | None]] | None = None
    if with_responses:
        responses = []
        for s in aligned:
            responses.extend(s.responses or [[None] * len(models) for _ in range(len(s))])
    latency = None
    if any(s.latency_ms is not None for s in aligned):
        latency = np.concatenate(
            [
                np.full((len(s), len(models)), np.nan) if s.latency_ms is None else s.latency_ms
                for s in aligned
            ]
        )
    return OutcomeSet(
        prompts=[p for s in aligned for p in s.prompts],
        models=list(models),
        scores=np.concatenate([s.scores for s in aligned]),
        costs=np.concatenate([s.costs for s in aligned]),
        groups=[g for s in aligned for g in s.groups],
        ids=[i for s in aligned for i in s.ids],
        responses=responses,
        latency_ms=latency,
    )
