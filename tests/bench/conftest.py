"""A tiny real ONNX classifier (Conv -> ReLU -> global pool -> Gemm, 5 classes) and its inputs,
built with onnx.helper so the harness tests need neither torch nor a trained run."""

from __future__ import annotations

import numpy as np
import pytest


def build_tiny_onnx(path, classes: int = 5, size: int = 8, static_batch: int | None = None) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "b": rng.standard_normal(8).astype(np.float32),
        "fc_w": rng.standard_normal((8, classes)).astype(np.float32),
        "fc_b": rng.standard_normal(classes).astype(np.float32),
    }
    batch = static_batch or "batch"
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    build_tiny_onnx(path)
    return path


@pytest.fixture(scope="session")
def tiny_inputs():
    return np.random.default_rng(1).standard_normal((20, 3, 8, 8)).astype(np.float32)


@pytest.fixture
def ort_session(tiny_onnx):
    from edgetl.backends import get_backend

    with get_backend("onnxruntime").load(tiny_onnx, threads=1) as session:
        yield session


def build_two_input_onnx(path, vocab: int = 50, classes: int = 4) -> None:
    """A text-like classifier: int64 ``ids`` and ``mask`` (batch, sequence) -> masked mean embedding -> logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"emb": rng.standard_normal((vocab, 6)).astype(np.float32),
               "fc_w": rng.standard_normal((6, classes)).astype(np.float32),
               "fc_b": rng.standard_normal(classes).astype(np.float32),
               "axis1": np.array([1], np.int64), "axis2": np.array([2], np.int64)}
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "ids"], ["e"]),
            helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
            helper.make_node("Mul", ["e", "m3"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axis1"], ["pooled"], keepdims=0),
            helper.make_node("Gemm", ["pooled", "fc_w", "fc_b"], ["logits"]),
        ],
        "two_inputs",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
