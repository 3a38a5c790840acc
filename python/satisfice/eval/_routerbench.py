"""RouterBench CSV loader (Hu et al. 2024, as redistributed by RouterDC)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ._io import Paths, expand_paths, parse_cost, parse_score, read_csv, unique_ids
from ._set import OutcomeSet, concat

__all__ = ["load_routerbench"]

_META = ("sample_id", "prompt", "eval_name")
_COST = "|total_cost"
_RESPONSE = "|model_response"


def _unlist(cell: str) -> str:
    """RouterBench stores texts as a Python list literal (`['...']`); join its parts.

    A few rows hold two parts (a prompt sent as two messages); they are joined by a blank line.
    Cells that are not a list literal are returned unchanged.
    """
    if not cell.startswith("["):
        return cell
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return cell
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n\n".join(value)
    return cell


def _load_file(path: Path, with_responses: bool) -> OutcomeSet:
    header, rows = read_csv(path, _META)
    # Keep the score columns' order; a cost column marks which columns are models.
    costed = {c[: -len(_COST)] for c in header if c.endswith(_COST)}
    models = [c for c in header if c in costed]
    if not costed:
        raise DatasetError(
            f"{path}: no '<model>{_COST}' columns; a RouterBench CSV has, per model, "
            f"'<model>', '<model>{_RESPONSE}' and '<model>{_COST}'"
        )
    no_score = sorted(costed - set(models))
    if no_score:
        raise DatasetError(f"{path}: models {no_score} have a cost column but no score column")
    col = {name: i for i, name in enumerate(header)}
    score_cols = [col[m] for m in models]
    cost_cols = [col[m + _COST] for m in models]
    resp_cols = [col.get(m + _RESPONSE) for m in models]

    prompts: list[str] = []
    groups: list[str] = []
    raw_ids: list[str] = []
    scores: list[list[float]] = []
    costs: list[list[float]] = []
    responses: list[list[str | None]] = []
    for line, row in rows:
        where = f"{path}:{line}"
        prompts.append(_unlist(row[col["prompt"]]))
        groups.append(row[col["eval_name"]])
        raw_ids.append(row[col["sample_id"]])
        scores.append([parse_score(row[c], f"{where}, column {header[c]!r}") for c in score_cols])
        costs.append([parse_cost(row[c], f"{where}, column {header[c]!r}") for c in cost_cols])
        if with_responses:
            responses.append([None if c is None else _unlist(row[c]) for c in resp_cols])
    m = len(models)
    return OutcomeSet(
        prompts=prompts,
        models=models,
        scores=np.array(scores, dtype=np.float64).reshape(-1, m),
        costs=np.array(costs, dtype=np.float64).reshape(-1, m),
        groups=groups,
        ids=raw_ids,
        responses=responses if with_responses else None,
    )


def load_routerbench(
    paths: Paths, *, keep_missing: bool = False, with_responses: bool = True
) -> OutcomeSet:
    """Load RouterBench CSVs: files, or directories searched for `*.csv`.

    Columns: `sample_id, prompt, eval_name`, then per model `<model>` (score in [0, 1], empty
    or NaN when no outcome was recorded), `<model>|model_response` and `<model>|total_cost`
    (real USD for that query, prompt and completion included). Other columns (the unnamed
    index, `oracle_model_to_route_to`) are ignored. Groups are `eval_name`; ids are
    `sample_id` (suffixed `#2` where the source reuses one).

    Rows where some model has no score are dropped and counted in a log warning unless
    `keep_missing=True`. `with_responses=False` skips the answer texts (faster, less memory).
    """
    files = expand_paths(paths, (".csv",))
    merged = concat([_load_file(f, with_responses) for f in files])
    merged = dataclasses.replace(merged, ids=unique_ids(merged.ids, merged.prompts))
    return merged if keep_missing else merged.drop_missing(source="routerbench")
