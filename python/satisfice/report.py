"""`satisfice report`: where the money went, read from the ledger.

Cost per task class and per model, the saving against sending everything to the reference
model, quality by model where feedback exists, escalation rate per cascade step, fallback and
failure rates, latency and router-overhead percentiles, and drift (each model's share of
traffic per day). Terminal tables by default; `--html` writes one self-contained page whose
charts are inline SVG (no scripts, no network).
"""

from __future__ import annotations

import html
import math
import sqlite3
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .ledger import (
    _NAMES,
    _row,
    _scores,
    _stored,
    _text,
    feedback_query,
    first_bad_row,
    open_ledger_db,
    read_records,
    split_feedback,
    target_kind,
)
from .result import billed_calls

__all__ = ["render_html", "render_text", "rows", "summarize"]


def rows(target: str | Path) -> Iterator[dict[str, Any]]:
    """The ledger's requests as flat rows (the `requests` columns, `feedback`, and the
    cascade steps' statuses). SQLite is read by column; other ledgers record by record."""
    t = str(target)
    if target_kind(t) == "sqlite":
        p = Path(t)
        if not p.exists():
            raise ConfigError(f"ledger {p} does not exist")
        db = open_ledger_db(p)
        try:
            scores = _scores(db.execute(feedback_query(db)), p)
            # the same checks as every reader's: a row hand-edited or written by another
            # program is an error naming it, not a traceback (SQLite types no column)
            if bad := first_bad_row(db):
                raise ConfigError(f"ledger {p}, request {bad[0]!r:.60}: {bad[1]}")
            cols = [n for n in _NAMES if n != "record"]
            # the record, where its bill is more than one call's (or a failed request's)
            whole = "CASE WHEN cascade_steps > 0 OR attempts > 1 OR outcome != 'ok' THEN record END"
            # a served request's key id (`_key_id`), read from its record where it has a key;
            # as bytes, since its JSON may hold half a surrogate pair (a library caller's
            # metadata, kept in the record as given), which SQLite decodes to no UTF-8 text
            # and sqlite3 then refused, failing the whole report
            key_id = (
                "CASE WHEN api_key IS NOT NULL AND json_valid(record) "
                "AND json_type(record, '$.metadata.key_id') = 'text' "
                "THEN CAST(json_extract(record, '$.metadata.key_id') AS BLOB) END"
            )
            q = f"SELECT {','.join(cols)}, {key_id}, {whole} FROM requests"
            for values in db.execute(q):
                r = dict(zip(cols, values, strict=False))
                r["key_id"] = None if values[-2] is None else _text(_decoded(values[-2]))
                # the answer's score: one given for another model is not its quality
                r["feedback"] = split_feedback(scores.get(r["request_id"]), r["model"])[0]
                rec = _stored(r["request_id"], values[-1], {}, p) if values[-1] else None
                r["steps"] = _steps(rec or {})
                r["bills"] = None if rec is None else _bills(rec)
                yield r
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"ledger {p} cannot be read: SQLite says {e}") from None
        finally:
            db.close()
        return
    # a request id met again (a JSONL ledger appended twice, two rotated files joined over
    # each other) is one request, as a database keeps one row per id: each copy had been
    # counted, its cost summed again, without a word (JSONL's ids alone are held: a
    # database's key has made its ids unique)
    seen: set[str] | None = set() if target_kind(t) == "jsonl" else None
    repeats = 0
    for rec in read_records(t):
        if seen is not None:
            if rec["request_id"] in seen:
                repeats += 1
                continue
            seen.add(rec["request_id"])
        r = dict(zip(_NAMES, _row(rec), strict=True))
        del r["record"]
        meta = rec.get("metadata")
        # (as SQLite reads it: a served key's, where the record has a key; a library call's
        # metadata is the caller's own, and its "key_id" is no key's)
        kid = meta.get("key_id") if isinstance(meta, Mapping) and r["api_key"] is not None else None
        r["key_id"] = _text(kid) if isinstance(kid, str) else None  # as the columns are
        r["feedback"] = rec.get("feedback")
        r["steps"] = _steps(rec)
        r["bills"] = _bills(rec)
        yield r
    if repeats:
        warnings.warn(
            f"ledger {t}: {repeats:,} record(s) repeated a request id read before and were "
            "skipped (each request is counted once, as first recorded)",
            stacklevel=2,
        )


