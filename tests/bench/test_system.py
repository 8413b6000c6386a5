"""The system record, and that the device-side bench modules never import torch."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

from edgetl.bench.system import FLAGS_OF_INTEREST, busy_warning, device_slug, summary, system_record


def test_record_describes_this_machine():
    rec = system_record(threads=2, name="My Box.local")
    assert rec["name"] == "my-box-local"
    assert rec["threads"] == 2
    cpu = rec["cpu"]
    assert cpu["model"]
    assert cpu["logical_cores"] == os.cpu_count()
    assert 1 <= cpu["usable_cores"] <= os.cpu_count()
    assert set(cpu["flags"]) <= set(FLAGS_OF_INTEREST)
    assert rec["memory"]["total_mb"] > 0
    assert rec["python"].endswith(".".join(map(str, sys.version_info[:2])) + f".{sys.version_info[2]}")
    assert isinstance(rec["gpus"], list)


def test_runtime_versions_come_from_package_metadata():
    runtimes = system_record()["runtimes"]
    assert runtimes["numpy"] == importlib.metadata.version("numpy")
    assert runtimes["onnxruntime"] == importlib.metadata.version("onnxruntime")
    assert not any(k.endswith("-libs") for k in runtimes)


def test_device_slug_is_file_name_safe():
    assert device_slug("Jetson Orin/Nano #2") == "jetson-orin-nano-2"
    assert device_slug("") == device_slug(None) != ""


def test_summary_and_busy_warning():
    rec = system_record(threads=1)
    assert "1 used" in summary(rec)
    busy = {**rec, "load_average": [99.0, 1.0, 1.0]}
    assert "busy" in busy_warning(busy)
    assert busy_warning({**rec, "load_average": [0.0, 0.0, 0.0]}) is None


def test_device_side_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import edgetl.bench.latency, edgetl.bench.accuracy, edgetl.bench.measure, edgetl.bench.system\n"
        "import edgetl.bench.run, edgetl.bench.table  # the bundle runner builds its result with these\n"
        "edgetl.bench.system.system_record()\n"
        "bad = sorted(m for m in ('torch', 'timm', 'onnx', 'nncf', 'matplotlib') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
