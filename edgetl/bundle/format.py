"""The bundle format: a self-checking package of one compiled model for one device.

A bundle is a ``.tar.gz`` with a single top folder (so ``tar xzf`` never scatters files), or that
folder once extracted::

    <name>/manifest.json        format, task, release, runtime requirements, named inputs and
                                outputs, preprocessing, labels, workstation accuracy/latency, sha256
                                + size of every other file (the model: edgetl/bundle/manifest.py)
    <name>/manifest.sig         optional: Ed25519 signature over the exact manifest.json bytes
    <name>/model/...            the artifact (for TensorRT: the ONNX the engine is built from)
    <name>/golden/in.<i>.npy    a few real validation samples, preprocessed: one file per input
    <name>/golden/out.<i>.npy   the outputs the workstation got for them: one file per output

Nothing is trusted before it is checked, in this order: the signature over the exact manifest
bytes (edgetl/bundle/signing.py), the manifest against its model, then the members one by one as the
archive streams: top folder, manifest.json and manifest.sig first; then plain files or folders under
the top folder, with relative paths and no ``..``, each listed in the manifest with the same size
(before a byte is written) and sha256; links, devices and sparse files are refused; the member count
and the unpacked size are capped. This module is device side: the standard library, pydantic and
``cryptography`` only.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgetl._io import atomic_dir, atomic_path, sha256_file
from edgetl.bundle import signing
from edgetl.bundle.manifest import FORMAT, MANIFEST, SIGNATURE, is_safe_relpath  # noqa: F401 (FORMAT: re-exported)
from edgetl.bundle.manifest import parse as parse_manifest
from edgetl.bundle.signing import SignatureStatus
from edgetl.errors import BundleError, ConfigError

SUFFIX = ".tar.gz"
_MAX_MANIFEST_BYTES = 16 << 20
_MAX_HEADER_BYTES = 1 << 20
MAX_MEMBERS = 10_000  # a bundle has a handful; a million would be read before the first was judged
_MIN_UNPACK_CAP = 64 << 20
_UNPACK_RATIO = 200  # gzip of float weights rarely beats 3x; 200x is a bomb, not a model

# Golden outputs must match within |actual - expected| <= atol + rtol * max|expected| per sample: relative
# to the sample's logit scale (which varies from ~0.01 to ~20 between models), atol only a floor.
# "same": the expected logits came from this very artifact on the workstation, so only the CPU's
# kernels differ; "proxy": they came from a stand-in (the QDQ or FP32 ONNX, when the artifact cannot
# run on the workstation, e.g. a TensorRT engine), so the runtimes' different arithmetic counts too.
TOLERANCES = {
    "same": {"fp32": (1e-5, 1e-3), "fp16": (1e-4, 2e-2), "int8": (1e-4, 0.1)},
    "proxy": {"fp32": (1e-4, 1e-2), "fp16": (1e-3, 5e-2), "int8": (1e-3, 0.25)},
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
    """A name safe in paths and commands, as the manifest model requires for a bundle's name."""
    return re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", text)).strip("-._") or "bundle"


# -- the head: signature first, then the manifest model ----------------------------------------------
@dataclass(frozen=True)
class Checked:
    """A bundle's head once checked: the manifest (validated) and how it is signed."""

    manifest: dict[str, Any]
    signature: SignatureStatus


def check_head(raw: bytes, sig: bytes | None, where: str, *, allow_unsigned: bool | None = None) -> Checked:
    """The signature over the exact bytes before any field is read; then the one manifest model."""
    status = signing.check(raw, sig, allow_unsigned=allow_unsigned, where=where)
    return Checked(parse_manifest(raw, where), status)


def _safe_relpath(name: str, where: str) -> str:
    if not is_safe_relpath(name):
        raise BundleError(f"{where}: unsafe path {name[:200]!r} in bundle (absolute or with '..'): refusing to use it")
    return name


