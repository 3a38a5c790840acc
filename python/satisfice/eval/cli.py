"""`satisfice eval` and `satisfice calibrate` (registered into the main CLI by `satisfice.cli`).

Both are thin: the work is in `evaluate.py` and `calibrate.py`, which tests call directly.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import DatasetError, SatisficeError
from .datasets import FORMATS, OutcomeSet, load
from .progress import ProgressLine

__all__ = ["register_calibrate", "register_eval"]

_SPLIT_HELP = (
    "test on part of FILES and train on the rest: hash:FRACTION[:SEED] (by prompt hash), "
    "group:NAME[,NAME...] (those groups: MMLU subjects, RouterBench evals, clusters) or "
    "fold:K/N (every N-th group from the K-th, sorted by name)"
)


def register_eval(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="score learned routing on outcome data against single models, random and oracle",
        description=(
            "Sweep the router's cost weight over recorded outcomes and report AIQ, APGR and "
            "CPT (two models), and the cost at which it matches the best single model. "
            "Never scores a row the predictor was trained on."
        ),
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="format of FILES")
    p.add_argument("files", nargs="+", metavar="FILES", help="outcome files or directories")
    p.add_argument(
        "--train",
        nargs="+",
        metavar="FILES",
        help="fit a predictor on these files first (list them after the FILES to evaluate)",
    )
    p.add_argument("--train-format", choices=FORMATS, help="format of --train (default --format)")
    p.add_argument("--test-split", nargs="+", metavar="SPEC", help=_SPLIT_HELP)
    p.add_argument(
        "--predictor",
        help="saved predictor .npz to score (default: the one trained on public data)",
    )
    p.add_argument("--registry", help="registry (TOML or JSON) seeding unseen models")
    p.add_argument(
        "--strategy",
        choices=("route", "cascade"),
        default="route",
        help="route: learned routing (default); cascade: cheap model first, checked answers",
    )
    p.add_argument(
        "--cascade-by",
        choices=("group", "task"),
        default="group",
        help="cascade: tune one ladder per group of FILES (default; e.g. RouterBench's evals) "
        "or per the router's own task of each prompt (what `calibrate --strategy cascade` "
        "writes and serving uses)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--no-humility",
        action="store_true",
        help="leave the train-best model on predicted gains of any size (see eval/humble.py)",
    )
    p.add_argument(
        "--no-embedding",
        action="store_true",
        help="train the IRT predictor alone, without the per-model logistic on the prompt's "
        "static embedding (to compare)",
    )
    p.add_argument("--plot", metavar="PNG", help="draw the cost-quality curve to this file")
    p.add_argument("--save-predictor", metavar="NPZ", help="save the fitted predictor")
    p.add_argument("--save-onnx", metavar="ONNX", help="export the predictor to ONNX as well")
    p.add_argument("--max-rows", type=int, help="evaluate an evenly spaced slice of FILES")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_eval)


def register_calibrate(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="pick the quality floor or cost weight that hits a target on logged prompts",
        description=(
            "Route every logged prompt at each setting of the policy's knob and write the "
            "setting that meets --target into the policy JSON."
        ),
    )
    p.add_argument("--format", choices=FORMATS, help="format of FILES")
    p.add_argument("files", nargs="*", metavar="FILES", help="logged prompts (outcome files)")
    p.add_argument(
        "--from-ledger",
        metavar="LEDGER",
        help="the prompts a ledger recorded (attach(..., record_prompts=True)) instead of FILES",
    )
    p.add_argument(
        "--target",
        required=True,
        help="cost:USD_PER_REQUEST | top-share:FRACTION | quality:PCT_OF_BEST",
    )
    p.add_argument("--policy", required=True, help="policy JSON to update (created if absent)")
    p.add_argument(
        "--knob",
        choices=("floor", "lambda"),
        help="what to tune (default: lambda if the policy sets one, else the quality floor)",
    )
    p.add_argument(
        "--predictor", help="predictor .npz (default: the policy's, else the router's default)"
    )
    p.add_argument("--registry", help="registry file, TOML or JSON (default: the bundled registry)")
    p.add_argument(
        "--strategy",
        choices=("route", "cascade"),
        default="route",
        help="route: tune the floor or cost weight (default); cascade: tune ladders on the "
        'recorded answers in FILES and write them for cascade="auto" '
        "(--target quality:PCT_OF_REFERENCE or cost:USD_PER_REQUEST)",
    )
    p.add_argument("--dry-run", action="store_true", help="report, but do not write the policy")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_calibrate)


# -- eval -------------------------------------------------------------------------------------


def _load(
    fmt: str, files: list[str], max_rows: int | None = None, registry: str | None = None
) -> OutcomeSet:
    """Outcome files; a log of your own (`outcomes`) prices the tokens a model logged
    without a `cost_usd` at the registry's rates (`--registry`, else the bundled one):
    the CLI had passed none, and every such cost was unknown."""
    import numpy as np

    kw: dict[str, Any] = {}
    if fmt == "outcomes":
        from ..registry import Registry

        reg = Registry.load(registry) if registry else Registry.default()
        # (its quoted price: a model priced on its deployments alone had no price here)
        kw["prices"] = {m.id: (p.input, p.output) for m in reg if (p := m.quoted_price) is not None}
    data = load(fmt, files, **kw)
    if max_rows is not None and max_rows < len(data):
        if max_rows < 1:
            raise DatasetError("--max-rows must be >= 1")
        data = data.subset(np.linspace(0, len(data) - 1, max_rows).astype(np.intp))
    return data


def cmd_eval(args: argparse.Namespace) -> int:
    progress = ProgressLine(enabled=not args.quiet)
    progress.stage("loading outcomes")
    data = _load(args.format, args.files, args.max_rows, getattr(args, "registry", None))
    progress.done()
    if args.strategy == "cascade":
        return _eval_cascade(args, data)

    from ..predict import QualityModel
    from ..registry import Registry
    from . import evaluate as E
    from . import train as T

    spec = E.parse_split(args.test_split) if args.test_split else None
    anchor: str | None = None
    humility_info: dict[str, Any] | None = None
    switches_raw: dict[str, Any] = {}
    extra = []
    if args.train:
        progress.stage("loading training files")
        extra.append(_load(args.train_format or args.format, args.train, registry=args.registry))
        progress.done()
    split = E.split_data(data, spec, extra)
    registry = Registry.load(args.registry) if args.registry else None
    notes: list[str] = []
    if args.save_onnx:  # that it can be written, before training or saving anything
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise SatisficeError("--save-onnx needs onnx: pip install 'satisfice[train]'") from None
    if split.train:
        if args.predictor:
            raise SatisficeError("--predictor scores a saved predictor; drop it when training")
        if args.save_onnx and not args.no_embedding:  # say so before training, not after
            raise SatisficeError(
                "--save-onnx exports the IRT predictor only: add --no-embedding to train one "
                "without the embedding logistic, which the ONNX graph does not hold"
            )

        progress.stage("training")
        cfg = T.TrainConfig(embedding=not args.no_embedding)
        qm = T.fit(
            split.train,
            cfg,
            progress=lambda step, total, loss: progress.update(step, total, f"loss {loss:.4f}"),
        )
        progress.done()
        test = split.test
        seen_models = {m for t in split.train for m in t.models}
        models = [m for m in test.models if m in seen_models]
        if models:
            from . import humble as H

            anchor = H.anchor_of(H._stack(split.train, models))
            raw_pred = E.predict_for(qm, test, registry)
            switches_raw = H.switch_report(raw_pred, test, anchor)
            if not args.no_humility:
                progress.stage("choosing the switch margin (cross-fitted on training rows)")
                hum = H.choose(split.train, models, fit=lambda parts: T.fit(parts, cfg),
                               predict=lambda q, d: E.predict_for(q, d, registry))  # fmt: skip
                qm = hum.apply(qm)
                progress.done()
                humility_info = hum.to_dict()
    else:
        qm = QualityModel.load(args.predictor) if args.predictor else E.shipped_predictor()
        test, seen = E.exclude_trained_rows(split.test, qm)
        if seen:
            notes.append(f"dropped {seen} test rows the predictor {qm.name!r} was trained on")
        if fed := E.feedback_note(qm):
            notes.append(fed)
        split.info["n_test"] = len(test)
    if args.save_predictor:
        qm.save(args.save_predictor)
    if args.save_onnx:
        from .onnx_export import export_onnx

        export_onnx(qm, E.params_for_models(qm, test.models, registry), args.save_onnx)
    progress.stage("predicting and sweeping")
    pred = E.predict_for(qm, test, registry)
    novel_share = None
    if anchor is not None and not args.no_humility and set(models) == set(test.models):
        nov = H.Novelty.fit(split.train, test.models)
        pred, novel_share = nov.apply(pred, test.prompts)
    dcost, how = E.decision_costs(split.train, test)
    report = E.evaluate_predictor(test, pred, dcost)
    progress.done()
    baselines: dict[str, Any] = {}
    if anchor is not None:
        baselines = _train_chosen(split.train, test, anchor, report.summary.max_cost)
        baselines["switches"] = H.switch_report(pred, test, anchor)
        baselines["switches_without_humility"] = switches_raw
        baselines["humility"] = humility_info
        if humility_info is not None:
            humility_info["novel_share"] = novel_share
    notes.append(f"decision costs: per-model a + b x prompt tokens, {how}")
    out = report.to_dict()
    out["notes"] = [*notes, *out["notes"]]
    out["strategy"] = "route"
    out["split"] = split.info
    out["predictor"] = {"name": qm.name, "trained_here": bool(split.train)}
    out.update(baselines)
    # The router at full budget (lambda 0): a setting chosen without the test rows, so the
    # honest figure beside the train-chosen model. The curve's best point is picked by the
    # test rows' outcomes (hindsight), and overstated the gain by up to +0.135.
    full = next(p for p in out["curve"] if p["lambda"] == 0.0)
    out["router_full_budget"] = {"quality": full["quality"], "cost": full["cost"]}
    plot_failed = None
    if args.plot:
        from .plot import plot_curve

        s = report.summary
        try:
            tb = out.get("train_best_single")
            plot_curve(
                s.curve,
                s.singles,
                s.oracle,
                args.plot,
                title=_title(args, out),
                train_best=None if tb is None else (tb["model"], tb["cost"], tb["quality"]),
            )
        except (ImportError, OSError) as e:  # the report is still worth printing
            # (an unwritable --plot path had thrown away a finished evaluation)
            why = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename else e
            plot_failed = f"--plot: {why}"
            out["notes"].append(f"no plot drawn: {why}")
    if args.json:
        print(_dumps(out, indent=2))
    else:
        print(format_report(out))
    if plot_failed:
        print(f"satisfice eval: {plot_failed}", file=sys.stderr)
        return 1
    return 0


def _train_chosen(train: list[Any], test: Any, anchor: str, max_cost: float) -> dict[str, Any]:
    """The baselines a user could have picked from the training rows, scored on the test rows:
    the best single model, and random routing among the models on the training rows'
    cost-quality hull, its AIQ on the router's scale (`max_cost`: its own, the largest cost
    of its few models, had scored one model 0 where the router's AIQ scored it 0.99, and
    one free model had failed the whole run)."""
    import numpy as np

    from . import metrics as M

    j = test.models.index(anchor)
    out: dict[str, Any] = {"train_best_single": {
        "model": anchor, "quality": float(np.nanmean(test.scores[:, j])),
        "cost": float(np.nanmean(test.costs[:, j]))}}  # fmt: skip
    pts = []
    for m in test.models:
        col = [t for t in train if m in t.models]
        if not col:
            continue
        q = float(np.nanmean(np.concatenate([t.scores[:, t.models.index(m)] for t in col])))
        c = float(np.nanmean(np.concatenate([t.costs[:, t.models.index(m)] for t in col])))
        pts.append((c, q, m))
    pts.sort()
    hull, best = [], -1.0
    for _cost, q, m in pts:  # cheapest first: keep a model only if it beats every cheaper one
        if q > best:
            hull.append(m)
            best = q
    idx = [test.models.index(m) for m in hull]
    out["train_chosen_random"] = {
        "models": hull,
        "aiq": float(M.aiq(np.nanmean(test.costs[:, idx], axis=0),
                           np.nanmean(test.scores[:, idx], axis=0), max_cost)),
    }  # fmt: skip
    return out


def _title(args: argparse.Namespace, out: dict[str, Any]) -> str:
    names = ", ".join(Path(f).name for f in args.files[:3])
    names += " ..." if len(args.files) > 3 else ""
    split = out["split"]
    how = split.get("method", "")
    if "test_groups" in split:
        how += f": {len(split['test_groups'])} held-out groups"
    elif "seed" in split:
        how += f" {split['test_fraction']:g}, seed {split['seed']}"
    return f"{args.format} ({names}): {out['n']} test prompts, {how}"


def _jsonable(v: object) -> object:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "tolist"):
        return _finite(v.tolist())
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _finite(v: object) -> object:
    """`v` with every NaN and infinity (at any depth) as None. `json.dumps` writes a float
    itself, as bare `NaN` (not JSON), and never passes it to `default=`."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def _dumps(out: object, indent: int | None = None) -> str:
    """The one JSON object `--json` promises: strict JSON, with null for NaN or infinity."""
    return json.dumps(_finite(out), indent=indent, default=_jsonable, allow_nan=False)


