"""edgetl deploy: the whole flow on tiny real images, and reruns that only do new work."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

EDGETL = [sys.executable, "-m", "edgetl.cli"]
TINY = ["--backbone", "timm:test_efficientnet", "--no-pretrained", "--image-size", "32", "--epochs", "3",
        "--iterations", "20"]


def _deploy(*args, cwd=None):
    result = subprocess.run([*EDGETL, "deploy", *args], capture_output=True, text=True, timeout=900, cwd=cwd,
                            env={**os.environ, "COLUMNS": "200"})
    return result


def test_deploy_runs_every_stage_then_skips_what_did_not_change(digits_dir, tmp_path):
    out = tmp_path / "run"
    first = _deploy("--data", str(digits_dir), "--out", str(out), "--targets", "onnxruntime", *TINY)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"train", "export", "compiled", "bench", "bundles"} <= manifest.keys()
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert (out / "bundles" / "onnxruntime-int8.tar.gz").is_file()
    assert "report.html" in first.stdout
    assert "gates on this machine" in first.stdout and "no budgets" in first.stdout

    second = _deploy("--data", str(digits_dir), "--out", str(out), "--targets", "onnxruntime", *TINY)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "train: skipped" in second.stdout
    assert "bench: skipped" in second.stdout
    assert "features (train)" not in second.stdout
    again = json.loads((out / "manifest.json").read_text())
    for section in ("train", "export", "compiled", "bundles"):
        assert again[section] == manifest[section], section

    # A profile of the user's own whose latency budget no model meets: the gate FAILs, --check exits 1,
    # and that artifact is not bundled as if it were fine; the other one still is.
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "too-fast.toml").write_text(
        'runtime = "openvino"\nprecision = "int8"\n[budgets]\np90_latency_ms = 0.01\n')
    third = _deploy("--data", str(digits_dir), "--out", str(out), "--targets", "onnxruntime,too-fast", "--check",
                    *TINY, cwd=tmp_path)
    assert third.returncode == 1, third.stdout[-3000:] + third.stderr[-3000:]
    assert "train: skipped" in third.stdout
    assert "1 artifact(s) measured" in third.stdout  # only the new target is benched
    assert "budget(s) FAILED" in third.stdout and "p90_latency" in third.stdout
    assert "bundle too-fast/int8: skipped, it FAILED its budget" in third.stdout
    assert not (out / "bundles" / "too-fast-int8.tar.gz").exists()
    assert (out / "bundles" / "onnxruntime-int8.tar.gz").is_file()
    assert third.stderr.strip().splitlines()[-1].startswith("error: budget failed: too-fast/int8: p90_latency")
    assert "Traceback" not in third.stderr


def test_deploy_config_file_and_its_errors(digits_dir, tmp_path):
    config = tmp_path / "deploy.toml"
    config.write_text(f'data = "{digits_dir}"\nout = "{tmp_path / "r"}"\ntargets = ["onnxruntime"]\n'
                      '[train]\nmode = "feature-extraction"\nepochs = "many"\n')
    result = _deploy("--config", str(config))
    assert result.returncode == 2
    assert "deploy.toml" in result.stderr and "train.epochs" in result.stderr
    assert "Traceback" not in result.stderr

    config.write_text(f'data = "{digits_dir}"\ntargetz = ["onnxruntime"]\n')
    result = _deploy("--config", str(config))
    assert result.returncode == 2 and "targetz" in result.stderr


def _deploy_in_process(*args):
    from click.testing import CliRunner

    from edgetl.cli import cli

    return CliRunner().invoke(cli, ["deploy", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--targets", "host-cpux"], "Did you mean 'host-cpu'"),
        (["--target", "host-cpux"], "Did you mean 'host-cpu'"),  # compile's and bench's spelling works too
        (["--targets", "onnxruntime,jetsn-orin-nano"], "Did you mean 'jetson-orin-nano'"),
        (["--precision", "int4"], "unknown precision 'int4'"),
        (["--calibration", "entropi"], "Did you mean 'entropy'"),
        (["--batch", "1,x"], "--batch"),
        (["--batch", "0"], "option --batch"),
        (["--threads", "0"], "option --threads"),
        (["--iterations", "0"], "option --iterations"),
        (["--epochs", "0"], "option --epochs"),
        (["--gpu-arch", "89"], "--gpu-arch"),
        (["--backbone", "efficientnet_lte0"], "Did you mean 'efficientnet_lite0'"),
        (["--data", "{tmp}/photo.jpg"], "is an image file"),
        (["--data", "{tmp}/missing"], "does not exist"),
        (["--weights", "{tmp}/missing.pth"], "--weights"),
        (["--backbone", "auto", "--targets", "raspbery-pi-5"], "Did you mean 'raspberry-pi-5'"),
        (["--backbone", "auto", "--weights", "{tmp}/photo.jpg"], "--backbone auto chooses pretrained weights"),
        (["--sign", "{tmp}/missing.key"], "missing.key"),
        (["--sign", "{tmp}/photo.jpg"], "photo.jpg"),  # not a private key
    ],
)
def test_deploy_checks_every_option_before_any_work(digits_dir, tmp_path, args, message):
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    out = tmp_path / "run"
    base = {"--data": str(digits_dir), "--out": str(out), "--targets": "onnxruntime"}
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base.update(zip(args[::2], args[1::2], strict=True))
    result = _deploy_in_process(*[x for kv in base.items() for x in kv])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()  # nothing trained, nothing written


@pytest.mark.parametrize(("goal", "message"), [
    ("top5 = { min = 0.9 }", "field 'budgets.goals': unknown metric 'top5'. Did you mean 'top1'? Valid: "
                             "accuracy_drop_pp, agreement, false_accept_rate, macro_f1, memory_mb, p90_latency_ms, top1"),
    ("top1 = { min = 90.0 }", "pi.toml': goals.top1 = 90.0 is outside 0-1: top1 is a fraction"),
])
def test_a_profile_goal_that_cannot_be_met_as_meant_is_one_line_before_any_work(digits_dir, tmp_path, goal, message):
    profile = tmp_path / "pi.toml"
    profile.write_text(f'runtime = "onnxruntime"\n[budgets.goals]\n{goal}\n')
    out = tmp_path / "run"
    result = _deploy_in_process("--data", str(digits_dir), "--out", str(out), "--targets", str(profile))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('compile = 3\n', "'compile' must be a table"),
        ('train = "fast"\n', "'train' must be a table"),
        ('[compile]\nprecisions = "int8"\n', "field 'precisions'"),
        ('[bench]\nbatches = [1, "x"]\n', "field 'batches.1'"),
        ('[bench]\nbatches = []\n', "field 'batches'"),
        ('[bench]\niterations = 0\n', "field 'iterations'"),
        ('[train]\nepochs = { n = 3 }\n', "field 'train.epochs'"),
        ('backbone = { name = "x" }\n', "field 'backbone'"),
        ('targets = ["host-cpu", "rasberry-pi-5"]\n', "Did you mean 'raspberry-pi-5'"),
    ],
)
def test_deploy_config_errors_come_before_training(digits_dir, tmp_path, toml, message):
    out = tmp_path / "run"
    config = tmp_path / "deploy.toml"
    config.write_text(f'data = "{digits_dir}"\nout = "{out}"\n' + toml)
    result = _deploy_in_process("--config", str(config))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_the_gates_summary_gives_an_undecided_gate_its_reason(tmp_path):
    from edgetl.pipeline import gate_rows
    from edgetl.rundir import RunDir

    run = RunDir.create(tmp_path / "run")
    reason = "accuracy_drop +1.67 pp (n=60: 95% CI -4.50..+8.86) straddles budget 1 pp: too few samples to decide"
    (run.path / "bench").mkdir()
    (run.path / "bench" / "r.json").write_text(json.dumps(  # a result document (edgetl.bench.run.BenchDocument)
        {"schema": "edgetl.bench/1", "key": "host-cpu/int8", "target": "host-cpu", "status": "ok",
         "device": {"name": "vm"}, "artifact": {}, "gates": {"status": "UNDECIDED", "failed": [], "undecided": [reason]}}))
    run.set("bench", {"vm": {"results": {"host-cpu/int8": {"status": "ok", "file": "bench/r.json"}}}})
    rows = gate_rows(run, [{"cell": "host-cpu/int8", "target": "host-cpu", "precision": "int8"}], "vm")
    assert [(r["gate"], r["detail"]) for r in rows] == [("UNDECIDED", reason)]


def test_an_artifact_not_measured_here_whose_estimate_is_over_budget_is_flagged(tmp_path):
    from edgetl.pipeline import gate_rows
    from edgetl.rundir import RunDir

    run = RunDir.create(tmp_path / "run")
    run.set("compiled", {key: _compiled_entry(key, drop_pp=28.33) for key in ("jetson-orin-nano/int8", "tensorrt/int8")})
    run.set("bench", {"vm": {"results": {k: {"status": "unavailable", "reason": "needs an NVIDIA GPU"}
                                         for k in ("jetson-orin-nano/int8", "tensorrt/int8")}}})
    rows = gate_rows(run, [{"cell": "jetson-orin-nano/int8", "target": "jetson-orin-nano", "precision": "int8"},
                           {"cell": "tensorrt/int8", "target": "tensorrt", "precision": "int8"}], "vm")
    assert [(r["gate"], r["detail"]) for r in rows] == [
        ("not measured here", "needs an NVIDIA GPU; estimated drop +28.33 pp is over its 1 pp budget: measure it on "
                              "the device (edgetl val BUNDLE FOLDER) before shipping"),
        ("not measured here", "needs an NVIDIA GPU")]  # a bare runtime has no budget to be over


def _compiled_entry(key: str, drop_pp: float) -> dict:
    """A ``compiled`` entry as the compile stage writes it (edgetl.compiler.CompiledEntry), estimated."""
    from edgetl.compiler import CompiledEntry

    target, precision = key.split("/")
    return CompiledEntry(
        target=target, runtime="tensorrt", precision=precision, dir=f"compiled/{key}", path=f"compiled/{key}/model.engine",
        files=[f"compiled/{key}/model.engine"], size_bytes=1, compile_s=0.1, fingerprint="f",
        accuracy={"n": 60, "top1": 0.5, "fp32_top1": 0.78, "drop_pp": drop_pp, "agreement": 0.6, "max_abs_diff": 1.0,
                  "estimated": True, "evaluated_with": "onnxruntime CPU"},
    ).dump()
