"""LLMRouter (U Lab @ UIUC) JSON loader: `dcrouter_*.json` outcomes + `llm_prices.json`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError
from ._io import (
    PathArg,
    Prices,
    TokenCounter,
    cost_usd,
    default_token_counter,
    unique_ids,
    utf8,
)
from ._set import OutcomeSet

__all__ = ["load_llmrouter", "read_llmrouter_prices"]

PRICES_FILE = "llm_prices.json"


def read_llmrouter_prices(path: PathArg) -> dict[str, tuple[float, float]]:
    """`{model: {"input_price": usd_per_1M, "output_price": usd_per_1M, ...}}` as a mapping."""
    data = _read_json(Path(path))
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected an object mapping model names to prices")
    prices: dict[str, tuple[float, float]] = {}
    for model, entry in data.items():
        try:
            prices[model] = (_price(entry["input_price"]), _price(entry["output_price"]))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise DatasetError(
                f"{path}: model {model!r} needs 'input_price' and 'output_price' that are "
                f"finite numbers >= 0 (USD per 1M tokens): {exc}"
            ) from exc
    return prices


def _price(value: object) -> float:
    """A price in USD per 1M tokens: a finite number >= 0 (a negative one had made costs
    smaller, and "1e400" or "nan" failed later with no file or model named)."""
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is not a number")
    number = float(value)  # type: ignore[arg-type]  # TypeError/ValueError: not a number
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"got {value!r:.40}")
    return number


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        with utf8(path), path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except DatasetError:  # (not UTF-8: `utf8` names the file and the byte)
        raise
    except ValueError as exc:  # JSON's errors, and an integer past Python's 4,300 digits
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply to read") from None


def _data_files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.glob("*.json") if p.name != PRICES_FILE)
        if not found:
            raise DatasetError(f"{path}: no outcome .json files (other than {PRICES_FILE})")
        return found
    if path.is_file():
        return [path]
    raise DatasetError(f"{path}: no such file or directory")


def _score(value: object, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DatasetError(f"{where}: score {value!r} is not a number")
    if not 0 <= value <= 1:  # (before float(): 10**400 is no float)
        shown = f"{value:g}" if isinstance(value, float) else f"{value}"[:40]
        raise DatasetError(f"{where}: score {shown} is outside [0, 1]")
    number = float(value)
    return number


def load_llmrouter(
    path: PathArg,
    prices_path: PathArg | None = None,
    *,
    count_tokens: TokenCounter | None = None,
    assumed_tokens_out: int = 256,
    keep_missing: bool = False,
) -> OutcomeSet:
    """Load LLMRouter's `dcrouter_train.json` (a file, or a directory of such files).

    Each record is `{"question": str, "scores": {model: 0..1}, "cluster_id": int}`; the group
    is `cluster_<id>`, the id a hash of the question. Prices come from `prices_path`
    (`llm_prices.json`, default: beside the data) as USD per 1M input/output tokens.

    The data records no answers, so cost = count_tokens(question) x input price +
    `assumed_tokens_out` x output price, with 256 output tokens assumed per answer (a short
    explanation or worked solution; the questions are trivia, multiple choice and grade-school
    math). Every model here has equal input and output prices, so this assumption shifts each
    model's cost by the same share and leaves their price ranking unchanged. `count_tokens`
    defaults to the Rust core's `o200k_base` count (the models use their own tokenizers; this
    is an estimate). Models without a price get NaN cost. Rows where some model has no score
    are dropped (logged) unless `keep_missing=True`.
    """
    base = Path(path)
    files = _data_files(base)
    price_file = Path(prices_path) if prices_path is not None else files[0].parent / PRICES_FILE
    if not price_file.is_file():
        raise DatasetError(
            f"{price_file}: no price file (USD per 1M tokens per model); on the command "
            f"line put {PRICES_FILE} beside the data or list it among the files, in Python "
            "pass prices_path=..."
        )
    prices: Prices = read_llmrouter_prices(price_file)
    counter = count_tokens if count_tokens is not None else default_token_counter()

    records: list[tuple[str, dict[str, float], str]] = []
    models: dict[str, None] = {}  # insertion-ordered set
    for file in files:
        data = _read_json(file)
        if not isinstance(data, list):
            raise DatasetError(
                f'{file}: expected a JSON list of {{"question", "scores", "cluster_id"}} records'
            )
        for k, rec in enumerate(data):
            where = f"{file}[{k}]"
            if not isinstance(rec, dict) or not isinstance(rec.get("question"), str):
                raise DatasetError(f"{where}: expected an object with a 'question' string")
            raw = rec.get("scores")
            if not isinstance(raw, dict) or not raw:
                raise DatasetError(f"{where}: 'scores' must be a non-empty {{model: score}}")
            scores = {str(m): _score(v, f"{where}.scores[{m!r}]") for m, v in raw.items()}
            models.update(dict.fromkeys(scores))
            records.append((rec["question"], scores, f"cluster_{rec.get('cluster_id', 'none')}"))

    names = list(models)
    score_arr = np.full((len(records), len(names)), np.nan)
    cost_arr = np.full((len(records), len(names)), np.nan)
    for i, (question, scores, _) in enumerate(records):
        tokens_in = counter(question)
        for j, m in enumerate(names):
            score_arr[i, j] = scores.get(m, math.nan)
            cost_arr[i, j] = cost_usd(prices, m, tokens_in, assumed_tokens_out)
    prompts = [r[0] for r in records]
    result = OutcomeSet(
        prompts=prompts,
        models=names,
        scores=score_arr,
        costs=cost_arr,
        groups=[r[2] for r in records],
        ids=unique_ids([None] * len(prompts), prompts),
        responses=None,
    )
    return result if keep_missing else result.drop_missing(source="llmrouter")
