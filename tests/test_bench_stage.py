"""`edgetl bench` end to end on the tiny run: real artifacts, real runtimes, the PyTorch reference."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from edgetl._lazy import available
from edgetl.bench.run import SCHEMA, bench, result_path
from edgetl.cli import cli
from edgetl.rundir import RunDir

FAST = ["--iterations", "20", "--threads", "1", "--device", "ci"]


@pytest.fixture(scope="module")
def compiled_run(tiny_run, tmp_path_factory):
    """tiny_run compiled for ONNX Runtime fp32 + int8 and, where tensorrt-rtx is installed, a TensorRT
    engine (which cannot run without a GPU: its row must say so)."""
    from edgetl.compiler import compile

    dest = tmp_path_factory.mktemp("bench") / "run"
    shutil.copytree(tiny_run.path, dest)
    rows = compile(dest, ["onnxruntime"], precisions=["fp32", "int8"], progress=False)
    if available("tensorrt_rtx"):
        rows += compile(dest, ["tensorrt"], precisions=["fp32"], gpu_arch="sm89", progress=False)
    assert all(r["status"] != "failed" for r in rows), rows
    return RunDir.open(dest)


@pytest.fixture(scope="module")
def benched(compiled_run):
    return bench(compiled_run.path, device_name="ci", batches=(1, 2), threads=1, iterations=30)


@pytest.fixture
def writable(compiled_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(compiled_run.path, dest)
    return RunDir.open(dest)


def test_every_artifact_and_the_reference_get_a_result_file(benched, compiled_run):
    rows = {r["key"]: r for r in benched.rows}
    assert list(rows)[0] == "pytorch-eager/fp32"
    for key in ("pytorch-eager/fp32", "onnxruntime/fp32", "onnxruntime/int8"):
        doc = json.loads(result_path(compiled_run, key, "ci").read_text())
        assert doc["schema"] == SCHEMA and doc["status"] == "ok" and doc["device"]["name"] == "ci"
        assert [r["batch"] for r in doc["latency"]] == [1, 2]
        assert all(r["iterations"] == 30 and len(r["samples_ms"]) == 30 for r in doc["latency"])
        assert doc["settings"]["threads"] == 1 and doc["memory"]["isolated"] is True
        assert doc["load"]["first_inference_ms"] > 0
        assert doc["accuracy"]["n"] == len(json.loads((compiled_run.path / "train/split.json").read_text())["val"])
        assert doc["device"]["runtimes"]["onnxruntime"]
        assert doc["gates"]["status"] == "n/a"  # bare runtime targets have no budgets


def test_speedups_are_against_the_reference_measured_in_the_same_run(benched):
    rows = {r["key"]: r for r in benched.rows}
    ref = {r["batch"]: r["p50_ms"] for r in rows["pytorch-eager/fp32"]["latency"]}
    for row in rows["onnxruntime/int8"]["latency"]:
        assert row["speedup_vs_reference"] == pytest.approx(ref[row["batch"]] / row["p50_ms"])
    assert rows["onnxruntime/fp32"]["accuracy"]["agreement"] == 1.0  # fp32 = the reference's predictions
    assert rows["pytorch-eager/fp32"]["accuracy"]["drop_pp"] == 0


@pytest.mark.skipif(not available("tensorrt_rtx"), reason="tensorrt-rtx not installed")
def test_a_runtime_that_cannot_run_here_is_a_row_and_the_others_still_run(benched):
    rows = {r["key"]: r for r in benched.rows}
    assert rows["tensorrt/fp32"]["status"] == "unavailable"
    assert rows["tensorrt/fp32"]["reason"] == "needs an NVIDIA GPU"
    assert rows["onnxruntime/fp32"]["status"] == "ok"
    assert benched.errors() == []
    estimate = rows["tensorrt/fp32"]["accuracy_estimate"]
    assert estimate["estimated"] is True  # the compile stage's estimate on its ONNX, kept in the row

    from rich.console import Console

    from edgetl.bench.table import rich_table

    console = Console(width=250, record=True)
    console.print(rich_table(benched.rows, "bench on ci"))
    text = console.export_text()
    assert f"tensorrt/fp32: n/a here (needs an NVIDIA GPU): accuracy estimated {estimate['top1']:.1%}" in text
    assert "estimate)" not in text  # "estimated" is said once


@pytest.mark.skipif(not available("tensorrt_rtx"), reason="tensorrt-rtx not installed")
def test_benching_only_targets_that_cannot_run_here_skips_the_reference(writable):
    results = bench(writable.path, targets=["tensorrt"], device_name="gpu-less", threads=1, iterations=5)
    assert [(r["key"], r["status"]) for r in results.rows] == [("tensorrt/fp32", "unavailable")]


def test_the_reference_is_timed_like_the_artifacts_and_says_how(benched):
    rows = {r["key"]: r for r in benched.rows}
    ref = rows["pytorch-eager/fp32"]
    for row in ref["latency"]:  # the artifacts' rule: warm-up >= 50 runs and >= 200 ms, then --iterations
        assert row["warmup_iterations"] >= 50 and row["warmup_ms"] >= 200
        assert row["iterations"] == 30 and row["stop"] == "iterations"
    method = ref["reference_method"]
    assert method["threads"] == {"intra_op": 1, "inter_op": 1} and method["process"] == "a fresh process"
    assert "+-5%" in method["stop_rule"] and method["timed"]["1"] == {"iterations": 30, "stop": "iterations"}
    art = rows["onnxruntime/int8"]
    assert art["reference_method"] == method  # every speed-up says what its denominator was
    for row in art["latency"]:
        lo, hi = row["p50_ci_ms"]
        assert lo <= row["p50_ms"] <= hi
        s_lo, s_hi = row["speedup_ci"]
        assert s_lo <= row["speedup_vs_reference"] <= s_hi
        assert isinstance(row["busy"], bool) and row["contention"]["method"]
        ref_row = next(r for r in ref["latency"] if r["batch"] == row["batch"])
        assert row["busy"] == (row["contention"]["busy"] or ref_row["contention"]["busy"])
    acc = art["accuracy"]
    assert acc["top1_ci"][0] <= acc["top1"] <= acc["top1_ci"][1]
    assert acc["drop_ci_pp"][0] <= acc["drop_pp"] <= acc["drop_ci_pp"][1]


def test_manifest_summary_is_merged_per_device(writable):
    bench(writable.path, targets=["onnxruntime/fp32"], device_name="ci", threads=1, iterations=10, isolate=False)
    summary = writable.manifest["bench"]["ci"]["results"]
    assert summary["onnxruntime/fp32"]["p90_ms"] > 0 and summary["onnxruntime/fp32"]["status"] == "ok"
    assert "onnxruntime/int8" in summary  # benched by the fixture before the copy: kept
    for key in ("onnxruntime/fp32", "pytorch-eager/fp32"):
        writable.verify(summary[key]["file"])  # result files are recorded artifacts


def test_cli_prints_the_table(writable):
    result = CliRunner().invoke(cli, ["bench", str(writable.path), "--target", "onnxruntime/int8", "--batch", "1,2", *FAST])
    assert result.exit_code == 0, result.output
    for text in ("p50 ms", "p90 ms", "p99 ms", "vs PyTorch", "drop pp", "onnxruntime/int8", "pytorch-eager/fp32",
                 "★ best: the fastest artifact", "vs PyTorch = reference p50 / artifact p50", "1 intra-op + 1 inter-op"):
        assert text in result.output


def test_tampered_artifact_stops_the_bench_with_exit_2(writable):
    path = writable.path / writable.manifest["compiled"]["onnxruntime/int8"]["path"]
    path.write_bytes(path.read_bytes() + b"\0")
    result = CliRunner().invoke(cli, ["bench", str(writable.path), *FAST])
    assert result.exit_code == 2
    assert "corrupt or was modified" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--target", "nope"], "unknown compiled target 'nope'"),
    (["--batch", "1,x"], "comma-separated integers"),
    (["--batch", "0"], "batch sizes must be integers >= 1"),
    (["--iterations", "10", "--duration", "1"], "exclude each other"),
])
def test_bad_options_are_one_line_and_exit_2(compiled_run, args, message):
    result = CliRunner().invoke(cli, ["bench", str(compiled_run.path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def _profile(folder, name: str, budgets: str) -> None:
    (folder / "targets").mkdir(exist_ok=True)
    (folder / "targets" / f"{name}.toml").write_text(
        f'runtime = "onnxruntime"\nprecision = "fp32"\n\n[budgets]\n{budgets}\n')


def test_check_exits_1_when_a_budget_fails_and_0_when_all_pass(writable, tmp_path, monkeypatch):
    from edgetl.compiler import compile

    monkeypatch.chdir(tmp_path)  # ./targets/ holds the user's own profiles
    _profile(tmp_path, "tight", "max_memory_mb = 1.0")  # no runtime session fits in 1 MB
    _profile(tmp_path, "loose", "max_accuracy_drop_pp = 50.0")
    compile(writable.path, ["tight", "loose"], progress=False)

    failed = CliRunner().invoke(cli, ["bench", str(writable.path), "--target", "tight", "--check", *FAST])
    assert failed.exit_code == 1, failed.output
    assert "budget failed: tight/fp32: memory" in failed.output and "> budget 1 MB" in failed.output
    assert "FAIL" in failed.output

    passed = CliRunner().invoke(cli, ["bench", str(writable.path), "--target", "loose", "--check", *FAST])
    assert passed.exit_code == 0, passed.output
    assert "all budgets of the artifacts measured here pass" in passed.output


def test_a_budget_the_validation_split_cannot_decide_is_undecided_loudly_and_does_not_fail_check(
        writable, tmp_path, monkeypatch):
    from edgetl.compiler import compile

    monkeypatch.chdir(tmp_path)
    _profile(tmp_path, "strict", "max_accuracy_drop_pp = 1.0")  # fp32: drop 0, but 12 images cannot show <= 1 pp
    compile(writable.path, ["strict"], progress=False)
    result = CliRunner().invoke(cli, ["bench", str(writable.path), "--target", "strict", "--check", *FAST])
    assert result.exit_code == 0, result.output
    assert "UNDECIDED strict/fp32: accuracy_drop +0.00 pp (n=12: 95% CI" in result.output
    assert "too few samples to decide" in result.output
    assert "no budget failed, but some could not be decided" in result.output
    doc = json.loads(result_path(writable, "strict/fp32", "ci").read_text())
    assert doc["gates"]["status"] == "UNDECIDED" and doc["gates"]["failed"] == []


@pytest.mark.skipif(not available("tensorrt_rtx"), reason="tensorrt-rtx not installed")
def test_check_of_only_artifacts_that_cannot_run_here_says_it_decided_nothing(writable, tmp_path, monkeypatch):
    from edgetl.compiler import compile

    monkeypatch.chdir(tmp_path)
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "gpu.toml").write_text(
        'runtime = "tensorrt"\nprecision = "fp32"\ngpu_arch = "sm89"\ndevice = "gpu"\n\n[budgets]\np90_latency_ms = 5.0\n')
    compile(writable.path, ["gpu"], progress=False)
    result = CliRunner().invoke(cli, ["bench", str(writable.path), "--target", "gpu", "--check", *FAST])
    assert result.exit_code == 0, result.output  # not measured here never fails --check
    assert "budgets not checked (cannot run here): gpu/fp32" in result.output
    assert "no artifact with budgets was measured here: --check decided nothing" in result.output
    assert "all budgets of the artifacts measured here pass" not in result.output


def test_nonsense_budget_in_a_profile_is_exit_2(writable, tmp_path, monkeypatch):
    from edgetl.compiler import compile

    monkeypatch.chdir(tmp_path)
    _profile(tmp_path, "ok", "max_accuracy_drop_pp = 1.0")
    compile(writable.path, ["ok"], progress=False)
    _profile(tmp_path, "ok", "max_accuracy_drop_pp = 100.0")  # edited after compiling
    result = CliRunner().invoke(cli, ["bench", str(writable.path), "--target", "ok", *FAST])
    assert result.exit_code == 2
    assert "max_accuracy_drop_pp = 100.0 lets any accuracy pass" in result.output


def test_notebook_functions_survive_importing_the_subpackages():
    import edgetl
    import edgetl.bench.latency  # noqa: F401 - rebinds edgetl.bench to the subpackage
    import edgetl.report  # noqa: F401

    assert callable(edgetl.run_bench) and callable(edgetl.make_report)


def test_an_artifact_of_a_runtime_no_longer_installed_is_an_unavailable_row(writable):
    """A plugin's artifact after the plugin is uninstalled: its row says so, the others are measured."""
    with writable.editing() as manifest:
        ghost = dict(manifest["compiled"]["onnxruntime/fp32"], runtime="ghostrt", target="ghost-pi")
        manifest["compiled"]["ghost-pi/fp32"] = ghost
    results = bench(writable.path, targets=["onnxruntime/fp32", "ghost-pi/fp32"], device_name="ci", threads=1,
                    iterations=5, isolate=False)
    rows = {r["key"]: r for r in results.rows}
    assert rows["ghost-pi/fp32"]["status"] == "unavailable"
    assert rows["ghost-pi/fp32"]["reason"] == "runtime 'ghostrt' is not installed here (no installed package registers it)"
    assert rows["onnxruntime/fp32"]["status"] == "ok"
    results.raise_for_errors()
