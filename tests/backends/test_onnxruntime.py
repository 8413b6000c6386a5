"""ONNX Runtime backend: the shared conformance tests, plus its own int8 type choice."""

from __future__ import annotations

import pytest

from edgetl.backends.onnxruntime import choose_int8_types
from edgetl.config import CalibrationRecipe
from edgetl.errors import CompileError, ConfigError, DataError
from tests.backends.conformance import (
    BackendConformance,
    float_convs,
    named_case,
    synthetic_images,
    task_scheme,
    tiny_case,
)


class TestOnnxRuntime(BackendConformance):
    runtime = "onnxruntime"

    def test_int8_records_why(self, build):
        options = build("int8").options
        assert options["format"] == "QDQ" and options["why"]
        assert options["activations"] in {"int8", "uint8"} and options["weights"] == "int8"

    def test_task_schemes_reach_the_artifact(self, build_scheme):
        """Dynamic int8 for text after ONNX Runtime's transformer fusion (MatMulInteger/DynamicQuantizeLinear,
        no QDQ; the embedding table int8 too); the audio front end (module conv1) float while the rest is QDQ."""
        import onnx

        text = build_scheme("text")
        ops = {n.op_type for n in onnx.load(str(text.path)).graph.node}
        assert text.options["format"] == "dynamic" and "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops
        assert text.options["fusion"] == "bert" and "fused_ops" in text.options
        floats = [i.name for i in onnx.load(str(text.path)).graph.initializer if i.data_type == onnx.TensorProto.FLOAT
                  and len(i.dims) == 2]
        assert not floats, f"float weight matrices left: {floats}"
        audio = build_scheme("audio")
        assert float_convs(audio.path) == ["node_conv1d"] and audio.options["kept_float_nodes"] == 1

    def test_fp16_keeps_the_tasks_float_nodes_in_float32(self, backend, tmp_path_factory, tmp_path):
        """A task's float nodes (an audio front end whose power spectrum leaves fp16's range) stay fp32
        in the fp16 artifact too; the rest is fp16."""
        import onnx

        onnx_path, _, x, ref = named_case("audio", tmp_path_factory)
        hint = {"keep_float_prefixes": task_scheme("audio", self.runtime)["keep_float_prefixes"]}
        compiled = backend.compile(onnx_path, tmp_path, "fp16", None, {"quantization": hint})
        assert compiled.options["kept_float_nodes"] == 1
        model = onnx.load(str(compiled.path))
        types = {i.name: i.data_type for i in model.graph.initializer}
        cast_to = {n.output[0]: n.attribute[0].i for n in model.graph.node if n.op_type == "Cast"}
        kept = next(n for n in model.graph.node if n.name == "node_conv1d")
        # its inputs arrive in float32: a float initializer, or a Cast to float32 of the fp16 one
        assert all(types.get(i, cast_to.get(i)) == onnx.TensorProto.FLOAT for i in kept.input[:2])
        assert onnx.TensorProto.FLOAT16 in types.values()
        with backend.load(compiled.path, threads=1) as session:
            self._check(session.run(x), ref, "fp16", "audio")

    def test_an_unknown_fusion_is_one_line(self, backend, tmp_path_factory, tmp_path):
        onnx_path, calib, _, _ = named_case("text", tmp_path_factory)
        with pytest.raises(CompileError, match="^the task's fusion 'nope' is not a model type of ONNX Runtime's transformer optimizer: choose one of .*bert"):
            backend.compile(onnx_path, tmp_path, "int8", calib, {"quantization": {"scheme": "dynamic", "fusion": "nope"}})
        assert not list(tmp_path.iterdir())

    def test_a_keep_float_prefix_naming_nothing_is_one_line(self, backend, tmp_path_factory, tmp_path):
        onnx_path, calib, _, _ = named_case("audio", tmp_path_factory)
        with pytest.raises(CompileError, match="keep_float_prefixes 'frontend' matches no node"):
            backend.compile(onnx_path, tmp_path, "int8", calib, {"quantization": {"keep_float_prefixes": ["frontend"]}})

    def test_too_few_calibration_images(self, backend, tiny, tmp_path):
        with pytest.raises(DataError, match="at least 10"):
            backend.compile(tiny[0], tmp_path, "int8", {"input": synthetic_images(3, seed=0)[0]}, {})

    def test_keep_float_typo_names_the_field(self, backend, tiny, tmp_path):
        recipe = CalibrationRecipe(name="typo", keep_float_ops=["Sigmod"])
        with pytest.raises(ConfigError, match="keep_float_ops.*Sigmod"):
            backend.compile(tiny[0], tmp_path, "int8", tiny[1], {"recipe": recipe})

    def test_as_specified_runs_qdq_unfused(self, backend, build, tiny, tmp_path):
        """Estimates of another runtime's int8 must not go through this CPU's fused integer kernels
        (which saturate on x86 without VNNI): the graph the session runs keeps its Q/DQ nodes."""
        import onnx
        import onnxruntime as ort

        path = build("int8").path

        def ops_run_by(load) -> set[str]:
            with load(path, threads=1) as session:
                so = session._sess.get_session_options()
            so.optimized_model_filepath = str(tmp_path / f"{load.__name__}.onnx")  # what that session runs
            ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            return {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}

        assert "QLinearConv" in ops_run_by(backend.load)
        unfused = ops_run_by(backend.load_as_specified)
        assert "QLinearConv" not in unfused and {"DequantizeLinear", "Conv"} <= unfused
        with backend.load_as_specified(path, threads=1) as session:
            out = session.run(tiny[2])["logits"]
        assert (out.argmax(1) == tiny[3]["logits"].argmax(1)).mean() >= 0.9

    @pytest.mark.parametrize("method", ["entropy", "percentile"])
    def test_histogram_methods(self, backend, tiny, tmp_path, method):
        recipe = CalibrationRecipe(name=method, method=method, keep_float_ops=["Gemm"])
        compiled = backend.compile(tiny[0], tmp_path, "int8", tiny[1], {"recipe": recipe})
        assert compiled.options["method"] == method
        with backend.load(compiled.path) as session:
            out = session.run(tiny[2])["logits"]
        assert (out.argmax(1) == tiny[3]["logits"].argmax(1)).mean() >= 0.9


