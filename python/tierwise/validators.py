"""Validators: checks of one model answer that tell a cascade to accept it or escalate.

A validator is any callable `(answer, context) -> Verdict` (or an awaitable of one) with a
`name`. The built-in ones are plain synchronous objects built once and called per answer,
with their regular expressions compiled at import, so a check costs microseconds; only the
judge (a model call) and user callables that choose to be async await anything.

    from tierwise import validators as v

    check = v.all_of(v.json_valid(schema), v.regex(r"\\bTODO\\b", forbid=True))
    mc = v.agreement(v.choice_letter, min_agree=2)        # two models, same letter
    gsm = v.all_of(v.final_answer(integer=True), v.arithmetic(), v.consistent_final())

`Verdict.confidence` is the validator's belief, in [0, 1], that the answer is acceptable;
`passed` is the decision. `calibrated(...)` turns several checks into one learned score.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias, cast

from . import _arith
from .errors import ConfigError

__all__ = [
    "Answer",
    "Context",
    "JudgeCall",
    "Validator",
    "Verdict",
    "accept",
    "agreement",
    "all_of",
    "any_of",
    "arithmetic",
    "calibrated",
    "check",
    "choice_letter",
    "code_block",
    "consistent_final",
    "extract_code",
    "extracts",
    "final_answer",
    "final_number",
    "final_number_or_last",
    "json_valid",
    "judge",
    "logprob_confidence",
    "openai_logprobs",
    "predicted",
    "regex",
    "resolve",
    "uses_inputs",
]

Messages: TypeAlias = Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Answer:
    """One model's answer with what it cost; what a cascade's `call` returns.

    `cost_usd` None means unknown (unpriced), never free. `logprobs` are the completion's
    per-token log-probabilities when the provider returned them.
    """

    model: str
    text: str
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    logprobs: tuple[float, ...] | None = None
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Pass or fail, how sure (P(acceptable) in [0, 1]) and why. `calls` are the model calls
    the validator itself made (a judge), so the cascade can bill them to the step."""

    passed: bool
    confidence: float
    reason: str
    calls: tuple[Answer, ...] = ()


@dataclass(frozen=True, slots=True)
class Context:
    """What a validator may look at besides the answer: the request, the other answers
    (same step and earlier steps) that agreement checks compare against, and the router's
    predicted P(good) per model for this prompt."""

    messages: Messages = ()
    peers: Sequence[Answer] = ()
    p_good: Mapping[str, float] | None = None  # the router's prediction per model


class Validator(Protocol):
    @property
    def name(self) -> str: ...

    def __call__(self, answer: Answer, ctx: Context) -> Verdict | Awaitable[Verdict]: ...


async def resolve(result: Verdict | Awaitable[Verdict]) -> Verdict:
    """A verdict from a validator's return value, awaiting it if it is awaitable."""
    if isinstance(result, Verdict):
        return result
    return await result


_PASS = Verdict(True, 1.0, "ok")


class _Accept:
    name = "accept"

    def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        return _PASS


accept: Validator = _Accept()
"""Passes every answer: a ladder's last step usually takes what the top model says."""


# -- extraction ------------------------------------------------------------------------

_LEAD_LETTER = re.compile(r"\A\W{0,3}([A-Z])(?![A-Za-z])")
_SAID_LETTER = re.compile(
    r"(?:answer|choice|option)\s*(?:is|:)?\s*[:\-]?\s*\(?\*{0,2}([A-Z])\b", re.IGNORECASE
)
# Each marker captures the number and the rest of its line (a well-formed answer has no
# second number there, e.g. not `#### 24 2/3`).
_FINAL_MARKED = tuple(
    re.compile(p + r"(?P<rest>[^\n]*)", re.IGNORECASE)
    for p in (
        r"####\s*\$?\s*(?P<n>-?[\d,]*\.?\d+)",
        r"\\boxed\{\s*\$?(?P<n>-?[\d,]*\.?\d+)\s*\}",
        r"final answer(?: is)?\s*[:=]?\s*\$?\s*(?P<n>-?[\d,]*\.?\d+)",
        r"\bthe answer is\s*[:=]?\s*\$?\s*(?P<n>-?[\d,]*\.?\d+)",
    )
)
_ANY_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FENCE = re.compile(
    r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)|\[PYTHON\]\n?(.*?)(?:\[/PYTHON\]|\Z)", re.S
)


