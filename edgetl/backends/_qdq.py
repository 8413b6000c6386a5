"""ONNX-to-ONNX passes shared by the backends at compile time: FP16 conversion and static QDQ.

ONNX Runtime and TensorRT both consume a QDQ model (QuantizeLinear/DequantizeLinear pairs around
the float ops); they differ only in the types and symmetry they need, which the caller passes.
Compile-time only: imports onnx and onnxruntime.quantization inside the functions.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import inspect
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgetl._lazy import require
from edgetl.config import CalibrationRecipe
from edgetl.errors import CompileError, ConfigError, DataError
from edgetl.tensors import TensorSpec, batch_size, batches, check_feeds, take

# Fewer samples than this cannot give stable activation ranges: refuse rather than ship a bad model.
MIN_CALIBRATION_SAMPLES = 10
# One sample per calibration inference: ORT's histogram collector stacks the batches of a stride
# with np.asarray, which fails when the last batch is smaller than the others.
_BATCH = 1
_SAMPLES_PER_COLLECT = 32  # bounds the intermediate tensors ORT keeps in memory between merges


@contextlib.contextmanager
def _quiet():
    """ORT's quantizer logs a warning per tensor on the root logger and prints its calibration
    progress; keep the console (and the compile stage's progress display) readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def to_fp16(onnx_in: Path, onnx_out: Path, keep_float_prefixes=()) -> dict[str, Any]:
    """Weights and activations in FP16, inputs and outputs kept FP32 so callers feed float32; the
    nodes a task keeps float (``keep_float_prefixes``, as for int8) stay FP32."""
    onnx = require("onnx", "FP16 conversion")
    float16 = require("onnxruntime.transformers.float16", "FP16 conversion")
    model = onnx.load(str(onnx_in))
    kept = prefixed_nodes(model, keep_float_prefixes)
    model = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=kept or None)
    onnx.save(model, str(onnx_out))
    return {"keep_float_prefixes": list(keep_float_prefixes), "kept_float_nodes": len(kept)} if kept else {}


def check_calibration(calibration: dict[str, np.ndarray] | None, recipe: CalibrationRecipe) -> dict[str, np.ndarray]:
    """Every input's samples by name, stacked on axis 0, and enough of them for stable ranges."""
    if not calibration:
        raise CompileError("int8 needs calibration samples (every input of the model, by name): none were given")
    if not all(isinstance(v, np.ndarray) for v in calibration.values()):
        raise CompileError("calibration samples must be numpy arrays, one per input name")
    n = batch_size(calibration)
    if n < MIN_CALIBRATION_SAMPLES:
        raise DataError(
            f"only {n} calibration samples (recipe {recipe.name!r} asks for {recipe.samples}); "
            f"int8 needs at least {MIN_CALIBRATION_SAMPLES}: add training samples or use fp16/fp32"
        )
    return calibration


