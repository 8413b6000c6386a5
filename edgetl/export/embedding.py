"""The embedding model of an image run, and its artifact for a prototype-head bundle (workstation side).

The run's network is cut at its pooled features (timm's ``forward_features`` then
``forward_head(pre_logits=True)``: what the classifier's last linear layer reads), exported once to
``export/embedding.onnx`` with one output, ``embedding`` float32 (batch, D), and checked on every
validation image against PyTorch like the classifier's export. Its record is the manifest's own
``export_embedding`` section, so the ``export`` section every other stage reads stays the classifier's.

``compile_prototype`` builds it for a target through the compile stage's ``build_artifact`` (the
target's recipe, runtime and options) into ``compiled/<target>/prototype/``, recorded as
``compiled["<target>/prototype"]`` with ``slot: "prototype"``. Its accuracy is top-1 through the
prototype head (``edgetl.bundle.prototype``: prototypes from the training split, computed with the
artifact's own session) on the validation split, against the FP32 classifier.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgetl._io import atomic_path, sha256_json
from edgetl._lazy import require
from edgetl.bundle import prototype
from edgetl.errors import ConfigError, MissingDependencyError
from edgetl.export.onnx import OPSET, check_outputs, export_onnx, onnx_outputs
from edgetl.rundir import Record, RunDir, RunPath
from edgetl.tensors import TensorSpec, batch_size, concat, take

SLOT = prototype.KIND  # compiled["<target>/prototype"], bundles/<target>-prototype.tar.gz
_CHUNK = 64  # training images embedded at a time: a large split's float feeds never sit in memory at once


class EmbeddingExportRecord(Record):
    """The manifest's ``export_embedding`` section: the embedding ONNX and its check against PyTorch."""

    SECTION: ClassVar[str] = "export_embedding"

    path: RunPath
    opset: int
    exporter: str
    checkpoint_sha256: str | None  # the checkpoint it was exported from: a new one re-exports
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    dim: int  # D, the embedding's length
    seconds: float
    max_abs_diff: float
    checked_images: int


def embedding_spec(dim: int | str = "dim") -> TensorSpec:
    return TensorSpec(prototype.EMBEDDING, "float32", ("batch", dim))


def require_image_run(run: RunDir) -> None:
    from edgetl.tasks import DEFAULT_TASK

    task = (run.get("train") or {}).get("task", DEFAULT_TASK)
    if task != DEFAULT_TASK:
        raise ConfigError(f"{run.path} is a {task} run: a prototype head is for image runs "
                          f"(--task {DEFAULT_TASK})")
    if (run.get("train") or {}).get("heads"):
        raise ConfigError(f"{run.path} has --task-head heads: a prototype head replaces one classifier, so bundle "
                          "this run without --head prototype, or train one without --task-head for enrolment")


