"""`satisfice` command line: route prompts, count tokens, serve the router, report where the
money went, evaluate and calibrate routing, train predictors, probe models, keep the registry."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError, RegistryWarning, SatisficeError
from .eval.cli import _dumps, register_calibrate, register_eval

__all__ = ["main"]


def _router(args: argparse.Namespace) -> Any:
    from .policy import Policy
    from .registry import Registry
    from .router import Router

    registry = Registry.load(args.registry) if args.registry else None
    policy = Policy.load(args.policy) if args.policy else None
    return Router(registry, policy)


def _constraints(args: argparse.Namespace) -> dict[str, Any]:
    c: dict[str, Any] = {}
    if args.max_cost is not None:
        c["max_cost_usd"] = args.max_cost
    if args.latency_slo_ms is not None:
        c["latency_slo_ms"] = args.latency_slo_ms
    if args.quality_floor is not None:
        c["quality_floor"] = args.quality_floor
    if args.needs:
        c["needs"] = tuple(n for v in args.needs for n in v)
    if args.max_tokens is not None:
        c["max_output_tokens"] = args.max_tokens
    return c


# a hundred times a million-token window: /dev/zero, or a file of gigabytes named by
# mistake, had been read until memory ran out
_MAX_TEXT_BYTES = 256 << 20


def _read_text(path: str) -> str:
    from ._bounded import read_bounded, read_within

    if path == "-" and sys.stdin is None:  # run with stdin closed (`<&-`): Python's is None
        raise SatisficeError("stdin is closed: pipe the text in, or give a file's path for -")
    too_large = (
        f"{'stdin' if path == '-' else path} holds over {_MAX_TEXT_BYTES >> 20} MB, more "
        "than this command reads; give a smaller file (or split it)"
    )
    try:
        if path == "-":
            data = read_within(sys.stdin.buffer, too_large, _MAX_TEXT_BYTES)
        else:
            data = read_bounded(path, too_large, _MAX_TEXT_BYTES)
    except FileNotFoundError:
        raise SatisficeError(f"file {path} does not exist") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SatisficeError(f"{path} is not UTF-8 text ({e}); convert it first") from None


def _needs(value: str) -> list[str]:
    """One `--needs` value: a capability, or several with commas (`json,tools`)."""
    return [n.strip() for n in value.split(",") if n.strip()]


_NEEDS_FORM = "--needs json,tools or --needs json --needs tools"


def cmd_route(args: argparse.Namespace) -> int:
    if args.needs:
        from ._core import CAPABILITIES

        if args.prompt in CAPABILITIES:  # `--needs json tools`, spaced as --needs once was
            raise SatisficeError(
                f"{args.prompt!r} is a capability, not a prompt: write {_NEEDS_FORM}, then "
                "the prompt"
            )
        if odd := [n for v in args.needs for n in v if n not in CAPABILITIES]:
            # `--needs "a prompt"`: the prompt taken as a capability
            raise SatisficeError(
                f"--needs {odd[0]!r} is no capability (known: {', '.join(sorted(CAPABILITIES))}); "
                f"write {_NEEDS_FORM}, then the prompt"
            )
    if args.prompt is None and args.file is None:
        raise SatisficeError("give a prompt to route, or --file PATH to read it from (- for stdin)")
    if args.prompt is not None and args.file is not None:
        raise SatisficeError(f"give a prompt or --file {args.file}, not both")
    if args.messages and args.file is None:  # it had routed the prompt as text, silently
        raise SatisficeError(
            "--messages reads OpenAI-style messages (JSON) from --file PATH (- for stdin): "
            "give --file, or drop --messages to route the prompt as text"
        )
    prompt = args.prompt if args.prompt is not None else _read_text(args.file)
    messages: Any = prompt
    if args.file and args.messages:
        try:
            messages = json.loads(prompt)
        except json.JSONDecodeError as e:
            raise SatisficeError(f"--messages: {args.file} is not JSON: {e}") from None
        except RecursionError:
            raise SatisficeError(f"--messages: {args.file} nests JSON too deeply") from None
    d = _router(args).route(messages, _constraints(args))
    if args.json:
        print(_dumps(d.to_dict(), indent=2))
    else:
        print(d.explain())
    return 0


def cmd_count(args: argparse.Namespace) -> int:
    from . import _core

    text = _read_text(args.file)
    if args.model:
        from .registry import Registry

        reg = Registry.load(args.registry) if args.registry else Registry.default()
        family = reg[args.model].tokenizer
    else:
        family = args.encoding
    n = _core.count_tokens(text, family)
    exact = _core.is_exact_family(family)
    if args.json:
        print(_dumps({"tokens": n, "encoding": family, "exact": exact}))
    else:
        note = "" if exact else f"  (approximate: {family} scaled from the nearest OpenAI encoding)"
        print(f"{n}{note}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    router = _router(args)
    prompts: list[str] = json.loads(
        resources.files("satisfice").joinpath("data/demo_prompts.json").read_text("utf-8")
    )
    ref = router.registry.reference
    rows = []
    for p in prompts:
        d = router.route(p, _constraints(args))
        _, ref_cost = d.reference
        rows.append((p, d.task, d.model, d.est_cost_usd, ref_cost))
    # An unpriced model's cost is unknown, not $0: a total over it would claim a saving of
    # exactly what it left out, so the totals are unknown when any row is unpriced.
    priced = [(c, r) for *_, c, r in rows if c is not None and r is not None]
    unpriced = len(rows) - len(priced)
    total = None if unpriced else sum(c for c, _ in priced)
    total_ref = None if unpriced else sum(r for _, r in priced)
    if args.json:
        print(
            _dumps(
                {
                    "reference_model": ref.id,
                    "routes": [
                        {
                            "prompt": p,
                            "task": t,
                            "model": m,
                            "est_cost_usd": c,
                            "reference_cost_usd": r,
                        }
                        for p, t, m, c, r in rows
                    ],
                    "unpriced_routes": unpriced,
                    "total_est_cost_usd": total,
                    "total_reference_cost_usd": total_ref,
                },
                indent=2,
            )
        )
        return 0
    print(f"{'prompt':<52} {'task':<11} {'routed to':<20} {'est $':>10} {ref.id + ' $':>18}")
    for p, t, m, c, r in rows:
        short = p.replace("\n", " ")
        short = short if len(short) <= 50 else short[:49] + "…"
        cs = "unpriced" if c is None else f"{c:.6f}"
        rs = "unpriced" if r is None else f"{r:.6f}"
        print(f"{short:<52} {t:<11} {m:<20} {cs:>10} {rs:>18}")
    if total is None or total_ref is None:
        print(
            f"\n{len(rows)} prompts, {unpriced} of them on an unpriced model: no total or "
            "saving (an unpriced model's cost is unknown, not $0; give it a price in the "
            "registry to compare)"
        )
        return 0
    saving = 1 - total / total_ref if total_ref else 0.0
    # routed dearer than the reference (a floor only pricier models meet): said as a multiple,
    # not a "-7377% saving"
    said = f"{saving:.0%} saving" if saving >= 0 else f"{total / total_ref:.1f}x its cost"
    print(
        f"\n{len(rows)} prompts: est ${total:.4f} routed vs ${total_ref:.4f} always on {ref.id} "
        f"({said}; estimates from the registry's list prices, expected output "
        "lengths per task and the policy's quality predictor: the hand-set prior unless a "
        "policy names another)"
    )
    return 0


def _catalogue_update(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from . import sources
    from .registry import Registry

    base = Registry.load(args.registry) if args.registry else Registry.default()
    where = sources.shown(args.location) if args.location else "(default location)"
    print(f"reading {args.source} {where} ...", file=sys.stderr)
    cat = sources.load(args.source, args.location)
    names = [n for part in (args.models or []) for n in part.split(",") if n]
    new, diff = sources.apply(base, cat, names)
    return base, new, diff


def cmd_registry(args: argparse.Namespace) -> int:
    from ._atomic import write_atomic
    from .registry import Registry, is_json_name

    if args.action == "check":
        reg = Registry.load(args.registry) if args.registry else Registry.default()
        notes = reg.attention(max_price_age_days=args.max_price_age_days)
        models = sum(1 for m in reg if m.base is None)  # (not its effort rows, as update says)
        print("\n".join(notes) if notes else
              f"{models} model{'s' * (models != 1)}: nothing needs attention")  # fmt: skip
        return 1 if notes else 0
    if args.source is None:
        raise SatisficeError(
            f"registry {args.action} needs --from {{litellm,openrouter,models.dev}}"
        )
    base, new, diff = _catalogue_update(args)
    print(diff.render())
    for note in new.attention(max_price_age_days=args.max_price_age_days):
        print(f"! {note}")
    if args.action == "diff":
        return 0
    bad = diff.absurd()
    if bad and not args.yes:
        raise SatisficeError(
            "refusing to write: these prices or limits moved more than 10x, or prices to 0 "
            "or to unknown:\n  "
            + "\n  ".join(map(str, bad))
            + "\ncheck them at the provider, then run again with --yes"
        )
    out = args.out or args.registry  # given: `_outputs` said so before the catalogue was read
    # (a file of its own, --out, is written all the same: "left as it was" had named a file
    # that did not exist, and exited 0)
    same = args.registry is not None and Path(out).resolve() == Path(args.registry).resolve()
    if same and not diff and new.meta == base.meta:  # no price checked, or none moved today
        print(f"nothing to change (prices as of {base.meta.get('prices_as_of')}): {out} "
              "left as it was")  # fmt: skip
        return 0
    as_json = is_json_name(out)  # in the format its name says, as `Registry.load` reads it
    as_of = new.meta.get("prices_as_of")
    text = (
        new.to_json()
        if as_json
        else new.to_toml(f"# satisfice registry, prices from {args.source}"
                         + (f" as of {as_of}" if as_of else "") + "\n\n")
    )  # fmt: skip
    # whole or not at all, and only once what was written reads back as a registry
    check = Registry.from_json if as_json else Registry.from_toml
    write_atomic(out, lambda f: f.write(text.encode()), check=check)
    models = sum(1 for m in new if m.base is None)
    print(f"wrote {out} ({models} model{'s' * (models != 1)}, {len(new)} routable "
          f"row{'s' * (len(new) != 1)})")  # fmt: skip
    if as_of == base.meta.get("prices_as_of"):
        print(f"prices as of {as_of or 'unknown'}, unchanged: {args.source} does not list "
              "every priced deployment (see the unlisted ones above)")  # fmt: skip
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    import asyncio

    from .probe import run_probes

    if args.save_predictor and not args.save_policy:  # it had probed and written nothing
        raise SatisficeError(
            "--save-predictor names where --save-policy's predictor goes: give --save-policy "
            "PATH too, or drop --save-predictor"
        )
    if (
        args.save_policy
        and Path(args.save_policy).exists()
        and (args.policy is None or Path(args.policy).resolve() != Path(args.save_policy).resolve())
    ):
        # the probe starts from --policy (else the default), and would have replaced this
        # file with it: a calibrated floor, lambda and ladders gone without a word
        raise SatisficeError(
            f"--save-policy {args.save_policy} exists and the probe would replace it with "
            f"{'--policy ' + args.policy if args.policy else 'the default policy'} updated; "
            f"pass --policy {args.save_policy} to update it, or save elsewhere"
        )
    router = _router(args)
    if args.health:
        from .state import Health

        router.configure(health=Health.load(args.health))

    def say(line: str) -> None:
        print(line, file=sys.stderr)

    async def go() -> Any:
        async with router:
            report = await run_probes(router, args.models or None, budget_usd=args.budget_usd,
                                      progress=say,  # (stderr: --json's stdout is apart)
                                      run_code=args.run_code)  # fmt: skip
            if args.health:
                router._io.health.save(args.health)
            return report

    report = asyncio.run(go())
    out = report.to_dict()
    # every probe call failed (no key, no route, an upstream down): a failure, said as such
    failed = bool(report.asked) and sum(report.errors.values()) == sum(report.asked.values())
    if args.save_policy and not failed:  # (a failed run had rewritten the policy all the same)
        router.save_policy(args.save_policy, args.save_predictor or f"{args.save_policy}.npz")
    if args.json:
        print(_dumps(out, indent=2))
        return 1 if failed else 0
    print(f"{'model':<24} {'passed':>8} {'errors':>7} {'P(good) before':>15} {'after':>7}")
    for m, r in out["models"].items():
        print(f"{m:<24} {r['passed']:>4}/{r['asked']:<3} {r['errors']:>7} "
              f"{r['p_good_before']:>15.3f} {r['p_good_after']:>7.3f}")  # fmt: skip
    for m, why in out["skipped"].items():
        print(f"{m:<24} not probed: {why}")
    spent = out["spent_usd"]
    print(
        ("spent: unknown (unpriced calls)" if spent is None else f"spent ${spent:.4f}")
        + (f"; stopped: {out['stopped']}" if out["stopped"] else "")
    )
    if not args.save_policy:
        print("(abilities updated in memory only; --save-policy PATH keeps them)")
    elif failed:
        print(f"(nothing learned: {args.save_policy} left as it was)")
    if failed:
        print(f"satisfice: every probe call failed; the first: {report.first_error}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


_REPORT_EVERY_S = 2.0  # how often a long read of a ledger says how far it got


def _read_as_it_goes(it: Any, t0: float) -> Any:
    """`it`'s rows, with a line on stderr every `_REPORT_EVERY_S` of reading: a ledger of
    millions of requests had been read for minutes without a word."""
    import time

    last = t0
    for n, r in enumerate(it, 1):
        if not n & 1023 and (now := time.perf_counter()) - last >= _REPORT_EVERY_S:
            last = now
            print(f"satisfice report: {n:,} requests read ({now - t0:.0f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip
        yield r


def cmd_report(args: argparse.Namespace) -> int:
    import time

    from ._atomic import write_atomic
    from .report import render_html, render_text, rows, summarize

    t0 = time.perf_counter()
    s = summarize(_read_as_it_goes(rows(args.ledger), t0))
    if args.html:
        page = render_html(s).encode()
        write_atomic(args.html, lambda f: f.write(page))
        print(f"wrote {args.html} ({s['requests']:,} requests, "
              f"{time.perf_counter() - t0:.2f}s)", file=sys.stderr)  # fmt: skip
    if args.json:
        print(_dumps(s, indent=2))
    elif not args.html:
        print(render_text(s))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server import ServerConfig, create_app, limit_malloc_arenas, listen, serve
    except ImportError as e:  # the server's extra not installed: said, not a traceback
        raise ConfigError(
            f"satisfice serve needs the server's extra ({e.name or e} is missing): "
            "pip install 'satisfice[server]' (from a checkout: pip install '.[server]')"
        ) from None

    limit_malloc_arenas()  # the process is the server's: before its threads start

    cfg = ServerConfig.load(args.config)
    if args.host is not None:
        cfg.host = args.host
    if args.port is not None:
        cfg.port = args.port
    cfg.__post_init__()  # re-check: a non-loopback --host needs keys
    # built first: a registry, policy or alias the app refuses is said before "serving"
    app = create_app(cfg, freeze_heap=True)  # the process is the server's own
    sockets = listen(cfg.host, cfg.port)  # and the port: one held elsewhere is said here too
    what = cfg.registry_path or "the bundled registry"
    # the port bound (port 0 asks the system for one), an IPv6 host in brackets as URLs say
    port = sockets[0].getsockname()[1]
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    where = f"http://{host}:{port}/v1"
    print(f"satisfice serving {what} on {where} (state: {cfg.state_backend})", file=sys.stderr)
    serve(cfg, app, sockets)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .eval.progress import ProgressLine
    from .flywheel import train_from_ledger
    from .registry import Registry

    reg = Registry.load(args.registry) if args.registry else Registry.default()
    pol = None
    if args.policy:  # read before training: a corrupt one had failed after the predictor's write
        from .policy import Policy

        pol = Policy.load(args.policy) if Path(args.policy).exists() else Policy()
    # "before" is the predictor the policy uses now, which the new one replaces (it had been
    # the bundled prior: a second run reported the gain over the prior, not over the first)
    qm, report = train_from_ledger(
        args.from_ledger,
        start=pol.quality_model() if pol is not None else None,
        registry=reg,
        holdout=args.holdout,
        progress=ProgressLine(enabled=not args.quiet),
    )
    qm.save(args.save_predictor)
    report["predictor"] = args.save_predictor
    if pol is not None:
        pol.save(args.policy, args.save_predictor)
        report["policy"] = args.policy
        # its floor (or λ) was set on the old predictor's P(good): the same setting routes
        # otherwise on the new one (a cost target calibrate met had been passed silently)
        report["recalibrate"] = (
            f"{args.policy}'s quality floor and λ were set for the predictor it used before; "
            "re-run `satisfice calibrate ... --policy` on your prompts so a cost or quality "
            "target you calibrated for still holds"
        )
        b, a = report.get("before"), report.get("after")
        if b is not None and a is not None and a["log_loss"] > b["log_loss"]:
            report["worse"] = (
                f"the new predictor's held-out log loss {a['log_loss']:.4f} is worse than "
                f"the one it replaces ({b['log_loss']:.4f})"
            )
    if args.json:
        print(_dumps(report, indent=2))
        return 0
    print(f"trained on {report['train_rows']} scored ledger records; models: "
          f"{', '.join(report['models'])}")  # fmt: skip
    if report.get("duplicates_skipped"):
        print(f"note: {report['duplicates_skipped']} records repeated a request id read "
              "before and were skipped", file=sys.stderr)  # fmt: skip
    if "before" in report:
        b, a = report["before"], report["after"]
        seen = report["held_out_in_before_training"]
        left = f" ({seen} the old predictor trained on left out)" if seen else ""
        print(f"held out {report['held_out_rows']} records{left}:   log loss  "
              f"{b['log_loss']:.4f} -> {a['log_loss']:.4f}   Brier {b['brier']:.4f} -> "
              f"{a['brier']:.4f}")  # fmt: skip
    elif "after" in report:
        a = report["after"]
        print(f"{report['note']}: log loss {a['log_loss']:.4f}, Brier {a['brier']:.4f}")
    print(f"wrote {args.save_predictor}" + (f" and {args.policy}" if args.policy else ""))
    for k in ("worse", "recalibrate"):
        if k in report:
            print(f"note: {report[k]}", file=sys.stderr)
    return 0


def _outputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The files the command will write, each with the option that names it."""
    cmd = args.command
    out: list[tuple[str, str | None]] = []
    if cmd == "probe":
        pol = args.save_policy
        pred = pol and (args.save_predictor or f"{pol}.npz")  # written with the policy only
        out = [("--save-policy", pol), ("--save-predictor", pred), ("--health", args.health)]
    elif cmd == "eval":
        out = [("--plot", args.plot), ("--save-predictor", args.save_predictor),
               ("--save-onnx", args.save_onnx)]  # fmt: skip
    elif cmd == "train":
        out = [("--save-predictor", args.save_predictor), ("--policy", args.policy)]
    elif cmd == "report":
        out = [("--html", args.html)]
    elif cmd == "calibrate" and not args.dry_run:
        out = [("--policy", args.policy)]
    elif cmd == "registry" and args.action == "update":
        if args.out is None and args.registry is None:
            raise SatisficeError("give --out FILE (or --registry FILE to update it in place)")
        out = [("--out", args.out)] if args.out else [("--registry", args.registry)]
    return [(flag, path) for flag, path in out if path]


