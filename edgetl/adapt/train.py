"""``edgetl train``: adapt a pretrained backbone to an image data set and write a run directory.

Writes ``runs/<name>/train/{model.safetensors, history.json, split.json}`` and the manifest's
``train`` section (backbone, weights, classes, preprocessing, mode, hyper-parameters, data hash,
versions, metrics). Under ``torchrun`` the data is sharded and only rank 0 writes.
"""

from __future__ import annotations

import copy
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
from edgetl.adapt import distributed
from edgetl.adapt.auto import plan_finetune
from edgetl.adapt.feature_extraction import build_head, cached_features, extract, train_head
from edgetl.adapt.finetune import finetune
from edgetl.adapt.negative_transfer import check_transfer
from edgetl.adapt.options import TrainInputs, TrainOptions
from edgetl.data import arrays
from edgetl.data.datasets import load_image_set, stratified_split
from edgetl.data.layout import resolve_layout
from edgetl.errors import ConfigError
from edgetl.models import registry
from edgetl.models.build import classifier_prefix, create_model, preprocess_spec, weights_id
from edgetl.rundir import Record, RunDir, RunPath
from edgetl.tasks import DEFAULT_TASK


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


class TrainRecord(Record):
    """The manifest's ``train`` section (see ``RunDir.section``)."""

    SECTION: ClassVar[str] = "train"

    task: str = DEFAULT_TASK  # a run written before tasks were recorded is an image classifier
    backbone: str
    arch: str
    weights: str | None = None
    head: str
    num_classes: int
    classes: list[str]
    preprocess: dict[str, Any]  # edgetl.data.preprocess.PreprocessSpec.to_dict()
    checkpoint: RunPath
    mode: str
    hparams: dict[str, Any]  # TrainOptions, dumped
    dataset: TrainDataset
    versions: dict[str, str] = Field(default_factory=dict)
    world_size: int = 1
    metrics: TrainMetrics
    # What --unfreeze/--augment auto chose, with the evidence, and the negative-transfer check
    # (edgetl/adapt/auto.py, edgetl/adapt/negative_transfer.py); empty in older runs.
    choices: dict[str, Any] = Field(default_factory=dict)
    inputs_hash: str  # what the deploy pipeline compares to skip an unchanged training


def _seed_everything(seed: int) -> None:
    torch = require("torch")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


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
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))


def _kept(phase: str, fit) -> dict:
    """Which phase and epoch the saved weights come from: the probe can outlive a worse fine-tuning."""
    return {"phase": phase, "epoch": fit.best_epoch, "val_top1": fit.best_val_top1}


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


def _inputs_hash(backbone: str, start_weights: str, opts: TrainOptions, data_hash: str) -> str:
    return sha256_json({"backbone": backbone, "weights": start_weights, "hparams": opts.model_dump(), "data": data_hash})


def train_inputs_hash(data: str | Path, options: TrainOptions | None = None, *,
                      backbone: str = registry.DEFAULT_BACKBONE, val: str | Path | None = None,
                      weights: str | Path | None = None) -> str:
    """What ``train`` would record as ``inputs_hash``: equal hashes mean a rerun would change nothing."""
    opts = _options(options)
    resolved = registry.resolve(backbone)
    weights = Path(weights) if weights else None
    layout = resolve_layout(data, val)
    *_, data_hash = _load_data(layout.train, layout.val, opts)
    return _inputs_hash(resolved.name, weights_id(resolved, pretrained=opts.pretrained, weights=weights), opts, data_hash)


def _options(options: TrainOptions | Mapping[str, Any] | None) -> TrainOptions:
    """``train``'s options: a ``TrainOptions``, or a dict of its fields (checked as the CLI's flags)."""
    if options is None:
        return TrainOptions()
    if isinstance(options, Mapping):
        return TrainOptions(**options)
    if not isinstance(options, TrainOptions):
        raise ConfigError(f"options must be an edgetl.TrainOptions (e.g. TrainOptions(epochs=10)) or a dict of its "
                          f"fields, not {type(options).__name__}")
    return options


