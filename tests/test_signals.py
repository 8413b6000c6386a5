"""SIGTERM (kill, systemd, a CI timeout) cleans up like Ctrl-C: no temporary file is left in the run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time


def test_sigterm_during_compile_leaves_no_temporary_files(copy_run):
    run = copy_run()
    proc = subprocess.Popen([sys.executable, "-m", "edgetl.cli", "compile", str(run.path), "--target", "onnxruntime",
                             "--precision", "int8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The build happens in a temporary folder next to its destination: signal while it exists.
        while proc.poll() is None and not list(run.path.rglob("*.tmp")):
            time.sleep(0.01)
        assert proc.poll() is None, "compile ended before its build folder appeared"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err  # 128 + SIGTERM, as a shell reports it
    assert err.strip().splitlines()[-1] == "terminated" and "Traceback" not in err
    assert not list(run.path.rglob("*.tmp"))
    assert "onnxruntime/int8" not in run.manifest.get("compiled", {})  # a half-done stage records nothing
