"""OpenVINO backend: the shared conformance tests, plus the nncf options reaching the IR."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl.config import CalibrationRecipe
from edgetl.errors import CompileError, ConfigError, DataError
from edgetl.tensors import take
from tests.backends.conformance import (
    BackendConformance,
    compare,
    host_device,
    named_case,
    synthetic_images,
    task_scheme,
    tolerance,
)

ov = pytest.importorskip("openvino")


def _read(path: Path):
    return ov.Core().read_model(str(path))


def _feeds_from(op, port: int = 0) -> str:
    return op.input(port).get_source_output().get_node().get_type_name()


def _activation_source(op) -> str:
    """What produces ``op``'s data input, looking through shape-only ops (FC's Reshape)."""
    node = op.input(0).get_source_output().get_node()
    while node.get_type_name() in {"Reshape", "Squeeze", "Unsqueeze", "Transpose"}:
        node = node.input(0).get_source_output().get_node()
    return node.get_type_name()


def _biases(model) -> dict[str, np.ndarray]:
    """Constant added right after each Convolution / MatMul: what bias correction rewrites."""
    found = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Add" and _feeds_from(op) in {"Convolution", "GroupConvolution", "MatMul"}:
            const = op.input(1).get_source_output().get_node()
            if const.get_type_name() == "Constant":
                found[op.get_friendly_name()] = const.get_data().astype(np.float32)
    return found


def _tiny_onnx(path: Path, batch: int, extra_op: str | None = None) -> Path:
    """Conv -> [extra_op] -> GlobalAveragePool -> Flatten with a fixed batch (no torch needed)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv")]
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["c"], ["x"], name="custom", domain="com.example"))
    nodes += [helper.make_node("GlobalAveragePool", ["x" if extra_op else "c"], ["g"]),
              helper.make_node("Flatten", ["g"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])],
        [numpy_helper.from_array(weights, "w")],
    )
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("com.example", 1)] if extra_op else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