def _inputs(args: argparse.Namespace) -> list[tuple[str, str, tuple[str, ...]]]:
    """The files the command reads, each said as an error names it, with the output options
    that update it in place."""
    cmd = args.command
    ins: list[tuple[str, str | None, tuple[str, ...]]] = []
    if cmd == "probe":
        ins = [("the registry (--registry)", args.registry, ()),
               ("the policy (--policy)", args.policy, ("--save-policy",))]  # fmt: skip
    elif cmd == "registry" and args.action == "update":
        cat = args.location if args.location and "://" not in args.location else None
        ins = [("the catalogue", cat, ()),
               ("the registry (--registry)", args.registry, ("--out", "--registry"))]  # fmt: skip
    elif cmd == "report":  # (`report L --html L` had replaced the ledger with its page)
        ins = [("the ledger", args.ledger, ())]
    elif cmd == "train":
        ins = [("the ledger (--from-ledger)", args.from_ledger, ()),
               ("the registry (--registry)", args.registry, ())]  # fmt: skip
    elif cmd in ("eval", "calibrate"):
        ins = [(f"an input file ({f})", f, ()) for f in args.files or ()]
        ins += [("the registry (--registry)", args.registry, ())]
        if cmd == "calibrate" and getattr(args, "from_ledger", None):
            ins += [("the ledger (--from-ledger)", args.from_ledger, ())]
    return [(what, path, by) for what, path, by in ins if path]