def _bills(rec: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """`billed_calls(rec)` with each model and deployment as its column is written (`_text`):
    a model id with NUL or half a surrogate pair had been two rows, its requests on one
    and its cost on another."""
    return [(_text(m), _text(d), *rest) for m, d, *rest in billed_calls(rec)]


def _decoded(raw: bytes) -> str:
    """Text SQLite gave as bytes: a lone surrogate as SQLite encodes it (for `_text` to
    replace), any other byte that is no UTF-8 replaced."""
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")


def _steps(rec: Mapping[str, Any]) -> list[str]:
    casc = rec.get("cascade")
    if not isinstance(casc, Mapping):
        return []
    return [str(s.get("status")) for s in casc.get("steps") or ()]


def _pct(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def summarize(source: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    n = ok = errors = fell_back = estimated = unpriced = failed_unknown = 0
    cost = ref_cost = failed_cost = 0.0
    ref_known = True
    # per task: [priced requests, their cost, their reference cost, requests, unpriced,
    # priced requests whose reference cost is unknown]
    by_task: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0, 0, 0])
    # per model: the requests it answered, and the calls to it billed (priced, or unknown)
    by_model: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"n": 0, "cost": 0.0, "lat": [], "fb": [], "p": [], "unpriced": 0, "priced": 0}
    )
    lat: list[float] = []
    over: list[float] = []
    days: dict[str, Counter[str]] = defaultdict(Counter)
    step_ran: Counter[int] = Counter()
    step_up: Counter[int] = Counter()
    # per key of `satisfice serve` (its name and team, and its id: names are not unique, not
    # even in a team, and two keys of one name had been summed as one) and the keyless
    # (None): [requests, cost, requests of unknown cost]
    by_key: dict[tuple[Any, Any, Any], list[Any]] = {}
    for r in source:
        n += 1
        # every request's bill, answered or failed, on its key's row (a request without a
        # key, a library call or a probe, on "(no key)")
        kid = r.get("key_id")
        k = by_key.get(row := (r.get("api_key"), r.get("team"), _key_id(kid)))
        if k is None:
            k = by_key[row] = [0, 0.0, 0]
        k[0] += 1
        if r.get("cost_usd") is None:
            k[2] += 1
        else:
            k[1] += r["cost_usd"]
        estimated += bool(r.get("cost_estimated"))  # a failed request's bill may be too
        # a ladder's steps, answered or not: one that ran out of budget escalated too
        for i, status in enumerate(r.get("steps") or ()):
            if status in ("escalated", "accepted", "failed"):
                step_ran[i] += 1
            if status == "escalated":
                step_up[i] += 1
        # each call's bill on the model called (a cascade's rejected call, a race's loser
        # and a failed request's calls had been on the answering model's row, or on none)
        bills = r.get("bills")
        if bills is None:  # a request of one call: its bill is its model's
            bills = [(r.get("model") or r.get("routed_model"), "", r.get("cost_usd"), 0, 0)]
        for bill in bills:
            if not bill[0]:  # a failed request routed to no model (written by hand): none
                continue
            bm = by_model[str(bill[0])]
            if bill[2] is None:
                bm["unpriced"] += 1
            else:
                bm["cost"] += bill[2]
                bm["priced"] += 1
        if r.get("outcome") != "ok":
            errors += 1
            if r.get("cost_usd") is not None:  # calls billed before the request failed
                cost += r["cost_usd"]
                failed_cost += r["cost_usd"]
            else:  # unknown (an unpriced call, one cancelled in flight): never $0
                unpriced += 1
                failed_unknown += 1
            continue
        ok += 1
        m = str(r.get("model"))
        c = r.get("cost_usd")
        bm = by_model[m]
        bm["n"] += 1
        if c is None:
            unpriced += 1
        else:
            cost += c
        rc = r.get("reference_cost_usd")
        if rc is None:
            ref_known = False
        else:
            ref_cost += rc
        t = by_task[str(r.get("task"))]
        t[3] += 1
        if c is None:  # unknown, not $0: counted apart, never in a sum or a mean
            t[4] += 1
        else:
            t[0] += 1
            t[1] += c
            if rc is None:  # an unpriced reference is unknown, not $0
                t[5] += 1
            else:
                t[2] += rc
        if r.get("latency_s") is not None:
            lat.append(r["latency_s"])
            bm["lat"].append(r["latency_s"])
        if r.get("overhead_s") is not None:
            over.append(r["overhead_s"])
        if r.get("feedback") is not None:
            bm["fb"].append(float(r["feedback"]))
        if r.get("p_good") is not None:
            bm["p"].append(float(r["p_good"]))
        fell_back += bool(r.get("fallbacks"))
        days[str(r.get("day"))][m] += 1
    lat.sort()
    over.sort()
    models = {}
    for m, b in sorted(by_model.items(), key=lambda kv: -kv[1]["cost"]):
        b["lat"].sort()
        models[m] = {
            "requests": b["n"],
            "share": b["n"] / ok if ok else 0.0,
            # what its calls were billed, answered or not; None when no bill of it is known
            "cost_usd": b["cost"] if b["priced"] or not b["unpriced"] else None,
            "unpriced_requests": b["unpriced"],  # its calls of unknown cost
            "p50_latency_s": _pct(b["lat"], 0.5),
            "p95_latency_s": _pct(b["lat"], 0.95),
            "feedback_n": len(b["fb"]),
            "mean_feedback": sum(b["fb"]) / len(b["fb"]) if b["fb"] else None,
            "mean_predicted": sum(b["p"]) / len(b["p"]) if b["p"] else None,
        }
    return {
        "requests": n,
        "answered": ok,
        "failure_rate": errors / n if n else 0.0,
        "fallback_rate": fell_back / ok if ok else 0.0,
        # of the priced requests; unknown (not $0) when none was priced
        "cost_usd": None if unpriced and unpriced == n else cost,
        "unpriced_requests": unpriced,
        # what failed requests' calls were billed (in cost_usd and their models' rows, in
        # no task's) ($0 with no failed request: nothing was billed for one, which
        # "unknown" had said), and how many failed requests' bills are unknown
        "failed_cost_usd": failed_cost if errors > failed_unknown or not errors else None,
        "failed_unpriced_requests": failed_unknown,
        "estimated_cost_requests": estimated,
        "reference_cost_usd": ref_cost if ref_known else None,
        # the answered requests against the same answers on the reference model: like with
        # like (a failed request's bill against no reference had skewed it)
        "saving": (1 - (cost - failed_cost) / ref_cost)
        if ref_known and ref_cost > 0 and unpriced == failed_unknown
        else None,
        "latency_s": {q: _pct(lat, v) for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
        "overhead_s": {q: _pct(over, v) for q, v in (("p50", 0.5), ("p99", 0.99))},
        "tasks": {
            k: {
                "requests": int(v[3]),
                "unpriced_requests": int(v[4]),
                # of the priced requests (None when none was priced)
                "cost_usd": v[1] if v[0] else None,
                "mean_cost_usd": v[1] / v[0] if v[0] else None,
                "reference_cost_usd": v[2] if v[0] and not v[5] else None,
            }
            for k, v in sorted(by_task.items(), key=lambda kv: -kv[1][1])
        },
        "models": models,
        # a row per key and team, the dearest first; the keyless requests' key is None
        # (empty when no request had a key: the library's ledger, a server without keys)
        "keys": [
            {
                "key": k,
                "team": team,
                "key_id": kid,
                "requests": v[0],
                "cost_usd": v[1] if v[2] < v[0] else None,
                "unpriced_requests": v[2],
            }
            for (k, team, kid), v in sorted(by_key.items(), key=lambda kv: -kv[1][1])
        ]
        if any(k is not None for k, _, _ in by_key)
        else [],
        "escalation": {
            str(i): {
                "ran": step_ran[i],
                "escalated": step_up[i],
                "rate": step_up[i] / step_ran[i] if step_ran[i] else 0.0,
            }
            for i in sorted(step_ran)
        },
        "drift": {d: dict(c) for d, c in sorted(days.items())},
    }


# -- text -------------------------------------------------------------------------------------


def _key_id(v: Any) -> str | None:
    """A record's key id as the report keeps it: a str, else none (a record written by hand
    or by a server before ids were recorded: its key is told by its name and team)."""
    return v if isinstance(v, str) else None


def _key_names(keys: list[dict[str, Any]], shown: Callable[[str], str]) -> list[str]:
    """Each key row's name as `shown` (escaped, or made plain), "(no key)" for the keyless
    row (in italics in HTML, so that no key's own name reads as it); a name that more than
    one key of a team has, with the key's id beside it."""
    twice = Counter((v["key"], v["team"]) for v in keys)
    out = []
    for v in keys:
        if v["key"] is None:
            out.append("<i>(no key)</i>" if shown is _markup else "(no key)")
            continue
        name = str(v["key"])
        if twice[v["key"], v["team"]] > 1 and v.get("key_id") is not None:
            name += f" [{v['key_id']}]"
        out.append(shown(name))
    return out


def _usd(x: float | None) -> str:
    if x is None:
        return "unpriced"
    return f"${x:,.2f}" if x >= 100 else f"${x:,.4f}" if x >= 1 else f"${x:.6f}"


def _partial(unpriced: int) -> str:
    """A row's requests of unknown cost, which its cost leaves out."""
    return f"  (+{unpriced:,} unpriced)" if unpriced else ""


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1e6:.0f} µs" if x < 1e-3 else f"{x * 1000:,.1f} ms"


