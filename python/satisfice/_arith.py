"""Re-check the arithmetic written in a worked solution, without `eval`.

A model that writes `12 / 20 x 100 = 55` has made a mistake we can see from the text alone,
so a cascade can escalate without asking anyone. This module finds runs of numbers and
operators joined by `=` (`3 x 60 = 180`, `$40 + $24 = $64`, GSM8K's `<<8*5=40>>`), evaluates
each side with a small operator-precedence evaluator and reports the equalities that do not
hold. Anything it cannot parse (units between numbers, implicit products, words) is skipped,
never guessed: a check that cries wolf would escalate good answers.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Mismatch", "check_arithmetic", "last_stated_value", "parse_number"]

_CHARS = "\\d \t.,$%()+\\-*/x\u00d7\u00f7\u2212"  # x, times, divide and minus signs too
# One run: numbers and operators around at least one `=`, with blanks but no newline, so a
# run never joins two lines of a solution. A run lies inside one stretch of these
# characters, from its first `(`, `$` or digit: each stretch is tried once, from there,
# where a search from every start had rescanned the stretch (80 KB of "1+": 14 s).
_STRETCH = re.compile(f"[($\\d][{_CHARS}=]*")
_RUN = re.compile(f"[($\\d][{_CHARS}]*+=[{_CHARS}=]*[\\d%)]")
# Tokens of one side: numbers (`$1,250.50`, `60%`) and operators; blanks are not tokens.
_TOKEN = re.compile(r"\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?|[-+*/x()" "\u00d7\u00f7\u2212]")
_OPS = {"x": "*", "\u00d7": "*", "\u00f7": "/", "\u2212": "-"}
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3}
_APPLY: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}
_BINARY = {op: _APPLY[_OPS.get(op, op)] for op in ("+", "-", "*", "/", *_OPS)}
# The value a solution last states: after `=` (or GSM8K's `>>`), allowing `$` and commas.
_STATED = re.compile(r"(?:=|>>)\s*+\$?+\s*+(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)")

# (value, has an operator, decimals of the last number, last number ends in %)
_Side = tuple[float, bool, int, bool]


@dataclass(frozen=True, slots=True)
class Mismatch:
    """An equality in the text that does not hold: `left` evaluates to `value`, not `stated`."""

    left: str
    right: str
    value: float
    stated: float

    def __str__(self) -> str:
        return f"{self.left.strip()} = {self.right.strip()} (it is {self.value:g})"


def parse_number(text: str) -> float | None:
    """`$1,250.50` -> 1250.5; None when `text` is not one number."""
    try:
        return float(text.strip().replace("$", "").replace(",", ""))
    except ValueError:
        return None


def _number(tok: str) -> tuple[float, int, bool]:
    """(value, decimals shown, ends in %) of one number token such as `$1,250.50` or `60%`."""
    pct = tok[-1] == "%"
    digits = tok.rstrip("%").lstrip("$").replace(",", "")
    dot = digits.find(".")
    value = float(digits)
    return (value / 100.0 if pct else value), (len(digits) - dot - 1 if dot >= 0 else 0), pct


def _reduce(vals: list[float], op: str) -> None:
    if op == "neg":
        vals[-1] = -vals[-1]
        return
    right = vals.pop()
    vals[-1] = _APPLY[op](vals[-1], right)


def _calc(found: list[str]) -> tuple[float, int, bool] | None:
    """Evaluate tokens by precedence climbing (two stacks); None when they do not parse."""
    vals: list[float] = []
    ops: list[str] = []
    operand = True  # whether the next token must be a number, `(` or a unary minus
    decimals, pct = 0, False
    for tok in found:
        c = tok[0]
        if c.isdigit() or c == "$":
            if not operand:
                return None
            value, decimals, pct = _number(tok)
            vals.append(value)
            operand = False
        elif c == "(":
            if not operand:
                return None
            ops.append(c)
        elif c == ")":
            if operand:
                return None
            while ops and ops[-1] != "(":
                _reduce(vals, ops.pop())
            if not ops:
                return None
            ops.pop()
        else:
            op = _OPS.get(c, c)
            if operand:
                if op != "-":
                    return None
                ops.append("neg")
                continue
            prec = _PREC[op]
            while ops and ops[-1] != "(" and _PREC[ops[-1]] >= prec:
                _reduce(vals, ops.pop())
            ops.append(op)
            operand = True
    if operand:
        return None
    while ops:
        op = ops.pop()
        if op == "(":
            return None
        _reduce(vals, op)
    return (vals[0], decimals, pct) if len(vals) == 1 else None


def _evaluate(side: str) -> _Side | None:
    """The side's value and form, or None when it is not pure arithmetic."""
    bare = side.strip()
    if bare.isdigit():  # most right-hand sides: skip the tokenizer
        return float(bare), False, 0, False
    found = _TOKEN.findall(side)
    # Every character but blanks must belong to a token, else the side holds something
    # (a unit, a word, a colon) that makes it not pure arithmetic.
    if not found or sum(map(len, found)) != len(side) - side.count(" ") - side.count("\t"):
        return None
    if len(found) == 1:  # the common right-hand side: one stated number
        tok = found[0]
        if not (tok[0].isdigit() or tok[0] == "$"):
            return None
        value, decimals, pct = _number(tok)
        return value, False, decimals, pct
    try:
        if len(found) == 3 and found[1] in _BINARY and found[0][-1].isdigit():
            # `a op b`, most of what a worked solution writes: no stacks needed.
            a, _, _ = _number(found[0])
            b, decimals, pct = _number(found[2])
            got: tuple[float, int, bool] | None = (_BINARY[found[1]](a, b), decimals, pct)
        else:
            got = _calc(found)
    except (ZeroDivisionError, OverflowError, ValueError):
        return None
    if got is None or not math.isfinite(got[0]):
        return None
    return got[0], True, got[1], got[2]


