"""Measure one session: latency per batch size, first inference, peak memory, accuracy.

Three entry points, from the most to the least isolated:

- ``measure_isolated(loader, kwargs, data, ...)``: load and measure in a fresh Python process.
  The bench stage uses it for every artifact and for the PyTorch reference, because peak RSS is
  process-wide, and runtimes keep thread pools, plugin caches and allocator arenas after a session
  closes: in one process the second artifact of a runtime would look cheaper to load and smaller
  than it is, and a reference's OpenMP threads could compete with the next artifact (measured on
  EfficientNet-Lite0, 1 thread: in one process ONNX Runtime int8 after fp32 showed a 0 MB session
  peak, 23 MB in a fresh process; OpenVINO int8 after fp32 24 MB, 85 MB fresh; loads ran up to 2x
  faster than a user's first load would). It also
  mirrors the device, where a bundle is benched by a fresh ``edgetl bench`` process, and a runtime
  that crashes (a segfault in a plugin) fails that row only.
- ``measure(load, feeds, ...)``: the same measurement in this process.
- ``bench_session(session, feeds, ...)``: latency and accuracy of an already open session, no load
  time and no memory (for a bundle on the device, or a notebook).

numpy only: no torch, no run directory, so a bundle on a device uses the same code.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import errors
from edgetl.bench.accuracy import collect_outputs
from edgetl.bench.latency import MemoryProbe, first_inference, measure_latency, static_batch
from edgetl.errors import ArtifactError
from edgetl.tasks import DEFAULT_TASK, get_task
from edgetl.tensors import Feeds, batch_size, take

# (phase, done, total): phase is "batch 8" or "accuracy"; done/total are iterations, seconds or images
PhaseProgress = Callable[[str, float, float], None]


def check_inputs(session, feeds: Feeds) -> None:
    """The artifact takes exactly these tensors, with these sizes beyond the batch axis."""
    names = sorted(s.name for s in session.inputs)
    if sorted(feeds) != names:
        raise ArtifactError(f"the artifact takes inputs {names} but the data has {sorted(feeds)}: it was compiled "
                            "for another model; recompile it")
    for spec in session.inputs:
        x = feeds[spec.name]
        fixed = all(not isinstance(e, int) or e == a for e, a in zip(spec.shape[1:], x.shape[1:], strict=False))
        if x.ndim != len(spec.shape) or not fixed:
            raise ArtifactError(
                f"the artifact expects {spec.name!r} of shape {'x'.join(map(str, spec.shape[1:]))} but the validation "
                f"samples are {'x'.join(map(str, x.shape[1:]))}: it was compiled for another model or input size; "
                "recompile it"
            )


def make_batches(feeds: Feeds, batches: Sequence[int]) -> dict[int, dict[str, np.ndarray]]:
    """Real samples for each batch size, repeated when the split is smaller than the batch; copies,
    so that timing never reads through a memory map."""
    n = batch_size(feeds)
    return {b: take(feeds, np.arange(b) % n) for b in dict.fromkeys(batches)}


def runnable_batches(session, arrays: dict[int, Feeds]) -> tuple[dict[int, Feeds], list[dict]]:
    """Drop the batch sizes a static-batch artifact cannot run, saying why."""
    static = static_batch(session)
    if not static:
        return arrays, []
    skipped = [{"batch": b, "reason": f"the artifact has a static batch size of {static}"} for b in arrays if b != static]
    return {b: x for b, x in arrays.items() if b == static}, skipped


def _phase(progress: PhaseProgress | None, name: str):
    return None if progress is None else functools.partial(progress, name)


def _latency(session, arrays: dict[int, Feeds], progress: PhaseProgress | None, **kw) -> list[dict]:
    return [measure_latency(session, x, progress=_phase(progress, f"batch {b}"), **kw).to_dict() for b, x in arrays.items()]


def _accuracy(session, feeds, labels, reference, task, classes, progress, heads=None) -> dict | None:
    if labels is None or reference is None:
        return None
    outputs = collect_outputs(session, feeds, progress=_phase(progress, "accuracy"))
    reference = {k: np.asarray(v) for k, v in reference.items()}
    accuracy = get_task(task).evaluate(outputs, np.asarray(labels), reference, classes)
    if heads:
        accuracy["heads"] = evaluate_heads(get_task(task), outputs, heads, reference)
    return accuracy


def evaluate_heads(task, outputs, heads: Sequence[dict], reference) -> dict[str, dict]:
    """Each extra task head's accuracy (``heads``: name, output, classes and the validation labels,
    as JSON values: they travel to the measuring process), by head name."""
    from edgetl.tasks.base import Head

    labelled = [(Head(h["name"], h["output"], tuple(h["classes"])), np.asarray(h["labels"], np.int64)) for h in heads]
    return task.evaluate_heads(outputs, labelled, reference)


def heads_job(labelled_heads) -> list[dict]:
    """``DataView.labelled_heads()`` as the JSON values ``measure``'s ``heads`` takes."""
    return [{"name": h.name, "output": h.output, "classes": list(h.classes), "labels": labels.tolist()}
            for h, labels in labelled_heads]


