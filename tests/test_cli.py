"""The command line as a new user meets it first."""

from __future__ import annotations

import os
import subprocess
import sys

EDGETL = [sys.executable, "-m", "edgetl.cli"]


def _run(*args):
    return subprocess.run([*EDGETL, *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_stage():
    result = _run("--help")
    assert result.returncode == 0
    for command in ("train", "compile", "bench", "report", "bundle", "ship", "verify", "predict", "deploy",
                    "targets", "backbones"):
        assert f"  {command}" in result.stdout, command


def test_backbones_lists_the_embedded_default_as_offline():
    result = _run("backbones")
    assert result.returncode == 0
    assert "efficientnet_lite0" in result.stdout and "embedded" in result.stdout


def test_cli_and_device_side_modules_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import edgetl.cli, edgetl.bench.latency, edgetl.data.preprocess, edgetl.backends.onnxruntime\n"
        "assert 'timm' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# Blocks torch and timm: a command that imports them fails, so these prove the fast paths stay fast.
_NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['timm'] = None\nfrom edgetl.cli import main; main()"


def _run_without_torch(*args):
    return subprocess.run([sys.executable, "-c", _NO_TORCH, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def test_backbones_lists_without_importing_torch_or_timm():
    result = _run_without_torch("backbones")
    assert result.returncode == 0, result.stderr
    assert "timm:mobilenetv3_large_100" in result.stdout


def test_a_wrong_data_path_answers_before_torch_loads(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 jpeg")
    for data, message in [(tmp_path / "missing", "does not exist"), (tmp_path / "photo.jpg", "is an image file")]:
        result = _run_without_torch("train", "--data", str(data), "--out", str(tmp_path / "run"))
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists()


def test_verify_on_a_run_folder_says_how_to_make_a_bundle(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"train": {}, "compiled": {"host-cpu/int8": {"target": "host-cpu"}}}')
    result = _run("verify", str(run))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {run} is a run folder, not a bundle: edgetl bundle {run} --target " \
        "host-cpu, then verify the .tar.gz it writes"


def test_compile_prints_a_next_step_that_works(copy_run):
    import shlex

    from click.testing import CliRunner

    from edgetl.cli import cli

    run = copy_run()
    result = CliRunner().invoke(cli, ["compile", str(run.path), "--target", "onnxruntime", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("next: "))
    assert line.split("   then: ")[0] == f"next: edgetl bench {run.path} --target onnxruntime"
    bundle = shlex.split(line.split("   then: ")[1])
    assert bundle[:2] == ["edgetl", "bundle"]
    made = CliRunner().invoke(cli, bundle[1:])
    assert made.exit_code == 0, made.output
    assert (run.path / "bundles" / "onnxruntime-fp32.tar.gz").is_file()
