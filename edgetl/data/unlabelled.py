"""A folder of unlabelled images (domain adaptation's target domain): any layout, any depth.
Torch-free, so a bad folder is refused before PyTorch loads and before the run folder is made."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgetl.data.layout import IMAGE_SUFFIXES
from edgetl.data.preprocess import open_rgb
from edgetl.errors import DataError


def image_files(folder: str | Path, option: str) -> list[Path]:
    """Every image under ``folder``, at any depth (class subfolders, if any, mean nothing here)."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{option} {root}: not a folder (give a folder of target-domain images)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(f"{option} {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}), at any depth")
    return files


def check_readable(files: list[Path], option: str) -> None:
    """Unlike the labelled set, no target image is skipped: a corrupt one is named (the run is not made)."""
    for path in files:
        try:
            open_rgb(path)
        except DataError as exc:
            raise DataError(f"{option}: {exc}") from None


def files_hash(root: str | Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()

