"""ONNX Runtime backend (CPU execution provider).

Artifacts (one ONNX file each, ``model.<precision>.onnx``):

- fp32: the exported graph optimised offline at ``ORT_ENABLE_EXTENDED`` and saved;
- fp16: weights and activations in float16, float32 inputs/outputs;
- int8: static QDQ from the calibration samples (every input, by name), with the activation/weight types that are fast on
  the target's CPU (see ``choose_int8_types``); or, where the task's hint says ``scheme: "dynamic"``,
  ``quantize_dynamic`` (after ONNX Runtime's transformer fusion where the hint names a ``fusion``).

``compile`` options (all optional):

- ``recipe``: ``CalibrationRecipe`` for int8 (``None``: the defaults of ``CalibrationRecipe``);
- ``threads``: threads for the optimisation session (the saved model does not depend on it);
- ``cpu_arch``, ``cpu_flags``: the device's CPU, from its profile (``CpuOptions``), to choose int8
  types for; left out: this machine's. An x86 workstation compiles S8S8 for a Raspberry Pi this way;
- ``int8_types``: ``"u8s8"`` or ``"s8s8"`` (activations x weights), over ``choose_int8_types``'s
  choice (``edgetl optimize`` searches the one that can win on the device's CPU, see ``variants``);
  either keeps the CPU's reduce_range rule. Per-channel or per-tensor weights: the recipe's ``per_channel``.

Load/run never imports torch: sessions run on the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgetl._cpu import TargetCpu, target_cpu
from edgetl._lazy import available, require
from edgetl.backends.base import Compiled, CpuBackendBase, SearchDevice, SessionBase, Variant
from edgetl.config import CalibrationRecipe
from edgetl.errors import ArtifactError, CompileError
from edgetl.tensors import TensorSpec


def choose_int8_types(flags: set[str], machine: str) -> dict[str, Any]:
    """Activation/weight types that ONNX Runtime's CPU kernels (MLAS) run fastest, and why."""
    cpu = TargetCpu(machine, frozenset(flags), "")
    if cpu.is_arm:
        return {"activations": "int8", "weights": "int8", "reduce_range": False,
                "why": "ARM64: S8S8 uses the signed dot-product (sdot) kernels; ONNX Runtime's default for QDQ"}
    if cpu.vnni:
        found = ", ".join(sorted(cpu.vnni))
        return {"activations": "uint8", "weights": "int8", "reduce_range": False,
                "why": f"x86 with VNNI ({found}): U8S8 maps onto vpdpbusd without saturation"}
    if "avx2" in flags or "avx512bw" in flags:
        return {"activations": "uint8", "weights": "int8", "reduce_range": True,
                "why": "x86 AVX2/AVX-512 without VNNI: U8S8 is fastest, 7-bit weights (reduce_range) "
                       "avoid the int16 saturation of vpmaddubsw"}
    return {"activations": "uint8", "weights": "int8", "reduce_range": False,
            "why": "no AVX2/VNNI/NEON flags found: U8S8, ONNX Runtime's most widely supported combination"}


INT8_TYPES = {"u8s8": ("uint8", "int8"), "s8s8": ("int8", "int8")}


def int8_types(cpu: TargetCpu, wanted: str | None) -> dict[str, Any]:
    """``choose_int8_types`` for ``cpu``, or the types ``wanted`` ("u8s8"/"s8s8") with the reduce_range
    that suits them there."""
    chosen = choose_int8_types(set(cpu.flags), cpu.arch)
    if wanted is None:
        return chosen
    if wanted not in INT8_TYPES:
        raise CompileError(f"onnxruntime option int8_types {wanted!r}: choose one of {', '.join(INT8_TYPES)}")
    activations, weights = INT8_TYPES[wanted]
    if activations == chosen["activations"]:
        return {**chosen, "why": f"int8_types {wanted}: {chosen['why']}"}
    # reduce_range is the CPU's rule either way: on x86 ONNX Runtime runs S8S8 through its U8S8
    # kernels (shifting the activations), so without VNNI full 8-bit weights saturate there too
    # (EfficientNet-Lite0 on an AVX2 EPYC: fused outputs 15% off the unfused QDQ model's, against 1.4%
    # with 7 bits); ARM has no int16 step in either type.
    default = "u8s8" if chosen["activations"] == "uint8" else "s8s8"
    return {"activations": activations, "weights": weights, "reduce_range": chosen["reduce_range"],
            "why": f"int8_types {wanted}, asked for (the CPU's default would be {default})"
                   + ("; 7-bit weights: x86 without VNNI saturates int8 products in int16" if chosen["reduce_range"] else "")}


def native_fp16(cpu: TargetCpu) -> bool:
    """ONNX Runtime's CPU kernels compute fp16 natively only on ARM64 with FP16 arithmetic (asimdhp).
    On x86 its fp16 model is cast back to fp32 around every op without an fp16 kernel: slower than
    fp32, so fp16 can only win there on size, which the search does not optimise."""
    return cpu.is_arm and "asimdhp" in cpu.flags


