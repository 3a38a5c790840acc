"""Online feedback: a Bayesian update of one model's IRT parameters from one observed score.

The predictor says P(good | m, x) = sigmoid(theta_m . phi(x) - d(x)) with theta_m =
[bias_m, ability_m] and phi(x) = [1, e(x)], where [e(x), d(x)] is the prompt's latent from
the trained W, c. A score y in [0, 1] for model m on prompt x is one (soft) Bernoulli
observation of that logistic model. Each model keeps a Gaussian belief N(mean, P^-1) over
theta_m and every observation is folded in by a Laplace approximation (assumed-density
filtering), which for a single observation is exact up to the Gaussian fit:

    maximise  -1/2 (theta - mean)' P (theta - mean) + y log s(a) + (1 - y) log(1 - s(a)),
    a = theta . phi - d.

The likelihood depends on theta only through a, so the maximiser is mean + t P^-1 phi with
the scalar t solving t = y - s(a0 + v t) (a0 = mean . phi - d, v = phi' P^-1 phi), found by
Newton's method (the equation is monotone). The precision then gains the observation's
curvature: P += s(a)(1 - s(a)) phi phi'.

Where the prior precision comes from: a parameter fitted on n outcomes has the Fisher
information of n observations, about n * h * E[phi phi'] (h = mean s(1 - s) in training, the
moments stored by `satisfice.eval.train.fit`), plus a weak N(0, 1) prior. Evidence is capped
at `max_evidence` observations so that a model trained on thousands of benchmark prompts
still adapts to a user's own traffic and to drift (a power prior); a model seeded from a
public benchmark score counts as `prior_evidence` observations.
"""

from __future__ import annotations

import math
import os
import re
import struct
import threading
import weakref
from array import array
from collections.abc import Callable, Mapping, Sequence

from . import _core
from ._frozen import Frozen, _set, slot_setters
from ._real import as_real
from .errors import ConfigError, InputError
from .predict import ModelParams, QualityModel, new_params

TYPE_CHECKING = False  # not typing's: Router() does not import typing (cold_start.py)
if TYPE_CHECKING:  # the update's maths import numpy; remembering decisions does not
    from typing import Any

    import numpy as np

__all__ = [
    "AbilityBelief",
    "FeedbackLog",
    "fisher_moments",
    "new_request_id",
    "prior_belief",
    "update_belief",
]

#: Observations beyond which older evidence stops tightening the belief.
MAX_EVIDENCE = 200.0
#: What a quality prior seeded from a public benchmark is worth, in observations. Measured
#: with scripts/learning_curve.py (a RouterBench model held out of training, its feedback
#: replayed): priors worth 1-10 observations made the held-out log loss worse than no
#: feedback at all for the first 200 observations; 200 kept it within 0.002 of it.
PRIOR_EVIDENCE = 200.0
#: Bytes of a prompt's embedding (int8 each).
EMBED_DIM = _core.EMBED_DIM
#: Curvature per observation when the predictor carries no training moments.
_DEFAULT_WEIGHT = 0.2


def fisher_moments(
    skills: np.ndarray, p: np.ndarray, observed: np.ndarray | None = None
) -> dict[str, object]:
    """What a prior belief is built from: E[phi phi'] of phi = [1, e(x)] over the (n, k)
    `skills` e(x), and the mean curvature p(1 - p) of the (n, m) predictions `p` (over the
    `observed` entries only, when given). Stored by training as meta["fisher"]."""
    import numpy as np

    n = skills.shape[0]
    phi = np.concatenate([np.ones((n, 1)), np.asarray(skills, dtype=np.float64)], axis=1)
    curv = np.asarray(p, dtype=np.float64) * (1 - np.asarray(p, dtype=np.float64))
    return {
        "phi_moment": (phi.T @ phi / n).round(6).tolist(),
        "mean_weight": float(curv[observed].mean() if observed is not None else curv.mean()),
    }


