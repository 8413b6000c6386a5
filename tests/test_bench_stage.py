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
    shutil.copytree(tiny_run.path, dest, ignore=shutil.ignore_patterns(".manifest.lock"))
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
    shutil.copytree(compiled_run.path, dest, ignore=shutil.ignore_patterns(".manifest.lock"))
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
    assert "cannot run" in rows["tensorrt/fp32"]["reason"]
    assert rows["onnxruntime/fp32"]["status"] == "ok"
    assert benched.errors() == []


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
    for text in ("p50 ms", "p90 ms", "p99 ms", "vs PyTorch", "drop pp", "onnxruntime/int8", "pytorch-eager/fp32"):
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
