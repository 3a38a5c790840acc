"""Evaluate cascades offline: the real Cascade, validators and accounting on recorded answers.

`evaluate_cascade(outcomes)` splits the prompts by hash into a tuning part and a test part,
chooses cascade settings on the tuning part only, and reports the test part:

- Two models (weak, strong), e.g. RouteLLM GSM8K: the weak model's recorded answer is read
  by checks (its final answer, its arithmetic, whether it uses the given numbers, hedging)
  plus the prompt-only prior; a logistic fit on the tuning rows turns them into one
  P(ok), and the cascade escalates when P(ok) is below a threshold. Sweeping the threshold
  gives RouteLLM's strong-share curve and APGR, shown beside prompt-only routing's APGR and
  the checks alone, on the same test rows.
- More models, e.g. RouterBench: for each task (the outcome set's group by default, since
  the checks depend on the answer format), candidate ladders of cheap models with
  agreement or format checks are replayed on the tuning rows; for each cost budget (a share
  of the reference model's cost) the best combination of one ladder per task is chosen and
  then replayed on the test rows. Reported: cost and quality against the reference model,
  the share of requests that needed 1, 2 or 3 sequential steps (the latency price), and
  prompt-only routing at the same budgets.

Every figure on the test part comes from rows never used to fit or choose anything.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import validators as v
from .._core import DENSE, Featurizer
from ..cascade import Cascade, CascadeResult, ModelEstimate, Step
from ..errors import DatasetError
from ..predict import sigmoid
from ..replay import Replay
from ._set import OutcomeSet
from .membership import prompt_key
from .metrics import (
    aiq,
    apgr,
    cost_to_reach,
    cpt,
    oracle,
    single_models,
    strong_share_curve,
    sweep_lambda,
)

__all__ = [
    "HEDGES",
    "evaluate_cascade",
    "fit_calibrated",
    "math_checks",
    "router_task",
    "summary_lines",
    "tune_cascades",
]

#: Words with which a worked solution admits it is unsure or has changed its mind.
# The lookahead on first letters lets the engine skip most positions: about 3x faster.
HEDGES = re.compile(
    r"\b(?=[arehwmnc])(?:a(?:pproximately|round|bout|ssum\w*|ctually)|"
    r"r(?:oughly|ound(?:ed|ing)?|e-?evaluate)|estimate[ds]?|however|wait|mistake|"
    r"not possible|cannot)\b",
    re.IGNORECASE,
)


def math_checks() -> list[v.Validator]:
    """The checks of one worked math solution that the two-model evaluation combines."""
    return [
        v.final_answer(),
        v.final_answer(integer=True),
        v.arithmetic(),
        v.consistent_final(),
        v.uses_inputs(),
        v.regex(HEDGES, forbid=True, name="hedge"),
    ]


# -- small fitted models ------------------------------------------------------------------


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton steps; soft labels in [0, 1] allowed."""
    n, d = x.shape
    a = np.c_[x, np.ones(n)]
    w = np.zeros(d + 1)
    reg = l2 * np.eye(d + 1)
    reg[-1, -1] = 0.0  # the intercept is not shrunk
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ w, -30, 30)))
        grad = a.T @ (p - y) + reg @ w
        hess = (a * (p * (1 - p))[:, None]).T @ a + reg + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-9:
            break
    return w[:-1], float(w[-1])


@dataclass(frozen=True)
class _PromptModel:
    """Prompt-only P(good) per model: logistic regression on the dense prompt features."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # (d, m)
    bias: np.ndarray  # (m,)

    @classmethod
    def fit(cls, x: np.ndarray, scores: np.ndarray) -> _PromptModel:
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        z = (x - mean) / scale
        ws, bs = [], []
        for j in range(scores.shape[1]):
            w, b = _fit_logistic(z, scores[:, j])
            ws.append(w)
            bs.append(b)
        return cls(mean, scale, np.array(ws).T, np.array(bs))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return sigmoid(((x - self.mean) / self.scale) @ self.weights + self.bias)


def _features(prompts: Sequence[str]) -> np.ndarray:
    # the named dense features only: the hashed n-grams overfit small sets
    return np.asarray(Featurizer().featurize_batch(list(prompts)), np.float64)[:, :DENSE]


def fit_calibrated(
    checks: Sequence[v.Validator],
    answers: Sequence[v.Answer],
    contexts: Sequence[v.Context],
    labels: np.ndarray,
    *,
    l2: float = 1.0,
    threshold: float = 0.5,
) -> v.Calibrated:
    """`validators.calibrated(checks, ...)` with weights fitted by logistic regression of
    `labels` (1 = the answer was good) on the checks' confidences. Checks must be sync."""
    rows = []
    for a, ctx in zip(answers, contexts, strict=True):
        row = []
        for c in checks:
            got = c(a, ctx)
            if not isinstance(got, v.Verdict):
                raise DatasetError(f"fit_calibrated: check {c.name} is async; use sync checks")
            row.append(got.confidence)
        rows.append(row)
    w, b = _fit_logistic(np.array(rows, dtype=np.float64), np.asarray(labels, np.float64), l2)
    return v.calibrated(checks, w.tolist(), b, threshold)