def bench_session(
    session,
    feeds: Feeds,
    labels: np.ndarray | None = None,
    reference: Feeds | None = None,
    *,
    batches: Sequence[int] = (1,),
    iterations: int = 200,
    duration_s: float | None = None,
    warmup_iters: int = 50,
    warmup_s: float = 0.2,
    max_s: float | None = None,
    median_precision: float | None = None,
    warmup_max_s: float | None = None,
    threads: int | None = None,
    task: str = DEFAULT_TASK,
    classes: Sequence[str] | None = None,
    progress: PhaseProgress | None = None,
    heads: Sequence[dict] | None = None,
) -> dict:
    """``{"latency": [LatencyStats dicts], "skipped_batches": [...], "accuracy": dict | None}`` of an
    open session on ``feeds`` (samples of every input, by name); accuracy (``task``'s ``evaluate``)
    only when ``labels`` and ``reference`` (the FP32 outputs, by name) are given; ``heads``: extra task
    heads (``heads_job``) measured too, under ``accuracy["heads"]``."""
    check_inputs(session, feeds)
    arrays, skipped = runnable_batches(session, make_batches(feeds, batches))
    timing = {"iterations": iterations, "duration_s": duration_s, "warmup_iters": warmup_iters, "warmup_s": warmup_s,
              "max_s": max_s, "median_precision": median_precision, "warmup_max_s": warmup_max_s, "threads": threads}
    return {
        "latency": _latency(session, arrays, progress, **timing),
        "skipped_batches": skipped,
        "accuracy": _accuracy(session, feeds, labels, reference, task, classes, progress, heads),
    }


def measure(
    load: Callable[[], object],
    feeds: Feeds,
    labels: np.ndarray | None = None,
    reference: Feeds | None = None,
    *,
    batches: Sequence[int] = (1,),
    iterations: int = 200,
    duration_s: float | None = None,
    warmup_iters: int = 50,
    warmup_s: float = 0.2,
    max_s: float | None = None,
    median_precision: float | None = None,
    warmup_max_s: float | None = None,
    threads: int | None = None,
    task: str = DEFAULT_TASK,
    classes: Sequence[str] | None = None,
    progress: PhaseProgress | None = None,
    heads: Sequence[dict] | None = None,
) -> dict:
    """``bench_session`` plus ``load`` (first inference) and ``memory`` (peak RSS while loading and
    timing; accuracy runs after the probe so the validation set does not count)."""
    arrays = make_batches(feeds, batches)  # before the probe: the inputs are not the session's memory
    first = take(feeds, slice(0, 1))
    probe = MemoryProbe()
    probe.start()
    session, load_times = first_inference(load, first, check=lambda s: check_inputs(s, feeds))
    try:
        arrays, skipped = runnable_batches(session, arrays)
        latency = _latency(session, arrays, progress, iterations=iterations, duration_s=duration_s,
                           warmup_iters=warmup_iters, warmup_s=warmup_s, max_s=max_s,
                           median_precision=median_precision, warmup_max_s=warmup_max_s, threads=threads)
        memory = probe.stop()
        accuracy = _accuracy(session, feeds, labels, reference, task, classes, progress, heads)
    finally:
        session.close()
    result = {"load": load_times, "memory": memory, "latency": latency, "skipped_batches": skipped,
              "accuracy": accuracy}
    if getattr(session, "threads_info", None):  # the reference says which thread pools torch used
        result["threads_info"] = session.threads_info
    return result