def choice_letter(text: str, letters: str = "ABCDE") -> str | None:
    """The multiple-choice letter an answer gives: a leading `B`, `(B)`, `B)`, or an
    `answer is B` phrase; None when there is none among `letters`."""
    m = _LEAD_LETTER.match(text.lstrip())
    if m is not None and m.group(1) in letters:
        return m.group(1)
    m = _SAID_LETTER.search(text)
    if m is not None and m.group(1).upper() in letters:
        return m.group(1).upper()
    return None


def _normal_number(raw: str) -> str | None:
    v = _arith.parse_number(raw)
    if v is None or not math.isfinite(v):
        return None
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)


@functools.lru_cache(maxsize=64)
def _marked_final(text: str) -> re.Match[str] | None:
    # Cached: final_answer, consistent_final and agreement read the same answer in turn.
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


def extract_code(text: str) -> tuple[str, str] | None:
    """(language, code) of the first fenced code block (or `[PYTHON]` block); None if none.
    The language is lower-case and empty when the fence names none."""
    m = _FENCE.search(text)
    if m is None:
        return None
    if m.group(3) is not None:
        return "python", m.group(3)
    return m.group(1).lower(), m.group(2)


# -- format checks -----------------------------------------------------------------------

_JSON_FENCE = re.compile(r"\A\s*```(?:json)?[ \t]*\n(.*?)\n?```\s*\Z", re.S | re.IGNORECASE)


class _Json:
    __slots__ = ("_check", "name")

    def __init__(self, schema: Mapping[str, Any] | None) -> None:
        self.name = "json_schema" if schema is not None else "json"
        self._check: Callable[[Any], str | None] | None = None
        if schema is None:
            return
        try:
            # Imported here: only schema checks need it. It ships no type stubs.
            jsonschema: Any = importlib.import_module("jsonschema")
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigError(
                "json_valid(schema=...) needs the jsonschema package: pip install jsonschema"
            ) from None
        cls = jsonschema.validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as e:
            raise ConfigError(f"json_valid: the schema itself is invalid: {e.message}") from None
        compiled = cls(schema)

        def first_error(doc: Any) -> str | None:
            err = jsonschema.exceptions.best_match(compiled.iter_errors(doc))
            if err is None:
                return None
            where = "/".join(str(p) for p in err.absolute_path) or "(root)"
            return f"at {where}: {err.message}"

        self._check = first_error

    def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        text = answer.text
        fenced = _JSON_FENCE.match(text)
        try:
            doc = json.loads(fenced.group(1) if fenced else text)
        except ValueError as e:
            return Verdict(False, 0.0, f"not valid JSON: {e}")
        if self._check is not None:
            problem = self._check(doc)
            if problem is not None:
                return Verdict(False, 0.0, f"JSON does not match the schema {problem}")
        return _PASS


def json_valid(schema: Mapping[str, Any] | None = None) -> Validator:
    """The answer is JSON (a ```json fence around it is allowed), matching `schema` if given.

    The schema is checked and compiled once here; a bad schema raises ConfigError now rather
    than failing every answer later.
    """
    return _Json(schema)


class _Regex:
    __slots__ = ("_forbid", "_full", "_pattern", "name")

    def __init__(
        self,
        pattern: str | re.Pattern[str],
        fullmatch: bool,
        forbid: bool,
        flags: int,
        name: str | None,
    ) -> None:
        try:
            self._pattern = re.compile(pattern, flags) if isinstance(pattern, str) else pattern
        except re.error as e:
            raise ConfigError(f"regex: invalid pattern {pattern!r}: {e}") from None
        self._full = fullmatch
        self._forbid = forbid
        self.name = name or ("forbid" if forbid else "regex")

    def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        # A whole-answer format check ignores the blank lines models put around answers.
        if self._full:
            found = self._pattern.fullmatch(answer.text.strip())
        else:
            found = self._pattern.search(answer.text)
        if self._forbid:
            if found is None:
                return _PASS
            return Verdict(False, 0.0, f"contains forbidden {found.group()!r}")
        if found is None:
            return Verdict(False, 0.0, f"does not match {self._pattern.pattern!r}")
        return _PASS


