"""`satisfice calibrate`: choose the quality floor or cost weight that meets a target on the
prompts a user actually sends, and write it into the policy.

The prompts are planned in batches with no floor (`DispatchTable.plan_batch`), which gives
every routable model's predicted P(good) and estimated USD; the router's own ranking
(`_core.rank`, the code `route()` serves) then picks a model per prompt for every setting
of the knob at once. What is measured is what the router would do.

Targets:
- `cost:USD` — highest predicted quality whose mean estimated cost per request <= USD;
- `top-share:F` — highest predicted quality sending at most F of requests to the registry's
  reference (top) model;
- `quality:PCT` — cheapest setting whose mean predicted P(good) >= PCT% of the best single
  model's on the same prompts.
Quality here is predicted, not measured: logged traffic rarely has every model's outcome.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import _core
from ..errors import ConfigError
from ..policy import Policy, read_policy_file
from ..predict import QualityModel
from ..registry import Registry
from ..router import Router
from ._set import OutcomeSet
from .progress import ProgressLine

__all__ = [
    "Target",
    "calibrate_cascade",
    "calibrate_files",
    "choose",
    "format_cascade_result",
    "format_result",
    "parse_target",
]

KINDS = ("cost", "top-share", "quality")


@dataclass(frozen=True)
class Target:
    kind: str
    value: float

    def describe(self) -> str:
        if self.kind == "cost":
            return f"mean estimated cost <= ${self.value:g} per request"
        if self.kind == "top-share":
            return f"at most {100 * self.value:g}% of requests to the top model"
        return f"mean predicted quality >= {self.value:g}% of the best single model's"


def parse_target(text: str) -> Target:
    kind, _, raw = text.partition(":")
    if kind not in KINDS or not raw:
        raise ConfigError(
            f"--target {text!r}: use cost:USD_PER_REQUEST, top-share:FRACTION or "
            f"quality:PCT_OF_BEST (e.g. cost:0.002, top-share:0.2, quality:95)"
        )
    try:
        value = float(raw.rstrip("%"))
    except ValueError:
        raise ConfigError(f"--target {text!r}: {raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--target {text!r}: the value must be a positive number")
    if kind == "top-share" and value > 1:
        raise ConfigError(f"--target {text!r}: FRACTION is a share in (0, 1], e.g. 0.2")
    if kind == "quality" and value > 100:
        raise ConfigError(f"--target {text!r}: PCT_OF_BEST is a percentage up to 100")
    return Target(kind, value)


@dataclass(frozen=True, eq=False)
class Table:
    """Per prompt and registry model: predicted P(good) and estimated USD (NaN: the model
    cannot take that prompt, or is unpriced), and the rule's choice where a rule decides."""

    p: np.ndarray  # (n, m)
    cost: np.ndarray  # (n, m), inf where filtered, NaN where unpriced
    forced: np.ndarray  # (n,) model index a rule picks, -1 if none
    models: list[str]
    top: np.ndarray  # the top model's rows: its own and its effort variants


def plan_table(router: Router, prompts: Sequence[str], progress: ProgressLine) -> Table:
    snap = router.snapshot
    n = len(prompts)
    parts = []
    for start in range(0, n, _BATCH):
        parts.append(snap.table.plan_batch(prompts[start : start + _BATCH]))
        progress.update(min(start + _BATCH, n), n)
    progress.update(n, n)
    m = len(snap.ids)
    p = np.concatenate([x[0] for x in parts]) if parts else np.empty((0, m))
    cost = np.concatenate([x[1] for x in parts]) if parts else np.empty((0, m))
    forced = np.concatenate([x[2] for x in parts]) if parts else np.empty(0, np.int64)
    keep = np.isfinite(p).any(axis=1)  # a prompt no model can take is not routable
    if not keep.any():
        raise ConfigError("no logged prompt can be routed with this registry and policy")
    # the top model at every effort: its `@max` row is the top model too (counting its
    # base row alone had called a policy that sent every prompt to `@max` "0% top")
    ref, reg = snap.registry.reference.id, snap.registry
    top = np.array([i for i, mid in enumerate(snap.ids) if ref in (mid, reg[mid].base)], np.int64)
    return Table(p[keep], cost[keep], forced[keep], list(snap.ids), top)