@pytest.mark.parametrize(
    ("flags", "machine", "expected"),
    [
        ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", ("uint8", "int8", False)),
        ({"avx2"}, "x86_64", ("uint8", "int8", True)),
        ({"asimd", "asimddp"}, "aarch64", ("int8", "int8", False)),
    ],
)
def test_int8_types_follow_the_cpu(flags, machine, expected):
    chosen = choose_int8_types(flags, machine)
    assert (chosen["activations"], chosen["weights"], chosen["reduce_range"]) == expected
    assert chosen["why"]


def test_inputs_the_model_cannot_run_are_one_line(tmp_path_factory, capfd):
    """A token id past the embedding (a bundle's tokenizer or pad_id that is not its model's):
    ONNX Runtime's own error type and log line become one ArtifactError line."""
    import numpy as np

    from edgetl.backends import get_backend
    from edgetl.errors import ArtifactError

    onnx_path, _, x, _ = named_case("text", tmp_path_factory)
    feeds = {k: v[:1].copy() for k, v in x.items()}
    feeds["input_ids"][0, 0] = 10**6
    with get_backend("onnxruntime").load(onnx_path, threads=1) as session:
        with pytest.raises(ArtifactError, match=r"model.onnx cannot run these inputs: .*out of") as caught:
            session.run(feeds)
        assert np.isfinite(session.run({k: v[:1] for k, v in x.items()})["logits"]).all()
    assert len(str(caught.value).splitlines()) == 1 and "Gather" not in capfd.readouterr().err


def test_activation_ranges_are_measured_once_per_calibration_set(tmp_path_factory, tmp_path):
    """Builds that differ only in int8 types or per-channel reuse the ranges of the first build (the
    same bytes as a fresh calibration), and another calibration set is calibrated again."""
    from edgetl.backends import _qdq

    onnx_path, calibration, _, _ = tiny_case(tmp_path_factory)
    x = calibration["input"]
    recipe = CalibrationRecipe(name="t", samples=len(x), method="percentile")

    def build(name, data, **types):
        _qdq.quantize_qdq(onnx_path, tmp_path / name, data, recipe, **types)
        return (tmp_path / name).read_bytes()

    before = set(_qdq._RANGES.iterdir()) if _qdq._RANGES else set()
    first = build("a.onnx", calibration, activation_type="uint8", weight_type="int8")
    made = set(_qdq._RANGES.iterdir()) - before
    assert len(made) == 1  # the first build measured and stored its ranges
    assert build("b.onnx", calibration, activation_type="uint8", weight_type="int8") == first
    build("c.onnx", calibration, activation_type="int8", weight_type="int8")
    assert set(_qdq._RANGES.iterdir()) - before == made  # other types: the same ranges
    build("d.onnx", {"input": x[::-1].copy() * 2}, activation_type="uint8", weight_type="int8")
    assert len(set(_qdq._RANGES.iterdir()) - before) == 2  # other samples: calibrated again