def _usd(v: float | None) -> str:
    return "never" if v is None else f"${v:.6f}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def format_report(out: dict[str, Any]) -> str:
    """The human-readable report: the figures first, then the baselines, then notes."""
    best = out["best_single"]
    lines = [
        f"{out['n']} test prompts, {len(out['models'])} models; split: "
        + ", ".join(f"{k}={v}" for k, v in out["split"].items()),
        "",
        f"{'':34} {'router':>10} {'random':>10}",
        f"{'AIQ':34} {out['aiq']:>10.4f} {out['random']['aiq']:>10.4f}",
    ]
    if out["apgr"] is not None:
        weak, strong = out["weak_strong"]
        lines += [
            f"{'APGR':34} {out['apgr']:>10.4f} {0.5:>10.4f}",
            f"{'CPT(50%) strong-call share':34} {_pct(out['cpt50']):>10} {'50.0%':>10}",
            f"{'CPT(80%) strong-call share':34} {_pct(out['cpt80']):>10} {'80.0%':>10}",
            f"  (weak {weak}, strong {strong})",
        ]
    lines += [
        "",
        f"best single model: {best['model']}  quality {best['quality']:.4f}  "
        f"cost {_usd(best['cost'])}/request",
        f"router reaches its quality at {_usd(out['cost_at_best_quality'])} "
        f"({_pct(out['cost_share_at_best_quality'])} of its cost)",
        f"router reaches 95% of it at {_usd(out['cost_at_95pct_best_quality'])} "
        f"({_pct(out['cost_share_at_95pct_best_quality'])} of its cost)",
        f"oracle: quality {out['oracle']['quality']:.4f} at {_usd(out['oracle']['cost'])}",
    ]
    tb = out.get("train_best_single")
    if tb is not None:  # the baselines a user could have chosen without the test rows
        top = max(p["quality"] for p in out["curve"])
        full = out["router_full_budget"]["quality"]
        lines += [
            f"best single model on the training rows: {tb['model']}  quality {tb['quality']:.4f}"
            f"  (router at full budget {full:.4f}, {full - tb['quality']:+.4f}; best point "
            f"of its curve, in hindsight, {top:.4f})",
            f"random routing among the training rows' hull models: AIQ "
            f"{out['train_chosen_random']['aiq']:.4f}",
        ]
        for key, label in (("switches_without_humility", "without humility"),
                           ("switches", "as routed")):  # fmt: skip
            sw = out[key]
            gain = (f"; predicted gain {sw['predicted_gain']:+.4f}, realised "
                    f"{sw['realised_gain']:+.4f}" if "predicted_gain" in sw else "")  # fmt: skip
            lines.append(f"full budget, {label}: {sw['share_switched']:.1%} of prompts leave "
                         f"{sw['anchor']}{gain}")  # fmt: skip
        h = out.get("humility")
        if h:
            on = (f"on {h['anchor']}" if h.get("side", "anchor") == "anchor"
                  else f"off every model but {h['anchor']}")  # fmt: skip
            lines.append(f"humility: margin {h['margin_logit']} logit {on}, "
                         f"{(h.get('novel_share') or 0):.1%} of test prompts unlike the "
                         "training rows (ranked by model averages)")  # fmt: skip
    lines += ["", "single models:"]
    for s in sorted(out["single_models"], key=lambda s: s["cost"]):
        lines.append(f"  {s['model']:<40} quality {s['quality']:.4f}  cost {_usd(s['cost'])}")
    lines += ["", *(f"note: {n}" for n in out["notes"])]
    return "\n".join(lines)