_BATCH = 4096  # prompts per plan_batch call: one boundary crossing each, progress between


def picks(t: Table, knob: str, settings: Sequence[float]) -> np.ndarray:
    """(len(settings), n) model indices: the router's choice for every prompt and setting."""
    return _core.rank(
        t.p, t.cost, list(settings), "floor" if knob == "floor" else "lambda", t.forced
    )


def _figures(t: Table, pick: np.ndarray) -> tuple[float, float, float]:
    rows = np.arange(len(pick))
    # a setting that sends any prompt to an unpriced model has an unknown mean cost (NaN):
    # a mean of the priced prompts alone had met a cost target with half the traffic unpriced
    c = t.cost[rows, pick]
    return float(np.mean(c)), float(np.mean(t.p[rows, pick])), float(np.isin(pick, t.top).mean())


def _settings(t: Table, knob: str) -> np.ndarray:
    if knob == "floor":
        finite = t.p[np.isfinite(t.p)]
        qs = np.quantile(finite, np.linspace(0.0, 1.0, 801)) if finite.size else np.array([])
        return np.unique(np.clip(np.concatenate([[0.0, 1.0], qs]), 0.0, 1.0))
    finite = t.cost[np.isfinite(t.cost)]
    positive = finite[finite > 0]
    if not positive.size:
        return np.array([0.0])
    # From a weight at which a 0.1% quality gain outweighs the dearest call, to one at which
    # the cheapest call outweighs certainty.
    lo, hi = 1e-3 / float(positive.max()), 1.0 / float(positive.min())
    return np.concatenate([[0.0], np.geomspace(lo, max(hi, 10 * lo), 400)])


def best_quality(t: Table) -> tuple[str, float]:
    """The single model with the highest mean predicted P(good) among those that can take
    every prompt."""
    usable = np.isfinite(t.p).all(axis=0)
    if not usable.any():
        usable = np.ones(t.p.shape[1], dtype=np.bool_)
    means = np.where(usable, np.where(np.isfinite(t.p), t.p, 0.0).mean(axis=0), -np.inf)
    j = int(np.argmax(means))
    return t.models[j], float(means[j])


def choose(t: Table, knob: str, target: Target) -> dict[str, Any]:
    """The setting of `knob` that meets `target` best, with its predicted figures."""
    settings = _settings(t, knob)
    figs = np.array([_figures(t, row) for row in picks(t, knob, settings.tolist())])
    cost, quality, share = figs[:, 0], figs[:, 1], figs[:, 2]
    best_model, best_q = best_quality(t)
    if target.kind == "quality":
        goal = target.value / 100.0 * best_q
        ok = quality >= goal - 1e-12
        order = np.lexsort((-quality, cost))  # cheapest first
        fallback = int(np.argmax(quality))
    else:
        measure = cost if target.kind == "cost" else share
        ok = measure <= target.value + 1e-12  # (an unknown cost meets no target)
        order = np.lexsort((cost, -quality))  # best quality first
        # the closest: the least of the known (argmin had taken the first unknown cost)
        known = np.where(np.isnan(measure), np.inf, measure)
        fallback = int(np.argmin(known))
    met = bool(ok.any())
    k = int(next(i for i in order if ok[i])) if met else fallback
    return {
        "knob": knob,
        "value": float(settings[k]),
        "met": met,
        "predicted": {
            "mean_cost_usd": None if np.isnan(cost[k]) else float(cost[k]),  # unknown
            "mean_p_good": float(quality[k]),
            "top_share": float(share[k]),
        },
        "best_single": {"model": best_model, "mean_p_good": best_q},
        "range": {
            "cost_usd": _known_range(cost),
            "top_share": [float(share.min()), float(share.max())],
            "mean_p_good": [float(quality.min()), float(quality.max())],
        },
    }


