"""Re-check the arithmetic written in a worked solution, without `eval`.

A model that writes `12 / 20 x 100 = 55` has made a mistake we can see from the text alone,
so a cascade can escalate without asking anyone. This module finds runs of numbers and
operators joined by `=` (`3 x 60 = 180`, `$40 + $24 = $64`, GSM8K's `<<8*5=40>>`), evaluates
each side with a tiny recursive-descent parser and reports the equalities that do not hold.
Anything it cannot parse (units between numbers, implicit products, words) is skipped, never
guessed: a check that cries wolf would escalate good answers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["Mismatch", "check_arithmetic", "last_stated_value", "parse_number"]

# One run: digits, operators, parentheses, `=` and `$`/`%`, with spaces but no newline, so a
# run never joins two lines of a solution. It must contain `=` to be worth parsing.
_RUN = re.compile("[($\\d][\\d \t.,$%()+\\-*/x\u00d7\u00f7\u2212=]*[\\d%)]")
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?)|(?P<op>[-+*/x()"
    "\u00d7\u00f7\u2212]))"
)
_OPS = {"x": "*", "\u00d7": "*", "\u00f7": "/", "\u2212": "-"}  # x, times, divide, minus
# The value a solution last states: after `=` (or GSM8K's `>>`), allowing `$` and commas.
_STATED = re.compile(r"(?:=|>>)\s*\$?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)")


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
    t = text.strip().replace("$", "").replace(",", "")
    try:
        return float(t)
    except ValueError:
        return None


class _Parser:
    """expr := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*; unary := '-'? atom."""

    __slots__ = ("has_op", "pos", "toks")

    def __init__(self, toks: list[tuple[str, float]]) -> None:
        self.toks = toks
        self.pos = 0
        self.has_op = False

    def peek(self) -> str | None:
        return self.toks[self.pos][0] if self.pos < len(self.toks) else None

    def expr(self) -> float:
        v = self.term()
        while (op := self.peek()) in ("+", "-"):
            self.pos += 1
            self.has_op = True
            r = self.term()
            v = v + r if op == "+" else v - r
        return v

    def term(self) -> float:
        v = self.unary()
        while (op := self.peek()) in ("*", "/"):
            self.pos += 1
            self.has_op = True
            r = self.unary()
            if op == "*":
                v *= r
            elif r == 0.0:
                raise ValueError("division by zero")
            else:
                v /= r
        return v

    def unary(self) -> float:
        if self.peek() == "-":
            self.pos += 1
            return -self.atom()
        return self.atom()

    def atom(self) -> float:
        kind = self.peek()
        if kind == "n":
            v = self.toks[self.pos][1]
            self.pos += 1
            return v
        if kind == "(":
            self.pos += 1
            v = self.expr()
            if self.peek() != ")":
                raise ValueError("unbalanced parenthesis")
            self.pos += 1
            return v
        raise ValueError("expected a number")


def _tokens(side: str) -> tuple[list[tuple[str, float]], int, bool] | None:
    """Tokens of one side, the decimals of its last number, and whether it ends in `%`."""
    toks: list[tuple[str, float]] = []
    pos, end = 0, len(side.rstrip())
    decimals, pct = 0, False
    while pos < end:
        m = _TOKEN.match(side, pos)
        if m is None:
            return None
        pos = m.end()
        num = m.group("num")
        if num is None:
            op = m.group("op")
            toks.append((_OPS.get(op, op), 0.0))
            continue
        pct = num.endswith("%")
        digits = num.rstrip("%").lstrip("$").replace(",", "")
        decimals = len(digits) - digits.index(".") - 1 if "." in digits else 0
        value = float(digits)
        toks.append(("n", value / 100.0 if pct else value))
    return (toks, decimals, pct) if toks else None


def _evaluate(side: str) -> tuple[float, bool, int, bool] | None:
    """(value, has an operator, decimals shown, ends in %) or None when it does not parse."""
    got = _tokens(side)
    if got is None:
        return None
    toks, decimals, pct = got
    p = _Parser(toks)
    try:
        v = p.expr()
    except (ValueError, OverflowError):
        return None
    if p.pos != len(toks) or not math.isfinite(v):
        return None
    return v, p.has_op, decimals, pct


def _close(value: float, stated: float, decimals: int) -> bool:
    # A stated value may be rounded to the decimals it shows (4/15 = 0.27), never more.
    tol = 0.5 * 10.0**-decimals + 1e-9 * max(1.0, abs(value))
    return abs(value - stated) <= tol


def _holds(left: tuple[float, bool, int, bool], right: tuple[float, bool, int, bool]) -> bool:
    lv, _, _, _ = left
    rv, r_op, r_dec, r_pct = right
    if r_op:  # both sides are expressions: equal up to float noise
        return _close(lv, rv, 9)
    # "12 / 20 x 100 = 60%" states 60, not 0.6: accept either reading of a trailing %.
    return _close(lv, rv, r_dec) or (r_pct and _close(lv, rv * 100.0, max(r_dec - 2, 0)))


def check_arithmetic(text: str, limit: int = 64) -> tuple[int, list[Mismatch]]:
    """(equalities checked, those that do not hold) in `text`, at most `limit` checked."""
    checked = 0
    bad: list[Mismatch] = []
    for m in _RUN.finditer(text):
        run = m.group()
        if "=" not in run:
            continue
        sides = run.split("=")
        values = [_evaluate(s) if s.strip() else None for s in sides]
        for k in range(len(sides) - 1):
            a, b = values[k], values[k + 1]
            if a is None or b is None or not (a[1] or b[1]):
                continue  # a pure `5 = 5` or an unparsable side says nothing
            left, right = (a, b) if a[1] else (b, a)
            checked += 1
            if not _holds(left, right):
                ls, rs = (sides[k], sides[k + 1]) if a[1] else (sides[k + 1], sides[k])
                stated = right[0] * 100.0 if right[3] else right[0]  # as written
                bad.append(Mismatch(ls, rs, left[0], stated))
            if checked >= limit:
                return checked, bad
    return checked, bad


def last_stated_value(text: str) -> float | None:
    """The last value a solution states after `=` (or `>>`), e.g. 540 in `180 x 3 = 540`."""
    found = _STATED.findall(text)
    return parse_number(found[-1]) if found else None