def regex(
    pattern: str | re.Pattern[str],
    *,
    fullmatch: bool = False,
    forbid: bool = False,
    flags: int = 0,
    name: str | None = None,
) -> Validator:
    """The answer matches `pattern` (anywhere, or entirely with `fullmatch`), or with
    `forbid` must not contain it (e.g. hedges such as `as an AI`)."""
    return _Regex(pattern, fullmatch, forbid, flags, name)


class _Extracts:
    __slots__ = ("_extract", "name")

    def __init__(self, extract: Callable[[str], object | None], name: str | None) -> None:
        self._extract = extract
        self.name = name or f"extracts:{getattr(extract, '__name__', 'value')}"

    def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        if self._extract(answer.text) is None:
            return Verdict(False, 0.0, f"no answer found by {self.name}")
        return _PASS


def extracts(extract: Callable[[str], object | None], *, name: str | None = None) -> Validator:
    """An answer can be extracted (a letter, a number, a code block): the format is right."""
    return _Extracts(extract, name)


class _Code:
    __slots__ = ("_language", "_parses", "name")

    def __init__(self, language: str | None, parses: bool) -> None:
        self._language = language.lower() if language else None
        self._parses = parses
        self.name = "code_block"

    def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        block = extract_code(answer.text)
        if block is None:
            return Verdict(False, 0.0, "no code block")
        lang, code = block
        want = self._language
        if want is not None and lang and lang not in (want, "py" if want == "python" else want):
            return Verdict(False, 0.0, f"code block is {lang}, expected {want}")
        if self._parses and want in ("python", None) and (lang in ("", "python", "py")):
            try:
                compile(code, "<answer>", "exec", ast.PyCF_ONLY_AST)
            except (SyntaxError, ValueError) as e:
                return Verdict(False, 0.0, f"code does not parse: {e.__class__.__name__} {e}")
        return _PASS


def code_block(language: str | None = None, *, parses: bool = True) -> Validator:
    """The answer holds a fenced code block in `language` (any when None); with `parses`,
    Python code must compile (syntax only, nothing is executed)."""
    return _Code(language, parses)


# -- agreement ---------------------------------------------------------------------------


class _Agreement:
    __slots__ = ("_extract", "_min", "_weights", "name")

    def __init__(
        self,
        extract: Callable[[str], object | None],
        min_agree: float,
        weights: Mapping[str, float] | None,
    ) -> None:
        if min_agree <= 0:
            raise ConfigError(f"agreement: min_agree must be > 0, got {min_agree}")
        self._extract = extract
        self._min = min_agree
        self._weights = dict(weights) if weights else None
        self.name = f"agreement:{getattr(extract, '__name__', 'value')}"

    def _weight(self, model: str) -> float:
        return 1.0 if self._weights is None else self._weights.get(model, 1.0)

    def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        mine = self._extract(answer.text)
        if mine is None:
            return Verdict(False, 0.0, f"no answer to compare ({self.name} found none)")
        weight = self._weight
        votes = weight(answer.model)
        total = votes
        for peer in ctx.peers:
            if peer is answer:
                continue
            theirs = self._extract(peer.text)
            if theirs is None:
                continue
            total += weight(peer.model)
            if theirs == mine:
                votes += weight(peer.model)
        share = votes / total if total > 0 else 0.0
        if votes + 1e-12 >= self._min:
            return Verdict(True, share, f"{votes:g} vote(s) for {mine!r} (share {share:.2f})")
        return Verdict(False, share, f"only {votes:g} vote(s) for {mine!r}, need {self._min:g}")


def agreement(
    extract: Callable[[str], object | None],
    *,
    min_agree: float = 2,
    weights: Mapping[str, float] | None = None,
) -> Validator:
    """At least `min_agree` answers (this one and its peers; weighted by model when
    `weights` is given) give the same extracted answer. Confidence is the agreeing share."""
    return _Agreement(extract, min_agree, weights)


