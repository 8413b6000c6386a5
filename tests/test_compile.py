"""The compile stage on the tiny trained run: matrix, manifest contract, caching, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.cli import cli
from edgetl.compiler import compile as compile_run
from edgetl.compiler import plan, target_rows
from edgetl.data import arrays
from edgetl.errors import ConfigError, RunDirError, UnknownNameError
from edgetl.rundir import RunDir

REPO_TARGETS = Path(__file__).resolve().parent.parent / "targets"


@pytest.fixture(scope="module")
def compiled_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run compiled for ONNX Runtime fp32/fp16/int8 and TensorRT int8."""
    import shutil

    dest = tmp_path_factory.mktemp("compiled") / "run"
    shutil.copytree(tiny_run.path, dest)
    rows = compile_run(dest, ["onnxruntime"], ["fp32", "fp16", "int8"], progress=False)
    rows += compile_run(dest, ["tensorrt"], ["int8"], gpu_arch="sm86", progress=False)
    return RunDir.open(dest), rows


def test_matrix_builds_every_cell(compiled_run):
    run, rows = compiled_run
    assert [r["status"] for r in rows] == ["ok"] * 4, rows
    assert set(run.manifest["compiled"]) == {"onnxruntime/fp32", "onnxruntime/fp16", "onnxruntime/int8", "tensorrt/int8"}


def test_train_and_compile_leave_no_lock_file_in_the_run(tiny_run, compiled_run):
    """The manifest's lock is the run folder itself: a copy of a run has nothing to skip."""
    for run in (tiny_run, compiled_run[0]):
        assert not [p for p in run.path.rglob("*") if "lock" in p.name], run.path


def test_manifest_entry_follows_the_contract(compiled_run):
    run, _ = compiled_run
    for key, entry in run.manifest["compiled"].items():
        assert entry["dir"] == f"compiled/{key}"
        assert entry["path"] in entry["files"]
        for f in entry["files"]:
            run.verify(f)  # recorded with its sha256
        assert entry["size_bytes"] == sum((run.path / f).stat().st_size for f in entry["files"])
        acc = entry["accuracy"]
        assert acc["n"] == len(arrays.DataView(run).val_labels())
        assert 0 <= acc["top1"] <= 1 and 0 <= acc["agreement"] <= 1
        assert acc["drop_pp"] == pytest.approx((acc["fp32_top1"] - acc["top1"]) * 100, abs=1e-3)
        assert entry["options"]["why"] if entry["precision"] == "int8" else True
    trt = run.manifest["compiled"]["tensorrt/int8"]
    assert trt["gpu_arch"] == "sm86" and trt["accuracy"]["estimated"] is True
    assert trt["estimate_with"] == "compiled/tensorrt/int8/model.qdq.onnx"
    assert trt["accuracy"]["evaluated_with"].endswith("CPU on model.qdq.onnx")  # "estimated" above says it is one
    assert run.manifest["compiled"]["onnxruntime/int8"]["calibration"] == "default"


def test_recorded_accuracy_matches_a_recomputation(compiled_run):
    """What a reviewer would do: run the artifact with ONNX Runtime directly and compare."""
    import onnxruntime as ort

    run, _ = compiled_run
    view = arrays.DataView(run)
    x, labels, ref = view.val_feeds()["input"], view.val_labels(), view.reference()["logits"]
    for key in ("onnxruntime/int8", "tensorrt/int8"):
        entry = run.manifest["compiled"][key]
        model = run.path / (entry["estimate_with"] or entry["path"])
        so = ort.SessionOptions()
        if entry["estimate_with"]:  # an estimate runs the QDQ model as specified, not this CPU's fused kernels
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        assert entry["accuracy"]["top1"] == pytest.approx((out.argmax(1) == labels).mean())
        assert entry["accuracy"]["agreement"] == pytest.approx((out.argmax(1) == ref.argmax(1)).mean())
        assert entry["accuracy"]["agreement"] >= 0.9


def test_unchanged_inputs_are_not_rebuilt(compiled_run):
    run, _ = compiled_run
    before = run.manifest["compiled"]["onnxruntime/fp32"]
    rows = compile_run(run.path, ["onnxruntime"], ["fp32"], progress=False)
    assert rows[0]["status"] == "cached"
    assert run.manifest["compiled"]["onnxruntime/fp32"] == before
    rows = compile_run(run.path, ["onnxruntime"], ["fp32"], force=True, progress=False)
    assert rows[0]["status"] == "ok"