class AbilityBelief(Frozen):
    """Gaussian belief over theta = [bias, ability_1..k] of one model, kept as its mean and
    covariance (the inverse precision, flat and row-major): one update is then a
    Sherman-Morrison step with no solve, made in Rust (`_core.update_belief`)."""

    __match_args__ = __slots__ = ("mean", "cov", "n_obs")
    mean: tuple[float, ...]  # (k+1,)
    # (k+1)^2 float64s, native order, symmetric: bytes, which the update reads and writes
    # whole (a tuple of floats was converted one float at a time, both ways)
    cov: bytes
    n_obs: float

    def __init__(self, mean: tuple[float, ...], cov: bytes, n_obs: float) -> None:
        _set(self, "mean", mean)
        _set(self, "cov", cov)
        _set(self, "n_obs", n_obs)

    @classmethod
    def from_precision(cls, mean: Any, precision: Any, n_obs: float) -> AbilityBelief:
        p = [[float(v) for v in row] for row in precision]
        cov = _inverse(p)
        n = len(cov)
        return cls(
            tuple(float(v) for v in mean),
            array(
                "d", [(cov[i][j] + cov[j][i]) / 2.0 for i in range(n) for j in range(n)]
            ).tobytes(),
            n_obs,
        )

    @property
    def precision(self) -> np.ndarray:
        import numpy as np

        n = len(self.mean)
        return np.linalg.inv(np.frombuffer(self.cov, dtype=np.float64).reshape(n, n))

    def params(self, source: str = "feedback") -> ModelParams:
        mean = self.mean
        return new_params(mean[0], mean[1:], self.n_obs, source)

    def matches(self, p: ModelParams) -> bool:
        """True if `p` is what this belief would publish (no outside change since)."""
        theta = (p.bias, *p.ability)
        if theta == self.mean:  # the usual case: `p` came from this belief
            return True
        return len(theta) == len(self.mean) and all(
            abs(a - b) <= 1e-6 for a, b in zip(theta, self.mean, strict=True)
        )


_new = object.__new__
_SET_MEAN, _SET_COV, _SET_N_OBS = slot_setters(AbilityBelief)


def _belief(mean: tuple[float, ...], cov: bytes, n_obs: float) -> AbilityBelief:
    """`AbilityBelief(mean, cov, n_obs)` (which checks nothing) in half its instructions,
    as `predict.new_params` makes a ModelParams: ~3,200 where the constructor took ~7,200,
    once a feedback() call."""
    b = _new(AbilityBelief)
    _SET_MEAN(b, mean)
    _SET_COV(b, cov)
    _SET_N_OBS(b, n_obs)
    return b


def _inverse(a: list[list[float]]) -> list[list[float]]:
    """The inverse of a small symmetric positive-definite matrix (a precision, (k+1)^2),
    by Gauss-Jordan elimination: once per model per process, and without importing numpy
    (a first `feedback()` would otherwise stall its caller's event loop for ~0.1 s)."""
    n = len(a)
    m = [[*row, *(1.0 if i == j else 0.0 for j in range(n))] for i, row in enumerate(a)]
    for c in range(n):
        pivot = max(range(c, n), key=lambda r: abs(m[r][c]))
        if m[pivot][c] == 0.0:
            raise ConfigError("a feedback prior's precision is singular")
        m[c], m[pivot] = m[pivot], m[c]
        inv = 1.0 / m[c][c]
        m[c] = [v * inv for v in m[c]]
        for r in range(n):
            if r != c and m[r][c] != 0.0:
                f = m[r][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[c], strict=True)]
    return [row[n:] for row in m]


def _fisher(qm: QualityModel) -> tuple[list[list[float]], float]:
    """E[phi phi'] over training prompts and the mean curvature s(1 - s), if recorded."""
    k = qm.k
    eye = [[1.0 if i == j else 0.0 for j in range(k + 1)] for i in range(k + 1)]
    entry = qm.meta.get("fisher")
    if isinstance(entry, Mapping):
        raw = entry.get("phi_moment")
        # a mean curvature p(1 - p): anything else (NaN, negative, text), which a loaded
        # file cannot hold (QualityModel.load refuses it), counts as unrecorded
        w = as_real(entry.get("mean_weight", _DEFAULT_WEIGHT))
        if w is None or not 0.0 <= w <= 0.25:
            w = _DEFAULT_WEIGHT
        try:
            m = [[float(v) for v in row] for row in raw]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            return eye, _DEFAULT_WEIGHT
        if len(m) == k + 1 and all(
            len(row) == k + 1 and all(math.isfinite(v) for v in row) for row in m
        ):
            return m, w
    return eye, _DEFAULT_WEIGHT


