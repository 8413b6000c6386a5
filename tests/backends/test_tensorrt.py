"""TensorRT backend: engines are built here through tensorrt_rtx (no GPU needed); running them
needs a GPU (``@pytest.mark.gpu``). Without one, accuracy is checked through the QDQ/FP16 ONNX."""

from __future__ import annotations

import json

import onnx
import pytest

from edgetl.backends import get_backend
from edgetl.backends.tensorrt import DEFAULT_ARCH
from edgetl.config import CalibrationRecipe
from edgetl.errors import CompileError, EdgetlError
from tests.backends.conformance import (
    NAMED_MODELS,
    SAMPLES,
    SEQUENCE,
    BackendConformance,
    compare,
    float_convs,
    host_device,
    named_case,
    run_onnx_cpu,
)


class TestTensorRt(BackendConformance):
    runtime = "tensorrt"
    # the size the engine profile is built for on the named models' dynamic axes (fp32/fp16 have no
    # calibration samples to take it from)
    compile_options = {"dims": {"sequence": SEQUENCE, "samples": SAMPLES}}

    @pytest.mark.gpu
    def test_outputs_match_pytorch(self, backend, build, tiny, precision):
        super().test_outputs_match_pytorch(backend, build, tiny, precision)

    @pytest.mark.gpu
    def test_run_checks_the_feeds(self, backend, build, tiny):
        super().test_run_checks_the_feeds(backend, build, tiny)

    @pytest.mark.gpu
    @pytest.mark.parametrize("named", list(NAMED_MODELS))
    def test_named_model_matches_pytorch(self, backend, build_named, tmp_path_factory, named, precision):
        super().test_named_model_matches_pytorch(backend, build_named, tmp_path_factory, named, precision)

    @pytest.mark.gpu
    @pytest.mark.parametrize("named", list(NAMED_MODELS))
    def test_task_scheme_matches_pytorch(self, backend, build_scheme, tmp_path_factory, named):
        super().test_task_scheme_matches_pytorch(backend, build_scheme, tmp_path_factory, named)

    @pytest.mark.gpu
    def test_variant_matches_pytorch(self, backend, build_variant, tiny, variant):
        super().test_variant_matches_pytorch(backend, build_variant, tiny, variant)

    def test_variant_builds_and_estimate_matches_pytorch(self, build_variant, tiny, variant):
        """Every variant the search declares builds its engine here; its ONNX twin stays within tolerance."""
        compiled = build_variant(variant)
        assert compiled.path.name == "model.engine" and compiled.path.stat().st_size > 0
        _, _, x, ref = tiny
        self._check(run_onnx_cpu(compiled.estimate_with, x), ref, variant.precision)

    def test_mixed_runs_the_float_layers_in_fp16(self, build_variant):
        """int8 "mixed": the layers left float, and the Q/DQ scales, are fp16 (opset 19 allows fp16
        scales); the quantized weights stay int8 and the model's inputs and outputs fp32."""
        variants = {v.label: v for v in get_backend("tensorrt").variants(host_device(get_backend("tensorrt")))}
        plain, mixed = (onnx.load(str(build_variant(variants[label]).estimate_with)) for label in ("int8", "int8 mixed"))
        floats = lambda m: {i.data_type for i in m.graph.initializer} - {onnx.TensorProto.INT8, onnx.TensorProto.INT64}  # noqa: E731
        assert floats(plain) == {onnx.TensorProto.FLOAT} and floats(mixed) == {onnx.TensorProto.FLOAT16}
        assert next(o.version for o in mixed.opset_import if o.domain == "") >= 19
        assert [i.type.tensor_type.elem_type for i in (*mixed.graph.input, *mixed.graph.output)] == [onnx.TensorProto.FLOAT] * 2
        assert sum(n.op_type == "DequantizeLinear" for n in mixed.graph.node) == sum(
            n.op_type == "DequantizeLinear" for n in plain.graph.node)
        assert build_variant(variants["int8 mixed"]).options["int8_float"] == "fp16"

    @pytest.mark.parametrize(("built", "value", "message"), [
        ("int8", "bf16", "tensorrt option int8_float 'bf16': choose fp32 or fp16"),
        ("fp16", "fp16", "tensorrt option int8_float applies to int8 builds, not fp16"),
    ])
    def test_a_bad_int8_float_is_one_line(self, backend, tiny, tmp_path, built, value, message):
        with pytest.raises(CompileError, match=f"^{message}$"):
            backend.compile(tiny[0], tmp_path, built, tiny[1], {"int8_float": value})
        assert not list(tmp_path.iterdir())

    def test_variants_are_fp16_and_int8(self, backend):
        """No fp32 (never the fastest on a GPU); the same on any CPU: the GPU decides."""
        labels = [(v.precision, v.label, dict(v.options)) for v in backend.variants(host_device(backend))]
        assert labels == [("fp16", "fp16", {}), ("int8", "int8", {}), ("int8", "int8 mixed", {"int8_float": "fp16"})]

    @pytest.mark.parametrize("named", list(NAMED_MODELS))
    def test_task_scheme_estimate_matches_pytorch(self, build_scheme, tmp_path_factory, named):
        """The engine's QDQ twin on ONNX Runtime CPU: text with Q/DQ on the matrix products only,
        audio with its front end (conv1) float."""
        compiled = build_scheme(named)
        _, _, x, ref = named_case(named, tmp_path_factory)
        self._check(run_onnx_cpu(compiled.estimate_with, x), ref, "int8", named)
        if named == "audio":
            assert float_convs(compiled.estimate_with) == ["node_conv1d"]

    @pytest.mark.parametrize("named", list(NAMED_MODELS))
    def test_named_model_estimate_matches_pytorch(self, build_named, tmp_path_factory, named, precision):
        compiled = build_named(named, precision)
        _, _, x, ref = named_case(named, tmp_path_factory)
        self._check(run_onnx_cpu(compiled.estimate_with, x), ref, precision, named)

    @pytest.mark.parametrize("named", list(NAMED_MODELS))
    def test_engine_profile_covers_every_dynamic_dim(self, build_named, named):
        """One optimization profile: batch 1..max_batch, the other named dims 1..their size."""
        compiled = build_named(named, "fp32")
        expected = {"text": {"input_ids": [1, SEQUENCE], "attention_mask": [1, SEQUENCE]},
                    "audio": {"waveform": [1, SAMPLES]}}[named]
        assert compiled.options["shapes"] == expected
        assert json.loads(compiled.path.with_name("model.engine.json").read_text())["shapes"] == expected

    def test_op_types_it_cannot_quantize_are_one_line(self, backend, tmp_path_factory, tmp_path):
        onnx_path, calib, _, _ = named_case("text", tmp_path_factory)
        with pytest.raises(CompileError, match=r"op_types \['LSTM'\] name none of the ops TensorRT's int8 quantizes"):
            backend.compile(onnx_path, tmp_path, "int8", calib, {"quantization": {"op_types": ["LSTM"]}})

    def test_dynamic_dim_without_a_size_is_a_compile_error(self, backend, tmp_path_factory, tmp_path):
        onnx_path = named_case("text", tmp_path_factory)[0]
        with pytest.raises(CompileError, match="dimension 'sequence' of input 'input_ids'.*dims = {sequence = 128}"):
            backend.compile(onnx_path, tmp_path, "fp32", None, {})

    def test_estimate_matches_pytorch(self, build, tiny, precision):
        """Without a GPU, accuracy is estimated from the engine's ONNX twin on ONNX Runtime CPU."""
        compiled = build(precision)
        assert compiled.estimate_with in compiled.files
        _, _, x, ref = tiny
        self._check(run_onnx_cpu(compiled.estimate_with, x), ref, precision)

    def test_engine_records_arch_and_version(self, build, precision):
        compiled = build(precision)
        assert compiled.path.name == "model.engine"
        meta = json.loads(compiled.path.with_name("model.engine.json").read_text())
        assert meta["gpu_arch"] == DEFAULT_ARCH == compiled.options["gpu_arch"]
        assert meta["tensorrt"] == compiled.options["tensorrt"]
        assert "gpu_arch_note" in compiled.options  # the default was chosen for the user: say so
        assert compiled.estimate_with.name == f"model.{'qdq' if precision == 'int8' else precision}.onnx"

    def test_qdq_is_tensorrt_compatible(self, build):
        """Symmetric int8 everywhere, bias never quantized (TensorRT rejects int32 bias DQ)."""
        model = onnx.load(str(build("int8").estimate_with))
        init = {i.name: i for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
                zero_point = onnx.numpy_helper.to_array(init[node.input[2]])
                assert zero_point.dtype.name == "int8" and not zero_point.any(), node.name
        dq_inputs = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        assert all(init[n].data_type != onnx.TensorProto.INT32 for n in dq_inputs if n in init)
        # Q/DQ feed weighted ops only: a Q/DQ between a Conv and its activation would quantize the
        # pre-activation range and starve the ReLU6 that follows of levels.
        consumers = {}
        for n in model.graph.node:
            for i in n.input:
                consumers.setdefault(i, set()).add(n.op_type)
        fed = set().union(*(consumers.get(n.output[0], set()) for n in model.graph.node
                            if n.op_type == "DequantizeLinear" and n.input[0] not in init))
        assert fed <= {"Conv", "Gemm", "MatMul"}, fed

    def test_asymmetric_recipe_is_overridden_and_said(self, backend, tiny, tmp_path):
        recipe = CalibrationRecipe(name="asym", symmetric_activations=False)
        compiled = backend.compile(tiny[0], tmp_path, "int8", tiny[1], {"recipe": recipe, "gpu_arch": "sm86"})
        assert compiled.options["symmetric_activations"] is True
        assert "overridden" in compiled.options["why"]
        assert json.loads((tmp_path / "model.engine.json").read_text())["gpu_arch"] == "sm86"

    def test_unsupported_arch_defers_the_engine_to_the_device(self, backend, tiny, tmp_path):
        compiled = backend.compile(tiny[0], tmp_path, "fp16", None, {"gpu_arch": "sm87"})
        assert compiled.path == compiled.estimate_with  # the ONNX; the device builds the engine
        assert "deferred" in compiled.options["engine"]

    def test_load_without_gpu_names_the_estimate(self, backend, build):
        if backend.can_run_here():
            pytest.skip("this machine has a GPU")
        with pytest.raises(EdgetlError, match="need an NVIDIA GPU.*model.qdq.onnx"):
            backend.load(build("int8").path)

    @pytest.mark.gpu
    def test_engine_matches_its_estimate(self, backend, build, tiny, precision):
        """On a GPU: the engine agrees with the ONNX its accuracy was estimated from."""
        compiled = build(precision)
        x = tiny[2]
        with backend.load(compiled.path) as session:
            out = session.run(x)
        assert compare(out, run_onnx_cpu(compiled.estimate_with, x))["agreement"] >= 0.97


def test_depthwise_convs_stay_float_when_the_recipe_says_so(tmp_path):
    """calibration/tensorrt.toml: depthwise convs keep float inputs; the others are quantized."""
    from edgetl.backends._qdq import depthwise_convs
    from edgetl.config import load_recipe
    from tests.backends.conformance import build_tiny_onnx, synthetic_images

    onnx_path, _ = build_tiny_onnx(tmp_path / "tiny.onnx", steps=5)
    calib, _ = synthetic_images(16, seed=3)
    recipe = load_recipe("tensorrt")
    assert recipe.keep_float_depthwise
    (tmp_path / "out").mkdir()
    compiled = get_backend("tensorrt").compile(onnx_path, tmp_path / "out", "int8", {"input": calib}, {"recipe": recipe})
    model = onnx.load(str(compiled.estimate_with))
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    depthwise = set(depthwise_convs(model))
    assert depthwise and compiled.options["keep_float_depthwise"] == len(depthwise)
    for node in model.graph.node:
        if node.op_type == "Conv":
            quantized_input = produced_by.get(node.input[0]) == "DequantizeLinear"
            assert quantized_input == (node.name not in depthwise), node.name


def test_profile_dims_are_validated():
    from pydantic import ValidationError

    from edgetl.backends.tensorrt import TensorRtOptions

    assert TensorRtOptions(dims={"sequence": 128}).dims == {"sequence": 128}
    for bad in ({"sequence": 0}, {"sequence": "128"}):
        with pytest.raises(ValidationError, match="dims.sequence"):
            TensorRtOptions(dims=bad)
