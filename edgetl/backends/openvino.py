"""OpenVINO backend (CPU plugin).

Artifacts are OpenVINO IR, ``model.xml`` + ``model.bin``, with a dynamic batch axis:

- fp32: ``ov.convert_model`` of the exported ONNX, saved with float32 weights;
- fp16: the same graph with weights compressed to float16 (half the size; see ``_INFERENCE_PRECISION``
  for what the CPU computes in);
- int8: ``nncf.quantize`` post-training quantization on the calibration samples (FakeQuantize ops
  in the IR, which the CPU plugin runs as u8/i8 kernels), or, where the task's hint says
  ``scheme: "weights"``, ``nncf.compress_weights``: int8 weights, float activations, no calibration.

``compile`` options (same keys as the ONNX Runtime backend; all optional):

- ``recipe``: ``CalibrationRecipe`` for int8 (``None``: the defaults of ``CalibrationRecipe``);
- ``threads``: threads for the session that checks the artifact loads;
- ``cpu_arch``, ``cpu_flags``: the device's CPU, from its profile (``CpuOptions``), for int8's
  overflow fix; left out: this machine's;
- ``preset``: nncf's ``"performance"`` (symmetric activations, the default) or ``"mixed"``
  (asymmetric activations) for int8;
- ``source``: ``"qdq"`` builds int8 from ONNX Runtime's QDQ model of the same recipe (``_qdq``) instead
  of nncf: OpenVINO turns its Q/DQ pairs into FakeQuantize and runs the same int8 kernels;
- ``inference_precision``: ``"bf16"`` or ``"f16"``, what the CPU computes the float parts in, over the
  precision's own (``_INFERENCE_PRECISION``); a CPU that lacks it runs f32 (``OpenVinoSession.info``).

The IR records its precision (``edgetl/precision``) and any ``inference_precision``
(``edgetl/inference_precision``) in its ``rt_info``, so ``load`` picks the inference precision without a
side file. Int8 builds record which precision OpenVINO's execution graph runs each weighted layer in
(``runtime_precisions``). Load/run never imports torch or nncf.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgetl._cpu import TargetCpu, target_cpu
from edgetl._lazy import available, require
from edgetl.backends._qdq import check_calibration
from edgetl.backends.base import Compiled, CpuBackendBase, SearchDevice, SessionBase, Variant
from edgetl.config import CalibrationRecipe
from edgetl.errors import ArtifactError, CompileError, ConfigError
from edgetl.tensors import TensorSpec, batch_size, batches, check_feeds, take

_RT_PRECISION = ["edgetl", "precision"]
_RT_INFERENCE = ["edgetl", "inference_precision"]
# inference_precision option -> the CPU capability OpenVINO reports (OPTIMIZATION_CAPABILITIES) for it
_HINT_CAPABILITY = {"bf16": "BF16", "f16": "FP16"}
_PRESETS = ("performance", "mixed")
# the execution graph's layer types that carry the weights: int8 or not is decided there
_WEIGHTED_LAYERS = ("Convolution", "FullyConnected", "MatMul", "Deconvolution")
_CALIBRATION_BATCH = 8  # samples per nncf calibration item

# What the CPU plugin computes the float parts of each artifact in. Without a hint OpenVINO picks
# bf16 on CPUs with AMX/AVX512-BF16 (Sapphire Rapids and later) even for an fp32 IR: fp32 would
# silently lose ~3 significant digits there. int8 keeps its few float ops in f32 for the same reason
# (on a CNN nncf quantizes nearly everything, so this costs no speed). fp16 computes in f16 where the
# CPU has native FP16 (ARM, AVX512-FP16), else f32 (the weights stay half size either way).
_INFERENCE_PRECISION = {"fp32": "f32", "int8": "f32", "fp16": "f16"}

# recipe.keep_float_ops are ONNX op types (what the ONNX Runtime backend uses); the OpenVINO ops
# they become after ov.convert_model. Types not listed here are taken as OpenVINO type names.
_ONNX_TO_OV_TYPES = {
    "Conv": ("Convolution", "GroupConvolution"),
    "ConvTranspose": ("ConvolutionBackpropData", "GroupConvolutionBackpropData"),
    "Gemm": ("MatMul",),
    "MatMul": ("MatMul",),
    "Add": ("Add",),
    "Sub": ("Subtract",),
    "Mul": ("Multiply",),
    "Div": ("Divide",),
    "Sigmoid": ("Sigmoid", "Swish"),  # Sigmoid + Mul fuse into Swish at conversion
    "HardSigmoid": ("HSigmoid", "HardSigmoid"),
    "HardSwish": ("HSwish",),
    "Relu": ("Relu",),
    "Clip": ("Clamp",),
    "GlobalAveragePool": ("ReduceMean",),
    "ReduceMean": ("ReduceMean",),
    "AveragePool": ("AvgPool",),
    "MaxPool": ("MaxPool",),
    "Concat": ("Concat",),
    "Resize": ("Interpolate",),
    "Softmax": ("Softmax",),
}


class OpenVinoBackend(CpuBackendBase):
    name = "openvino"
    precisions = ("fp32", "fp16", "int8")
    extra = "openvino"
    modules = ("openvino", "nncf")
    # IR v11 with rt_info, read by the 2024 releases and later
    min_versions = {"openvino": "2024.0"}
    distributions = ("openvino", "nncf")
    runs_on = "a CPU with OpenVINO's CPU plugin"
    plot_style = ("#6f2da8", "s")

    def available(self) -> bool:
        return available("openvino")

    def can_run_here(self) -> bool:
        if not self.available():
            return False
        try:
            return "CPU" in require("openvino").Core().available_devices
        except RuntimeError:  # no usable plugin (e.g. an unsupported CPU)
            return False

    def version(self) -> str:
        # "2026.4.1-22982-e213a147257-releases/2026/4" -> "2026.4.1"; the build is in options.
        return require("openvino").get_version().split("-")[0]

    def fingerprint(self, options: dict[str, Any]) -> dict[str, Any]:
        out = super().fingerprint(options)
        if options.get("source") == "qdq":  # ONNX Runtime's quantizer builds that model: its version counts too
            out["onnxruntime"] = require("onnxruntime").__version__
        return out

    # -- search space ------------------------------------------------------------------------
    def variants(self, device: SearchDevice) -> list[Variant]:
        """fp32; the float hints the device's CPU computes natively (``_float_hints``); int8 from nncf
        (presets ``_NNCF_VARIANTS``) and from ONNX Runtime's QDQ model. The task's weight-only scheme
        (text) has neither calibration nor presets: one int8 variant, as the task measured it."""
        found = [Variant("fp32", "fp32"), *_float_hints(device.cpu)]
        if device.hint.get("scheme") == "weights":
            return [*found, Variant("int8", "int8 weights")]
        found += _NNCF_VARIANTS
        if not device.hint.get("model_type"):  # nncf's transformer scheme has no QDQ counterpart
            found.append(Variant("int8", "int8 qdq", {"source": "qdq"}))
        return found

    # -- compile -------------------------------------------------------------------------------
    def compile(self, onnx_path: Path, out_dir: Path, precision: str, calibration: dict[str, np.ndarray] | None,
                options: dict[str, Any]) -> Compiled:
        if precision not in self.precisions:
            raise CompileError(f"openvino cannot compile precision {precision!r}: choose one of {', '.join(self.precisions)}")
        ov = require("openvino", "OpenVINO compile")
        recipe = options.get("recipe") or CalibrationRecipe(name="default")
        hint = (options.get("quantization") or {}) if precision == "int8" else {}
        weights_only = hint.get("scheme") == "weights"
        inference = _check_knobs(options, precision, weights_only)
        if precision == "int8" and not weights_only:
            calibration = check_calibration(calibration, recipe)  # before the slow conversion
        from_qdq = precision == "int8" and options.get("source") == "qdq"
        model = None if from_qdq else _convert(ov, Path(onnx_path))  # QDQ: converted once quantized
        if from_qdq:
            model, chosen = _from_qdq(ov, Path(onnx_path), calibration, recipe, target_cpu(options), hint)
        elif weights_only:
            keep = _onnx_nodes(Path(onnx_path), hint.get("keep_float_prefixes") or ())
            model, chosen = _compress_weights(model, hint, keep)
        elif precision == "int8":
            check_feeds([_spec(port) for port in model.inputs], take(calibration, slice(0, 1)), "calibration samples")
            keep = _onnx_nodes(Path(onnx_path), hint.get("keep_float_prefixes") or ())
            model, chosen = _quantize(model, calibration, recipe, target_cpu(options), hint, keep,
                                      options.get("preset") or "performance")
        elif precision == "fp16":
            chosen = {"weights": "float16 (compress_to_fp16)",
                      "why": "half the size; the CPU decompresses weights at load and computes in f16 "
                             "where it has native FP16 (ARM, AVX512-FP16), else f32"}
        else:
            chosen = {"weights": "float32", "why": "the exported graph as OpenVINO IR, no compression"}
        model.set_rt_info(precision, _RT_PRECISION)
        if inference:
            model.set_rt_info(inference, _RT_INFERENCE)
            chosen["inference_precision"] = inference
        xml = Path(out_dir) / "model.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
        with self.load(xml, threads=options.get("threads")) as session:  # fail here, not on the device
            here = {"inference_precision_here": session.inference_precision, **session.info}
            if precision == "int8" and not weights_only:
                # what OpenVINO really runs: a FakeQuantize it cannot fuse leaves its layer in float
                here["runtime_precisions"] = session.runtime_precisions()
        return Compiled(self.name, precision, xml, [xml, xml.with_suffix(".bin")],
                        {"openvino": ov.get_version(), **chosen, **here})

    # -- load ----------------------------------------------------------------------------------
    def load(self, path: Path, threads: int | None = None) -> OpenVinoSession:
        return OpenVinoSession(Path(path), threads)


def _float_hints(cpu: TargetCpu) -> list[Variant]:
    """Float variants beyond fp32, only where the device's CPU computes the type natively (its flags,
    not this machine's: a workstation searches for a Pi). bf16: x86 with AVX512-BF16 or AMX-BF16;
    OpenVINO's ARM CPU plugin has no bf16 kernels. f16: ARM64 with FP16 arithmetic (asimdhp) or x86
    with AVX512-FP16: there fp16 weights computed in f16 (precision fp16) is the same kernels as an fp32
    IR with an f16 hint at half the size, so only fp16 is searched. Elsewhere a hint falls back to
    f32 at load and fp16 weights are decompressed to f32: fp32's own kernels, so neither can win."""
    found = []
    if not cpu.is_arm and cpu.flags & {"avx512_bf16", "amx_bf16"}:
        found.append(Variant("fp32", "fp32 bf16-hint", {"inference_precision": "bf16"}))
    if (cpu.is_arm and "asimdhp" in cpu.flags) or "avx512_fp16" in cpu.flags:
        found.append(Variant("fp16", "fp16"))
    return found


