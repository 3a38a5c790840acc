"""Per-prompt outcome data for training and evaluating routers.

Every loader returns one `OutcomeSet`: n prompts x m models of scores in [0, 1] and USD
costs, with a group per prompt (benchmark, subject or cluster) for honest group splits and
a stable id per prompt. Loaders take explicit files or directories; `data_dir()` reads the
`SATISFICE_DATA_DIR` environment variable for callers that want a default location.

Formats (`load(format, paths)`):

- `routerbench`: RouterBench CSVs (`load_routerbench`), real per-query costs.
- `routellm`: RouteLLM's MMLU/GSM8K CSVs (`load_routellm`), costs from token counts and prices.
- `llmrouter`: LLMRouter's `dcrouter_*.json` + `llm_prices.json` (`load_llmrouter`).
- `outcomes`: satisfice's own JSONL log format (`load_outcomes`), below.

Missing outcomes. A NaN score means the source recorded no outcome for that model on that
prompt; a NaN cost means the cost is unknown or the model is unpriced. Neither is ever
replaced by 0. By default every loader drops rows where any model lacks a score, or has an
unknown cost where its other rows' are known (a model with no known cost at all is unpriced:
kept, for `select_models`), and logs a
warning on the `satisfice.eval` logger saying how many rows went; pass `keep_missing=True`
to keep them as NaN and decide yourself (`OutcomeSet.missing_mask()`, `drop_missing()`,
`select_models(...)`). The metrics in `satisfice.eval.metrics` refuse NaN rather than guess.

The outcomes format (UTF-8 JSONL, one object per line, blank lines ignored)::

    {"prompt": "Summarise this contract ...",            # or "messages": [...]
     "outcomes": {
        "gpt-4o-mini": {"score": 0.0, "cost_usd": 0.00031, "tokens_in": 1520,
                        "tokens_out": 140, "response": "...", "latency_ms": 812.0},
        "gpt-4o":      {"score": 1.0, "tokens_in": 1520, "tokens_out": 188}},
     "group": "contracts",                                # optional, default "default"
     "id": "req_01HZX..."}                                # optional, default prompt hash

- `prompt` (string) or `messages` (OpenAI chat messages; the prompt is the text of every
  message joined by blank lines, see `messages_to_text`).
- `outcomes`: one object per model that answered, keyed by model id:
  - `score` (required key; number in [0, 1], true/false accepted, null = not yet judged),
  - `cost_usd` (number or null): what the call cost. When absent or null and both
    `tokens_in` and `tokens_out` are given, the cost is computed from the `prices` mapping
    passed to the loader (USD per 1M tokens, `{model: (input, output)}`); otherwise NaN.
  - `tokens_in`, `tokens_out` (integers), `response` (string), `latency_ms` (number):
    optional.
  A model absent from a line has a NaN score and cost on that line.
- `group` (string): used by `OutcomeSet.split_by_group`.
- `id` (string): kept (suffixed `#2`, ... if repeated); defaults to a hash of the prompt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from ..errors import DatasetError
from ._io import Paths, Prices, TokenCounter
from ._llmrouter import PRICES_FILE, load_llmrouter, read_llmrouter_prices
from ._outcomes import load_outcomes, messages_to_text
from ._routellm import ROUTELLM_PRICES, load_routellm
from ._routerbench import load_routerbench
from ._set import OutcomeSet, concat, prompt_id

__all__ = [
    "FORMATS",
    "ROUTELLM_PRICES",
    "DataFormat",
    "OutcomeSet",
    "Paths",
    "Prices",
    "TokenCounter",
    "concat",
    "data_dir",
    "load",
    "load_llmrouter",
    "load_outcomes",
    "load_routellm",
    "load_routerbench",
    "messages_to_text",
    "prompt_id",
    "read_llmrouter_prices",
]

DataFormat = Literal["routerbench", "routellm", "llmrouter", "outcomes"]
FORMATS: tuple[DataFormat, ...] = ("routerbench", "routellm", "llmrouter", "outcomes")

ENV_VAR = "SATISFICE_DATA_DIR"


def data_dir() -> Path:
    """The directory named by `SATISFICE_DATA_DIR`; DatasetError if unset or not a directory."""
    value = os.environ.get(ENV_VAR)
    if not value:
        raise DatasetError(
            f"{ENV_VAR} is not set; point it at the outcome data, "
            f"e.g. {ENV_VAR}=../shared/data, or pass the files explicitly"
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{ENV_VAR}={value!r} is not a directory; fix the variable")
    return path


def _llmrouter(paths: Paths, **kw: Any) -> OutcomeSet:
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    prices = [p for p in items if Path(p).name == PRICES_FILE]
    data = [p for p in items if Path(p).name != PRICES_FILE]
    if len(data) != 1 or len(prices) > 1:
        raise DatasetError(
            f"llmrouter takes one data file or directory (and optionally {PRICES_FILE}); "
            f"got {[str(p) for p in items]}"
        )
    if prices and "prices_path" not in kw:
        kw["prices_path"] = prices[0]
    return load_llmrouter(data[0], **kw)


def load(format: str, paths: Paths, **kw: Any) -> OutcomeSet:
    """Load `paths` in `format` (one of `FORMATS`); keyword arguments go to the loader."""
    if format == "routerbench":
        return load_routerbench(paths, **kw)
    if format == "routellm":
        return load_routellm(paths, **kw)
    if format == "llmrouter":
        return _llmrouter(paths, **kw)
    if format == "outcomes":
        return load_outcomes(paths, **kw)
    raise DatasetError(f"unknown data format {format!r}; choose one of {', '.join(FORMATS)}")
