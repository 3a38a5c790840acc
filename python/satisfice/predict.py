"""Quality predictors: P(model answers acceptably | prompt), evaluated exactly in Rust.

The shape is item-response style (multidimensional IRT), so a model that was never in the
training data can still be scored:

    [e(x), d(x)] = W x + c                       (k "skill" dimensions and a difficulty)
    P(good | m, x) = sigmoid(bias_m + ability_m · e(x) − d(x))

A model trained with the embedding (`_core.embed`, int8[64] / 127 = u(x)) also has a
per-model logistic on it, and the two logits are averaged:

    P(good | m, x) = sigmoid((bias_m + ability_m · e(x) − d(x) + v_m · u(x) + b_m) / 2)

`x` is the Rust Featurizer's vector. `W`, `c` come from training on outcome data
(`satisfice.eval.train`); `bias_m`, `ability_m` are per model. A model the predictor has not
seen gets `bias = a·logit(prior) + b` from its registry quality prior (the map is fitted on
the models that were seen) and the mean ability; `router.feedback()` refines both online.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Mapping
from functools import cached_property

from . import _core
from ._atomic import write_atomic
from ._frozen import Value, _set, slot_setters
from .errors import ConfigError
from .registry import ModelSpec

#: The Featurizer flags that mark a prompt as belonging to each task with its own prior
#: (the prior predictor's skills, and the skills `eval.seed` adds to a trained predictor).
TASK_FLAGS: Mapping[str, tuple[str, ...]] = {
    "code": ("code",),
    "math": ("math",),
    "extraction": ("json", "extraction"),
    "translation": ("translation",),
    "summarize": ("summarize",),
    "creative": ("creative",),
    "reasoning": ("reasoning",),
}


def logit(p: float) -> float:
    """log(p / (1 - p)), p clipped to [1e-4, 1 - 1e-4] so that a prior of 0 or 1 stays finite."""
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def sigmoid(z: npt.ArrayLike) -> np.ndarray:
    """1 / (1 + e^-z), without overflow for any z (arrays or scalars)."""
    import numpy as np

    return np.asarray(np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=np.float64))))


__all__ = ["ModelParams", "QualityModel"]

TYPE_CHECKING = False  # not typing's: Router() does not import typing (cold_start.py)
if TYPE_CHECKING:  # numpy is imported where arrays are used: routing does not need it
    from pathlib import Path
    from typing import Any

    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float32]


_F32_MAX = 3.4e38  # weights are evaluated in float32: anything larger (or NaN) is refused
#: meta key of what changed a predictor after its fit: {"feedback_observations": n}
SINCE_FIT, _FED = "since_fit", "feedback_observations"


class ModelParams(Value):
    """One model's IRT parameters, and how many feedback/training observations back them."""

    __match_args__ = __slots__ = ("bias", "ability", "n_obs", "source", "emb")
    bias: float
    ability: tuple[float, ...]
    n_obs: float
    source: str
    # The embedding logistic: 64 weights on embed(x) / 127, then its intercept (None: IRT
    # only). Feedback refines bias and ability alone, scoring the prediction that was served
    # (the average of the two logits), so such a model moves more slowly under feedback.
    emb: tuple[float, ...] | None

    def __init__(
        self,
        bias: float,
        ability: tuple[float, ...],
        n_obs: float = 0.0,
        source: str = "trained",
        emb: tuple[float, ...] | None = None,
    ) -> None:
        _set(self, "bias", bias)
        _set(self, "ability", ability)
        _set(self, "n_obs", n_obs)
        _set(self, "source", source)
        _set(self, "emb", emb)


_new = object.__new__
_SET_BIAS, _SET_ABILITY, _SET_N_OBS, _SET_SOURCE, _SET_EMB = slot_setters(ModelParams)


