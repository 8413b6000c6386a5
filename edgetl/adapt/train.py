"""``edgetl train``: adapt a pretrained backbone to an image data set and write a run directory.

Writes ``runs/<name>/train/{model.safetensors, history.json, split.json}`` and the manifest's
``train`` section (backbone, weights, classes, preprocessing, mode, hyper-parameters, data hash,
versions, metrics, where it ran). Under ``torchrun`` the data is sharded and only rank 0 writes.
While it trains, ``train/last.pt`` holds the state ``--resume`` continues from (``edgetl.adapt.resume``).
"""

from __future__ import annotations

import copy
import os
import platform
import random
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgetl._io import atomic_path, sha256_json, write_json
from edgetl._lazy import require
from edgetl.adapt import continual, device, distributed, multitask
from edgetl.adapt import select as selection
from edgetl.adapt.feature_extraction import build_head, cached_features, extract, train_head
from edgetl.adapt.negative_transfer import check_transfer
from edgetl.adapt.options import DISTILL_TEMPERATURE, DISTILL_WEIGHT, MEMORY, TrainInputs, TrainOptions
from edgetl.adapt.resume import fingerprint, open_checkpoint
from edgetl.adapt.strategies import Phase2, get_strategy, kept_of
from edgetl.data import arrays
from edgetl.data.datasets import load_image_set, stratified_split
from edgetl.data.layout import resolve_layout
from edgetl.errors import ConfigError, UnknownNameError
from edgetl.models import registry
from edgetl.models.build import (
    classifier_prefix,
    create_model,
    preprocess_spec,
    weights_id,
    workstation_module,
)
from edgetl.rundir import Record, RunDir, RunPath
from edgetl.tasks import DEFAULT_TASK
from edgetl.tasks.base import ASSETS


class TrainDataset(BaseModel):
    """Where the images came from and how many each split got."""

    model_config = ConfigDict(extra="allow")

    source: str
    val_source: str | None = None
    hash: str
    train_images: int
    val_images: int
    skipped: list[dict[str, str]] = Field(default_factory=list)
    counts: dict[str, int]  # the --data set, before the validation split
    val_counts: dict[str, int] = Field(default_factory=dict)


class TrainMetrics(BaseModel):
    """What the trained model scored; ``kept`` says which phase's weights were kept."""

    model_config = ConfigDict(extra="allow")

    val_top1: float
    train_top1: float | None = None
    per_class_val_top1: dict[str, float] = Field(default_factory=dict)
    best_epoch: int | None = None
    kept: dict[str, Any] = Field(default_factory=dict)
    train_images_per_s: float | None = None
    seconds: float | None = None
    interrupted: bool = False


class TrainExecution(BaseModel):
    """Where the run trained: the device used (``cuda:0 (NVIDIA H200)``, ``cpu``), the autocast dtype
    (off, bf16, fp16), the memory format and the loader workers per rank; ``resumed_from``: the phase
    and epoch a ``--resume`` continued at (None: trained from the start)."""

    model_config = ConfigDict(extra="allow")

    device: str = "cpu"
    amp: str = "off"
    channels_last: bool = False
    workers: int = 0
    resumed_from: dict[str, Any] | None = None


