"""Registry of training strategies: what runs after the head is trained on cached features.

Strategies are registered under the ``edgetl.strategies`` entry-point group, like tasks and runtimes,
the built-in ones in edgetl's own pyproject.toml::

    [project.entry-points."edgetl.strategies"]
    finetune = "edgetl.adapt.strategies.finetune:Finetune"

The entry point's name is the value of ``--mode``. A strategy is one class in one file: a
description (the help of ``--mode``), an options model whose fields become flags of ``edgetl train``
and ``deploy`` and keys of deploy's ``[train]`` table (``edgetl.adapt.options.TrainOptions`` gathers
them), and ``after_head``, phase 2. Torch-free at import: the CLI reads the registry to build its flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from edgetl._plugins import instance, registered

GROUP = "edgetl.strategies"


@dataclass
class Phase2:
    """What a strategy's phase 2 gets: the model with its trained head, the decoded splits and the
    hooks of the train stage. ``save`` writes a checkpoint (rank 0 only); ``pretrained_start``: the
    backbone started from trained weights (pretrained or --weights), so its BatchNorm has statistics."""

    model: Any
    opts: Any  # TrainOptions
    dist: Any  # edgetl.adapt.distributed.Dist
    spec: Any  # PreprocessSpec
    classes: list[str]
    train_paths: list[str]
    train_pixels: np.ndarray
    y_train: np.ndarray
    val_pixels: np.ndarray
    y_val: np.ndarray
    head: Any  # the FitResult of phase 1
    probe_state: dict  # the model's state after phase 1 (the linear probe)
    pretrained_start: bool
    save: Callable[[dict], None]
    console: Any = None
    on_epoch: Callable[[dict], None] | None = None
    checkpoint: Any = None  # edgetl.adapt.resume.Checkpointer (--resume)


@dataclass
class Phase2Result:
    """``fit``: the phase's epochs; ``kept``: which weights the model now holds (see
    ``train._kept``); ``record``: what the strategy adds to the manifest's ``train.adaptation``."""

    fit: Any  # FitResult
    kept: dict
    record: dict[str, Any] = field(default_factory=dict)


def kept_of(phase: str, fit) -> dict:
    """Which phase and epoch the saved weights come from: the probe can outlive a worse fine-tuning."""
    return {"phase": phase, "epoch": fit.best_epoch, "val_top1": fit.best_val_top1}


class Strategy:
    """Base of a training strategy. Subclasses set ``description`` and, when they take options of
    their own, ``options_model`` (an ``edgetl.adapt.options._Options`` subclass; field names must be
    unique across strategies, and apply only to this ``--mode``)."""

    description: ClassVar[str] = ""
    options_model: ClassVar[type | None] = None

    def check(self, opts) -> None:
        """Options that only make sense together (raise ``ValueError`` with the message); called when
        ``TrainOptions`` is built, so deploy refuses them before any work."""

    def check_inputs(self, opts) -> None:
        """Files the options name (raise an ``EdgetlError``): called before the run folder is made."""

    def input_hashes(self, opts) -> dict[str, str]:
        """Content hashes of the data the options name, hashed into ``train.inputs_hash``."""
        return {}

    def after_head(self, phase: Phase2) -> Phase2Result | None:
        """Phase 2; None leaves the probe of phase 1 as the model."""
        return None

    def summary_rows(self, record: dict) -> list[tuple[str, str]]:
        """Rows for the closing summary of ``edgetl train``, from ``record``."""
        return []


def _entry_points():
    return registered(GROUP, "training strategies")


def strategies() -> tuple[str, ...]:
    """The names of every registered strategy (the values of ``--mode``), sorted."""
    return tuple(_entry_points())


def get_strategy(name: str) -> Strategy:
    return instance(GROUP, "training strategies", "training strategy", name)


__all__ = ["GROUP", "Phase2", "Phase2Result", "Strategy", "get_strategy", "kept_of", "strategies"]
