"""Replay: answer model calls from recorded outcomes, so cascades run offline on real answers.

    outcomes = load_routerbench(data_dir() / "routerbench")
    replay = Replay(outcomes)
    result = await cascade.run(replay.call_for(i), outcomes.prompts[i],
                               estimates=replay.estimates())
    quality = replay.score(i, result.model)        # the dataset's recorded score

Each `call(model, messages)` returns the model's recorded response for that prompt
(RouterBench `<model>|model_response`, RouteLLM GSM8K `<model>_response`) with its recorded
cost, so the real cascade, validators and accounting run unchanged. A model with no recorded
response or score raises ProviderError, as an upstream failure would: the cascade records it
and moves on. Nothing here knows the score until the caller asks for it after the cascade.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core
from .cascade import Call, ModelEstimate
from .errors import ConfigError, InputError, ProviderError
from .validators import Answer

if TYPE_CHECKING:
    from .eval.datasets import OutcomeSet

__all__ = ["Replay"]


def _prompt_of(messages: Sequence[Mapping[str, Any]] | str) -> str:
    if isinstance(messages, str):
        return messages
    # The recorded prompt is the last user message the cascade was given.
    for m in reversed(messages):
        if not isinstance(m, Mapping):  # (None had raised a bare AttributeError)
            raise ConfigError(f"replay: a message must be an object, got {type(m).__name__}")
        if m.get("role", "user") == "user" and isinstance(m.get("content"), str):
            return str(m["content"])
    raise ConfigError("replay: the messages hold no user text to look the prompt up by")


def _is_row(row: object) -> bool:
    """An integer row index (a numpy one too), not a bool, a float or text."""
    return isinstance(row, int | np.integer) and not isinstance(row, bool)


class Replay:
    """Recorded answers of an OutcomeSet served as model calls.

    `latency_ms` (model -> ms) stands in for a set with no recorded latency; with neither,
    answers carry no latency and only real elapsed time counts. Token counts are exact
    cl100k_base counts of the prompt and the response (the set records none), made only
    when `count_tokens` is on.
    """

    def __init__(
        self,
        outcomes: OutcomeSet,
        *,
        latency_ms: Mapping[str, float] | None = None,
        count_tokens: bool = True,
    ) -> None:
        if outcomes.responses is None:
            raise ConfigError(
                "replay needs recorded responses; this outcome set has none (RouterBench "
                "and RouteLLM GSM8K do; load them with responses, e.g. with_responses=True)"
            )
        self.outcomes = outcomes
        self._col = {m: j for j, m in enumerate(outcomes.models)}
        self._row: dict[str, int] = {}
        for i, p in enumerate(outcomes.prompts):
            self._row.setdefault(p, i)  # a repeated prompt replays its first recording
        self._latency = dict(latency_ms or {})
        self._count = count_tokens
        # Counting is exact but not free; a sweep replays the same texts many times.
        self._tokens: dict[str, int] = {}
        # A replayed estimate must not peek at the row's own cost: use each model's mean.
        known = ~np.isnan(outcomes.costs)
        sums = np.where(known, outcomes.costs, 0.0).sum(axis=0)
        counts = known.sum(axis=0)
        self._mean_cost = {
            m: float(sums[j] / counts[j]) if counts[j] else None
            for j, m in enumerate(outcomes.models)
        }

    @property
    def models(self) -> list[str]:
        return list(self.outcomes.models)

    def row_of(self, messages: Sequence[Mapping[str, Any]] | str) -> int:
        """The row whose prompt is the messages' last user text."""
        prompt = _prompt_of(messages)
        try:
            return self._row[prompt]
        except KeyError:
            raise ConfigError(
                f"replay: no recorded prompt matches {prompt[:80]!r}; replay only the "
                "prompts of the outcome set (or use call_for(row))"
            ) from None

    def answer(self, row: int, model: str) -> Answer:
        """Model `model`'s recorded answer on `row`; ProviderError when none was recorded."""
        j = self._column(model)
        self._check_row(row)
        responses = self.outcomes.responses
        assert responses is not None  # checked in __init__
        text = responses[row][j]
        # not text (a NaN a data frame keeps for a missing answer) is no recorded answer: it
        # had reached the token counter as a bare TypeError
        if not isinstance(text, str) or math.isnan(float(self.outcomes.scores[row, j])):
            raise ProviderError(
                f"replay: {model} has no recorded answer for row {row}",
                model=model,
                deployment="replay",
            )
        cost = float(self.outcomes.costs[row, j])
        lat = self.outcomes.latency_ms
        latency = float(lat[row, j]) if lat is not None else self._latency.get(model)
        if latency is not None and math.isnan(latency):
            latency = self._latency.get(model)
        return Answer(
            model=model,
            text=text,
            tokens_in=self._tokens_of(self.outcomes.prompts[row]),
            tokens_out=self._tokens_of(text),
            cost_usd=None if math.isnan(cost) else cost,
            latency_ms=latency,
        )

    async def __call__(self, model: str, messages: list[dict[str, Any]]) -> Answer:
        """A cascade `call` that finds the row by the prompt text."""
        return self.answer(self.row_of(messages), model)

    def call_for(self, row: int) -> Call:
        """A cascade `call` bound to one row (exact even when prompts repeat)."""
        if not _is_row(row) or not 0 <= row < len(self.outcomes):
            raise ConfigError(
                f"replay: row {row!r:.40} is not a row index: outside 0..{len(self.outcomes) - 1}"
            )

        async def call(model: str, messages: list[dict[str, Any]]) -> Answer:
            return self.answer(row, model)

        return call

    def score(self, row: int, model: str) -> float:
        """The dataset's recorded score of `model` on `row` (NaN when none was recorded)."""
        self._check_row(row)
        return float(self.outcomes.scores[row, self._column(model)])

    def _check_row(self, row: int) -> None:
        # numpy would wrap a negative row around and raise a bare IndexError past the end;
        # a float or text row had been a bare TypeError, and True row 1
        if not _is_row(row) or not 0 <= row < len(self.outcomes):
            raise InputError(
                f"replay: row {row!r:.40} is not a row index: outside 0..{len(self.outcomes) - 1}"
            )

    def estimates(
        self,
        *,
        p_good: Mapping[str, float] | None = None,
        p95_ms: Mapping[str, float] | None = None,
    ) -> dict[str, ModelEstimate]:
        """Per-model estimates for the cascade's rules: cost = the model's mean recorded
        cost over the set (never this row's own), p95 from `p95_ms` or the replay latency,
        and `p_good` from a prompt-only predictor when given."""
        return {
            m: ModelEstimate(
                None if p_good is None else p_good.get(m),
                self._mean_cost[m],
                (p95_ms or {}).get(m, self._latency.get(m)),
            )
            for m in self.outcomes.models
        }

    def _tokens_of(self, text: str) -> int | None:
        if not self._count:
            return None
        n = self._tokens.get(text)
        if n is None:
            n = self._tokens[text] = _core.count_tokens(text, "cl100k_base")
        return n

    def _column(self, model: str) -> int:
        try:
            return self._col[model]
        except (KeyError, TypeError):  # (a list had been a bare TypeError: unhashable)
            raise ConfigError(
                f"replay: model {model!r} is not in the outcome set; it has "
                f"{', '.join(self.outcomes.models)}"
            ) from None
