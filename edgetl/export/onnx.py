"""PyTorch -> ONNX, checked on real validation images against PyTorch.

The model gets a dynamic batch axis and the fixed spatial size it was trained at; the class names
and the preprocessing travel in the ONNX metadata so any runtime (or person) can use it alone.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np

from edgetl._io import atomic_path
from edgetl._lazy import require
from edgetl.data import arrays
from edgetl.errors import ExportError

OPSET = 18
INPUT, OUTPUT = "input", "logits"
# An FP32 export differs from eager PyTorch only by kernel rounding.
ATOL, MIN_AGREEMENT = 1e-3, 0.999


def export_run(run, *, force: bool = False) -> Path:
    """Export the run's checkpoint to ``export/model.onnx`` unless that export is already current."""
    train = run.get("train")
    if train is None:
        from edgetl.errors import RunDirError

        raise RunDirError(f"{run.path} has no trained model: run `edgetl train --out {run.path}` first")
    ckpt_sha = run.manifest["artifacts"].get(train["checkpoint"])
    current = run.get("export")
    dest = run.path / "export" / "model.onnx"
    if not force and current and current.get("checkpoint_sha256") == ckpt_sha and dest.is_file():
        run.verify(current["path"])
        return dest

    torch = require("torch", "ONNX export")
    onnx = require("onnx", "ONNX export")
    from edgetl.models.build import load_trained

    model = load_trained(run)
    view = arrays.DataView(run)
    x_val = view.val_feeds()[INPUT]
    started = time.perf_counter()
    with atomic_path(dest) as tmp:
        _export(torch, model, torch.from_numpy(x_val[:2]), tmp)
        proto = onnx.load(str(tmp))
        _set_metadata(proto, {"classes": json.dumps(train["classes"]), "preprocess": json.dumps(train["preprocess"]),
                              "edgetl.backbone": train["backbone"]})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        check = _check_against_torch(tmp, x_val, view.reference()[OUTPUT], view.split["val"])
    section = {
        "path": run.rel(dest),
        "opset": OPSET,
        "exporter": f"torch.onnx (dynamo) {torch.__version__}",
        "checkpoint_sha256": ckpt_sha,
        "input": {"name": INPUT, "shape": ["batch", 3, *train["preprocess"]["input_size"]], "dtype": "float32"},
        "output": {"name": OUTPUT, "shape": ["batch", train["num_classes"]]},
        "seconds": time.perf_counter() - started,
        **check,
    }
    run.record(dest)
    run.set("export", section)
    return dest


def _export(torch, model, example, dest) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT], output_names=[OUTPUT],
                dynamic_shapes=({0: batch},), verbose=False,
            )
        program.save(str(dest))
    except Exception as exc:  # the exporter names the op it could not handle
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export failed: {first}") from None


def _set_metadata(proto, values: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in values.items():
        prop = existing.get(key) or proto.metadata_props.add()
        prop.key, prop.value = key, value


def _check_against_torch(path, x_val: np.ndarray, reference: np.ndarray, val_samples: list) -> dict:
    """Run the ONNX model on every validation image with ONNX Runtime and compare with PyTorch."""
    ort = require("onnxruntime", "checking the ONNX export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = np.concatenate([session.run(None, {INPUT: x_val[i : i + 64]})[0] for i in range(0, len(x_val), 64)])
    diff = np.abs(out - reference)
    agreement = float((out.argmax(1) == reference.argmax(1)).mean())
    worst = int(diff.max(axis=1).argmax())
    tolerance = ATOL * max(1.0, float(np.abs(reference).max()))
    if diff.max() > tolerance or agreement < MIN_AGREEMENT:
        raise ExportError(
            f"ONNX export disagrees with PyTorch: max |diff| {diff.max():.2e} (tolerance {tolerance:.1e}), "
            f"top-1 agreement {agreement:.2%}; worst output: val image {val_samples[worst][0]} (row {worst})"
        )
    return {
        "max_abs_diff": float(diff.max()),
        "top1_agreement": agreement,
        "reference_top1": float((reference.argmax(1) == np.array([lab for _, lab in val_samples])).mean()),
        "checked_images": len(x_val),
    }