class TrainRecord(Record):
    """The manifest's ``train`` section (see ``RunDir.section``)."""

    SECTION: ClassVar[str] = "train"

    task: str = DEFAULT_TASK  # a run written before tasks were recorded is an image classifier
    backbone: str
    arch: str
    backbone_facts: dict[str, Any] | None = None  # an offline backbone's registry facts (models/registry.py)
    weights: str | None = None
    head: str
    num_classes: int
    classes: list[str]
    preprocess: dict[str, Any]  # the task's (images: edgetl.data.preprocess.PreprocessSpec.to_dict())
    assets: dict[str, RunPath] = Field(default_factory=dict)  # the task's files: name -> train/assets/<name>
    checkpoint: RunPath
    mode: str
    hparams: dict[str, Any]  # TrainOptions, dumped
    dataset: TrainDataset
    versions: dict[str, str] = Field(default_factory=dict)
    world_size: int = 1
    execution: TrainExecution = Field(default_factory=TrainExecution)  # runs written before it: CPU
    metrics: TrainMetrics
    selection: dict[str, Any] | None = None  # --backbone auto: target, backbone, reason (edgetl.adapt.select)
    adaptation: dict[str, Any] = Field(default_factory=dict)  # what the strategy's phase 2 recorded
    # What --unfreeze/--augment auto chose, with the evidence, and the negative-transfer check
    # (edgetl/adapt/auto.py, edgetl/adapt/negative_transfer.py); empty in older runs.
    choices: dict[str, Any] = Field(default_factory=dict)
    # --task-head: name, output, classes, weight, labels_hash, metrics (edgetl/adapt/multitask.py); absent: one head
    heads: list[dict[str, Any]] = Field(default_factory=list)
    inputs_hash: str  # what the deploy pipeline compares to skip an unchanged training
    lineage: dict[str, Any] | None = None  # --from: the parent run and what adding classes cost (adapt/continual.py)


def _seed_everything(seed: int) -> None:
    torch = require("torch")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # cuBLAS is deterministic only with this workspace; read when CUDA first multiplies, after this
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("edgetl", "torch", "torchvision", "timm", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _save_checkpoint(state: dict, dest: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(dest) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))  # wherever it trained


def save_run(run: RunDir, section: Mapping[str, Any], state: dict, history: list[dict]) -> TrainRecord:
    """What every task's training ends with: the train section checked as a ``TrainRecord``, the
    kept weights in ``train/model.safetensors``, ``train/history.json``, their hashes, the section."""
    record = TrainRecord.model_validate(section)
    ckpt = run.path / "train" / "model.safetensors"
    _save_checkpoint(state, ckpt)
    write_json(run.path / "train" / "history.json", history)
    run.record(ckpt, run.path / "train" / "history.json", run.path / "train" / "split.json")
    run.set_record(record)
    return record


def epoch_reporter(reporter):
    """One line per epoch for a stage reporter (a notebook's, or deploy's), or None."""
    if reporter is None:
        return None
    return lambda row: reporter.step("train", f"{row['phase']} epoch {row['epoch']}: loss {row['loss']:.3f}, "
                                              f"val top-1 {row['val_top1']:.2%}")


def _mark_kept(history: list[dict], kept: dict) -> None:
    for row in history:
        if row["phase"] == kept["phase"] and row["epoch"] == kept["epoch"]:
            row["kept"] = True


def _counts(samples: list[tuple[str, int]], classes: list[str]) -> dict[str, int]:
    return {name: sum(1 for _, label in samples if label == i) for i, name in enumerate(classes)}


def _per_class(pred: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, float]:
    return {name: float((pred[y == i] == i).mean()) if (y == i).any() else float("nan") for i, name in enumerate(classes)}


def _load_data(data: Path, val: Path | None, opts: TrainOptions):
    """Scan, split and hash the images: (image set, train samples, val samples, skipped, data hash)."""
    image_set = load_image_set(data)
    skipped = list(image_set.skipped)
    if val is not None:
        val_set = load_image_set(val, classes=image_set.classes)
        skipped += val_set.skipped
        train_samples, val_samples = image_set.samples, val_set.samples
    else:
        train_samples, val_samples = stratified_split(image_set, opts.val_split, opts.seed)
    data_hash = sha256_json([image_set.content_hash(), sorted(val_samples), sorted(train_samples)])
    return image_set, train_samples, val_samples, skipped, data_hash