# -- replaying cascades ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    quality: np.ndarray  # per row, the recorded score of the answer the cascade returned
    cost: np.ndarray  # per row, USD of every call the cascade made
    steps: np.ndarray  # per row, sequential steps that ran
    results: list[CascadeResult]


def _replay(
    cascade: Cascade,
    replay: Replay,
    rows: Sequence[int],
    estimates: Callable[[int], Mapping[str, ModelEstimate]] | None = None,
) -> _Run:
    async def go() -> list[CascadeResult]:
        out = []
        for i in rows:
            est = None if estimates is None else estimates(i)
            out.append(
                await cascade.run(replay.call_for(i), replay.outcomes.prompts[i], estimates=est)
            )
        return out

    results = asyncio.run(go())
    quality = np.array([replay.score(i, r.model or "") for i, r in zip(rows, results, strict=True)])
    cost = np.array([r.cost_usd if r.cost_usd is not None else math.nan for r in results])
    steps = np.array([r.sequential_steps for r in results])
    return _Run(quality, cost, steps, results)


def _step_shares(steps: np.ndarray) -> dict[str, float]:
    n = max(len(steps), 1)
    return {str(k): float((steps == k).sum() / n) for k in range(1, int(steps.max(initial=1)) + 1)}


# -- two models: checks of the weak model's answer ---------------------------------------------


def _two_model(
    tune: OutcomeSet,
    test: OutcomeSet,
    checks: Sequence[v.Validator],
    n_quantiles: int,
) -> dict[str, Any]:
    means = np.nanmean(tune.costs, axis=0)
    weak, strong = (0, 1) if means[0] <= means[1] else (1, 0)
    wm, sm = tune.models[weak], tune.models[strong]
    prior = _PromptModel.fit(_features(tune.prompts), tune.scores[:, [weak]])
    p_tune = prior.predict(_features(tune.prompts))[:, 0]
    p_test = prior.predict(_features(test.prompts))[:, 0]

    def contexts(s: OutcomeSet, p: np.ndarray) -> list[v.Context]:
        return [
            v.Context([{"role": "user", "content": q}], (), {wm: float(pi)})
            for q, pi in zip(s.prompts, p, strict=True)
        ]

    responses = tune.responses or []
    # A missing recorded answer is an empty one: every check fails it, as it should.
    tune_answers = [v.Answer(wm, responses[i][weak] or "") for i in range(len(tune))]
    labels = tune.scores[:, weak]
    with_prior = [*checks, v.predicted()]
    full = fit_calibrated(with_prior, tune_answers, contexts(tune, p_tune), labels)
    bare = fit_calibrated(checks, tune_answers, contexts(tune, p_tune), labels)

    replay = Replay(test)
    rows = list(range(len(test)))

    def est(i: int) -> dict[str, ModelEstimate]:
        return replay.estimates(p_good={wm: float(p_test[i])})

    def p_ok(check: v.Validator) -> np.ndarray:
        run = _replay(Cascade([Step((wm,), check), Step((sm,))]), replay, rows, est)
        # A weak model with no recorded answer has nothing to accept: confidence 0.
        return np.array(
            [r.steps[0].verdicts[0].confidence if r.steps[0].verdicts else 0.0 for r in run.results]
        )

    ws, ss = test.scores[:, weak], test.scores[:, strong]
    out: dict[str, Any] = {"kind": "two-model", "weak": wm, "strong": sm}
    scores = {
        "cascade": 1.0 - p_ok(full),
        "checks_only": 1.0 - p_ok(bare),
        "prompt_only": 1.0 - p_test,
    }
    for name, score in scores.items():
        curve = strong_share_curve(score, ws, ss, n_quantiles)
        out[f"apgr_{name}"] = apgr(curve)
        out[f"cpt50_{name}"] = cpt(curve, 0.5)
        out[f"cpt80_{name}"] = cpt(curve, 0.8)
    # The real cascade at each quantile threshold: its cost includes the weak call it
    # always makes, which prompt-only routing does not pay.
    conf = 1.0 - scores["cascade"]
    points: list[dict[str, Any]] = []
    for t in np.quantile(conf, np.linspace(0.0, 1.0, n_quantiles + 1)):
        thr = min(max(float(t), 0.0), 1.0)
        check = full.at(thr)
        run = _replay(Cascade([Step((wm,), check), Step((sm,))]), replay, rows, est)
        points.append(
            {
                "threshold": thr,
                "strong_share": float((run.steps == 2).mean()),
                "quality": float(run.quality.mean()),
                "cost_usd": float(run.cost.mean()),
                "steps": _step_shares(run.steps),
            }
        )
    out["curve"] = points
    # AIQ of the cascade's curve and of prompt-only routing's, on one cost axis (the weak
    # model alone to the strong alone), so the two strategies compare on one number.
    wc, sc = test.costs[:, weak], test.costs[:, strong]
    po_costs, po_quals = [], []
    for t in np.quantile(p_test, np.linspace(0.0, 1.0, n_quantiles + 1)):
        up = p_test < t
        po_costs.append(float(np.where(up, sc, wc).mean()))
        po_quals.append(float(np.where(up, ss, ws).mean()))
    po_costs += [float(wc.mean()), float(sc.mean())]
    po_quals += [float(ws.mean()), float(ss.mean())]
    pc = [float(p["cost_usd"]) for p in points]
    top = max(*po_costs, *pc)
    pq = [float(p["quality"]) for p in points]
    out["aiq_cascade"] = aiq([*pc, float(sc.mean())], [*pq, float(ss.mean())], top)
    out["aiq_prompt_only"] = aiq(po_costs, po_quals, top)
    out["weights"] = {c.name: w for c, w in zip(with_prior, full.weights, strict=True)}
    out["bias"] = full.bias
    out["weak_quality"], out["strong_quality"] = float(ws.mean()), float(ss.mean())
    out["weak_cost_usd"] = float(np.mean(test.costs[:, weak]))
    out["strong_cost_usd"] = float(np.mean(test.costs[:, strong]))
    return out


