"""Fixtures for the bundle tests: a tiny compiled run and its bundle (the throwaway sshd is tests/conftest.py's)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgetl.rundir import RunDir


@pytest.fixture(scope="session")
def bundle_run(tiny_run, tmp_path_factory) -> RunDir:
    """The shared tiny run (real digit images, trained, exported), compiled for onnxruntime fp32 + int8."""
    from edgetl.compiler import compile as compile_run

    dest = tmp_path_factory.mktemp("bundle-run") / "tiny"
    shutil.copytree(tiny_run.path, dest)
    rows = compile_run(dest, ["onnxruntime"], ["fp32", "int8"], progress=False)
    assert all(r["status"] != "failed" for r in rows), rows
    return RunDir.open(dest)


@pytest.fixture(scope="session")
def bundle_file(bundle_run, tmp_path_factory) -> Path:
    """The int8 onnxruntime bundle, copied out of the run (tests may tamper with their own copies)."""
    from edgetl.bundle.create import create_bundle

    made = create_bundle(bundle_run.path, "onnxruntime", "int8")
    dest = tmp_path_factory.mktemp("bundle") / made.name
    shutil.copyfile(made, dest)
    return dest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Extracted bundles go to a per-test cache, never to the user's ~/.cache."""
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "edgetl-cache"))


@pytest.fixture(scope="session")
def optimized_run(bundle_run, tmp_path_factory) -> RunDir:
    """``bundle_run`` plus an OpenVINO fp32 artifact promoted as host-cpu's optimized pick (1 thread):
    a host-cpu run whose pick runs on another runtime than the profile's (tests/optimized.py)."""
    from edgetl.compiler import compile as compile_run
    from tests.optimized import promote

    dest = tmp_path_factory.mktemp("optimized-run") / "tiny"
    shutil.copytree(bundle_run.path, dest)
    rows = compile_run(dest, ["openvino"], ["fp32"], progress=False)
    assert all(r["status"] != "failed" for r in rows), rows
    run = RunDir.open(dest)
    promote(run, "openvino/fp32", "host-cpu", threads=1, variant="openvino fp32")
    return run