# nncf int8 on every CPU. EfficientNet-Lite0 224 px fine-tuned on digits, 359 held-out images, AVX2
# EPYC (fp32 96.9% top-1): performance preset (symmetric activations) 92.5%; mixed (asymmetric) 92.5%
# too, as its ReLU6 outputs are never negative, but it differs on SiLU nets (the conformance model), so
# it stays; bias correction "accurate" 95.5%: at the same kernels (same speed) 3 pp closer to fp32,
# where it can meet a budget "fast" misses, for a slower build. CPU time per image, all alike: fp32
# 29.8 ms, performance 30.0, mixed 30.9 (x86 without VNNI gains little from int8).
_NNCF_VARIANTS = (Variant("int8", "int8 nncf performance", {"preset": "performance"}),
                  Variant("int8", "int8 nncf mixed", {"preset": "mixed"}),
                  Variant("int8", "int8 nncf accurate-bc", {"preset": "performance"}, {"bias_correction": "accurate"}))


def _check_knobs(options: dict[str, Any], precision: str, weights_only: bool) -> str | None:
    """The search knobs of ``options``, checked before any slow work; returns the inference hint."""
    inference = options.get("inference_precision")
    if inference is not None and inference not in _HINT_CAPABILITY:
        raise CompileError(f"openvino option inference_precision {inference!r}: choose one of {', '.join(_HINT_CAPABILITY)}")
    preset = options.get("preset")
    if preset is not None and preset not in _PRESETS:
        raise CompileError(f"openvino option preset {preset!r}: choose one of {', '.join(_PRESETS)}")
    source = options.get("source")
    if source is not None and source != "qdq":
        raise CompileError(f"openvino option source {source!r}: the only other source is 'qdq' (default: nncf)")
    if source == "qdq" and (precision != "int8" or weights_only):
        raise CompileError("openvino option source 'qdq' builds static int8 only: not "
                           + ("the task's weight-only scheme" if weights_only else f"precision {precision}"))
    return inference


