"""The Task contract: what a kind of model (image classification, then text, audio) owns.

A task is registered by name (``edgetl/tasks/__init__.py``) and owns, for a run or a bundle:
its input/output ``TensorSpec``s, device-side preprocessing (numpy/Pillow/tokenizers, never torch),
dummy and golden inputs, the calibration feeds, ``predict``'s post-processing, its metrics and the
goals a profile's budgets may set on them. Load/run code imports this module on the device: keep it
free of torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

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


@dataclass(frozen=True)
class TaskRecord:
    """What a task reads from a run's ``train`` section or a bundle manifest to describe its model:
    the preprocessing (``PreprocessSpec.to_dict()``) and the class names."""

    preprocess: Mapping[str, Any]
    classes: tuple[str, ...]

    @classmethod
    def of_train(cls, train: Mapping[str, Any]) -> TaskRecord:
        return cls(train["preprocess"], tuple(train["classes"]))

    @classmethod
    def of_bundle(cls, manifest: Mapping[str, Any]) -> TaskRecord:
        return cls(manifest["preprocess"], tuple(manifest["labels"]))


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

    def inputs(self, record: TaskRecord | None = None) -> list[TensorSpec]:
        """The model's inputs, dynamic axes by name (axis 0 is the batch); without a record, the
        dimensions a run fixes are named too (``"height"``), for ``edgetl tasks``."""

    def outputs(self, record: TaskRecord | None = None) -> list[TensorSpec]:
        """The model's outputs, named like ``inputs``."""

    def load(self, files: Sequence[str | Path], record: TaskRecord) -> dict[str, np.ndarray]:
        """Sample files -> compact decoded arrays (e.g. uint8 pixels): what a run caches per split."""

    def feeds(self, loaded: Mapping[str, np.ndarray], record: TaskRecord) -> dict[str, np.ndarray]:
        """``load``'s arrays -> the model's feeds, exactly as validation saw them."""

    def preprocess(self, files: Sequence[str | Path], record: TaskRecord) -> dict[str, np.ndarray]:
        """Sample files -> feeds (``feeds(load(files))``): what ``predict`` runs on the device."""

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