def _known_range(v: np.ndarray) -> list[float | None]:
    """[least, most] of the known values; None for both when none is known."""
    known = v[~np.isnan(v)]
    return [float(known.min()), float(known.max())] if known.size else [None, None]


def _usd(v: float | None) -> str:
    return "unknown (an unpriced model)" if v is None or v != v else f"${v:.6f}"


def _inputs(
    policy_path: str | Path, predictor: str | Path | None, registry: str | Path | None
) -> tuple[Path, Policy, str | None, Registry]:
    """The policy to update (a new one if the file is absent) with its predictor path, and
    the registry (the bundled one by default)."""
    path = Path(policy_path)
    policy = Policy.load(path) if path.is_file() else Policy()  # checks the file first
    # its predictor as the policy names it, from the policy's folder (as `Policy.load` takes
    # it: read from where the command ran, the rewritten policy had named a missing file)
    raw = read_policy_file(path) if path.is_file() else {}
    predictor_path = str(predictor) if predictor else raw.get("predictor")
    if predictor:
        policy = policy.replace(quality=QualityModel.load(predictor))
    reg = Registry.load(registry) if registry else Registry.default()
    return path, policy, predictor_path, reg


def calibrate_files(
    prompts: Sequence[str],
    target: Target,
    *,
    policy_path: str | Path,
    knob: str | None = None,
    predictor: str | Path | None = None,
    registry: str | Path | None = None,
    write: bool = True,
    progress: ProgressLine | None = None,
) -> dict[str, Any]:
    """Calibrate the policy at `policy_path` (created if absent) on `prompts`."""
    progress = progress or ProgressLine(enabled=False)
    path, policy, predictor_path, reg = _inputs(policy_path, predictor, registry)
    chosen_knob = knob or ("lambda" if policy.lam is not None else "floor")
    router = Router(reg, policy)
    progress.stage(f"planning {len(prompts)} prompts")
    table = plan_table(router, prompts, progress)
    progress.done()
    result = choose(table, chosen_knob, target)
    if chosen_knob == "floor":
        new = policy.replace(quality_floor=result["value"], lam=None)
    else:
        new = policy.replace(lam=result["value"])
    result.update(
        target=target.describe(),
        prompts=len(prompts),
        routable=int(table.p.shape[0]),
        top_model=reg.reference.id,
        policy=str(path),
        written=write,
        predictor=predictor_path or "shipped",
        # trained models the registry has no id for: their parameters route nothing (a log
        # naming models as a gateway does, "openai/gpt-5.4-nano", had been taken silently)
        unused_models=sorted(
            m for m, p in policy.quality_model().models.items()
            if p.source == "trained" and m not in reg
        ),
    )  # fmt: skip
    if write:
        new.save(path, predictor_path)
    return result


def format_result(r: dict[str, Any]) -> str:
    pred = r["predicted"]
    status = "met" if r["met"] else "NOT met (closest setting shown)"
    lines = [
        f"target: {r['target']} — {status}",
        f"{r['knob']} = {r['value']:.6g}"
        + (f"  (written to {r['policy']})" if r["written"] else "  (dry run: not written)"),
        f"on {r['routable']} of {r['prompts']} prompts, routed with this setting:",
        f"  mean est. cost  {_usd(pred['mean_cost_usd'])} per request",
        f"  top model share {100 * pred['top_share']:.1f}% ({r['top_model']})",
        f"  mean P(good)    {pred['mean_p_good']:.4f} (best single model "
        f"{r['best_single']['model']}: {r['best_single']['mean_p_good']:.4f}, predicted)",
        "reachable: cost {}..{}, top share {:.1f}%..{:.1f}%".format(
            *map(_usd, r["range"]["cost_usd"]), *(100 * v for v in r["range"]["top_share"])
        ),
    ]
    if r.get("unused_models"):
        unused = r["unused_models"]
        lines.append(
            f"note: the predictor's trained models {unused[:8]}"
            f"{f' and {len(unused) - 8} more' if len(unused) > 8 else ''} are not in the "
            "registry (not its ids): their trained abilities route nothing; name them as the "
            "registry does, or add them to it"
        )
    return "\n".join(lines)