def _eval_cascade(args: argparse.Namespace, data: OutcomeSet) -> int:
    try:
        mod = importlib.import_module("satisfice.eval.cascade_eval")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("satisfice"):
            raise SatisficeError(
                "--strategy cascade needs satisfice.eval.cascade_eval, which this version lacks"
            ) from None
        raise
    if args.predictor or args.save_predictor or args.plot:
        raise SatisficeError(
            "--strategy cascade tunes its own ladders: drop --predictor, --save-predictor and "
            "--plot"
        )
    kw: dict[str, Any] = {}
    if args.train:
        if args.test_split:
            raise SatisficeError("--train tunes on other files: drop --test-split")
        train_files = _load(args.train_format or args.format, args.train, registry=args.registry)
        kw["train"] = train_files.drop_missing()
    if args.test_split:
        from .evaluate import parse_split

        spec = parse_split(args.test_split)
        if spec.method != "hash":
            raise SatisficeError("--strategy cascade takes --test-split hash:FRACTION[:SEED] only")
        kw.update(test_fraction=spec.fraction, seed=spec.seed)
    if args.max_rows:
        kw["max_rows"] = args.max_rows
    if args.cascade_by == "task":
        kw["task_of"] = mod.router_task
    result = mod.evaluate_cascade(data, **kw)
    if args.json:
        print(_dumps(result))
    else:
        print("\n".join(mod.summary_lines(result)))
    return 0


