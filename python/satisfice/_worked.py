"""Checks that read one worked solution: its final answer, its arithmetic, its inputs.

GSM8K-style math answers carry their own evidence. Only one recorded response per model
exists offline, so these checks never resample: they read that response. Extraction of the
final number lives here too, since agreement on numbers uses it.
"""

from __future__ import annotations

import math
import re

from . import _arith
from ._real import as_real
from ._verdict import PASS, Answer, Context, Validator, Verdict, content_text, flag
from .errors import ConfigError

__all__ = [
    "arithmetic",
    "consistent_final",
    "final_answer",
    "final_number",
    "final_number_or_last",
    "uses_inputs",
]

# Each marker captures the number and the rest of its line (a well-formed answer has no
# second number there, e.g. not `#### 24 2/3`). The blanks and signs between a marker and its
# number are possessive (`*+`): backtracking over them was cubic, a minute for
# "The final answer" and 1,500 spaces.
_FINAL_MARKED = tuple(
    re.compile(p + r"(?P<rest>[^\n]*)", re.IGNORECASE)
    for p in (
        r"####\s*+\$?+\s*+(?P<n>-?[\d,]*\.?\d+)",
        r"\\boxed\{\s*+\$?+(?P<n>-?[\d,]*\.?\d+)\s*+\}",
        r"final answer(?: is)?+\s*+[:=]?+\s*+\$?+\s*+(?P<n>-?[\d,]*\.?\d+)",
        r"\bthe answer is\s*+[:=]?+\s*+\$?+\s*+(?P<n>-?[\d,]*\.?\d+)",
    )
)
_ANY_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _normal_number(raw: str) -> str | None:
    v = _arith.parse_number(raw)
    if v is None or not math.isfinite(v):
        return None
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)


def _marked_final(text: str) -> re.Match[str] | None:
    # Not cached: a cache keyed on the answer kept the last 64 answers (up to 64 MB each)
    # alive after their requests; each check reads it once.
    for pattern in _FINAL_MARKED:
        found = list(pattern.finditer(text))
        if found:
            return found[-1]  # the last marked answer is the one the model settled on
    return None


def final_number(text: str, fallback_last: bool = False) -> str | None:
    """The final numeric answer, normalised (`$1,200.00` -> `1200`): after `####`, in
    `\\boxed{}`, or after `final answer`/`the answer is`; with `fallback_last`, else the
    last number in the text."""
    m = _marked_final(text)
    if m is not None:
        return _normal_number(m.group("n"))
    if fallback_last:
        nums = _ANY_NUMBER.findall(text)
        return _normal_number(nums[-1]) if nums else None
    return None


def final_number_or_last(text: str) -> str | None:
    """`final_number` falling back to the last number in the text (for agreement)."""
    return final_number(text, fallback_last=True)


class _Final:
    __slots__ = ("_integer", "name")
    runs_off_loop = True  # see _verdict.checked

    def __init__(self, integer: bool) -> None:
        self._integer = flag(integer, "final_answer: integer")
        self.name = "final_answer_int" if integer else "final_answer"

    def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        m = _marked_final(answer.text)
        if m is None:
            return Verdict(False, 0.0, "no final answer marked (#### n, \\boxed{n}, answer is n)")
        value = _normal_number(m.group("n"))
        if value is None or _DIGIT.search(m.group("rest")):
            return Verdict(False, 0.0, f"final answer {m.group().strip()!r} is not one number")
        if self._integer and not _is_integer(value):
            return Verdict(False, 0.0, f"final answer {value} is not a whole number")
        return PASS


_DIGIT = re.compile(r"\d")


def _is_integer(value: str) -> bool:
    v = _arith.parse_number(value)
    return v is not None and v == int(v)


def final_answer(*, integer: bool = False) -> Validator:
    """A final numeric answer is marked and well formed: one number on its line (and a
    whole number with `integer`, as every GSM8K answer is)."""
    return _Final(integer)


class _Arithmetic:
    __slots__ = ("name",)
    runs_off_loop = True  # see _verdict.checked

    def __init__(self) -> None:
        self.name = "arithmetic"

    def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        checked, bad = _arith.check_arithmetic(answer.text)
        if bad:
            return Verdict(False, 0.0, f"{len(bad)} of {checked} equalities wrong, e.g. {bad[0]}")
        return Verdict(True, 1.0, f"{checked} equalities hold")


def arithmetic() -> Validator:
    """Every `a op b = c` the worked solution writes (and GSM8K's `<<a*b=c>>`) holds, up to
    the rounding the stated value shows. Passes when there is nothing to check."""
    return _Arithmetic()


class _Consistent:
    __slots__ = ("name",)
    runs_off_loop = True  # see _verdict.checked

    def __init__(self) -> None:
        self.name = "consistent_final"

    def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        text = answer.text
        final = final_number(text)
        if final is None:
            return Verdict(False, 0.0, "no final answer to compare with the working")
        cut = text.rfind("####")
        last = _arith.last_stated_value(text[:cut] if cut >= 0 else text)
        if last is None:
            return Verdict(True, 0.5, "the working states no computed value")
        f = _arith.parse_number(final)
        if f is not None and (
            abs(f - last) <= 1e-6 * max(1.0, abs(last))
            or (abs(f - round(last)) < 1e-9 and abs(last - f) < 1)
        ):
            return Verdict(True, 1.0, f"final answer {final} is the last computed value")
        return Verdict(False, 0.0, f"final answer {final} differs from last computed {last:g}")


def consistent_final() -> Validator:
    """The final answer equals the last value the working computed (a rounded whole number
    of it counts): a different number means the model jumped to its answer."""
    return _Consistent()


_GIVEN = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _numbers(text: str) -> set[str]:
    # Compared as normalised strings (`1,200.0` -> `1200`): no float per number needed.
    out = set()
    for raw in _GIVEN.findall(text):
        if "," in raw:
            raw = raw.replace(",", "")
        if "." in raw:
            raw = raw.rstrip("0").rstrip(".")
        out.add(raw)
    return out


class _UsesInputs:
    __slots__ = ("_min", "name")
    runs_off_loop = True  # see _verdict.checked

    def __init__(self, min_share: float) -> None:
        share = as_real(min_share)
        if share is None or not 0.0 <= share <= 1.0:  # True, NaN, "1": no share
            raise ConfigError(f"uses_inputs: min_share must be in [0, 1], got {min_share!r:.40}")
        self._min = share
        self.name = "uses_inputs"

    def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        given: set[str] = set()
        for m in ctx.messages:
            if m.get("role", "user") == "user":
                given |= _numbers(content_text(m.get("content")))
        if not given:
            return Verdict(True, 1.0, "the request states no numbers")
        used = given & _numbers(answer.text)
        share = len(used) / len(given)
        if share + 1e-12 >= self._min:
            return Verdict(True, share, f"uses {len(used)} of {len(given)} given numbers")
        unused = ", ".join(sorted(given - used)[:5])
        return Verdict(False, share, f"never uses the given {unused}")


def uses_inputs(min_share: float = 1.0) -> Validator:
    """The working uses the numbers the request gives (at least `min_share` of them): a
    word problem's solution that ignores a stated quantity has usually misread it.
    Confidence is the share used."""
    return _UsesInputs(min_share)
