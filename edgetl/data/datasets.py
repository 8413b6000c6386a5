"""Image data sets: an image folder (one subfolder per class) or a CSV manifest (``path,label``).

Every image is decoded once up front: corrupt or unreadable files are listed with the reason and
skipped, so training never dies on image 9,000 of 10,000.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from edgetl._io import sha256_json
from edgetl.data.layout import IMAGE_SUFFIXES, check_source
from edgetl.data.preprocess import open_rgb
from edgetl.errors import DataError


@dataclass
class ImageSet:
    classes: list[str]
    samples: list[tuple[str, int]]  # (absolute path, class index)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    source: str = ""

    def counts(self) -> dict[str, int]:
        c = Counter(label for _, label in self.samples)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    def content_hash(self) -> str:
        """Hash of every image's bytes and label: the key for caches and for skipping unchanged work."""
        digest = hashlib.sha256()
        for path, label in sorted(self.samples):
            digest.update(f"{self.classes[label]}\0".encode())
            digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
        return digest.hexdigest()


def _check_readable(paths_labels: list[tuple[Path, str]]) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    good, skipped = [], []
    for path, label in paths_labels:
        try:
            open_rgb(path)
            good.append((path, label))
        except DataError as exc:
            skipped.append((str(path), str(exc).split(": ", 1)[-1]))
    return good, skipped


def folder_entries(root: Path) -> list[tuple[Path, str]]:
    """(image, class name) of a folder with one subfolder per class (torch-free: the device uses it)."""
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root} has no class subfolders: expected {root}/<class>/<image>.jpg")
    return [
        (f, d.name)
        for d in class_dirs
        for f in sorted(d.rglob("*"))
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
    ]


def csv_entries(path: Path) -> list[tuple[Path, str]]:
    """(image, class name) rows of a ``path,label`` CSV, paths relative to the CSV."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text CSV ({exc.reason} at byte {exc.start})") from None
    for lineno, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
        if not row or row[0].startswith("#"):
            continue
        if lineno == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
            continue
        if len(row) < 2 or not row[1].strip():
            raise DataError(f"{path}:{lineno}: expected 'path,label', got {','.join(row)!r}")
        image = Path(row[0].strip())
        rows.append((image if image.is_absolute() else path.parent / image, row[1].strip()))
    return rows


def load_image_set(source: str | Path, classes: list[str] | None = None, min_classes: int = 2) -> ImageSet:
    """Scan a folder or CSV; ``classes`` pins the class order (for a separate validation folder);
    ``min_classes``: 1 where the classes join others (``train --from`` may add one class)."""
    source = Path(source)
    check_source(source, "data path")
    entries = csv_entries(source) if source.is_file() else folder_entries(source)
    if not entries:
        raise DataError(f"{source} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    good, skipped = _check_readable(entries)
    names = classes or sorted({label for _, label in entries})
    unknown = sorted({label for _, label in good} - set(names))
    if unknown:
        raise DataError(f"{source}: classes {unknown} are not in the training classes {names}")
    index = {n: i for i, n in enumerate(names)}
    image_set = ImageSet(names, [(str(p.resolve()), index[label]) for p, label in good], skipped, str(source))
    _check_usable(image_set, min_classes)
    return image_set


def _check_usable(image_set: ImageSet, min_classes: int = 2) -> None:
    counts = image_set.counts()
    if len(counts) < min_classes:
        raise DataError(f"{image_set.source}: found {len(counts)} class; classification needs at least two")
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise DataError(
            f"{image_set.source}: class(es) {', '.join(empty)} have no readable images "
            f"({len(image_set.skipped)} file(s) skipped); add images or remove the folder"
        )


def stratified_split(image_set: ImageSet, val_fraction: float, seed: int) -> tuple[list, list]:
    """Per-class seeded shuffle; every class keeps at least one training and one validation image."""
    return split_samples(image_set.samples, image_set.classes, val_fraction, seed)


def split_samples(samples: list[tuple[str, int]], classes: list[str], val_fraction: float,
                  seed: int) -> tuple[list, list]:
    """``stratified_split`` of any task's (sample, class index) pairs (``LabelledSamples.indexed()``)."""
    if not 0 < val_fraction < 1:
        raise DataError(f"--val-split must be between 0 and 1, got {val_fraction}")
    by_class: dict[int, list] = defaultdict(list)
    for sample in samples:
        by_class[sample[1]].append(sample)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        items = sorted(by_class[label])
        if len(items) < 2:
            raise DataError(
                f"class {classes[label]!r} has {len(items)} sample; a split needs at least 2 per class"
            )
        rng.shuffle(items)
        n_val = min(max(1, round(len(items) * val_fraction)), len(items) - 1)
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return train, val


@dataclass
class TaskSplit:
    """A task's labelled data, split: what a task's training writes to ``train/split.json``."""

    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    skipped: list[tuple[str, str]]
    counts: dict[str, int]  # the --data set, before the split
    hash: str  # content and split: part of the run's inputs_hash


def task_split(task, data: str | Path, val: str | Path | None, val_fraction: float, seed: int) -> TaskSplit:
    """Read ``data`` (and ``val``) with the task's ``read_labelled``; without ``val`` a stratified,
    seeded split (``split_samples``); a ``val`` class the training data lacks is a ``DataError``."""
    labelled = task.read_labelled(Path(data))
    skipped = list(labelled.skipped)
    held = None
    if val is None:
        train, val_rows = split_samples(labelled.indexed(), labelled.classes, val_fraction, seed)
    else:
        held = task.read_labelled(Path(val))
        unknown = sorted(set(held.classes) - set(labelled.classes))
        if unknown:
            raise DataError(f"{val}: classes {unknown} are not in the training classes {labelled.classes}")
        train, val_rows, skipped = labelled.indexed(), held.indexed(labelled.classes), skipped + held.skipped
    # the held-out set's content too: its samples may be file paths whose bytes change under one name
    held_hash = held.content_hash() if held is not None else None
    data_hash = sha256_json([labelled.content_hash(), sorted(val_rows), sorted(train), held_hash])
    return TaskSplit(labelled.classes, train, val_rows, skipped, labelled.counts(), data_hash)