def _close(value: float, stated: float, decimals: int) -> bool:
    # A stated value may be rounded to the decimals it shows (4/15 = 0.27), never more.
    tol = 0.5 * 10.0**-decimals + 1e-9 * max(1.0, abs(value))
    return abs(value - stated) <= tol


def _holds(left: _Side, right: _Side) -> bool:
    lv = left[0]
    rv, r_op, r_dec, r_pct = right
    if r_op:  # both sides are expressions: equal up to float noise
        return _close(lv, rv, 9)
    # "12 / 20 x 100 = 60%" states 60, not 0.6: accept either reading of a trailing %.
    return _close(lv, rv, r_dec) or (r_pct and _close(lv, rv * 100.0, max(r_dec - 2, 0)))


_BEFORE = frozenset("+-*/x)\u00d7\u00f7\u2212")  # a run right after these misses its start
_AFTER = frozenset("+-*/\u00d7\u00f7\u2212")  # a run right before these misses its end


def check_arithmetic(text: str, limit: int = 64) -> tuple[int, list[Mismatch]]:
    """(equalities checked, those that do not hold) in `text`, at most `limit` checked.

    A chain states one value: in `3 x 4 = 12 = 13` every side must equal the expression,
    so a plain side next to another plain one is checked against the run's first
    expression (a run with no expression, `5 = 5`, says nothing). Bounded in the answer's
    length: at most `16 * limit` runs are read, and of a run its first `limit + 1` sides
    (an answer of 150,000 chained `1+1=2` had evaluated every side, 0.3 s a megabyte, on
    and on after its deadline had cut it off)."""
    checked = 0
    bad: list[Mismatch] = []
    for n, stretch in enumerate(_STRETCH.finditer(text)):
        if n >= 16 * limit:
            break
        m = _RUN.match(text, stretch.start())
        if m is None:
            continue
        sides = m.group().split("=")
        cut = len(sides) > limit + 1
        if cut:  # the sides past these could not be checked within the limit
            sides = sides[: limit + 1]
        values = [_evaluate(s) for s in sides]
        # `x - 3 = 5` yields the run `3 = 5` and `-3 + 5 = 2` the run `3 + 5 = 2`: a side
        # cut off by an operator outside the run is not the side the text wrote.
        before = text[max(m.start() - 3, 0) : m.start()].rstrip()
        if before and before[-1] in _BEFORE:
            values[0] = None
        after = "" if cut else text[m.end() : m.end() + 3].lstrip()
        if after and after[0] in _AFTER:
            values[-1] = None
        exprs = [(k, v) for k, v in enumerate(values) if v is not None and v[1]]
        if not exprs:
            continue
        first, expr = exprs[0]
        for k in range(len(sides) - 1):
            a, b = values[k], values[k + 1]
            if a is None or b is None:
                continue  # an unparsable side says nothing
            if a[1]:
                left, right, ls, rs = a, b, sides[k], sides[k + 1]
            elif b[1]:
                left, right, ls, rs = b, a, sides[k + 1], sides[k]
            else:  # two plain sides: the one farther from the expression must equal it
                j, plain = (k + 1, b) if k + 1 > first else (k, a)
                left, right, ls, rs = expr, plain, sides[first], sides[j]
            checked += 1
            if not _holds(left, right):
                stated = right[0] * 100.0 if right[3] else right[0]  # as written
                bad.append(Mismatch(ls, rs, left[0], stated))
            if checked >= limit:
                return checked, bad
    return checked, bad


def last_stated_value(text: str) -> float | None:
    """The last value a solution states after `=` (or `>>`), e.g. 540 in `180 x 3 = 540`."""
    # Walk back from the end: only the last statement matters, so most of the text is
    # never scanned. Each marker's last place is found once and moved back past the one
    # just tried, where both were searched for again from the end at every `=` (80 KB of
    # "= " had taken seconds).
    eq, gt = text.rfind("="), text.rfind(">>")
    while True:
        i = max(eq, gt)
        if i < 0:
            return None
        m = _STATED.match(text, i)
        if m is not None:
            return parse_number(m.group(1))
        if i == eq:
            eq = text.rfind("=", 0, i)
        else:
            gt = text.rfind(">>", 0, i)
