"""Where the images are: a class-folder tree, a CSV manifest, or a folder already split in train/val.

Checked before anything heavy is imported, so a wrong ``--data`` answers at once. Imports only the
standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgetl.errors import DataError

TRAIN_NAMES = ("train", "training")
VAL_NAMES = ("val", "validation", "valid")
SPLIT_NAMES = (*TRAIN_NAMES, *VAL_NAMES, "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass(frozen=True)
class DataLayout:
    train: Path
    val: Path | None  # None: a stratified split of ``train``
    note: str = ""  # what was recognised, for the console


def resolve_layout(data: str | Path, val: str | Path | None = None) -> DataLayout:
    """Check ``data`` (and ``val``) and recognise a folder that holds train/ and val/ sub-sets."""
    data = Path(data)
    check_source(data, "--data")
    if val is not None:
        check_source(Path(val), "--val")
        _refuse_a_split_as_val(Path(val))
    split = _split_folders(data) if data.is_dir() else None
    if split is None:
        return DataLayout(data, Path(val) if val is not None else None)
    train_dir, val_dir = split
    if val is not None:
        return DataLayout(train_dir, Path(val), f"using {train_dir} for training and {val} for validation")
    if val_dir is None:
        return DataLayout(train_dir, None, f"using {train_dir} for training, split for validation "
                                           "(no val/ folder next to it; test/ is left untouched)")
    return DataLayout(train_dir, val_dir, f"using {train_dir} for training and {val_dir} for validation")


def check_source(path: Path, option: str) -> None:
    """A folder, or a text CSV manifest; anything else is one clear line."""
    if not path.exists():
        raise DataError(f"{option} {path} does not exist")
    if path.is_dir():
        return
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise DataError(f"{option} {path} is an image file: give the folder that holds one subfolder of images "
                        "per class, or a CSV manifest (path,label)")
    if path.suffix.lower() != ".csv":
        raise DataError(f"{option} {path} is neither a folder nor a .csv manifest: give an image folder (one "
                        "subfolder per class) or a CSV of path,label rows")
    with path.open("rb") as fh:
        head = fh.read(4096)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a multi-byte character cut at the 4096th byte
            head = b"\0"
    if b"\0" in head:
        raise DataError(f"{option} {path} is not a UTF-8 text CSV: expected rows of path,label")


def _refuse_a_split_as_val(val: Path) -> None:
    """``--val d`` where ``d`` holds train/ and val/ would read the split names as classes."""
    split = _split_folders(val) if val.is_dir() else None
    if split is None:
        return
    hint = f"--val {split[1]}" if split[1] is not None else "a folder of class subfolders as --val"
    raise DataError(f"--val {val} holds train/val splits, not classes: give `--data {val}` alone "
                    f"(it validates on its own val/) or {hint}")


def _split_folders(root: Path) -> tuple[Path, Path | None] | None:
    """(train, val) when every subfolder of ``root`` is a split name and the train one holds class folders."""
    subdirs = {d.name.lower(): d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    train = next((subdirs[n] for n in TRAIN_NAMES if n in subdirs), None)
    if train is None or not any(d.is_dir() for d in train.iterdir()):
        return None
    others = sorted(d.name for n, d in subdirs.items() if n not in SPLIT_NAMES)
    if others:
        # Read as class folders, this tree would train a classifier of "train" against "val".
        val = next((subdirs[n] for n in VAL_NAMES if n in subdirs), None)
        pair = f"--data {train}" + (f" --val {val}" if val is not None else "")
        raise DataError(f"{root} holds a {train.name}/ split of class folders next to other folders "
                        f"({', '.join(others)}): move those out, or give {pair}")
    return train, next((subdirs[n] for n in VAL_NAMES if n in subdirs), None)