def _inputs_hash(backbone: str, start_weights: str, opts: TrainOptions, data_hash: str,
                 heads: list | None = None) -> str:
    """The device, workers and memory format are left out (``TrainOptions.hashed``): another device
    is not new work. The strategy's own data (domain-adapt: the target images) and the task heads'
    CSVs are added only where there are some, so the hashes of other runs stay what they were."""
    extra = get_strategy(opts.mode).input_hashes(opts)
    if heads:
        extra["task_heads"] = multitask.heads_hash(heads)
    return sha256_json({"backbone": backbone, "weights": start_weights, "hparams": opts.hashed(), "data": data_hash,
                        **extra})


def train_inputs_hash(data: str | Path, options: TrainOptions | None = None, *,
                      backbone: str | None = None, val: str | Path | None = None,
                      weights: str | Path | None = None, target: str | None = None, task: str = DEFAULT_TASK,
                      from_run: str | Path | None = None, memory: int = MEMORY, distill_weight: float = DISTILL_WEIGHT,
                      distill_temperature: float = DISTILL_TEMPERATURE, task_heads: Mapping[str, str] | None = None,
                      task_weights: Mapping[str, float] | None = None) -> str:
    """What ``train`` would record as ``inputs_hash``: equal hashes mean a rerun would change nothing."""
    given_backbone = backbone
    opts, found, backbone = check_task_inputs(options, task, backbone, weights, target)
    _heads_or_from(task_heads, from_run)  # the checks train() makes, in its order
    multitask.check_inputs(dict(task_heads or {}), task, opts.mode, resume=False)
    image_only = ({"weights": weights, "target": target, "task_heads": dict(task_heads or {}),
                   "task_weights": dict(task_weights or {})} if task == DEFAULT_TASK else {})  # refused elsewhere
    image_only.update(continual.train_inputs(task, opts, continual.request(from_run, memory, distill_weight,
                                                                           distill_temperature),
                                             out=None, resume=False, backbone=given_backbone, weights=weights))
    return workstation_module(found).inputs_hash(data, opts, backbone=backbone, val=val, **image_only)


def image_inputs_hash(data: str | Path, options: TrainOptions | None = None, *,
                      backbone: str = registry.DEFAULT_BACKBONE, val: str | Path | None = None,
                      weights: str | Path | None = None, target: str | None = None,
                      parent: continual.Parent | None = None, request: continual.Request | None = None,
                      task_heads: Mapping[str, str] | None = None, task_weights: Mapping[str, float] | None = None) -> str:
    """The image task's ``inputs_hash``; ``parent``, ``request``: ``--from``'s (``train_inputs_hash``)."""
    opts = _options(options)
    weights = Path(weights) if weights else None
    layout = resolve_layout(data, val)
    if parent is not None:
        opts = continual.options_for(parent, opts)
        *_, data_hash = continual.load_data(layout.train, layout.val, opts, parent)
        base = _inputs_hash(parent.record.backbone, parent.start_weights, opts, data_hash)
        return continual.inputs_hash(base, parent, request)
    _, train_samples, val_samples, skipped, data_hash = _load_data(layout.train, layout.val, opts)
    heads = multitask.read_heads(dict(task_heads or {}), dict(task_weights or {}), data, train_samples + val_samples,
                                 skipped)
    if backbone == selection.AUTO:
        return _inputs_hash(selection.auto_identity(target), selection.AUTO, opts, data_hash, heads)
    resolved = registry.resolve(backbone)
    return _inputs_hash(resolved.name, weights_id(resolved, pretrained=opts.pretrained, weights=weights), opts, data_hash,
                        heads)


def _heads_or_from(task_heads: Mapping[str, str] | None, from_run) -> None:
    """``--task-head`` and ``--from`` are not combined yet: adding classes to a run with several heads
    would need every head's exemplar labels and teachers."""
    if task_heads and from_run:
        raise ConfigError("--task-head cannot be combined with --from yet: train the heads on a new run "
                          "(--data with every class), or add classes to a run without heads")