def _convert(ov, onnx_path: Path):
    """ONNX -> ov.Model with a dynamic batch; an op OpenVINO cannot convert is named in the error."""
    if not onnx_path.is_file():
        raise CompileError(f"ONNX model {onnx_path} does not exist: run `edgetl compile` to export it")
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:  # OpConversionFailure, GeneralFailure ... all carry the op in the text
        raise CompileError(f"OpenVINO cannot convert {onnx_path.name}: {_reason(exc)}") from exc
    _dynamic_batch(ov, model)
    return model


def _dynamic_batch(ov, model) -> None:
    """An IR exported with batch 1 still accepts any batch (bench and eval run batches): axis 0 of
    every input is the batch axis."""
    shapes = {}
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_static and shape.rank.get_length() >= 1 and shape[0].is_static:
            shape[0] = ov.Dimension(-1)
            shapes[port] = shape
    if shapes:
        model.reshape(shapes)


def _spec(port) -> TensorSpec:
    dims = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    return TensorSpec.of(port.get_any_name(), port.get_element_type().to_dtype(), dims)


# -- int8 through nncf -----------------------------------------------------------------------------
def _onnx_nodes(onnx_path: Path, prefixes) -> list[str]:
    """The ONNX nodes a task's ``keep_float_prefixes`` names (``_qdq.prefixed_nodes``): OpenVINO
    keeps ONNX node names as its ops' friendly names."""
    if not prefixes:
        return []
    from edgetl.backends._qdq import prefixed_nodes

    return prefixed_nodes(require("onnx").load(str(onnx_path), load_external_data=False), prefixes)