# -- archives ------------------------------------------------------------------------------------
def unpack_cap(archive_bytes: int) -> int:
    """Most bytes an archive may unpack to: $EDGETL_MAX_UNPACK_BYTES, else max(64 MiB, 200 x its size)."""
    configured = os.environ.get("EDGETL_MAX_UNPACK_BYTES")
    if configured:
        try:
            return int(configured)
        except ValueError:
            raise ConfigError(f"EDGETL_MAX_UNPACK_BYTES={configured!r} is not a number of bytes") from None
    return max(_MIN_UNPACK_CAP, _UNPACK_RATIO * archive_bytes)


def _member_relpath(member: tarfile.TarInfo, top: str, where: str) -> str | None:
    """Path of ``member`` below the top folder (None for the top folder itself); refuses anything unsafe."""
    _safe_relpath(member.name, where)
    parts = PurePosixPath(member.name).parts
    if parts[0] != top:
        raise BundleError(f"{where}: member {member.name!r} is outside the bundle's top folder {top!r}")
    if member.issparse() or member.type == tarfile.GNUTYPE_SPARSE or any(k.startswith("GNU.sparse") for k in member.pax_headers):
        # a sparse member unpacks to its declared size, whatever the archive's: refused before a byte
        raise BundleError(f"{where}: member {member.name!r} is a sparse file: bundles hold plain files only, refusing it")
    if not (member.isfile() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "device or special file"
        raise BundleError(f"{where}: member {member.name!r} is a {kind}: bundles hold plain files only, refusing it")
    rel = "/".join(parts[1:])
    if not rel and not member.isdir():
        raise BundleError(f"{where}: the archive's top entry {member.name!r} must be a folder: not an edgetl bundle")
    return rel or None


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses long-name and PAX extended headers larger than any bundle needs: tarfile would read
    them whole into memory (a gigabyte of header compresses to a megabyte)."""

    _HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                     tarfile.SOLARIS_XHDTYPE)

    def _proc_member(self, tar):
        if self.type in self._HEADER_TYPES and self.size > _MAX_HEADER_BYTES:
            raise BundleError(f"{tar.name}: an archive header of {self.size} bytes (at most {_MAX_HEADER_BYTES}): "
                              "not an edgetl bundle, refusing it")
        return super()._proc_member(tar)


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:gz", tarinfo=_BoundedTarInfo)
    except FileNotFoundError:
        raise BundleError(f"bundle {path} does not exist") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"{path} is not a readable .tar.gz bundle ({exc}): copy it again") from None


def _next(tar: tarfile.TarFile, where: str) -> tarfile.TarInfo | None:
    """The next member header, read from the stream (never the whole listing at once)."""
    try:
        return tar.next()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"{where} is truncated or corrupt ({exc}): copy it again") from None


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int, where: str) -> bytes:
    if not member.isfile() or member.issparse() or member.size > limit:
        raise BundleError(f"{where}: {member.name!r} is not a plain file of at most {limit} bytes: not an edgetl bundle")
    try:
        return tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"{where} is truncated or corrupt ({exc}): copy it again") from None


def _read_head(tar: tarfile.TarFile, where: str) -> tuple[str, bytes, bytes | None, tarfile.TarInfo | None]:
    """(top folder, manifest bytes, signature bytes or None, first member after them).

    The top folder, manifest.json and manifest.sig lead the archive, so both are checked before any
    other member is even looked at.
    """
    first = _next(tar, where)
    if first is None:
        raise BundleError(f"{where} is empty: not an edgetl bundle")
    top = PurePosixPath(_safe_relpath(first.name, where)).parts[0]
    if _member_relpath(first, top, where) is not None:
        raise BundleError(f"{where}: the archive must start with its top folder, not {first.name!r}: not an edgetl bundle")
    member = _next(tar, where)
    if member is None or member.name != f"{top}/{MANIFEST}":
        raise BundleError(f"{where}: {top}/{MANIFEST} must be the archive's first file: not an edgetl bundle "
                          "(or one made by an older edgetl: rebuild it with `edgetl bundle`)")
    raw = _read_small(tar, member, _MAX_MANIFEST_BYTES, where)
    member, sig = _next(tar, where), None
    if member is not None and member.name == f"{top}/{SIGNATURE}":
        sig = _read_small(tar, member, signing.MAX_SIG_BYTES, where)
        member = _next(tar, where)
    return top, raw, sig, member


def read_head(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    """The archive's exact manifest.json and manifest.sig bytes (cheap: its first members only)."""
    with _open_tar(Path(path)) as tar:
        _, raw, sig, _ = _read_head(tar, str(path))
    return raw, sig


class _Discard:
    """Reads and checks every member without writing anything (``inspect_archive``)."""

    def reserve(self, nbytes: int) -> None:
        pass

    def write(self, rel: str, chunks: Iterator[bytes]) -> None:
        for _ in chunks:
            pass


def _walk_archive(path: Path, sink, *, allow_unsigned: bool | None = None) -> Checked:
    """Check the archive member by member as it streams, handing each listed file to ``sink``.

    Order of checks: signature, manifest model, unpacked size against the cap, then per member:
    path, type (no links, devices, sparse files), count, listed, size equal to the listed one
    (before a byte is written), sha256 while streaming. Raises BundleError on the first failure.
    """
    where = str(path)
    with _open_tar(path) as tar:
        top, raw, sig, member = _read_head(tar, where)
        head = check_head(raw, sig, where, allow_unsigned=allow_unsigned)
        if top != head.manifest["name"]:  # the name is a checked slug; the folder becomes a path on the device
            raise BundleError(f"{where}: the archive's top folder {top[:80]!r} is not the bundle's name "
                              f"{head.manifest['name']!r}: refusing it")
        listed = head.manifest["files"]
        total = len(raw) + len(sig or b"") + sum(e["size"] for e in listed.values())
        cap = unpack_cap(path.stat().st_size)
        if total > cap:
            raise BundleError(f"{where} would unpack to {_mb(total)} MB, more than the {_mb(cap)} MB allowed for a "
                              f"{_mb(path.stat().st_size)} MB archive: refusing it (raise EDGETL_MAX_UNPACK_BYTES if it is genuine)")
        sink.reserve(total)
        sink.write(MANIFEST, iter([raw]))
        if sig is not None:
            sink.write(SIGNATURE, iter([sig]))
        seen: set[str] = set()
        files: set[str] = set()
        count = 3 if sig is not None else 2
        while member is not None:
            count += 1
            if count > MAX_MEMBERS:
                raise BundleError(f"{where} has more than {MAX_MEMBERS} members: not an edgetl bundle, refusing it")
            rel = _member_relpath(member, top, where)
            if rel in seen or rel in (MANIFEST, SIGNATURE):
                raise BundleError(f"{where}: {rel} appears twice in the archive: refusing it")
            seen.add(rel)
            if member.isfile():
                _check_listed(rel, member.size, listed, where)
                files.add(rel)
                sink.write(rel, _checked_chunks(tar, member, listed[rel]["sha256"], rel, where))
            member = _next(tar, where)
    missing = sorted(rel for rel in listed if rel not in files)
    if missing:
        raise BundleError(f"{where}: {missing[0]} is listed in the manifest but missing from the archive")
    return head


def _check_listed(rel: str, size: int, listed: dict[str, Any], where: str) -> None:
    if rel not in listed:
        raise BundleError(f"{where}: {rel} is not listed in the bundle's manifest: refusing an unknown file")
    if size != listed[rel]["size"]:
        raise BundleError(f"{where}: {rel} has {size} bytes, the manifest says {listed[rel]['size']}: tampered bundle")


def _checked_chunks(tar: tarfile.TarFile, member: tarfile.TarInfo, sha256: str, rel: str, where: str,
                    size: int = 1 << 20) -> Iterator[bytes]:
    """The member's bytes; raises after the last one when they do not hash to ``sha256``."""
    digest = hashlib.sha256()
    try:
        fh = tar.extractfile(member)
        while block := fh.read(size):
            digest.update(block)
            yield block
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"{where} is truncated or corrupt at {rel} ({exc}): copy it again") from None
    if digest.hexdigest() != sha256:
        raise BundleError(f"{where}: {rel} does not match its sha256 in the manifest: the bundle was tampered with or corrupted")


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f}"


