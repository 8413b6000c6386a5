"""Accuracy-aware fallback: which quantized layers cost the most accuracy, and the fewest to keep float.

``rank_layers`` scores every quantized node of an int8 model without rebuilding it per node: it
builds one QDQ model with ONNX Runtime's quantizer (the recipe's calibration), then for each node that
touches a Q/DQ pair (a "layer": Conv, Gemm, MatMul, and the activation ops between them, Add, Mul,
Sigmoid, GlobalAveragePool, Concat ...) makes a copy of that graph in which that node alone computes
in float, as ``recipe.keep_float_nodes`` builds it (float weights, no Q/DQ on its input and output
edges, everything else quantized as before), and runs it on ONNX Runtime CPU. Ranking only the
layers with weights left the tensors around residual Adds int8 whatever was kept: on
EfficientNet-Lite0 all 50 Conv/Gemm float still lost 0.28-0.56 pp, by calibration recipe.

The score of a layer is the share of the int8 model's output error (mean squared difference from
the fp32 reference, over every float output) that goes away when that layer alone stays float: 0.66
means two thirds of it. Larger = more sensitive; near zero or negative = keeping it float buys
nothing. It needs no labels and no softmax, so it ranks any task's float outputs. Measured on the
tiny test model: the top-1 disagreement with fp32 on the few samples ranking can afford tied every
layer at zero, and the KL divergence of the softmax (about 1e-6 there: its logits are small) gave
near-zero scores, while this score put the layers first whose float build cuts the error most.

``recover`` then keeps the 1, 2, 4 ... most sensitive layers float, through the caller's
``measure_drop`` (a real build of the candidate, in its own runtime, on the validation split),
until the drop meets the budget, and bisects between the last count that failed and the first that met.

Compile-time only: imports onnx and onnxruntime inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl._lazy import require
from edgetl.config import CalibrationRecipe
from edgetl.tensors import batch_size, batches, concat, take

# Bounds the cost of ranking: (quantized nodes + 1) sessions, each run on at most this many samples.
MAX_SAMPLES = 64
_BATCH = 16


@dataclass(frozen=True)
class LayerScore:
    """One quantized layer: its ONNX node name (as ``recipe.keep_float_nodes`` takes it), its op type,
    and the share of the int8 output error that goes away when it alone stays float (see above)."""

    node: str
    op_type: str
    score: float


@dataclass
class Recovery:
    """What ``recover`` found: the layers kept float, the drop they gave (None: nothing was measured),
    whether it meets the budget, and every count tried with its drop, in order."""

    kept: tuple[str, ...]
    drop_pp: float | None
    met: bool
    tried: list[tuple[int, float]] = field(default_factory=list)


def rank_layers(onnx_path: Path, calibration: dict[str, np.ndarray], recipe: CalibrationRecipe,
                feeds: dict[str, np.ndarray], reference: dict[str, np.ndarray], work_dir: Path,
                *, options: Mapping[str, Any] | None = None, threads: int | None = None,
                should_stop: Callable[[], bool] = lambda: False) -> list[LayerScore] | None:
    """Every quantized node (``_quantized_nodes``) of a QDQ model built from ``onnx_path`` with
    ``recipe``, most sensitive first, measured on the first ``MAX_SAMPLES`` samples of ``feeds`` against
    ``reference`` (the fp32 outputs for those feeds, by output name). Layers the recipe already keeps
    float are not quantized, so not ranked. ``work_dir`` receives the prepared and the QDQ model.

    The activation and weight types are the ones the onnxruntime backend chooses for the CPU of
    ``options`` (a profile's ``cpu_arch``/``cpu_flags``; None: this machine's): which layers are
    sensitive hardly depends on them, and the ranking runs fused on ONNX Runtime here. Cost:
    (quantized nodes + 1) sessions, each running ``MAX_SAMPLES`` samples through the whole model:
    linear in nodes x samples; ``threads``: ONNX Runtime's (None: all cores). ``should_stop()`` is
    asked before each node (the search's time budget): None when it said stop, since a partial
    ranking would put the unmeasured nodes last."""
    onnx = require("onnx", "layer sensitivity")
    from edgetl._cpu import target_cpu
    from edgetl.backends._qdq import prepare, quantize_qdq
    from edgetl.backends.onnxruntime import choose_int8_types

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    n = min(batch_size(feeds), MAX_SAMPLES)
    feeds = take(feeds, slice(0, n))
    reference = {k: np.asarray(v)[:n] for k, v in reference.items()}
    cpu = target_cpu(dict(options or {}))
    types = choose_int8_types(set(cpu.flags), cpu.arch)
    qdq_path = work_dir / "model.qdq.onnx"
    quantize_qdq(Path(onnx_path), qdq_path, calibration, recipe, activation_type=types["activations"],
                 weight_type=types["weights"], reduce_range=types["reduce_range"])
    qdq = onnx.load(str(qdq_path))
    prepared = onnx.load(str(prepare(Path(onnx_path), work_dir / "prepared.onnx")))
    base = _error(_run(qdq, feeds, threads), reference)
    scores = []
    named = {n.name for n in prepared.graph.node if n.name}  # what keep_float_nodes can name
    for node in [n for n in _quantized_nodes(qdq) if n.name in named]:
        if should_stop():
            return None
        floated = _with_float_layer(qdq, prepared, node.name)
        gain = base - _error(_run(floated, feeds, threads), reference)
        scores.append(LayerScore(node.name, node.op_type, gain / base if base > 0 else 0.0))
    return sorted(scores, key=lambda s: -s.score)  # stable: equal scores keep the graph's order


def recover(ranked: list[LayerScore], measure_drop: Callable[[tuple[str, ...]], float], budget_pp: float,
            *, max_layers: int, should_stop: Callable[[], bool]) -> Recovery:
    """The fewest of the most sensitive layers (``ranked``, most sensitive first) to keep float so that
    ``measure_drop(kept) <= budget_pp``: 1, 2, 4 ... layers up to ``max_layers``, then a bisection
    between the last count that failed and the first that met (drops are assumed to fall as more
    layers stay float; where they do not, the smallest count measured to meet is kept).

    ``should_stop()`` is asked before every measurement (the search's time budget): what was found
    so far is returned. Unmet, ``kept`` is the count with the lowest drop measured."""
    names = tuple(s.node for s in ranked)
    limit = min(max_layers, len(names))
    tried: list[tuple[int, float]] = []

    def meets(count: int) -> bool:
        tried.append((count, float(measure_drop(names[:count]))))
        return tried[-1][1] <= budget_pp

    failed, met, count = 0, None, 1
    while count <= limit and not should_stop():
        if meets(count):
            met = count
            break
        failed, count = count, (limit if count < limit < 2 * count else 2 * count)
    while met is not None and met - failed > 1 and not should_stop():
        middle = (failed + met) // 2
        if meets(middle):
            met = middle
        else:
            failed = middle
    return _recovery(names, tried, met)


def _recovery(names: tuple[str, ...], tried: list[tuple[int, float]], met: int | None) -> Recovery:
    if not tried:
        return Recovery((), None, False, tried)
    count = met if met is not None else min(tried, key=lambda t: (t[1], t[0]))[0]
    drop = next(d for k, d in tried if k == count)
    return Recovery(names[:count], drop, met is not None, tried)


# -- the QDQ graph ---------------------------------------------------------------------------------
def _quantized_nodes(model) -> list:
    """Every node that reads a dequantized tensor (weights or activations) or whose output is
    quantized, in graph order: Conv, Gemm, MatMul, and the activation ops between them (Add, Mul,
    Sigmoid, GlobalAveragePool, Concat, Reshape ...). Each is a lever of ``keep_float_nodes``: kept
    float, its weights and the Q/DQ pairs on its input and output edges go (``_qdq.float_nodes``)."""
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    return [n for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and (dequantized & set(n.input) or quantized & set(n.output))]


def _with_float_layer(qdq, prepared, name: str):
    """A copy of ``qdq`` in which node ``name`` alone is float, as ``recipe.keep_float_nodes`` builds
    it: its constants are the float initializers of the prepared model the QDQ model was built from,
    and its input and output activations are read before quantization (``_qdq.float_nodes``)."""
    onnx = require("onnx")
    from edgetl.backends._qdq import float_nodes

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    producer = {out: n for n in model.graph.node for out in n.output}
    weights = {t.name for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == name)
    source = next(n for n in prepared.graph.node if n.name == name)
    float_weights = {t.name: t for t in prepared.graph.initializer}
    for i, tensor in enumerate(node.input):
        dq = producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in weights:
            continue
        if i < len(source.input) and source.input[i] in float_weights:
            weight = onnx.TensorProto()
            weight.CopyFrom(float_weights[source.input[i]])
            weight.name = f"{source.input[i]}/float"
            model.graph.initializer.append(weight)
            node.input[i] = weight.name
    float_nodes(model, {name}, prepared)
    return model


def _run(model, feeds: dict[str, np.ndarray], threads: int | None) -> dict[str, np.ndarray]:
    ort = require("onnxruntime", "layer sensitivity")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.log_severity_level = 3  # a copy's int8 weights that nothing reads go, with a warning each
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    parts = [dict(zip(names, session.run(names, part), strict=True)) for part in batches(feeds, _BATCH)]
    return concat(parts)


def _error(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """Mean squared difference from the reference, summed over the float outputs."""
    return sum(float(np.mean((np.asarray(outputs[name], np.float64) - np.asarray(ref, np.float64)) ** 2))
               for name, ref in reference.items() if name in outputs and np.issubdtype(np.asarray(ref).dtype, np.floating))
