"""Offline routing evaluation: outcome datasets, cost-quality metrics and plots.

Importing this package needs numpy only: the Rust core is imported when a loader first
counts tokens, matplotlib when a plot is drawn.
"""

from __future__ import annotations

from .datasets import (
    FORMATS,
    OutcomeSet,
    data_dir,
    load,
    load_llmrouter,
    load_outcomes,
    load_routellm,
    load_routerbench,
)
from .metrics import (
    Curve,
    ModelPoint,
    Point,
    StrongShareCurve,
    Summary,
    aiq,
    apgr,
    cpt,
    oracle,
    single_models,
    strong_share_curve,
    summarize,
    sweep_floor,
    sweep_lambda,
)
from .plot import plot_curve

__all__ = [
    "FORMATS",
    "Curve",
    "ModelPoint",
    "OutcomeSet",
    "Point",
    "StrongShareCurve",
    "Summary",
    "aiq",
    "apgr",
    "cpt",
    "data_dir",
    "load",
    "load_llmrouter",
    "load_outcomes",
    "load_routellm",
    "load_routerbench",
    "oracle",
    "plot_curve",
    "single_models",
    "strong_share_curve",
    "summarize",
    "sweep_floor",
    "sweep_lambda",
]
