"""The device side of a bundle: open, verify, predict, bench, build.

Needs numpy, Pillow and the bundle's runtime only (never torch), so ``pip install
"edgetl[onnxruntime]"`` on a Raspberry Pi is enough. A bundle is used as a ``.tar.gz`` (checked and
extracted once into a cache folder keyed by the archive's sha256) or as an extracted folder; either
way its signature, manifest and every file's hash are checked each time it is opened.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl._io import sha256_file
from edgetl.bundle.format import (
    MANIFEST,
    SIGNATURE,
    Checked,
    is_bundle,
    load_folder,
    read_head,
    tolerance,
    unpack_archive,
    version_tuple,
)
from edgetl.bundle.signing import SignatureStatus
from edgetl.data.layout import IMAGE_SUFFIXES
from edgetl.data.preprocess import PreprocessSpec, load_image
from edgetl.errors import BundleError, DataError, MissingDependencyError


def cache_dir() -> Path:
    """Where extracted bundles and TensorRT engines live: $EDGETL_CACHE, else the XDG cache."""
    if os.environ.get("EDGETL_CACHE"):
        return Path(os.environ["EDGETL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgetl"


@dataclass
class Bundle:
    root: Path  # the extracted folder (manifest.json at its top)
    manifest: dict[str, Any]  # validated by edgetl.bundle.manifest
    source: Path  # what the user gave: the archive or the folder
    signature: SignatureStatus

    @classmethod
    def of(cls, root: Path, checked: Checked, source: Path) -> Bundle:
        return cls(root, checked.manifest, source, checked.signature)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def runtime(self) -> str:
        return self.manifest["runtime"]["name"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def threads(self) -> int | None:
        return (self.manifest.get("target") or {}).get("threads")

    def file(self, rel: str) -> Path:
        if rel not in self.manifest["files"]:
            raise BundleError(f"{self.source}: the manifest names {rel!r} but does not list it: rebuild the bundle")
        return self.root / rel

    def golden(self) -> tuple[np.ndarray, np.ndarray]:
        """(inputs float32 NCHW, expected logits float32), shaped as the manifest says; never unpickles."""
        g, m = self.manifest["golden"], self.manifest
        samples = g["samples"]
        inputs = self._npy(g["inputs"], (samples, *m["input"]["shape"][1:]))
        expected = self._npy(g["expected"], (samples, m["output"]["shape"][1]))
        return inputs, expected

    def _npy(self, rel: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 C-order .npy of exactly ``shape``: header and file size checked before any data is read."""
        path = self.file(rel)
        bad = f"{self.source}: {rel} is not a plain float32 .npy array of shape {shape}"
        with open(path, "rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f"npy format version {version}")
                got, fortran_order, dtype = read_header(fh)
            except ValueError as exc:
                # numpy's reasons span lines and may quote the header: its first line, bounded
                reason = (str(exc).splitlines() or ["unreadable header"])[0][:200]
                raise BundleError(f"{bad} ({reason}): refusing it") from None
            if dtype != np.dtype(np.float32) or fortran_order or tuple(got) != shape:
                raise BundleError(f"{bad} (it holds {dtype}{' Fortran-order' if fortran_order else ''} {tuple(got)}): "
                                  "rebuild the bundle")
            if fh.tell() + int(np.prod(shape)) * 4 != path.stat().st_size:
                raise BundleError(f"{bad} (its size does not match its header): rebuild the bundle")
            return np.fromfile(fh, dtype=np.float32).reshape(shape)


def open_bundle(path: str | os.PathLike, *, allow_unsigned: bool | None = None) -> Bundle:
    """Check a bundle (archive or folder) and return it; refuses anything unsigned where signatures
    are required, unsafe or tampered. ``allow_unsigned`` None: ``signing.unsigned_allowed()``."""
    path = Path(path)
    if path.is_dir():
        return Bundle.of(path, load_folder(path, allow_unsigned=allow_unsigned), path)
    if not path.is_file():
        raise BundleError(f"bundle {path} does not exist")
    root = cache_dir() / "bundles" / sha256_file(path)[:24]
    if (root / MANIFEST).is_file():
        with contextlib.suppress(BundleError):  # a damaged or foreign cache entry: extract the archive again
            if _cached_head(root) == read_head(path):
                return Bundle.of(root, load_folder(root, allow_unsigned=allow_unsigned), path)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(root.parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable")
    except OSError as exc:  # below a file, a link to nowhere, not writable
        raise BundleError(f"cannot use the bundle cache {cache_dir()} ({exc.strerror}): point EDGETL_CACHE at a "
                          "writable folder") from None
    return Bundle.of(root, unpack_archive(path, root, allow_unsigned=allow_unsigned), path)


def _cached_head(root: Path) -> tuple[bytes, bytes | None]:
    """The cached manifest and signature bytes: a cache entry is used only when they are the archive's
    own (a cache whose files were rewritten together with their hashes is not)."""
    sig = root / SIGNATURE
    return (root / MANIFEST).read_bytes(), sig.read_bytes() if sig.is_file() else None


# -- sessions ------------------------------------------------------------------------------------
def require_runtime(bundle: Bundle):
    """The bundle's backend, once its runtime is installed here in a recent enough version."""
    from edgetl.backends import get_backend

    rt = bundle.manifest["runtime"]
    backend = get_backend(rt["name"])
    if not backend.available():
        raise MissingDependencyError(
            f"bundle {bundle.name} runs on {rt['name']}, which is not installed here: "
            f'pip install "edgetl[{backend.extra}]"'
        )
    # "1.32.0", or "tensorrt_rtx 1.7.1" where one runtime comes in flavours
    *flavour, have = backend.version().split()
    flavour = flavour[0] if flavour else rt["name"]
    need = (rt.get("min_version") or {}).get(flavour)
    if need and version_tuple(have) < version_tuple(need):
        raise BundleError(
            f"bundle {bundle.name} needs {flavour} >= {need} (it was built with {rt.get('built_with')}), "
            f'this machine has {have}: pip install -U "edgetl[{backend.extra}]"'
        )
    return backend


def open_session(bundle: Bundle, threads: int | None = None):
    """A Session on this machine's runtime, after what the runtime must do first on a device
    (``Backend.prepare``: TensorRT builds, or reuses, its engine)."""
    backend = require_runtime(bundle)
    return backend.load(backend.prepare(bundle), threads or bundle.threads)


def run_each(session, inputs: np.ndarray) -> np.ndarray:
    """One image at a time: every artifact accepts batch 1 (some have a fixed batch)."""
    name, out = session.inputs[0].name, session.outputs[0].name  # bridge until golden files are named feeds
    return np.concatenate([session.run({name: inputs[i : i + 1]})[out] for i in range(len(inputs))]).astype(np.float32)


# -- verify ---------------------------------------------------------------------------------------
def verify(path: str | os.PathLike, threads: int | None = None, *, allow_unsigned: bool | None = None) -> dict[str, Any]:
    """Signature, manifest and hashes, then golden inputs against expected outputs within the
    tolerance edgetl's code sets for the precision (never the bundle's own figure).

    Returns a summary; raises BundleError naming the sample and output that differ.
    """
    bundle = open_bundle(path, allow_unsigned=allow_unsigned)
    inputs, expected = bundle.golden()
    golden = bundle.manifest["golden"]
    tol = tolerance(bundle.precision, golden["tolerance"]["source"])
    with open_session(bundle, threads) as session:
        actual = run_each(session, inputs)
    if actual.shape != expected.shape:
        raise BundleError(
            f"{bundle.source}: output 'logits' has shape {actual.shape} on this device, {golden['expected']} has "
            f"{expected.shape}: the artifact does not match its bundle"
        )
    labels = bundle.labels
    worst = 0.0
    for i, (got, want) in enumerate(zip(actual, expected, strict=True)):
        allowed = tol["atol"] + tol["rtol"] * float(np.abs(want).max())
        diff = np.abs(got - want)
        worst = max(worst, float(diff.max() / allowed))
        if not np.all(diff <= allowed):
            j = int(diff.argmax())
            raise BundleError(
                f"{bundle.source}: golden sample {i} ({golden['inputs']}[{i}], {_label(labels, int(want.argmax()))!r} "
                f"on the workstation): output 'logits' for {_label(labels, j)!r} is {got[j]:.4f}, {golden['expected']} says "
                f"{want[j]:.4f} (|diff| {diff[j]:.4f} > tolerance {allowed:.4f} for {bundle.precision}): this device's "
                f"{bundle.runtime} does not reproduce the workstation's results"
            )
    return {
        "bundle": bundle.name,
        "source": str(bundle.source),
        "runtime": f"{bundle.runtime} {require_runtime(bundle).version()}",
        "precision": bundle.precision,
        "signature": str(bundle.signature),
        "files_checked": len(bundle.manifest["files"]) + 1,
        "golden_samples": len(inputs),
        "top1_agreement": float(np.mean(actual.argmax(1) == expected.argmax(1))),
        "worst_diff_over_tolerance": round(worst, 4),
        "ok": True,
    }


def _label(labels: list[str], index: int) -> str:
    return labels[index] if 0 <= index < len(labels) else str(index)


# -- predict --------------------------------------------------------------------------------------
def image_files(target: str | os.PathLike) -> list[Path]:
    """An image, or every image under a folder (sorted, recursive). Listed, never opened: a FIFO or
    a device named like an image is caught by ``not_a_file`` before anything reads it."""
    target = Path(target)
    if target.is_dir():
        files = sorted(p for p in target.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
        if not files:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {target}")
        return files
    if not target.exists():
        raise DataError(f"image {target} does not exist")
    return [target]


def not_a_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image without opening it (os.stat only), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot read it ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"{kind}, not a regular file: skipped without reading it"


def check_argument_order(bundle: Path, images: Path) -> None:
    """``predict photo.jpg bundle.tar.gz``: say the bundle comes first, not that the photo is a bad bundle."""
    if bundle.suffix.lower() not in IMAGE_SUFFIXES or bundle.is_dir():
        return
    if is_bundle(images):
        raise DataError(f"{bundle} is an image and {images} a bundle: the bundle comes first, "
                        f"e.g. edgetl predict {images} {bundle}")
    raise DataError(f"{bundle} is an image, not a bundle: the bundle comes first, "
                    f"e.g. edgetl predict model-bundle.tar.gz {bundle}")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def predict(path: str | os.PathLike, images: str | os.PathLike, top: int = 3, threads: int | None = None) -> list[dict]:
    """Top-k labels with probabilities for an image or every image in a folder.

    One row per image, in order; an image that cannot be read (corrupt, truncated, not an image,
    not a regular file) gets ``"top": []`` and an ``"error"`` saying why, and the others go on.
    """
    check_argument_order(Path(path), Path(images))
    bundle = open_bundle(path)
    spec, labels = bundle.spec, bundle.labels
    files = image_files(images)
    k = max(1, min(top, len(labels)))
    results = []
    with open_session(bundle, threads) as session:
        for f in files:
            try:
                why = not_a_file(f)
                if why:
                    raise DataError(f"{f}: {why}")
                pixels = load_image(f, spec)
            except DataError as exc:
                results.append({"image": str(f), "top": [], "error": str(exc)})
                continue
            logits = session.run({session.inputs[0].name: pixels[None]})[session.outputs[0].name]
            probs = softmax(logits[0].astype(np.float64))
            order = np.argsort(-probs, kind="stable")[:k]
            results.append({
                "image": str(f),
                "top": [{"label": _label(labels, int(j)), "index": int(j), "score": float(probs[j])} for j in order],
            })
    return results


# -- bench ----------------------------------------------------------------------------------------
def bench(
    path: str | os.PathLike,
    *,
    batches: tuple[int, ...] | list[int] = (1,),
    threads: int | None = None,
    iterations: int = 200,
    duration_s: float | None = None,
    device_name: str | None = None,
    data: str | os.PathLike | None = None,
    progress=None,
) -> dict[str, Any]:
    """Bench a bundle on this machine with the bench stage's harness: an ``edgetl.bench/1`` document.

    Latency is timed on the golden inputs (real preprocessed validation images); ``golden`` says how
    closely this device reproduces the workstation's logits. ``accuracy`` is measured on ``data``, a
    labelled folder or CSV (``edgetl.bench.labelled``); without it, it is null and the accuracy
    budget reads "not measured here" next to the workstation's measurement
    (``workstation_accuracy``). The target profile's budgets are applied as gates.
    """
    from edgetl.bench.gates import validate_budgets
    from edgetl.bench.labelled import folder_accuracy, labelled_images
    from edgetl.bench.measure import measure
    from edgetl.bench.run import check_settings, default_threads, result_doc
    from edgetl.bench.system import device_slug, system_record
    from edgetl.config import Budgets

    check_settings(batches, threads, iterations, duration_s)
    bundle = open_bundle(path)
    require_runtime(bundle)  # a missing runtime fails before any timing
    images = labelled_images(data, bundle.labels) if data is not None else None  # so does a bad folder
    workstation = (bundle.manifest.get("workstation") or {}).get("accuracy")
    threads = threads or bundle.threads or default_threads()
    inputs, expected = bundle.golden()
    settings = {"threads": threads, "batches": list(batches), "iterations": iterations, "duration_s": duration_s,
                "warmup_iters": 50, "warmup_s": 0.2, "isolated": False}
    measured = measure(lambda: open_session(bundle, threads), inputs, batches=batches, iterations=iterations,
                       duration_s=duration_s, threads=threads, progress=progress)
    with open_session(bundle, threads) as session:
        actual = run_each(session, inputs)
        if images is not None:
            measured["accuracy"] = folder_accuracy(session, data, images, bundle.labels, bundle.spec, workstation)
    target = bundle.manifest.get("target") or {}
    budgets = Budgets.model_validate(target["budgets"]) if target.get("budgets") else None
    if budgets is not None:
        validate_budgets(budgets, f"bundle {bundle.name}")
    artifact = {
        "runtime": bundle.runtime,
        "precision": bundle.precision,
        "path": bundle.manifest["model"]["path"],
        "files": {rel: e["sha256"] for rel, e in bundle.manifest["files"].items() if rel.startswith("model/")},
        "size_bytes": sum(e["size"] for rel, e in bundle.manifest["files"].items() if rel.startswith("model/")),
        "versions": bundle.manifest.get("versions", {}),
        "bundle": bundle.name,
    }
    key = f"{target.get('name', bundle.runtime)}/{bundle.precision}"
    doc = result_doc(key, target.get("name", bundle.runtime), measured, system_record(threads, device_slug(device_name)),
                     settings, None, budgets, artifact=artifact, accuracy_elsewhere=workstation or {})
    doc["workstation_accuracy"] = workstation
    doc["golden"] = {
        "samples": len(inputs),
        "top1_agreement": float(np.mean(actual.argmax(1) == expected.argmax(1))),
        "max_abs_diff": float(np.abs(actual - expected).max()),
    }
    return doc