def inspect_archive(path: str | os.PathLike, *, allow_unsigned: bool | None = None) -> dict[str, Any]:
    """Check an archive completely (signature, manifest, layout, sizes, hashes) without writing anything."""
    return _walk_archive(Path(path), _Discard(), allow_unsigned=allow_unsigned).manifest


class _FolderSink:
    """Writes checked members under ``root``: plain files 0644, never following or replacing an entry."""

    def __init__(self, root: Path, archive: Path):
        self.root, self.archive = root, archive

    def reserve(self, nbytes: int) -> None:
        free = shutil.disk_usage(self.root).free
        if nbytes > free:
            raise BundleError(f"not enough free space in {self.root.parent}: need {_mb(nbytes)} MB, "
                              f"{_mb(free)} MB free: free some space and try again")

    def write(self, rel: str, chunks: Iterator[bytes]) -> None:
        out = self.root / rel
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "wb") as fh:
                for block in chunks:
                    fh.write(block)
        except BundleError:
            out.unlink(missing_ok=True)  # a partial file never stays, even inside the temporary folder
            raise
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise BundleError(f"{self.archive}: {rel} clashes with another entry of the archive ({exc}): refusing it") from None
        except OSError as exc:
            out.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                raise BundleError(f"the disk holding {self.root.parent} is full (while writing {rel} of "
                                  f"{self.archive}): free some space and try again") from None
            raise BundleError(f"cannot write {out}: {exc.strerror}") from None
        out.chmod(0o644)