def new_params(
    bias: float,
    ability: tuple[float, ...],
    n_obs: float,
    source: str,
    emb: tuple[float, ...] | None = None,
) -> ModelParams:
    """`ModelParams(bias, ability, n_obs, source, emb)` (which checks nothing), in half its
    instructions: without the misspelt-field wrapper's *args/**kw call (`_named_fields`),
    and stored by the slots' own setters (`slot_setters`). feedback() makes one a call:
    ~4,900 instructions, where the constructor took ~9,600."""
    p = _new(ModelParams)
    _SET_BIAS(p, bias)
    _SET_ABILITY(p, ability)
    _SET_N_OBS(p, n_obs)
    _SET_SOURCE(p, source)
    _SET_EMB(p, emb)
    return p


def floats32(v: Any) -> array[float]:
    """float32 values as `array('f')`, from an array('f'), a numpy array, a tuple or a list."""
    if isinstance(v, array) and v.typecode == "f":
        return v
    if hasattr(v, "dtype"):  # numpy: its float32 bytes, flattened
        out = array("f")
        out.frombytes(v.astype("float32", copy=False).tobytes())
        return out
    return array("f", v)


def _since_fit(meta: Mapping[str, object]) -> Mapping[str, object]:
    """meta["since_fit"], or {} when it is missing or not a mapping."""
    since = meta.get(SINCE_FIT)
    # a dict (as loaded, and as `with_feedback` makes it) without the ABC check, which had
    # been a sizeable part of every feedback() call
    return since if type(since) is dict or isinstance(since, Mapping) else {}


def _fed(since: Mapping[str, object]) -> int | None:
    """The feedback observations `since` (meta["since_fit"]) counts, if any."""
    n = since.get(_FED)
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