# -- in a fresh process ------------------------------------------------------------------------------
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding edgetl/, for the child's path


class MeasureCrashed(RuntimeError):
    """The measuring process died without an answer (a crash inside a runtime, or killed)."""


def resolve_loader(spec: str) -> Callable:
    """``"package.module:function"`` -> the function (an *opener factory*: ``function(**kwargs)``
    does the untimed imports and returns the zero-argument call that opens the session)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _rebuild(module: str, name: str, message: str, tb: str) -> BaseException:
    """The child's exception: the same EdgetlError class and message (a user error stays one line),
    anything else as a RuntimeError carrying the child's traceback (a bug keeps its traceback)."""
    cls = getattr(errors, name, None) if module == errors.__name__ else None
    if isinstance(cls, type) and issubclass(cls, errors.EdgetlError):
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
        return exc
    return RuntimeError(f"{name}: {message}\n--- traceback in the measuring process ---\n{tb}")


def measure_isolated(
    loader: str,
    loader_kwargs: dict,
    data: dict[str, Any],
    *,
    progress: PhaseProgress | None = None,
    **settings,
) -> dict:
    """``measure`` in a fresh Python process (``python -m edgetl.bench._child``).

    ``loader`` is ``"module:function"``; ``function(**loader_kwargs)`` imports what it needs and
    returns the call that opens the session (see ``artifact_opener``); the kwargs are JSON values.
    ``data`` holds paths of ``.npy`` files: ``inputs`` (``{input name: path}``), optional ``labels``
    (a path) and ``reference`` (``{output name: path}``); the child memory-maps them. A fresh interpreter, not
    ``multiprocessing``: it does not re-import the caller's ``__main__`` (a user's script without a
    ``__main__`` guard, a notebook) and it shares nothing with this process. The child reports
    progress and its result as JSON lines on a pipe; its own output is kept for the error message.
    """
    job = {"loader": loader, "kwargs": loader_kwargs, "data": data, "settings": settings}
    read_fd, write_fd = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryFile() as log:
        try:
            proc = subprocess.Popen([sys.executable, "-m", "edgetl.bench._child", str(write_fd), json.dumps(job)],
                                    pass_fds=(write_fd,), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            os.close(write_fd)
        answered = False
        try:
            with os.fdopen(read_fd, "r", encoding="utf-8") as pipe:
                for line in pipe:
                    msg = json.loads(line)
                    if msg[0] == "progress":
                        if progress is not None:
                            progress(*msg[1:])
                        continue
                    answered = True
                    if msg[0] == "result":
                        return msg[1]
                    raise _rebuild(*msg[1:])
            proc.wait()
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
            raise MeasureCrashed(f"the runtime crashed ({_exit_reason(proc.returncode)}) while measuring"
                                 + (": " + " / ".join(tail) if tail else ""))
        finally:
            _reap(proc, graceful=answered)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _reap(proc: subprocess.Popen, graceful: bool) -> None:
    """Let a child that answered exit by itself; stop one that did not (Ctrl-C, a parent error)."""
    if graceful:
        try:
            proc.wait(timeout=60)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait()


def artifact_opener(runtime: str, path: str, threads: int | None = None) -> Callable[[], object]:
    """Import the runtime now and return the call that opens the artifact (the timed "load").

    Importing first keeps the runtime library's import time and memory out of the session's load
    time and peak memory (they are in the process's totals); the opener protocol is the same for
    every loader that ``measure_isolated`` takes.
    """
    from edgetl.backends import get_backend

    backend = get_backend(runtime)
    backend.available()  # imports the runtime module
    return functools.partial(backend.load, Path(path), threads)
