"""Several tasks on one backbone (``edgetl train --task-head NAME=CSV``): extra linear heads on the
shared pooled features, trained jointly with the primary head (the folder classes).

The primary task keeps its output ``logits``; head NAME adds ``logits_<NAME>``. Loss = CE(primary) +
sum over heads of weight * CE(head). The network's classifier becomes a ``TaskHeads`` whose forward
returns the primary logits only, so every single-head path (the training loop, ``--unfreeze auto``'s
probes, early stopping on the primary val top-1) runs unchanged; the joint loss reads the extra
heads' logits of the same call. ``MultiOutput`` is the network that is exported: one named output per
task, in the order of ``TrainRecord.heads``.

The CSVs are read torch-free (``read_heads``): the CLI's checks answer before torch loads.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.errors import ConfigError, DataError
from edgetl.tasks.base import check_label

NAME = r"[a-z][a-z0-9_]{0,31}"
PRIMARY_OUTPUT = "logits"
IMAGE_ONLY = "--task-head is for image runs (--task image-classification)"
MODES = ("feature-extraction", "finetune")  # the strategies whose phases train every head
MAX_CSV_BYTES = 256 * 2**20  # a million rows of path,label; read whole, so bounded
MAX_PATH = 4096  # PATH_MAX: a longer cell names no file
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # would end the one-line message, or reach a terminal


def output_name(head: str) -> str:
    return f"{PRIMARY_OUTPUT}_{head}"


def check_head_names(heads: dict[str, str], weights: dict[str, float]) -> None:
    """Names are slugs other than ``logits``, at most as many as a bundle holds; a weight names a head
    and is a finite number > 0 (ValueError)."""
    from edgetl.bundle.manifest import MAX_TENSORS

    if len(heads) > MAX_TENSORS - 1:  # refused here, not by `edgetl bundle` after the training
        raise ValueError(f"--task-head: {len(heads)} heads: a bundle holds at most {MAX_TENSORS - 1} (its outputs "
                         f"are logits and one per head, {MAX_TENSORS} in all)")
    for name in heads:
        if not re.fullmatch(NAME, name) or name == PRIMARY_OUTPUT:
            raise ValueError(f"--task-head {name!r}: the name must be a slug [a-z][a-z0-9_]{{0,31}}, not 'logits' "
                             "(e.g. --task-head colour=colour.csv)")
    for name, weight in weights.items():
        if name not in heads:
            raise ValueError(f"--task-weight {name!r}: no --task-head of that name (heads: {', '.join(heads) or 'none'})")
        if not (np.isfinite(weight) and 0 < weight <= 1000):
            raise ValueError(f"--task-weight {name}={weight!r}: a weight is a number in (0, 1000]")


@dataclass(frozen=True)
class HeadLabels:
    """One extra head: its classes (sorted) and the class index of every labelled image (resolved path)."""

    name: str
    source: Path
    classes: list[str]
    by_path: dict[str, int]
    weight: float
    labels_hash: str

    @property
    def output(self) -> str:
        return output_name(self.name)

    def labels(self, samples: list[tuple[str, int]]) -> np.ndarray:
        return np.array([self.by_path[p] for p, _ in samples], np.int64)

    def record(self) -> dict:
        return {"name": self.name, "output": self.output, "classes": self.classes, "weight": self.weight,
                "labels_hash": self.labels_hash}


def data_root(data: str | Path) -> Path:
    """What a head CSV's paths are relative to: the --data folder, or a --data CSV's folder."""
    data = Path(data)
    return (data.parent if data.is_file() else data).resolve()


def read_head(name: str, csv_path: str | Path, root: Path, weight: float = 1.0) -> HeadLabels:
    """A ``path,label`` CSV (header required); one line per problem (``DataError``)."""
    where = f"--task-head {name}={csv_path}"
    path = Path(csv_path)
    if not path.is_file():
        raise DataError(f"{where}: no such file")
    size = path.stat().st_size
    if size > MAX_CSV_BYTES:
        raise DataError(f"{where}: {size} bytes, more than a head CSV may hold ({MAX_CSV_BYTES})")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")  # a spreadsheet's UTF-8 starts with a byte-order mark
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not a UTF-8 text CSV ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:  # a cell over csv's field size limit, a NUL outside quotes
        raise DataError(f"{where}: not a path,label CSV ({exc}; a cell longer than {csv.field_size_limit()} "
                        "characters names no image)") from None
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["path", "label"] or len(rows[0]) != 2:
        raise DataError(f"{where}: the first line must be the header 'path,label'")
    labelled: dict[str, str] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip():
            raise DataError(f"{where}:{lineno}: expected 'path,label', got {','.join(row)[:80]!r}")
        label = row[1].strip()
        if not label:
            raise DataError(f"{where}:{lineno}: empty label for {row[0].strip()}")
        check_label(label, f"{where}:{lineno}")
        image = Path(_check_path(row[0].strip(), f"{where}:{lineno}"))
        key = str((image if image.is_absolute() else root / image).resolve())
        if labelled.setdefault(key, label) != label:
            raise DataError(f"{where}:{lineno}: {row[0].strip()} has two labels ({labelled[key]!r}, {label!r})")
    classes = sorted(set(labelled.values()))
    index = {c: i for i, c in enumerate(classes)}
    return HeadLabels(name, path, classes, {p: index[c] for p, c in labelled.items()}, weight,
                      hashlib.sha256(raw).hexdigest())


def _check_path(cell: str, where: str) -> str:
    """A path cell that can name a file and be shown in a one-line message, else one ``DataError``."""
    if len(cell) > MAX_PATH or _CONTROL.search(cell):
        raise DataError(f"{where}: the path {cell[:60]!r} must be 1..{MAX_PATH} characters without control "
                        "characters")
    return cell


def read_heads(heads: dict[str, str], weights: dict[str, float], data: str | Path,
               samples: list[tuple[str, int]], skipped: list[tuple[str, str]] = ()) -> list[HeadLabels]:
    """Every head's labels, checked against the training and validation images (``samples``): a
    missing label, an unknown path (neither an image nor a skipped file) or a head with one class
    among the images is one ``DataError`` line."""
    check_head_names(heads, weights)
    root = data_root(data)
    known = {p for p, _ in samples}
    unusable = {str(Path(p).resolve()) for p, _ in skipped}
    read = []
    for name, csv_path in heads.items():
        head = read_head(name, csv_path, root, weights.get(name, 1.0))
        unknown = sorted(set(head.by_path) - known - unusable)
        if unknown:
            raise DataError(f"--task-head {name}: {_shown(unknown[0], root)} is not an image of --data "
                            f"({len(unknown)} such rows; paths are relative to {root})")
        missing = [p for p in sorted(known) if p not in head.by_path]
        if missing:
            raise DataError(f"--task-head {name}: no label for {_shown(missing[0], root)} ({len(missing)} of "
                            f"{len(known)} images have none; every training and validation image needs one)")
        used = sorted({head.classes[head.by_path[p]] for p in known})
        if len(used) < 2:
            raise DataError(f"--task-head {name}: one class ({used[0]!r}) among the images: a head needs two or more")
        if used != head.classes:  # labels only on skipped files: the head's classes are those it trains on
            index = {c: i for i, c in enumerate(used)}
            by_path = {p: index[head.classes[i]] for p, i in head.by_path.items() if head.classes[i] in index}
            head = HeadLabels(name, head.source, used, by_path, head.weight, head.labels_hash)
        read.append(head)
    return read


def _shown(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def heads_hash(heads: list[HeadLabels]) -> str | None:
    """What the heads add to ``inputs_hash``: names, CSV contents, weights (None: no heads)."""
    if not heads:
        return None
    return hashlib.sha256(repr([(h.name, h.labels_hash, h.weight) for h in heads]).encode()).hexdigest()


def check_inputs(task_heads: dict, task: str, mode: str, resume: bool) -> None:
    """What ``--task-head`` cannot be combined with (one ``ConfigError`` line)."""
    from edgetl.tasks import DEFAULT_TASK

    if not task_heads:
        return
    if task != DEFAULT_TASK:
        raise ConfigError(IMAGE_ONLY)
    if mode not in MODES:
        raise ConfigError(f"--task-head trains with --mode {' or '.join(MODES)}, not {mode}")
    if resume:
        raise ConfigError("--task-head runs do not --resume yet: train again without --resume")
    for name, csv_path in task_heads.items():  # a wrong path answers before torch loads
        if not Path(csv_path).is_file():
            raise DataError(f"--task-head {name}={csv_path}: no such file")


# --- torch side ---------------------------------------------------------------------------------


def _nn():
    from edgetl._lazy import require

    return require("torch", "multi-task heads").nn


def task_heads_module(primary, in_features: int, sizes: dict[str, int]):
    """The classifier of a multi-task network: ``primary`` and one linear head per extra task."""
    nn = _nn()

    class TaskHeads(nn.Module):
        """forward: the primary logits (what single-head code expects); the extra heads' logits of the
        same call are kept in ``extra_logits`` for the joint loss."""

        def __init__(self):
            super().__init__()
            self.primary = primary
            self.extras = nn.ModuleDict({name: nn.Linear(in_features, n) for name, n in sizes.items()})
            self.in_features = in_features
            self.extra_logits = ()

        def forward(self, x):
            self.extra_logits = tuple(head(x) for head in self.extras.values())
            return self.primary(x)

        def all_logits(self, x):
            return (self.primary(x), *(head(x) for head in self.extras.values()))

    return TaskHeads()


def multi_output(net):
    """The network with one output per task: (logits, logits_<a>, ...) in the heads' order."""
    nn = _nn()

    class MultiOutput(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            features = self.net.forward_head(self.net.forward_features(x), pre_logits=True)
            return self.net.get_classifier().all_logits(features)

    return MultiOutput().eval()


class JointLoss:
    """CE(primary) + sum of weight * CE(head), for labels of shape (batch, 1 + heads)."""

    def __init__(self, heads_module, weights: list[float]):
        self.heads, self.weights = heads_module, weights

    def __call__(self, logits, y, label_smoothing: float):
        import torch.nn.functional as F

        loss = F.cross_entropy(logits.float(), y[:, 0], label_smoothing=label_smoothing)
        for column, (weight, extra) in enumerate(zip(self.weights, self.heads.extra_logits, strict=True), start=1):
            loss = loss + weight * F.cross_entropy(extra.float(), y[:, column], label_smoothing=label_smoothing)
        return loss


@dataclass
class Joint:
    """What phase 2 needs to train every head: the loss and the training split's label columns."""

    criterion: JointLoss
    labels: np.ndarray  # int64 (train images, 1 + heads), rows in the training split's order

    def dataset(self, images):
        """``images`` (yielding (x, primary label), in the split's order) yielding (x, every label)."""
        import torch

        labels = self.labels

        class JointLabels(torch.utils.data.Dataset):
            def __len__(self):
                return len(images)

            def __getitem__(self, i):
                return images[i][0], torch.from_numpy(labels[i])

        return JointLabels()


def install(model, primary, in_features: int, sizes: dict[str, int]):
    """Replace ``model``'s classifier by ``primary`` plus one head per entry of ``sizes`` (name ->
    classes), in that order; returns the ``TaskHeads``."""
    from edgetl.models.build import classifier_prefix

    prefix = classifier_prefix(model)
    module = task_heads_module(primary, in_features, sizes)
    model.set_submodule(prefix, module)
    return module


def columns(primary: np.ndarray, heads: list[HeadLabels], samples: list[tuple[str, int]]) -> np.ndarray:
    """The label columns (primary, then each head) of ``samples``."""
    return np.stack([primary, *(h.labels(samples) for h in heads)], axis=1)


def heads_top1(model, x: np.ndarray, labels: dict[str, np.ndarray], execution, batch: int = 128) -> dict[str, float]:
    """Each extra head's top-1 on normalised images ``x`` (``labels``: by head, in the heads' order),
    on the execution's device and under its autocast."""
    import torch

    net = multi_output(model)
    with torch.inference_mode(), execution.autocast():
        outs = [[o.float().cpu() for o in net(execution.to(torch.from_numpy(x[i : i + batch])))]
                for i in range(0, len(x), batch)]
    return {name: float((torch.cat([o[k + 1] for o in outs]).argmax(1).numpy() == labels[name]).mean())
            for k, name in enumerate(labels)}


def load(run, info: dict):
    """A multi-task run's network with one output per task (eval mode, fp32, CPU)."""
    from safetensors.torch import load_file

    from edgetl.adapt.feature_extraction import build_head
    from edgetl.models.build import create_model
    from edgetl.models.registry import resolve

    model = create_model(resolve(info["backbone"]), info["num_classes"], pretrained=False)
    width = model.get_classifier().in_features
    install(model, build_head(width, info["num_classes"], info.get("head", "linear")), width,
            {h["name"]: len(h["classes"]) for h in info["heads"]})
    model.load_state_dict(load_file(str(run.verify(info["checkpoint"]))))
    return multi_output(model.eval())
