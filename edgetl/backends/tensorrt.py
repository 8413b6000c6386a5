"""TensorRT backend: explicit quantization (QDQ ONNX) and a strongly typed engine.

Uses ``tensorrt`` where installed (JetPack, NGC), else ``tensorrt_rtx`` from PyPI, which builds
engines ahead of time on a machine without a GPU for a chosen compute capability.

Each artifact folder holds the ONNX the engine was built from (``model.fp32.onnx``,
``model.fp16.onnx`` or ``model.qdq.onnx``: kept so the engine can be rebuilt on the device, and used
to *estimate* accuracy on ONNX Runtime CPU where no GPU is present), the engine ``model.engine`` and
``model.engine.json`` (TensorRT flavour/version, GPU arch, batch range).

INT8 is explicit only (TensorRT 11 removed implicit calibrators): the QDQ ONNX is symmetric int8
for activations and weights, per-channel weights, bias left in float (TensorRT rejects an int32
bias DequantizeLinear), and the network is strongly typed so the Q/DQ nodes decide the precision.

When the installed builder cannot target the requested GPU (tensorrt_rtx has no sm87 for Jetson
Orin), the artifact is the ONNX alone and ``load`` builds the engine on the device on first use.

``compile`` options: ``recipe`` (int8), ``int8_float`` (``"fp16"``: an int8 build's layers left float
run in fp16, "mixed"; default fp32) and the profile's ``TensorRtOptions``: ``gpu_arch`` ("sm89";
default ``DEFAULT_ARCH``), ``max_batch`` (engine profile, default 32), ``dims`` (the size of each
named dynamic dimension besides batch, e.g. ``{"sequence": 128}``; default: the calibration
samples'). The engine's optimization profile covers every dynamic dimension of every input
(``opt_shapes``, ``build_engine``); int64 inputs stay int64 (TensorRT 10 takes them as they are).

A bundle carries the ONNX and the build settings, never the engine (``bundle_files``,
``build_settings``); the device builds its engine before the first run (``prepare``,
edgetl/backends/_trt_engine.py).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import numpy as np
from pydantic import Field, field_validator

from edgetl._lazy import available, require
from edgetl.backends import _cuda
from edgetl.backends.base import BackendBase, Compiled, NoOptions, SearchDevice, SessionBase, Variant
from edgetl.config import CalibrationRecipe
from edgetl.errors import ArtifactError, CompileError, EdgetlError
from edgetl.tensors import TensorSpec, batch_size, batches, concat

# Ada (RTX 40xx, L4, L40): the oldest architecture with every precision TensorRT-RTX supports and
# a common desktop/edge-server GPU. Said in the options when it was chosen for the user.
DEFAULT_ARCH = "sm89"
DEFAULT_MAX_BATCH = 32
ENGINE = "model.engine"
# Q/DQ on the *inputs* of the weighted ops only, as NVIDIA's Q/DQ placement guide recommends:
# TensorRT runs those in int8 and fuses the following activation. Quantizing their outputs too
# (ONNX Runtime's default) puts a symmetric Q/DQ between a Conv and its ReLU6 whose range is the
# Conv's full (-100, 100), leaving ~8 levels for [0, 6]: EfficientNet-Lite0 then falls from 96%
# to 38% top-1 on our digits run, against 90% with input-only Q/DQ.
_QDQ_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul"]


def trt_module() -> ModuleType:
    if available("tensorrt"):
        return require("tensorrt")
    return require("tensorrt_rtx", "TensorRT engines")


def _flavour(trt: ModuleType) -> str:
    return f"{trt.__name__} {trt.__version__}"


class TensorRtOptions(NoOptions):
    """Profile fields of TensorRT: the GPU the engine is built for and its batch range."""

    gpu_arch: str | None = Field(None, description="the GPU's compute capability, e.g. sm87 (Jetson Orin)")
    max_batch: int | None = Field(None, ge=1, le=1024, description="largest batch the engine accepts (default 32)")
    dims: dict[str, Annotated[int, Field(ge=1)]] | None = Field(
        None, description="size of each named dynamic dimension besides batch that the engine is built for, "
                          "e.g. {sequence = 128} (it accepts 1 up to it); default: the calibration samples' size")

    @field_validator("gpu_arch")
    @classmethod
    def _arch(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("sm") and v[2:].isdigit() and 2 <= len(v[2:]) <= 3):
            raise ValueError("must look like sm87 (compute capability 8.7)")
        return v


class TensorRtBackend(BackendBase):
    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    extra = "tensorrt"
    modules = ("tensorrt", "tensorrt_rtx")
    # Strongly typed networks; TensorRT-RTX numbers its releases apart from TensorRT.
    min_versions = {"tensorrt": "10.0", "tensorrt_rtx": "1.0"}
    distributions = ("tensorrt*",)  # tensorrt, tensorrt-cu12, tensorrt-rtx-cu13 ...
    devices = ("gpu",)
    runs_on = "an NVIDIA GPU"  # what a machine needs to run the artifacts (tables say "n/a here (needs ...)")
    options_model = TensorRtOptions
    plot_style = ("#76b900", "D")
    builds_on_device = True

    def available(self) -> bool:
        return available("tensorrt") or available("tensorrt_rtx")

    def can_run_here(self) -> bool:
        return self.available() and _cuda.gpu_arch() is not None

    def version(self) -> str:
        return _flavour(trt_module())

    # -- search space ------------------------------------------------------------------------
    def variants(self, device: SearchDevice) -> list[Variant]:
        """fp16; int8 (explicit QDQ, the rest fp32); int8 "mixed" (the rest fp16). Not fp32: every GPU
        TensorRT targets computes fp16 on its tensor cores, about twice as fast at a CNN's accuracy, so
        fp32 cannot be the fastest that meets a budget. These build here (tensorrt-rtx builds on a CPU)
        but run only on the device's GPU: the search times them remotely."""
        return [Variant("fp16", "fp16"), Variant("int8", "int8"),
                Variant("int8", "int8 mixed", {"int8_float": "fp16"})]

    # -- compile -------------------------------------------------------------------------------
    def compile(self, onnx_path: Path, out_dir: Path, precision: str, calibration: dict[str, np.ndarray] | None,
                options: dict[str, Any]) -> Compiled:
        if precision not in self.precisions:
            raise CompileError(f"tensorrt cannot compile precision {precision!r}: choose one of {', '.join(self.precisions)}")
        float_layers = options.get("int8_float")
        if float_layers not in (None, "fp32", "fp16"):
            raise CompileError(f"tensorrt option int8_float {float_layers!r}: choose fp32 or fp16")
        if float_layers == "fp16" and precision != "int8":
            raise CompileError(f"tensorrt option int8_float applies to int8 builds, not {precision}")
        trt = trt_module()
        out_dir = Path(out_dir)
        onnx_out = out_dir / f"model.{'qdq' if precision == 'int8' else precision}.onnx"
        chosen: dict[str, Any] = {"tensorrt": _flavour(trt)}
        if precision == "fp32":
            shutil.copyfile(onnx_path, onnx_out)
        elif precision == "fp16":
            from edgetl.backends._qdq import to_fp16

            # a strongly typed network runs each node in its graph type: a task's float nodes stay fp32
            chosen.update(to_fp16(Path(onnx_path), onnx_out,
                                  (options.get("quantization") or {}).get("keep_float_prefixes") or ()))
        else:
            chosen.update(self._qdq(Path(onnx_path), onnx_out, calibration, options.get("recipe"),
                                    options.get("quantization") or {}))
            if float_layers == "fp16":
                chosen.update(float_layers_to_fp16(onnx_out))
        arch = options.get("gpu_arch") or DEFAULT_ARCH
        if not options.get("gpu_arch"):
            chosen["gpu_arch_note"] = f"no GPU arch given: built for {DEFAULT_ARCH} (Ada: RTX 40xx, L4)"
        max_batch = int(options.get("max_batch") or DEFAULT_MAX_BATCH)
        # the profile's dims over the task's largest sizes (a text task's max_length), else the calibration's
        shapes = opt_shapes(onnx_out, {**(options.get("max_dims") or {}), **(options.get("dims") or {})}, calibration)
        files = [onnx_out]
        reason = cannot_target(trt, arch)
        if reason:
            chosen["engine"] = f"deferred to the device: {reason}"
            path = onnx_out
        else:
            start = time.perf_counter()
            plan = build_engine(trt, onnx_out, arch, max_batch, shapes)
            chosen["engine_build_s"] = round(time.perf_counter() - start, 3)
            path = out_dir / ENGINE
            path.write_bytes(plan)
            meta = {"tensorrt": _flavour(trt), "gpu_arch": arch, "onnx": onnx_out.name, "max_batch": max_batch,
                    "shapes": shapes}
            (out_dir / f"{ENGINE}.json").write_text(json.dumps(meta, indent=2) + "\n")
            files = [path, out_dir / f"{ENGINE}.json", onnx_out]
        chosen.update({"gpu_arch": arch, "max_batch": max_batch, "shapes": shapes, "strongly_typed": True})
        return Compiled(self.name, precision, path, files, chosen, estimate_with=onnx_out)

    def _qdq(self, src: Path, out: Path, calibration: dict[str, np.ndarray] | None, recipe: CalibrationRecipe | None,
             hint: dict[str, Any]) -> dict[str, Any]:
        """Explicit QDQ; the task's ``hint`` may narrow the op types and keep name prefixes float."""
        from edgetl.backends._qdq import quantize_qdq

        recipe = recipe or CalibrationRecipe(name="default")
        forced = [f for f, v in (("symmetric_activations", recipe.symmetric_activations), ("per_channel", recipe.per_channel)) if not v]
        # TensorRT's int8 is symmetric (zero point 0) and its conv kernels want per-channel weights.
        recipe = recipe.model_copy(update={"symmetric_activations": True, "per_channel": True})
        ops = [op for op in _QDQ_OPS if op in hint["op_types"]] if hint.get("op_types") else list(_QDQ_OPS)
        if not ops:  # an empty list would mean "every op" to the quantizer: the opposite of the hint
            raise CompileError(f"the task's op_types {hint['op_types']} name none of the ops TensorRT's int8 "
                               f"quantizes ({', '.join(_QDQ_OPS)})")
        settings = quantize_qdq(
            src, out, calibration, recipe, activation_type="int8", weight_type="int8", op_types=ops,
            extra_options={"QuantizeBias": False, "WeightSymmetric": True, "OpTypesToExcludeOutputQuantization": ops},
            keep_float_prefixes=hint.get("keep_float_prefixes") or (),
        )
        why = "TensorRT explicit quantization: symmetric int8, per-channel weights, float bias, Q/DQ on " + "/".join(ops)
        if forced:
            why += f" (recipe's {' and '.join(forced)}=false overridden: TensorRT needs them)"
        return {**settings, "calibration": recipe.name, "why": why}

    # -- bundle --------------------------------------------------------------------------------
    def bundle_files(self, entry: dict[str, Any], export_path: str) -> tuple[list[str], str]:
        """The ONNX the engine was built from (engines only run on the GPU and TensorRT that built them)."""
        source = entry.get("estimate_with")
        if source is None:
            onnx = [f for f in entry["files"] if f.endswith(".onnx")]
            source = onnx[0] if onnx else export_path
        data = [f for f in entry["files"] if f.startswith(source) and f != source]  # external weights
        return [source, *data], source

    def build_settings(self, entry: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "onnx-for-tensorrt", "build": {"precision": entry["precision"], "gpu_arch": entry.get("gpu_arch"),
                                                       "options": entry.get("options") or {}}}

    def prepare(self, bundle, *, force: bool = False, any_arch: bool = False) -> Path:
        """Build (or reuse from the cache) this GPU's engine from the bundle's ONNX."""
        from edgetl.backends._trt_engine import build_engine

        return build_engine(bundle, force=force, any_arch=any_arch)

    # -- load ----------------------------------------------------------------------------------
    def load(self, path: Path, threads: int | None = None) -> TensorRtSession:
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"TensorRT artifact {path} does not exist: compile it with `edgetl compile`")
        if _cuda.gpu_arch() is None:
            onnx = sorted(path.parent.glob("model.*.onnx"))
            estimate = f"; accuracy was estimated with {onnx[0]} on ONNX Runtime CPU" if onnx else ""
            raise EdgetlError(f"TensorRT engines need an NVIDIA GPU and none was found here{estimate}")
        return TensorRtSession(path)


