"""The bundle format: a self-checking package of one compiled model for one device.

A bundle is a ``.tar.gz`` with a single top folder (so ``tar xzf`` never scatters files), or that
folder once extracted::

    <name>/manifest.json        format, runtime requirements, input spec, preprocessing, labels,
                                workstation accuracy/latency, golden tolerances, sha256 + size of
                                every other file
    <name>/model/...            the artifact (for TensorRT: the ONNX the engine is built from)
    <name>/golden/inputs.npy    a few real validation images, preprocessed (float32 NCHW)
    <name>/golden/expected.npy  the logits the workstation got for them

Nothing is trusted before it is checked: archive members must be plain files or folders under the
top folder, with relative paths and no ``..``, each listed in the manifest with the same size and
sha256; links and devices are refused. Arrays are read with ``allow_pickle=False``. This module is
device side: numpy and the standard library only.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import stat
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from edgetl._io import atomic_dir, atomic_path, sha256_file
from edgetl.errors import BundleError

FORMAT = "edgetl.bundle/1"
MANIFEST = "manifest.json"
SUFFIX = ".tar.gz"
_MAX_MANIFEST_BYTES = 16 << 20

# Golden outputs must match within |actual - expected| <= atol + rtol * max|expected| per sample: relative
# to the sample's logit scale (which varies from ~0.01 to ~20 between models), atol only a floor.
# "same": the expected logits came from this very artifact on the workstation, so only the CPU's
# kernels differ; "proxy": they came from a stand-in (the QDQ or FP32 ONNX, when the artifact cannot
# run on the workstation, e.g. a TensorRT engine), so the runtimes' different arithmetic counts too.
TOLERANCES = {
    "same": {"fp32": (1e-5, 1e-3), "fp16": (1e-4, 2e-2), "int8": (1e-4, 0.1)},
    "proxy": {"fp32": (1e-4, 1e-2), "fp16": (1e-3, 5e-2), "int8": (1e-3, 0.25)},
}

# Oldest runtime that can read what we ship (ONNX opset 18 / IR v11 / strongly typed networks), per
# flavour: TensorRT-RTX numbers its releases apart from TensorRT.
MIN_RUNTIME = {
    "onnxruntime": {"onnxruntime": "1.16"},
    "openvino": {"openvino": "2024.0"},
    "tensorrt": {"tensorrt": "10.0", "tensorrt_rtx": "1.0"},
}


def tolerance(precision: str, source: str) -> dict[str, float]:
    atol, rtol = TOLERANCES[source][precision]
    return {"atol": atol, "rtol": rtol}


def version_tuple(version: str) -> tuple[int, ...]:
    """'1.32.0' -> (1, 32, 0); '2026.4.1-22982' -> (2026, 4, 1); stops at the first non-number."""
    parts = []
    for piece in re.split(r"[.\-+ ]", version.strip()):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "bundle"


# -- manifest ------------------------------------------------------------------------------------
_REQUIRED = ("format", "name", "runtime", "precision", "model", "input", "preprocess", "labels", "golden", "files")


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """Refuse a manifest edgetl cannot read, naming what is wrong."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: manifest.json is not a JSON object: not an edgetl bundle")
    fmt = manifest.get("format")
    if fmt != FORMAT:
        hint = "upgrade edgetl on this machine" if str(fmt).startswith("edgetl.bundle/") else "not an edgetl bundle"
        raise BundleError(f"{where}: bundle format {fmt!r} is not {FORMAT!r}: {hint}")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise BundleError(f"{where}: manifest.json lacks {', '.join(missing)}: rebuild the bundle with `edgetl bundle`")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(v, dict) and "sha256" in v and "size" in v for v in files.values()):
        raise BundleError(f"{where}: manifest.json 'files' must map path -> {{sha256, size}}: rebuild the bundle")
    for name in files:
        if _safe_relpath(name, where) == MANIFEST:
            raise BundleError(f"{where}: manifest.json lists itself: rebuild the bundle")
    return manifest