# the options that name a file: given empty (`--registry "$REG"` with REG unset), the
# option had been taken as absent (the bundled registry, the default policy, no policy
# saved) without a word, or ended in a TypeError traceback (`registry update --out ''`)
_PATH_OPTIONS = ("file", "config", "registry", "policy", "health", "out", "save_policy",
                 "save_predictor", "html", "plot", "save_onnx", "predictor",
                 "from_ledger")  # fmt: skip
# the arguments that name a file by place, not by an option: `count FILE`, `report LEDGER`
_PATH_ARGUMENTS = {"count": ("file", "FILE"), "report": ("ledger", "LEDGER")}


def _check_paths(args: argparse.Namespace) -> None:
    positional = _PATH_ARGUMENTS.get(args.command)
    if positional is not None and getattr(args, positional[0], None) == "":
        # (`count ''` had been told to leave out a --file it has not)
        raise SatisficeError(f"{positional[1]} is empty; give a file's path")
    for dest, said in (("files", "FILES"), ("train", "--train")):
        if "" in (getattr(args, dest, None) or ()):  # ('' had been read as the directory .)
            raise SatisficeError(f"{said} holds an empty path; give a file's or directory's path")
    for dest in _PATH_OPTIONS:
        if getattr(args, dest, None) == "":
            flag = "--" + dest.replace("_", "-")
            raise SatisficeError(f"{flag} is empty; give a file's path, or leave {flag} out")


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output path the command could not write, before any of its work: each was
    found only at the end, after paid probe calls, a training run or a whole evaluation.
    Nothing is created here (each write is atomic, at the end, or not at all)."""
    seen: dict[str, str] = {}
    for flag, path in _outputs(args):
        p = Path(path)
        if p.is_dir():
            raise SatisficeError(f"{flag} {path} is a directory; give the path of a file to write")
        if p.exists() and not p.is_file():  # a stream (/dev/null, a FIFO) is written into
            if not os.access(p, os.W_OK):
                raise SatisficeError(f"{flag} {path} is not writable; give another path")
            continue
        try:
            target = p.resolve()  # through a symlink: the file replaced is the one it points at
        except RuntimeError:  # (Python 3.11's word for a symlink loop)
            raise SatisficeError(
                f"{flag} {path} is a loop of symbolic links; give another path"
            ) from None
        parent = target.parent
        if not parent.exists():
            raise SatisficeError(
                f"{flag} {path}: directory {parent} does not exist; create it, or give another path"
            )
        if not parent.is_dir():
            raise SatisficeError(f"{flag} {path}: {parent} is not a directory; give another path")
        if not os.access(parent, os.W_OK | os.X_OK):  # the write makes a file beside it
            raise SatisficeError(
                f"{flag} {path}: directory {parent} is not writable; give another path"
            )
        for what, src, by in _inputs(args):
            # written over, the input was gone (`registry update --out` its catalogue,
            # `probe --save-predictor` its registry), unless the write is its update
            if flag not in by and p.exists() and Path(src).exists() and os.path.samefile(p, src):
                raise SatisficeError(
                    f"{flag} {path} is {what}, which the command reads and the write would "
                    "replace; give another path"
                )
        if str(target) in seen:  # the second write would replace the first
            raise SatisficeError(f"{seen[str(target)]} and {flag} both name {path}; give two files")
        seen[str(target)] = flag


def _days(value: str) -> int:
    """A number of days for an option: a whole number >= 0 (-5 had made every price stale)."""
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of days >= 0, got {value!r}")
    return n


def _add_route_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", help="registry file, TOML or JSON (default: the bundled registry)")
    p.add_argument("--policy", help="policy JSON written by `satisfice calibrate`")
    p.add_argument("--max-cost", type=float, help="max estimated USD per request")
    p.add_argument("--latency-slo-ms", type=float, help="max p95 latency in ms")
    p.add_argument("--quality-floor", type=float, help="min predicted P(good), 0..1")
    # one value per flag: `nargs="*"` had taken the prompt after it as a capability too
    p.add_argument("--needs", action="append", type=_needs, metavar="CAP[,CAP...]",
                   help="required capabilities, e.g. --needs json,tools or --needs json "
                   "--needs vision")  # fmt: skip
    p.add_argument("--max-tokens", type=int, help="the request's max output tokens")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="satisfice", description=__doc__)
    # (`satisfice --version` had been told "the following arguments are required: command")
    parser.add_argument("--version", action="version", version=f"satisfice {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("route", help="show where a prompt would go, and why")
    p.add_argument("prompt", nargs="?", help="the prompt text")
    p.add_argument("--file", help="read the prompt from a file (- for stdin)")
    p.add_argument(
        "--messages", action="store_true", help="the --file holds OpenAI-style messages as JSON"
    )
    _add_route_options(p)
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("count", help="count the tokens of a file")
    p.add_argument("file", help="text file (- for stdin)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", help="a registry model id: uses its tokenizer")
    g.add_argument(
        "--encoding",
        default="o200k_base",
        help="o200k_base (default), cl100k_base, or a family: claude, llama, ...",
    )
    p.add_argument("--registry", help="registry file, TOML or JSON (default: the bundled registry)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_count)

    p = sub.add_parser("demo", help="route a set of sample prompts and show the saving")
    _add_route_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "registry", help="refresh a registry's models and prices from a public catalogue"
    )
    p.add_argument("action", choices=["diff", "update", "check"],
                   help="diff: show what would change; update: write it; check: deprecations "
                   "and stale prices")  # fmt: skip
    p.add_argument("location", nargs="?",
                   help="FILE or URL of the catalogue (default: litellm's map inside the "
                   "installed litellm package; the public URL for the others)")  # fmt: skip
    p.add_argument("--from", dest="source", choices=["litellm", "openrouter", "models.dev"])
    p.add_argument(
        "--registry",
        help="the registry file to update: TOML, or JSON if named *.json (default: the bundled "
        "one)",
    )
    p.add_argument("--models", nargs="*", help="models to add, as the host names them "
                   "(e.g. gpt-5.4 claude-sonnet-4-6 or groq:llama-3.3-70b-versatile)")  # fmt: skip
    p.add_argument("--out", help="where update writes (default: --registry, in place)")
    p.add_argument("--yes", action="store_true", help="write even if a price moved > 10x")
    p.add_argument("--max-price-age-days", type=_days, default=90,
                   help="call prices older than this stale (default: 90)")  # fmt: skip
    p.set_defaults(func=cmd_registry)

    p = sub.add_parser("serve", help="run the router as an OpenAI/Anthropic-compatible service")
    p.add_argument("--config", help="satisfice.toml (default: bundled registry on 127.0.0.1)")
    p.add_argument("--host", help="the address to listen on (default: the config's, else "
                   "127.0.0.1; one not loopback needs require_keys = true)")  # fmt: skip
    p.add_argument("--port", type=int, help="the port (default: the config's, else 4000; 0: "
                   "any free one, printed)")  # fmt: skip
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("report", help="where the money went: a report over the ledger")
    p.add_argument("ledger", help="ledger: SQLite file, *.jsonl, or postgresql://...")
    p.add_argument("--html", help="write a self-contained HTML page with charts here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("train", help="refit the predictor on the ledger's scored requests")
    p.add_argument("--from-ledger", required=True, help="ledger recorded with record_prompts")
    p.add_argument("--save-predictor", required=True, help="write the fitted predictor here")
    p.add_argument("--policy", help="also point this policy JSON at it (created if absent)")
    p.add_argument("--registry", help="registry file (TOML or JSON) whose priors seed the fit")
    p.add_argument("--holdout", type=float, default=0.2, help="share of records held out")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("probe", help="re-measure models with checkable probe tasks")
    p.add_argument("--registry", help="registry file, TOML or JSON (default: the bundled registry)")
    p.add_argument("--policy", help="policy JSON to start from")
    p.add_argument("--models", nargs="*", help="models to probe (default: all)")
    p.add_argument("--budget-usd", type=float, help="stop once this much is spent")
    p.add_argument("--save-policy", help="write the updated policy JSON here")
    p.add_argument("--save-predictor", help="and its predictor here (default: POLICY.npz)")
    p.add_argument("--health", help="JSON file of measured latencies: read, then updated")
    p.add_argument("--run-code", action="store_true",
                   help="also run the code probes: the models' code runs in a child process as "
                   "this user (not a sandbox; use a throwaway account or container)")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_probe)

    register_eval(sub)
    register_calibrate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `registry update --from models.dev FILE`: Python 3.11's argparse fills an optional
    # positional before the options that precede its value, and leaves the value over.
    registry_file = getattr(args, "command", None) == "registry" and args.location is None
    if registry_file and len(extra) == 1 and not extra[0].startswith("-"):
        args.location, extra = extra[0], []
    if extra:
        # `--needs json tools`: the values after the first are no longer the flag's
        hint = (
            f"; a list after --needs is written {_NEEDS_FORM}"
            if getattr(args, "needs", None)
            else ""
        )
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line(args.command)
        # the router logs each registry note (a line of its own): the warning said it again
        warnings.filterwarnings("ignore", category=RegistryWarning)
        return _run(args)


def _warning_line(command: str) -> Callable[..., None]:
    """Show a warning as the CLI shows an error, one line: Python's form named the file and
    line that warned and printed its source, nothing a user of the command can act on."""

    def show(message: Warning | str, *_: object, **__: object) -> None:
        print(f"satisfice {command}: warning: {message}", file=sys.stderr)

    return show


def _run(args: argparse.Namespace) -> int:
    try:
        _check_paths(args)
        _check_outputs(args)
        return int(args.func(args))
    except KeyboardInterrupt:  # Ctrl-C: what was being written is left as it was (atomic)
        print(f"satisfice {args.command}: interrupted", file=sys.stderr)
        return 130
    except SatisficeError as e:
        print(f"satisfice {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RecursionError:  # input nested past what a reader takes: said, not a traceback
        print(f"satisfice {args.command}: error: an input nests too deeply to read",
              file=sys.stderr)  # fmt: skip
        return 2
    except BrokenPipeError:  # `satisfice demo | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except (OSError, UnicodeDecodeError) as e:  # a file named on the command line
        why = (
            f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename
            else "a file is not UTF-8 text" if isinstance(e, UnicodeDecodeError)
            else str(e)
        )  # fmt: skip
        print(f"satisfice {args.command}: error: {why}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