def float_layers_to_fp16(qdq_path: Path) -> dict[str, Any]:
    """An int8 QDQ model's float tensors and Q/DQ scales in fp16, inputs and outputs kept fp32: a
    strongly typed network then runs the quantized layers in int8 and every other one in fp16 (what
    NVIDIA's ModelOpt calls an fp16 high-precision dtype). Float16 scales need DequantizeLinear-19,
    hence opset 19 at least (18 -> 19 only adds types and a Pad mode: nothing else changes meaning)."""
    onnx = require("onnx", "TensorRT int8 with fp16")
    float16 = require("onnxruntime.transformers.float16", "TensorRT int8 with fp16")
    model = float16.convert_float_to_float16(onnx.load(str(qdq_path)), keep_io_types=True)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 19)
    onnx.save(model, str(qdq_path))
    return {"int8_float": "fp16", "why_float": "layers left float (and the Q/DQ scales) in fp16: TensorRT's "
                                              "fp16 kernels instead of fp32 between the int8 layers"}


def cannot_target(trt: ModuleType, arch: str) -> str | None:
    """Why the installed builder cannot build for ``arch``, or None when it can."""
    if _is_rtx(trt):
        supported = [m for m in trt.ComputeCapability.__members__ if m.startswith("SM")]
        if arch.upper() not in supported:
            return (f"{_flavour(trt)} builds for {', '.join(s.lower() for s in supported)}, not {arch}; "
                    "the device's own TensorRT builds the engine from the ONNX on first load")
        return None
    local = _cuda.gpu_arch()
    if local != arch:
        where = f"this machine's GPU is {local}" if local else "this machine has no GPU"
        return f"{_flavour(trt)} builds only for the GPU it runs on ({where}); the device builds it on first load"
    return None


