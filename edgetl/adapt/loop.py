"""The epoch loop shared by both strategies: early stopping on validation accuracy, best checkpoint
kept (written atomically on every improvement, so Ctrl-C leaves a valid one), per-epoch progress.
Batches go to the ``Execution``'s device and its autocast (``edgetl.adapt.device``); after every epoch
the phase's state goes to a ``Checkpointer`` for ``--resume`` (``edgetl.adapt.resume``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgetl.adapt.device import Execution
from edgetl.adapt.resume import Checkpointer, restore_rng, rng_state, unusable

CPU = Execution()


@dataclass
class FitResult:
    best_val_top1: float = 0.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None
    images: int = 0  # trained on, all ranks together
    seconds: float = 0.0  # spent training them (validation passes excluded)
    interrupted: bool = False

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def progress_bar(console) -> Progress:
    """Bars drawn on ``console`` (the caller's rich Console); None draws nothing (a silent notebook,
    or a rank other than the first)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
    )


def _set_train_mode(model, eval_modules: list) -> None:
    model.train()
    for module in eval_modules:  # BatchNorm keeps its pretrained running statistics
        module.eval()


def fit(
    model,
    loader,
    evaluate: Callable[[object], float],
    optimizer,
    *,
    epochs: int,
    patience: int,
    phase: str,
    console=None,
    world: int = 1,
    scheduler=None,
    eval_modules: list | None = None,
    on_improve: Callable[[dict], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    label_smoothing: float = 0.0,
    per_epoch_bars: bool = True,
    execution: Execution = CPU,
    checkpoint: Checkpointer | None = None,
    criterion: Callable | None = None,
) -> FitResult:
    """Train ``model`` (already on ``execution``'s device) for up to ``epochs``; with a
    ``checkpoint``, continue from its saved state of ``phase`` and save one after every epoch.
    ``criterion(logits, y, label_smoothing)``: the loss (default: cross-entropy); labels of shape
    (batch, columns) are scored on their first column (edgetl/adapt/multitask.py)."""
    result = FitResult()
    scaler = execution.grad_scaler()
    stale, start = 0, 0
    saved = checkpoint.state(phase) if checkpoint is not None else None
    if saved is not None:
        checkpoint.check_fits(phase, _unwrap(model), optimizer, epochs)
        try:
            stale, start = _restore(saved, result, model, optimizer, scheduler, scaler, loader, execution)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:  # torch's loaders name no common type
            raise unusable(checkpoint.path, f"{phase}: {type(exc).__name__}") from None
        if saved["finished"]:
            return result
    with progress_bar(console) as progress:
        overall = None if per_epoch_bars else progress.add_task(phase, total=epochs, completed=start, stats="")
        try:
            for epoch in range(start, epochs):
                if hasattr(loader.sampler, "set_epoch"):
                    loader.sampler.set_epoch(epoch)
                task = progress.add_task(f"{phase} {epoch + 1}/{epochs}", total=len(loader), stats="") if per_epoch_bars else None
                _set_train_mode(model, eval_modules or [])
                loss_sum, correct, seen, begun = 0.0, 0, 0, time.perf_counter()
                for x, y in loader:
                    x, y = execution.to(x), execution.to(y)
                    logits, loss = _step(model, x, y, optimizer, scaler, execution, label_smoothing, criterion)
                    if scheduler is not None:
                        scheduler.step()
                    loss_sum += loss * len(y)
                    correct += (logits.argmax(1) == (y[:, 0] if y.ndim > 1 else y)).sum().item()
                    seen += len(y)
                    if task is not None:
                        elapsed = time.perf_counter() - begun
                        progress.update(task, advance=1, stats=_stats(loss_sum / seen, correct / seen, seen / elapsed))
                elapsed = time.perf_counter() - begun
                result.images, result.seconds = result.images + seen * world, result.seconds + elapsed
                val_top1 = evaluate(model)
                row = {
                    "phase": phase,
                    "epoch": epoch + 1,
                    "loss": loss_sum / max(seen, 1),
                    "train_top1": correct / max(seen, 1),
                    "val_top1": val_top1,
                    "images_per_s": seen * world / elapsed,
                    "lr": optimizer.param_groups[-1]["lr"],
                }
                result.history.append(row)
                if val_top1 > result.best_val_top1 or result.best_epoch < 0:
                    result.best_val_top1, result.best_epoch, stale = val_top1, epoch + 1, 0
                    result.best_state = copy.deepcopy(_unwrap(model).state_dict())
                    if on_improve is not None:
                        on_improve(result.best_state)
                else:
                    stale += 1
                finished = stale >= patience or epoch + 1 == epochs
                if checkpoint is not None:  # before on_epoch: an interrupt there keeps this epoch
                    checkpoint.save(phase, _state(epoch + 1, finished, stale, result, model, optimizer, scheduler,
                                                  scaler, loader, execution))
                if on_epoch is not None:
                    on_epoch(row)
                stats = _stats(row["loss"], row["train_top1"], row["images_per_s"]) + f" val {val_top1:.3f}"
                progress.update(task if task is not None else overall, advance=0 if task is not None else 1, stats=stats)
                if finished:
                    break
        except KeyboardInterrupt:
            result.interrupted = True
    return result


def _step(model, x, y, optimizer, scaler, execution: Execution, label_smoothing: float, criterion=None):
    """One optimisation step under the execution's autocast; (logits, loss value)."""
    import torch.nn.functional as F

    with execution.autocast():
        logits = model(x)
        loss = (criterion(logits, y, label_smoothing) if criterion is not None
                else F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing))
        aux = getattr(model, "aux_loss", None)  # a loss the network adds in training (domain adaptation's alignment)
        if aux is not None:
            loss = loss + aux.float()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return logits, loss.item()


