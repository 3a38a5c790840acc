"""One test for "a number" wherever a caller hands satisfice one (limits, prices, scores)."""

from __future__ import annotations

import math
from numbers import Integral, Real

__all__ = ["as_count", "as_real"]


def as_real(v: object) -> float | None:
    """`v` as a finite float when it is a real number, else None.

    Any `numbers.Real` counts: int, float, Fraction and numpy's scalars (a score computed with
    numpy is a np.float32 or np.int64, and was refused). bool and numpy's bool are not numbers
    here (True is no price). Values a float cannot hold (10**400) and NaN/inf are refused."""
    if type(v) is float:  # the usual value, without the ABC check (slow, per call)
        return v if math.isfinite(v) else None
    if v is None:  # the next usual one (a record's unknown amount)
        return None
    if isinstance(v, bool) or not isinstance(v, Real):
        return None
    try:
        f = float(v)
    except (OverflowError, TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def as_count(v: object) -> int | None:
    """`v` as an int when it is a whole number (int, numpy's integers, or a float such as
    3.0, as JSON writers give them; not bool), else None."""
    if type(v) is int or (isinstance(v, Integral) and not isinstance(v, bool)):
        return int(v)
    f = as_real(v)
    return int(f) if f is not None and f.is_integer() else None