def test_failing_cell_keeps_others_and_earlier_artifacts(copy_run, tmp_path):
    run = copy_run()
    good = compile_run(run.path, ["onnxruntime"], ["int8"], progress=False)
    assert good[0]["status"] == "ok"
    before = run.manifest["compiled"]["onnxruntime/int8"]
    bad = tmp_path / "typo.toml"
    bad.write_text('method = "minmax"\nkeep_float_ops = ["Sigmod"]\n')
    rows = compile_run(run.path, ["onnxruntime"], ["int8", "fp32"], calibration=str(bad), force=True, progress=False)
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert "keep_float_ops" in rows[0]["error"] and "Sigmod" in rows[0]["error"]
    assert run.manifest["compiled"]["onnxruntime/int8"] == before  # the earlier int8 artifact is intact
    for f in before["files"]:
        run.verify(f)


def test_too_few_calibration_images_is_reported(copy_run, tmp_path):
    run = copy_run()
    recipe = tmp_path / "tiny.toml"
    recipe.write_text("samples = 4\n")
    rows = compile_run(run.path, ["onnxruntime"], ["int8"], calibration=str(recipe), progress=False)
    assert rows[0]["status"] == "failed" and "at least 10" in rows[0]["error"]


def test_bad_names_fail_before_anything_is_built():
    with pytest.raises(UnknownNameError, match="onnxruntime"):
        plan(["onxruntime"])
    with pytest.raises(UnknownNameError, match="int4"):
        plan(["onnxruntime"], ["int4"])
    with pytest.raises(ConfigError, match="sm89"):
        plan(["tensorrt"], gpu_arch="89")
    with pytest.raises(UnknownNameError, match="entropy"):
        plan(["onnxruntime"], ["int8"], calibration="entropi")


def test_recipe_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('method = "kl"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: field 'method'"):
        plan(["onnxruntime"], ["int8"], calibration=str(bad))


def test_run_without_training(tmp_path):
    RunDir.create(tmp_path / "empty")
    with pytest.raises(RunDirError, match="edgetl train"):
        compile_run(tmp_path / "empty", ["onnxruntime"], progress=False)


def test_cli_one_line_and_exit_2(compiled_run):
    run, _ = compiled_run
    result = CliRunner().invoke(cli, ["compile", str(run.path), "--target", "openvno"])
    assert result.exit_code == 2
    assert "Did you mean 'openvino'" in result.output and "Traceback" not in result.output


def test_cli_json_rows(compiled_run):
    run, _ = compiled_run
    result = CliRunner().invoke(cli, ["compile", str(run.path), "-t", "onnxruntime", "-p", "fp32", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["cell"] == "onnxruntime/fp32" and rows[0]["status"] == "cached"


def test_targets_lists_profiles_and_runtimes():
    rows = {r["name"]: r for r in target_rows()}
    assert {"onnxruntime", "openvino", "tensorrt"} <= set(rows)
    assert rows["onnxruntime"]["here"] == "yes"
    result = CliRunner().invoke(cli, ["targets"])
    assert result.exit_code == 0 and "tensorrt" in result.output


def test_int8_logits_stay_close_to_fp32(compiled_run):
    run, _ = compiled_run
    ref = arrays.reference_logits(run)
    entry = run.manifest["compiled"]["onnxruntime/int8"]
    assert entry["accuracy"]["max_abs_diff"] <= 0.6 * np.abs(ref).max()


def test_cross_compiling_for_the_pi_uses_its_cpu_and_its_cpu_is_in_the_fingerprint(copy_run, tmp_path, monkeypatch):
    """On an x86 workstation, raspberry-pi-5 int8 gets the ARM types (S8S8), says why and for which CPU;
    changing the profile's CPU rebuilds the artifact."""
    run = copy_run()
    monkeypatch.chdir(tmp_path)
    [row] = compile_run(run.path, ["raspberry-pi-5"], progress=False)
    assert row["status"] == "ok", row
    entry = RunDir.open(run.path).manifest["compiled"]["raspberry-pi-5/int8"]
    options = entry["options"]
    assert (options["activations"], options["weights"]) == ("int8", "int8")
    assert options["why"].startswith("ARM64: S8S8") and "target profile" in options["why"]
    assert options["cpu"]["arch"] == "aarch64" and "asimddp" in options["cpu"]["flags"]
    assert options["cpu"]["from"] == "the target profile"
    assert compile_run(run.path, ["raspberry-pi-5"], progress=False)[0]["status"] == "cached"

    shipped = (REPO_TARGETS / "raspberry-pi-5.toml").read_text()
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "raspberry-pi-5.toml").write_text(shipped.replace('"asimddp"', '"asimddp", "i8mm"'))
    [row] = compile_run(run.path, ["raspberry-pi-5"], progress=False)
    assert row["status"] == "ok", row  # another CPU: rebuilt, not reused
    assert "i8mm" in RunDir.open(run.path).manifest["compiled"]["raspberry-pi-5/int8"]["options"]["cpu"]["flags"]
