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
    assert (out / "bundles" / "onnxruntime.tar.gz").is_file()
    assert "report.html" in first.stdout

    second = _deploy("--data", str(digits_dir), "--out", str(out), "--targets", "onnxruntime", *TINY)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "train: skipped" in second.stdout
    assert "bench: skipped" in second.stdout
    assert "features (train)" not in second.stdout
    again = json.loads((out / "manifest.json").read_text())
    for section in ("train", "export", "compiled", "bundles"):
        assert again[section] == manifest[section], section

    third = _deploy("--data", str(digits_dir), "--out", str(out), "--targets", "onnxruntime,openvino", *TINY)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "train: skipped" in third.stdout
    assert "1 artifact(s) measured" in third.stdout  # only the new target is benched
    assert (out / "bundles" / "openvino.tar.gz").is_file()


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