# -- log-prob confidence -------------------------------------------------------------------


class _Logprob:
    __slots__ = ("_if_missing", "_min", "name")

    def __init__(self, min_prob: float, if_missing: Literal["pass", "fail"]) -> None:
        if not 0.0 <= min_prob <= 1.0:
            raise ConfigError(f"logprob_confidence: min_prob must be in [0, 1], got {min_prob}")
        self._min = min_prob
        self._if_missing = if_missing
        self.name = "logprob"

    def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        lps = answer.logprobs
        if not lps:
            ok = self._if_missing == "pass"
            return Verdict(ok, 0.5, "the provider returned no log-probs")
        prob = math.exp(sum(lps) / len(lps))
        if prob >= self._min:
            return Verdict(True, prob, f"mean token probability {prob:.3f}")
        return Verdict(False, prob, f"mean token probability {prob:.3f} < {self._min:g}")


def logprob_confidence(
    min_prob: float = 0.8, *, if_missing: Literal["pass", "fail"] = "pass"
) -> Validator:
    """The geometric-mean token probability of the answer is at least `min_prob`. Answers
    without log-probs pass (or fail, with `if_missing="fail"`) at confidence 0.5."""
    return _Logprob(min_prob, if_missing)


def openai_logprobs(raw: Any) -> tuple[float, ...] | None:
    """Per-token log-probs from an OpenAI chat completion body, None when absent."""
    try:
        content = raw["choices"][0]["logprobs"]["content"]
        return tuple(float(t["logprob"]) for t in content)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


# -- GSM8K-style checks of one worked solution ------------------------------------------------


class _Final:
    __slots__ = ("_integer", "name")

    def __init__(self, integer: bool) -> None:
        self._integer = integer
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
        return _PASS


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
        n = raw.replace(",", "")
        if "." in n:
            n = n.rstrip("0").rstrip(".")
        out.add(n)
    return out


@functools.lru_cache(maxsize=256)
def _request_numbers(text: str) -> frozenset[str]:
    # Every answer of a cascade is compared with the same request: parse it once.
    return frozenset(_numbers(text))


class _UsesInputs:
    __slots__ = ("_min", "name")

    def __init__(self, min_share: float) -> None:
        if not 0.0 <= min_share <= 1.0:
            raise ConfigError(f"uses_inputs: min_share must be in [0, 1], got {min_share}")
        self._min = min_share
        self.name = "uses_inputs"

    def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        given: frozenset[str] = frozenset()
        for m in ctx.messages:
            if m.get("role", "user") == "user" and isinstance(m.get("content"), str):
                given |= _request_numbers(m["content"])
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


class _Predicted:
    __slots__ = ("_min", "name")

    def __init__(self, min_p: float) -> None:
        self._min = min_p
        self.name = "predicted"

    def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        p = None if ctx.p_good is None else ctx.p_good.get(answer.model)
        if p is None:
            return Verdict(True, 0.5, f"no prediction for {answer.model}")
        return Verdict(p >= self._min, p, f"router predicted P(good)={p:.2f}")


def predicted(min_p: float = 0.5) -> Validator:
    """The router's prompt-only P(good) for the answering model, as a check: on its own a
    weak one, inside `calibrated(...)` the prior that the answer checks refine."""
    return _Predicted(min_p)


# -- judge model and user callables ---------------------------------------------------------

JudgeCall: TypeAlias = Callable[[list[dict[str, Any]]], Awaitable[Answer]]

_JUDGE_SYSTEM = (
    "You grade an assistant's answer against a rubric. Be strict and brief. Reply with "
    "exactly two lines:\nVERDICT: PASS or VERDICT: FAIL\nCONFIDENCE: a number from 0 to 100"
)
_VERDICT = re.compile(r"VERDICT\s*:\s*\**\s*(PASS|FAIL)", re.IGNORECASE)
_CONFIDENCE = re.compile(r"CONFIDENCE\s*:\s*\**\s*(\d{1,3}(?:\.\d+)?)", re.IGNORECASE)


