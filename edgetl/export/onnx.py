"""PyTorch -> ONNX, checked on real validation samples against PyTorch.

``export_onnx`` exports any model whose inputs and outputs are described by ``TensorSpec``s: the
ONNX tensors get the specs' names, and every named dimension (``"batch"``, ``"sequence"``...) becomes
one dynamic axis, shared by every tensor that names it. ``export_run`` exports a run's checkpoint
with the specs of its task (an image run: ``input`` float32 NCHW at the trained size -> ``logits``);
the class names and the preprocessing travel in the ONNX metadata so any runtime (or person) can
use it alone.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgetl._io import atomic_path
from edgetl._lazy import require
from edgetl.data import arrays
from edgetl.errors import ExportError
from edgetl.rundir import Record, RunPath
from edgetl.tensors import Feeds, take

OPSET = 18
# An FP32 export differs from eager PyTorch only by kernel rounding.
ATOL, MIN_AGREEMENT = 1e-3, 0.999


class ExportRecord(Record):
    """The manifest's ``export`` section: the ONNX file, its named tensors and its check against PyTorch."""

    SECTION: ClassVar[str] = "export"

    path: RunPath
    opset: int
    exporter: str
    checkpoint_sha256: str | None  # the checkpoint it was exported from: a new one re-exports
    task: str | None = None  # None: written before tasks were recorded (an image classifier)
    # TensorSpec.to_dict() of every tensor, in the model's order; empty in an export made before
    # tensors were named, which is then made again
    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    seconds: float
    max_abs_diff: float
    top1_agreement: float
    reference_top1: float
    checked_images: int


def export_run(run, *, force: bool = False, view=None) -> Path:
    """Export the run's checkpoint to ``export/model.onnx`` unless that export is already current.
    ``view``: the run's ``DataView`` when the caller has one (compile shares its arrays)."""
    from edgetl.adapt.train import TrainRecord

    if run.get("train") is None:
        from edgetl.errors import RunDirError

        raise RunDirError(f"{run.path} has no trained model: run `edgetl train --out {run.path}` first")
    train = run.section(TrainRecord)
    ckpt_sha = run.manifest["artifacts"].get(train.checkpoint)
    dest = run.path / "export" / "model.onnx"
    if not force and (current := current_export(run)) is not None:
        return current

    torch = require("torch", "ONNX export")
    onnx = require("onnx", "ONNX export")
    from edgetl.models.build import load_trained

    model = load_trained(run)
    view = view or arrays.DataView(run)
    feeds, inputs, outputs = view.val_feeds(), view.inputs, view.outputs
    started = time.perf_counter()
    with atomic_path(dest) as tmp:
        export_onnx(model, take(feeds, slice(0, 2)), inputs, outputs, tmp)
        proto = onnx.load(str(tmp))
        _set_metadata(proto, {"classes": json.dumps(train.classes), "preprocess": json.dumps(train.preprocess),
                              "edgetl.backbone": train.backbone})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        check = _check_against_torch(tmp, feeds, view, view.split["val"])
    record = ExportRecord(
        path=run.rel(dest),
        opset=OPSET,
        exporter=f"torch.onnx (dynamo) {torch.__version__}",
        checkpoint_sha256=ckpt_sha,
        task=view.task.name,
        inputs=[s.to_dict() for s in inputs],
        outputs=[s.to_dict() for s in outputs],
        seconds=time.perf_counter() - started,
        **check,
    )
    run.record(dest)
    run.set_record(record)
    return dest


def current_export(run) -> Path | None:
    """The export when it was made from the run's current checkpoint, names its tensors, and is
    intact, else None."""
    from edgetl.adapt.train import TrainRecord

    train, current = run.section(TrainRecord), run.section(ExportRecord)
    dest = run.path / "export" / "model.onnx"
    if train is None or current is None or not current.inputs or not dest.is_file():
        return None
    if current.checkpoint_sha256 != run.manifest["artifacts"].get(train.checkpoint):
        return None
    return run.verify(current.path)


