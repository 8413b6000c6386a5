"""The command line as a new user meets it first."""

from __future__ import annotations

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