class QualityModel(Value):
    """A predictor the DispatchTable evaluates; immutable, saved as one .npz file.

    `w` (feature-major (dim, k+1), flattened) and `c` (k+1) are `array('f')`: float32,
    compact, and handed to Rust as buffers, so building and routing with a predictor needs
    no numpy (importing it is most of a fresh process's `Router()` time). `weights` and
    `intercept` are the same numbers as numpy views, for batch work. Numpy arrays (a
    (dim, k+1) `weights`), tuples and lists are accepted for `w` and `c` and converted."""

    # not slotted: `weights` and `intercept` are cached in the instance's __dict__
    __match_args__ = (
        "name",
        "k",
        "hash_buckets",
        "seed",
        "w",
        "c",
        "models",
        "prior_map",
        "feature_version",
        "meta",
    )
    name: str
    k: int
    hash_buckets: int
    seed: int
    w: array[float]  # (dim, k+1) feature-major, flattened
    c: array[float]  # (k+1,)
    models: Mapping[str, ModelParams]
    prior_map: tuple[float, float]
    feature_version: int
    meta: Mapping[str, object]

    def __init__(
        self,
        name: str,
        k: int,
        hash_buckets: int,
        seed: int,
        w: array[float],
        c: array[float],
        models: Mapping[str, ModelParams] | None = None,
        prior_map: tuple[float, float] = (1.0, 0.0),
        feature_version: int = _core.FEATURE_VERSION,
        meta: Mapping[str, object] | None = None,
    ) -> None:
        _set(self, "name", name)
        _set(self, "k", k)
        _set(self, "hash_buckets", hash_buckets)
        _set(self, "seed", seed)
        _set(self, "w", w)
        _set(self, "c", c)
        _set(self, "models", {} if models is None else models)
        _set(self, "prior_map", prior_map)
        _set(self, "feature_version", feature_version)
        _set(self, "meta", {} if meta is None else meta)
        self.__post_init__()

    def __post_init__(self) -> None:
        # what the Rust table takes as unsigned: a negative k, hash_buckets or seed (or a seed
        # past 64 bits) in a saved file had loaded, then failed Router() with a raw
        # OverflowError or BufferError when the table was compiled
        for field in ("k", "hash_buckets", "seed"):
            v = getattr(self, field)
            if not 0 <= v < 2**64:
                raise ConfigError(
                    f"predictor {self.name!r}: {field} must be a whole number in [0, 2**64), "
                    f"got {v!r:.40}; retrain it with `satisfice eval --train ... --save-predictor`"
                )
        dim = _core.DENSE + self.hash_buckets
        shape = getattr(self.w, "shape", None)
        if shape is not None and len(shape) == 2 and tuple(shape) != (dim, self.k + 1):
            raise ConfigError(
                f"predictor {self.name!r}: weights shape {tuple(shape)}, "
                f"expected ({dim}, {self.k + 1}) for hash_buckets={self.hash_buckets}"
            )
        object.__setattr__(self, "w", floats32(self.w))
        object.__setattr__(self, "c", floats32(self.c))
        if len(self.w) != dim * (self.k + 1):
            raise ConfigError(
                f"predictor {self.name!r}: {len(self.w)} weights, expected {dim}*{self.k + 1} "
                f"for hash_buckets={self.hash_buckets}"
            )
        if len(self.c) != self.k + 1:
            raise ConfigError(f"predictor {self.name!r}: intercept must have {self.k + 1} values")
        if self.feature_version != _core.FEATURE_VERSION:
            raise ConfigError(
                f"predictor {self.name!r} was trained on feature version {self.feature_version}, "
                f"this satisfice makes version {_core.FEATURE_VERSION}; retrain it with "
                "`satisfice eval --train ... --save-predictor`"
            )
        for mid, p in self.models.items():
            self._check(mid, p)

    @property
    def dim(self) -> int:
        return _core.DENSE + self.hash_buckets

    @cached_property
    def weights(self) -> FloatArray:
        """`w` as a (dim, k+1) float32 array (a read-only view, no copy)."""
        import numpy as np

        out = np.frombuffer(self.w, dtype=np.float32).reshape(self.dim, self.k + 1)
        out.flags.writeable = False
        return out

    @cached_property
    def intercept(self) -> FloatArray:
        """`c` as a (k+1,) float32 array (a read-only view)."""
        import numpy as np

        out = np.frombuffer(self.c, dtype=np.float32)
        out.flags.writeable = False
        return out

    def params_for(self, spec: ModelSpec) -> ModelParams:
        """Parameters for a registry model: trained ones, else seeded from its quality prior."""
        p = self.models.get(spec.id)
        if p is not None:
            return p
        if self.name == "prior":
            return self.prior_params(spec)
        a, b = self.prior_map
        if self.models:
            n = len(self.models)
            mean_ability = tuple(
                sum(col) / n for col in zip(*(m.ability for m in self.models.values()), strict=True)
            )
        else:
            mean_ability = (0.0,) * self.k
        return ModelParams(a * logit(spec.quality_prior()) + b, mean_ability, 0.0, "prior")

    def _check(self, model: str, p: ModelParams) -> None:
        if len(p.ability) != self.k:
            raise ConfigError(f"predictor {self.name!r}: model {model!r} needs {self.k} abilities")
        if p.emb is not None and (
            len(p.emb) != _core.EMBED_DIM + 1
            or not all(isinstance(v, int | float) and abs(v) < _F32_MAX for v in p.emb)
        ):
            raise ConfigError(
                f"predictor {self.name!r}: model {model!r} needs {_core.EMBED_DIM + 1} finite "
                "embedding weights (or none)"
            )

    def _sharing(
        self, models: dict[str, ModelParams], meta: Mapping[str, object] | None = None
    ) -> QualityModel:
        """A copy with `models` (and `meta`, if given; already checked), sharing the weights
        and their arrays."""
        new = object.__new__(QualityModel)
        d = new.__dict__
        d.update(self.__dict__)
        d["models"] = models
        if meta is not None:
            d["meta"] = meta
        return new

    def with_models(self, models: Mapping[str, ModelParams]) -> QualityModel:
        """This predictor with `models` as its per-model parameters (the weights shared)."""
        for mid, p in models.items():
            self._check(mid, p)
        return self._sharing(dict(models))

    def with_model(self, model: str, params: ModelParams) -> QualityModel:
        """This predictor with one model's parameters replaced: only that entry is checked."""
        self._check(model, params)
        return self._sharing({**self.models, model: params})

    def with_feedback(self, model: str, params: ModelParams) -> QualityModel:
        """`with_model` for a feedback update, counted in meta["since_fit"]: feedback learns
        from prompts the training-prompt filter does not hold (the feedback log keeps no
        prompt text), so eval can say that it cannot exclude them (`feedback_since_fit`)."""
        self._check(model, params)
        since = _since_fit(self.meta)
        n = _fed(since) or 0
        meta = {**self.meta, SINCE_FIT: {**since, _FED: n + 1}}
        return self._sharing({**self.models, model: params}, meta)

    def feedback_since_fit(self) -> int | None:
        """How many feedback observations refined this predictor after it was fitted (None:
        none recorded)."""
        return _fed(_since_fit(self.meta))

    # -- batch evaluation, for offline work (the router's hot path runs the same maths in Rust)
    def featurizer(self) -> _core.Featurizer:
        return _core.Featurizer(self.hash_buckets, self.seed)

    def latent(self, features: FloatArray) -> FloatArray:
        import numpy as np

        out: FloatArray = (features @ self.weights + self.intercept).astype(np.float32)
        return out

    def p_good(
        self,
        features: FloatArray,
        params: list[ModelParams],
        embeddings: npt.NDArray[np.int8] | None = None,
    ) -> FloatArray:
        """(n, m) predicted P(good) for n feature rows and m models; `embeddings` (n, 64)
        int8 from `_core.embed_batch` are needed when any model has embedding weights."""
        import numpy as np

        z = self.latent(features)
        e, d = z[:, : self.k], z[:, self.k]
        bias = np.array([p.bias for p in params], dtype=np.float32)
        ab = np.array([p.ability for p in params], dtype=np.float32).reshape(len(params), self.k)
        logits = e @ ab.T + bias[None, :] - d[:, None]
        with_emb = [j for j, p in enumerate(params) if p.emb is not None]
        if with_emb:
            if embeddings is None:
                raise ConfigError("p_good: these models have embedding weights; pass embeddings")
            u = embeddings.astype(np.float32) / 127.0
            v = np.array([params[j].emb for j in with_emb], dtype=np.float32)  # (j, 65)
            lr = u @ v[:, :-1].T + v[None, :, -1]
            logits[:, with_emb] = (logits[:, with_emb] + lr) / 2.0
        out: FloatArray = sigmoid(logits).astype(np.float32)
        return out

    # -- persistence
    def save(self, path: str | Path) -> None:
        import numpy as np

        meta = {
            "name": self.name,
            "k": self.k,
            "hash_buckets": self.hash_buckets,
            "seed": self.seed,
            "prior_map": list(self.prior_map),
            "feature_version": self.feature_version,
            "meta": dict(self.meta),
            "models": {
                m: {
                    "bias": p.bias,
                    "ability": list(p.ability),
                    "n_obs": p.n_obs,
                    "source": p.source,
                    **({} if p.emb is None else {"emb": list(p.emb)}),
                }
                for m, p in self.models.items()
            },
        }
        # Whole or not at all: a write that fails part-way (disk full) must not leave the
        # previous predictor, which a policy names, truncated and every command failing.
        write_atomic(
            path,
            lambda f: np.savez_compressed(
                f,
                weights=self.weights,
                intercept=self.intercept,
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            ),
        )

    @classmethod
    def load(cls, path: str | Path) -> QualityModel:
        import zipfile
        from pathlib import Path

        import numpy as np

        redo = (
            "save it again (Router.save_policy, QualityModel.save) or retrain it "
            "(`satisfice eval --train ... --save-predictor`)"
        )
        try:
            # Opened here, not by np.load, which leaves its file open when the zip is damaged.
            with Path(path).open("rb") as f, np.load(f, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                weights = z["weights"].astype(np.float32)
                intercept = z["intercept"].astype(np.float32)
            # The whole metadata block is read here, so that a file that lacks a field or
            # holds the wrong type gets this error, not a KeyError from deep in a command.
            name, k, buckets = str(meta["name"]), int(meta["k"]), int(meta["hash_buckets"])
            seed, feature_version = int(meta["seed"]), int(meta["feature_version"])
            a, b = (float(v) for v in meta["prior_map"])
            extra = meta.get("meta", {})
            if not isinstance(extra, dict):
                raise TypeError(f"'meta' must be an object, not {type(extra).__name__}")
        except FileNotFoundError:
            raise ConfigError(f"predictor file {path} does not exist") from None
        except (
            KeyError, ValueError, TypeError, AttributeError, OverflowError, OSError, EOFError,
            zipfile.BadZipFile,  # truncated or empty: a save that was cut short
            RecursionError,  # a metadata block of nested lists
            MemoryError,  # an array header claiming terabytes, in a file of 300 bytes
        ) as e:  # fmt: skip
            what = f"missing field {e}" if isinstance(e, KeyError) else f"{e}"[:200]
            if "pickle" in what:  # numpy's word for any file not .npy/.npz: not its advice
                what = "not an .npz archive"  # (to load it unsafely) to pass on
            raise ConfigError(
                f"predictor file {path} is damaged or not a satisfice predictor ({what}); {redo}"
            ) from None
        try:
            models = {
                m: ModelParams(
                    float(p["bias"]),
                    _reals(p["ability"]),
                    float(p.get("n_obs", 0)),
                    str(p.get("source", "trained")),
                    None if p.get("emb") is None else _reals(p["emb"]),
                )
                for m, p in meta["models"].items()
            }
        except (KeyError, ValueError, TypeError, AttributeError, OverflowError) as e:
            raise ConfigError(
                f"predictor file {path}: a model's parameters are malformed: {e}; {redo}"
            ) from None
        if weights.shape != (_core.DENSE + buckets, k + 1):
            raise ConfigError(
                f"predictor file {path}: weights shape {weights.shape}, expected "
                f"({_core.DENSE + buckets}, {k + 1}) for hash_buckets={buckets}; {redo}"
            )
        # Checked here, where the file can be named: a NaN weight had surfaced as NaN in
        # the user's outcome data (eval) or a nameless error when the router compiled it,
        # and damaged feedback evidence only at the first feedback() (or never: a negative
        # weight made a good score lower a model's bias).
        why = (
            _numbers_problem(weights, intercept, (a, b), models)
            or _fisher_problem(extra.get("fisher"), k)
            or _filter_problem(extra.get("training_prompts"))
        )
        if why is not None:
            raise ConfigError(f"predictor file {path} is damaged: {why}; {redo}")
        return cls(
            name,
            k,
            buckets,
            seed,
            floats32(weights),
            floats32(intercept),
            models,
            (a, b),
            feature_version,
            extra,
        )

    @classmethod
    def bundled(cls) -> QualityModel:
        """The predictor `Router()` uses: the transparent prior (see `prior`). The trained
        benchmark predictor is opt-in (`satisfice.eval.evaluate.shipped_predictor`): it rates
        chit-chat as hard as a benchmark item."""
        return cls.prior()

    @classmethod
    def prior(cls, hash_buckets: int = 0) -> QualityModel:
        """A hand-set predictor from registry priors: skills are the task flags, difficulty
        grows with prompt length and with math/code/reasoning markers. Transparent, untrained.
        It reads only the dense features, so by default the router hashes no n-grams."""
        names = list(_core.Featurizer.dense_names())
        tasks = list(_core.TASKS)
        k = len(tasks)
        w = [0.0] * ((_core.DENSE + hash_buckets) * (k + 1))  # feature-major
        skill_features = {**TASK_FLAGS, "general": ("bias",)}
        for t, feats in skill_features.items():
            for f in feats:
                w[names.index(f) * (k + 1) + tasks.index(t)] = 1.0
        difficulty = {
            "log_tokens": 2.5,
            "math": 0.6,
            "code": 0.4,
            "reasoning": 0.5,
            "multiple_choice": 0.3,
            "bias": -1.0,
        }
        for f, v in difficulty.items():
            w[names.index(f) * (k + 1) + k] = v
        return cls(
            "prior",
            k,
            hash_buckets,
            _core.Featurizer().seed,
            array("f", w),
            array("f", [0.0] * (k + 1)),
            {},
            (1.0, 0.0),
            meta={"tasks": tasks},
        )

    def prior_params(self, spec: ModelSpec) -> ModelParams:
        """For the `prior` predictor: ability per task = logit(q_task) − logit(q_general)."""
        tasks = list(_core.TASKS)
        g = logit(spec.quality_prior("general"))
        ab = tuple(0.0 if t == "general" else logit(spec.quality_prior(t)) - g for t in tasks)
        return ModelParams(g, ab, 0.0, "prior")


def _reals(v: object) -> tuple[float, ...]:
    """A JSON list of numbers, as floats: an ability of strings had raised numpy's raw
    ValueError at the file's check, and a string of digits or an object had been iterated
    into abilities."""
    if not isinstance(v, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in v
    ):
        raise TypeError(f"expected a list of numbers, got {v!r:.60}")
    return tuple(float(x) for x in v)


def _finite(values: Any) -> bool:
    """Whether every value is finite and within float32's range (weights are evaluated in
    float32: a larger one is an infinity there)."""
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    return bool(np.isfinite(arr).all() and (np.abs(arr) < _F32_MAX).all())


def _numbers_problem(
    weights: Any, intercept: Any, prior_map: tuple[float, float], models: Mapping[str, ModelParams]
) -> str | None:
    """What is not a finite number among a predictor's weights and per-model parameters."""
    if not _finite(weights):
        return "weights hold NaN or infinite values"
    if not _finite(intercept):
        return "intercept holds NaN or infinite values"
    if not _finite(prior_map):
        return "prior_map must be two finite numbers"
    for m, p in models.items():
        where = f"models[{m!r:.80}]"
        if not _finite((p.bias, *p.ability)):
            return f"{where}: bias and ability must be finite numbers"
        if not (math.isfinite(p.n_obs) and p.n_obs >= 0):
            return f"{where}.n_obs must be a count of observations >= 0, got {p.n_obs!r}"
    return None


def _fisher_problem(entry: object, k: int) -> str | None:
    """What is wrong with meta.fisher, the moments feedback weighs a model's evidence by
    (`feedback.prior_belief`): a NaN, negative or non-number mean_weight had made every
    feedback() fail, or a good score lower a model's bias."""
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        return f"meta.fisher must be an object, got {type(entry).__name__}"
    from ._real import as_real

    if "mean_weight" in entry:
        w = as_real(entry["mean_weight"])
        if w is None or not 0.0 <= w <= 0.25:  # a mean of p(1 - p)
            return (
                "meta.fisher.mean_weight must be a mean curvature p(1 - p), a number in "
                f"[0, 0.25], got {entry['mean_weight']!r:.40}"
            )
    raw = entry.get("phi_moment")
    if raw is not None and not (
        isinstance(raw, list)
        and len(raw) == k + 1
        and all(
            isinstance(row, list) and len(row) == k + 1 and all(as_real(v) is not None for v in row)
            for row in raw
        )
    ):
        return f"meta.fisher.phi_moment must be a {k + 1}x{k + 1} matrix of finite numbers"
    return None


def _filter_problem(entry: object) -> str | None:
    """What is wrong with meta.training_prompts, the Bloom filter of the training prompts
    that eval drops from its test rows (`eval.membership`): damaged, it had failed eval
    with a raw traceback, or (0 hashes) claimed every prompt as trained on."""
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        return f"meta.training_prompts must be an object, got {type(entry).__name__}"
    import base64
    import binascii

    from ._real import as_count

    bloom = entry.get("bloom")
    try:
        bits = base64.b64decode(bloom, validate=True) if isinstance(bloom, str) else b""
    except (binascii.Error, ValueError):
        bits = b""
    if not bits:
        return "meta.training_prompts.bloom must be the filter's bits, base64 (non-empty)"
    hashes, count = as_count(entry.get("hashes")), as_count(entry.get("count"))
    if hashes is None or hashes < 1:
        return (
            "meta.training_prompts.hashes must be a whole number >= 1, got "
            f"{entry.get('hashes')!r:.40}"
        )
    if count is None or count < 0:
        return (
            "meta.training_prompts.count must be a whole number >= 0, got "
            f"{entry.get('count')!r:.40}"
        )
    # (eval.membership.KEYS: the keys `prompt_key` has been)
    if entry.get("key", "nfkc-spaces") not in ("nfkc-spaces", "nfkc-visible-spaces"):
        return f"meta.training_prompts.key is not one this satisfice reads: {entry['key']!r:.40}"
    return None