def _plain(name: object) -> str:
    """A name from the ledger as terminal text: what a terminal would act on (escape
    sequences that clear the screen, set its title or hide text) shown escaped."""
    t = str(name)
    if t.isprintable():
        return t
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in t)


def _markup(name: object) -> str:
    """A name from the ledger as HTML text: as the terminal shows it (`_plain`), escaped. A
    browser acts on what a terminal would: a right-to-left override in one model's id had
    turned the drift legend's other ids around and moved them off their colours, and an id
    with a zero-width space read as the id without it, two rows of one name."""
    return html.escape(_plain(name))


def render_text(s: Mapping[str, Any]) -> str:
    out = [
        f"{s['requests']:,} requests, {s['answered']:,} answered; failure rate "
        f"{s['failure_rate']:.2%}, fallback rate {s['fallback_rate']:.2%}",
        f"cost {_usd(s['cost_usd'])}"
        + (
            f" ({s['unpriced_requests']:,} requests of unknown cost not counted: unpriced "
            "models, calls cancelled in flight)"
            if s["unpriced_requests"]
            else ""
        )
        + (
            f"; {_usd(s['reference_cost_usd'])} on the reference model: {s['saving']:.1%} saved"
            if s["saving"] is not None
            else ""
        )
        + (
            f"; {s['estimated_cost_requests']:,} with estimated parts"
            if s["estimated_cost_requests"]
            else ""
        )
        + (
            "; of it, billed for failed requests: "
            + _cost(s["failed_cost_usd"], s["failed_unpriced_requests"])
            if s["failed_cost_usd"] or s["failed_unpriced_requests"]
            else ""
        ),
        "latency p50/p90/p99: "
        + " / ".join(_ms(s["latency_s"][q]) for q in ("p50", "p90", "p99"))
        + "; router overhead p50/p99: "
        + " / ".join(_ms(s["overhead_s"][q]) for q in ("p50", "p99")),
        "",
        f"{'task':<14} {'requests':>9} {'cost':>12} {'mean':>11} {'on reference':>13}",
    ]
    for k, v in s["tasks"].items():
        cost, mean, ref = (
            _usd(v["cost_usd"]),
            _usd(v["mean_cost_usd"]),
            _usd(v["reference_cost_usd"]),
        )
        out.append(f"{_plain(k):<14} {v['requests']:>9,} {cost:>12} {mean:>11} {ref:>13}"
                   f"{_partial(v['unpriced_requests'])}")  # fmt: skip
    out += ["", f"{'model':<24} {'share':>6} {'cost':>12} {'p50':>10} {'p95':>10} "
            f"{'feedback':>9} {'predicted':>9}"]  # fmt: skip
    for m, v in s["models"].items():
        fb = "-" if v["mean_feedback"] is None else f"{v['mean_feedback']:.2f} ({v['feedback_n']})"
        pr = "-" if v["mean_predicted"] is None else f"{v['mean_predicted']:.2f}"
        out.append(f"{_plain(m):<24} {v['share']:>6.1%} {_usd(v['cost_usd']):>12} "
                   f"{_ms(v['p50_latency_s']):>10} {_ms(v['p95_latency_s']):>10} {fb:>9} "
                   f"{pr:>9}{_partial(v['unpriced_requests'])}")  # fmt: skip
    if s["keys"]:
        out += ["", f"{'key':<24} {'team':<16} {'requests':>9} {'cost':>12}"]
        for name, v in zip(_key_names(s["keys"], _plain), s["keys"], strict=True):
            team = "-" if v["team"] is None else _plain(v["team"])[:16]
            out.append(f"{name[:24]:<24} {team:<16} {v['requests']:>9,} "
                       f"{_usd(v['cost_usd']):>12}{_partial(v['unpriced_requests'])}")  # fmt: skip
    if s["escalation"]:
        out += ["", "cascade step   ran   escalated   rate"]
        for i, v in s["escalation"].items():
            out.append(f"{i:>12} {v['ran']:>5} {v['escalated']:>11} {v['rate']:>6.1%}")
    if s["drift"]:
        out += ["", "traffic share per day, UTC (top models)"]
        top = [m for m, v in s["models"].items() if v["requests"]][:5]  # models that answered
        # as wide as the longest id (to 40): cut to 14, `claude-opus-4-7` and
        # `claude-opus-4-7@low` had both been headed `claude-opus-4-`
        w = min(max([8, *(len(_plain(m)) for m in top)]), 40)
        out.append(f"{'day':<11} " + " ".join(f"{_plain(m)[:w]:>{w}}" for m in top))
        for d, c in s["drift"].items():
            tot = sum(c.values())
            out.append(f"{_plain(d):<11} " + " ".join(f"{c.get(m, 0) / tot:>{w}.1%}" for m in top))
    return "\n".join(out)


