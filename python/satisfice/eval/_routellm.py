"""RouteLLM evaluation CSV loader (MMLU per subject, GSM8K with responses)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ._io import (
    Paths,
    Prices,
    TokenCounter,
    cost_usd,
    default_token_counter,
    expand_paths,
    parse_score,
    read_csv,
    unique_ids,
    utf8,
)
from ._set import OutcomeSet, concat, log, prompt_id

__all__ = ["ROUTELLM_PRICES", "load_routellm"]

# USD per 1M tokens (input, output). The data has no prices; these are the list prices of the
# two models RouteLLM routed between at the time the outcomes were recorded.
ROUTELLM_PRICES: Mapping[str, tuple[float, float]] = {
    "gpt-4-1106-preview": (10.0, 30.0),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": (0.60, 0.60),
}

_RESPONSE = "_response"
_CONTAMINATED = "contaminated_prompts.jsonl"


def _group_of(path: Path) -> str:
    # mmlu_<subject>.csv -> <subject>; gsm8k_responses.csv -> gsm8k.
    stem = path.stem
    if stem.startswith("mmlu_"):
        return stem[len("mmlu_") :]
    if stem.endswith("_responses"):
        return stem[: -len("_responses")]
    return stem


def _read_contaminated(path: Path) -> set[str]:
    out: set[str] = set()
    with utf8(path), path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                out.add(record["eval_prompt"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(
                    f"{path}:{line_no}: expected a JSON object with an 'eval_prompt' string ({exc})"
                ) from exc
    return out


def _load_file(
    path: Path,
    contaminated: set[str],
    count_tokens: TokenCounter,
    prices: Prices,
    assumed_tokens_out: int,
) -> tuple[OutcomeSet, int]:
    header, rows = read_csv(path, ("prompt",))
    if {"sample_id", "eval_name"} <= set(header):  # every other column had been a "model"
        raise DatasetError(
            f"{path}: columns 'sample_id' and 'eval_name' are RouterBench's, not RouteLLM's "
            "(read as models, the ids were scores). Is this the right --format? Try "
            "--format routerbench"
        )
    models = [c for c in header if c != "prompt" and not c.endswith(_RESPONSE)]
    if not models:
        raise DatasetError(
            f"{path}: no model columns; a RouteLLM CSV has 'prompt', one True/False column "
            f"per model and optionally '<model>{_RESPONSE}'"
        )
    col = {name: i for i, name in enumerate(header)}
    resp_cols = [col.get(m + _RESPONSE) for m in models]
    has_responses = any(c is not None for c in resp_cols)
    group = _group_of(path)

    prompts: list[str] = []
    scores: list[list[float]] = []
    costs: list[list[float]] = []
    responses: list[list[str | None]] = []
    dropped = 0
    for line, row in rows:
        prompt = row[col["prompt"]]
        if prompt in contaminated:
            dropped += 1
            continue
        where = f"{path}:{line}"
        answers = [None if c is None else row[c] or None for c in resp_cols]
        tokens_in = count_tokens(prompt)
        prompts.append(prompt)
        scores.append([parse_score(row[col[m]], f"{where}, column {m!r}") for m in models])
        costs.append(
            [
                cost_usd(
                    prices,
                    m,
                    tokens_in,
                    assumed_tokens_out if a is None else count_tokens(a),
                )
                for m, a in zip(models, answers, strict=True)
            ]
        )
        responses.append(answers)
    m = len(models)
    result = OutcomeSet(
        prompts=prompts,
        models=models,
        scores=np.array(scores, dtype=np.float64).reshape(-1, m),
        costs=np.array(costs, dtype=np.float64).reshape(-1, m),
        groups=[group] * len(prompts),
        ids=[f"{group}:{prompt_id(p)}" for p in prompts],
        responses=responses if has_responses else None,
    )
    return result, dropped


def load_routellm(
    paths: Paths,
    *,
    count_tokens: TokenCounter | None = None,
    prices: Prices = ROUTELLM_PRICES,
    drop_contaminated: bool = True,
    assumed_tokens_out: int = 1,
    keep_missing: bool = False,
) -> OutcomeSet:
    """Load RouteLLM's evaluation CSVs: files, or directories searched for `*.csv`.

    Each CSV has `prompt`, one True/False correctness column per model and, for GSM8K,
    `<model>_response` with the full answer. The group is the subject from the file name
    (`mmlu_<subject>.csv` -> `<subject>`, `gsm8k_responses.csv` -> `gsm8k`); ids are
    `<group>:` plus a hash of the prompt.

    The data carries no prices, so cost = tokens_in x price_in + tokens_out x price_out with
    `prices` (USD per 1M tokens; default `ROUTELLM_PRICES`, GPT-4-1106 $10/$30 and
    Mixtral-8x7B $0.60/$0.60; a model missing from `prices` gets NaN cost, never 0).
    tokens_in counts the recorded prompt only: RouteLLM's few-shot prefixes (5-shot MMLU,
    8-shot GSM8K) are not in the data, so absolute costs are those of the zero-shot prompt a
    router sees. tokens_out counts the recorded response where there is one (GSM8K), else it
    is `assumed_tokens_out`, default 1 because RouteLLM generated MMLU answers with
    `max_new_tokens=1`. `count_tokens` defaults to the Rust core's exact `cl100k_base` BPE,
    GPT-4-1106's own encoding (Mixtral's tokenizer differs by some percent; its cost is small).

    With `drop_contaminated` (the default, as RouteLLM evaluates), prompts listed in a
    `contaminated_prompts.jsonl` beside a CSV are dropped; they overlap RouteLLM's training
    data. Rows where some model has no score are dropped (logged) unless `keep_missing=True`.
    """
    counter = count_tokens if count_tokens is not None else default_token_counter("cl100k_base")
    files = expand_paths(paths, (".csv",))
    cache: dict[Path, set[str]] = {}
    parts = []
    dropped = 0
    for path in files:
        flagged: set[str] = set()
        beside = path.parent / _CONTAMINATED
        if drop_contaminated and beside.is_file():
            if beside not in cache:
                cache[beside] = _read_contaminated(beside)
            flagged = cache[beside]
        part, n_flagged = _load_file(path, flagged, counter, prices, assumed_tokens_out)
        parts.append(part)
        dropped += n_flagged
    if dropped:
        log.info("routellm: dropped %d contaminated prompts, as RouteLLM does", dropped)
    merged = concat(parts)
    merged = dataclasses.replace(merged, ids=unique_ids(merged.ids, merged.prompts))
    return merged if keep_missing else merged.drop_missing(source="routellm")