class TestOpenVino(BackendConformance):
    runtime = "openvino"

    @pytest.fixture(scope="class")
    @classmethod
    def pwl_conv(cls, tiny) -> str:
        """An ONNX Conv whose input feeds nothing else, so keeping it float must drop its FakeQuantize."""
        import onnx

        names = [n.name for n in onnx.load(str(tiny[0])).graph.node if n.op_type == "Conv" and "conv_pwl" in n.name]
        assert names, "test_efficientnet should have pointwise-linear convs"
        return names[-1]

    def test_ir_files_and_precision(self, build):
        for precision in ("fp32", "fp16", "int8"):
            compiled = build(precision)
            assert [f.name for f in compiled.files] == ["model.xml", "model.bin"]
            assert _read(compiled.path).get_rt_info(["edgetl", "precision"]).astype(str) == precision

    def test_fp16_halves_the_weights(self, build):
        fp32, fp16 = (build(p).path.with_suffix(".bin").stat().st_size for p in ("fp32", "fp16"))
        assert fp16 < 0.6 * fp32

    def test_inference_precision_is_pinned(self, backend, build):
        # Without the hint, a CPU with AMX/AVX512-BF16 runs an fp32 IR in bf16.
        for precision, allowed in (("fp32", {"f32"}), ("int8", {"f32"}), ("fp16", {"f16", "f32"})):
            with backend.load(build(precision).path, threads=1) as session:
                assert session.inference_precision in allowed

    def test_int8_records_what_nncf_got(self, build):
        options = build("int8").options
        assert options["preset"] == "performance" and options["fast_bias_correction"] is True
        assert options["method"] == "minmax" and "MINMAX" in options["activation_ranges"]
        assert options["samples"] == 64 and options["ignored_scope"] == {"types": [], "names": []}
        assert any("symmetric_activations" in note for note in options["not_mapped"])
        assert options["overflow_fix"] in {"disable", "first_layer_only"} and options["why"]

    def test_task_schemes_reach_nncf(self, build_scheme):
        """Text: nncf's weight-only int8 (int8 constants, no FakeQuantize: activations float); audio:
        the front end's ops (module conv1) ignored."""
        text = build_scheme("text")
        assert text.options["quantizer"].endswith("compress_weights") and text.options["activations"] == "float"
        ops = _read(text.path).get_ordered_ops()
        assert "FakeQuantize" not in {op.get_type_name() for op in ops}
        assert any(op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "u8" for op in ops)
        audio = build_scheme("audio")
        assert audio.options["ignored_scope"]["names"] == ["node_conv1d", "node_conv1d/WithoutBiases"]
        convs = [op for op in _read(audio.path).get_ordered_ops() if op.get_type_name() == "Convolution"]
        assert [_activation_source(op) == "FakeQuantize" for op in convs] == [False, True]

    def test_nncf_does_not_log_every_ignored_node(self, backend, tmp_path_factory, tmp_path, capfd):
        """The audio front end kept float is dozens of nodes: nncf's INFO lines for them are not printed."""
        onnx_path, calib, _, _ = named_case("audio", tmp_path_factory)
        options = {"threads": 1, "quantization": task_scheme("audio", self.runtime)}
        compiled = backend.compile(onnx_path, tmp_path, "int8", calib, options)
        assert compiled.options["ignored_scope"]["names"]
        printed = capfd.readouterr()
        assert "nncf" not in printed.out + printed.err

    def test_transformer_type_without_smooth_quant(self, backend, tmp_path_factory, tmp_path):
        """The other text scheme the bench compares: nncf's transformer type with SmoothQuant off,
        within the text int8 bounds."""
        onnx_path, calib, x, ref = named_case("text", tmp_path_factory)
        hint = {"model_type": "transformer", "smooth_quant": False}
        compiled = backend.compile(onnx_path, tmp_path, "int8", calib, {"threads": 2, "quantization": hint})
        assert compiled.options["model_type"] == "transformer" and compiled.options["smooth_quant"] is False
        with backend.load(compiled.path, threads=2) as session:
            self._check(session.run(x), ref, "int8", "text")

    def test_an_unknown_weights_mode_is_one_line(self, backend, tmp_path_factory, tmp_path):
        onnx_path, _, _, _ = named_case("text", tmp_path_factory)
        with pytest.raises(CompileError, match="^the task's weights_mode 'int4_sym' is not an int8 weight compression"):
            backend.compile(onnx_path, tmp_path, "int8", None, {"quantization": {"scheme": "weights", "weights_mode": "int4_sym"}})
        assert not list(tmp_path.iterdir())

    @pytest.mark.parametrize("mode", ["none", "accurate"])
    def test_bias_correction_reaches_nncf(self, backend, build, tiny, tmp_path, mode):
        recipe = CalibrationRecipe(name=mode, bias_correction=mode)
        # the same images as build("int8"), so "accurate" can be told apart from "fast"
        compiled = backend.compile(tiny[0], tmp_path, "int8", tiny[1], {"recipe": recipe})
        assert compiled.options["fast_bias_correction"] is (mode != "accurate")
        assert compiled.options["disable_bias_correction"] is (mode == "none")
        original, fast, got = (_biases(_read(p)) for p in (build("fp32").path, build("int8").path, compiled.path))
        assert got and set(got) <= set(original)
        changed = [name for name in got if not np.allclose(got[name], original[name])]
        differs_from_fast = [name for name in got if not np.array_equal(got[name], fast[name])]
        if mode == "none":
            assert not changed, f"bias correction disabled, yet biases changed: {changed}"
        else:
            assert changed and differs_from_fast

    def test_recipe_reaches_nncf(self, backend, build, tiny, tmp_path, pwl_conv):
        recipe = CalibrationRecipe(name="keep", keep_float_ops=["Gemm"], keep_float_nodes=[pwl_conv], per_channel=False)
        compiled = backend.compile(tiny[0], tmp_path, "int8", take(tiny[1], slice(0, 16)), {"recipe": recipe})
        # OpenVINO names a biased Conv's convolution "<onnx name>/WithoutBiases" and its bias Add "<onnx name>"
        conv = f"{pwl_conv}/WithoutBiases"
        assert compiled.options["ignored_scope"] == {"types": ["MatMul"], "names": [pwl_conv, conv]}
        for path, quantized in ((build("int8").path, True), (compiled.path, False)):
            ops = _read(path).get_ordered_ops()
            kept = [op for op in ops if op.get_type_name() == "MatMul" or op.get_friendly_name() == conv]
            assert len(kept) == 2
            assert all((_activation_source(op) == "FakeQuantize") is quantized for op in kept), path
        # per_channel = false: one weight scale per tensor (the dequantizing Multiply's constant)
        for path, scale_size in ((build("int8").path, lambda n: n > 1), (compiled.path, lambda n: n == 1)):
            convs = [op for op in _read(path).get_ordered_ops() if op.get_friendly_name().endswith("conv_stem/Conv/WithoutBiases")]
            dequantize = convs[0].input(1).get_source_output().get_node()
            assert dequantize.get_type_name() == "Multiply"
            assert scale_size(dequantize.input(1).get_source_output().get_node().get_data().size), path

    @pytest.mark.parametrize(("field", "value"), [("keep_float_ops", "Sigmod"), ("keep_float_nodes", "no/such/node")])
    def test_keep_float_typo_names_the_field(self, backend, tiny, tmp_path, field, value):
        recipe = CalibrationRecipe(name="typo", **{field: [value]})
        with pytest.raises(ConfigError, match=f"'typo'.*{field}.*{value}"):
            backend.compile(tiny[0], tmp_path, "int8", tiny[1], {"recipe": recipe})

    @pytest.mark.parametrize("method", ["percentile", "entropy"])
    def test_range_methods(self, backend, tiny, tmp_path, method):
        recipe = CalibrationRecipe(name=method, method=method, samples=16)
        compiled = backend.compile(tiny[0], tmp_path, "int8", take(tiny[1], slice(0, 16)), {"recipe": recipe})
        assert compiled.options["method"] == method and compiled.options["not_mapped"]
        with backend.load(compiled.path) as session:
            out = session.run(tiny[2])["logits"]
        assert (out.argmax(1) == tiny[3]["logits"].argmax(1)).mean() >= 0.9

    # -- the search's knobs (``variants``) -------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def by_label(cls, backend, build_variant):
        """label -> Compiled of the variants declared for this machine's CPU."""
        found = {v.label: v for v in backend.variants(host_device(backend))}
        return lambda label: build_variant(found[label])

    def test_qdq_source_runs_int8_in_openvino(self, by_label):
        """ONNX Runtime's QDQ model, converted: OpenVINO's execution graph runs its convolutions in
        int8 (u8/i8), not in float around dequantized weights."""
        compiled = by_label("int8 qdq")
        assert compiled.options["source"] == "qdq" and compiled.options["format"] == "QDQ"
        assert compiled.options["weights"] == "int8" and compiled.options["activations"] == "uint8"
        ran = compiled.options["runtime_precisions"]
        assert set(ran["Convolution"]) <= {"u8", "i8"} and sum(ran["Convolution"].values()) >= 10, ran
        nncf_ran = by_label("int8 nncf performance").options["runtime_precisions"]
        assert set(nncf_ran["Convolution"]) & {"u8", "i8"}, nncf_ran

    def test_qdq_source_keeps_the_tasks_float_nodes(self, backend, tmp_path_factory, tmp_path):
        """Audio's front end (module conv1) stays float through the QDQ path too."""
        onnx_path, calib, x, ref = named_case("audio", tmp_path_factory)
        options = {"threads": 1, "source": "qdq", "quantization": task_scheme("audio", self.runtime)}
        compiled = backend.compile(onnx_path, tmp_path, "int8", calib, options)
        assert compiled.options["kept_float_nodes"] == 1
        convs = [op for op in _read(compiled.path).get_ordered_ops() if op.get_type_name() == "Convolution"]
        assert [_activation_source(op) == "FakeQuantize" for op in convs] == [False, True]
        with backend.load(compiled.path, threads=1) as session:
            got = compare(session.run(x), ref)
        # ONNX Runtime's quantizer made it: ONNX Runtime's bounds (OpenVINO's nncf ones are tighter on audio)
        bounds = tolerance("onnxruntime", "audio", "int8")
        assert all(got[key] <= bounds[key] for key in ("max_rel", "mean_rel")) and got["agreement"] >= bounds["agreement"], got

    def test_mixed_preset_has_asymmetric_activations(self, by_label):
        """"mixed": some activation range is not centred on 0 (SiLU outputs: a small negative floor);
        "performance": every signed one is (symmetric)."""
        def asymmetric(compiled) -> bool:
            for op in _read(compiled.path).get_ordered_ops():
                if op.get_type_name() == "FakeQuantize" and _feeds_from(op) != "Constant":
                    low, high = np.broadcast_arrays(*(op.input(i).get_source_output().get_node().get_data() for i in (1, 2)))
                    if ((low < 0) & ~np.isclose(-low, high, rtol=0.02)).any():  # signed: -low = high * 128/127
                        return True
            return False

        mixed, performance = by_label("int8 nncf mixed"), by_label("int8 nncf performance")
        assert mixed.options["preset"] == "mixed" and mixed.options["symmetric_activations"] is False
        assert performance.options["preset"] == "performance" and performance.options["symmetric_activations"] is True
        assert asymmetric(mixed) and not asymmetric(performance)

    @pytest.mark.parametrize("hint", ["bf16", "f16"])
    def test_inference_precision_is_in_the_ir_and_honoured_or_refused(self, backend, tiny, tmp_path, hint):
        """The hint travels in the IR's rt_info; a CPU that computes it runs it, one that lacks it runs
        f32 and says so in the session's info, never fails (a bundle may land on a lesser CPU)."""
        compiled = backend.compile(tiny[0], tmp_path, "fp32", None, {"threads": 1, "inference_precision": hint})
        assert _read(compiled.path).get_rt_info(["edgetl", "inference_precision"]).astype(str) == hint
        capable = {"bf16": "BF16", "f16": "FP16"}[hint] in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        with backend.load(compiled.path, threads=1) as session:
            assert session.inference_precision == (hint if capable else "f32")
            fallback = session.info.get("inference_precision_fallback")
            assert (fallback is None) if capable else f"asks for {hint}, which this CPU lacks" in fallback
            self._check(session.run(tiny[2]), tiny[3], "fp16")  # bf16/f16 or f32: within fp16's tolerance
        assert compiled.options["inference_precision"] == hint
        assert compiled.options["inference_precision_here"] == session.inference_precision

    def test_without_a_hint_the_session_has_nothing_to_say(self, backend, build):
        with backend.load(build("fp16").path, threads=1) as session:
            assert dict(session.info) == {}  # fp16's own f16 falls back silently, as before

    @pytest.mark.parametrize(("built", "options", "message"), [
        ("fp32", {"inference_precision": "fp8"}, "openvino option inference_precision 'fp8': choose one of bf16, f16"),
        ("int8", {"preset": "fast"}, "openvino option preset 'fast': choose one of performance, mixed"),
        ("int8", {"source": "onnx"}, "openvino option source 'onnx': the only other source is 'qdq' (default: nncf)"),
        ("fp16", {"source": "qdq"}, "openvino option source 'qdq' builds static int8 only: not precision fp16"),
    ])
    def test_a_bad_knob_is_one_line(self, backend, tiny, tmp_path, built, options, message):
        with pytest.raises(CompileError, match=f"^{re.escape(message)}$"):
            backend.compile(tiny[0], tmp_path, built, tiny[1] if built == "int8" else None, options)
        assert not list(tmp_path.iterdir())

    def test_too_few_calibration_images(self, backend, tiny, tmp_path):
        with pytest.raises(DataError, match="at least 10"):
            backend.compile(tiny[0], tmp_path, "int8", {"input": synthetic_images(3, seed=0)[0]}, {})


