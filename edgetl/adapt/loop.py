"""The epoch loop shared by both strategies: early stopping on validation accuracy, best checkpoint
kept (written atomically on every improvement, so Ctrl-C leaves a valid one), per-epoch progress.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@dataclass
class FitResult:
    best_val_top1: float = 0.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None
    images_per_s: float = 0.0
    interrupted: bool = False


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
) -> FitResult:
    import torch.nn.functional as F

    result = FitResult()
    stale = 0
    total_images, total_time = 0, 0.0
    with progress_bar(console) as progress:
        overall = None if per_epoch_bars else progress.add_task(phase, total=epochs, stats="")
        try:
            for epoch in range(epochs):
                if hasattr(loader.sampler, "set_epoch"):
                    loader.sampler.set_epoch(epoch)
                task = progress.add_task(f"{phase} {epoch + 1}/{epochs}", total=len(loader), stats="") if per_epoch_bars else None
                _set_train_mode(model, eval_modules or [])
                loss_sum, correct, seen, start = 0.0, 0, 0, time.perf_counter()
                for x, y in loader:
                    logits = model(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                    loss_sum += loss.item() * len(y)
                    correct += (logits.argmax(1) == y).sum().item()
                    seen += len(y)
                    if task is not None:
                        elapsed = time.perf_counter() - start
                        progress.update(task, advance=1, stats=_stats(loss_sum / seen, correct / seen, seen / elapsed))
                elapsed = time.perf_counter() - start
                total_images, total_time = total_images + seen * world, total_time + elapsed
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
                if on_epoch is not None:
                    on_epoch(row)
                stats = _stats(row["loss"], row["train_top1"], row["images_per_s"]) + f" val {val_top1:.3f}"
                progress.update(task if task is not None else overall, advance=0 if task is not None else 1, stats=stats)
                if val_top1 > result.best_val_top1 or result.best_epoch < 0:
                    result.best_val_top1, result.best_epoch, stale = val_top1, epoch + 1, 0
                    result.best_state = copy.deepcopy(_unwrap(model).state_dict())
                    if on_improve is not None:
                        on_improve(result.best_state)
                else:
                    stale += 1
                    if stale >= patience:
                        break
        except KeyboardInterrupt:
            result.interrupted = True
    result.images_per_s = total_images / total_time if total_time else 0.0
    return result


def _stats(loss: float, acc: float, ips: float) -> str:
    return f"loss {loss:.3f}  acc {acc:.3f}  {ips:,.0f} img/s"


def _unwrap(model):
    return getattr(model, "module", model)


def predict(model, inputs: np.ndarray, batch: int = 128) -> np.ndarray:
    """Logits for float32 NCHW (or feature) rows, in eval mode, without gradients."""
    import torch

    was_training = model.training
    model.eval()
    with torch.inference_mode():
        out = torch.cat([model(torch.from_numpy(inputs[i : i + batch])) for i in range(0, len(inputs), batch)])
    model.train(was_training)
    return out.numpy()
