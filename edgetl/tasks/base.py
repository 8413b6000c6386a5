"""The Task contract: what a kind of model (image classification, then text, audio) owns.

A task is registered by name (``edgetl/tasks/__init__.py``) and owns, for a run or a bundle:
its input/output ``TensorSpec``s, device-side preprocessing (numpy/Pillow/tokenizers, never torch),
dummy and golden inputs, the calibration feeds, ``predict``'s post-processing, its metrics and the
goals a profile's budgets may set on them. Load/run code imports this module on the device: keep it
free of torch.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol, runtime_checkable

import numpy as np

from edgetl.tensors import TensorSpec


@dataclass(frozen=True)
class Metric:
    """A number a stage measures and a budget may set a goal on."""

    name: str  # e.g. "accuracy_drop_pp"
    better: Literal["higher", "lower"]
    unit: str  # "pp", "ms", "MB", "" (a fraction)
    description: str


# Measured by the bench for every task, whatever its outputs.
LATENCY_P90 = Metric("p90_latency_ms", "lower", "ms", "batch-1 p90 latency of the session")
MEMORY = Metric("memory_mb", "lower", "MB", "peak resident memory of the session")
BENCH_METRICS = (LATENCY_P90, MEMORY)


ASSETS = "assets"  # the folder of a task's asset files: train/assets/ in a run, assets/ in a bundle


@dataclass(frozen=True)
class Head:
    """An extra task on the model's backbone (``edgetl train --task-head``): its name, its output
    (``logits_<name>``) and its class names."""

    name: str
    output: str
    classes: tuple[str, ...]


@dataclass(frozen=True)
class TaskRecord:
    """What a task reads from a run's ``train`` section or a bundle manifest to describe its model:
    the preprocessing (the task's dict, e.g. ``PreprocessSpec.to_dict()``), the class names, the
    asset files its preprocessing reads (a tokenizer), by name, as absolute paths, and the extra
    task heads (none: one output)."""

    preprocess: Mapping[str, Any]
    classes: tuple[str, ...]
    assets: Mapping[str, Path] = field(default_factory=dict)
    heads: tuple[Head, ...] = ()

    @classmethod
    def of_train(cls, train: Mapping[str, Any], run=None) -> TaskRecord:
        """``run`` (a ``RunDir``) resolves the train section's ``assets`` (name -> run-relative path)."""
        assets = train.get("assets") or {}
        if assets and run is None:
            raise ValueError("a run's assets need the run to resolve them")
        heads = tuple(Head(h["name"], h["output"], tuple(h["classes"])) for h in train.get("heads") or ())
        return cls(train["preprocess"], tuple(train["classes"]), {n: run.inside(rel) for n, rel in assets.items()}, heads)

    @classmethod
    def of_bundle(cls, manifest: Mapping[str, Any], bundle_dir: Path | None = None) -> TaskRecord:
        """``bundle_dir`` (the extracted bundle) resolves the manifest's ``assets`` (names in ``assets/``)."""
        names = manifest.get("assets") or []
        if names and bundle_dir is None:
            raise ValueError("a bundle's assets need its folder to resolve them")
        heads = tuple(Head(h["name"], h["output"], tuple(h["labels"])) for h in manifest.get("heads") or ())
        return cls(manifest["preprocess"], tuple(manifest["labels"]),
                   {n: Path(bundle_dir) / ASSETS / n for n in names}, heads)


@dataclass
class LabelledSamples:
    """A labelled data set as a task reads it (``Task.read_labelled``): samples are the strings the
    task loads (a file path, or a text itself), with their class names; ``skipped``: (sample, reason)
    of what could not be used. ``files``: the samples are paths, and the content hash reads their bytes."""

    samples: list[str]
    labels: list[str]
    classes: list[str]  # sorted
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""
    files: bool = True

    def indexed(self, classes: Sequence[str] | None = None) -> list[tuple[str, int]]:
        """(sample, class index) pairs, in ``classes``' order (default: this set's)."""
        index = {name: i for i, name in enumerate(classes or self.classes)}
        return [(s, index[label]) for s, label in zip(self.samples, self.labels, strict=True)]

    def counts(self) -> dict[str, int]:
        return {name: self.labels.count(name) for name in self.classes}

    def content_hash(self) -> str:
        """Hash of every sample's content (a file's bytes, or the text) and label: the key for caches
        and for skipping unchanged work."""
        digest = hashlib.sha256()
        for sample, label in sorted(self.indexed()):
            digest.update(f"{self.classes[label]}\0".encode())
            content = Path(sample).read_bytes() if self.files else sample.encode()
            digest.update(hashlib.sha256(content).digest())
        return digest.hexdigest()


MAX_LABEL = 200  # a bundle manifest's bound on a label


# C0/C1 controls, the line and paragraph separators and the bidirectional overrides and isolates: they
# would end a one-line message, or make a terminal or report show other text than the label holds.
# Other format characters (the zero-width joiner of emoji sequences) are allowed.
UNPRINTABLE = r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"


def check_label(label: str, where: str) -> str:
    """``label`` when a bundle can carry it (1..200 characters, no control characters: they would
    reach terminals and reports), else one ``DataError`` line at training time, not at ``bundle``."""
    if not 1 <= len(label) <= MAX_LABEL or re.search(UNPRINTABLE, label):
        from edgetl.errors import DataError

        shown = re.sub(UNPRINTABLE, "?", label[:60])
        raise DataError(f"{where}: the label {shown!r} must be 1..{MAX_LABEL} characters without control characters")
    return label


@dataclass(frozen=True)
class Prediction:
    """One of ``predict``'s top-k answers for one sample."""

    label: str
    index: int
    score: float


@runtime_checkable
class Task(Protocol):
    """A kind of model. Methods take a ``TaskRecord`` (run or bundle), numpy arrays and named feeds;
    nothing here may import torch (the device runs it). See docs/architecture.md, "Tasks"."""

    name: str  # the entry-point name: recorded in the run manifest and the bundle
    description: str
    metrics: tuple[Metric, ...]  # what ``evaluate`` returns and a profile's budgets may set goals on
    # A pydantic model that validates ``record.preprocess`` in a bundle manifest (untrusted input:
    # every value bounded).
    preprocess_model: type
    # Dotted path of the task's torch-side module (workstation only; None: edgetl cannot train it):
    # BACKBONES, DEFAULT_BACKBONE, options_model, train, inputs_hash, load_trained (architecture.md).
    workstation: str | None
    requires: tuple[str, ...]  # modules the device side needs beyond base edgetl ("tokenizers",)
    extra: str | None  # the pip extra that installs them: pip install "edgetl[<extra>]"

    def read_labelled(self, source: Path) -> LabelledSamples:
        """A labelled data set in one of this task's layouts (torch-free); bad input: one-line DataError."""

    def predict_samples(self, args: Sequence[str], stdin: IO[str] | None) -> list[tuple[str, str]]:
        """``edgetl predict``'s arguments -> (display name, sample) pairs (``-``: read ``stdin``)."""

    def assets(self, record: TaskRecord) -> list[str]:
        """Names of the files the preprocessing needs besides the model (a tokenizer)."""

    def quantization(self, record: TaskRecord, runtime: str, precision: str) -> dict[str, Any]:
        """The task's scheme for ``precision`` on ``runtime`` (``{}``: the runtime's default). Keys:
        ``scheme`` ("static"/"dynamic"), ``op_types``, ``keep_float_prefixes``, ``model_type``, ``why``."""

    def max_dims(self, record: TaskRecord) -> dict[str, int]:
        """The largest size of each named dynamic axis besides the batch (``{"sequence": 128}``)."""

    def inputs(self, record: TaskRecord | None = None) -> list[TensorSpec]:
        """The model's inputs, dynamic axes by name (axis 0 is the batch); without a record, the
        dimensions a run fixes are named too (``"height"``), for ``edgetl tasks``."""

    def outputs(self, record: TaskRecord | None = None) -> list[TensorSpec]:
        """The model's outputs, named like ``inputs``."""

    def load(self, samples: Sequence[str | Path], record: TaskRecord) -> dict[str, np.ndarray]:
        """Samples (file paths, or texts) -> compact decoded arrays (e.g. uint8 pixels): what a run
        caches per split."""

    def feeds(self, loaded: Mapping[str, np.ndarray], record: TaskRecord) -> dict[str, np.ndarray]:
        """``load``'s arrays -> the model's feeds, exactly as validation saw them."""

    def preprocess(self, samples: Sequence[str | Path], record: TaskRecord) -> dict[str, np.ndarray]:
        """Samples -> feeds (``feeds(load(samples))``): what ``predict`` runs on the device."""

    def dummy_inputs(self, record: TaskRecord, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Random feeds of the right specs, for timing where the values do not matter."""

    def golden_inputs(self, view, n: int) -> dict[str, np.ndarray]:
        """A bundle's golden feeds: ``n`` validation samples of the data view, chosen deterministically."""

    def calibration(self, view, recipe) -> dict[str, np.ndarray]:
        """The feeds a quantizer calibrates on: training samples of the data view, per the recipe."""

    def postprocess(self, outputs: Mapping[str, np.ndarray], record: TaskRecord, top: int) -> list[list[Prediction]]:
        """A batch's outputs -> ``predict``'s answer per sample."""

    def check_bundle(self, inputs: list[TensorSpec], outputs: list[TensorSpec], record: TaskRecord) -> str | None:
        """Why a bundle's tensors are not what this task makes of its record (one phrase), or None."""

    def evaluate(self, outputs: Mapping[str, np.ndarray], labels: np.ndarray,
                 reference: Mapping[str, np.ndarray] | None, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """The task's metrics (with intervals) of ``outputs`` against labels and the FP32 reference."""


class Classifier:
    """What every classification task shares: one ``logits`` output (batch, classes) and one
    ``logits_<name>`` per extra head of the record (``--task-head``), predictions
    by softmax, golden and calibration samples from the data view. A task subclasses it and gives
    its inputs, ``load``/``feeds``, ``read_labelled``, ``evaluate`` and the rest of ``Task``."""

    OUTPUT = "logits"
    sample_kind = "file"  # a sample is a file path ("text": the text itself; predict never stats it)

    def outputs(self, record: TaskRecord | None = None) -> list[TensorSpec]:
        """``logits``, then one ``logits_<name>`` per extra head of the record."""
        heads = [TensorSpec(h.output, "float32", ("batch", len(h.classes))) for h in (record.heads if record else ())]
        return [TensorSpec(self.OUTPUT, "float32", ("batch", len(record.classes) if record else "classes")), *heads]

    def preprocess(self, samples: Sequence[str | Path], record: TaskRecord) -> dict[str, np.ndarray]:
        return self.feeds(self.load(samples, record), record)

    def golden_inputs(self, view, n: int) -> dict[str, np.ndarray]:
        """Up to ``n`` validation samples, round-robin over classes, so every class is seen."""
        return view.val_feeds(spread_over_classes(view.val_labels(), n))

    def calibration(self, view, recipe) -> dict[str, np.ndarray]:
        return view.calibration_feeds(recipe)

    def postprocess(self, outputs: Mapping[str, np.ndarray], record: TaskRecord, top: int) -> list[list[Prediction]]:
        """Softmax over the logits, the ``top`` most likely classes per sample (ties: the lower index)."""
        return _top(outputs[self.OUTPUT], record.classes, top)

    def head_predictions(self, outputs: Mapping[str, np.ndarray], record: TaskRecord,
                         top: int) -> dict[str, list[list[Prediction]]]:
        """Each extra head's answers per sample, by head name (``postprocess`` gives the primary's)."""
        return {h.name: _top(outputs[h.output], h.classes, top) for h in record.heads}

    def evaluate(self, outputs: Mapping[str, np.ndarray], labels: np.ndarray,
                 reference: Mapping[str, np.ndarray] | None, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """Top-1 (Wilson interval), the drop against the reference (``drop_pp``: the metric
        ``accuracy_drop_pp``, Newcombe's paired interval), agreement and max |diff|
        (``bench/accuracy.py``); without a reference, top-1 and per class against the labels only.
        A task adds its own metrics to this dict."""
        return _accuracy(outputs[self.OUTPUT], labels, reference[self.OUTPUT] if reference is not None else None,
                         classes)

    def evaluate_heads(self, outputs: Mapping[str, np.ndarray], heads: Sequence[tuple[Head, np.ndarray]],
                       reference: Mapping[str, np.ndarray] | None) -> dict[str, dict[str, Any]]:
        """``evaluate``'s accuracy numbers for each extra head (with its labels), by head name."""
        return {head.name: _accuracy(outputs[head.output], labels,
                                     reference[head.output] if reference is not None else None, list(head.classes))
                for head, labels in heads}

    def check_tensors(self, inputs: list[TensorSpec], outputs: list[TensorSpec], record: TaskRecord) -> str | None:
        """One output class per label (every head's too), then the specs themselves (``check_bundle``'s
        common part)."""
        logits = outputs[0].shape if outputs else ()
        if len(logits) == 2 and logits[1] != len(record.classes):
            return f"{len(record.classes)} labels for a model with {logits[1]} output classes"
        by_name = {t.name: t.shape for t in outputs}
        for head in record.heads:
            shape = by_name.get(head.output, ())
            if len(shape) == 2 and shape[1] != len(head.classes):
                return f"head {head.name!r}: {len(head.classes)} labels for an output with {shape[1]} classes"
        return (spec_mismatch(self.inputs(record), inputs, "inputs")
                or spec_mismatch(self.outputs(record), outputs, "outputs"))


def _top(logits: np.ndarray, labels: Sequence[str], top: int) -> list[list[Prediction]]:
    """Softmax over ``logits``, the ``top`` most likely classes per row (ties: the lower index)."""
    logits = np.asarray(logits, np.float64)
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = z / z.sum(axis=-1, keepdims=True)
    k = max(1, min(top, probs.shape[-1]))
    return [[Prediction(labels[j] if j < len(labels) else str(j), int(j), float(row[j]))
             for j in np.argsort(-row, kind="stable")[:k]] for row in probs]


def _accuracy(logits: np.ndarray, labels: np.ndarray, reference: np.ndarray | None,
              classes: Sequence[str] | None) -> dict[str, Any]:
    from edgetl.bench.accuracy import evaluate, label_accuracy

    if reference is None:
        return label_accuracy(logits, labels, classes or [str(i) for i in range(logits.shape[1])])
    return evaluate(logits, labels, reference, classes)


def spread_over_classes(labels: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` indices, round-robin over the classes in order of appearance, sorted."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(np.asarray(labels).tolist()):
        by_class.setdefault(label, []).append(i)
    chosen: list[int] = []
    while len(chosen) < min(n, len(labels)):
        for label in sorted(by_class):
            if by_class[label] and len(chosen) < n:
                chosen.append(by_class[label].pop(0))
    return sorted(chosen)


def spec_mismatch(expected: Sequence[TensorSpec], got: Sequence[TensorSpec], what: str) -> str | None:
    """Why ``got`` (an artifact's or a bundle's tensors) is not ``expected`` (a task's), or None.

    Names and dtypes must be equal and every fixed dimension too; a dynamic dimension may be fixed
    in ``got`` (a static-batch artifact)."""
    by_name = {t.name: t for t in got}
    if sorted(by_name) != sorted(t.name for t in expected):
        return f"{what} are {sorted(by_name)}, the task expects {sorted(t.name for t in expected)}"
    for want in expected:
        have = by_name[want.name]
        if have.dtype != want.dtype or len(have.shape) != len(want.shape):
            return f"{what} {want.name!r} is {have.dtype} {list(have.shape)}, the task expects {want.dtype} {list(want.shape)}"
        for axis, (h, w) in enumerate(zip(have.shape, want.shape, strict=True)):
            if isinstance(w, int) and h != w:
                return f"{what} {want.name!r}: dimension {axis} is {h}, the task expects {w} (shape {list(want.shape)})"
    return None