class OnnxRuntimeBackend(CpuBackendBase):
    name = "onnxruntime"
    precisions = ("fp32", "fp16", "int8")
    extra = "onnxruntime"
    modules = ("onnxruntime",)
    # opset 18 / IR v11 models, as exported here
    min_versions = {"onnxruntime": "1.16"}
    distributions = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")
    runs_on = "a CPU with ONNX Runtime"
    plot_style = ("#1f77b4", "o")

    def available(self) -> bool:
        return available("onnxruntime")

    def can_run_here(self) -> bool:
        return self.available()

    def version(self) -> str:
        return require("onnxruntime").__version__

    # -- search space ------------------------------------------------------------------------
    def variants(self, device: SearchDevice) -> list[Variant]:
        """fp32; fp16 where the CPU computes it (``native_fp16``); int8 per-channel in the types that
        can be fastest on the device's CPU (``_searched_types``). Not per-tensor weights: as fast and
        far less accurate wherever a network has depthwise convolutions (EfficientNet-Lite0 224 px
        fine-tuned on digits, AVX2 EPYC, 359 held-out images: top-1 27.3% per-tensor against 90.0%
        per-channel and 96.9% fp32; CPU time per image 34.1 against 33.9 ms). The knob stays (the
        recipe's ``per_channel``). The task's dynamic scheme (text) has its own activation types
        (uint8, at run time) and per_channel: one variant, as the task measured it."""
        found = [Variant("fp32", "fp32")]
        if native_fp16(device.cpu):
            found.append(Variant("fp16", "fp16"))
        if device.hint.get("scheme") == "dynamic":
            return [*found, Variant("int8", "int8 dynamic")]
        return found + [Variant("int8", f"int8 {types}", {"int8_types": types}, {"per_channel": True})
                        for types in _searched_types(device.cpu)]

    # -- compile -------------------------------------------------------------------------------
    def compile(self, onnx_path: Path, out_dir: Path, precision: str, calibration: dict[str, np.ndarray] | None,
                options: dict[str, Any]) -> Compiled:
        if precision not in self.precisions:
            raise CompileError(f"onnxruntime cannot compile precision {precision!r}: choose one of {', '.join(self.precisions)}")
        out = Path(out_dir) / f"model.{precision}.onnx"
        if precision == "fp32":
            chosen = self._optimise(Path(onnx_path), out, options.get("threads"))
        elif precision == "fp16":
            from edgetl.backends._qdq import to_fp16

            hint = options.get("quantization") or {}
            kept = to_fp16(Path(onnx_path), out, hint.get("keep_float_prefixes") or ())
            chosen = {**kept, "why": "float16 weights and activations, float32 inputs/outputs; ONNX Runtime CPU "
                                     "casts ops without fp16 kernels back to fp32, so this mainly halves the size"
                                     + (f"; {hint['why']}" if kept and hint.get("why") else "")}
        else:
            chosen = self._int8(Path(onnx_path), out, calibration, options)
        self._check_loads(out)
        return Compiled(self.name, precision, out, [out], {"onnxruntime": self.version(), **chosen})

    def _optimise(self, src: Path, out: Path, threads: int | None) -> dict[str, Any]:
        ort = require("onnxruntime", "ONNX Runtime compile")
        so = ort.SessionOptions()
        # EXTENDED, not ALL: ALL adds NCHWc layout transforms whose block size follows this host's
        # vector width (AVX2 vs AVX-512 vs NEON), and ONNX Runtime documents such saved graphs as
        # tied to the machine that made them. EXTENDED's fusions (Conv+Act, Gemm+Act ...) run on
        # any ONNX Runtime CPU build; the device's session still applies the layout passes itself.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(out)
        so.intra_op_num_threads = threads or 1
        try:
            ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for unsupported ops
            raise CompileError(f"ONNX Runtime cannot load {src}: {_first_line(exc)}") from exc
        return {"graph_optimization": "ORT_ENABLE_EXTENDED",
                "why": "offline fusions portable to any ONNX Runtime CPU build; layout transforms "
                       "(ORT_ENABLE_ALL) are left to the device's session"}

    def _int8(self, src: Path, out: Path, calibration: dict[str, np.ndarray] | None, options: dict[str, Any]) -> dict[str, Any]:
        """Static QDQ (every op, or the task's ``op_types``), or ``quantize_dynamic`` where the task's
        hint says static does not pay (``options["quantization"]``, ``Task.quantization``)."""
        from edgetl.backends._qdq import quantize_dynamic_int8, quantize_qdq

        hint = options.get("quantization") or {}
        cpu = target_cpu(options)
        types = int8_types(cpu, options.get("int8_types"))
        keep = hint.get("keep_float_prefixes") or ()
        if hint.get("scheme") == "dynamic":
            # the task may set per_channel and reduce_range where it measured them (text: per-channel,
            # full range: reduce_range cost all-MiniLM-L6-v2 4 pp on this x86 CPU)
            settings = quantize_dynamic_int8(src, out, reduce_range=hint.get("reduce_range", types["reduce_range"]),
                                             op_types=hint.get("op_types"), keep_float_prefixes=keep,
                                             per_channel=hint.get("per_channel", False), fusion=hint.get("fusion"))
            return {**settings, "cpu": cpu.record(), "why": hint.get("why") or "the task's scheme: dynamic int8"}
        recipe = options.get("recipe") or CalibrationRecipe(name="default")
        settings = quantize_qdq(src, out, calibration, recipe, activation_type=types["activations"],
                                weight_type=types["weights"], reduce_range=types["reduce_range"],
                                op_types=hint.get("op_types"), keep_float_prefixes=keep)
        return {**settings, **({"op_types": hint["op_types"]} if hint.get("op_types") else {}),
                "calibration": recipe.name, "cpu": cpu.record(), "why": f"{types['why']} (for {cpu.source}'s CPU)"}

    def _check_loads(self, path: Path) -> None:
        """Fail at compile time, not on the device, if ONNX Runtime rejects the artifact."""
        with self.load(path, threads=1):
            pass

    # -- load ----------------------------------------------------------------------------------
    def load(self, path: Path, threads: int | None = None) -> OnnxRuntimeSession:
        return OnnxRuntimeSession(Path(path), threads)

    def load_as_specified(self, path: Path, threads: int | None = None) -> OnnxRuntimeSession:
        """A QDQ model computed as the ONNX spec defines it: each QuantizeLinear/DequantizeLinear
        in float around float operators, nothing fused into this CPU's integer kernels.

        For estimating another runtime's int8 (TensorRT accumulates int8 products in int32). Fused,
        x86 without VNNI sums u8 x s8 pairs in saturating int16 (vpmaddubsw) unless the weights were
        quantized to 7 bits: EfficientNet-Lite0's TensorRT QDQ model scored 57.7% top-1 fused on an
        AVX2 EPYC against 95.5% unfused, where TensorRT-like arithmetic gives the latter."""
        return OnnxRuntimeSession(Path(path), threads, fuse=False)