# -- many models: ladders per task -----------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    label: str
    cascade: Cascade


def _answer_kind(s: OutcomeSet, rows: Sequence[int], ref: int) -> str:
    responses = s.responses or []
    texts = [responses[i][ref] or "" for i in rows]
    if not texts:
        return "text"
    if np.mean([v.choice_letter(t) is not None for t in texts]) >= 0.8:
        return "choice"
    if np.mean([v.extract_code(t) is not None for t in texts]) >= 0.5:
        return "code"
    if np.mean([v.final_number(t) is not None for t in texts]) >= 0.8:
        return "number"
    return "text"


def _short(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def _ladders(kind: str, pool: Sequence[str], ref: str) -> list[_Candidate]:
    """Candidate ladders over the cheap `pool` ending at `ref` (or at a cheap model)."""
    out = [_Candidate(f"[{_short(ref)}]", Cascade([Step((ref,))]))]
    for a in pool:
        out.append(_Candidate(f"[{_short(a)}]", Cascade([Step((a,))])))
    if kind == "code":
        fmt = v.code_block("python")
        for a in pool:
            out.append(
                _Candidate(f"[{_short(a)}]/code -> top", Cascade([Step((a,), fmt), Step((ref,))]))
            )
            for b in pool:
                if b != a:
                    out.append(
                        _Candidate(
                            f"[{_short(a)}]/code -> [{_short(b)}]/code -> top",
                            Cascade([Step((a,), fmt), Step((b,), fmt), Step((ref,))]),
                        )
                    )
                    out.append(
                        _Candidate(
                            f"[{_short(a)}]/code -> [{_short(b)}]",
                            Cascade([Step((a,), fmt), Step((b,))]),
                        )
                    )
        return out
    if kind not in ("choice", "number"):
        return out
    extract = v.choice_letter if kind == "choice" else v.final_number_or_last
    agree = {k: v.agreement(extract, min_agree=k) for k in (2, 3)}
    fmt = v.extracts(extract)
    for a in pool:
        out.append(
            _Candidate(f"[{_short(a)}]/format -> top", Cascade([Step((a,), fmt), Step((ref,))]))
        )
    for a, b in itertools.combinations(pool, 2):
        pair = f"[{_short(a)}, {_short(b)}]/agree2"
        out.append(_Candidate(f"{pair} -> top", Cascade([Step((a, b), agree[2]), Step((ref,))])))
        rest = [c for c in pool if c not in (a, b)]
        for c in rest:
            out.append(
                _Candidate(
                    f"{pair} -> [{_short(c)}]/agree2 -> top",
                    Cascade([Step((a, b), agree[2]), Step((c,), agree[2]), Step((ref,))]),
                )
            )
        for c, d in itertools.combinations(rest, 2):
            out.append(
                _Candidate(
                    f"{pair} -> [{_short(c)}, {_short(d)}]/agree3 -> top",
                    Cascade([Step((a, b), agree[2]), Step((c, d), agree[3]), Step((ref,))]),
                )
            )
    for trio in itertools.combinations(pool, 3):
        names = ", ".join(_short(m) for m in trio)
        for k in (2, 3):
            out.append(
                _Candidate(
                    f"[{names}]/agree{k} -> top", Cascade([Step(trio, agree[k]), Step((ref,))])
                )
            )
    return out


@dataclass(frozen=True)
class _Scored:
    candidate: _Candidate
    quality: float  # summed over the task's tuning rows
    cost: float


def _front(scored: Sequence[_Scored]) -> list[_Scored]:
    """Pareto front: by rising cost, each strictly better than all cheaper ones."""
    out: list[_Scored] = []
    for s in sorted(scored, key=lambda s: (s.cost, -s.quality)):
        if not out or s.quality > out[-1].quality + 1e-12:
            out.append(s)
    return out


def _choose(fronts: Mapping[str, list[_Scored]], max_cost: float) -> dict[str, _Scored] | None:
    """One ladder per task maximising total tuning quality within `max_cost` (exhaustive
    over the Pareto fronts: a few tasks with a few dozen points each)."""
    tasks = list(fronts)
    lists = [list(fronts[t]) for t in tasks]
    while math.prod(len(f) for f in lists) > 200_000:
        # Many tasks: thin the longest front (keeping its ends) rather than search forever.
        k = max(range(len(lists)), key=lambda j: len(lists[j]))
        lists[k] = lists[k][:-1:2] + lists[k][-1:]
    best: tuple[float, tuple[_Scored, ...]] | None = None
    for combo in itertools.product(*lists):
        cost = sum(s.cost for s in combo)
        if cost > max_cost:
            continue
        q = sum(s.quality for s in combo)
        if best is None or q > best[0] + 1e-12:
            best = (q, combo)
    return None if best is None else dict(zip(tasks, best[1], strict=True))


def _fronts(
    tune: OutcomeSet,
    reference: str | None,
    cheap_share: float,
    pool_size: int,
    task_of: Callable[[OutcomeSet, int], str],
) -> tuple[str, dict[str, list[_Scored]], dict[str, str]]:
    """The reference model, and per task the Pareto front of candidate ladders replayed on
    the tuning rows, with the task's answer kind. Tasks with fewer than `_MIN_TASK_ROWS`
    rows are pooled under "*" (the ladder for every task without its own)."""
    singles = single_models(tune.models, tune.scores, tune.costs)
    ref = reference or min(singles, key=lambda p: (-p.quality, p.cost)).model
    if ref not in tune.models:
        raise DatasetError(f"reference model {ref!r} is not in the outcome set {tune.models}")
    r = tune.models.index(ref)
    tune_replay = Replay(tune, count_tokens=False)
    tasks = [task_of(tune, i) for i in range(len(tune))]
    sizes = {t: tasks.count(t) for t in set(tasks)}
    tasks = [t if sizes[t] >= _MIN_TASK_ROWS else "*" for t in tasks]
    fronts: dict[str, list[_Scored]] = {}
    kinds: dict[str, str] = {}
    for task in sorted(set(tasks)):
        rows = [i for i, t in enumerate(tasks) if t == task]
        kinds[task] = _answer_kind(tune, rows, r)
        cost_m = tune.costs[rows].mean(axis=0)
        qual_m = tune.scores[rows].mean(axis=0)
        cheap = [
            j for j in range(len(tune.models)) if j != r and cost_m[j] <= cheap_share * cost_m[r]
        ]
        pool = [tune.models[j] for j in sorted(cheap, key=lambda j: -qual_m[j])[:pool_size]]
        scored = []
        for cand in _ladders(kinds[task], pool, ref):
            run = _replay(cand.cascade, tune_replay, rows)
            scored.append(_Scored(cand, float(run.quality.sum()), float(run.cost.sum())))
        fronts[task] = _front(scored)
    return ref, fronts, kinds


_MIN_TASK_ROWS = 40  # a task with fewer tuning rows shares the "*" ladder


def _known(task: str, fronts: Mapping[str, object]) -> str:
    """The ladder a test prompt of `task` gets: its own, else "*" (as `Policy.cascade_for`)."""
    return task if task in fronts else "*"


def _many_models(
    tune: OutcomeSet,
    test: OutcomeSet,
    reference: str | None,
    budget_shares: Sequence[float],
    target_quality_share: float,
    target_cost_share: float,
    cheap_share: float,
    pool_size: int,
    task_of: Callable[[OutcomeSet, int], str],
) -> dict[str, Any]:
    ref, fronts, kinds = _fronts(tune, reference, cheap_share, pool_size, task_of)
    r = tune.models.index(ref)
    test_replay = Replay(test)
    test_tasks = [_known(task_of(test, i), fronts) for i in range(len(test))]
    ref_tune_cost = float(tune.costs[:, r].sum())
    ref_tune_quality = float(tune.scores[:, r].sum())

    def on_test(choice: Mapping[str, _Scored]) -> dict[str, Any]:
        q = np.zeros(len(test))
        c = np.zeros(len(test))
        steps = np.zeros(len(test), dtype=np.int64)
        for task, s in choice.items():
            rows = [i for i, t in enumerate(test_tasks) if t == task]
            if not rows:
                continue
            run = _replay(s.candidate.cascade, test_replay, rows)
            q[rows], c[rows], steps[rows] = run.quality, run.cost, run.steps
        # A test task tuning never saw, with no "*" ladder either: the reference answers.
        plain = [i for i, t in enumerate(test_tasks) if t not in choice]
        q[plain], c[plain], steps[plain] = test.scores[plain, r], test.costs[plain, r], 1
        ref_q, ref_c = float(test.scores[:, r].mean()), float(test.costs[:, r].mean())
        return {
            "ladders": {t: s.candidate.label for t, s in choice.items()},
            "quality": float(q.mean()),
            "cost_usd": float(c.mean()),
            "quality_share": float(q.mean() / ref_q),
            "cost_share": float(c.mean() / ref_c),
            "steps": _step_shares(steps),
            "mean_steps": float(steps.mean()),
        }

    sweep = []
    # the budgets asked for, and enough others from the cheapest ladders up for AIQ's curve
    shares = set(budget_shares) | {target_cost_share} | set(np.geomspace(0.01, 1.0, 12).round(4))
    for share in sorted(shares):
        choice = _choose(fronts, share * ref_tune_cost)
        if choice is not None:
            sweep.append({"budget_share": share, **on_test(choice)})
    # The cheapest ladders that reached the quality target on the tuning rows.
    target_choice = None
    for share in np.linspace(0.02, 1.0, 50):
        choice = _choose(fronts, float(share) * ref_tune_cost)
        if choice and sum(s.quality for s in choice.values()) >= (
            target_quality_share * ref_tune_quality
        ):
            target_choice = choice
            break
    at_budget = next((p for p in sweep if p["budget_share"] == target_cost_share), None)
    ref_q, ref_c = float(test.scores[:, r].mean()), float(test.costs[:, r].mean())
    singles = single_models(test.models, test.scores, test.costs)
    # One cost axis for the cascade's curve and prompt-only routing's: up to the dearest
    # single model, so AIQ compares the two strategies (and the models) on one number.
    top = max(max(p.cost for p in singles), *(p["cost_usd"] for p in sweep), ref_c)
    prompt_only = _prompt_only(tune, test, r, target_cost_share, target_quality_share, top)
    casc_c = [p["cost_usd"] for p in sweep] + [ref_c]
    casc_q = [p["quality"] for p in sweep] + [ref_q]
    return {
        "kind": "ladders",
        "reference": ref,
        "reference_quality": ref_q,
        "reference_cost_usd": ref_c,
        "task_answer_kinds": kinds,
        "at_cost_target": at_budget,
        "at_quality_target": None if target_choice is None else on_test(target_choice),
        "sweep": sweep,
        "aiq_cascade": aiq(casc_c, casc_q, top),
        "prompt_only": prompt_only,
        "singles": [{"model": p.model, "quality": p.quality, "cost_usd": p.cost} for p in singles],
        "oracle": vars(oracle(test.scores, test.costs)),
    }


def _prompt_only(
    tune: OutcomeSet,
    test: OutcomeSet,
    ref: int,
    cost_share: float,
    quality_share: float,
    max_cost: float,
) -> dict[str, Any]:
    """Prompt-only routing on the same split: per-model P(good) from prompt features
    (fitted on the tuning rows), routed by max P(good) - lambda * expected cost."""
    model = _PromptModel.fit(_features(tune.prompts), tune.scores)
    pred = model.predict(_features(test.prompts))
    expected = np.broadcast_to(np.nanmean(tune.costs, axis=0), pred.shape)
    curve = sweep_lambda(pred, expected, test.scores, test.costs, label="prompt-only")
    ref_q, ref_c = float(test.scores[:, ref].mean()), float(test.costs[:, ref].mean())
    ok = curve.costs <= cost_share * ref_c
    reach = cost_to_reach(curve, quality_share * ref_q)
    return {
        "aiq": aiq(curve.costs, curve.qualities, max(max_cost, float(curve.costs.max()))),
        "quality_share_at_cost_target": float(curve.qualities[ok].max() / ref_q)
        if ok.any()
        else None,
        "cost_share_at_quality_target": None if reach is None else reach / ref_c,
    }


# -- entry point ------------------------------------------------------------------------------


def _by_group(s: OutcomeSet, i: int) -> str:
    return s.groups[i]


def evaluate_cascade(
    outcomes: OutcomeSet,
    *,
    test_fraction: float = 0.5,
    seed: int = 0,
    reference: str | None = None,
    budget_shares: Sequence[float] = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5),
    target_quality_share: float = 0.98,
    target_cost_share: float = 0.30,
    cheap_share: float = 0.15,
    pool_size: int = 4,
    checks: Sequence[v.Validator] | None = None,
    n_quantiles: int = 10,
    max_rows: int | None = None,
    task_of: Callable[[OutcomeSet, int], str] | None = None,
    train: OutcomeSet | None = None,
) -> dict[str, Any]:
    """Tune cascades on one hash part of `outcomes`, report them on the other; with `train`,
    tune on `train` (other files: a set tuned once and applied elsewhere) and report on all of
    `outcomes`, less any prompt that also occurs in `train`.

    Two-model sets get the answer-check cascade and APGR (`checks` default to
    `math_checks()`); larger sets get per-task ladders swept over `budget_shares` of the
    `reference` model's cost (default: the best single model on the tuning rows). Cheap
    pool: up to `pool_size` models costing at most `cheap_share` of the reference on a
    task. `max_rows` evaluates an evenly spaced slice (for CI). Needs recorded responses.
    """
    if outcomes.responses is None:
        raise DatasetError(
            "evaluate_cascade replays recorded answers and this set has none; use RouterBench "
            "or RouteLLM GSM8K data (with responses)"
        )
    if np.isnan(outcomes.scores).any() or np.isnan(outcomes.costs).any():
        raise DatasetError("evaluate_cascade needs complete scores and costs: drop_missing() first")
    if max_rows is not None and max_rows < len(outcomes):
        outcomes = outcomes.subset(np.linspace(0, len(outcomes) - 1, max_rows).astype(np.intp))
    if train is not None:
        if list(train.models) != list(outcomes.models):
            if not set(outcomes.models) <= set(train.models):
                raise DatasetError(
                    f"--train lacks models the test files have: "
                    f"{sorted(set(outcomes.models) - set(train.models))}"
                )
            train = train.select_models(outcomes.models)
        if train.responses is None:
            raise DatasetError("the --train files have no recorded responses to replay")
        missing = sorted(set(outcomes.groups) - set(train.groups))
        if task_of is None and len(outcomes.models) > 2 and missing:
            raise DatasetError(
                f"ladders are tuned per task (the files' groups); the test files have tasks "
                f"the tuning files lack: {missing}. Tune on files of the same tasks (e.g. a "
                "benchmark's train split for its test split)"
            )
        seen = {prompt_key(p) for p in train.prompts}  # (a copy with other whitespace too)
        keep = np.array([prompt_key(p) not in seen for p in outcomes.prompts])
        if not keep.any():
            raise DatasetError("every test prompt is also in the tuning files: nothing to report")
        tune, test = train, outcomes.subset(np.where(keep)[0])
        split = {"method": "separate tuning files", "n_tune": len(tune), "n_test": len(test),
                 "test_rows_dropped_as_seen_in_tuning": int((~keep).sum())}  # fmt: skip
    else:
        tune, test = outcomes.split_by_hash(test_fraction, seed)
        # as above, and as learned routing's split: a test prompt tuned on under other
        # whitespace is no test (copies with a trailing newline had been reported on)
        seen = {prompt_key(p) for p in tune.prompts}
        keep = np.array([prompt_key(p) not in seen for p in test.prompts], dtype=bool)
        test = test.subset(np.where(keep)[0])
        split = {"method": "prompt hash", "seed": seed, "test_fraction": test_fraction,
                 "n_tune": len(tune), "n_test": len(test),
                 "test_rows_dropped_as_seen_in_tuning": int((~keep).sum())}  # fmt: skip
    for part, name in ((tune, "tuning"), (test, "test")):
        if len(part) < 2:
            raise DatasetError(
                f"the split leaves {len(part)} {name} row(s): a cascade needs at least 2 to "
                "tune its checks and 2 to report on; use more rows or a test part nearer 0.5"
            )
    head = {"strategy": "cascade", "split": split, "models": list(outcomes.models)}
    if len(outcomes.models) == 2:
        return head | _two_model(tune, test, checks or math_checks(), n_quantiles)
    return head | _many_models(
        tune,
        test,
        reference,
        budget_shares,
        target_quality_share,
        target_cost_share,
        cheap_share,
        pool_size,
        task_of or _by_group,
    )


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """A few human-readable lines of an `evaluate_cascade` report (test part only)."""
    sp = report["split"]
    how = f"split by prompt hash, seed {sp['seed']}" if "seed" in sp else sp["method"]
    head = f"cascade on {sp['n_test']} test prompts (tuned on {sp['n_tune']} others, {how})"
    if report["kind"] == "two-model":
        lines = [head, f"weak {report['weak']}, strong {report['strong']}"]
        for name in ("cascade", "checks_only", "prompt_only"):
            lines.append(
                f"  {name.replace('_', '-'):<12} APGR {report[f'apgr_{name}']:.3f}  "
                f"CPT(50%) {report[f'cpt50_{name}']:.1%}  CPT(80%) {report[f'cpt80_{name}']:.1%}"
            )
        lines.append(
            f"  AIQ (same cost axis): cascade {report['aiq_cascade']:.4f}, "
            f"prompt-only {report['aiq_prompt_only']:.4f}"
        )
        return lines
    lines = [head, f"reference {report['reference']}: quality {report['reference_quality']:.3f}"]
    for label, point in (
        ("at the cost target", report["at_cost_target"]),
        ("at the quality target", report["at_quality_target"]),
    ):
        if point is None:
            lines.append(f"  {label}: no setting reached it on the tuning rows")
            continue
        steps = ", ".join(f"{k} step(s) {v:.0%}" for k, v in point["steps"].items())
        lines.append(
            f"  {label}: {point['quality_share']:.1%} of its quality at "
            f"{point['cost_share']:.1%} of its cost ({steps})"
        )
        lines += [f"    {task}: {ladder}" for task, ladder in point["ladders"].items()]
    po = report["prompt_only"]
    lines.append(
        f"  AIQ (same cost axis): cascade {report['aiq_cascade']:.4f}, prompt-only {po['aiq']:.4f}"
    )
    q30, c98 = po["quality_share_at_cost_target"], po["cost_share_at_quality_target"]
    lines.append(
        "  prompt-only routing: "
        + ("-" if q30 is None else f"{q30:.1%}")
        + " of its quality at the cost target; "
        + ("never reaches" if c98 is None else f"{c98:.1%} of its cost to reach")
        + " the quality target"
    )
    return lines