def _is_rtx(trt: ModuleType) -> bool:
    return trt.__name__ == "tensorrt_rtx"


def opt_shapes(onnx_path: Path, dims: dict[str, int], calibration: dict[str, np.ndarray] | None) -> dict[str, list[int]]:
    """The shape each input is tuned for, batch 1: a named dynamic dimension besides batch takes its
    size from ``dims`` (the profile's), else from the calibration samples. Recorded with the
    artifact, so the device builds the same engine profile (``build_engine``)."""
    from edgetl.backends._qdq import onnx_inputs

    onnx = require("onnx", "TensorRT compile")
    shapes = {}
    for spec in onnx_inputs(onnx.load(str(onnx_path), load_external_data=False)):
        shape = [1]
        for axis, dim in enumerate(spec.shape[1:], start=1):
            if isinstance(dim, int):
                shape.append(dim)
            elif dim in dims:
                shape.append(int(dims[dim]))
            elif calibration is not None and spec.name in calibration:
                shape.append(int(calibration[spec.name].shape[axis]))
            else:
                raise CompileError(f"TensorRT needs the size of dimension {dim!r} of input {spec.name!r} to build "
                                   f"its engine: set it in the profile (dims = {{{dim} = 128}})")
        shapes[spec.name] = shape
    return shapes