def _embedder(model):
    """``model`` returning its pooled features (what its classifier reads) instead of logits."""
    torch = require("torch", "the embedding export")

    class Embedder(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    return Embedder(model).eval()


def current_embedding(run: RunDir) -> Path | None:
    """The embedding export when it was made from the run's current checkpoint and is intact, else None."""
    from edgetl.adapt.train import TrainRecord

    train, current = run.section(TrainRecord), run.section(EmbeddingExportRecord)
    if train is None or current is None:
        return None
    if current.checkpoint_sha256 != run.manifest["artifacts"].get(train.checkpoint):
        return None
    return run.verify(current.path)


def export_embedding(run: RunDir, *, force: bool = False, view=None) -> Path:
    """``export/embedding.onnx`` (made unless current), checked against PyTorch on the validation split."""
    from edgetl.adapt.train import TrainRecord
    from edgetl.backends.torch import TorchSession
    from edgetl.data.arrays import DataView
    from edgetl.models.build import load_trained

    require_image_run(run)
    if not force and (current := current_embedding(run)) is not None:
        return current
    torch = require("torch", "the embedding export")
    onnx = require("onnx", "the embedding export")
    train = run.require(TrainRecord)
    view = view or DataView(run)
    feeds = view.val_feeds()
    model = _embedder(load_trained(run))
    with torch.inference_mode():
        dim = int(model(torch.from_numpy(take(feeds, slice(0, 1))["input"])).shape[1])
    output = embedding_spec()
    dest = run.path / "export" / "embedding.onnx"
    started = time.perf_counter()
    with atomic_path(dest) as tmp:
        export_onnx(model, take(feeds, slice(0, 2)), view.inputs, [output], tmp)
        onnx.checker.check_model(onnx.load(str(tmp)))
        with TorchSession(model, tuple(view.inputs), (output,)) as session:
            reference = concat(session.run(take(feeds, slice(i, i + _CHUNK))) for i in range(0, batch_size(feeds), _CHUNK))
        samples = view.split["val"]
        worst = check_outputs(onnx_outputs(tmp, feeds), reference, lambda row: f"val image {samples[row][0]} (row {row})")
    record = EmbeddingExportRecord(
        path=run.rel(dest), opset=OPSET, exporter=f"torch.onnx (dynamo) {torch.__version__}",
        checkpoint_sha256=run.manifest["artifacts"].get(train.checkpoint),
        inputs=[s.to_dict() for s in view.inputs], outputs=[embedding_spec(dim).to_dict()], dim=dim,
        seconds=round(time.perf_counter() - started, 3), max_abs_diff=worst[prototype.EMBEDDING],
        checked_images=len(samples),
    )
    run.record(dest)
    run.set_record(record)
    return dest


def train_embeddings(session, view) -> tuple[np.ndarray, np.ndarray]:
    """The embeddings of the run's training split (and a continual run's exemplars of the classes it
    lacks) through ``session``, and their class indices."""
    from edgetl.bench.accuracy import collect_outputs

    decoded, labels = view.part("train")
    memory = view.memory()  # a continual run's old classes live in its exemplar memory
    if memory is not None:
        decoded, labels = concat([decoded, memory[0]]), np.concatenate([labels, memory[1]])
    chunks = [collect_outputs(session, view.task.feeds(take(decoded, slice(i, i + _CHUNK)), view.record))
              for i in range(0, len(labels), _CHUNK)]
    return concat(chunks)[prototype.EMBEDDING], labels


def run_prototypes(session, view) -> tuple[np.ndarray, dict[str, int]]:
    """The run's prototypes (class means of the training split's normalised embeddings, through
    ``session``), and how many images each class's mean has."""
    embeddings, labels = train_embeddings(session, view)
    classes = view.record.classes
    missing = [c for i, c in enumerate(classes) if not np.any(labels == i)]
    if missing:
        raise ConfigError(f"{view.run.path}: class {missing[0]!r} has no training image: its prototype cannot be made")
    shots = {c: int(np.sum(labels == i)) for i, c in enumerate(classes)}
    return prototype.class_prototypes(embeddings, labels, len(classes)), shots


def _through_head(view):
    """The compile stage's hook for the embedding artifact: its validation outputs plus the head's
    logits, with prototypes made by the very session under test."""

    def through(session, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prototypes, _ = run_prototypes(session, view)
        return prototype.with_head(outputs, prototypes, prototype.DEFAULT_SCALE)

    return through


def _current(run: RunDir, key: str, fingerprint: str) -> bool:
    """The entry was built from the same inputs and its files are intact (a tampered one is rebuilt)."""
    from edgetl.compiler import CompiledEntry
    from edgetl.errors import EdgetlError

    try:
        entry = run.entries(CompiledEntry).get(key)
        if entry is None or entry.fingerprint != fingerprint:
            return False
        for f in entry.files:
            run.verify(f)
    except EdgetlError:
        return False
    return True


def compile_prototype(run_path: str | Path, target: str, precision: str | None = None, *,
                      force: bool = False) -> str:
    """Export (if needed) and compile the embedding model for ``target`` (the profile's precision
    unless ``precision``) into ``compiled["<target>/prototype"]``; its key. An unchanged artifact is kept."""
    from edgetl.backends import get_backend
    from edgetl.compiler import (
        _Context,
        _fingerprint,
        build_artifact,
        entry_for,
        plan,
        record_entry,
        task_options,
    )
    from edgetl.data.arrays import DataView
    from edgetl.errors import CompileError
    from edgetl.stages import SilentReporter

    run = RunDir.open(run_path, need="train")
    require_image_run(run)
    cells = plan(target, precision)
    if len(cells) != 1:
        raise ConfigError(f"--head prototype bundles one target at one precision, not {', '.join(c.key for c in cells)}")
    (cell,) = cells
    backend = get_backend(cell.runtime)
    if not backend.available():
        raise MissingDependencyError(f"{cell.runtime} is not installed: pip install 'edgetl[{backend.extra}]'")
    if cell.precision not in backend.precisions:
        raise CompileError(f"{cell.runtime} cannot build {cell.precision}: it supports {', '.join(backend.precisions)}")
    view = DataView(run)
    ctx = _Context(run, export_embedding(run, view=view), view)
    ctx.head = _through_head(view)
    key = f"{cell.target}/{SLOT}"
    fingerprint = sha256_json({"artifact": _fingerprint(ctx.onnx_sha, cell, backend, task_options(run, cell)),
                               "head": SLOT, "scale": prototype.DEFAULT_SCALE})
    if not force and _current(run, key, fingerprint):
        return key
    dest = run.path / "compiled" / cell.target / SLOT
    compiled, accuracy, compile_s = build_artifact(ctx, cell, dest, SilentReporter())
    record_entry(run, key, entry_for(run, cell, compiled, dest, accuracy, compile_s, fingerprint, slot=SLOT))
    return key