def unpack_archive(path: str | os.PathLike, dest: str | os.PathLike, *, allow_unsigned: bool | None = None) -> Checked:
    """Check and extract an archive into ``dest`` (its files at the top, without the archive's top
    folder). Extraction happens in a temporary folder next to ``dest``, renamed only when every check
    passed: ``dest`` is either the complete bundle or untouched. Owners and modes are never restored
    from the archive: files 0644, folders 0755."""
    dest = Path(dest)
    with atomic_dir(dest) as tmp:
        checked = _walk_archive(Path(path), _FolderSink(tmp, Path(path)), allow_unsigned=allow_unsigned)
        for folder, _, _ in os.walk(tmp):
            os.chmod(folder, 0o755)
    return checked


def extract_archive(path: str | os.PathLike, dest: str | os.PathLike, *, allow_unsigned: bool | None = None) -> dict[str, Any]:
    """``unpack_archive``, returning the manifest."""
    return unpack_archive(path, dest, allow_unsigned=allow_unsigned).manifest


def _read_folder_file(path: Path, limit: int, where: str) -> bytes:
    if path.is_symlink() or not path.is_file():
        raise BundleError(f"{where}: {path.name} is not a plain file: not an edgetl bundle")
    if path.stat().st_size > limit:
        raise BundleError(f"{where}: {path.name} is too large to be a bundle's {path.name}")
    return path.read_bytes()


