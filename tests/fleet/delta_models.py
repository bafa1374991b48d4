"""Small ONNX models for the delta tests, built with onnx.helper from numpy weights."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Weights = dict[str, np.ndarray]


def weights(seed: int = 0) -> Weights:
    """W1 FP32 [64,128], b1 FP32 [128], W2 FP16 [128,128], W3 FP32 [128,10], b3 FP32 [10],
    order INT64 [10] (a column permutation of the output)."""
    rng = np.random.default_rng(seed)
    return {
        "W1": (rng.standard_normal((64, 128)) * 0.1).astype(np.float32),
        "b1": (rng.standard_normal(128) * 0.1).astype(np.float32),
        "W2": (rng.standard_normal((128, 128)) * 0.1).astype(np.float16),
        "W3": (rng.standard_normal((128, 10)) * 0.1).astype(np.float32),
        "b3": (rng.standard_normal(10) * 0.1).astype(np.float32),
        "order": rng.permutation(10).astype(np.int64),
    }


def mlp(
    w: Weights,
    *,
    rename: dict[str, str] | None = None,
    extra_node: bool = False,
    doc: str = "",
    float_data: tuple[str, ...] = (),
) -> onnx.ModelProto:
    """y = gather(relu(relu(x W1 + b1) W2) W3 + b3, order); x: FP32 [batch, 64].

    ``rename`` renames initializers (as an exporter may), ``extra_node`` adds an
    Identity, ``doc`` sets the graph's doc_string, ``float_data`` names
    initializers stored in typed fields instead of raw_data.
    """
    names = {k: (rename or {}).get(k, k) for k in w}
    nodes = [
        helper.make_node("MatMul", ["x", names["W1"]], ["h1"]),
        helper.make_node("Add", ["h1", names["b1"]], ["h2"]),
        helper.make_node("Relu", ["h2"], ["h3"]),
        helper.make_node("Cast", [names["W2"]], ["W2f"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["h3", "W2f"], ["h4"]),
        helper.make_node("Relu", ["h4"], ["h5"]),
        helper.make_node("MatMul", ["h5", names["W3"]], ["h6"]),
        helper.make_node("Add", ["h6", names["b3"]], ["h7"]),
        helper.make_node("Gather", ["h7", names["order"]], ["y"], axis=1),
    ]
    if extra_node:
        nodes[-1].output[0] = "y0"
        nodes.append(helper.make_node("Identity", ["y0"], ["y"]))
    inits = []
    for key, value in w.items():
        if key in float_data:
            tensor = helper.make_tensor(
                names[key], helper.np_dtype_to_tensor_dtype(value.dtype), value.shape, value.ravel()
            )
        else:
            tensor = numpy_helper.from_array(value, names[key])
        inits.append(tensor)
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
        doc_string=doc,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def mlp_bytes(w: Weights, **kwargs: object) -> bytes:
    return mlp(w, **kwargs).SerializeToString()  # type: ignore[arg-type]


def run(model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
