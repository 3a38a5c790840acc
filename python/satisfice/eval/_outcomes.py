"""Loader for satisfice's own outcome log format (JSONL); the format is documented in
`satisfice.eval.datasets`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError
from ..registry import _json_once
from ._io import Paths, Prices, cost_usd, expand_paths, unique_ids, utf8
from ._set import OutcomeSet

__all__ = ["load_outcomes", "messages_to_text"]

_EMPTY_PRICES: Mapping[str, tuple[float, float]] = {}


def messages_to_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text a router sees in chat messages: every message's text, joined by blank lines.

    `content` may be a string or a list of OpenAI-style parts; only `{"type": "text"}` parts
    carry text.
    """
    texts: list[str] = []
    for k, message in enumerate(messages):
        if not isinstance(message, Mapping) or "content" not in message:
            raise DatasetError(f"messages[{k}] must be an object with 'role' and 'content'")
        content = message["content"]
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, Mapping) and part.get("type") == "text"
            )
        elif content is not None:
            raise DatasetError(f"messages[{k}].content must be a string or a list of parts")
    return "\n\n".join(texts)


def _number(obj: Mapping[str, Any], key: str, where: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and key == "score":
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DatasetError(f"{where}.{key}: {value!r:.40} is not a finite number")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer too large for a float (1 followed by 400 zeros)
        raise DatasetError(
            f"{where}.{key}: an integer of {len(str(value))} digits is not a finite number"
        ) from None
    if not math.isfinite(number):
        raise DatasetError(f"{where}.{key}: {value!r} is not a finite number")
    return number


def _text(value: str, where: str) -> None:
    """Refuse `value` when it holds a lone surrogate: JSON's "\\ud800" escape is valid
    JSON but not text, so hashing, tokenising or printing it would fail later, far from the
    line that holds it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DatasetError(
            f"{where} holds a lone surrogate (\\u{ord(value[e.start]):04x}) at character "
            f"{e.start}, which is not text: fix the program that wrote it, or drop the line"
        ) from None


@dataclass
class _Row:
    prompt: str
    group: str
    id: str | None
    scores: dict[str, float] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    responses: dict[str, str] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)


def _parse_line(record: Any, where: str, prices: Prices) -> _Row:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: each line must be a JSON object")
    if isinstance(record.get("prompt"), str):
        prompt = record["prompt"]
    elif isinstance(record.get("messages"), list):
        prompt = messages_to_text(record["messages"])
    else:
        raise DatasetError(f"{where}: needs a 'prompt' string or a 'messages' list")
    outcomes = record.get("outcomes")
    if not isinstance(outcomes, dict) or not outcomes:
        raise DatasetError(
            f'{where}: needs "outcomes": {{model: {{"score": 0..1, "cost_usd": ...}}}} '
            f"with at least one model"
        )
    group, rid = record.get("group", "default"), record.get("id")
    if not isinstance(group, str) or (rid is not None and not isinstance(rid, str)):
        raise DatasetError(f"{where}: 'group' and 'id' must be strings when present")
    _text(prompt, f"{where}: the prompt")
    _text(group, f"{where}: 'group'")
    if rid is not None:
        _text(rid, f"{where}: 'id'")
    row = _Row(prompt=prompt, group=group, id=rid)
    for model, out in outcomes.items():
        at = f"{where}.outcomes[{model!r}]"
        _text(model, f"{where}: a model name in 'outcomes'")
        if not isinstance(out, dict):
            raise DatasetError(f"{at}: expected an object with at least 'score'")
        score = _number(out, "score", at)
        if score is not None and not 0.0 <= score <= 1.0:
            raise DatasetError(f"{at}.score: {score:g} is outside [0, 1]; rescale it")
        row.scores[model] = math.nan if score is None else score
        cost = _number(out, "cost_usd", at)
        if cost is not None and cost < 0.0:
            raise DatasetError(f"{at}.cost_usd: {cost:g} is negative")
        if cost is None:
            t_in, t_out = _number(out, "tokens_in", at), _number(out, "tokens_out", at)
            for k, t in (("tokens_in", t_in), ("tokens_out", t_out)):
                if t is not None and t < 0:  # (priced as given, it had failed unplaced)
                    raise DatasetError(f"{at}.{k}: {t:g} is negative")
            if t_in is not None and t_out is not None:
                cost = cost_usd(prices, model, int(t_in), int(t_out))
        row.costs[model] = math.nan if cost is None else cost
        response = out.get("response")
        if response is not None:
            if not isinstance(response, str):
                raise DatasetError(f"{at}.response must be a string")
            _text(response, f"{at}.response")
            row.responses[model] = response
        latency = _number(out, "latency_ms", at)
        if latency is not None:
            row.latency[model] = latency
    return row


def load_outcomes(
    paths: Paths, *, prices: Prices = _EMPTY_PRICES, keep_missing: bool = False
) -> OutcomeSet:
    """Load outcome logs in satisfice's JSONL format (files, or directories of `*.jsonl`).

    See the `satisfice.eval.datasets` docstring for the format. A model missing from a line's
    `outcomes`, or with `"score": null`, has a NaN score there. Rows where some model has no
    score are dropped (logged) unless `keep_missing=True`: logged traffic usually has one
    model per prompt, so keep them and compare models on rows both were measured on.
    """
    rows: list[_Row] = []
    for file in expand_paths(paths, (".jsonl",)):
        with utf8(file), Path(file).open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{file}:{line_no}"
                try:  # a model named twice on a line is refused: the last had won unsaid
                    record = _json_once(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{where}: not valid JSON ({exc.msg})") from exc
                except (ValueError, RecursionError) as exc:  # an integer of 5000 digits
                    raise DatasetError(f"{where}: cannot be read ({exc})"[:300]) from None
                rows.append(_parse_line(record, where, prices))
    if not rows:
        raise DatasetError("the outcome files hold no records")
    models = list(dict.fromkeys(m for r in rows for m in r.scores))
    n, m = len(rows), len(models)
    scores, costs, latency = (np.full((n, m), np.nan) for _ in range(3))
    for i, r in enumerate(rows):
        for j, model in enumerate(models):
            scores[i, j] = r.scores.get(model, math.nan)
            costs[i, j] = r.costs.get(model, math.nan)
            latency[i, j] = r.latency.get(model, math.nan)
    has_responses = any(r.responses for r in rows)
    prompts = [r.prompt for r in rows]
    result = OutcomeSet(
        prompts=prompts,
        models=models,
        scores=scores,
        costs=costs,
        groups=[r.group for r in rows],
        ids=unique_ids([r.id for r in rows], prompts),
        responses=[[r.responses.get(mm) for mm in models] for r in rows] if has_responses else None,
        latency_ms=latency if any(r.latency for r in rows) else None,
    )
    return result if keep_missing else result.drop_missing(source="outcomes")
