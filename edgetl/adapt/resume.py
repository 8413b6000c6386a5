"""``edgetl train --resume``: the state of an unfinished training, kept in ``train/last.pt``.

After every epoch the loop (``edgetl.adapt.loop.fit``) hands this module its phase's state: the
weights, optimizer, scheduler, gradient scaler, epoch, best-so-far and RNG states; the file is
rewritten atomically with every phase's state (a finished phase keeps only its result and RNG
states), so Ctrl-C at any moment leaves one to continue from. It holds only tensors, numbers,
strings, lists and dicts, and loads with ``torch.load(weights_only=True)``: a checkpoint is data,
never code. It also records what the run trains (backbone, start weights, data hash and the
hyper-parameters that change the weights); ``--resume`` refuses a run whose inputs differ and says
which. Execution settings (device, workers, channels-last) may differ: the run continues on the new
device. A finished training removes the file.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from edgetl._io import atomic_path
from edgetl.adapt.options import flag
from edgetl.errors import ConfigError

LAST = "last.pt"


class Checkpointer:
    """Every phase's last epoch state, written to ``path`` by the rank that writes (``write``)."""

    def __init__(self, path: Path, fingerprint: dict, write: bool, phases: dict | None = None):
        self.path, self.fingerprint, self.write = path, fingerprint, write
        self.phases: dict[str, dict] = dict(phases or {})
        self.resumed_from = _position(self.phases) if phases else None

    def state(self, phase: str) -> dict | None:
        """The saved state of ``phase`` when resuming (None: the phase starts afresh)."""
        return self.phases.get(phase)

    def save(self, phase: str, state: dict) -> None:
        import torch

        self.phases[phase] = state
        if self.write:
            with atomic_path(self.path) as tmp:
                torch.save({"fingerprint": self.fingerprint, "phases": self.phases}, tmp)

    def remove(self) -> None:
        if self.write:
            self.path.unlink(missing_ok=True)


def _position(phases: dict) -> dict:
    """Where a resumed run continued: after the last epoch saved, of the last phase saved."""
    phase = list(phases)[-1]
    return {"phase": phase, "after_epoch": phases[phase]["epoch"]}


def fingerprint(backbone: str, weights: str, data_hash: str, hparams: dict) -> dict:
    """What must be equal to resume: the inputs of the weights (see ``TrainOptions.hashed``)."""
    return {"backbone": backbone, "weights": weights, "data": data_hash, "hparams": hparams}


def open_checkpoint(run: Path, expected: dict, *, resume: bool, write: bool) -> Checkpointer:
    """The run's checkpointer; with ``resume``, loaded from its last.pt after checking that it trains
    the same thing (a one-line ``ConfigError`` otherwise, or when there is nothing to resume)."""
    path = run / "train" / LAST
    if not resume:
        return Checkpointer(path, expected, write)
    if not path.is_file():
        raise ConfigError(f"--resume: nothing to resume in {run} (no train/{LAST}: the run finished, or it never "
                          "completed an epoch); train without --resume")
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        stored, phases = saved["fingerprint"], saved["phases"]
    except Exception as exc:  # torch's unpickling errors have no common type
        raise ConfigError(f"--resume: {path} is not a resumable state ({type(exc).__name__}); "
                          "train without --resume") from None
    problem = _difference(stored, expected)
    if problem:
        raise ConfigError(f"--resume: {run} was interrupted training something else: {problem}; "
                          "train without --resume to start over")
    return Checkpointer(path, expected, write, phases)


def _difference(stored: dict, expected: dict) -> str | None:
    """The first input that differs, in words; None when none does."""
    for key, what in (("backbone", "backbone"), ("weights", "start weights")):
        if stored[key] != expected[key]:
            return f"{what} {expected[key]} (the interrupted run: {stored[key]})"
    if stored["data"] != expected["data"]:
        return "the data differ (other images, another split or --val)"
    changed = [f"{flag(k)} {v} (the interrupted run: {stored['hparams'].get(k)})"
               for k, v in expected["hparams"].items() if stored["hparams"].get(k) != v]
    return ", ".join(changed) or None


def rng_state(generator, device: str) -> dict:
    """Every random stream an epoch draws from: torch's (CPU, and the GPU's), the loader's
    shuffling generator (when it has its own), numpy's and Python's, as tensors, numbers and lists."""
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(), "loader": generator.get_state() if generator is not None else None,
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "python": [version, list(internal), gauss_next]}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, generator, device: str) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if generator is not None:
        generator.set_state(state["loader"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.startswith("cuda") and "cuda" in state:  # resumed on a CPU: no GPU stream to restore
        torch.cuda.set_rng_state(state["cuda"], device)