def test_load_and_run_import_neither_torch_nor_nncf(tmp_path):
    """The device side: a bundle on a Raspberry Pi has no torch (and no nncf)."""
    from edgetl.backends.openvino import OpenVinoBackend

    compiled = OpenVinoBackend().compile(_tiny_onnx(tmp_path / "m.onnx", batch=2), tmp_path / "out", "fp32", None, {})
    code = (
        "import sys, numpy as np\n"
        "from edgetl.backends.openvino import OpenVinoBackend\n"
        f"with OpenVinoBackend().load({str(compiled.path)!r}, threads=1) as s:\n"
        "    assert s.run({'input': np.zeros((1, 3, 8, 8), np.float32)})['logits'].shape == (1, 4)\n"
        "print(sorted(m for m in ('torch', 'nncf', 'onnx') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_fixed_batch_onnx_gets_a_dynamic_batch(tmp_path):
    from edgetl.backends.openvino import OpenVinoBackend

    backend = OpenVinoBackend()
    compiled = backend.compile(_tiny_onnx(tmp_path / "b1.onnx", batch=1), tmp_path / "out", "fp32", None, {})
    with backend.load(compiled.path, threads=1) as session:
        assert session.inputs[0].shape[1:] == (3, 8, 8) and isinstance(session.inputs[0].shape[0], str)
        assert session.run({"input": np.zeros((3, 3, 8, 8), np.float32)})["logits"].shape == (3, 4)


def test_unconvertible_op_is_named(tmp_path):
    from edgetl.backends.openvino import OpenVinoBackend

    onnx_path = _tiny_onnx(tmp_path / "bad.onnx", batch=1, extra_op="Frobnicate")
    with pytest.raises(CompileError, match="Frobnicate"):
        OpenVinoBackend().compile(onnx_path, tmp_path / "out", "fp32", None, {})


@pytest.mark.parametrize(
    ("arch", "flags", "expected"),
    [
        ("", ["avx2", "avx512f", "avx512_vnni"], "disable"),
        ("", ["avx2", "avx_vnni"], "disable"),
        ("", ["avx2", "fma"], "first_layer_only"),
        ("", ["asimd", "asimddp"], "disable"),
        ("aarch64", [], "disable"),  # a profile that names only the architecture
    ],
)
def test_overflow_fix_follows_the_cpu(arch, flags, expected):
    from edgetl._cpu import target_cpu
    from edgetl.backends.openvino import _overflow_fix

    fix, why = _overflow_fix(target_cpu({"cpu_arch": arch or None, "cpu_flags": flags}))
    assert fix.value == expected and why
