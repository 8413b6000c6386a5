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
from edgetl.errors import MissingDependencyError

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
    f_train: np.ndarray  # the frozen backbone's features of the training images (phase 1's)
    val_pixels: np.ndarray
    y_val: np.ndarray
    head: Any  # the FitResult of phase 1
    probe_state: dict  # the model's state after phase 1 (the linear probe)
    pretrained_start: bool
    save: Callable[[dict], None]
    console: Any = None
    on_epoch: Callable[[dict], None] | None = None
    checkpoint: Any = None  # edgetl.adapt.resume.Checkpointer (--resume)
    train_net: Callable | None = None  # wraps the trained network (--from: the distillation; finetune's train_net)
    joint: Any = None  # edgetl.adapt.multitask.Joint: --task-head runs train every head


@dataclass
class Phase2Result:
    """``fit``: the phase's epochs; ``kept``: which weights the model now holds (``kept_of``);
    ``record``: what the strategy adds to the manifest's ``train.adaptation``; ``choices``: to its
    ``train.choices`` (edgetl/adapt/auto.py)."""

    fit: Any  # FitResult
    kept: dict
    record: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, Any] = field(default_factory=dict)  # what --augment/--unfreeze auto chose, and why


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

    def check_classes(self, opts, classes: list[str]) -> None:
        """Labelled files the options name against the training classes (raise an ``EdgetlError``):
        called once the training set is read, before the run folder is made."""

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


def importable() -> tuple[str, ...]:
    """The registered strategies whose module imports: they give the options and flags. A plugin
    that does not import (a missing dependency) is an error only where ``--mode`` names it
    (``get_strategy``'s one line), so it cannot break every command."""
    names = []
    for name in strategies():
        try:
            get_strategy(name)
        except MissingDependencyError:
            continue
        names.append(name)
    return tuple(names)


def plan(p: Phase2):
    """``--augment``/``--unfreeze`` resolved for this phase 2, measured where they are ``auto``
    (edgetl/adapt/auto.py): the training images as augmented, the options, the evidence."""
    from edgetl.adapt.auto import plan_finetune
    from edgetl.adapt.feature_extraction import extract
    from edgetl.models.build import classifier_prefix

    return plan_finetune(p.model, classifier_prefix(p.model), train_paths=p.train_paths, train_pixels=p.train_pixels,
                         y_train=p.y_train, f_train=p.f_train, spec=p.spec, opts=p.opts, dist=p.dist,
                         keep_bn_stats=p.pretrained_start, console=p.console,
                         extract_features=lambda pixels, desc: extract(p.model, pixels, p.spec, p.dist, desc,
                                                                       console=p.console))


__all__ = ["GROUP", "Phase2", "Phase2Result", "Strategy", "get_strategy", "importable", "kept_of", "plan", "strategies"]