def _options(options: TrainOptions | Mapping[str, Any] | None) -> TrainOptions:
    """``train``'s options: a ``TrainOptions``, or a dict of its fields (checked as the CLI's flags),
    by the model as it is now (a plugin installed since this module was imported adds its options)."""
    from edgetl.adapt import options as option_models

    if options is None:
        return option_models.TrainOptions()
    if isinstance(options, Mapping):
        return option_models.TrainOptions(**options)
    if not isinstance(options, option_models.CommonTrainOptions):
        raise ConfigError(f"options must be an edgetl.TrainOptions (e.g. TrainOptions(epochs=10)) or a dict of its "
                          f"fields, not {type(options).__name__}")
    return options


def train(
    data: str | Path,
    options: TrainOptions | None = None,
    *,
    out: str | Path = "runs/exp",
    backbone: str | None = None,
    val: str | Path | None = None,
    weights: str | Path | None = None,
    target: str | None = None,
    console=None,
    reporter=None,
    resume: bool = False,
    task: str = DEFAULT_TASK,
    from_run: str | Path | None = None,
    memory: int = MEMORY,
    distill_weight: float = DISTILL_WEIGHT,
    distill_temperature: float = DISTILL_TEMPERATURE,
    task_heads: Mapping[str, str] | None = None,
    task_weights: Mapping[str, float] | None = None,
) -> dict:
    """Train and return the manifest's ``train`` section.

    ``task``: what the model does (``edgetl tasks``; default image classification), whose
    workstation module trains it; ``data``: images: an image folder (one subfolder per class), a
    CSV manifest (path,label), or a folder holding train/ and val/ (other tasks: their layouts);
    ``options``: the hyper-parameters (``TrainOptions()``: the defaults; a task's own options for
    that task only); ``out``: the run directory to create or update; ``backbone``: one of the task's
    (``edgetl backbones --task NAME``; None: its default); images also ``timm:<name>``, or ``auto``:
    ``edgetl select`` on a sample of the training split chooses for ``target`` (a profile name;
    only ``auto`` uses it); ``val``: a separate validation set; ``weights``: images: a local start
    checkpoint; ``console``: a rich Console for the progress bars and the summary (None: none of
    them); ``reporter``: an ``edgetl.stages.Reporter`` that gets one ``step("train", ...)`` per
    epoch; ``resume``: images: continue the interrupted training in ``out`` (its ``train/last.pt``)
    at its next epoch; ``from_run``: images: add the new data's classes to this trained run (read-only),
    rehearsing ``memory`` exemplars per class and distilling its outputs with ``distill_weight`` at
    ``distill_temperature`` (edgetl/adapt/continual.py); ``task_heads``: images: extra tasks on the same
    backbone, name -> ``path,label`` CSV (paths relative to ``data``), ``task_weights`` their loss weights
    (default 1).

    Example::

        import edgetl
        section = edgetl.train("images", edgetl.TrainOptions(mode="finetune", epochs=10), out="runs/flowers")
        section = edgetl.train("reviews.csv", out="runs/reviews", task="text-classification")
        section = edgetl.train("images-v2", out="runs/flowers-v2", from_run="runs/flowers")  # add classes
    """
    given_backbone = backbone
    opts, found, backbone = check_task_inputs(options, task, backbone, weights, target)
    if resume and task != DEFAULT_TASK:
        raise ConfigError(f"--resume is for --task {DEFAULT_TASK}: rerun the training of {task} without it")
    heads = TrainInputs(task_heads=dict(task_heads or {}), task_weights=dict(task_weights or {}))  # names, weights
    _heads_or_from(heads.task_heads, from_run)
    multitask.check_inputs(heads.task_heads, task, opts.mode, resume)
    # the image task's own inputs (weights, target, resume, heads, --from) reach only its workstation module
    image_only = ({"weights": weights, "target": target, "resume": resume, "task_heads": heads.task_heads,
                   "task_weights": heads.task_weights} if task == DEFAULT_TASK else {})
    image_only.update(continual.train_inputs(task, opts, continual.request(from_run, memory, distill_weight,
                                                                           distill_temperature),
                                             out=Path(out), resume=resume, backbone=given_backbone, weights=weights))
    return workstation_module(found).train(data, opts, out=Path(out), backbone=backbone, val=val, console=console,
                                           reporter=reporter, **image_only)