def train(
    data: str | Path,
    options: TrainOptions | None = None,
    *,
    out: str | Path = "runs/exp",
    backbone: str = registry.DEFAULT_BACKBONE,
    val: str | Path | None = None,
    weights: str | Path | None = None,
    console=None,
    reporter=None,
) -> dict:
    """Train and return the manifest's ``train`` section.

    ``data``: an image folder (one subfolder per class), a CSV manifest (path,label), or a folder
    holding train/ and val/; ``options``: the hyper-parameters (``TrainOptions()``: the defaults);
    ``out``: the run directory to create or update; ``backbone``: ``efficientnet_lite0`` or
    ``timm:<name>``; ``val``: a separate validation set; ``weights``: a local start checkpoint;
    ``console``: a rich Console for the progress bars and the summary (None: none of them);
    ``reporter``: an ``edgetl.stages.Reporter`` that gets one ``step("train", ...)`` per epoch.

    Example::

        import edgetl
        section = edgetl.train("images", edgetl.TrainOptions(mode="finetune", epochs=10), out="runs/flowers")
    """
    opts = _options(options)
    TrainInputs(backbone=backbone)  # a name, checked as the CLI's --backbone
    layout = resolve_layout(data, val)
    require("torch", "training")
    dist = distributed.setup()
    console = console if dist.is_main else None  # one rank draws and prints
    try:
        if console is not None and layout.note:
            console.print(layout.note, highlight=False)
        return _train(layout.train, Path(out), backbone, layout.val, Path(weights) if weights else None,
                      opts, dist, console, _epoch_reporter(reporter) if dist.is_main else None)
    finally:
        distributed.teardown(dist)


def _epoch_reporter(reporter):
    """One line per epoch for a stage reporter (a notebook's, or deploy's), or None."""
    if reporter is None:
        return None
    return lambda row: reporter.step("train", f"{row['phase']} epoch {row['epoch']}: loss {row['loss']:.3f}, "
                                              f"val top-1 {row['val_top1']:.2%}")


