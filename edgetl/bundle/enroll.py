"""``edgetl enroll``: add a class to a prototype-head bundle, or replace one, from a few images, on
the device (no PyTorch): the bundle's own preprocessing and runtime give the images' embeddings,
their normalised mean becomes the class's row of ``head/prototypes.npy``, and a new bundle is
written (release + 1, fresh hashes, signed where asked) through ``format.write_bundle``, the one
writer ``edgetl bundle`` uses too. The input bundle is never changed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.bundle import prototype, signing
from edgetl.bundle.format import MANIFEST, SUFFIX, write_bundle
from edgetl.bundle.manifest import MAX_CLASSES
from edgetl.bundle.runner import image_files, not_a_file, open_bundle, open_session, verify
from edgetl.errors import BundleError, DataError
from edgetl.tasks.base import check_label

MAX_IMAGES = 1000  # a handful is the point; a thousand is already a training set


@dataclass(frozen=True)
class Enrolled:
    path: Path  # the new bundle
    name: str
    label: str
    images: int
    replaced: bool
    release: int
    classes: int
    signed_by: str | None


def enroll(bundle_path: str | os.PathLike, label: str, images: Sequence[str | os.PathLike], *,
           replace: bool = False, out: str | os.PathLike | None = None, sign: str | os.PathLike | None = None,
           threads: int | None = None) -> Enrolled:
    """Write a copy of the bundle at ``bundle_path`` whose class ``label`` is the prototype of
    ``images`` (files, or folders of them: 1..``MAX_IMAGES`` images), added, or replaced with
    ``replace``. ``out``: the new bundle (default ``<name>-r<release>.tar.gz`` next to the input);
    never overwritten. ``sign``: an Ed25519 private key; a signed input needs one unless unsigned
    bundles are allowed (``--allow-unsigned``). Every argument is checked, and the input verified
    (signature, hashes, golden outputs), before any image is run."""
    check_label(label, "--label")
    private_key = signing.load_private_key(sign) if sign is not None else None
    bundle = open_bundle(bundle_path)
    head = bundle.manifest.get("head")
    if head is None:
        raise BundleError(f"{bundle_path} has no prototype head, so classes cannot be enrolled into it: build one "
                          f"with `edgetl bundle RUN --target T --head prototype`")
    labels = bundle.labels
    _check_label_use(label, labels, replace)
    files = _image_list(images)
    release = bundle.manifest["release"] + 1
    dest = _checked_out(out) if out is not None else _default_out(Path(bundle_path), bundle.name, release)
    if os.path.lexists(dest):
        raise BundleError(f"{dest} already exists: enroll never overwrites a file, choose another --out")
    if bundle.signature.key_id is not None and private_key is None and not signing.unsigned_allowed():
        raise BundleError(f"{bundle_path} is signed (key {bundle.signature.key_id}) but no key was given: the enrolled "
                          "bundle would be unsigned; pass --sign KEY (or --allow-unsigned to write it unsigned)")
    verify(bundle_path, threads)  # every check verify does, the golden outputs on this runtime included
    row = prototype.enrol(_embeddings(bundle, files, threads))
    rows = bundle.prototypes.copy()
    if label in labels:
        rows[labels.index(label)] = row
    else:
        rows, labels = np.vstack([rows, row[None]]), [*labels, label]
    manifest = json.loads((bundle.root / MANIFEST).read_bytes())  # checked when the bundle was opened
    # "enrolled": the classes the workstation's accuracy in the manifest never measured (added or replaced here)
    enrolled = [*(name for name in head.get("enrolled", []) if name != label), label]
    manifest.update(labels=labels, release=release,
                    head={**head, "shots": {**head["shots"], label: len(files)}, "enrolled": enrolled})
    manifest.pop("files")
    try:
        _write(bundle, manifest, rows, dest, private_key, label)
    except FileExistsError:  # written by another process while the images were embedded
        raise BundleError(f"{dest} already exists: enroll never overwrites a file, choose another --out") from None
    except OSError as exc:  # a read-only or full disk: the input and any earlier output stay as they were
        raise BundleError(f"cannot write {dest}: {exc.strerror or exc}") from None
    return Enrolled(dest, bundle.name, label, len(files), label in bundle.labels, release, len(labels),
                    signing.key_id(private_key.public_key()) if private_key is not None else None)


def _write(bundle, manifest: dict, rows: np.ndarray, dest: Path, private_key, label: str) -> None:
    """The new bundle: the input's files but the head's, the new rows, packed atomically as ``dest``.
    ``dest`` is claimed first (created empty, exclusively): the atomic rename then replaces only
    that placeholder, never a file another process wrote there meanwhile; removed on failure."""
    head = manifest["head"]["file"]
    os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    try:
        with tempfile.TemporaryDirectory(prefix=".enroll-", dir=dest.parent) as tmp:
            stage = Path(tmp)
            for rel in bundle.manifest["files"]:
                if rel != head:
                    (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(bundle.file(rel), stage / rel)
            (stage / head).parent.mkdir(parents=True, exist_ok=True)
            np.save(stage / head, rows.astype(np.float32), allow_pickle=False)
            write_bundle(stage, manifest, dest, private_key=private_key, where=f"the bundle enrolling {label!r}")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _image_list(args: Sequence[str | os.PathLike]) -> list[Path]:
    """Every image the arguments name (a folder: the images under it), 1..MAX_IMAGES of them; one
    named twice (a folder and a file in it, a link to it) counts once, in the mean and in ``shots``."""
    if not args:
        raise DataError("no images given: enroll needs 1 to 1000 images of the class (files or folders)")
    by_target: dict[str, Path] = {}
    for arg in args:
        for file in image_files(arg):
            by_target.setdefault(os.path.realpath(file), file)
    files = list(by_target.values())
    if len(files) > MAX_IMAGES:
        raise DataError(f"{len(files)} images given: enroll takes 1 to {MAX_IMAGES} (a few per class is the point; "
                        "train a run for more)")
    return files


def _check_label_use(label: str, labels: list[str], replace: bool) -> None:
    if label in labels and not replace:
        raise DataError(f"the bundle already has a class {label!r}: pass --replace to enrol it again from these images")
    if replace and label not in labels:
        shown = ", ".join(repr(x) for x in labels[:10]) + (", ..." if len(labels) > 10 else "")
        raise DataError(f"--replace: the bundle has no class {label!r} to replace (its classes: {shown})")
    if label not in labels and len(labels) >= MAX_CLASSES:
        raise DataError(f"the bundle already has {MAX_CLASSES} classes, the most a bundle may hold")


def _embeddings(bundle, files: list[Path], threads: int | None) -> np.ndarray:
    """(n, D): each image through the bundle's preprocessing and runtime; one unreadable image is
    one line naming it (a class made of the others would silently differ from what was asked)."""
    task, record = bundle.task, bundle.record
    out = []
    with open_session(bundle, threads) as session:
        for path in files:
            why = not_a_file(path)
            if why:  # a FIFO or a device is never opened
                raise DataError(f"{path}: {why.split(':')[0]}: enrol regular image files only")
            try:
                feeds = task.preprocess([path], record)
            except DataError as exc:
                raise DataError(f"{exc}: enrol readable images only") from None
            out.append(session.run(feeds)[prototype.EMBEDDING])
    return np.concatenate(out)


def _checked_out(out: str | os.PathLike) -> Path:
    """``--out``: an archive name (what predict, verify and ship take for a bundle) in a folder that
    exists; enroll makes no folder, so a typo in the path is one line, not a new tree."""
    text = os.fspath(out)
    if not text.endswith((SUFFIX, ".tgz")):
        raise BundleError(f"--out {text}: a bundle's name must end in {SUFFIX} (or .tgz), e.g. --out cats{SUFFIX}")
    dest = Path(text)
    if not os.path.isdir(dest.parent):  # os.path: a parent that is a file, or a name too long, is False
        raise BundleError(f"--out {dest}: {dest.parent} is not a folder: create it first, or choose another --out")
    return dest


def _default_out(source: Path, name: str, release: int) -> Path:
    """``<name>-r<release>.tar.gz`` next to the input bundle (an archive or a folder)."""
    return source.resolve().parent / f"{name}-r{release}{SUFFIX}"