def _from_qdq(ov, onnx_path: Path, calibration: dict[str, np.ndarray], recipe: CalibrationRecipe, cpu: TargetCpu,
              hint: dict[str, Any]):
    """ONNX Runtime's static QDQ model of the same recipe, converted: OpenVINO folds each Q/DQ pair
    into a FakeQuantize and runs the layers between them in int8, as for nncf's IR. Types for
    OpenVINO's kernels (oneDNN on x86): u8 activations (i8 when the recipe asks for symmetric ones),
    i8 weights, 7-bit on x86 without VNNI, whose u8 x s8 products saturate in int16 there as in ONNX
    Runtime (EfficientNet-Lite0 fine-tuned on digits, AVX2 EPYC: top-1 88.0% with 7-bit weights, 64.1%
    with 8, fp32 96.9%; its execution graph runs all 49 convolutions in u8 either way); the task's op
    types and keep-float prefixes as for ONNX Runtime."""
    import tempfile

    from edgetl.backends._qdq import quantize_qdq
    from edgetl.backends.onnxruntime import int8_types

    activations = "int8" if recipe.symmetric_activations else "uint8"
    reduce_range = int8_types(cpu, "u8s8")["reduce_range"]  # the same CPU rule as ONNX Runtime's own QDQ
    with tempfile.TemporaryDirectory(prefix="edgetl-ovqdq-") as tmp:
        qdq = Path(tmp) / "model.qdq.onnx"
        settings = quantize_qdq(onnx_path, qdq, calibration, recipe, activation_type=activations, weight_type="int8",
                                reduce_range=reduce_range, op_types=hint.get("op_types"),
                                keep_float_prefixes=hint.get("keep_float_prefixes") or ())
        model = _convert(ov, qdq)
    why = ("ONNX Runtime's QDQ model run by OpenVINO: " + ("7-bit weights: x86 without VNNI saturates u8 x s8 in int16"
           if reduce_range else "full 8-bit weights: the CPU accumulates int8 products in int32"))
    return model, {"source": "qdq", "quantizer": "onnxruntime QDQ, converted by OpenVINO", **settings,
                   "calibration": recipe.name, "cpu": cpu.record(), "why": f"{why} (for {cpu.source}'s CPU)"}


