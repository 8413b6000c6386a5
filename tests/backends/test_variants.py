"""Each runtime's search space (``Backend.variants``) follows the device it is listed for: the CPU's
flags (a profile's, never this machine's), the task's int8 hint; and a plugin without ``variants``
gets one variant per precision. No model is built here (see the conformance tests for that)."""

from __future__ import annotations

import pytest

from edgetl._cpu import TargetCpu
from edgetl.backends import BackendBase, CpuBackendBase, SearchDevice, Variant, get_backend
from edgetl.backends.onnxruntime import int8_types
from edgetl.errors import CompileError

AVX2 = TargetCpu("x86_64", frozenset({"avx", "avx2", "fma", "f16c"}), "the target profile")  # this EPYC's kind
VNNI = TargetCpu("x86_64", AVX2.flags | {"avx512f", "avx512bw", "avx512_vnni"}, "the target profile")  # Zen 4
ZEN4 = TargetCpu("x86_64", VNNI.flags | {"avx512_bf16"}, "the target profile")
SAPPHIRE = TargetCpu("x86_64", ZEN4.flags | {"avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"}, "the target profile")
PI5 = TargetCpu("aarch64", frozenset({"asimd", "asimddp", "asimdhp"}), "the target profile")  # Cortex-A76
PI4 = TargetCpu("aarch64", frozenset({"asimd"}), "the target profile")  # Cortex-A72: no fp16 arithmetic


def labels(runtime: str, cpu: TargetCpu, hint: dict | None = None, device: str = "cpu") -> list[str]:
    return [v.label for v in get_backend(runtime).variants(SearchDevice(device, cpu, hint or {}, {}))]


@pytest.mark.parametrize(("cpu", "expected"), [
    (AVX2, ["fp32", "int8 u8s8"]),
    (VNNI, ["fp32", "int8 u8s8"]),
    (PI5, ["fp32", "fp16", "int8 s8s8"]),
    (PI4, ["fp32", "int8 s8s8"]),
])
def test_onnxruntime_searches_what_the_cpu_runs_fast(cpu, expected):
    assert labels("onnxruntime", cpu) == expected


def test_onnxruntime_variants_carry_their_knobs():
    found = {v.label: v for v in get_backend("onnxruntime").variants(SearchDevice("cpu", PI5, {}, {}))}
    assert found["int8 s8s8"] == Variant("int8", "int8 s8s8", {"int8_types": "s8s8"}, {"per_channel": True})
    assert found["fp32"] == Variant("fp32", "fp32")


def test_onnxruntime_dynamic_scheme_is_one_int8_variant():
    """Text's dynamic int8 has its own types: the static type and scale choices do not apply."""
    assert labels("onnxruntime", AVX2, {"scheme": "dynamic"}) == ["fp32", "int8 dynamic"]
    assert labels("onnxruntime", PI5, {"scheme": "dynamic"}) == ["fp32", "fp16", "int8 dynamic"]


@pytest.mark.parametrize(("cpu", "wanted", "expected"), [
    (AVX2, None, ("uint8", True)),
    (AVX2, "u8s8", ("uint8", True)),  # 7-bit weights: vpmaddubsw saturates in int16 without VNNI
    (AVX2, "s8s8", ("int8", True)),  # ONNX Runtime runs it through the same u8s8 kernels on x86
    (VNNI, "s8s8", ("int8", False)),
    (PI5, None, ("int8", False)),
    (PI5, "u8s8", ("uint8", False)),
])
def test_int8_types_option_overrides_the_cpus_choice(cpu, wanted, expected):
    chosen = int8_types(cpu, wanted)
    assert (chosen["activations"], chosen["reduce_range"]) == expected and chosen["weights"] == "int8"
    assert wanted is None or wanted in chosen["why"]


def test_an_unknown_int8_types_is_one_line():
    with pytest.raises(CompileError, match="^onnxruntime option int8_types 's8u8': choose one of u8s8, s8s8$"):
        int8_types(AVX2, "s8u8")


@pytest.mark.parametrize(("cpu", "expected"), [
    (AVX2, ["fp32", "int8 nncf performance", "int8 nncf mixed", "int8 nncf accurate-bc", "int8 qdq"]),
    (ZEN4, ["fp32", "fp32 bf16-hint", "int8 nncf performance", "int8 nncf mixed", "int8 nncf accurate-bc", "int8 qdq"]),
    (SAPPHIRE, ["fp32", "fp32 bf16-hint", "fp16", "int8 nncf performance", "int8 nncf mixed", "int8 nncf accurate-bc", "int8 qdq"]),
    (PI5, ["fp32", "fp16", "int8 nncf performance", "int8 nncf mixed", "int8 nncf accurate-bc", "int8 qdq"]),
    (PI4, ["fp32", "int8 nncf performance", "int8 nncf mixed", "int8 nncf accurate-bc", "int8 qdq"]),
])
def test_openvino_float_hints_follow_the_cpus_flags(cpu, expected):
    """bf16 only with AVX512-BF16/AMX (never on ARM: OpenVINO has no ARM bf16 kernels); fp16 where the
    CPU has fp16 arithmetic."""
    assert labels("openvino", cpu) == expected


def test_openvino_task_schemes_keep_their_own_int8():
    """Text's weight-only int8 has no presets nor QDQ counterpart; nncf's transformer type no QDQ."""
    assert labels("openvino", ZEN4, {"scheme": "weights"}) == ["fp32", "fp32 bf16-hint", "int8 weights"]
    assert "int8 qdq" not in labels("openvino", AVX2, {"model_type": "transformer"})
    audio = labels("openvino", AVX2, {"keep_float_prefixes": ["frontend"]})
    assert audio == labels("openvino", AVX2)  # keep-float prefixes apply to every int8 variant


@pytest.mark.parametrize("cpu", [AVX2, SAPPHIRE, PI5])
def test_tensorrt_variants_do_not_depend_on_the_cpu(cpu):
    assert labels("tensorrt", cpu, device="gpu") == ["fp16", "int8", "int8 mixed"]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "tensorrt"])
def test_every_variant_has_its_own_fingerprint(runtime):
    """What the search caches by: two variants never share a build, whatever the CPU."""
    backend = get_backend(runtime)
    for cpu in (AVX2, SAPPHIRE, PI5):
        found = backend.variants(SearchDevice(backend.devices[0], cpu, {}, {}))
        keys = {(v.precision, repr(sorted(backend.fingerprint({"cpu_arch": cpu.arch, "cpu_flags": sorted(cpu.flags),
                                                               **v.options}).items())), repr(sorted(v.recipe.items())))
                for v in found}
        assert len(keys) == len(found), [v.label for v in found]


def test_a_plugin_without_variants_gets_one_per_precision():
    """A runtime that declares no search space still joins the search, as its profiles build it."""

    class Minimal(BackendBase):
        name = "minimal"
        precisions = ("fp32", "int8")

    class MinimalCpu(CpuBackendBase):
        name = "minimalcpu"
        precisions = ("fp16",)

    device = SearchDevice("cpu", AVX2, {}, {})
    assert Minimal().variants(device) == [Variant("fp32", "fp32"), Variant("int8", "int8")]
    assert MinimalCpu().variants(device) == [Variant("fp16", "fp16")]
    assert Variant("int8", "int8").options == {} and Variant("int8", "int8").recipe == {}