# -- cascades ---------------------------------------------------------------------------------


def calibrate_cascade(
    outcomes: OutcomeSet,
    target: Target,
    *,
    policy_path: str | Path,
    predictor: str | Path | None = None,
    registry: str | Path | None = None,
    write: bool = True,
    progress: ProgressLine | None = None,
) -> dict[str, Any]:
    """Tune cascade ladders on `outcomes` (recorded answers of registry models) to meet
    `target` (quality:PCT of the reference model's, or cost:USD per request) and write them
    into the policy at `policy_path`, where `router.chat(..., cascade="auto")` and the
    server's `"cascade": "auto"` climb them, by the router's task of each prompt."""
    from .cascade_eval import tune_cascades

    if target.kind not in ("quality", "cost"):
        raise ConfigError("--strategy cascade takes --target quality:PCT or cost:USD")
    progress = progress or ProgressLine(enabled=False)
    path, policy, predictor_path, reg = _inputs(policy_path, predictor, registry)
    missing = [m for m in outcomes.models if m not in reg]
    if missing:
        raise ConfigError(
            f"the outcome files' models {missing} are not in the registry: the ladders call "
            "them by id, so pass --registry with entries of those ids (and their prices)"
        )
    prior = None
    if len(outcomes.models) == 2:  # the router's own P(good) of the weak model, as served
        progress.stage(f"planning {len(outcomes)} prompts")
        snap = Router(reg, policy).snapshot
        weak = min(
            outcomes.models,
            key=lambda m: float(np.mean(outcomes.costs[:, outcomes.models.index(m)])),
        )
        col = snap.index[weak]
        parts = []
        for start in range(0, len(outcomes), _BATCH):
            parts.append(snap.table.plan_batch(outcomes.prompts[start : start + _BATCH])[0][:, col])
            progress.update(min(start + _BATCH, len(outcomes)), len(outcomes))
        prior = np.nan_to_num(np.concatenate(parts), nan=0.5)
        progress.done()
    progress.stage("replaying ladders on the recorded answers")
    result = tune_cascades(outcomes, target.kind, target.value, prior=prior)
    progress.done()
    new = policy.replace(cascades=result["cascades"])  # this tuning's ladders, not a mix
    Router(reg, new)  # every ladder's models must be routable with this registry
    out = {k: v for k, v in result.items() if k != "cascades"}
    out.update(
        target=target.describe()
        if target.kind == "cost"
        else f"tuning quality >= {target.value:g}% of {result['reference']}'s",
        cascades={t: c.to_dict() for t, c in result["cascades"].items()},
        policy=str(path),
        written=write,
    )
    if write:
        new.save(path, predictor_path)
    return out


def format_cascade_result(r: dict[str, Any]) -> str:
    t = r["tuning"]
    status = "met" if r["met"] else "NOT met (closest ladders shown)"
    lines = [
        f"target: {r['target']} — {status}",
        f"on {t['rows']} tuning rows: quality {t['quality']:.4f} "
        f"({100 * (t['quality_share'] or 0):.1f}% of {r['reference']}), "
        f"${t['mean_cost_usd']:.6f} per request ({100 * (t['cost_share'] or 0):.1f}% of its cost)",
        "ladders by the router's task ("
        + ("written to " + r["policy"] if r["written"] else "dry run: not written")
        + "):",
    ]
    lines += [f"  {task}: {label}" for task, label in r["ladders"].items()]
    lines.append('use: router.chat(messages, cascade="auto"), or "cascade": "auto" over HTTP')
    return "\n".join(lines)