def prior_belief(
    qm: QualityModel,
    p: ModelParams,
    *,
    max_evidence: float = MAX_EVIDENCE,
    prior_evidence: float = PRIOR_EVIDENCE,
) -> AbilityBelief:
    """The belief a model's current parameters stand for (see the module docstring)."""
    moment, weight = _fisher(qm)
    evidence = min(p.n_obs, max_evidence)
    if p.source == "prior":
        evidence = max(evidence, prior_evidence)
    g = evidence * weight
    precision = [
        [(1.0 if i == j else 0.0) + g * v for j, v in enumerate(row)]
        for i, row in enumerate(moment)
    ]
    return AbilityBelief.from_precision([p.bias, *p.ability], precision, p.n_obs)


def score_of(v: object) -> float:
    """A feedback score as a float in [0, 1] (numpy's scalars too), else InputError."""
    y = as_real(v)
    if y is None or not 0.0 <= y <= 1.0:
        raise InputError(f"feedback score must be a number in [0, 1], got {v!r:.40}")
    return y


def update_belief(
    belief: AbilityBelief,
    latent: Sequence[float],
    score: float,
    scale: float = 1.0,
    offset: float = 0.0,
) -> AbilityBelief:
    """Fold in one observed `score` in [0, 1] on a prompt with `latent` = [e(x)..., d(x)].
    The prediction it scores is sigmoid(scale * (IRT logit) + offset): scale 0.5 and offset
    lr / 2 for a model whose served logit averages the IRT one with its embedding logit lr."""
    y = score_of(score)
    k = len(belief.mean) - 1
    if len(latent) != k + 1:
        raise InputError(f"latent must hold {k + 1} values (k skills and a difficulty)")
    mean, cov = _core.update_belief(belief.mean, belief.cov, latent, y, scale, offset)
    return _belief(mean, cov, belief.n_obs + 1.0)


