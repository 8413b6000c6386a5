"""SIGTERM (kill, systemd, a CI timeout) cleans up like Ctrl-C: no temporary file is left in the run."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.conftest import signal_when


def test_sigterm_during_compile_leaves_no_temporary_files(copy_run):
    run = copy_run()
    proc = subprocess.Popen([sys.executable, "-m", "edgetl.cli", "compile", str(run.path), "--target", "onnxruntime",
                             "--precision", "int8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The build happens in a temporary folder next to its destination: signal while it exists.
    err = signal_when(proc, lambda: list(run.path.rglob("*.tmp")), signal.SIGTERM, "its build folder appeared",
                      timeout=120)
    assert proc.returncode == 143, err  # 128 + SIGTERM, as a shell reports it
    assert err.strip().splitlines()[-1] == "terminated" and "Traceback" not in err
    assert not list(run.path.rglob("*.tmp"))
    assert "onnxruntime/int8" not in run.manifest.get("compiled", {})  # a half-done stage records nothing