def _safe_relpath(name: str, where: str) -> str:
    """A path inside the bundle: relative, normalised, no '..', no backslashes or NULs."""
    path = PurePosixPath(name)
    if (
        not name
        or path.is_absolute()
        or name.startswith(("/", "\\"))
        or ".." in path.parts
        or "\\" in name
        or "\0" in name
        or re.match(r"^[A-Za-z]:", name)
        or path.as_posix() != name  # "./a", "a//b": one spelling per file, so listings can be compared
    ):
        raise BundleError(f"{where}: unsafe path {name!r} in bundle (absolute or with '..'): refusing to use it")
    return path.as_posix()


def _parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    try:
        return check_manifest(json.loads(raw.decode("utf-8")), where)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}: manifest.json is not valid JSON ({exc}): the bundle is corrupt") from None


# -- archives ------------------------------------------------------------------------------------
def _member_relpath(member: tarfile.TarInfo, top: str, where: str) -> str | None:
    """Path of ``member`` below the top folder (None for the top folder itself); refuses anything unsafe."""
    _safe_relpath(member.name, where)
    parts = PurePosixPath(member.name).parts
    if parts[0] != top:
        raise BundleError(f"{where}: member {member.name!r} is outside the bundle's top folder {top!r}")
    if not (member.isfile() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "device or special file"
        raise BundleError(f"{where}: member {member.name!r} is a {kind}: bundles hold plain files only, refusing it")
    rel = "/".join(parts[1:])
    if not rel and not member.isdir():
        raise BundleError(f"{where}: the archive's top entry {member.name!r} must be a folder: not an edgetl bundle")
    return rel or None


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:gz")
    except FileNotFoundError:
        raise BundleError(f"bundle {path} does not exist") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{path} is not a readable .tar.gz bundle ({exc}): copy it again") from None


def _walk_archive(path: Path, sink) -> dict[str, Any]:
    """Check every member of the archive and stream each listed file to ``sink(relpath, chunks)``.

    Returns the manifest. Raises BundleError on the first unsafe, unlisted, resized, tampered or
    missing file.
    """
    where = str(path)
    with _open_tar(path) as tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError(f"{where} is truncated or corrupt ({exc}): copy it again") from None
        if not members:
            raise BundleError(f"{where} is empty: not an edgetl bundle")
        top = PurePosixPath(_safe_relpath(members[0].name, where)).parts[0]
        by_rel: dict[str, tarfile.TarInfo] = {}
        for member in members:
            rel = _member_relpath(member, top, where)
            if rel in by_rel:
                raise BundleError(f"{where}: {rel} appears twice in the archive: refusing it")
            if rel is not None:
                by_rel[rel] = member
        head = by_rel.get(MANIFEST)
        if head is None or not head.isfile() or head.size > _MAX_MANIFEST_BYTES:
            raise BundleError(f"{where}: no {top}/{MANIFEST}: not an edgetl bundle")
        raw = tar.extractfile(head).read()
        manifest = _parse_manifest(raw, where)
        listed = manifest["files"]
        for rel, member in by_rel.items():
            if member.isdir() or rel == MANIFEST:
                continue
            if rel not in listed:
                raise BundleError(f"{where}: {rel} is not listed in the bundle's manifest: refusing an unknown file")
            if member.size != listed[rel]["size"]:
                raise BundleError(f"{where}: {rel} has {member.size} bytes, the manifest says {listed[rel]['size']}: tampered bundle")
        missing = sorted(rel for rel in listed if rel not in by_rel or not by_rel[rel].isfile())
        if missing:
            raise BundleError(f"{where}: {missing[0]} is listed in the manifest but missing from the archive")
        for rel in sorted(listed):
            digest = hashlib.sha256()
            src = tar.extractfile(by_rel[rel])
            sink(rel, _chunks(src, digest))
            if digest.hexdigest() != listed[rel]["sha256"]:
                raise BundleError(f"{where}: {rel} does not match its sha256 in the manifest: the bundle was tampered with or corrupted")
        sink(MANIFEST, iter([raw]))
    return manifest


def _chunks(fh, digest, size: int = 1 << 20):
    while block := fh.read(size):
        digest.update(block)
        yield block


def inspect_archive(path: str | os.PathLike) -> dict[str, Any]:
    """Check an archive completely (layout, listing, sizes, hashes) without writing anything."""
    return _walk_archive(Path(path), lambda rel, chunks: [None for _ in chunks])


def extract_archive(path: str | os.PathLike, dest: str | os.PathLike) -> dict[str, Any]:
    """Check and extract an archive into ``dest`` (its files at the top, without the archive's top
    folder). Extraction happens in a temporary folder next to ``dest``, renamed only when every check
    passed: ``dest`` is either the complete bundle or untouched."""
    dest = Path(dest)
    with atomic_dir(dest) as tmp:

        def sink(rel, chunks):
            out = tmp / rel
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                with open(out, "wb") as fh:
                    for block in chunks:
                        fh.write(block)
            except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
                raise BundleError(f"{path}: {rel} clashes with another entry of the archive ({exc}): refusing it") from None
            out.chmod(0o644)

        manifest = _walk_archive(Path(path), sink)
    return manifest


def check_folder(root: str | os.PathLike) -> dict[str, Any]:
    """Check an extracted bundle: no links, no unlisted files, every listed file present and intact."""
    root = Path(root)
    where = str(root)
    path = root / MANIFEST
    if not path.is_file() or path.is_symlink():
        raise BundleError(f"{where} is not an edgetl bundle (no {MANIFEST})")
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise BundleError(f"{where}: {MANIFEST} is too large to be a bundle manifest")
    manifest = _parse_manifest(path.read_bytes(), where)
    listed = manifest["files"]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"{where}: {rel} is a symbolic link: bundles hold plain files only, refusing it")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise BundleError(f"{where}: {rel} is a device or special file: refusing it")
            if rel != MANIFEST and rel not in listed:
                raise BundleError(f"{where}: {rel} is not listed in the bundle's manifest: remove it or re-extract the bundle")
    for rel, entry in sorted(listed.items()):
        file = root / rel
        if not file.is_file():
            raise BundleError(f"{where}: {rel} is listed in the manifest but missing: re-extract the bundle")
        if file.stat().st_size != entry["size"] or sha256_file(file) != entry["sha256"]:
            raise BundleError(f"{where}: {rel} does not match its sha256 in the manifest: the bundle was tampered with or corrupted")
    return manifest


