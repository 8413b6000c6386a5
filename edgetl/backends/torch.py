"""The FP32 PyTorch eager reference: the baseline every bench table's speed-ups are measured against.

Not a compile target (there is nothing to compile); it runs the run's trained model as trained, on
the workstation, with the same thread count as the artifact it is compared with: ``threads``
intra-op threads (``torch.set_num_threads``) and one inter-op thread
(``torch.set_num_interop_threads``: eager inference runs one operator at a time, so more inter-op
threads only add idle threads that compete for the cores). ``TorchSession.threads_info`` says what
torch actually uses. This file may import torch, lazily: it is never part of a bundle.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from edgetl._lazy import require
from edgetl.backends.base import SessionBase
from edgetl.tensors import TensorSpec

NAME = "pytorch-eager"  # how the reference row is named in results and tables
INTEROP_THREADS = 1


def _set_interop_threads(torch, n: int) -> None:
    """Torch accepts this once per process, before any inter-op work: in a fresh process (the bench
    stage) it applies; in a shared one that already ran torch it stays as it was, and
    ``threads_info`` reports the value in force."""
    if torch.get_num_interop_threads() == n:
        return
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:
        pass


class TorchSession(SessionBase):
    """``run(feeds)`` = the trained model in eval mode under ``torch.inference_mode``, called with the
    inputs in the order of ``inputs`` (the model's positional arguments), its outputs named in the
    order of ``outputs`` (a tensor, or a tuple of them).

    ``torch.set_num_threads`` is per process: the bench stage runs the reference in its own process;
    in a shared one (a notebook, ``isolate=False``) ``close`` gives the process its thread count back.
    """

    def __init__(self, model, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 threads: int | None = None):
        self._torch = require("torch", "the PyTorch FP32 reference")
        self._restore = self._torch.get_num_threads()
        if threads:
            self._torch.set_num_threads(threads)
            _set_interop_threads(self._torch, INTEROP_THREADS)
        self._model = model.eval()
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)
        self.where = "the PyTorch reference"
        self.threads_info = {"intra_op": self._torch.get_num_threads(),
                             "inter_op": self._torch.get_num_interop_threads()}

    def _run(self, feeds):
        args = [self._torch.from_numpy(np.ascontiguousarray(feeds[spec.name])) for spec in self.inputs]
        with self._torch.inference_mode():
            out = self._model(*args)
        out = out if isinstance(out, tuple | list) else (out,)
        return {spec.name: t.numpy() for spec, t in zip(self.outputs, out, strict=True)}

    def close(self) -> None:
        if self._model is not None:
            self._torch.set_num_threads(self._restore)
        self._model = None


def version() -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("torch")
    except PackageNotFoundError:
        return None


def load_reference(run_path: str | Path, threads: int | None = None) -> TorchSession:
    """The reference session of the run at ``run_path`` (a path: it is opened in a fresh process)."""
    from edgetl.models.build import load_trained
    from edgetl.rundir import RunDir
    from edgetl.tasks import task_of_train

    run = RunDir.open(run_path, need="train")
    task, record = task_of_train(run.manifest["train"], run)
    return TorchSession(load_trained(run), tuple(task.inputs(record)), tuple(task.outputs(record)), threads)


def reference_opener(run_path: str, threads: int | None = None):
    """For ``edgetl.bench.measure``: import torch and timm now (untimed), return the timed load."""
    require("torch", "the PyTorch FP32 reference")
    require("timm", "the PyTorch FP32 reference")
    return functools.partial(load_reference, run_path, threads)
