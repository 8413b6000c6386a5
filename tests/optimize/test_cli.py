"""`edgetl optimize` on the command line: exit codes, one-line errors, nothing written on bad input."""

from __future__ import annotations

import fcntl
import os
import shutil

import pytest
from click.testing import CliRunner

from edgetl.cli import cli
from edgetl.compiler import CompiledEntry
from edgetl.config import load_target
from edgetl.optimize.record import OptimizeRecord
from edgetl.rundir import RunDir

FAST = ["--runtimes", "onnxruntime,openvino", "--threads", "1", "--max-drop", "50"]  # the cached search of conftest.SEARCH


def _optimize(run, *args):
    return CliRunner().invoke(cli, ["optimize", str(run), *args])


def test_a_pick_prints_the_table_and_the_reasons_and_exits_0(copy_searched):
    run = copy_searched()
    result = _optimize(run.path, "--target", "host-cpu", *FAST)
    assert result.exit_code == 0, result.output
    assert "optimize host-cpu on this machine" in result.stdout and "vs PyTorch" in result.stdout
    pick = run.entries(OptimizeRecord)["host-cpu"].point(run.entries(OptimizeRecord)["host-cpu"].pick)
    assert f"Picked {pick.runtime} {pick.variant} at 1 thread [{pick.id}]" in result.stdout
    assert "pruned after round 1" in result.stdout


def test_no_candidate_meeting_the_budgets_exits_1_and_promotes_nothing(searched, tmp_path):
    """A profile whose p90 budget no point meets (10 µs: below what a Python call to a runtime takes)."""
    run = RunDir.open(shutil.copytree(searched[0].path, tmp_path / "run"))
    with run.editing() as manifest:  # a run that was never optimized, with the candidate cache of one that was
        del manifest["optimize"], manifest["compiled"]["host-cpu/optimized"]
        manifest["artifacts"] = {k: v for k, v in manifest["artifacts"].items() if "/optimized/" not in k}
    shutil.rmtree(run.path / "compiled" / "host-cpu" / "optimized")
    profile = tmp_path / "profiles" / "host-cpu.toml"
    profile.parent.mkdir()
    profile.write_text(f'runtime = "onnxruntime"\ncalibration = "{load_target("host-cpu").calibration}"\n'
                       "[budgets]\np90_latency_ms = 0.01\n")
    result = _optimize(run.path, "--target", str(profile), *FAST)
    assert result.exit_code == 1, result.output
    assert "No candidate meets every budget of host-cpu" in result.stdout and "p90_latency" in result.stdout
    record = run.entries(OptimizeRecord)["host-cpu"]
    assert record.pick is None and all(r.why for r in record.points)
    assert "host-cpu/optimized" not in run.entries(CompiledEntry)
    assert not (run.path / "compiled" / "host-cpu" / "optimized").exists()


@pytest.mark.parametrize("args, message", [
    (["--target", "host-cpux"], "unknown target profile 'host-cpux'"),
    (["--target", "host-cpu", "--runtimes", "onnxruntim"], "unknown runtime 'onnxruntim'"),
    (["--target", "host-cpu", "--runtimes", "tensorrt"], "runtime 'tensorrt' does not serve device 'cpu'"),
    (["--target", "rtx-4090"], "no runtime that can be measured here serves device 'gpu'"),
    (["--target", "host-cpu", "--budget", "ten minutes"], "--budget 'ten minutes': give seconds or a duration"),
    (["--target", "host-cpu", "--budget", "0s"], "--budget '0s' must be more than 0 seconds"),
    (["--target", "host-cpu", "--max-drop", "-1"], "--max-drop -1 must be between 0 and 100"),
    (["--target", "host-cpu", "--threads", "0"], "--threads 0 must be from 1 to 1024"),
    (["--target", "host-cpu", "--threads", str(10**9)], f"--threads {10**9} must be from 1 to 1024"),
    (["--target", "host-cpu", "--install"], "--install, --ssh-option, --allow-rollback and --sign need --remote"),
    (["--target", "host-cpu", "--sign", "k.key"], "--sign need --remote"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(copy_run, args, message):
    run = copy_run()
    manifest = run.manifest
    result = _optimize(run.path, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert run.manifest == manifest and not (run.path / "optimize").exists()


def test_a_run_that_was_never_trained_is_one_line(tmp_path):
    run = RunDir.create(tmp_path / "empty")
    result = _optimize(run.path, "--target", "host-cpu")
    assert result.exit_code == 2
    assert "has no train stage yet: run `edgetl train` on it first" in result.stderr
    assert not (run.path / "optimize").exists()


def test_the_help_teaches_what_is_searched_measured_pruned_and_picked():
    text = CliRunner().invoke(cli, ["optimize", "--help"]).output
    for words in ("What is searched", "How it is measured", "Pruned", "Picked", "Examples", "Exit codes", "[default: 10m]"):
        assert words in text


def test_a_second_search_of_the_same_target_while_one_runs_is_one_line_and_changes_nothing(copy_searched):
    """The running search holds the lock on optimize/<target>/ (held here as it holds it)."""
    run = copy_searched()
    manifest, root = run.manifest, run.path / "optimize" / "host-cpu"
    before = sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*"))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _optimize(run.path, "--target", "host-cpu", *FAST, "--force")
    finally:
        os.close(fd)
    assert result.exit_code == 2, result.output
    assert "another `edgetl optimize` of host-cpu is running on" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert run.manifest == manifest
    assert sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*")) == before
    assert _optimize(run.path, "--target", "host-cpu", *FAST).exit_code == 0  # once it is released
