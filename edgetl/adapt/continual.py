"""Continual learning: ``edgetl train --data NEW --from RUN --out RUN2`` adds classes to a trained
image classifier without forgetting the old ones.

The parent run is read-only: its manifest and checkpoint are checked (``RunDir.verify``) before
anything is written. The new run's classes are the parent's, in the same order, then the new
data's others (sorted). The network starts from the parent's weights with the head widened (old
rows copied, new rows fresh), and trains through the usual two phases (edgetl/adapt/train.py):

- phase 1, the widened head on the parent backbone's cached features of the new training images
  plus the exemplar memory (rehearsal), with the distillation term computed by the parent's head on
  the same features;
- phase 2 (``--mode finetune``), the strategy's fine-tuning on the same images, the distillation
  term from the whole frozen parent model on the same batches.

Distillation is learning without forgetting: ``T^2 * KL(softmax(old/T) || softmax(new[:, :old]/T))``
with the parent's logits ``old``, weighted by ``--distill-weight``; ``fit`` adds it to the
cross-entropy through the network's ``aux_loss`` (as domain adaptation's alignment). The exemplar
memory is a seeded, class-balanced sample of decoded training images (uint8 at the run's
preprocessing) kept in ``train/exemplars/exemplars.npz`` and hashed with the run's artifacts.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl._io import atomic_path, sha256_file, sha256_json
from edgetl.adapt.options import DISTILL_TEMPERATURE as DEFAULT_DISTILL_TEMPERATURE
from edgetl.adapt.options import DISTILL_WEIGHT as DEFAULT_DISTILL_WEIGHT
from edgetl.adapt.options import MAX_MEMORY
from edgetl.adapt.options import MEMORY as DEFAULT_MEMORY
from edgetl.data.datasets import ImageSet, load_image_set, stratified_split
from edgetl.data.preprocess import PreprocessSpec, decode_images
from edgetl.errors import ConfigError, DataError, EdgetlError
from edgetl.rundir import RunDir
from edgetl.tasks import DEFAULT_TASK
from edgetl.tasks.base import check_label

EXEMPLARS = "train/exemplars/exemplars.npz"
CONTINUAL_MODES = ("feature-extraction", "finetune")


def image_only(task: str, what: str = "--from") -> ConfigError:
    return ConfigError(f"{what} is for image runs (--task {DEFAULT_TASK}), not {task}")


@dataclass(frozen=True)
class Request:
    """What ``--from`` asks for: the parent run and the rehearsal and distillation settings."""

    from_run: Path
    memory: int = DEFAULT_MEMORY
    distill_weight: float = DEFAULT_DISTILL_WEIGHT
    distill_temperature: float = DEFAULT_DISTILL_TEMPERATURE

    def hashed(self) -> dict:
        return {"memory": self.memory, "distill": [self.distill_weight, self.distill_temperature]}


def request(from_run, memory: int, distill_weight: float, distill_temperature: float) -> Request | None:
    """The continual request, or None without ``--from``; rehearsal or distillation settings given
    without it are refused (they would do nothing). Values are checked as the CLI's flags (the
    notebook API passes them unchecked)."""
    from edgetl.adapt.options import TrainInputs

    TrainInputs(memory=memory, distill_weight=distill_weight, distill_temperature=distill_temperature)
    if from_run is None:
        for value, default, option in ((memory, DEFAULT_MEMORY, "--memory"),
                                       (distill_weight, DEFAULT_DISTILL_WEIGHT, "--distill-weight"),
                                       (distill_temperature, DEFAULT_DISTILL_TEMPERATURE, "--distill-temperature")):
            if value != default:
                raise ConfigError(f"{option} is for continual training: add --from RUN (the run to add classes to)")
        return None
    return Request(Path(from_run), memory, distill_weight, distill_temperature)


def train_inputs(task: str, opts, req: Request | None, *, out: Path | None, resume: bool, backbone: str | None,
                 weights) -> dict:
    """What the image task's training gets for ``--from`` (``parent``, ``request``), checked before
    any work; {} without it. ``backbone``: the one the user gave (None: the parent's)."""
    if req is None:
        return {}
    if task != DEFAULT_TASK:
        raise image_only(task)
    return {"parent": open_parent(req, out=out, resume=resume, backbone=backbone, opts=opts, weights=weights),
            "request": req}


@dataclass
class Parent:
    """The checked parent run: its train section (``TrainRecord``), its checkpoint's path and sha256."""

    run: RunDir
    record: Any  # TrainRecord
    checkpoint: Path
    checkpoint_sha: str
    exemplars: Path | None  # None: an older run without a memory

    @property
    def classes(self) -> list[str]:
        return list(self.record.classes)

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.record.preprocess)

    @property
    def start_weights(self) -> str:
        """The new run's ``weights``: the parent's checkpoint, by content."""
        return f"from-run:{self.checkpoint_sha}"