def onnx_inputs(model) -> tuple[TensorSpec, ...]:
    """The graph inputs of an ONNX ``ModelProto`` (initializers listed as inputs left out)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    weights = {t.name for t in model.graph.initializer}
    return tuple(_value_spec(v, tensor_dtype_to_np_dtype) for v in model.graph.input if v.name not in weights)


def _value_spec(value, to_dtype) -> TensorSpec:
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
    return TensorSpec.of(value.name, to_dtype(tensor.elem_type), dims)


class _Reader:
    """CalibrationDataReader: one dict per sample with every input, and the ``set_range`` ORT uses
    for strides."""

    def __init__(self, calibration: dict[str, np.ndarray]):
        self.batches = list(batches(calibration, _BATCH))
        self._it: Iterator[dict[str, np.ndarray]] = iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.batches)


def _stride(n_batches: int) -> int:
    """Largest divisor of n_batches within the memory bound (ORT requires an exact divisor)."""
    most = max(1, _SAMPLES_PER_COLLECT // _BATCH)
    return max(d for d in range(1, most + 1) if n_batches % d == 0)


def _check_names(model, recipe: CalibrationRecipe) -> None:
    """A typo in keep_float_* would silently quantize what the user meant to protect."""
    ops = {n.op_type for n in model.graph.node}
    nodes = {n.name for n in model.graph.node}
    for field, wanted, present in (("keep_float_ops", recipe.keep_float_ops, ops), ("keep_float_nodes", recipe.keep_float_nodes, nodes)):
        missing = [w for w in wanted if w not in present]
        if missing:
            sample = ", ".join(sorted(present)[:12])
            raise ConfigError(
                f"calibration recipe {recipe.name!r}: field '{field}': {missing} not in the model "
                f"(it has: {sample}{' ...' if len(present) > 12 else ''})"
            )


def depthwise_convs(model) -> list[str]:
    """Names of the grouped (depthwise) Conv nodes."""
    return [n.name for n in model.graph.node
            if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def quantize_qdq(
    onnx_in: Path,
    onnx_out: Path,
    calibration: dict[str, np.ndarray],
    recipe: CalibrationRecipe,
    *,
    activation_type: str,
    weight_type: str,
    reduce_range: bool = False,
    op_types: list[str] | None = None,
    extra_options: dict[str, Any] | None = None,
    keep_float_prefixes: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    """Static QDQ quantization with ONNX Runtime's quantizer; returns the settings used.

    ``activation_type``/``weight_type`` are "int8" or "uint8". ``op_types`` restricts what is
    quantized (None: everything ONNX Runtime can quantize) before ``recipe.keep_float_ops`` is
    taken out of it; nodes whose names start with one of ``keep_float_prefixes`` stay float (a
    task's hint: a log-mel front end inside the graph).
    """
    onnx = require("onnx", "int8 quantization")
    q = require("onnxruntime.quantization", "int8 quantization")
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = check_calibration(calibration, recipe)
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    types = {"int8": q.QuantType.QInt8, "uint8": q.QuantType.QUInt8}
    quantizable = sorted(set(op_types or (set(QLinearOpsRegistry) | set(QDQRegistry))) - set(recipe.keep_float_ops))
    extra = {
        "ActivationSymmetric": recipe.symmetric_activations,
        "CalibStridedMinMax": None,  # set below, once the number of batches is known
        **({"CalibPercentile": recipe.percentile} if recipe.method == "percentile" else {}),
        **(extra_options or {}),
    }
    with tempfile.TemporaryDirectory(prefix="edgetl-qdq-") as tmp:
        prepared = _prepared(onnx_in, Path(tmp) / "prepared.onnx", quant_pre_process)
        model = onnx.load(str(prepared))
        _check_names(model, recipe)
        depthwise = depthwise_convs(model) if recipe.keep_float_depthwise else []
        kept_float = prefixed_nodes(model, keep_float_prefixes)
        check_feeds(onnx_inputs(model), take(calibration, slice(0, 1)), "calibration samples")
        reader = _Reader(calibration)
        extra["CalibStridedMinMax"] = _stride(len(reader))
        cache = _ranges_cache(q.quantize_static, prepared, calibration, recipe.method, quantizable, extra)
        try:
            with _quiet():
                q.quantize_static(
                    str(prepared), str(onnx_out), reader,
                    quant_format=q.QuantFormat.QDQ,
                    op_types_to_quantize=quantizable,
                    nodes_to_exclude=[*recipe.keep_float_nodes, *depthwise, *kept_float],
                    per_channel=recipe.per_channel,
                    reduce_range=reduce_range,
                    activation_type=types[activation_type],
                    weight_type=types[weight_type],
                    calibrate_method=methods[recipe.method],
                    extra_options=extra,
                    **cache,
                )
        except (ValueError, RuntimeError) as exc:
            raise CompileError(f"ONNX Runtime could not quantize {onnx_in.name}: {str(exc).splitlines()[0]}") from exc
        if recipe.keep_float_nodes:
            quantized = onnx.load(str(onnx_out))
            float_nodes(quantized, set(recipe.keep_float_nodes), model)
            onnx.save(quantized, str(onnx_out))
    return {
        "format": "QDQ",
        "method": recipe.method,
        **({"percentile": recipe.percentile} if recipe.method == "percentile" else {}),
        "samples": batch_size(calibration),
        "activations": activation_type,
        "weights": weight_type,
        "per_channel": recipe.per_channel,
        "reduce_range": reduce_range,
        "symmetric_activations": bool(extra["ActivationSymmetric"]),
        "keep_float_ops": list(recipe.keep_float_ops),
        "keep_float_nodes": list(recipe.keep_float_nodes),
        "keep_float_depthwise": len(depthwise),
        **({"keep_float_prefixes": list(keep_float_prefixes), "kept_float_nodes": len(kept_float)}
           if keep_float_prefixes else {}),
        "extra_options": {k: v for k, v in extra.items() if k != "CalibStridedMinMax"},
    }


def float_nodes(model, names: set[str], prepared) -> None:
    """Nodes ``names`` of a QDQ ``model`` compute in float on float tensors, inputs and outputs: an
    input that is DequantizeLinear(QuantizeLinear(x)) becomes x for that node; every reader of an output
    that goes through a Q/DQ pair (the node's own, or that of the Relu/Clip right after it) reads the
    float tensor instead; Q/DQ nodes nothing reads any more go. ``prepared``: the model the QDQ model
    was quantized from.

    ONNX Runtime's ``nodes_to_exclude`` keeps a node's weights float but not its edges: where the node
    that produces an input, or one that reads its output, is quantized, the tensor between them gets a
    Q/DQ pair, so a node kept float would still compute on and hand on int8-rounded activations, unlike
    OpenVINO's ignored scope and TensorRT's input-only Q/DQ. The neighbours across a removed pair then
    run float on that edge too (ONNX Runtime fuses a node into an int8 kernel only between Q/DQ pairs):
    that is what keeping a node float costs in speed, and the fallback measures it."""
    producer = {out: n for n in model.graph.node for out in n.output}
    floats: dict[str, str] = {}  # quantized tensor -> its float version, once for all its readers

    def float_of(tensor: str) -> str:
        if tensor not in floats:
            folded = _folded_activation(model, prepared, tensor)
            floats[tensor] = folded.output[0] if folded else tensor
            if folded:
                model.graph.node.append(folded)  # placed by the topological sort below
        return floats[tensor]

    for node in [n for n in model.graph.node if n.name in names]:
        for i, tensor in enumerate(node.input):
            dq = producer.get(tensor)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = float_of(q.input[0])
        for tensor in _outputs_through_activation(model, node):
            for dq in _dequantized_copies(model, tensor):
                _read_instead(model, dq, float_of(tensor))
    _drop_unread_qdq(model)
    _sort_topologically(model)


def _outputs_through_activation(model, node) -> list[str]:
    """``node``'s outputs and, where one's only reader is a Relu or Clip, that reader's output: ONNX
    Runtime's quantizer folds such an activation into a quantized node's output range, so a kept node's
    output pair sits after it when the node is excluded, and on the node's output when it is not."""
    found = []
    for tensor in node.output:
        found.append(tensor)
        readers = [n for n in model.graph.node if tensor in n.input]
        if len(readers) == 1 and readers[0].op_type in ("Relu", "Clip"):
            found.append(readers[0].output[0])
    return found


def _dequantized_copies(model, tensor: str) -> list:
    """The DequantizeLinear nodes that give ``tensor`` back after its QuantizeLinear."""
    quantized = {n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor}
    return [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in quantized]


def _read_instead(model, dq, tensor: str) -> None:
    """Every reader of ``dq``'s output reads ``tensor``; a graph output keeps its name through an Identity."""
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == dq.output[0]:
                node.input[i] = tensor
    if dq.output[0] in {o.name for o in model.graph.output}:
        onnx = require("onnx")
        model.graph.node.remove(dq)
        model.graph.node.append(onnx.helper.make_node("Identity", [tensor], [dq.output[0]], name=f"{dq.name}/float"))


def _sort_topologically(model) -> None:
    """ONNX wants every node after the producers of its inputs; the nodes put back above were appended.
    Stable: nodes already in order keep it."""
    produced_by = {out: i for i, n in enumerate(model.graph.node) for out in n.output}
    nodes = list(model.graph.node)
    done: set[int] = set()
    order: list[int] = []

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, expanded = stack.pop()
            if j in done:
                continue
            if expanded:
                done.add(j)
                order.append(j)
                continue
            stack.append((j, True))
            for tensor in reversed(nodes[j].input):
                k = produced_by.get(tensor)
                if k is not None and k not in done:
                    stack.append((k, False))

    for i in range(len(nodes)):
        visit(i)
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)


def _folded_activation(model, prepared, tensor: str):
    """ONNX Runtime drops a Relu or Clip that follows a quantized op and lets the uint8 range of the
    op's output clip instead; read before its quantization, ``tensor`` misses that activation. The
    prepared model's node, to compute it again from ``tensor`` (None where nothing was dropped)."""
    present = {n.name for n in model.graph.node}
    folded = next((n for n in prepared.graph.node if tensor in n.output and n.name not in present), None)
    if folded is None:
        return None
    onnx = require("onnx")
    node = onnx.NodeProto()
    node.CopyFrom(folded)
    node.name = f"{folded.name}/float"
    node.input[0] = tensor
    node.output[:] = [f"{tensor}/float"]
    have = {t.name for t in model.graph.initializer}
    for constant in prepared.graph.initializer:  # Clip's min and max
        if constant.name in node.input[1:] and constant.name not in have:
            model.graph.initializer.append(constant)
    return node


def _drop_unread_qdq(model) -> None:
    """Q/DQ nodes whose outputs nothing reads, and the scales and zero points only they read."""
    outputs = {o.name for o in model.graph.output}
    params: set[str] = set()
    while True:
        read = {t for n in model.graph.node for t in n.input} | outputs
        unread = [n for n in model.graph.node
                  if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not read.intersection(n.output)]
        if not unread:
            break
        for n in unread:
            params.update(n.input[1:])
            model.graph.node.remove(n)
    read = {t for n in model.graph.node for t in n.input}
    for tensor in [t for t in model.graph.initializer if t.name in params and t.name not in read]:
        model.graph.initializer.remove(tensor)


_RANGES: Path | None = None  # this process's folder of activation ranges (removed at exit)


def _ranges_cache(quantize_static, prepared: Path, calibration: dict[str, np.ndarray], method: str,
                  quantizable: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    """``calibration_cache_path`` for ``quantize_static``: the activation ranges of one prepared model,
    calibration set and method are measured once per process and reused by every build that differs
    only in what the ranges do not depend on (int8 types, per-channel weights, reduce_range, nodes kept
    float). Calibration is most of an int8 build, and an ``edgetl optimize`` search builds many of
    those. The key holds everything the calibrator reads; the folder lives and dies with the process,
    so nothing stale is ever trusted. {} for an ONNX Runtime without the parameter."""
    global _RANGES
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        return {}
    key = hashlib.sha256(Path(prepared).read_bytes())
    key.update(json.dumps([method, quantizable, extra], sort_keys=True, default=str).encode())
    for name in sorted(calibration):
        array = np.ascontiguousarray(calibration[name])
        key.update(f"{name}{array.dtype}{array.shape}".encode())
        key.update(memoryview(array).cast("B"))
    if _RANGES is None:
        _RANGES = Path(tempfile.mkdtemp(prefix="edgetl-ranges-"))
        atexit.register(shutil.rmtree, _RANGES, True)
    return {"calibration_cache_path": str(_RANGES / f"{key.hexdigest()}.json")}


def _prepared(onnx_in: Path, dest: Path, quant_pre_process) -> Path:
    """Shape inference + constant folding first, as ONNX Runtime recommends: it gives the quantizer
    the shapes it needs and fewer tensors to calibrate. Its symbolic shape inference raises a
    TypeError on transformer exports (dynamic sequence axes, a known ONNX Runtime problem): those
    are prepared with ONNX's own shape inference only."""
    try:
        try:
            quant_pre_process(str(onnx_in), str(dest), skip_symbolic_shape=False)
        except TypeError:
            quant_pre_process(str(onnx_in), str(dest), skip_symbolic_shape=True)
    except Exception as exc:  # shape inference names the op it cannot handle
        raise CompileError(f"cannot prepare {onnx_in.name} for quantization: {str(exc).strip().splitlines()[0]}") from exc
    return dest


def prefixed_nodes(model, prefixes) -> list[str]:
    """Names of the nodes a task's keep-float hint names: a node's name, or the PyTorch module path
    the exporter recorded for it (``frontend.mel`` for the ops of ``self.frontend.mel``), starts
    with one of ``prefixes``. A prefix no node has is the task's bug, named."""
    if not prefixes:
        return []
    paths = {n.name: (n.name, _module_path(n)) for n in model.graph.node}
    for prefix in prefixes:
        if not any(path.startswith(prefix) for pair in paths.values() for path in pair):
            names = list(paths)
            raise CompileError(f"the task's keep_float_prefixes {prefix!r} matches no node or module of the model "
                               f"(nodes: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''})")
    return [name for name, pair in paths.items() if any(p.startswith(tuple(prefixes)) for p in pair)]


def _module_path(node) -> str:
    """The dotted module path of an op of the dynamo exporter (its ``name_scopes``, op name last)."""
    import ast

    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    try:
        parts = [s for s in ast.literal_eval(scopes) if s] if scopes else []
    except (ValueError, SyntaxError):
        return ""
    return ".".join(parts[:-1])


def fuse_transformer(onnx_in: Path, onnx_out: Path, model_type: str) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer (``onnxruntime.transformers``): LayerNorm, residual Add +
    LayerNorm (SkipLayerNormalization), bias + GELU and, where it recognises the pattern, attention
    become single contrib ops that every ONNX Runtime CPU build has. ``opt_level=1``: only ONNX
    Runtime's basic, hardware-independent passes, so the saved graph runs on any CPU. Returns the
    count of each fused op."""
    optimizer = require("onnxruntime.transformers.optimizer", "transformer fusion")
    if model_type not in optimizer.MODEL_TYPES:  # the optimizer would silently fuse nothing
        raise CompileError(f"the task's fusion {model_type!r} is not a model type of ONNX Runtime's transformer "
                           f"optimizer: choose one of {', '.join(sorted(optimizer.MODEL_TYPES))}")
    try:
        with _quiet():
            model = optimizer.optimize_model(str(onnx_in), model_type=model_type, opt_level=1)
    except Exception as exc:  # the optimizer raises whatever its pattern matchers hit
        raise CompileError(f"ONNX Runtime's {model_type} optimizer failed on {onnx_in.name}: {str(exc).splitlines()[0]}") from exc
    model.save_model_to_file(str(onnx_out))
    return {op: n for op, n in model.get_fused_operator_statistics().items() if n}


def quantize_dynamic_int8(onnx_in: Path, onnx_out: Path, *, reduce_range: bool, op_types: list[str] | None = None,
                          keep_float_prefixes: tuple[str, ...] | list[str] = (), per_channel: bool = False,
                          fusion: str | None = None) -> dict[str, Any]:
    """Dynamic int8 with ONNX Runtime's quantizer: int8 weights, activations quantized at run time
    (no calibration). Pays on transformers where static QDQ of every op does not. ``fusion``: a model
    type of ONNX Runtime's transformer optimizer ("bert") to fuse with first (``fuse_transformer``)."""
    onnx = require("onnx", "int8 quantization")
    q = require("onnxruntime.quantization", "int8 quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edgetl-dyn-") as tmp:
        fused = fuse_transformer(onnx_in, Path(tmp) / "fused.onnx", fusion) if fusion else None
        source = Path(tmp) / "fused.onnx" if fusion else onnx_in
        prepared = _prepared(source, Path(tmp) / "prepared.onnx", quant_pre_process)
        kept_float = prefixed_nodes(onnx.load(str(prepared)), keep_float_prefixes)
        try:
            with _quiet():
                q.quantize_dynamic(str(prepared), str(onnx_out), weight_type=q.QuantType.QInt8,
                                   op_types_to_quantize=list(op_types) if op_types else None,
                                   nodes_to_exclude=kept_float, reduce_range=reduce_range, per_channel=per_channel)
        except (ValueError, RuntimeError) as exc:
            raise CompileError(f"ONNX Runtime could not quantize {onnx_in.name}: {str(exc).splitlines()[0]}") from exc
    return {
        "format": "dynamic",
        "weights": "int8",
        "activations": "uint8, quantized at run time",
        "reduce_range": reduce_range,
        "per_channel": per_channel,
        **({"fusion": fusion, "fused_ops": fused} if fusion else {}),
        **({"op_types": list(op_types)} if op_types else {}),
        **({"keep_float_prefixes": list(keep_float_prefixes), "kept_float_nodes": len(kept_float)}
           if keep_float_prefixes else {}),
    }


def prepare(onnx_in: Path, dest: Path) -> Path:
    """The model exactly as ``quantize_qdq`` hands it to the quantizer (``_prepared``): its node names
    and float weights are the ones a QDQ model built from ``onnx_in`` refers to."""
    require("onnxruntime.quantization", "int8 quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    return _prepared(onnx_in, dest, quant_pre_process)