def build_engine(trt: ModuleType, onnx_path: Path, arch: str | None, max_batch: int,
                 shapes: dict[str, list[int]] | None = None) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network and build a serialized engine.

    ``arch`` None builds for the local GPU. One optimization profile covers every dynamic dimension
    of every input: batch 1..max_batch tuned for 1 (edge latency is single-stream), any other
    1..its size in ``shapes`` (``opt_shapes``), tuned for that size.
    """
    logger = _ErrorLog.make(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise CompileError(f"TensorRT cannot parse {onnx_path.name}: {errors[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    if _is_rtx(trt):
        # Exactly one target: smaller engines, and Turing (sm75) is only reachable this way.
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, arch.upper() if arch else "CURRENT"), 0)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        profile.set_shape(tensor.name, *_profile(tensor.name, tuple(tensor.shape), max_batch, shapes or {}))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise CompileError(f"TensorRT could not build an engine from {onnx_path.name}: {logger.last()}")
    return bytes(plan)


def _profile(name: str, shape: tuple[int, ...], max_batch: int, shapes: dict[str, list[int]]):
    """(min, opt, max) of one input; ``shape`` has -1 on its dynamic axes."""
    opt = shapes.get(name)
    low, best, high = [1], [1], [max_batch]
    for axis, dim in enumerate(shape[1:], start=1):
        if dim >= 0:
            size = dim
        elif opt is not None and len(opt) == len(shape):
            size = opt[axis]
        else:
            raise CompileError(f"TensorRT needs the size of dynamic axis {axis} of input {name!r} to build its "
                               "engine, and none was recorded with the model (its compile options' shapes)")
        low.append(1 if dim < 0 else size)
        best.append(size)
        high.append(size)
    return tuple(low), tuple(best), tuple(high)


class _ErrorLog:
    """A TensorRT logger that keeps errors for the message and drops info/verbose chatter."""

    @staticmethod
    def make(trt: ModuleType):
        class Log(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if severity <= trt.ILogger.Severity.ERROR:
                    self.errors.append(msg)

            def last(self) -> str:
                return self.errors[-1] if self.errors else "no error message from TensorRT"

        return Log()


class TensorRtSession(SessionBase):
    """Runs an engine (or builds one from the ONNX on first use) on GPU 0."""

    def __init__(self, path: Path):
        trt = trt_module()
        self._rt = _cuda.cudart()
        plan = self._plan(trt, path)
        self._runtime = trt.Runtime(_ErrorLog.make(trt))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            meta = path.with_name(f"{ENGINE}.json")
            built = json.loads(meta.read_text()) if meta.is_file() else {}
            raise ArtifactError(
                f"{path} does not run on this GPU ({_cuda.gpu_arch()}, {_flavour(trt)}); it was built for "
                f"{built.get('gpu_arch', '?')} with {built.get('tensorrt', '?')}: load {built.get('onnx', 'the ONNX')} "
                "instead to rebuild it here"
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        spec = lambda n: TensorSpec.of(n, trt.nptype(self._engine.get_tensor_dtype(n)),  # noqa: E731
                                       list(self._engine.get_tensor_shape(n)))
        self.where = path.name
        self.inputs = tuple(spec(n) for n in names if is_input[n])
        self.outputs = tuple(spec(n) for n in names if not is_input[n])
        # every input shares axis 0, the batch axis, and its profile range
        self.max_batch = self._engine.get_tensor_profile_shape(self.inputs[0].name, 0)[2][0]
        self._stream = self._rt.stream_create()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    @staticmethod
    def _plan(trt: ModuleType, path: Path) -> bytes:
        if path.suffix != ".onnx":
            return path.read_bytes()
        cached = path.with_suffix(f".{_cuda.gpu_arch()}.engine")
        if cached.is_file():
            return cached.read_bytes()
        plan = build_engine(trt, path, None, DEFAULT_MAX_BATCH, _shapes_beside(path))
        try:
            cached.write_bytes(plan)  # the next load skips the build
        except OSError:
            pass  # read-only bundle: build again next time
        return plan

    def _buffer(self, name: str, nbytes: int) -> int:
        # Grown, never shrunk: after the largest batch, run() no longer allocates on the hot path.
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._rt.free(ptr)
            ptr, size = self._rt.malloc(nbytes), nbytes
            self._buffers[name] = (ptr, size)
        return ptr

    def _run(self, feeds):
        if batch_size(feeds) <= self.max_batch:  # the usual case: no copy on the timed path
            return self._run_chunk(feeds)
        return concat(self._run_chunk(chunk) for chunk in batches(feeds, self.max_batch))

    def _run_chunk(self, feeds) -> dict[str, np.ndarray]:
        for spec in self.inputs:
            array = np.ascontiguousarray(feeds[spec.name])
            self._context.set_input_shape(spec.name, array.shape)
            ptr = self._buffer(spec.name, array.nbytes)
            self._rt.to_device(ptr, array)
            self._context.set_tensor_address(spec.name, ptr)
        outs = {}
        for spec in self.outputs:
            out = np.empty(tuple(self._context.get_tensor_shape(spec.name)), dtype=spec.dtype)
            self._context.set_tensor_address(spec.name, self._buffer(spec.name, out.nbytes))
            outs[spec.name] = out
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self._rt.stream_sync(self._stream)
        for name, out in outs.items():
            self._rt.to_host(out, self._buffers[name][0])
        return outs

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self._rt.free(ptr)
        self._buffers = {}
        if self._stream:
            self._rt.stream_destroy(self._stream)
            self._stream = 0
        self._context = self._engine = None


def _shapes_beside(onnx_path: Path) -> dict[str, list[int]] | None:
    """The input shapes recorded when the artifact next to ``onnx_path`` was compiled, if any."""
    meta = onnx_path.with_name(f"{ENGINE}.json")
    return json.loads(meta.read_text()).get("shapes") if meta.is_file() else None