def check_task_inputs(options, task: str, backbone: str | None, weights, target):
    """The options checked for ``task`` (another task's options refused), the task, and the backbone
    (None: the task's default) checked against the task's ``BACKBONES``."""
    from edgetl.tasks import get_task

    TrainInputs(task=task)  # a registered name, or the closest spelling
    found = get_task(task)
    opts = _options(options)
    opts.check_task(task)
    module = workstation_module(found)
    backbone = backbone or module.DEFAULT_BACKBONE
    if task == DEFAULT_TASK:
        return opts, found, backbone  # also timm:<name> and auto, checked where they are used
    if backbone not in module.BACKBONES:
        raise UnknownNameError(f"{task} backbone", backbone, module.BACKBONES)
    if hasattr(module, "check_options"):  # the task's own refusals (a mode it lacks), before any work
        module.check_options(opts)
    for given, option in ((weights, "--weights"), (target, "--target")):
        if given is not None:
            raise ConfigError(f"{option} is for --task {DEFAULT_TASK}, not {task}")
    return opts, found, backbone


def write_assets(run: RunDir, files: Mapping[str, Path]) -> dict[str, str]:
    """Copy a task's asset files (name -> source) into ``train/assets/<name>`` and record them: the
    train section's ``assets`` (name -> run-relative path). A name is a file name (a slug)."""
    import re
    import shutil

    assets = {}
    for name, source in files.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) or ".." in name:
            raise ConfigError(f"asset name {name!r} must be a file name: letters, digits, '.', '_', '-'")
        dest = run.path / "train" / ASSETS / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            shutil.copyfile(source, tmp)
        run.record(dest)
        assets[name] = run.rel(dest)
    return assets


def train_images(
    data: str | Path,
    options: TrainOptions | None = None,
    *,
    out: str | Path = "runs/exp",
    backbone: str = registry.DEFAULT_BACKBONE,
    val: str | Path | None = None,
    weights: str | Path | None = None,
    target: str | None = None,
    console=None,
    reporter=None,
    resume: bool = False,
    parent: continual.Parent | None = None,
    request: continual.Request | None = None,
    task_heads: Mapping[str, str] | None = None,
    task_weights: Mapping[str, float] | None = None,
) -> dict:
    """The image task's training (``train``'s arguments; ``parent``, ``request``: ``--from``'s)."""
    opts = _options(options)
    if parent is not None:  # the parent's network, preprocessing and head kind
        opts, backbone = continual.options_for(parent, opts), parent.record.backbone
    multitask.check_inputs(dict(task_heads or {}), DEFAULT_TASK, opts.mode, resume)
    task_inputs = {"heads": dict(task_heads or {}), "weights": dict(task_weights or {}), "data": data}
    TrainInputs(backbone=backbone)  # a name, checked as the CLI's --backbone
    selection.check_auto(backbone, target, weights)
    layout = resolve_layout(data, val)
    get_strategy(opts.mode).check_inputs(opts)  # before torch loads and the run folder is made
    require("torch", "training")
    execution = device.resolve(opts.device, opts.amp, opts.channels_last, opts.workers, local_rank=device.local_rank())
    dist = distributed.setup(execution)
    console = console if dist.is_main else None  # one rank draws and prints
    try:
        if console is not None and layout.note:
            console.print(layout.note, highlight=False)
        return _train(layout.train, Path(out), backbone, layout.val, Path(weights) if weights else None,
                      opts, dist, console, epoch_reporter(reporter) if dist.is_main else None, resume, target,
                      parent, request, task_inputs)
    finally:
        distributed.teardown(dist)


