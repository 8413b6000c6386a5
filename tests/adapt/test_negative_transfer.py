"""The negative-transfer check: the frozen-feature probe against a small CNN trained from scratch on the
same split, recorded in the manifest and said in the summary when the probe does no better."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgetl.adapt.negative_transfer import compare, small_cnn  # noqa: E402
from edgetl.rundir import RunDir  # noqa: E402

COST = {"images_seen": 10, "seconds": 1.0, "size": 32}


def _train(digits_dir, out, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgetl.cli", "train", "--data", str(digits_dir), "--out", str(out),
                           "--image-size", "32", "--epochs", "20", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "COLUMNS": "250"})


def test_random_weights_on_the_tiny_set_record_the_comparison_and_warn(digits_dir, tmp_path):
    """A backbone with random weights gives features no better than chance: the small CNN from scratch
    does at least as well, and the run says so."""
    out = tmp_path / "run"
    result = _train(digits_dir, out, "--backbone", "timm:test_efficientnet", "--no-pretrained")
    assert result.returncode == 0, result.stderr[-2000:]
    section = RunDir.open(out).manifest["train"]
    check = section["choices"]["transfer_check"]
    assert check["probe_val_top1"] == pytest.approx(section["metrics"]["val_top1"])  # the probe is the kept model
    assert 0 <= check["scratch_val_top1"] <= 1 and check["scratch"]["images_seen"] > 0
    lo, hi = check["difference_ci_pp"]
    assert lo <= check["difference_pp"] <= hi
    assert check["warning"].startswith("negative transfer: the frozen features")
    assert "negative transfer" in result.stdout and "edgetl select" in result.stdout


def test_pretrained_features_do_not_warn_and_the_check_can_be_skipped(digits_dir, tmp_path):
    result = _train(digits_dir, tmp_path / "run")  # the embedded, pretrained EfficientNet-Lite0
    assert result.returncode == 0, result.stderr[-2000:]
    check = RunDir.open(tmp_path / "run").manifest["train"]["choices"]["transfer_check"]
    assert check["warning"] is None and check["probe_val_top1"] > check["scratch_val_top1"]
    assert "negative transfer" not in result.stdout and "small CNN from scratch" in result.stdout

    skipped = _train(digits_dir, tmp_path / "skipped", "--no-transfer-check")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "transfer_check" not in RunDir.open(tmp_path / "skipped").manifest["train"]["choices"]
    assert "small CNN" not in skipped.stdout


def test_verdicts_account_for_the_uncertainty():
    y = np.zeros(100, int)
    right, wrong = np.zeros(100, int), np.ones(100, int)
    worse = compare(np.where(np.arange(100) < 50, 0, 1), right, y, COST)  # probe 50%, scratch 100%
    assert worse["difference_ci_pp"][1] < 0 and "do worse than a small CNN" in worse["warning"]
    tie = compare(np.where(np.arange(100) < 90, 0, 1), np.where(np.arange(100) < 91, 0, 1), y, COST)
    assert tie["difference_ci_pp"][0] < 0 < tie["difference_ci_pp"][1] and "do no better than" in tie["warning"]
    better = compare(right, wrong, y, COST)
    assert better["warning"] is None and better["difference_pp"] == 100.0


def test_the_small_cnn_takes_any_size_and_class_count():
    model = small_cnn(7)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert sum(p.numel() for p in model.parameters()) < 50_000  # seconds on a CPU core, not minutes