def _cpu(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _state(epoch, finished, stale, result, model, optimizer, scheduler, scaler, loader, execution) -> dict:
    """What ``--resume`` needs of this phase after ``epoch``: its result so far and the RNG states;
    unless the phase is finished, the weights, optimizer, scheduler and scaler to go on from."""
    state = {"epoch": epoch, "finished": finished, "stale": stale, "history": list(result.history),
             "best_val_top1": result.best_val_top1, "best_epoch": result.best_epoch,
             "best_state": _cpu(result.best_state), "images": result.images, "seconds": result.seconds,
             "rng": rng_state(loader.generator, execution.device)}
    if not finished:
        state.update(model=_cpu(_unwrap(model).state_dict()), optimizer=optimizer.state_dict(),
                     scheduler=scheduler.state_dict() if scheduler is not None else None,
                     scaler=scaler.state_dict())
    return state


def _restore(state, result, model, optimizer, scheduler, scaler, loader, execution) -> tuple[int, int]:
    """Put a saved phase state back; (epochs without improvement, epochs done)."""
    result.history = list(state["history"])
    result.best_val_top1, result.best_epoch = state["best_val_top1"], state["best_epoch"]
    result.best_state, result.images, result.seconds = state["best_state"], state["images"], state["seconds"]
    if not state["finished"]:
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when saved with loss scaling off (CPU, bf16): start a fresh scale
            scaler.load_state_dict(state["scaler"])
    restore_rng(state["rng"], loader.generator, execution.device)
    return state["stale"], state["epoch"]


def _stats(loss: float, acc: float, ips: float) -> str:
    return f"loss {loss:.3f}  acc {acc:.3f}  {ips:,.0f} samples/s"


def _unwrap(model):
    return getattr(model, "module", model)


def predict(model, inputs: np.ndarray, batch: int = 128, execution: Execution = CPU) -> np.ndarray:
    """Logits (float32) for float32 NCHW (or feature) rows, in eval mode, without gradients, on the
    execution's device and under its autocast."""
    import torch

    was_training = model.training
    model.eval()
    with torch.inference_mode(), execution.autocast():
        out = torch.cat([model(execution.to(torch.from_numpy(inputs[i : i + batch]))).float().cpu()
                         for i in range(0, len(inputs), batch)])
    model.train(was_training)
    return out.numpy()
