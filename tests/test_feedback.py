"""Online feedback: the Bayesian update's direction and convergence, and Router.feedback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from satisfice import InputError, Policy, QualityModel, Router
from satisfice.feedback import (
    AbilityBelief,
    FeedbackLog,
    prior_belief,
    update_belief,
)
from satisfice.predict import ModelParams

PROMPT = "Write a Python function that merges two sorted lists into one sorted list."


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def p_of(belief: AbilityBelief, latent: np.ndarray) -> float:
    k = len(belief.mean) - 1
    return float(sigmoid(np.array(belief.mean) @ np.r_[1.0, latent[:k]] - latent[k]))


def test_success_raises_and_failure_lowers_p_good() -> None:
    belief = AbilityBelief.from_precision([0.5, 0.2, -0.1], np.eye(3) * 4.0, 0.0)
    latent = np.array([0.8, -0.3, 0.4])
    p0 = p_of(belief, latent)
    assert p_of(update_belief(belief, latent, 1.0), latent) > p0
    assert p_of(update_belief(belief, latent, 0.0), latent) < p0
    # A score equal to the current prediction is no news about the mean.
    same = update_belief(belief, latent, p0)
    np.testing.assert_allclose(same.mean, belief.mean, atol=1e-9)
    # Every observation adds curvature: the belief only gets tighter.
    assert np.all(np.linalg.eigvalsh(same.precision - belief.precision) >= -1e-12)
    assert same.n_obs == 1


def test_updates_converge_to_the_true_abilities() -> None:
    rng = np.random.default_rng(0)
    truth = np.array([1.2, -0.8, 0.5])
    belief = AbilityBelief.from_precision(np.zeros(3), np.eye(3), 0.0)
    probe = rng.normal(size=(200, 3))
    errors = []
    for step in range(1, 4001):
        z = rng.normal(size=3)
        phi = np.r_[1.0, z[:2]]
        y = float(rng.random() < sigmoid(truth @ phi - z[2]))
        belief = update_belief(belief, z, y)
        if step in (50, 500, 4000):
            phis = np.c_[np.ones(len(probe)), probe[:, :2]]
            gap = sigmoid(phis @ belief.mean - probe[:, 2]) - sigmoid(phis @ truth - probe[:, 2])
            errors.append(float(np.abs(gap).mean()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02
    np.testing.assert_allclose(belief.mean, truth, atol=0.15)


def test_the_covariance_goes_to_rust_and_back_as_float64_bytes() -> None:
    """The belief keeps its covariance as float64 bytes, read and written whole by the
    update: the precision round-trips, one update is the Laplace step worked here in numpy,
    and bytes that are not float64s are an InputError naming them."""
    from satisfice import _core

    p = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]])
    mean = np.array([0.5, 0.2, -0.1])
    b = AbilityBelief.from_precision(mean, p, 0.0)
    assert isinstance(b.cov, bytes) and len(b.cov) == 9 * 8
    np.testing.assert_allclose(b.precision, p, atol=1e-12)
    latent = [0.3, 0.7, 0.1]  # two skills and a difficulty
    new = update_belief(b, latent, 1.0)
    # the same step in numpy: t solves t = y - s(a0 + v t); mean += t S phi;
    # S -= w / (1 + w v) (S phi)(S phi)' with w = s(1 - s) at the solution
    cov, phi = np.linalg.inv(p), np.array([1.0, 0.3, 0.7])
    sp = cov @ phi
    v, a0 = phi @ sp, mean @ phi - 0.1
    t = 0.0
    for _ in range(50):
        s = 1.0 / (1.0 + np.exp(-(a0 + v * t)))
        t -= (t - 1.0 + s) / (1.0 + v * s * (1.0 - s))
    s = 1.0 / (1.0 + np.exp(-(a0 + v * t)))
    w = s * (1.0 - s)
    np.testing.assert_allclose(new.mean, mean + t * sp, atol=1e-9)
    np.testing.assert_allclose(np.frombuffer(new.cov).reshape(3, 3),
                               cov - w / (1.0 + w * v) * np.outer(sp, sp), atol=1e-9)  # fmt: skip
    assert new.n_obs == 1.0
    with pytest.raises(InputError, match="float64 bytes, got 7 bytes"):
        _core.update_belief([0.0, 0.0], b"\0" * 7, [0.0, 0.0], 1.0)


def test_soft_scores_and_bad_input() -> None:
    belief = AbilityBelief.from_precision(np.zeros(2), np.eye(2), 0.0)
    half = update_belief(belief, [0.0, 0.0], 0.5)  # p = 0.5 already: nothing to learn
    np.testing.assert_allclose(half.mean, 0.0, atol=1e-12)
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        update_belief(belief, [0.0, 0.0], 1.5)
    with pytest.raises(InputError, match="2 values"):
        update_belief(belief, [0.0], 1.0)


def test_prior_strength_grows_with_evidence_and_is_capped() -> None:
    qm = QualityModel.prior(hash_buckets=0)
    k = qm.k

    def prec(n: float, source: str = "trained") -> float:
        p = ModelParams(0.0, (0.0,) * k, n, source)
        return float(prior_belief(qm, p).precision[0, 0])

    assert prec(0) < prec(10) < prec(100) < prec(200) == prec(5000)
    assert prec(0, "prior") > prec(0)  # a public benchmark score counts for something


def test_router_feedback_moves_the_model_and_persists(tmp_path: Path) -> None:
    router = Router()
    d = router.route(PROMPT)
    rid = d.request_id
    assert len(rid) == 32 and d.request_id == rid  # made once, uuid4 hex
    model = d.model

    def p_good() -> float:
        cands = router.route(PROMPT, quality_floor=0.0).candidates
        return next(c.p_good for c in cands if c.model == model)

    start = p_good()
    seen = [start]
    router.feedback(rid, 0.0)
    seen.append(p_good())
    with pytest.raises(InputError, match="already scored"):  # an answer counts once
        router.feedback(rid, 0.0)
    with pytest.raises(InputError, match="model must be a model id"):
        router.feedback(rid, 1.0, model=[model])  # type: ignore[arg-type]
    other = next(m for m in d.fallbacks if m != model)  # a fallback's answer: its own, once
    router.feedback(rid, 1.0, model=other)
    with pytest.raises(InputError, match="already scored"):
        router.feedback(rid, 1.0, model=other)
    assert p_good() == seen[-1]
    for _ in range(2):  # other requests of the same prompt, answered by the same model
        router.feedback(router.route(PROMPT).request_id, 0.0, model=model)
        seen.append(p_good())
    assert seen == sorted(seen, reverse=True) and seen[-1] < start - 0.02
    new = router.feedback(router.route(PROMPT).request_id, 1.0, model=model)
    assert p_good() > seen[-1] and new.n_obs == 4 and new.source == "feedback"

    policy_path, predictor_path = tmp_path / "policy.json", tmp_path / "pred.npz"
    router.save_policy(policy_path, predictor_path)
    assert json.loads(policy_path.read_text())["predictor"] == "pred.npz"  # beside the policy
    again = Router(router.registry, Policy.load(policy_path))
    cands = again.route(PROMPT, quality_floor=0.0).candidates
    assert next(c.p_good for c in cands if c.model == model) == pytest.approx(p_good(), abs=1e-6)


def test_feedback_for_another_model_and_unknown_ids() -> None:
    router = Router()
    d = router.route(PROMPT)
    other = next(c.model for c in d.candidates if c.model != d.model)
    before = router.policy.quality_model().params_for(router.registry[d.model])
    router.feedback(d.request_id, 1.0, model=other)
    after = router.policy.quality_model().params_for(router.registry[d.model])
    assert after == before  # only the model that answered is updated
    with pytest.raises(InputError, match="unknown request id"):
        router.feedback("nope", 1.0)
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        router.feedback(d.request_id, -0.1)


def test_log_is_bounded() -> None:
    log = FeedbackLog(capacity=2)
    a, b, c = (log.issue([float(i), 0.5], "m") for i in range(3))
    with pytest.raises(InputError):
        log.lookup(a)  # its slot now holds c
    assert log.lookup(b) == ((1.0, 0.5), "m", None)
    assert log.lookup(c) == ((2.0, 0.5), "m", None)


def test_log_keeps_what_each_id_was_issued_with() -> None:
    log = FeedbackLog(capacity=3)
    emb = bytes(range(64))
    short = log.issue([0.25, 0.5], "m1")
    with_emb = log.issue([1.0, 2.0], "m2", emb)
    longer = log.issue([1.0, 2.0, 3.0, 4.0], "m1")  # a predictor with more dimensions
    log.credit(short, "m3")  # a fallback answered
    assert log.lookup(short) == ((0.25, 0.5), "m3", None)
    assert log.lookup(with_emb) == ((1.0, 2.0), "m2", emb)
    assert log.lookup(longer) == ((1.0, 2.0, 3.0, 4.0), "m1", None)
    other = FeedbackLog(capacity=3)
    tag, seq, check = short[:4], short[4:16], short[16:]
    variants = (short.upper(), f" {short[:-1]}", f"{tag}{seq[:-2]}_0{check}", short + "0")
    variants = tuple(v for v in variants if v != short)  # an id with no letter a-f
    for bad in (other.issue([0.0], "m"), "", "nope", short[:-1] + "g", *variants):
        with pytest.raises(InputError, match="unknown request id"):
            log.lookup(bad)
    log.credit("nope", "m9")  # an unknown id credits nothing
