"""The static embedding (`_core.embed`, a WordNet-distilled word table) and the predictor's
per-model logistic on it: the same numbers in Rust routing and in numpy evaluation, kept
through save/load, feedback and humility."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from satisfice import Policy, Registry, Router, _core
from satisfice.errors import ConfigError, InputError
from satisfice.eval import OutcomeSet
from satisfice.eval import train as T
from satisfice.eval.humble import Humility
from satisfice.predict import ModelParams, QualityModel

MEDICINE = [
    "What dose of antibiotics treats a bacterial infection in a patient with fever?",
    "Which symptoms suggest the patient has pneumonia rather than bronchitis?",
    "How does insulin regulate blood sugar in a diabetic patient?",
    "What are the side effects of this vaccine for a child with allergies?",
    "Describe the treatment of a fractured bone and the recovery of the patient.",
]
CODE = [
    "Write a Python function that parses a JSON file and returns a dictionary.",
    "Why does my Rust program fail to compile with a borrow checker error?",
    "Refactor this JavaScript loop into a map and filter over the array.",
    "How do I write a unit test for a class method that reads from a database?",
    "Explain the difference between a process and a thread in an operating system.",
]


def test_embed_is_a_unit_int8_vector_that_separates_topics() -> None:
    e = _core.embed(MEDICINE[0])
    assert e.dtype == np.int8 and e.shape == (_core.EMBED_DIM,)
    assert abs(math.sqrt(float((e.astype(np.float64) ** 2).sum())) - 127) < 8
    assert (_core.embed("12345 !!! ???") == 0).all()  # no known word: all zeros
    batch = _core.embed_batch(MEDICINE + CODE)
    assert batch.shape == (10, 64) and (batch[0] == e).all()
    # a conversation is the sum of its messages' words
    msgs = [{"role": "user", "content": "heart disease"}, {"role": "user", "content": "patient"}]
    assert (_core.embed(msgs) == _core.embed("heart disease patient")).all()
    u = batch.astype(np.float64)
    within = np.mean([u[i] @ u[j] for i in range(5) for j in range(5) if i != j])
    across = np.mean([u[i] @ u[j] for i in range(5) for j in range(5, 10)])
    assert within > across + 1000  # medicine sits nearer medicine than code (scale 127^2)


def test_embed_takes_any_text_and_refuses_non_text() -> None:
    for text in ["", "é" * 10_000, "\x00\ud7ff" * 100, "a" * 1_000_000, "word " * 100_000]:
        assert _core.embed(text).shape == (64,)
    with pytest.raises((InputError, TypeError)):
        _core.embed(42)  # type: ignore[arg-type]


def topics(n: int = 200) -> OutcomeSet:
    """Model "doc" answers medicine well and code badly, "dev" the reverse."""
    rng = np.random.default_rng(0)
    prompts, scores = [], []
    for i in range(n):
        med = i % 2 == 0
        base = (MEDICINE if med else CODE)[i % 5]
        prompts.append(f"{base} (case {i})")
        scores.append([float(rng.random() < (0.9 if med else 0.2)),
                       float(rng.random() < (0.2 if med else 0.9))])  # fmt: skip
    costs = np.tile([1e-4, 1e-4], (n, 1))
    return OutcomeSet(prompts, ["doc", "dev"], np.array(scores), costs, ["g"] * n,
                      [str(i) for i in range(n)])  # fmt: skip


def registry() -> Registry:
    return Registry.from_dict(
        {
            "model": [
                {"id": m, "provider": "openai", "context_window": 8000, "max_output": 1000,
                 "price": {"input": 1.0, "output": 1.0}, "quality": {"general": 0.7}}
                for m in ("doc", "dev")
            ]
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained() -> QualityModel:
    return T.fit(topics(), T.TrainConfig(steps=100))


def test_training_learns_the_topic_and_rust_ranks_with_the_same_numbers(
    trained: QualityModel,
) -> None:
    assert all(p.emb is not None and len(p.emb) == 65 for p in trained.models.values())
    assert all(p.emb is None for p in T.fit(topics(), T.TrainConfig(steps=100, embedding=False))
               .models.values())  # fmt: skip
    test = topics(20)
    pred = T.predict(trained, test)
    router = Router(registry(), Policy(quality=trained, quality_floor=0.0))
    for i, prompt in enumerate(test.prompts):
        got = {c.model: c.p_good for c in router.route(prompt).candidates}
        assert np.allclose([got["doc"], got["dev"]], pred[i], atol=1e-5)
    med, code = router.route(MEDICINE[2]), router.route(CODE[2])
    p_med = {c.model: c.p_good for c in med.candidates}
    p_code = {c.model: c.p_good for c in code.candidates}
    assert p_med["doc"] > p_med["dev"] and p_code["dev"] > p_code["doc"]


ODD = [
    "abc123def don't snake_case_word CamelCaseWord UPPER lower",
    "supercalifragilisticexpialidociousantidisestablishmentarianism " * 3,
    "naïve café résumé Ünïcödé 東京 Москва pneumonia",
    "```python\ndef f(x):\n    return x**2  # square\n```",
    "",
    "A) insulin B) antibiotics C) vaccine\nAnswer:",
]


def test_the_featurizers_scan_sums_the_same_words_as_embed(trained: QualityModel) -> None:
    """Routing sums the embedding in the featurizer's scan; evaluation calls `_core.embed`:
    the same words must reach the table either way (else serving and eval would differ)."""
    test = replace(topics(len(ODD)), prompts=list(ODD))
    pred = T.predict(trained, test)
    router = Router(registry(), Policy(quality=trained, quality_floor=0.0))
    for i, prompt in enumerate(ODD):
        got = {c.model: c.p_good for c in router.route(prompt).candidates}
        assert np.allclose([got["doc"], got["dev"]], pred[i], atol=1e-5), prompt


def test_save_load_feedback_and_humility_keep_the_embedding_part(
    trained: QualityModel, tmp_path: object
) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "q.npz"
    trained.save(path)
    back = QualityModel.load(path)
    assert back.models["doc"].emb == pytest.approx(trained.models["doc"].emb)
    router = Router(registry(), Policy(quality=back, quality_floor=0.0))
    d = router.route(MEDICINE[1])
    before = {c.model: c.p_good for c in d.candidates}
    router.feedback(d.answered_by("doc"), 0.0)
    after_params = router.snapshot.policy.quality_model().models["doc"]
    assert after_params.emb == back.models["doc"].emb and after_params.source == "feedback"
    after = {c.model: c.p_good for c in router.route(MEDICINE[1]).candidates}
    assert after["doc"] < before["doc"] and after["dev"] == pytest.approx(before["dev"])
    # humility's margin moves both averaged logits, so the prediction's logit moves by it
    test = topics(10)
    lifted = Humility("doc", 0.8, []).apply(back)
    p0, p1 = T.predict(back, test)[:, 0], T.predict(lifted, test)[:, 0]
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert np.allclose(logit(p1) - logit(p0), 0.8, atol=1e-4)


def test_bad_embedding_weights_are_refused(trained: QualityModel) -> None:
    p = trained.models["doc"]
    with pytest.raises(ConfigError, match="65 finite embedding weights"):
        trained.with_model("doc", p.replace(emb=(0.0,) * 3))
    with pytest.raises(ConfigError, match="65 finite embedding weights"):
        trained.with_model("doc", p.replace(emb=(math.nan,) * 65))
    with pytest.raises(ConfigError, match="pass embeddings"):
        trained.p_good(T.featurize(["x"], 0), [p])
    from satisfice.eval.onnx_export import onnx_bytes

    with pytest.raises(ConfigError, match="--no-embedding"):
        onnx_bytes(trained, {"doc": p})
    assert ModelParams(1.0, (0.0,) * trained.k).emb is None


def test_a_malformed_saved_predictor_is_a_clear_error(
    trained: QualityModel, tmp_path: object
) -> None:
    import json
    from pathlib import Path

    path = Path(str(tmp_path)) / "q.npz"
    trained.save(path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    for bad in ("abc", 5, ["x"] * 65, [1e39] * 65):
        meta["models"]["doc"]["emb"] = bad
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        np.savez(path, **arrays)
        with pytest.raises(ConfigError):
            QualityModel.load(path)


def test_feedback_scores_the_prediction_that_was_served(trained: QualityModel) -> None:
    """The served logit averages the IRT logit with the embedding logit lr; a feedback update
    is the Laplace step on that served likelihood (scale 0.5, offset lr / 2), with lr
    recomputed here from `_core.embed` and the model's weights."""
    from satisfice import feedback as F

    r = Router(registry(), Policy(quality=trained, quality_floor=0.0))
    d = r.route(MEDICINE[1])
    p0 = {c.model: c.p_good for c in d.candidates}["doc"]
    current = trained.models["doc"]
    assert current.emb is not None
    u = _core.embed(MEDICINE[1]).astype(np.float64) / 127.0
    lr = float(np.dot(current.emb[:-1], u) + current.emb[-1])
    belief = F.prior_belief(trained, current, max_evidence=r._feedback.max_evidence,
                            prior_evidence=r._feedback.prior_evidence)  # fmt: skip
    want = F.update_belief(belief, d.latent, 0.0, 0.5, 0.5 * lr)
    got = r.feedback(d.answered_by("doc"), 0.0)
    assert got.emb == current.emb
    assert np.allclose((got.bias, *got.ability), want.mean, atol=1e-4)
    p1 = {c.model: c.p_good for c in r.route(MEDICINE[1]).candidates}["doc"]
    assert p1 < p0  # a bad score lowers the served prediction