# -- HTML -------------------------------------------------------------------------------------

_PALETTE = ("#3b6ea5", "#e07b39", "#4c9f70", "#c4473a", "#8a63b3", "#b8a038", "#3aa6b8",
            "#9c6644", "#6c757d", "#d16ba5")  # fmt: skip


def _bars(items: Sequence[tuple[str, float | None, int]], width: int = 560) -> str:
    """Horizontal bars of (label, cost, requests of unknown cost); None (unpriced) gets a stub
    bar labelled so, never a $0 one."""
    if not items:
        return "<p>no data</p>"
    top = max(v or 0.0 for _, v, _ in items) or 1.0
    h = 24
    texts = [_cost(v, unknown) for _, v, unknown in items]
    # the canvas fits the longest figure beside the longest bar (7 px a character at 12 px):
    # "$60,000,000.00" had been cut off at the canvas's edge
    room = width - 260
    canvas = max(width, 194 + room + 7 * max(map(len, texts)) + 8)
    parts = [f'<svg width="{canvas}" height="{h * len(items) + 8}" role="img">']
    for i, ((label, v, _), text) in enumerate(zip(items, texts, strict=True)):
        w = max(1.0, room * (v or 0.0) / top)
        y = i * h + 4
        parts.append(
            f'<text x="0" y="{y + 15}" font-size="12">{html.escape(_plain(label)[:28])}</text>'
            f'<rect x="190" y="{y}" width="{w:.1f}" height="{h - 6}" '
            f'fill="{_PALETTE[i % len(_PALETTE)]}"/>'
            f'<text x="{194 + w:.1f}" y="{y + 15}" font-size="12">{text}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _stacked(drift: Mapping[str, Mapping[str, int]], models: Sequence[str]) -> str:
    days = list(drift)
    if not days:
        return "<p>no data</p>"
    width, height, left = 700, 260, 40
    # every day within the canvas: a column of at least 4 px had run a year's days past its
    # edge, unseen (`step`: a day's share of the width, its column and the gap after it)
    step = min(62.0, (width - left) / len(days))
    gap = min(2.0, step / 5)
    bw = step - gap
    parts = [f'<svg width="{width}" height="{height + 40}" role="img">']
    for i, d in enumerate(days):
        tot = sum(drift[d].values()) or 1
        y = float(height)
        x = left + i * step
        for j, m in enumerate(models):
            if not drift[d].get(m):  # no column, nor its name: a model's id written on every
                # day's column, traffic or none, had made 9 ids of 100 KB on 300 days a
                # 250 MB page (and 0.8 GB of memory to build it) from a 1 MB ledger
                continue
            share = drift[d][m] / tot
            hh = share * height
            y -= hh
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{hh:.1f}" '
                         f'fill="{_PALETTE[j % len(_PALETTE)]}"><title>{_markup(d)} '
                         f'{_markup(m)} {share:.1%}</title></rect>')  # fmt: skip
        if len(days) <= 14 or i % max(1, len(days) // 10) == 0:
            parts.append(f'<text x="{x:.1f}" y="{height + 15}" font-size="10">'
                         f'{_markup(d[5:] if d[:4].isdigit() else d)}</text>')  # fmt: skip
    parts.append(f'<text x="0" y="12" font-size="10">100%</text>'
                 f'<text x="0" y="{height}" font-size="10">0%</text></svg>')  # fmt: skip
    legend = " ".join(
        f'<span style="color:{_PALETTE[j % len(_PALETTE)]}">&#9632;</span> {_markup(m)}'
        for j, m in enumerate(models)
    )
    return "".join(parts) + f"<p class=legend>{legend}</p>"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _cost(cost: float | None, unknown: int) -> str:
    """A cost, with the requests of unknown cost it leaves out said, never shown as $0."""
    return _usd(cost) + (f" + {unknown:,} unpriced" if unknown and cost is not None else "")


def render_html(s: Mapping[str, Any], title: str = "satisfice report") -> str:
    models = [m for m, v in s["models"].items() if v["requests"]]  # (a model only called: none)
    top = models[:9]
    # the bucket for the rest, named so no model's own id can take it (a model may be
    # called "other")
    rest = "other models"
    while rest in top:
        rest += " "
    drift = {d: dict.fromkeys([*top, rest], 0) for d in s["drift"]}
    for d, c in s["drift"].items():
        for m, k in c.items():
            drift[d][m if m in top else rest] += k
    saving = "" if s["saving"] is None else f"{s['saving']:.1%}"
    failed_unknown = s["failed_unpriced_requests"]
    cards = [
        ("requests", f"{s['requests']:,}"),
        ("cost", _cost(s["cost_usd"], s["unpriced_requests"])),
        ("on the reference model", _usd(s["reference_cost_usd"])),
        ("saved", saving or "-"),
        # (left out with no failed request: there is nothing to bill, neither $0 next to an
        # unpriced total nor "unpriced", which it had read)
        *(
            [("billed for failed requests", _cost(s["failed_cost_usd"], failed_unknown))]
            if s["answered"] < s["requests"]
            else []
        ),
        ("failure rate", f"{s['failure_rate']:.2%}"),
        ("fallback rate", f"{s['fallback_rate']:.2%}"),
        ("p50 / p99 latency", f"{_ms(s['latency_s']['p50'])} / {_ms(s['latency_s']['p99'])}"),
        ("router overhead p50", _ms(s["overhead_s"]["p50"])),
    ]
    rows_m = "".join(
        f"<tr><td>{_markup(m)}</td><td>{v['requests']:,}</td><td>{v['share']:.1%}</td>"
        f"<td>{_cost(v['cost_usd'], v['unpriced_requests'])}</td>"
        f"<td>{_ms(v['p50_latency_s'])}</td><td>{_ms(v['p95_latency_s'])}</td>"
        f"<td>{_num(v['mean_feedback'])}</td><td>{_num(v['mean_predicted'])}</td></tr>"
        for m, v in s["models"].items()
    )
    model_bars = [(m, v["cost_usd"], v["unpriced_requests"])
                  for m, v in s["models"].items() if v["cost_usd"] is not None]  # fmt: skip
    keys = "".join(
        f"<tr><td>{name}</td>"
        f"<td>{_markup(v['team'] or '-')}</td><td>{v['requests']:,}</td>"
        f"<td>{_cost(v['cost_usd'], v['unpriced_requests'])}</td></tr>"
        for name, v in zip(_key_names(s["keys"], _markup), s["keys"], strict=True)
    )
    key_bars = [(name + (f" ({v['team']})" if v["team"] else ""),
                 v["cost_usd"], v["unpriced_requests"])
                for name, v in zip(_key_names(s["keys"], str), s["keys"], strict=True)
                if v["cost_usd"] is not None]  # fmt: skip
    by_key = (
        f"<h2>Cost per key</h2>\n{_bars(key_bars[:12])}\n<table><tr><th>key</th><th>team</th>"
        f"<th>requests</th><th>cost</th></tr>{keys}</table>"
        if keys
        else ""
    )
    esc = "".join(
        f"<tr><td>{i}</td><td>{v['ran']:,}</td><td>{v['escalated']:,}</td>"
        f"<td>{v['rate']:.1%}</td></tr>"
        for i, v in s["escalation"].items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.card {{ border: 1px solid #ddd; border-radius: 8px; padding: 10px 14px; min-width: 150px; }}
.card b {{ display: block; font-size: 20px; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; }}
td, th {{ border-bottom: 1px solid #eee; padding: 4px 10px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
h2 {{ margin-top: 28px; }} .legend {{ font-size: 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<div class="cards">{
        "".join(f'<div class="card">{html.escape(k)}<b>{v}</b></div>' for k, v in cards)
    }</div>
<h2>Cost per model</h2>
{_bars(model_bars[:12])}
<h2>Cost per task class</h2>
{_bars([(k, v["cost_usd"], v["unpriced_requests"]) for k, v in s["tasks"].items()])}
{by_key}
<h2>Traffic share per model per day, UTC (drift)</h2>
{_stacked(drift, [*top, rest])}
<h2>Models</h2>
<table><tr><th>model</th><th>requests</th><th>share</th><th>cost</th><th>p50</th><th>p95</th>
<th>mean feedback</th><th>mean predicted</th></tr>{rows_m}</table>
<h2>Cascade escalation per step</h2>
{
        f"<table><tr><th>step</th><th>ran</th><th>escalated</th><th>rate</th></tr>{esc}</table>"
        if esc
        else "<p>no cascades in this ledger</p>"
    }
</body></html>
"""