def _train(data, out, backbone_name, val, weights, opts, dist, console, on_epoch, resume, target=None,
           parent=None, req=None, task_inputs=None) -> dict:
    """``parent``, ``req``: ``--from``'s (edgetl/adapt/continual.py), whose steps are the branches below;
    ``task_inputs``: ``--task-head``'s (edgetl/adapt/multitask.py)."""
    import torch

    from edgetl.adapt.loop import predict
    from edgetl.adapt.report import print_summary, report_skipped

    started = time.perf_counter()
    _seed_everything(opts.seed)
    image_set, train_samples, val_samples, skipped, data_hash = (
        continual.load_data(data, val, opts, parent) if parent else _load_data(data, val, opts))
    if parent:  # the parent's exemplars (before the run folder is made: a parent whose images are gone is refused)
        memory_pixels, memory_labels = continual.parent_memory(parent, req.memory or MEMORY, opts.seed,
                                                               np.array([label for _, label in train_samples]),
                                                               required=req.memory > 0)
    get_strategy(opts.mode).check_classes(opts, image_set.classes)
    task_inputs = task_inputs or {"heads": {}}
    heads = multitask.read_heads(task_inputs["heads"], task_inputs.get("weights", {}), task_inputs.get("data", data),
                                 train_samples + val_samples, skipped) if task_inputs["heads"] else []
    if console is not None:
        report_skipped(console, skipped)
    chosen = None
    if backbone_name == selection.AUTO:
        chosen = selection.choose_for_training(train_samples, image_set.classes, target, image_size=opts.image_size,
                                               pretrained=opts.pretrained, seed=opts.seed, dist=dist, console=console)
        backbone_name = chosen.recommended
        _seed_everything(opts.seed)  # the head starts as it would with the backbone named
    backbone = registry.resolve(backbone_name)

    model = create_model(backbone, len(image_set.classes), pretrained=opts.pretrained and not parent, weights=weights)
    spec = parent.spec if parent else preprocess_spec(model, opts.image_size)
    start_weights = parent.start_weights if parent else weights_id(backbone, pretrained=opts.pretrained, weights=weights)
    checkpoint = open_checkpoint(out, fingerprint(backbone.name, start_weights, data_hash, opts.hashed()),
                                 resume=resume, write=dist.is_main)

    run = RunDir(out)
    if dist.is_main:
        run = RunDir.create(out)
        split = {"classes": image_set.classes, "train": train_samples, "val": val_samples}
        if heads:  # each head's classes and the label index of every image, in the split's order
            split["heads"] = {h.name: {"classes": h.classes, "train": h.labels(train_samples).tolist(),
                                       "val": h.labels(val_samples).tolist()} for h in heads}
        write_json(run.path / "train" / "split.json", split)
        run.set_item("train", "preprocess", spec.to_dict())  # arrays.* read it
        run.set_item("train", "checkpoint", "train/model.safetensors")
        for part in ("train", "val"):  # decode once here; the other ranks read the cache
            arrays.split_set(run, part)
    if dist.enabled:
        torch.distributed.barrier()
    train_pixels, y_train = arrays.split_set(run, "train")
    val_pixels, y_val = arrays.split_set(run, "val")
    train_paths = [p for p, _ in train_samples]
    rehearsed, feature_data = 0, data_hash
    if parent:  # what the run keeps for the next --from: the new images and the parent's exemplars
        kept_pixels, kept_labels = np.concatenate([train_pixels, memory_pixels]), np.concatenate([y_train, memory_labels])
    if parent and req.memory:  # rehearsal: the exemplars join every epoch's images (fine-tuning augments their pixels)
        train_pixels, y_train = kept_pixels, kept_labels
        train_paths += list(memory_pixels)
        rehearsed = len(memory_labels)
        feature_data = sha256_json([data_hash, continual.memory_hash(memory_pixels, memory_labels)])

    ckpt = run.path / "train" / "model.safetensors"
    head_prefix = classifier_prefix(model)
    head_width = model.get_classifier().in_features
    head = build_head(head_width, len(image_set.classes), opts.head)
    model.set_submodule(head_prefix, head)
    if parent:
        parent_state = continual.load_parent_state(parent)
        continual.start_from_parent(model, head_prefix, opts.head, parent_state)
    joint = None
    if heads:  # the classifier becomes every task's head; each phase trains them with the joint loss
        head = multitask.install(model, head, head_width, {h.name: len(h.classes) for h in heads})
        joint = multitask.Joint(multitask.JointLoss(head, [h.weight for h in heads]),
                                multitask.columns(y_train, heads, train_samples))
    execution = dist.execution
    model = execution.place(model)

    def save_full(state: dict) -> None:
        if dist.is_main:
            _save_checkpoint(state, ckpt)

    def save_head(state: dict) -> None:
        head.load_state_dict(state)
        save_full(model.state_dict())

    # Phase 1 (both modes): the head on cached, frozen features.
    feature_key = {"arch": backbone.arch, "weights": start_weights, "spec": spec.to_dict(), "data": feature_data,
                   "amp": execution.amp}
    if start_weights == "random":  # --no-pretrained: the seed is what makes the backbone
        feature_key["seed"] = opts.seed
    fp32 = execution.without_amp()  # the head trained in fp32, and the model ships so
    width = model.get_classifier().in_features
    f_train = cached_features({**feature_key, "part": "train"},
                              lambda: extract(model, train_pixels, spec, dist, "features (train)", console=console),
                              (len(train_pixels), width))
    f_val = cached_features({**feature_key, "part": "val"},
                            lambda: extract(model, val_pixels, spec, dist, "features (val)", console=console),
                            (len(val_pixels), width))
    head_net, train_net, parent_model = head, None, None
    if parent:  # learning without forgetting: phase 1's teacher is the parent's head, phase 2's the parent
        parent_model = fp32.place(continual.parent_network(parent))
        head_net = continual.distilling(head, continual.teacher_head(parent_state, head_prefix, width, opts.head),
                                        req.distill_weight, req.distill_temperature, fp32)
        train_net = lambda net: continual.distilling(net, parent_model, req.distill_weight,  # noqa: E731
                                                     req.distill_temperature, execution)
    head_result = train_head(f_train, joint.labels if joint else y_train, f_val, y_val, head_net, opts, dist,
                             on_improve=save_head, console=console, on_epoch=on_epoch, checkpoint=checkpoint,
                             criterion=joint.criterion if joint else None)
    if head_result.best_state is None:  # interrupted before the first epoch ended
        raise KeyboardInterrupt
    head.load_state_dict(head_result.best_state)
    probe_state = copy.deepcopy(model.state_dict())
    history, result = list(head_result.history), head_result
    kept, adaptation, choices = kept_of("head", head_result), {}, {}
    try:  # measurements and phase 2: Ctrl-C while measuring stops the run as during an epoch, the probe kept
        if opts.transfer_check and not head_result.interrupted:  # edgetl/adapt/negative_transfer.py
            choices["transfer_check"] = check_transfer(predict(head, f_val, execution=fp32).argmax(1), train_pixels,
                                                       y_train, val_pixels, y_val, len(image_set.classes), opts.seed)
        # Phase 2: the strategy's (edgetl/adapt/strategies; feature extraction has none).
        strategy = get_strategy(opts.mode)
        phase2 = None if head_result.interrupted else strategy.after_head(Phase2(
            model=model, opts=opts, dist=dist, spec=spec, classes=image_set.classes,
            train_paths=train_paths, train_pixels=train_pixels, y_train=y_train, f_train=f_train,
            val_pixels=val_pixels, y_val=y_val, head=head_result, probe_state=probe_state,
            pretrained_start=opts.pretrained or weights is not None or parent is not None, save=save_full,
            console=console, on_epoch=on_epoch, checkpoint=checkpoint, train_net=train_net, joint=joint))
    except KeyboardInterrupt:
        head_result.interrupted, phase2 = True, None
        model.load_state_dict(probe_state)
    if phase2 is not None:
        history += phase2.fit.history
        result, kept, adaptation = phase2.fit, phase2.kept, phase2.record
        choices.update(phase2.choices)
    _mark_kept(history, kept)

    model.eval()
    x_val = arrays.normalize(val_pixels, spec)
    val_pred = predict(model, x_val, execution=fp32).argmax(1)  # scored as it ships: fp32
    train_pred = predict(model, arrays.normalize(train_pixels, spec), execution=fp32).argmax(1)
    metrics = {
        "val_top1": float((val_pred == y_val).mean()),
        "train_top1": float((train_pred == y_train).mean()),
        "per_class_val_top1": _per_class(val_pred, y_val, image_set.classes),
        "best_epoch": kept["epoch"],
        "kept": kept,
        "train_images_per_s": result.images_per_s,
        "seconds": time.perf_counter() - started,
        "interrupted": result.interrupted or head_result.interrupted,
    }
    head_top1 = (multitask.heads_top1(model, x_val, {h.name: h.labels(val_samples) for h in heads}, fp32)
                 if heads else {})
    section = {
        "task": DEFAULT_TASK,  # what the model takes and gives (edgetl/tasks); runs without it are this one
        "backbone": backbone.name,
        "arch": backbone.arch,
        "backbone_facts": registry.recorded_facts(backbone),
        "weights": start_weights,
        "head": opts.head,
        "num_classes": len(image_set.classes),
        "classes": image_set.classes,
        "preprocess": spec.to_dict(),
        "checkpoint": "train/model.safetensors",
        "mode": opts.mode,
        "hparams": opts.hparams(),
        "dataset": {
            "source": str(data),
            "val_source": str(val) if val else None,
            "hash": data_hash,
            "train_images": len(train_samples),
            "val_images": len(val_samples),
            "skipped": [{"path": p, "reason": r} for p, r in skipped],
            "counts": image_set.counts(),  # the --data set, before the validation split
            "val_counts": _counts(val_samples, image_set.classes),
        },
        "versions": _versions(),
        "world_size": dist.world,
        "execution": {**execution.record(), "resumed_from": checkpoint.resumed_from},
        "metrics": metrics,
        "selection": selection.choice_summary(chosen) if chosen else None,
        "adaptation": adaptation,
        "choices": choices,
    }
    if heads:
        section["heads"] = [{**h.record(), "metrics": {"val_top1": head_top1[h.name]}} for h in heads]
    section["inputs_hash"] = (_inputs_hash(selection.auto_identity(target), selection.AUTO, opts, data_hash, heads)
                              if chosen else _inputs_hash(backbone.name, start_weights, opts, data_hash, heads))
    if parent:
        section["inputs_hash"] = continual.inputs_hash(section["inputs_hash"], parent, req)
        parent_pred = predict(parent_model, x_val, execution=fp32).argmax(1)
        scores = continual.forgetting(parent_pred, val_pred, y_val, len(parent.classes))
        memory = (continual.save_memory(run, kept_pixels, kept_labels, image_set.classes, req.memory or MEMORY,
                                        opts.seed) if dist.is_main else {})
        section["lineage"] = continual.lineage(parent, req, image_set.classes, memory, rehearsed, scores)
    section = TrainRecord.model_validate(section).dump()
    if dist.is_main:
        save_run(run, section, model.state_dict(), history)
        if not metrics["interrupted"]:
            checkpoint.remove()
        if chosen is not None:
            run.set_record(chosen)
        if console is not None:
            rows = strategy.summary_rows(adaptation) if adaptation else []
            rows += continual.summary_rows(section["lineage"]) if parent else []
            print_summary(console, section, history, rows)
    if metrics["interrupted"]:
        raise KeyboardInterrupt
    return section
