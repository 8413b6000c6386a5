"""ONNX Runtime backend: the shared conformance tests, plus its own int8 type choice."""

from __future__ import annotations

import pytest

from edgetl.backends.onnxruntime import choose_int8_types
from edgetl.config import CalibrationRecipe
from edgetl.errors import ConfigError, DataError
from tests.backends.conformance import BackendConformance, synthetic_images


class TestOnnxRuntime(BackendConformance):
    runtime = "onnxruntime"

    def test_int8_records_why(self, build):
        options = build("int8").options
        assert options["format"] == "QDQ" and options["why"]
        assert options["activations"] in {"int8", "uint8"} and options["weights"] == "int8"

    def test_too_few_calibration_images(self, backend, tiny, tmp_path):
        with pytest.raises(DataError, match="at least 10"):
            backend.compile(tiny[0], tmp_path, "int8", synthetic_images(3, seed=0)[0], {})

    def test_keep_float_typo_names_the_field(self, backend, tiny, tmp_path):
        recipe = CalibrationRecipe(name="typo", keep_float_ops=["Sigmod"])
        with pytest.raises(ConfigError, match="keep_float_ops.*Sigmod"):
            backend.compile(tiny[0], tmp_path, "int8", tiny[1], {"recipe": recipe})

    @pytest.mark.parametrize("method", ["entropy", "percentile"])
    def test_histogram_methods(self, backend, tiny, tmp_path, method):
        recipe = CalibrationRecipe(name=method, method=method, keep_float_ops=["Gemm"])
        compiled = backend.compile(tiny[0], tmp_path, "int8", tiny[1], {"recipe": recipe})
        assert compiled.options["method"] == method
        with backend.load(compiled.path) as session:
            out = session.run(tiny[2])
        assert (out.argmax(1) == tiny[3].argmax(1)).mean() >= 0.9


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