# -- tuned once, applied anywhere: what `satisfice calibrate --strategy cascade` writes ------


def router_task(s: OutcomeSet, i: int) -> str:
    """The router's own task for prompt i (what `Policy.cascade_for` looks up in serving)."""
    return str(_featurizer().featurize(s.prompts[i])[1]["task"])


_FEATURIZER: list[Featurizer] = []


def _featurizer() -> Featurizer:
    if not _FEATURIZER:
        _FEATURIZER.append(Featurizer())
    return _FEATURIZER[0]


def tune_cascades(
    outcomes: OutcomeSet,
    kind: str,
    value: float,
    *,
    prior: np.ndarray | None = None,
    reference: str | None = None,
    cheap_share: float = 0.15,
    pool_size: int = 4,
    checks: Sequence[v.Validator] | None = None,
) -> dict[str, Any]:
    """Tune ladders on all of `outcomes` to meet a target, keyed by the router's task.

    `kind` "quality": the cheapest ladders whose tuning quality is at least `value`% of the
    reference model's (the strong model, for two models); "cost": the best ladders whose mean
    cost per request is at most `value` USD. Two models get one ladder for every task
    ("*"): the weak model checked by `checks` (default `math_checks()`) plus, with `prior`
    (the serving router's P(good) of the weak model per prompt), the router's prediction,
    combined by a fitted logistic, escalating to the strong model below a threshold.
    Returns {"cascades": {task: Cascade}, "met", "tuning": figures on these rows, ...}.
    """
    if outcomes.responses is None:
        raise DatasetError("tuning a cascade replays recorded answers and these files have none")
    if np.isnan(outcomes.scores).any() or np.isnan(outcomes.costs).any():
        raise DatasetError("tuning a cascade needs complete scores and costs: drop_missing() first")
    if kind not in ("quality", "cost"):
        raise DatasetError(f"a cascade target is quality:PCT or cost:USD, not {kind}:")
    n = len(outcomes)
    if len(outcomes.models) == 2:
        return _tune_two(outcomes, kind, value, prior, checks or math_checks())
    ref, fronts, kinds = _fronts(outcomes, reference, cheap_share, pool_size, router_task)
    r = outcomes.models.index(ref)
    ref_q, ref_c = float(outcomes.scores[:, r].sum()), float(outcomes.costs[:, r].sum())
    choice: dict[str, _Scored] | None = None
    if kind == "cost":
        choice = _choose(fronts, value * n)
        met = choice is not None
        if choice is None:  # the closest: the cheapest ladder of every task
            choice = {t: f[0] for t, f in fronts.items()}
    else:
        goal = value / 100.0 * ref_q
        for share in np.linspace(0.01, 1.5, 150):
            got = _choose(fronts, float(share) * ref_c)
            if got and sum(x.quality for x in got.values()) >= goal - 1e-9:
                choice = got
                break
        met = choice is not None
        if choice is None:  # the closest: the best ladder of every task
            choice = {t: max(f, key=lambda x: x.quality) for t, f in fronts.items()}
    q = sum(x.quality for x in choice.values())
    c = sum(x.cost for x in choice.values())
    return {
        "cascades": {t: x.candidate.cascade for t, x in choice.items()},
        "ladders": {t: x.candidate.label for t, x in choice.items()},
        "met": met,
        "reference": ref,
        "task_answer_kinds": kinds,
        "tuning": {
            "rows": n,
            "quality": q / n,
            "mean_cost_usd": c / n,
            "quality_share": q / ref_q if ref_q else None,
            "cost_share": c / ref_c if ref_c else None,
        },
    }


