"""A tiny run that has been compiled and benched, shared by the report tests."""

from __future__ import annotations

import shutil

import pytest

from edgetl.rundir import RunDir


@pytest.fixture(scope="session")
def benched_run(tiny_run, tmp_path_factory) -> RunDir:
    """``tiny_run`` compiled for onnxruntime (fp32, int8: no budgets) and host-cpu (fp32: a profile with
    budgets), benched on a device named "ci" with few iterations.

    The tiny run has 12 validation images: too few to prove the shipped 1 pp drop budget (its gate
    reads UNDECIDED), so host-cpu is overridden by a user profile in ./targets (which wins over the
    shipped one) whose budgets those 12 images can decide: PASS.
    """
    from edgetl.bench.run import bench
    from edgetl.compiler import compile as compile_run

    base = tmp_path_factory.mktemp("report")
    dest = base / "run"
    shutil.copytree(tiny_run.path, dest)
    (base / "targets").mkdir()
    (base / "targets" / "host-cpu.toml").write_text(
        'runtime = "onnxruntime"\nprecision = "int8"\ndevice = "cpu"\n\n'
        "[budgets]\nmax_accuracy_drop_pp = 60.0\np90_latency_ms = 10000\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        compile_run(dest, ["onnxruntime"], precisions=["fp32", "int8"], progress=False)
        compile_run(dest, ["host-cpu"], precisions=["fp32"], progress=False)
        bench(dest, device_name="ci", threads=1, iterations=20, isolate=False)
    return RunDir.open(dest)
