"""Timers: where a candidate's latency is measured. ``LocalTimer`` times on this machine, each
candidate in a fresh process (``bench.measure.measure_isolated``, as ``edgetl bench`` does) on a real
validation sample; a remote timer (``RemoteTimer``) bundles the candidate and times it on the device.

A screening timing (``final=False``) warms up briefly and times for ``duration_s``: enough to tell a
point 3x slower from the fastest. The final timing follows DESIGN.md's policy: >= 50 warm-up runs and
>= 200 ms, then >= 200 timed runs (or ``duration_s``).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgetl.rundir import RunDir

FINAL = {"warmup_iters": 50, "warmup_s": 0.2, "iterations": 200}
SCREEN = {"warmup_iters": 5, "warmup_s": 0.05}
# PyTorch eager is 10-100x slower than an int8 artifact: the final policy, cut once its median is known
# (the bench stage's rule for the same reference, ``bench.run.REFERENCE_TIMING``)
REFERENCE_CAPS = {"warmup_max_s": 10.0, "max_s": 60.0, "median_precision": 0.05}


class Timer(Protocol):
    where: str  # "this machine (host, 2 cores)" / "ssh://pi@host": also the key of cached timings

    def cores(self) -> int:
        """Physical cores of the device: the threads axis goes up to it."""

    def time(self, run: RunDir, candidate_dir: Path, entry: dict, threads: int | None,
             duration_s: float | None, final: bool) -> dict:
        """Batch-1 latency of the candidate: {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "iterations",
        "busy"} (+ "memory_mb" where it was read). ``entry``: a CompiledEntry-shaped dict."""


def latency_summary(measured: dict) -> dict:
    """The fields a point records of one ``measure`` result (batch 1)."""
    row = measured["latency"][0]
    out = {k: round(row[k], 4) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}
    out.update(iterations=row["iterations"], busy=bool((row.get("contention") or {}).get("busy")))
    memory = (measured.get("memory") or {}).get("session_peak_mb")
    if memory is not None:
        out["memory_mb"] = round(memory, 2)
    return out


class LocalTimer:
    """This machine: every timing in a fresh process, on the first validation sample."""

    def __init__(self, run: RunDir, work_dir: Path, view=None):
        from edgetl.bench.run import default_threads
        from edgetl.data.arrays import DataView
        from edgetl.tensors import take

        self._cores = default_threads()
        self.where = f"this machine ({platform.node()}, {self._cores} cores)"
        sample = take((view or DataView(run)).val_feeds(), slice(0, 1))  # the search's view: read once
        work_dir.mkdir(parents=True, exist_ok=True)
        self._inputs = {}
        for i, (name, array) in enumerate(sample.items()):  # the child memory-maps these
            path = work_dir / f"input.{i}.npy"
            np.save(path, np.ascontiguousarray(array))
            self._inputs[name] = str(path)

    def cores(self) -> int:
        return self._cores

    def time(self, run: RunDir, candidate_dir: Path, entry: dict, threads: int | None,
             duration_s: float | None, final: bool) -> dict:
        kwargs = {"runtime": entry["runtime"], "path": str(run.path / entry["path"]), "threads": threads}
        return self._measure("edgetl.bench.measure:artifact_opener", kwargs, threads, duration_s, final)

    def reference(self, run: RunDir, threads: int | None) -> dict:
        """PyTorch eager FP32 under the final policy (cut as the bench stage cuts it)."""
        kwargs = {"run_path": str(run.path), "threads": threads}
        return self._measure("edgetl.backends.torch:reference_opener", kwargs, threads, None, True, REFERENCE_CAPS)

    def _measure(self, loader: str, kwargs: dict, threads: int | None, duration_s: float | None, final: bool,
                 extra: dict | None = None) -> dict[str, Any]:
        from edgetl.bench.measure import measure_isolated

        policy = dict(FINAL if final else SCREEN)
        if duration_s is not None:
            policy["duration_s"] = duration_s
        measured = measure_isolated(loader, kwargs, {"inputs": self._inputs}, batches=(1,), threads=threads,
                                    **policy, **(extra or {}))
        return latency_summary(measured)
