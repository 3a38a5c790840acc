"""Cost-quality plot of a router against the single models and the oracle (PNG).

matplotlib is imported only when a plot is drawn, and only its object API with the Agg
canvas, so plotting never touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .._atomic import write_atomic
from .metrics import Curve, ModelPoint, Point, non_decreasing_hull

__all__ = ["plot_curve"]

# Beyond this ratio between the largest and smallest cost a linear axis crushes the cheap
# models into one corner.
_LOG_SPAN_DECADES = 1.5


def _short(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def plot_curve(
    curve: Curve,
    singles: Sequence[ModelPoint],
    oracle: Point | None,
    path: str | os.PathLike[str],
    title: str = "",
    train_best: tuple[str, float, float] | None = None,
) -> None:
    """Draw `curve` (sorted by cost), each single model as a labelled point, random routing
    between them as a dashed line (their hull) and the oracle as a star; save a PNG."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "plotting needs matplotlib: pip install 'satisfice[train]' or pip install matplotlib"
        ) from exc

    fig = Figure(figsize=(8.0, 5.6), dpi=130, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    costs = np.concatenate(
        [curve.costs, [p.cost for p in singles], [] if oracle is None else [oracle.cost]]
    )
    positive = costs[costs > 0]
    log_x = bool(positive.size) and np.log10(positive.max() / positive.min()) > _LOG_SPAN_DECADES
    if log_x:
        ax.set_xscale("log")

    order = np.argsort(curve.costs, kind="stable")
    ax.plot(
        curve.costs[order],
        curve.qualities[order],
        color="tab:blue",
        linewidth=2.0,
        marker=".",
        markersize=4,
        label=curve.label,
        zorder=3,
    )
    if singles:
        hull = non_decreasing_hull([p.cost for p in singles], [p.quality for p in singles])
        right = max(max(p.cost for p in singles), float(curve.costs.max()))
        # Mixing is linear in cost; sample densely so it also draws true on a log axis.
        space = np.geomspace if log_x and hull[0, 0] > 0 else np.linspace
        xs = space(hull[0, 0], right, 400)
        ax.plot(
            xs,
            np.interp(xs, hull[:, 0], hull[:, 1]),
            color="0.45",
            linestyle="--",
            linewidth=1.2,
            label="random routing (mix of adjacent models)",
            zorder=2,
        )
        ax.scatter(
            [p.cost for p in singles],
            [p.quality for p in singles],
            color="tab:orange",
            edgecolor="black",
            linewidth=0.5,
            s=36,
            label="single models",
            zorder=4,
        )
        for k, p in enumerate(sorted(singles, key=lambda s: s.cost)):
            # Alternate above and below so neighbouring labels do not overprint.
            dy = 5 if k % 2 == 0 else -11
            ax.annotate(
                _short(p.model),
                (p.cost, p.quality),
                xytext=(5, dy),
                textcoords="offset points",
                fontsize=7,
                color="0.2",
            )
    if train_best is not None:  # what a user could have picked from the training rows alone
        name, c, q = train_best
        ax.scatter([c], [q], marker="D", s=70, facecolor="none", edgecolor="tab:red",
                   linewidth=1.6, label=f"best single model on the training rows ({_short(name)})",
                   zorder=6)  # fmt: skip
    if oracle is not None:
        ax.scatter(
            [oracle.cost],
            [oracle.quality],
            marker="*",
            s=220,
            color="gold",
            edgecolor="black",
            linewidth=0.7,
            label="oracle (cheapest model that gets it right)",
            zorder=5,
        )

    if singles:
        # What "matches the best model" and "95% of it" mean, read straight off the chart.
        best = max(p.quality for p in singles)
        for level, text in ((best, "best single model"), (0.95 * best, "95% of it")):
            ax.axhline(level, color="0.6", linestyle=":", linewidth=0.9, zorder=1)
            ax.annotate(
                text,
                (0.0, level),
                xycoords=("axes fraction", "data"),
                xytext=(4, 2),
                textcoords="offset points",
                fontsize=7,
                color="0.4",
            )

    ax.set_xlabel("mean cost per request (USD)")
    ax.set_ylabel("mean score (0 to 1)")
    if title:
        ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    # Below the axes: inside, it would hide whichever model sits in that corner.
    fig.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    # whole or not at all, as every file satisfice writes
    write_atomic(os.fspath(path), lambda f: fig.savefig(f, format="png"))