def _request_text(messages: Messages) -> str:
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(f"[{m.get('role', 'user')}] {content}")
    return "\n\n".join(parts)


class _Judge:
    __slots__ = ("_ask", "_min", "_rubric", "name")

    def __init__(self, ask: JudgeCall, rubric: str, min_confidence: float) -> None:
        if not rubric.strip():
            raise ConfigError("judge: the rubric is empty; say what a good answer must do")
        self._ask = ask
        self._rubric = rubric
        self._min = min_confidence
        self.name = "judge"

    async def __call__(self, answer: Answer, ctx: Context) -> Verdict:
        prompt = (
            f"Request:\n{_request_text(ctx.messages)}\n\nAnswer to grade:\n{answer.text}\n\n"
            f"Rubric: {self._rubric}"
        )
        reply = await self._ask(
            [{"role": "system", "content": _JUDGE_SYSTEM}, {"role": "user", "content": prompt}]
        )
        said = _VERDICT.search(reply.text)
        if said is None:
            # An unreadable grade is no evidence the answer is good: escalate.
            return Verdict(False, 0.0, f"judge {reply.model} gave no VERDICT line", (reply,))
        conf_m = _CONFIDENCE.search(reply.text)
        conf = min(float(conf_m.group(1)) / 100.0, 1.0) if conf_m else 0.75
        p_ok = conf if said.group(1).upper() == "PASS" else 1.0 - conf
        ok = p_ok >= self._min
        return Verdict(
            ok, p_ok, f"judge {reply.model}: {said.group(1).upper()} ({conf:.0%} sure)", (reply,)
        )


def judge(ask: JudgeCall, rubric: str, *, min_confidence: float = 0.5) -> Validator:
    """Ask a model whether the answer meets `rubric`. `ask(messages) -> Answer` calls the
    judge model; `tierwise.cascade.routed_judge(router, call)` routes it to a cheap model.
    The judge's own cost is billed to the step through `Verdict.calls`."""
    return _Judge(ask, rubric, min_confidence)


def _as_verdict(value: object, name: str) -> Verdict:
    if isinstance(value, Verdict):
        return value
    if isinstance(value, bool):
        return _PASS if value else Verdict(False, 0.0, f"{name} said no")
    raise ConfigError(
        f"validator {name} returned {type(value).__name__}; return a bool or a Verdict"
    )


class _User:
    __slots__ = ("_fn", "_text_only", "name")

    def __init__(self, fn: Callable[..., Any], name: str | None) -> None:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        self._text_only = len(params) < 2
        self._fn = fn
        self.name = name or str(getattr(fn, "__name__", "check"))

    def __call__(self, answer: Answer, ctx: Context) -> Verdict | Awaitable[Verdict]:
        out = self._fn(answer.text) if self._text_only else self._fn(answer, ctx)
        if inspect.isawaitable(out):
            return self._await(out)
        return _as_verdict(out, self.name)

    async def _await(self, pending: Awaitable[object]) -> Verdict:
        return _as_verdict(await pending, self.name)


def check(fn: Callable[..., Any], *, name: str | None = None) -> Validator:
    """Your own check: `fn(text)` or `fn(answer, context)`, sync or async, returning a bool
    or a Verdict."""
    return _User(fn, name)


# -- combinators --------------------------------------------------------------------------


