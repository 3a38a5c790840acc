"""The decision costs `satisfice eval` routes a saved predictor with, when no training rows
have every test model's cost: a line per model fitted on the test rows' recorded costs had
used each row's own cost (the length of an answer the router has not received) to route that
row. They are cross-fitted now: no row's estimate comes from its own recorded cost."""

from __future__ import annotations

import numpy as np

from satisfice.eval import evaluate as E
from satisfice.eval._set import OutcomeSet


def _set(costs: np.ndarray) -> OutcomeSet:
    n = len(costs)
    prompts = [("word " * (10 + 7 * i)).strip() for i in range(n)]
    return OutcomeSet(prompts, ["cheap", "dear"], np.full((n, 2), 0.5), costs, ["g"] * n,
                      [str(i) for i in range(n)])  # fmt: skip


def test_no_rows_decision_cost_comes_from_its_own_recorded_cost() -> None:
    rng = np.random.default_rng(0)
    costs = np.column_stack([rng.uniform(1e-4, 2e-4, 40), rng.uniform(1e-3, 2e-3, 40)])
    base, how = E.decision_costs([], _set(costs))
    assert "cross-fitted" in how
    for row in (0, 1, 17):
        moved = costs.copy()
        moved[row, 1] *= 50  # only this row's recorded answer cost
        again, _ = E.decision_costs([], _set(moved))
        assert again[row, 1] == base[row, 1], row


def test_decision_costs_that_could_not_be_cross_fitted_say_they_are_in_sample() -> None:
    """Three rows cannot be halved into two fits of two: the line of all of them routed each
    row on its own cost, under a note that said "cross-fitted"."""
    costs = np.array([[1e-4, 1e-3], [2e-4, 2e-3], [3e-4, 3e-3]])
    _, how = E.decision_costs([], _set(costs))
    assert "in-sample" in how and "cross-fitted" not in how
