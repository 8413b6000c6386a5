"""edgetl deploy --optimize: each target's pick is benched at its threads, gated and bundled instead
of the profile's default; a rerun skips the search; bad options fail before any work."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgetl.cli import cli
from tests.test_pipeline import TINY, _deploy

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

# A profile whose budgets the tiny run's 12 validation images can decide, at one thread (one point per
# candidate): the search is short and its pick meets the budgets.
PROFILE = ('runtime = "onnxruntime"\nprecision = "int8"\nthreads = 1\ndevice = "cpu"\n\n'
           "[budgets]\nmax_accuracy_drop_pp = 60.0\np90_latency_ms = 10000\n")


@pytest.mark.parametrize(("args", "message"), [
    (["--targets", "onnxruntime"], "--optimize searches a device profile's budgets: 'onnxruntime' is a runtime name"),
    (["--targets", "host-cpu", "--optimize-budget", "soon"], "--optimize-budget 'soon': give seconds or a duration"),
])
def test_deploy_optimize_checks_its_options_before_any_work(digits_dir, tmp_path, args, message):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["deploy", "--data", str(digits_dir), "--out", str(out), "--optimize", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_deploy_optimize_benches_gates_and_bundles_the_pick(digits_dir, tmp_path):
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "tiny-cpu.toml").write_text(PROFILE)
    out = tmp_path / "run"
    args = ["--data", str(digits_dir), "--out", str(out), "--targets", "tiny-cpu", "--optimize",
            "--optimize-budget", "5m", *TINY]
    first = _deploy(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    record, pick = manifest["optimize"]["tiny-cpu"], manifest["compiled"]["tiny-cpu/optimized"]
    assert record["pick"] and pick["threads"] == 1 and pick["slot"] == "optimized"
    # the pick replaced the default: benched at its threads, bundled, and its row in the gate table
    device = next(iter(manifest["bench"]))
    assert set(manifest["bench"][device]["results"]) == {"pytorch-eager/fp32", "tiny-cpu/optimized"}
    doc = json.loads((out / "bench" / "tiny-cpu" / f"optimized@{device}.json").read_text())
    assert doc["settings"]["threads"] == 1 and doc["artifact"]["runtime"] == pick["runtime"]
    assert set(manifest["bundles"]) == {"tiny-cpu/optimized"}
    assert (out / "bundles" / "tiny-cpu-optimized.tar.gz").is_file()
    assert not (out / "bundles" / "tiny-cpu-int8.tar.gz").exists()
    assert pick["variant"].startswith(pick["runtime"] + " ")  # the candidate's whole label, named once
    assert f"tiny-cpu/optimized ({pick['variant']} @1t)" in first.stdout
    assert "optimize tiny-cpu on " in first.stdout and "vs PyTorch" in first.stdout  # every point's row, not just the pick

    second = _deploy(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "optimize: skipped" in second.stdout and "bench: skipped" in second.stdout
    assert json.loads((out / "manifest.json").read_text())["optimize"] == manifest["optimize"]