class _AllOf:
    __slots__ = ("_parts", "name")

    def __init__(self, parts: Sequence[Validator]) -> None:
        if not parts:
            raise ConfigError("all_of needs at least one validator")
        self._parts = tuple(parts)
        self.name = "all_of(" + ", ".join(p.name for p in parts) + ")"

    def __call__(self, answer: Answer, ctx: Context) -> Verdict | Awaitable[Verdict]:
        low = 1.0
        calls: tuple[Answer, ...] = ()
        for i, part in enumerate(self._parts):
            v = part(answer, ctx)
            if not isinstance(v, Verdict):
                # Async from here on; the sync checks before it already ran.
                return self._rest(answer, ctx, i, v, low, calls)
            calls += v.calls
            if not v.passed:  # the first failure decides; later checks would be wasted time
                return Verdict(False, v.confidence, f"{part.name}: {v.reason}", calls)
            low = min(low, v.confidence)
        return Verdict(True, low, "all checks passed", calls)

    async def _rest(
        self,
        answer: Answer,
        ctx: Context,
        i: int,
        pending: Awaitable[Verdict],
        low: float,
        calls: tuple[Answer, ...],
    ) -> Verdict:
        for k, part in enumerate(self._parts[i:]):
            v = await pending if k == 0 else await resolve(part(answer, ctx))
            calls += v.calls
            if not v.passed:
                return Verdict(False, v.confidence, f"{part.name}: {v.reason}", calls)
            low = min(low, v.confidence)
        return Verdict(True, low, "all checks passed", calls)


def all_of(*validators: Validator) -> Validator:
    """Passes when every validator passes (checked in order, stopping at the first failure);
    confidence is the lowest."""
    return _AllOf(validators)


class _AnyOf:
    __slots__ = ("_parts", "name")

    def __init__(self, parts: Sequence[Validator]) -> None:
        if not parts:
            raise ConfigError("any_of needs at least one validator")
        self._parts = tuple(parts)
        self.name = "any_of(" + ", ".join(p.name for p in parts) + ")"

    def __call__(self, answer: Answer, ctx: Context) -> Verdict | Awaitable[Verdict]:
        results = [p(answer, ctx) for p in self._parts]
        if all(isinstance(r, Verdict) for r in results):
            return self._combine(cast(list[Verdict], results))
        return self._gather(results)

    async def _gather(self, results: list[Verdict | Awaitable[Verdict]]) -> Verdict:
        return self._combine([await resolve(r) for r in results])

    def _combine(self, verdicts: list[Verdict]) -> Verdict:
        calls = tuple(c for v in verdicts for c in v.calls)
        best = max(verdicts, key=lambda v: (v.passed, v.confidence))
        return Verdict(best.passed, best.confidence, best.reason, calls)


def any_of(*validators: Validator) -> Validator:
    """Passes when at least one validator passes; confidence is the best passing one's."""
    return _AnyOf(validators)


@dataclass(frozen=True, slots=True)
class _Calibrated:
    parts: tuple[Validator, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float
    name: str = field(default="calibrated")

    def __call__(self, answer: Answer, ctx: Context) -> Verdict | Awaitable[Verdict]:
        results = [p(answer, ctx) for p in self.parts]
        if all(isinstance(r, Verdict) for r in results):
            return self._score(cast(list[Verdict], results))
        return self._gather(results)

    async def _gather(self, results: list[Verdict | Awaitable[Verdict]]) -> Verdict:
        return self._score([await resolve(r) for r in results])

    def _score(self, verdicts: list[Verdict]) -> Verdict:
        z = self.bias + sum(w * v.confidence for w, v in zip(self.weights, verdicts, strict=True))
        p = 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
        calls = tuple(c for v in verdicts for c in v.calls)
        failed = [
            f"{part.name}: {v.reason}"
            for part, v in zip(self.parts, verdicts, strict=True)
            if not v.passed
        ]
        why = "; ".join(failed) if failed else "all checks passed"
        return Verdict(p >= self.threshold, p, f"P(ok)={p:.2f} ({why})", calls)


def calibrated(
    validators: Sequence[Validator],
    weights: Sequence[float],
    bias: float = 0.0,
    threshold: float = 0.5,
) -> Validator:
    """One score from several checks: P(ok) = sigmoid(bias + sum(w_i * confidence_i)),
    passing at `threshold`. Fit the weights on outcome data (logistic regression, see
    `tierwise.eval.cascade_eval.fit_calibrated`), then sweep the threshold."""
    if len(validators) != len(weights) or not validators:
        raise ConfigError(f"calibrated: {len(validators)} validators but {len(weights)} weights")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"calibrated: threshold must be in [0, 1], got {threshold}")
    return _Calibrated(
        tuple(validators), tuple(float(w) for w in weights), float(bias), float(threshold)
    )