class OnnxRuntimeSession(SessionBase):
    def __init__(self, path: Path, threads: int | None = None, *, fuse: bool = True):
        ort = require("onnxruntime", "running ONNX Runtime artifacts")
        if not path.is_file():
            raise ArtifactError(f"ONNX Runtime artifact {path} does not exist: compile it with `edgetl compile`")
        so = ort.SessionOptions()
        if not fuse:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # Fixed threads and sequential execution: latency is reproducible and comparable.
        so.intra_op_num_threads = threads or 0
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ArtifactError(f"ONNX Runtime cannot load {path}: {_first_line(exc)}") from exc
        self.where = path.name
        self.inputs = tuple(_spec(arg) for arg in self._sess.get_inputs())
        self.outputs = tuple(_spec(arg) for arg in self._sess.get_outputs())
        self._names = [spec.name for spec in self.outputs]
        self._quiet = ort.RunOptions()
        self._quiet.log_severity_level = 4  # a failing run is one ArtifactError line (SessionBase.run), not a log too

    def _run(self, feeds):
        out = self._sess.run(self._names, {k: np.ascontiguousarray(v) for k, v in feeds.items()}, self._quiet)
        return dict(zip(self._names, out, strict=True))

    def close(self) -> None:
        self._sess = None


# ONNX Runtime's type strings ("tensor(float)") as numpy dtype names
_DTYPES = {"float": "float32", "double": "float64", "float16": "float16", "int64": "int64", "int32": "int32",
           "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool"}


def _spec(arg) -> TensorSpec:
    kind = arg.type.removeprefix("tensor(").removesuffix(")")
    if kind not in _DTYPES:
        raise ArtifactError(f"ONNX Runtime artifact tensor {arg.name!r} has type {arg.type}, which edgetl cannot feed")
    return TensorSpec.of(arg.name, _DTYPES[kind], arg.shape)


def _searched_types(cpu: TargetCpu) -> tuple[str, ...]:
    """The int8 types worth building for ``cpu``. ARM64: S8S8 (its sdot kernels; ONNX Runtime's
    default there). x86: U8S8, the type its kernels take; S8S8 runs through them with the activations
    shifted, so it cannot be faster (AVX2 EPYC, EfficientNet-Lite0 224 px: 38.7 against 33.9 ms of CPU
    per image, top-1 90.3% against 90.0%: the same 7-bit weights)."""
    return ("s8s8",) if cpu.is_arm else ("u8s8",)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
