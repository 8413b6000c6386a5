"""Shared fixtures: real (tiny) images and a tiny trained + exported run, built once per session."""

from __future__ import annotations

import shutil

import pytest

from edgetl.rundir import RunDir
from tests.bundle.sshd import sshd_missing, start_sshd


def _has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    import subprocess

    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Feature caches go to a per-session folder, never the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGETL_CACHE", str(tmp_path_factory.mktemp("edgetl-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """Real handwritten digits (scikit-learn's scans), 3 classes x 20 images, as an image folder."""
    from edgetl.data.demo import write_digits

    return write_digits(tmp_path_factory.mktemp("data") / "digits", per_class=20, classes=3)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, digits_dir) -> RunDir:
    """A run trained with timm's tiny test_efficientnet (random init, 32x32) and exported to ONNX.

    Read-only for tests: copy it (``copy_run``) before changing it.
    """
    from edgetl.adapt.options import TrainOptions
    from edgetl.adapt.train import train
    from edgetl.export.onnx import export_run

    out = tmp_path_factory.mktemp("runs") / "tiny"
    options = TrainOptions(pretrained=False, image_size=32, mode="finetune", unfreeze="all", augment=False,
                           epochs=8, head_epochs=10, lr=1e-2, seed=0)
    train(digits_dir, options, out=out, backbone="timm:test_efficientnet")
    run = RunDir.open(out)
    export_run(run)
    return run


@pytest.fixture
def copy_run(tiny_run, tmp_path):
    """A private, writable copy of ``tiny_run``."""

    def make(name: str = "run") -> RunDir:
        dest = tmp_path / name
        shutil.copytree(tiny_run.path, dest)
        return RunDir.open(dest)

    return make


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A throwaway OpenSSH server on 127.0.0.1 with its own keys (tests/bundle/sshd.py)."""
    reason = sshd_missing()
    if reason:
        pytest.skip(reason)
    proc, server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    proc.terminate()
    proc.wait(timeout=10)


def signal_when(proc, ready, sig, what: str, timeout: float = 300) -> str:
    """Send ``sig`` to a running ``proc`` as soon as ``ready()`` holds (as a user's Ctrl-C or a
    supervisor's SIGTERM would arrive mid-work); its stderr. ``what``: what ``ready`` waits for."""
    import time

    try:
        while proc.poll() is None and not ready():
            time.sleep(0.01)
        assert proc.poll() is None, f"the process ended before {what}"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err
