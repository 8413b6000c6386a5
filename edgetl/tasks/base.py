"""The Task contract: what a kind of model (image classification, then text, audio) owns.

A task is registered by name (``edgetl/tasks/__init__.py``) and owns, for a run or a bundle:
its input/output ``TensorSpec``s, device-side preprocessing (numpy/Pillow/tokenizers, never torch),
dummy and golden inputs, the calibration feeds, ``predict``'s post-processing, its metrics and the
goals a profile's budgets may set on them. Load/run code imports this module on the device: keep it
free of torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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