def open_parent(req: Request, *, out: Path, resume: bool, backbone: str | None, opts, weights) -> Parent:
    """The parent run, checked before any work: a run, not ``--out``, an image classifier whose
    checkpoint (and exemplar memory) match their recorded hashes, trained with the backbone and
    image size asked for. Every refusal is one line; nothing is written."""
    from edgetl.adapt.train import TrainRecord

    if resume:
        raise ConfigError("--from starts a new run from a finished one; --resume continues an interrupted "
                          "training: use one of them")
    if out is not None and _same_folder(req.from_run, out):
        raise ConfigError(f"--from {req.from_run} is the --out folder: the parent run stays as it is; "
                          "write the new run elsewhere (e.g. --out runs/<name>-v2)")
    if out is not None and _inside(out, req.from_run):
        raise ConfigError(f"--out {out} is inside the --from run {req.from_run}: the parent run stays as it is; "
                          "write the new run beside it (e.g. --out runs/<name>-v2)")
    if out is not None and _inside(req.from_run, out):
        raise ConfigError(f"--out {out} holds the --from run {req.from_run}: a run written there would take the "
                          "parent's folder into it; write the new run beside it (e.g. --out runs/<name>-v2)")
    if weights is not None:
        raise ConfigError("--weights and --from both name start weights: --from starts from the parent run's")
    if opts.mode not in CONTINUAL_MODES:
        raise ConfigError(f"--from works with --mode {' or '.join(CONTINUAL_MODES)}, not {opts.mode}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--from trains in one process: run it without torchrun")
    run = RunDir.open(req.from_run, need="train")
    train = run.manifest["train"]
    task = train.get("task", DEFAULT_TASK) if isinstance(train, dict) else DEFAULT_TASK  # else TrainRecord refuses it
    if task != DEFAULT_TASK:
        raise image_only(task, f"--from {req.from_run}")
    try:
        record = run.require(TrainRecord)
    except EdgetlError as exc:
        raise ConfigError(f"--from {req.from_run}: {exc}") from None
    if record.heads:
        raise ConfigError(f"--from {req.from_run}: a run with --task-head heads cannot be extended yet: train a new "
                          "run on every class (old and new) with its heads")
    _check_parent_classes(req.from_run, record.classes)
    ckpt = run.verify(record.checkpoint)
    exemplars = run.verify(EXEMPLARS) if EXEMPLARS in run.manifest.get("artifacts", {}) else None
    parent = Parent(run, record, ckpt, run.manifest["artifacts"][record.checkpoint], exemplars)
    _check_same_model(parent, backbone, opts)
    return parent


