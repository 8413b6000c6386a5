"""One real search on the tiny run (the CPU runtimes' variants at 1 thread), shared by the module's
tests: they copy it, with its candidate cache, before changing anything."""

from __future__ import annotations

import shutil

import pytest

from edgetl.rundir import RunDir

# every variant of both CPU runtimes meets a 50 pp budget on 12 validation images: more points reach the
# latency rounds than halving keeps, so it prunes some after round 1
SEARCH = {"runtimes": "onnxruntime,openvino", "threads": 1, "max_drop_pp": 50.0, "progress": False}


@pytest.fixture(scope="session")
def searched(tiny_run, tmp_path_factory):
    """(the run, the ``OptimizeResult``) of one search on a copy of ``tiny_run``. Read-only."""
    from edgetl.optimize import optimize

    dest = tmp_path_factory.mktemp("optimized") / "run"
    shutil.copytree(tiny_run.path, dest)
    return RunDir.open(dest), optimize(dest, "host-cpu", **SEARCH)


@pytest.fixture
def copy_searched(searched, tmp_path):
    """A private, writable copy of the searched run (record, pick and candidate cache included)."""

    def make(name: str = "run") -> RunDir:
        dest = tmp_path / name
        shutil.copytree(searched[0].path, dest)
        return RunDir.open(dest)

    return make
