"""A candidate backbone's latency for a target, as ``edgetl select`` compares them.

The classifier (backbone + a head for the user's classes) at the run's input size is exported to
ONNX, compiled for the target's runtime and precision (int8 calibrated on a few of the user's
images, with the target's recipe) and timed with the bench harness at batch 1 on this machine,
with short settings and the target's threads. The result is cached in
``cache_root()/latency/``, keyed by everything that changes it: backbone, size, the target's
compile settings, the runtime versions and this CPU; the user's images and classes do not, so a
second selection, on any data, reuses it. A runtime that cannot run here (TensorRT without a GPU)
gives no number: "not measured here".

The cache folder may be shared or edited: an entry is used only when it is a small regular file
(not a link) whose key is the key asked for and whose latency is what ``measure_candidate`` writes
for that key (positive finite times, p50 <= p90, this runtime, precision, threads and CPU, no other
field); anything else is measured again and replaced.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgetl._cache import cache_root
from edgetl._io import atomic_path, sha256_json
from edgetl.backends import get_backend
from edgetl.bench.latency import measure_latency
from edgetl.bench.run import default_threads
from edgetl.bench.system import cpu_record, runtime_versions
from edgetl.tensors import TensorSpec

# Short settings: enough for a stable median when ranking backbones, not a release measurement
# (`edgetl bench` on the trained run is that).
WARMUP_ITERS, WARMUP_S, ITERATIONS, MAX_S = 10, 0.2, 60, 10.0
CALIBRATION_IMAGES = 32
MAX_ENTRY_BYTES = 64 * 1024  # an entry is a few hundred bytes; a bigger file is not one


class CachedLatency(BaseModel):
    """A cache entry's latency, as ``measure_candidate`` writes it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    p50_ms: float = Field(gt=0, allow_inf_nan=False)
    p90_ms: float = Field(gt=0, allow_inf_nan=False)
    iterations: int = Field(ge=1)
    threads: int
    runtime: str
    precision: str
    cpu: str
    busy: bool


def _measured_for(latency, key: dict[str, Any]) -> dict[str, Any] | None:
    """``latency`` when it is a measurement made for ``key``; None otherwise."""
    try:
        entry = CachedLatency.model_validate(latency)
    except ValidationError:
        return None
    expected = (key["runtime"], key["precision"], key["threads"], key["cpu"]["model"])
    if entry.p50_ms > entry.p90_ms or (entry.runtime, entry.precision, entry.threads, entry.cpu) != expected:
        return None
    return entry.model_dump()


def latency_key(backbone: str, size: int, cell) -> dict[str, Any]:
    """What the measurement depends on; its hash names the cache file."""
    cpu = cpu_record()
    return {"backbone": backbone, "size": size, "runtime": cell.runtime, "precision": cell.precision,
            "options": cell.options, "recipe": cell.recipe.model_dump() if cell.recipe else None,
            "threads": threads_of(cell), "runtimes": runtime_versions(),
            "cpu": {k: cpu[k] for k in ("model", "arch", "flags", "usable_cores")}}


def threads_of(cell) -> int:
    """The target's threads, at most this machine's cores (more would only measure contention)."""
    return min(cell.threads or default_threads(), default_threads())


def cache_path(key: dict[str, Any]) -> Path:
    return cache_root() / "latency" / f"{sha256_json(key)[:24]}.json"


def not_measured(cell) -> str | None:
    """Why this machine gives no latency for the target's runtime, or None when it can."""
    backend = get_backend(cell.runtime)
    if not backend.available():
        return f"not measured here: {cell.runtime} is not installed (pip install 'edgetl[{backend.extra}]')"
    if not backend.can_run_here():
        return f"not measured here: {cell.runtime} needs {backend.runs_on}"
    return None


def cached_latency(key: dict[str, Any]) -> dict[str, Any] | None:
    """The latency measured for ``key`` earlier, or None (never measured, or an entry not to trust)."""
    path = cache_path(key)
    if path.is_symlink() or not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            text = f.read(MAX_ENTRY_BYTES + 1)
        stored = json.loads(text) if len(text) <= MAX_ENTRY_BYTES else None
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    return _measured_for(stored.get("latency"), key)


def measure_candidate(model, pixels_normalized: np.ndarray, cell, key: dict[str, Any]) -> dict[str, Any]:
    """Export, compile and time ``model`` (eval mode) for ``cell``; stored under ``key``."""
    from edgetl.export.onnx import export_onnx

    size = pixels_normalized.shape[-1]
    classes = model.get_classifier().out_features
    inputs = (TensorSpec("input", "float32", ("batch", 3, size, size)),)
    outputs = (TensorSpec("logits", "float32", ("batch", classes)),)
    threads = threads_of(cell)
    backend = get_backend(cell.runtime)
    with tempfile.TemporaryDirectory(prefix="edgetl-select-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, {"input": pixels_normalized[:2]}, inputs, outputs, onnx_path)
        (Path(tmp) / "out").mkdir()
        calibration = {"input": pixels_normalized[:CALIBRATION_IMAGES]} if cell.precision == "int8" else None
        compiled = backend.compile(onnx_path, Path(tmp) / "out", cell.precision, calibration,
                                   {**cell.options, "recipe": cell.recipe, "threads": threads})
        with backend.load(compiled.path, threads=threads) as session:
            stats = measure_latency(session, {"input": pixels_normalized[:1]}, warmup_iters=WARMUP_ITERS,
                                    warmup_s=WARMUP_S, iterations=ITERATIONS, max_s=MAX_S, threads=threads,
                                    keep_samples=False)
    latency = {"p50_ms": stats.p50_ms, "p90_ms": stats.p90_ms, "iterations": stats.iterations,
               "threads": threads, "runtime": cell.runtime, "precision": cell.precision,
               "cpu": key["cpu"]["model"], "busy": stats.busy}
    try:
        with atomic_path(cache_path(key)) as tmp_file:
            tmp_file.write_text(json.dumps({"key": key, "latency": latency}, indent=1), encoding="utf-8")
    except OSError:
        pass  # a read-only cache costs time, not correctness
    return latency
