"""Export a QualityModel to ONNX, the interchange format for other runtimes.

The router itself evaluates the same maths exactly in Rust (faster than any runtime call
for one prompt); ONNX is for serving the predictor elsewhere or inspecting it. The graph
takes the Rust Featurizer's vectors and returns, for the exported models in order,

    latent = features @ W + c                      (N, k+1): skills e(x), then difficulty d(x)
    p_good = sigmoid(e(x) @ ability' + bias - d(x))  (N, M)

Model ids, the feature version, hash buckets and seed travel in the metadata, so a reader
can check it featurises prompts the same way. Needs the `onnx` package (the `train` extra);
run it with onnxruntime (the `onnx` extra).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from ..errors import ConfigError
from ..predict import ModelParams, QualityModel

__all__ = ["OPSET", "export_onnx", "onnx_bytes"]

OPSET = 17


def onnx_bytes(qm: QualityModel, params: Mapping[str, ModelParams]) -> bytes:
    """The serialised ONNX model for `qm` with `params` (model id -> parameters, in order)."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ConfigError("ONNX export needs onnx: pip install 'satisfice[train]'") from None
    if not params:
        raise ConfigError("export at least one model's parameters")
    with_emb = [m for m, p in params.items() if p.emb is not None]
    if with_emb:
        raise ConfigError(
            f"models {with_emb[:3]} have an embedding logistic, which the ONNX graph does not "
            "hold (its input is the feature vector): train with --no-embedding to export"
        )
    k = qm.k
    ids = list(params)
    ability = np.array([params[m].ability for m in ids], dtype=np.float32).reshape(len(ids), k)
    bias = np.array([params[m].bias for m in ids], dtype=np.float32)

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.ascontiguousarray(value), name)

    inits = [
        const("W", qm.weights.astype(np.float32)),
        const("c", qm.intercept.astype(np.float32)),
        const("ability_T", ability.T.copy()),
        const("bias", bias),
        const("e_start", np.array([0], dtype=np.int64)),
        const("e_end", np.array([k], dtype=np.int64)),
        const("d_end", np.array([k + 1], dtype=np.int64)),
        const("axis1", np.array([1], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("MatMul", ["features", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "c"], ["latent"]),
        helper.make_node("Slice", ["latent", "e_start", "e_end", "axis1"], ["skills"]),
        helper.make_node("Slice", ["latent", "e_end", "d_end", "axis1"], ["difficulty"]),
        helper.make_node("MatMul", ["skills", "ability_T"], ["ea"]),
        helper.make_node("Add", ["ea", "bias"], ["eab"]),
        helper.make_node("Sub", ["eab", "difficulty"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p_good"]),
    ]
    graph = helper.make_graph(
        nodes,
        f"satisfice_{qm.name}",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", qm.dim])],
        [
            helper.make_tensor_value_info("p_good", TensorProto.FLOAT, ["N", len(ids)]),
            helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["N", k + 1]),
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        producer_name="satisfice",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string="P(good | model, prompt) from satisfice Featurizer vectors",
    )
    model.ir_version = 8  # readable by every onnxruntime since 1.10
    meta = {
        "models": json.dumps(ids),
        "feature_version": str(qm.feature_version),
        "hash_buckets": str(qm.hash_buckets),
        "seed": str(qm.seed),
        "k": str(k),
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def export_onnx(
    qm: QualityModel, params: Mapping[str, ModelParams], path: str | os.PathLike[str]
) -> None:
    """Write `onnx_bytes(qm, params)` to `path`: built first, then written whole (an
    export that failed had left `path` truncated)."""
    from .._atomic import write_atomic

    data = onnx_bytes(qm, params)
    write_atomic(os.fspath(path), lambda f: f.write(data))