def _compress_weights(model, hint: dict[str, Any], keep_float: list[str]):
    """Weight-only int8 (``hint["scheme"] == "weights"``): nncf stores the MatMul and embedding
    weights as int8 with a float scale per output channel (``weights_mode`` "int8_asym", the default,
    adds a zero point); activations stay float. No calibration: a quarter of the fp32 size, and the
    CPU plugin decompresses the weights inside its kernels."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    nncf = require("nncf", "OpenVINO int8 weight compression")
    mode = hint.get("weights_mode", "int8_asym")
    if mode not in ("int8_asym", "int8_sym"):
        raise CompileError(f"the task's weights_mode {mode!r} is not an int8 weight compression: int8_asym or int8_sym")
    present = {op.get_friendly_name() for op in model.get_ordered_ops()}
    names = [n for wanted in keep_float for n in (wanted, f"{wanted}/WithoutBiases") if n in present]
    scope = nncf.IgnoredScope(names=names) if names else None
    compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode(mode), ignored_scope=scope)
    return compressed, {
        "quantizer": f"nncf {nncf.__version__} compress_weights",
        "weights": f"int8 ({mode}, per output channel)",
        "activations": "float",
        "ignored_scope": {"names": names},
        "why": hint.get("why") or "the task's scheme: weight-only int8",
    }


def _quantize(model, calibration: dict[str, np.ndarray], recipe: CalibrationRecipe, cpu: TargetCpu,
              hint: dict[str, Any], keep_float: list[str], preset_name: str = "performance"):
    """nncf post-training quantization; ``hint`` (the task's ``quantization``): ``model_type``
    "transformer" (nncf's scheme for attention models), ``smooth_quant`` (false: without it); ``keep_float``: the ONNX nodes its
    ``keep_float_prefixes`` name, kept float; ``preset_name``: nncf's preset (the ``preset`` option)."""
    # nncf imports torch's cpp_extension, which warns about a missing CUDA runtime on CPU machines.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    nncf = require("nncf", "OpenVINO int8 quantization")
    # nncf logs at INFO one line per node of an ignored scope (the audio front end: dozens, split
    # over lines); what was kept float is in the compiled entry's ignored_scope instead.
    logging.getLogger("nncf").setLevel(logging.WARNING)
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        QuantizationParameters,
    )

    ignored, scope = _ignored_scope(nncf, model, recipe, keep_float)
    model_type = nncf.ModelType.TRANSFORMER if hint.get("model_type") == "transformer" else None
    ranges, range_notes = _range_estimator(recipe)
    # "fast": one statistics pass per layer; "accurate": nncf's BiasCorrection, which re-runs
    # sub-graphs layer by layer (about 2-3x slower); "none": no correction.
    fast = recipe.bias_correction != "accurate"
    # Symmetric activations (nncf's PERFORMANCE preset, also its default for CNNs) unless the preset
    # option asks for MIXED: the recipe's symmetric_activations (false by default) does not pick it,
    # so every profile keeps the preset it was measured with. MIXED once segfaulted OpenVINO's CPU
    # plugin on a dynamic-batch SiLU net; with 2026.4.1 it builds and runs the conformance suite's
    # SiLU model and EfficientNet-Lite0 (the search's "int8 nncf mixed" variant).
    mixed = preset_name == "mixed"
    preset = nncf.QuantizationPreset.MIXED if mixed else nncf.QuantizationPreset.PERFORMANCE
    if not mixed and not recipe.symmetric_activations:
        range_notes["not_mapped"].append(
            "symmetric_activations = false: OpenVINO int8 uses symmetric activations (nncf preset "
            "'performance') unless the preset option says 'mixed'")
    overflow_fix, overflow_why = _overflow_fix(cpu)
    # SmoothQuant (nncf's default for the transformer type) migrates activation outliers into the
    # weights; the task may switch it off (``smooth_quant: false``) where it measured no gain.
    smooth = {} if hint.get("smooth_quant", True) else {"smooth_quant_alphas": AdvancedSmoothQuantParameters(matmul=-1)}
    advanced = AdvancedQuantizationParameters(
        **smooth,
        batchwise_statistics=True,
        overflow_fix=overflow_fix,
        disable_bias_correction=recipe.bias_correction == "none",
        weights_quantization_params=QuantizationParameters(per_channel=recipe.per_channel),
        activations_range_estimator_params=ranges,
    )
    # Batches with batchwise_statistics: statistics stay per sample (the estimators below take
    # extremes over samples), and nncf's per-item Python bookkeeping runs once per batch, not per sample
    # (with 300 images of 224 px it took as long as the inference). Each item is a dict of every
    # input by name, which OpenVINO's infer takes as it is. subset_size counts items: all of them.
    items = list(batches(calibration, _CALIBRATION_BATCH))
    quantized = nncf.quantize(
        model, nncf.Dataset(items), preset=preset, target_device=nncf.TargetDevice.CPU, subset_size=len(items),
        fast_bias_correction=fast, model_type=model_type, ignored_scope=scope, advanced_parameters=advanced,
    )
    _float_outputs(quantized, [n for n in ignored["names"] if n.removesuffix("/WithoutBiases") in recipe.keep_float_nodes])
    return quantized, {
        "quantizer": f"nncf {nncf.__version__} post-training quantization",
        "calibration": recipe.name,
        "samples": batch_size(calibration),
        "preset": preset.value,
        "symmetric_activations": not mixed,
        "per_channel": recipe.per_channel,
        "target_device": "CPU",
        "model_type": hint.get("model_type"),
        **({"smooth_quant": False} if smooth else {}),
        "bias_correction": recipe.bias_correction,
        "fast_bias_correction": fast,
        "disable_bias_correction": advanced.disable_bias_correction,
        "ignored_scope": ignored,
        "method": recipe.method,
        **range_notes,
        "overflow_fix": overflow_fix.value,
        "cpu": cpu.record(),
        "why": f"{overflow_why} (for {cpu.source}'s CPU)" + (f"; {hint['why']}" if hint.get("why") else ""),
    }


def _overflow_fix(cpu: TargetCpu):
    """nncf's overflow fix (7-bit weights) only where int8 dot products can saturate.

    x86 without VNNI multiplies u8 x s8 pairs into int16 (vpmaddubsw), which saturates with full
    8-bit weights; nncf's default therefore uses 7 bits in the first layer. That costs accuracy:
    on EfficientNet-Lite0 fine-tuned on grayscale digits, top-1 agreement with FP32 fell from 0.94
    to 0.79. VNNI/AMX and ARM dot products accumulate in int32 and need no fix.
    """
    from nncf.quantization.advanced_parameters import OverflowFix

    if cpu.is_arm:
        return OverflowFix.DISABLE, "ARM64: int8 dot products accumulate in int32; full 8-bit weights"
    if cpu.vnni:
        return OverflowFix.DISABLE, f"x86 with VNNI ({', '.join(sorted(cpu.vnni))}): full 8-bit weights, no saturation"
    return OverflowFix.FIRST_LAYER, ("x86 without VNNI (or unknown CPU): 7-bit weights in the first layer "
                                     "avoid int16 saturation of vpmaddubsw (nncf's default)")


def _range_estimator(recipe: CalibrationRecipe):
    """The recipe's method as nncf activation range estimators, and what that means, honestly."""
    from nncf.quantization.range_estimator import (
        AggregatorType,
        RangeEstimatorParameters,
        RangeEstimatorParametersSet,
        StatisticsCollectorParameters,
        StatisticsType,
    )

    if recipe.method == "minmax":
        return RangeEstimatorParametersSet.MINMAX, {
            # nncf's own default (the mean of per-image extremes) clipped the class-specific peaks
            # of the tiny test model's deep layers: top-1 agreement 0.59 against 1.0 with MINMAX.
            "activation_ranges": "global min/max over all calibration images (nncf MINMAX), like "
                                 "ONNX Runtime's MinMax",
            "not_mapped": [],
        }
    if recipe.method == "percentile":
        # Extremes over images of per-image quantiles: averaging them instead (nncf's MEAN_QUANTILE)
        # clips the rare, class-specific peaks of deep layers and broke the tiny test model.
        outlier = (100.0 - recipe.percentile) / 100.0
        low = StatisticsCollectorParameters(StatisticsType.QUANTILE, AggregatorType.MIN, quantile_outlier_prob=outlier)
        high = StatisticsCollectorParameters(StatisticsType.QUANTILE, AggregatorType.MAX, quantile_outlier_prob=outlier)
        return RangeEstimatorParameters(min=low, max=high), {
            "percentile": recipe.percentile,
            "activation_ranges": f"per-image {outlier:g} / {1 - outlier:g} quantiles, the most extreme over "
                                 "images (nncf QUANTILE with MIN / MAX aggregators)",
            "not_mapped": ["percentile of the pooled histogram of all images (ONNX Runtime's definition): "
                           "nncf takes quantiles per image, then the extremes over images"],
        }
    # entropy: nncf has no KL-divergence calibrator; its histogram estimator searches the clipping
    # range on a histogram too, minimising the L2 quantization error instead.
    return RangeEstimatorParametersSet.HISTOGRAM, {
        "activation_ranges": "nncf HISTOGRAM: per-tensor range minimising the L2 quantization error on "
                             "a histogram of all images (per-channel activations fall back to MINMAX)",
        "not_mapped": ["entropy (KL divergence) calibration: nncf has none; used its histogram L2 "
                       "estimator, the closest it offers"],
    }


def _ignored_scope(nncf, model, recipe: CalibrationRecipe, keep_float=()):
    """recipe.keep_float_* (and the task's ``keep_float`` ONNX nodes) as an nncf.IgnoredScope; a
    name the model lacks is the recipe's error."""
    ops = list(model.get_ordered_ops())
    present_types = {op.get_type_name() for op in ops}
    present_names = {op.get_friendly_name() for op in ops}
    types: list[str] = []
    for wanted in recipe.keep_float_ops:
        found = [t for t in _ONNX_TO_OV_TYPES.get(wanted, (wanted,)) if t in present_types]
        if not found:
            _missing(recipe, "keep_float_ops", wanted, present_types)
        types += [t for t in found if t not in types]
    if recipe.keep_float_depthwise and "GroupConvolution" in present_types and "GroupConvolution" not in types:
        types.append("GroupConvolution")  # OpenVINO's form of a depthwise (grouped) Conv
    names: list[str] = []
    for wanted in recipe.keep_float_nodes:
        # OpenVINO splits an ONNX Conv/Gemm with a bias into "<name>/WithoutBiases" + an Add "<name>".
        found = [n for n in (wanted, f"{wanted}/WithoutBiases") if n in present_names]
        if not found:
            _missing(recipe, "keep_float_nodes", wanted, present_names)
        names += found
    for wanted in keep_float:  # fused away by OpenVINO (a Constant folded in): nothing to keep float
        names += [n for n in (wanted, f"{wanted}/WithoutBiases") if n in present_names and n not in names]
    scope = nncf.IgnoredScope(types=types, names=names) if types or names else None
    return {"types": types, "names": names}, scope


def _float_outputs(model, names: list[str]) -> None:
    """The ops ``names`` hand on float outputs: a FakeQuantize nncf put on one of their outputs (or on
    that of the ReLU/Clamp right after it), for a quantized reader's sake, is bypassed. nncf's ignored
    scope only keeps an op's inputs float; ``recipe.keep_float_nodes`` keeps a node's input and output
    edges float on every runtime (as ``_qdq.float_nodes`` does for QDQ models), so the fallback's
    ranking, measured on ONNX Runtime, means the same thing here."""
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    for name in names:
        for output in ops[name].outputs():
            readers = [t.get_node() for t in output.get_target_inputs()]
            if len(readers) == 1 and readers[0].get_type_name() in ("Relu", "Clamp"):
                output = readers[0].output(0)
                readers = [t.get_node() for t in output.get_target_inputs()]
            for fq in [r for r in readers if r.get_type_name() == "FakeQuantize"]:
                fq.output(0).replace(output)


def _missing(recipe: CalibrationRecipe, field: str, wanted: str, present: set[str]) -> None:
    sample = ", ".join(sorted(present)[:12]) + (" ..." if len(present) > 12 else "")
    raise ConfigError(
        f"calibration recipe {recipe.name!r}: field '{field}': {wanted!r} is not in the OpenVINO model "
        f"(ONNX names carry over unless OpenVINO fused the op; it has: {sample})"
    )


def _reason(exc: BaseException) -> str:
    """The informative line of an OpenVINO error (they open with a C++ "Check ... failed at" line)."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip(" -")]
    for line in lines:
        if any(key in line.lower() for key in ("operation", "not support", "unsupported")):
            return line
    return lines[-1] if lines else type(exc).__name__


# -- session ---------------------------------------------------------------------------------------
class OpenVinoSession(SessionBase):
    """One compiled model and one reused InferRequest on the CPU plugin."""

    def __init__(self, path: Path, threads: int | None = None):
        ov = require("openvino", "running OpenVINO artifacts")
        if not path.is_file():
            raise ArtifactError(f"OpenVINO IR {path} does not exist: compile it with `edgetl compile --target openvino`")
        if path.suffix != ".xml":
            raise ArtifactError(f"{path} is not an OpenVINO IR: load the model.xml next to its model.bin")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except RuntimeError as exc:
            raise ArtifactError(f"OpenVINO cannot read {path}: {_reason(exc)}") from exc
        _dynamic_batch(ov, model)
        precision = model.get_rt_info(_RT_PRECISION).astype(str) if model.has_rt_info(_RT_PRECISION) else "fp32"
        asked = model.get_rt_info(_RT_INFERENCE).astype(str) if model.has_rt_info(_RT_INFERENCE) else None
        inference, self.info = _inference_precision(core, precision, asked)
        config: dict[str, Any] = {
            # One stream, latency hint: the single-stream setting that bench measures (MLPerf).
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_PRECISION_HINT": inference,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled = core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self.precision = precision
        self.inference_precision = self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.where = path.name
        self.inputs = tuple(_spec(port) for port in self._compiled.inputs)
        self.outputs = tuple(_spec(port) for port in self._compiled.outputs)

    def _run(self, feeds):
        feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        # share_inputs: no copy of the feeds; outputs are copied (the request reuses its buffers).
        out = self._request.infer(feeds, share_inputs=True)
        return {spec.name: out[i] for i, spec in enumerate(self.outputs)}

    def runtime_precisions(self) -> dict[str, dict[str, int]]:
        """{layer type: {precision: count}} of the weighted layers in OpenVINO's execution graph, e.g.
        {"Convolution": {"u8": 13, "f32": 4}}: whether an int8 IR really runs in int8 on this CPU."""
        found: dict[str, dict[str, int]] = {}
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str)
            if kind in _WEIGHTED_LAYERS:
                counts = found.setdefault(kind, {})
                runs_in = info["runtimePrecision"].astype(str)
                counts[runs_in] = counts.get(runs_in, 0) + 1
        return found

    def close(self) -> None:
        self._request = None
        self._compiled = None


def _inference_precision(core, precision: str, asked: str | None) -> tuple[str, dict[str, str]]:
    """(the INFERENCE_PRECISION_HINT, notes for ``info``): the IR's own hint (``asked``) over its
    precision's, each only where this CPU computes it: a bundle may land on a lesser CPU than the one
    it was searched for, and there it runs in f32 rather than fail."""
    hint = asked or _INFERENCE_PRECISION.get(precision, "f32")
    capability = _HINT_CAPABILITY.get(hint)
    if capability and capability not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        note = {"inference_precision_fallback": f"the IR asks for {hint}, which this CPU lacks: computing in f32"}
        return "f32", note if asked else {}
    return hint, {}