def file_entries(root: Path) -> dict[str, dict[str, Any]]:
    """relpath -> {sha256, size} for every file under ``root`` except the manifest."""
    return {
        f.relative_to(root).as_posix(): {"sha256": sha256_file(f), "size": f.stat().st_size}
        for f in sorted(root.rglob("*"))
        if f.is_file() and f.relative_to(root).as_posix() != MANIFEST
    }


def write_archive(src: str | os.PathLike, dest: str | os.PathLike, top: str) -> None:
    """Pack folder ``src`` as ``dest`` (.tar.gz) under top folder ``top``, atomically.

    Reproducible: sorted members, fixed owner and mtime, no gzip timestamp, so the same bundle
    contents always give the same sha256 (``ship`` uses it to skip copies the device already has).
    """
    src = Path(src)

    def info(name: str, size: int | None) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
        if size is None:
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        else:
            ti.size, ti.mode = size, 0o644
        return ti

    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(info(top, None))
                # The manifest first: readers find it without scanning the whole archive.
                paths = sorted(p for p in src.rglob("*") if p.relative_to(src).as_posix() != MANIFEST)
                for p in [src / MANIFEST, *paths]:
                    name = f"{top}/{p.relative_to(src).as_posix()}"
                    if p.is_dir():
                        tar.addfile(info(name, None))
                    else:
                        with open(p, "rb") as fh:
                            tar.addfile(info(name, p.stat().st_size), fh)


def archive_top(path: str | os.PathLike) -> str:
    """The archive's top folder (``inspect_archive`` checks that every member lies below it)."""
    with _open_tar(Path(path)) as tar:
        first = tar.next()
    if first is None:
        raise BundleError(f"{path} is empty: not an edgetl bundle")
    return PurePosixPath(_safe_relpath(first.name, str(path))).parts[0]


def is_bundle(path: str | os.PathLike) -> bool:
    """An archive by its name, or a folder whose manifest.json is a bundle's (a run's is not)."""
    path = Path(path)
    if path.is_file():
        return path.name.endswith((SUFFIX, ".tgz"))
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("format", "").startswith("edgetl.bundle/")
    except (OSError, ValueError, AttributeError):
        return False
