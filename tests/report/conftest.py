"""A tiny run that has been compiled and benched, shared by the report tests."""

from __future__ import annotations

import shutil

import pytest

from edgetl.rundir import RunDir


@pytest.fixture(scope="session")
def benched_run(tiny_run, tmp_path_factory) -> RunDir:
    """``tiny_run`` compiled for onnxruntime (fp32, int8: no budgets) and host-cpu (fp32: a profile with
    budgets), benched on a device named "ci" with few iterations."""
    from edgetl.bench.run import bench
    from edgetl.compiler import compile as compile_run

    dest = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_run.path, dest, ignore=shutil.ignore_patterns(".manifest.lock"))
    compile_run(dest, ["onnxruntime"], precisions=["fp32", "int8"], progress=False)
    compile_run(dest, ["host-cpu"], precisions=["fp32"], progress=False)
    bench(dest, device_name="ci", threads=1, iterations=20, isolate=False)
    return RunDir.open(dest)
