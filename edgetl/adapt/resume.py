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

A run folder may come from someone else: before anything is restored, the file must be the run's own
(not a link), hold every field with its type, and each phase's weights and optimizer moments must
have this model's names and shapes and be finite; otherwise ``--resume`` is one line and the run
is left as it was.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from edgetl._io import atomic_path
from edgetl.adapt.options import flag
from edgetl.errors import ConfigError

LAST = "last.pt"
FINGERPRINT = ("backbone", "weights", "data", "hparams")
# What ``edgetl.adapt.loop._state`` saves of every phase, and of a phase that is not finished.
PHASE_FIELDS = {"epoch": int, "finished": bool, "stale": int, "history": list, "best_val_top1": (int, float),
                "best_epoch": int, "best_state": dict, "images": int, "seconds": (int, float), "rng": dict}
UNFINISHED_FIELDS = {"model": dict, "optimizer": dict, "scaler": dict, "scheduler": (dict, type(None))}


class Checkpointer:
    """Every phase's last epoch state, written to ``path`` by the rank that writes (``write``)."""

    def __init__(self, path: Path, fingerprint: dict, write: bool, phases: dict | None = None):
        self.path, self.fingerprint, self.write = path, fingerprint, write
        self.phases: dict[str, dict] = dict(phases or {})
        self.resumed_from = _position(self.phases) if phases else None

    def state(self, phase: str) -> dict | None:
        """The saved state of ``phase`` when resuming (None: the phase starts afresh)."""
        return self.phases.get(phase)

    def check_fits(self, phase: str, model, optimizer, epochs: int) -> None:
        """Refuse (one line) a saved ``phase`` that is not a state of ``model`` trained by ``optimizer``."""
        problem = _unfit(self.phases[phase], model, optimizer, epochs)
        if problem:
            raise unusable(self.path, f"{phase}: {problem}")

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
    if path.is_symlink():
        raise ConfigError(f"--resume: {path} is a link, not the run's own state; train without --resume to start over")
    if not path.is_file():
        raise ConfigError(f"--resume: nothing to resume in {run} (no train/{LAST}: the run finished, or it never "
                          "completed an epoch); train without --resume")
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's unpickling errors have no common type
        raise unusable(path, type(exc).__name__) from None
    malformed = _malformed(saved)
    if malformed:
        raise unusable(path, malformed)
    stored, phases = saved["fingerprint"], saved["phases"]
    problem = _difference(stored, expected)
    if problem:
        raise ConfigError(f"--resume: {run} was interrupted training something else: {problem}; "
                          "train without --resume to start over")
    return Checkpointer(path, expected, write, phases)


def unusable(path: Path, why: str) -> ConfigError:
    return ConfigError(f"--resume: {path} is not a resumable state of this run ({why}); train without --resume "
                       "to start over")


def _malformed(saved) -> str | None:
    """What is missing or of the wrong type in a loaded last.pt; None when every field is there."""
    if not isinstance(saved, dict) or not isinstance(saved.get("fingerprint"), dict) \
            or not isinstance(saved.get("phases"), dict):
        return "no fingerprint and phases"
    if any(k not in saved["fingerprint"] for k in FINGERPRINT) or not isinstance(saved["fingerprint"]["hparams"], dict):
        return "an incomplete fingerprint"
    if not saved["phases"]:
        return "no phase saved"
    for phase, state in saved["phases"].items():
        if not isinstance(state, dict):
            return f"phase {phase!r} is not a state"
        fields = PHASE_FIELDS | ({} if state.get("finished") else UNFINISHED_FIELDS)
        wrong = next((k for k, kind in fields.items() if not isinstance(state.get(k), kind)), None)
        if wrong is not None:
            return f"{phase}: {wrong} missing or of the wrong type"
        if state["epoch"] < 1 or state["stale"] < 0 or not all(isinstance(row, dict) for row in state["history"]):
            return f"{phase}: epoch, stale or history out of range"
    return None


def _unfit(state: dict, model, optimizer, epochs: int) -> str | None:
    """Why a well-formed phase state cannot go on training ``model``; None when it can."""
    if state["epoch"] > epochs:
        return f"epoch {state['epoch']} of {epochs}"
    reference = model.state_dict()
    for key in ("best_state",) if state["finished"] else ("best_state", "model"):
        problem = _tensors_unfit(state[key], reference)
        if problem:
            return f"{key}: {problem}"
    return None if state["finished"] else _moments_unfit(state["optimizer"], optimizer)


def _tensors_unfit(saved: dict, reference: dict) -> str | None:
    import torch

    if saved.keys() != reference.keys():
        return "the weights of another model"
    for name, ref in reference.items():
        tensor = saved[name]
        if not isinstance(tensor, torch.Tensor) or tensor.shape != ref.shape:
            return f"{name} of another shape"
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return f"{name} not finite"
    return None


def _moments_unfit(saved: dict, optimizer) -> str | None:
    """The optimizer's per-parameter tensors (Adam's moments) must have their parameter's shape."""
    import torch

    params = [p for group in optimizer.param_groups for p in group["params"]]
    moments = saved.get("state")
    if not isinstance(moments, dict):
        return "optimizer: no state"
    for index, state in moments.items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(state, dict):
            return "optimizer: the state of other parameters"
        for name, tensor in state.items():
            if not isinstance(tensor, torch.Tensor):
                continue  # a number or None (SGD's unused momentum) restores as it is
            if tensor.dim() and tensor.shape != params[index].shape:
                return f"optimizer: {name} of parameter {index} of another shape"
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                return f"optimizer: {name} of parameter {index} not finite"
    return None


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