def _train(data, out, backbone_name, val, weights, opts, dist, console, on_epoch) -> dict:
    import torch

    from edgetl.adapt.loop import predict
    from edgetl.adapt.report import print_summary, report_skipped

    started = time.perf_counter()
    _seed_everything(opts.seed)
    backbone = registry.resolve(backbone_name)
    image_set, train_samples, val_samples, skipped, data_hash = _load_data(data, val, opts)
    if console is not None:
        report_skipped(console, skipped)

    model = create_model(backbone, len(image_set.classes), pretrained=opts.pretrained, weights=weights)
    spec = preprocess_spec(model, opts.image_size)
    start_weights = weights_id(backbone, pretrained=opts.pretrained, weights=weights)

    run = RunDir(out)
    if dist.is_main:
        run = RunDir.create(out)
        write_json(run.path / "train" / "split.json",
                   {"classes": image_set.classes, "train": train_samples, "val": val_samples})
        run.set_item("train", "preprocess", spec.to_dict())  # arrays.* read it
        run.set_item("train", "checkpoint", "train/model.safetensors")
        for part in ("train", "val"):  # decode once here; the other ranks read the cache
            arrays.split_set(run, part)
    if dist.enabled:
        torch.distributed.barrier()
    train_pixels, y_train = arrays.split_set(run, "train")
    val_pixels, y_val = arrays.split_set(run, "val")

    ckpt = run.path / "train" / "model.safetensors"
    head_prefix = classifier_prefix(model)
    head = build_head(model.get_classifier().in_features, len(image_set.classes), opts.head)
    model.set_submodule(head_prefix, head)

    def save_full(state: dict) -> None:
        if dist.is_main:
            _save_checkpoint(state, ckpt)

    def save_head(state: dict) -> None:
        head.load_state_dict(state)
        save_full(model.state_dict())

    # Phase 1 (both modes): the head on cached, frozen features.
    feature_key = {"arch": backbone.arch, "weights": start_weights, "spec": spec.to_dict(), "data": data_hash}
    f_train = cached_features({**feature_key, "part": "train"},
                              lambda: extract(model, train_pixels, spec, dist, "features (train)", console=console))
    f_val = cached_features({**feature_key, "part": "val"},
                            lambda: extract(model, val_pixels, spec, dist, "features (val)", console=console))
    head_result = train_head(f_train, y_train, f_val, y_val, head, opts, dist, on_improve=save_head,
                             console=console, on_epoch=on_epoch)
    if head_result.best_state is None:  # interrupted before the first epoch ended
        raise KeyboardInterrupt
    head.load_state_dict(head_result.best_state)
    probe_state = copy.deepcopy(model.state_dict())
    history, result = list(head_result.history), head_result
    kept = _kept("head", head_result)
    choices, plan = {}, None
    keep_bn_stats = opts.pretrained or weights is not None
    try:  # measurements between the phases (edgetl/adapt/negative_transfer.py, edgetl/adapt/auto.py)
        if opts.transfer_check and not head_result.interrupted:
            choices["transfer_check"] = check_transfer(predict(head, f_val).argmax(1), train_pixels, y_train,
                                                       val_pixels, y_val, len(image_set.classes), opts.seed)
        if opts.mode == "finetune" and not head_result.interrupted:
            plan = plan_finetune(model, head_prefix, train_paths=[p for p, _ in train_samples],
                                 train_pixels=train_pixels, y_train=y_train, f_train=f_train, spec=spec, opts=opts,
                                 dist=dist, keep_bn_stats=keep_bn_stats, extract_features=lambda pixels, desc: extract(
                                     model, pixels, spec, dist, desc, console=console), console=console)
            choices.update(plan.choices)
    except KeyboardInterrupt:  # Ctrl-C while measuring: stop as during an epoch, the probe is kept
        head_result.interrupted = True

    # Phase 2 (finetune): the last N stages with the head, augmented images.
    if plan is not None and not head_result.interrupted:
        result = finetune(model, plan.train_data, val_pixels, y_val, spec, plan.options, dist, on_improve=save_full,
                          keep_bn_stats=keep_bn_stats, console=console, on_epoch=on_epoch)
        history += result.history
        if result.best_state is not None and result.best_val_top1 >= head_result.best_val_top1:
            model.load_state_dict(result.best_state)
            kept = _kept("finetune", result)
        else:  # fine-tuning never beat the probe: keep the probe (its checkpoint is re-saved below)
            model.load_state_dict(probe_state)
            kept["finetune_best_val_top1"] = result.best_val_top1 if result.best_state is not None else None
    _mark_kept(history, kept)

    model.eval()
    x_val = arrays.normalize(val_pixels, spec)
    val_pred = predict(model, x_val).argmax(1)
    train_pred = predict(model, arrays.normalize(train_pixels, spec)).argmax(1)
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
    section = {
        "task": DEFAULT_TASK,  # what the model takes and gives (edgetl/tasks); runs without it are this one
        "backbone": backbone.name,
        "arch": backbone.arch,
        "weights": start_weights,
        "head": opts.head,
        "num_classes": len(image_set.classes),
        "classes": image_set.classes,
        "preprocess": spec.to_dict(),
        "checkpoint": "train/model.safetensors",
        "mode": opts.mode,
        "hparams": opts.model_dump(),
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
        "metrics": metrics,
        "choices": choices,
    }
    section["inputs_hash"] = _inputs_hash(backbone.name, start_weights, opts, data_hash)
    record = TrainRecord.model_validate(section)
    section = record.dump()
    if dist.is_main:
        _save_checkpoint(model.state_dict(), ckpt)
        write_json(run.path / "train" / "history.json", history)
        run.record(ckpt, run.path / "train" / "history.json", run.path / "train" / "split.json")
        run.set_record(record)
        if console is not None:
            print_summary(console, section, history)
    if metrics["interrupted"]:
        raise KeyboardInterrupt
    return section