def export_onnx(model, example_feeds: Feeds, input_specs, output_specs, dest) -> None:
    """Export ``model`` (called with the inputs in ``input_specs`` order) to ONNX at ``dest``.

    One ``torch.export.Dim`` per distinct dimension name: ``input_ids`` and ``attention_mask`` that
    both name ``"sequence"`` share one axis. The example must be at least 2 long on every named
    dimension (the exporter specialises a size-1 axis to a constant).
    """
    torch = require("torch", "ONNX export")
    dims: dict[str, object] = {}
    dynamic_shapes = tuple(
        {axis: dims.setdefault(d, torch.export.Dim(d, min=1)) for axis, d in enumerate(spec.shape) if isinstance(d, str)}
        for spec in input_specs
    )
    args = tuple(torch.from_numpy(example_feeds[spec.name]) for spec in input_specs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, args, dynamo=True, opset_version=OPSET, input_names=[s.name for s in input_specs],
                output_names=[s.name for s in output_specs], dynamic_shapes=dynamic_shapes, verbose=False,
            )
        program.save(str(dest))
    except Exception as exc:  # the exporter names the op it could not handle
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export failed: {first}") from None


def onnx_outputs(path, feeds: Feeds, batch: int = 64) -> dict[str, np.ndarray]:
    """Every output of the ONNX model at ``path`` on ONNX Runtime CPU, run ``batch`` samples at a time."""
    from edgetl.backends import ONNX_RUNNER, get_backend
    from edgetl.bench.accuracy import collect_outputs

    with get_backend(ONNX_RUNNER).load(Path(path)) as session:
        return collect_outputs(session, feeds, batch)


def check_outputs(outputs: Feeds, reference: Feeds, row_name=lambda row: f"row {row}") -> dict[str, float]:
    """Every output against PyTorch's: the largest |diff| per output, or an ``ExportError`` naming
    the output and the row (``row_name``) where it exceeds ``ATOL`` (relative to the output's largest value)."""
    worst = {}
    for name, ref in reference.items():
        diff = np.abs(outputs[name].astype(np.float64) - ref).reshape(len(ref), -1)
        tolerance = ATOL * max(1.0, float(np.abs(ref).max()))
        if diff.max() > tolerance:
            raise ExportError(f"ONNX export disagrees with PyTorch on output {name!r}: max |diff| {diff.max():.2e} "
                              f"(tolerance {tolerance:.1e}); worst: {row_name(int(diff.max(axis=1).argmax()))}")
        worst[name] = float(diff.max())
    return worst


def _set_metadata(proto, values: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in values.items():
        prop = existing.get(key) or proto.metadata_props.add()
        prop.key, prop.value = key, value


def _val_sample(view, sample: str) -> str:
    """A validation sample in a message: an image by its path; another task's sample (a text) quoted, bounded."""
    from edgetl.tasks import DEFAULT_TASK

    if view.task.name == DEFAULT_TASK:
        return f"val image {sample}"
    return f"val sample {sample[:60]!r}" + ("…" if len(sample) > 60 else "")


def _check_against_torch(path, feeds: Feeds, view, val_samples: list) -> dict:
    """Run the ONNX model on every validation sample with ONNX Runtime and compare every output with
    PyTorch's (``check_outputs``); then the task's top-1 agreement with PyTorch."""
    reference = view.reference()
    outputs = onnx_outputs(path, feeds)
    name = lambda row: _val_sample(view, val_samples[row][0])  # noqa: E731
    worst = check_outputs(outputs, reference, lambda row: f"{name(row)} (row {row})")
    metrics = view.task.evaluate(outputs, view.val_labels(), reference, view.record.classes)
    if metrics["agreement"] < MIN_AGREEMENT:
        top = lambda out: np.array([p[0].index for p in view.task.postprocess(out, view.record, 1)])  # noqa: E731
        changed = int(np.flatnonzero(top(outputs) != top(reference))[0])
        raise ExportError(
            f"ONNX export disagrees with PyTorch: top-1 agreement {metrics['agreement']:.2%}; first differing sample: "
            f"{name(changed)} (row {changed})"
        )
    return {
        "max_abs_diff": max(worst.values()),
        "top1_agreement": metrics["agreement"],
        "reference_top1": metrics["fp32_top1"],
        "checked_images": len(val_samples),
    }