# -- calibrate --------------------------------------------------------------------------------


def cmd_calibrate(args: argparse.Namespace) -> int:
    from . import calibrate as C

    target = C.parse_target(args.target)
    if args.strategy == "cascade":
        if args.from_ledger or not args.files or not args.format or args.knob:
            raise SatisficeError(
                "--strategy cascade tunes on recorded answers: give --format and outcome FILES "
                "with responses (not --from-ledger or --knob)"
            )
        # priced as eval prices them: a log's token counts at the registry's rates (read
        # without them, every cost of such a log was unknown and the tuning refused it)
        data = _load(args.format, args.files, registry=args.registry).drop_missing()
        res = C.calibrate_cascade(
            data,
            target,
            policy_path=args.policy,
            predictor=args.predictor,
            registry=args.registry,
            write=not args.dry_run,
            progress=ProgressLine(enabled=not args.json),
        )
        print(_dumps(res, indent=2) if args.json
              else C.format_cascade_result(res))  # fmt: skip
        return 0 if res["met"] else 1
    if args.from_ledger:
        if args.files:
            raise SatisficeError("give FILES or --from-ledger, not both")
        from ..flywheel import ledger_prompts

        prompts = ledger_prompts(args.from_ledger)
    else:
        if not args.files or not args.format:
            raise SatisficeError("give --format and FILES, or --from-ledger LEDGER")
        prompts = load(args.format, args.files, keep_missing=True).prompts
    result = C.calibrate_files(
        prompts,
        target,
        policy_path=args.policy,
        knob=args.knob,
        predictor=args.predictor,
        registry=args.registry,
        write=not args.dry_run,
        progress=ProgressLine(enabled=not args.json),
    )
    if args.json:
        print(_dumps(result, indent=2))
    else:
        print(C.format_result(result))
    return 0 if result["met"] else 1


if __name__ == "__main__":  # pragma: no cover - for `python -m satisfice.eval.cli` debugging
    sys.exit("run `satisfice eval` or `satisfice calibrate`")