def _tune_two(
    s: OutcomeSet, kind: str, value: float, prior: np.ndarray | None, checks: Sequence[v.Validator]
) -> dict[str, Any]:
    means = s.costs.mean(axis=0)
    weak, strong = (0, 1) if means[0] <= means[1] else (1, 0)
    wm, sm = s.models[weak], s.models[strong]
    responses = s.responses or []
    answers = [v.Answer(wm, responses[i][weak] or "") for i in range(len(s))]
    if prior is not None:
        checks = [*checks, v.predicted()]
    ctxs = [
        v.Context([{"role": "user", "content": q}], (), None if prior is None else {wm: float(p)})
        for q, p in zip(s.prompts, prior if prior is not None else np.zeros(len(s)), strict=True)
    ]
    fitted = fit_calibrated(checks, answers, ctxs, s.scores[:, weak])
    verdicts = [fitted(a, c) for a, c in zip(answers, ctxs, strict=True)]
    conf = np.array([x.confidence for x in verdicts if isinstance(x, v.Verdict)])  # all sync
    ws, ss, wc, sc = s.scores[:, weak], s.scores[:, strong], s.costs[:, weak], s.costs[:, strong]
    best: tuple[float, float, float] | None = None  # threshold, quality, cost
    closest: tuple[float, float, float] | None = None
    for t in np.unique(np.concatenate([[0.0, 1.0], conf])):
        up = conf < t  # escalated: the weak call was made and paid, then the strong one
        quality = float(np.where(up, ss, ws).mean())
        cost = float((wc + np.where(up, sc, 0.0)).mean())
        if kind == "quality":
            ok = quality >= value / 100.0 * float(ss.mean()) - 1e-12
            if ok and (best is None or cost < best[2]):
                best = (float(t), quality, cost)
            if closest is None or quality > closest[1]:
                closest = (float(t), quality, cost)
        else:
            ok = cost <= value + 1e-12
            if ok and (best is None or quality > best[1]):
                best = (float(t), quality, cost)
            if closest is None or cost < closest[2]:
                closest = (float(t), quality, cost)
    met = best is not None
    thr, quality, cost = best if best is not None else closest  # type: ignore[misc]
    ladder = Cascade([Step((wm,), fitted.at(min(max(thr, 0.0), 1.0))), Step((sm,))])
    return {
        "cascades": {"*": ladder},
        "ladders": {"*": f"[{_short(wm)}]/calibrated@{thr:.3f} -> [{_short(sm)}]"},
        "met": met,
        "reference": sm,
        "weights": {c.name: w for c, w in zip(checks, fitted.weights, strict=True)},
        "tuning": {
            "rows": len(s),
            "quality": quality,
            "mean_cost_usd": cost,
            "quality_share": quality / float(ss.mean()) if ss.mean() else None,
            "cost_share": cost / float(sc.mean()) if sc.mean() else None,
        },
    }