def _check_parent_classes(path: Path, classes: list[str]) -> None:
    """The parent's classes become the new run's labels, so they pass the checks new labels do
    (an edited manifest could carry escapes, newlines or a class twice): one ``DataError`` line."""
    for name in classes:
        check_label(name, f"--from {path}: a class of the parent")
    seen: set[str] = set()
    repeated = next((name for name in classes if name in seen or seen.add(name)), None)
    if repeated is not None:
        raise DataError(f"--from {path}: the parent's classes repeat {repeated!r}: its manifest was edited; "
                        "train it again")


def _same_folder(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _inside(inner: Path, outer: Path) -> bool:
    """``inner`` is a folder somewhere under ``outer`` (links resolved)."""
    return Path(outer).resolve() in Path(inner).resolve().parents


def _check_same_model(parent: Parent, backbone: str | None, opts) -> None:
    from edgetl.models import registry

    record = parent.record
    if backbone is not None and backbone != record.backbone and registry.resolve(backbone).name != record.backbone:
        raise ConfigError(f"--backbone {backbone} differs from the parent's {record.backbone}: --from keeps the "
                          "parent's network (leave --backbone out)")
    size = parent.spec.input_size
    if opts.image_size is not None and tuple(size) != (opts.image_size, opts.image_size):
        raise ConfigError(f"--image-size {opts.image_size} differs from the parent's {size[0]}x{size[1]}: --from "
                          "keeps the parent's preprocessing (leave --image-size out)")
    if "head" in opts.model_fields_set and opts.head != record.head:
        raise ConfigError(f"--head {opts.head} differs from the parent's {record.head}: --from widens the "
                          "parent's head (leave --head out)")


def options_for(parent: Parent, opts):
    """The options the new run trains and records with: the parent's image size and head kind."""
    return opts.model_copy(update={"image_size": parent.record.hparams.get("image_size"), "head": parent.record.head})


# --- classes and data -----------------------------------------------------------------------------


def merged_classes(old: list[str], new: list[str]) -> list[str]:
    """The parent's classes in their order (same indices), then the new data's others, sorted."""
    return [*old, *sorted(set(new) - set(old))]


def _relabel(samples: list[tuple[str, int]], source: list[str], target: list[str]) -> list[tuple[str, int]]:
    index = {name: i for i, name in enumerate(target)}
    return [(path, index[source[label]]) for path, label in samples]


def load_data(data: Path, val: Path | None, opts, parent: Parent):
    """``_load_data``'s answer for a continual run: (image set, train samples, val samples, skipped,
    data hash) with the merged classes. The validation split is the new data's plus the parent's
    own (its old classes' images); a parent validation image that is also in the new data stays
    out of training, so no image the parent was judged on is trained on."""
    new_set = load_image_set(data, min_classes=1)  # one new class is enough: the parent's join it
    classes = merged_classes(parent.classes, new_set.classes)
    if classes == parent.classes:
        raise DataError(f"{data} holds no class the parent run lacks (it has {', '.join(parent.classes)}): "
                        "--from adds classes; retrain without --from to refit the same ones")
    skipped = list(new_set.skipped)
    if val is not None:
        val_set = load_image_set(val, min_classes=1)
        unknown = sorted(set(val_set.classes) - set(classes))
        if unknown:
            raise DataError(f"{val}: classes {unknown} are neither the parent's nor in {data}")
        skipped += val_set.skipped
        train, val_samples = _relabel(new_set.samples, new_set.classes, classes), _relabel(val_set.samples,
                                                                                        val_set.classes, classes)
    else:
        train, val_samples = (_relabel(part, new_set.classes, classes)
                              for part in stratified_split(new_set, opts.val_split, opts.seed))
    parent_val = [(p, int(label)) for p, label in _parent_split(parent)["val"]]
    gone = [p for p, _ in parent_val if not Path(p).is_file()]
    if gone:
        raise DataError(f"{len(gone)} of the parent's validation images are gone (first: {gone[0]}): the old classes "
                        f"are judged on them; restore them where {parent.run.path} was trained")
    held = {p for p, _ in parent_val}
    train = [s for s in train if s[0] not in held]
    val_samples = [s for s in val_samples if s[0] not in held] + parent_val
    image_set = ImageSet(classes, _relabel(new_set.samples, new_set.classes, classes), skipped, str(data))
    data_hash = sha256_json([new_set.content_hash(), sorted(val_samples), sorted(train)])
    return image_set, train, val_samples, skipped, data_hash


def _parent_split(parent: Parent) -> dict:
    from edgetl.data.arrays import load_split

    return load_split(parent.run)


def inputs_hash(base: str, parent: Parent, req: Request) -> str:
    """The new run's ``inputs_hash``: the usual one (data, options, start weights = the parent's
    checkpoint) with the parent's exemplars and the rehearsal and distillation settings."""
    exemplars = parent.run.manifest["artifacts"].get(EXEMPLARS)
    return sha256_json({"base": base, "parent": parent.checkpoint_sha, "exemplars": exemplars, **req.hashed()})


# --- the exemplar memory --------------------------------------------------------------------------


def memory_hash(pixels: np.ndarray, labels: np.ndarray) -> str:
    """The rehearsed exemplars' content: part of the feature cache's key."""
    import hashlib

    return hashlib.sha256(pixels.tobytes() + labels.astype(np.int64).tobytes()).hexdigest()


def draw_balanced(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of at most ``per_class`` rows of every label, drawn seeded, in ascending order."""
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == label))[:per_class] for label in np.unique(labels)]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, np.int64)


def parent_memory(parent: Parent, per_class: int, seed: int, new_labels: np.ndarray,
                  required: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` exemplars of each old class from the parent's memory, or drawn from its
    training split when it has none (an older run) and its images are still where it was trained.
    Where they are not, the old classes must come with the new data (``--data`` holding old and new
    images), unless the memory is not ``required`` (``--memory 0``: kept for the next run only):
    then there is nothing to draw."""
    shape = (0, *parent.spec.input_size, 3)
    if parent.exemplars is not None:
        pixels, labels = read_memory(parent.exemplars, parent.classes, shape[1:])
    else:
        samples = _parent_split(parent)["train"]
        try:
            pixels = decode_images([p for p, _ in samples], parent.spec)
        except DataError as exc:
            if (new_labels < len(parent.classes)).any() or not required:
                return np.empty(shape, np.uint8), np.empty(0, np.int64)
            raise DataError(f"{parent.run.path} keeps no exemplar memory and its training images are gone ({exc}): "
                            "pass the old data too (--data may hold the old and the new classes)") from None
        labels = np.array([label for _, label in samples], np.int64)
    keep = draw_balanced(labels, per_class, seed)
    return pixels[keep], labels[keep]


def read_memory(path: Path, classes: list[str], image: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A memory's pixels and labels; its class names and image shape (H, W, 3) must be the run's (a
    hashed file can still be from another run when the manifest was edited with it)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            _check_memory_headers(path, data, len(classes), image)
            pixels, labels, names = data["pixels"], data["labels"], [str(n) for n in data["classes"]]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:  # TypeError: a lone .npy
        raise DataError(f"{path} is not an exemplar memory ({type(exc).__name__})") from None
    if names != list(classes):
        raise DataError(f"{path} does not hold this run's exemplars (classes or arrays differ)")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"{path} has labels outside the run's {len(classes)} classes")
    return pixels, labels.astype(np.int64)


def _check_memory_headers(path: Path, data, classes: int, image: tuple[int, ...]) -> None:
    """The members' dtypes and shapes, from their .npy headers alone (a file can claim any shape and
    hold a zip bomb): uint8 pixels of the run's image shape, at most ``MAX_MEMORY`` per class, one
    integer label per image, one text name per class; checked before any data is read."""
    pixels, labels, names = (_npy_header(data, key) for key in ("pixels", "labels", "classes"))
    rows = pixels[0][0] if pixels[0] else -1
    if (pixels[1] != np.uint8 or pixels[0][1:] != tuple(image) or not 0 <= rows <= MAX_MEMORY * classes
            or labels[1].kind not in "iu" or labels[0] != (rows,)
            or names[1].kind != "U" or names[0] != (classes,)):
        raise DataError(f"{path} does not hold this run's exemplars (classes or arrays differ: pixels "
                        f"{pixels[1]} {pixels[0]}, labels {labels[1]} {labels[0]}, classes {names[1]} {names[0]}; "
                        f"at most {MAX_MEMORY} images of each of {classes} classes)")


def _npy_header(data, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of one member of an open .npz, read from its header only."""
    with data.zip.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"npy format version {version}")
        shape, _, dtype = read(fh)
    return tuple(shape), dtype


def save_memory(run: RunDir, pixels: np.ndarray, labels: np.ndarray, classes: list[str], per_class: int,
                seed: int) -> dict:
    """Keep ``per_class`` of each class (seeded, balanced) in ``train/exemplars/exemplars.npz``,
    recorded with its sha256; returns the lineage's ``memory`` (per class, count)."""
    keep = draw_balanced(labels, per_class, seed)
    dest = run.path / EXEMPLARS
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, pixels=pixels[keep], labels=labels[keep], classes=np.array(classes))
    run.record(dest)
    return {"per_class": per_class, "count": int(len(keep)), "file": EXEMPLARS, "sha256": sha256_file(dest)}


# --- the network ----------------------------------------------------------------------------------


def load_parent_state(parent: Parent) -> dict:
    from safetensors.torch import load_file

    return load_file(str(parent.checkpoint))


def _final(head_prefix: str, kind: str) -> str:
    """The state-dict prefix of the head's last linear layer, whose rows are the classes (build_head's
    mlp: Linear, ReLU, Dropout, Linear)."""
    return f"{head_prefix}.3." if kind == "mlp" else f"{head_prefix}."


def start_from_parent(model, head_prefix: str, kind: str, state: dict) -> None:
    """The parent's weights in ``model``, whose head is wider: the backbone and the head's hidden
    layers as they were, the old classes' rows of the last layer copied, the new rows as initialised."""
    import torch

    final = _final(head_prefix, kind)
    rows = {final + "weight", final + "bias"}
    own = model.state_dict()
    loaded = {k: v for k, v in state.items() if k not in rows}
    wrong = [k for k in own if k not in rows and (k not in loaded or own[k].shape != loaded[k].shape)]
    wrong += [k for k in loaded if k not in own]
    if wrong or not rows <= state.keys():
        raise ConfigError(f"the parent's checkpoint does not fit its recorded backbone and head (first: "
                          f"{(wrong or sorted(rows))[0]}): retrain the parent")
    model.load_state_dict(loaded, strict=False)
    old = state[final + "weight"].shape[0]
    with torch.no_grad():
        own[final + "weight"][:old] = state[final + "weight"]
        own[final + "bias"][:old] = state[final + "bias"]


def parent_network(parent: Parent):
    """The frozen parent model (eval mode, CPU, fp32): the teacher of phase 2 and ``old_before``."""
    from edgetl.models.build import load_image_classifier

    model = load_image_classifier(parent.run)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def distillation_loss(new_logits, old_logits, temperature: float):
    """``T^2 * KL(softmax(old/T) || softmax(new[:, :old]/T))``, the batch mean: zero when the new
    model's old-class logits equal the parent's; the ``T^2`` keeps its gradients at the scale of the
    cross-entropy's whatever the temperature."""
    import torch.nn.functional as F

    old = old_logits.shape[1]
    log_new = F.log_softmax(new_logits[:, :old].float() / temperature, dim=1)
    log_old = F.log_softmax(old_logits.float() / temperature, dim=1)
    return temperature**2 * F.kl_div(log_new, log_old, log_target=True, reduction="batchmean")


def distilling(net, teacher, weight: float, temperature: float, execution):
    """``net`` as ``fit`` trains it: in training mode each batch also goes through the frozen
    ``teacher`` and ``weight`` times the distillation loss is left in ``aux_loss``; in eval mode it
    is ``net``. ``weight`` 0: ``net`` itself."""
    import torch
    import torch.nn as nn

    if weight == 0:
        return net

    class Distilled(nn.Module):
        """``module`` is what ``fit`` saves (its ``_unwrap``); the teacher is held outside the
        module tree, so it is neither trained nor saved."""

        def __init__(self):
            super().__init__()
            self.module = net
            self._teacher = [teacher.to(execution.device).eval()]
            self.aux_loss = None

        def forward(self, x):
            self.aux_loss = None
            logits = self.module(x)
            if self.training:
                with torch.no_grad():
                    old = self._teacher[0](x)
                self.aux_loss = weight * distillation_loss(logits, old, temperature)
            return logits

    return Distilled()


def teacher_head(parent_state: dict, head_prefix: str, width: int, kind: str):
    """The parent's head alone: phase 1's teacher on the cached features."""
    from edgetl.adapt.feature_extraction import build_head

    prefix = f"{head_prefix}."
    own = {k[len(prefix):]: v for k, v in parent_state.items() if k.startswith(prefix)}
    old = parent_state[_final(head_prefix, kind) + "weight"].shape[0]
    head = build_head(width, old, kind)
    head.load_state_dict(own)
    for p in head.parameters():
        p.requires_grad_(False)
    return head.eval()


# --- what forgetting cost -------------------------------------------------------------------------


def top1_of(pred: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1 with its Wilson 95% interval and the number of images."""
    from edgetl.bench.accuracy import wilson

    n = int(len(labels))
    right = int((pred == labels).sum())
    low, high = wilson(right, n)
    return {"top1": right / n if n else None, "low": low, "high": high, "n": n}


def forgetting(parent_pred: np.ndarray, new_pred: np.ndarray, labels: np.ndarray, old: int) -> dict:
    """Old classes before (the parent) and after, new classes and all after, on the validation split."""
    is_old = labels < old
    return {"old_before": top1_of(parent_pred[is_old], labels[is_old]),
            "old_after": top1_of(new_pred[is_old], labels[is_old]),
            "new_after": top1_of(new_pred[~is_old], labels[~is_old]),
            "all_after": top1_of(new_pred, labels)}


def lineage(parent: Parent, req: Request, classes: list[str], memory: dict, rehearsed: int, scores: dict) -> dict:
    """The train section's ``lineage``."""
    old = parent.classes
    return {"parent": parent.run.path.resolve().name, "parent_checkpoint": parent.checkpoint_sha,
            "parent_inputs_hash": parent.record.inputs_hash, "old_classes": old,
            "new_classes": classes[len(old):], "memory": memory, "rehearsed": rehearsed,
            "distill": {"weight": req.distill_weight, "temperature": req.distill_temperature},
            "forgetting": scores}


def score_text(score: dict) -> str:
    from edgetl.adapt.report import interval_text

    if score["top1"] is None:
        return "no images"
    return f"{score['top1']:.1%} {interval_text(score['top1'], score['n'])}"


def summary_rows(record: dict) -> list[tuple[str, str]]:
    """The closing summary's rows of a continual run."""
    f = record["forgetting"]
    return [("from", f"{record['parent']}: {len(record['old_classes'])} classes + {len(record['new_classes'])} new "
             f"({', '.join(record['new_classes'])})"),
            ("rehearsal", f"{record['rehearsed']} exemplars, distillation weight {record['distill']['weight']:g} "
             f"at T={record['distill']['temperature']:g}"),
            ("old classes", f"{score_text(f['old_before'])} before -> {score_text(f['old_after'])} after"),
            ("new classes", score_text(f["new_after"]))]
