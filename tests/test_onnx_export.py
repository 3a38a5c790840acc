"""The ONNX export computes exactly what the Rust DispatchTable computes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from satisfice import Policy, QualityModel, Registry, Router
from satisfice.eval.evaluate import params_for_models, shipped_predictor
from satisfice.eval.onnx_export import export_onnx, onnx_bytes

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

PROMPTS = [
    "Hi! Can you help me today?",
    "Prove that the square root of 2 is irrational.",
    "Write a Python function that merges two sorted lists.\n```python\ndef merge(a, b):\n```",
    "Which of these is prime? A) 21 B) 27 C) 29 D) 33",
    "Résume ce texte en deux phrases : " + "la réunion est déplacée à jeudi. " * 40,
    "Extract the invoice number as JSON: INV-2024-0042, due 2024-06-01, total $1,250.00",
]


@pytest.mark.parametrize(
    "qm", [shipped_predictor(), QualityModel.prior()], ids=["shipped", "prior"]
)
def test_onnxruntime_matches_the_rust_table(qm: QualityModel) -> None:
    registry = Registry.default()
    router = Router(registry, Policy(quality=qm))
    params = params_for_models(qm, registry.ids, registry)
    session = ort.InferenceSession(onnx_bytes(qm, params))
    x = qm.featurizer().featurize_batch(PROMPTS)
    p_onnx, latent = session.run(None, {"features": x})
    assert p_onnx.shape == (len(PROMPTS), len(registry.ids)) and latent.shape[1] == qm.k + 1
    compared = 0
    for i, prompt in enumerate(PROMPTS):
        for c in router.route(prompt, quality_floor=0.0).candidates:
            assert p_onnx[i, registry.ids.index(c.model)] == pytest.approx(c.p_good, abs=1e-5)
            compared += 1
    assert compared >= len(PROMPTS) * (len(registry.ids) - 2)
    np.testing.assert_allclose(latent, qm.latent(x), rtol=1e-5, atol=1e-5)


def test_metadata_names_models_and_features(tmp_path: Path) -> None:
    import onnx

    qm = shipped_predictor()
    # (IRT only: the graph holds no embedding logistic, and the trained models carry one)
    params = {m: qm.models[m].replace(emb=None) for m in list(qm.models)[:3]}
    path = f"{tmp_path}/p.onnx"
    export_onnx(qm, params, path)
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(meta["models"]) == list(params)
    assert int(meta["hash_buckets"]) == qm.hash_buckets and int(meta["k"]) == qm.k