def new_request_id() -> str:
    """uuid4().hex, made without importing uuid (which costs a fresh process ~3 ms)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return b.hex()


_ID = re.compile(r"[0-9a-f]{32}")
#: `FeedbackLog._scored`'s mark of a request that failed or was cancelled: no answer to score
_NO_ANSWER = 0xFFFF_FFFF
_UNPACKERS: dict[int, struct.Struct] = {}


def _unpacker(n: int) -> struct.Struct:
    """A Struct that reads `n` native float32s (as `array("f")` holds them) into a tuple."""
    s = _UNPACKERS.get(n)
    if s is None:
        s = _UNPACKERS[n] = struct.Struct(f"{n}f")
    return s


#: Every FeedbackLog, given fresh random checks (and a new lock) in a forked child.
_LOGS: weakref.WeakSet[FeedbackLog] = weakref.WeakSet()


def _logs_after_fork() -> None:
    for log in list(_LOGS):
        log._after_fork()


os.register_at_fork(after_in_child=_logs_after_fork)


class FeedbackLog:
    """The last `capacity` decisions whose request id was read -> (prompt latent, model
    credited, embedding); and the beliefs.

    Only the k+1 latent numbers are kept per request, never the prompt. The ids this log
    issues say where their decision is kept: a ring of flat arrays, about 60 bytes a
    decision (a dict of small objects took 216, measured: 21 MB at the default capacity
    against 6). Thread-safe: route() may run on many threads while feedback() arrives on
    another.
    """

    def __init__(
        self,
        capacity: int = 100_000,
        *,
        max_evidence: float = MAX_EVIDENCE,
        prior_evidence: float = PRIOR_EVIDENCE,
    ) -> None:
        if capacity < 1 or max_evidence < 0 or prior_evidence < 0:
            raise ConfigError("feedback capacity must be >= 1 and evidence weights >= 0")
        self.capacity = capacity
        self.max_evidence = max_evidence
        self.prior_evidence = prior_evidence
        # An id is this log's tag, the decision's number and a random check (32 hex, as a
        # uuid4's): the number says where it is kept, the check that it is still there.
        self._tag = os.urandom(2).hex()
        self._next = 0
        self._seq = array("q")  # per slot: the number of the decision kept there
        self._check = array("Q")
        self._model = array("I")  # index into _names
        self._names: list[str] = []
        self._name_index: dict[str, int] = {}
        self._width = 0  # float32s per latent (a new predictor may have more: re-laid)
        self._latent = array("f")
        self._n_latent = array("H")
        self._emb = bytearray()  # EMBED_DIM bytes a slot, once some decision has one
        self._has_emb = bytearray()
        self._rand = array("Q")
        self._rand_at = 0
        self._beliefs: dict[str, AbilityBelief] = {}
        # per slot: 1 + the model its answer was first scored for (0: none), and any other
        # models scored for it (rare: a fallback's answer scored beside the primary's)
        self._scored = array("I")
        self._scored_more: dict[int, set[int]] = {}
        self._lock = threading.Lock()
        _LOGS.add(self)

    def _after_fork(self) -> None:
        """In a forked child: random checks of its own. The numbers and the checks drawn
        ahead were the parent's, so a child's requests had the ids of the parent's next
        ones (a shared ledger kept one record of each pair and put each score on both)."""
        self._lock = threading.Lock()
        self._rand, self._rand_at = array("Q"), 0

    def issue(self, latent: Sequence[float], model: str, embedding: bytes | None = None) -> str:
        """Keep a decision (`model` credited) and return the new request id that finds it."""
        with self._lock:
            if self._rand_at >= len(self._rand):  # random checks drawn 512 at a time
                self._rand, self._rand_at = array("Q", os.urandom(8 * 512)), 0
            check = self._rand[self._rand_at]
            self._rand_at += 1
            seq = self._next
            self._next += 1
            slot = seq % self.capacity
            if slot == len(self._seq):  # still filling: grow by one slot
                self._seq.append(-1)
                self._check.append(0)
                self._model.append(0)
                self._n_latent.append(0)
                self._scored.append(0)
                self._latent.frombytes(bytes(4 * self._width))
                self._has_emb.append(0)
                if self._emb:
                    self._emb.extend(bytes(EMBED_DIM))
            self._seq[slot], self._check[slot] = seq, check
            self._scored[slot] = 0
            if self._scored_more:
                self._scored_more.pop(slot, None)
            self._model[slot] = self._index(model)
            self._put_latent(slot, latent)
            self._put_embedding(slot, embedding)
        return f"{self._tag}{seq:012x}{check:016x}"

    def credit(self, request_id: str, model: str) -> None:
        """Credit a kept decision to `model` (a fallback answered); unknown ids are ignored."""
        with self._lock:
            slot = self._slot(request_id)
            if slot is not None:
                self._model[slot] = self._index(model)

    def unanswered(self, request_id: str) -> None:
        """Mark a kept decision's request as failed or cancelled: `claim` refuses it, as
        there is no answer to score (a score had moved the primary's ability for an answer
        it never gave, and `satisfice train` skips such records). Unknown ids are ignored."""
        with self._lock:
            slot = self._slot(request_id)
            if slot is not None:
                self._scored[slot] = _NO_ANSWER
                if self._scored_more:
                    self._scored_more.pop(slot, None)

    def lookup(self, request_id: str) -> tuple[tuple[float, ...], str, bytes | None]:
        """(prompt latent, model credited, embedding) of a kept decision; InputError if
        `request_id` is not (or no longer) kept."""
        with self._lock:
            return self._kept(self._slot_of(request_id))

    def claim(
        self,
        request_id: str,
        model: str | None,
        known: Callable[[str], object],
        width: int | None = None,
    ) -> tuple[tuple[float, ...], str, bytes | None]:
        """`lookup`, and the answer of `model` (default the one credited) marked scored,
        once: the same id scored again had counted as new evidence each time (one answer
        scored 0 a hundred times moved a model's P(good) from 0.76 to 0.36). `known(model)`
        raises for a model the router does not know, and a latent of other than `width`
        numbers (a predictor of another k swapped in since) is refused, before anything is
        marked. One parse of the id, under one lock."""
        if model is not None and not isinstance(model, str):  # a list had been a raw TypeError
            raise InputError(f"model must be a model id (a str), got {type(model).__name__}")
        with self._lock:
            slot = self._slot_of(request_id)
            latent, chosen, emb = self._kept(slot)
            if width is not None and len(latent) != width:
                # (the update had failed on it after the mark: "latent must hold 5 values",
                # then "already scored" for a score that had moved nothing)
                raise InputError(
                    f"request {request_id!r:.60} was routed by a predictor of "
                    f"{len(latent) - 1} skills, and the router's now has {width - 1} "
                    "(router.update() swapped it in since): its score cannot update this one"
                )
            target = model if model is not None else chosen
            known(target)
            m = self._index(target) + 1
            first = self._scored[slot]
            if first == _NO_ANSWER:
                raise InputError(
                    f"request {request_id!r:.60} failed or was cancelled: it has no answer to "
                    "score (feedback scores an answer a model gave)"
                )
            if first == 0:
                self._scored[slot] = m
            else:
                more = self._scored_more.setdefault(slot, set())
                if m == first or m in more:
                    raise InputError(
                        f"request {request_id!r:.60} was already scored for {target!r:.80}: "
                        "feedback counts each answer once"
                    )
                more.add(m)
            return latent, target, emb

    def _slot_of(self, request_id: str) -> int:
        if not isinstance(request_id, str):
            raise InputError(
                f"request_id must be the str a result or decision gave, got "
                f"{type(request_id).__name__}"
            )
        slot = self._slot(request_id)
        if slot is None:
            raise InputError(
                f"unknown request id {request_id!r:.60}: feedback is accepted for the last "
                f"{self.capacity} decisions whose request_id was read, in this process"
            )
        return slot

    def _kept(self, slot: int) -> tuple[tuple[float, ...], str, bytes | None]:
        # the latent's float32s unpacked straight into a tuple (the same floats): a slice of
        # the array, then tuple() of it, had cost a feedback() call ~700 more instructions
        unpack = _unpacker(self._n_latent[slot]).unpack_from
        latent = unpack(self._latent, 4 * slot * self._width)
        emb = (
            bytes(self._emb[slot * EMBED_DIM : (slot + 1) * EMBED_DIM])
            if self._has_emb[slot]
            else None
        )
        return latent, self._names[self._model[slot]], emb

    def _slot(self, request_id: str) -> int | None:
        """Where `request_id`'s decision is kept, if it still is (caller holds the lock)."""
        # exactly the 32 lower-case hex digits issued (int() alone took " 0x", "_", ...)
        if not request_id.startswith(self._tag) or _ID.fullmatch(request_id) is None:
            return None
        n = int(request_id[4:], 16)  # the decision's number and its check, in one parse
        seq, check = n >> 64, n & 0xFFFF_FFFF_FFFF_FFFF
        slot = seq % self.capacity
        if slot >= len(self._seq) or self._seq[slot] != seq or self._check[slot] != check:
            return None
        return slot

    def _index(self, model: str) -> int:
        i = self._name_index.get(model)
        if i is None:
            i = self._name_index[model] = len(self._names)
            self._names.append(model)
        return i

    def _put_latent(self, slot: int, latent: Sequence[float]) -> None:
        n = len(latent)
        if n > self._width:  # lay the kept latents out again, wider (a predictor change)
            old, w = self._latent, self._width
            self._latent = array("f", bytes(4 * n * len(self._seq)))
            for i in range(len(self._seq)):
                self._latent[i * n : i * n + w] = old[i * w : i * w + w]
            self._width = n
        w = self._width
        self._latent[slot * w : slot * w + n] = array("f", latent)
        self._n_latent[slot] = n

    def _put_embedding(self, slot: int, embedding: bytes | None) -> None:
        if embedding is None:
            self._has_emb[slot] = 0
            return
        if len(embedding) != EMBED_DIM:
            raise ConfigError(f"a prompt embedding has {EMBED_DIM} bytes, got {len(embedding)}")
        if not self._emb:
            self._emb = bytearray(EMBED_DIM * len(self._seq))
        self._emb[slot * EMBED_DIM : (slot + 1) * EMBED_DIM] = embedding
        self._has_emb[slot] = 1

    def observe(
        self,
        qm: QualityModel,
        model: str,
        current: ModelParams,
        latent: Sequence[float],
        score: float,
        embedding: bytes | None = None,
    ) -> ModelParams:
        """Update `model`'s belief (starting from `current` if it changed meanwhile). For a
        model with an embedding logistic, `embedding` (the prompt's, from the plan) lets the
        update score the prediction that was served: the average of the two logits."""
        scale, offset = 1.0, 0.0
        if current.emb is not None and embedding is not None:
            w, u = current.emb, array("b", embedding)
            lr = sum(w[i] * u[i] for i in range(len(u))) / 127.0 + w[-1]
            scale, offset = 0.5, 0.5 * lr
        with self._lock:
            belief = self._beliefs.get(model)
            if belief is None or not belief.matches(current):
                belief = prior_belief(
                    qm,
                    current,
                    max_evidence=self.max_evidence,
                    prior_evidence=self.prior_evidence,
                )
            belief = update_belief(belief, latent, score, scale, offset)
            self._beliefs[model] = belief
        out = belief.params()
        if current.emb is None:
            return out
        # Feedback refines the IRT part (scored as served); the embedding logistic stays.
        return new_params(out.bias, out.ability, out.n_obs, out.source, current.emb)
