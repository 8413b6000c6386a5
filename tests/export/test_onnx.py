"""The PyTorch -> ONNX export is checked on every validation image against PyTorch's own logits."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.cli import cli
from edgetl.data import arrays
from edgetl.export.onnx import ATOL, MIN_AGREEMENT, export_run


def test_the_check_passes_on_the_tiny_run_and_records_its_numbers(tiny_run):
    import onnxruntime as ort

    export = tiny_run.manifest["export"]
    reference = arrays.reference_logits(tiny_run)
    assert export["checked_images"] == len(arrays.load_split(tiny_run)["val"]) == len(reference)
    assert export["top1_agreement"] >= MIN_AGREEMENT
    assert export["max_abs_diff"] <= ATOL * max(1.0, float(np.abs(reference).max()))
    # The recorded difference is the real one: recomputed here from the exported file.
    session = ort.InferenceSession(str(tiny_run.verify(export["path"])), providers=["CPUExecutionProvider"])
    out = session.run(None, arrays.DataView(tiny_run).val_feeds())[0]
    assert float(np.abs(out - reference).max()) == pytest.approx(export["max_abs_diff"], rel=0.05, abs=1e-7)
    assert export_run(tiny_run) == tiny_run.path / export["path"]  # current: kept, not exported again


def test_an_export_that_disagrees_with_pytorch_is_one_error_line_naming_the_worst_image(copy_run):
    """The reference logits of one image are off (a stale cache): the re-export is refused, one line
    names that image, and neither the ONNX nor the manifest's export section is written."""
    run = copy_run()
    worst = 2
    cache = run.path / "cache" / "reference.npz"
    with np.load(cache, allow_pickle=False) as data:
        stored = {k: data[k] for k in data.files}
    stored["logits"][worst] += np.float32(50) * np.eye(stored["logits"].shape[1], dtype=np.float32)[0]
    np.savez(cache, **stored)  # same key: read as this checkpoint's reference
    (run.path / "export" / "model.onnx").unlink()  # compile exports again
    export_before = run.manifest["export"]

    result = CliRunner().invoke(cli, ["compile", str(run.path), "--target", "onnxruntime", "--precision", "fp32"])
    assert result.exit_code == 2, result.output
    image = arrays.load_split(run)["val"][worst][0]
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: ONNX export disagrees with PyTorch on output 'logits': max |diff| 5.00e+01")
    assert lines[0].endswith(f"worst: val image {image} (row {worst})")
    assert "Traceback" not in result.output
    assert list((run.path / "export").iterdir()) == []  # no ONNX, no temporary file
    assert run.manifest["export"] == export_before and "compiled" not in run.manifest