def load_folder(root: str | os.PathLike, *, allow_unsigned: bool | None = None) -> Checked:
    """Check an extracted bundle: signature, manifest, no links, no unlisted files, every listed file intact."""
    root = Path(root)
    where = str(root)
    if not (root / MANIFEST).exists():
        raise BundleError(f"{where} is not an edgetl bundle (no {MANIFEST})")
    raw = _read_folder_file(root / MANIFEST, _MAX_MANIFEST_BYTES, where)
    sig_path = root / SIGNATURE
    sig = _read_folder_file(sig_path, signing.MAX_SIG_BYTES, where) if sig_path.exists() or sig_path.is_symlink() else None
    head = check_head(raw, sig, where, allow_unsigned=allow_unsigned)
    listed = head.manifest["files"]
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
            if rel not in (MANIFEST, SIGNATURE) and rel not in listed:
                raise BundleError(f"{where}: {rel} is not listed in the bundle's manifest: remove it or re-extract the bundle")
    for rel, entry in sorted(listed.items()):
        file = root / rel
        if not file.is_file():
            raise BundleError(f"{where}: {rel} is listed in the manifest but missing: re-extract the bundle")
        if file.stat().st_size != entry["size"] or sha256_file(file) != entry["sha256"]:
            raise BundleError(f"{where}: {rel} does not match its sha256 in the manifest: the bundle was tampered with or corrupted")
    return head


def check_folder(root: str | os.PathLike, *, allow_unsigned: bool | None = None) -> dict[str, Any]:
    """``load_folder``, returning the manifest."""
    return load_folder(root, allow_unsigned=allow_unsigned).manifest


def file_entries(root: Path) -> dict[str, dict[str, Any]]:
    """relpath -> {sha256, size} for every file under ``root`` except the manifest and its signature."""
    return {
        f.relative_to(root).as_posix(): {"sha256": sha256_file(f), "size": f.stat().st_size}
        for f in sorted(root.rglob("*"))
        if f.is_file() and f.relative_to(root).as_posix() not in (MANIFEST, SIGNATURE)
    }


def write_bundle(stage: Path, manifest: dict[str, Any], dest: str | os.PathLike, *, private_key=None,
                 where: str) -> dict[str, Any]:
    """The one way edgetl writes a bundle (``edgetl bundle``, optimize's candidates, ``edgetl enroll``):
    ``manifest`` with the size and sha256 of every file in ``stage``, validated as a device will
    (``where`` names it in the message), signed with ``private_key`` (an Ed25519 private key) when
    given, packed as ``dest`` atomically. Returns the manifest written."""
    manifest = {**manifest, "files": file_entries(stage)}
    raw = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
    (stage / MANIFEST).write_bytes(raw)
    parse_manifest(raw, where)
    signature = stage / SIGNATURE
    signature.unlink(missing_ok=True)
    if private_key is not None:
        signature.write_bytes(signing.sign(private_key, raw))
    write_archive(stage, dest, manifest["name"])
    return manifest


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
                # The manifest, then its signature, first: readers check both before any other member.
                head = [src / MANIFEST, *([src / SIGNATURE] if (src / SIGNATURE).is_file() else [])]
                paths = sorted(p for p in src.rglob("*") if p.relative_to(src).as_posix() not in (MANIFEST, SIGNATURE))
                for p in [*head, *paths]:
                    name = f"{top}/{p.relative_to(src).as_posix()}"
                    if p.is_dir():
                        tar.addfile(info(name, None))
                    else:
                        with open(p, "rb") as fh:
                            tar.addfile(info(name, p.stat().st_size), fh)


def is_bundle(path: str | os.PathLike) -> bool:
    """An archive by its name, or a folder whose manifest.json is a bundle's (a run's is not)."""
    path = Path(path)
    if path.is_file():
        return path.name.endswith((SUFFIX, ".tgz"))
    manifest = path / MANIFEST
    try:
        info = manifest.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_MANIFEST_BYTES:
            # never opened (a FIFO would block forever): no run has such a manifest, so the bundle
            # checks take it and refuse it in one line
            return True
        return json.loads(manifest.read_text(encoding="utf-8")).get("format", "").startswith("edgetl.bundle/")
    except (OSError, ValueError, AttributeError, RecursionError):
        return False
