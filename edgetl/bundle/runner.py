"""The device side of a bundle: open, verify, predict, bench, build.

Needs numpy, Pillow and the bundle's runtime only (never torch), so ``pip install
"edgetl[onnxruntime]"`` on a Raspberry Pi is enough. A bundle is used as a ``.tar.gz`` (checked and
extracted once into a cache folder keyed by the archive's sha256) or as an extracted folder; either
way its signature, manifest and every file's hash are checked each time it is opened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgetl._cache import cache_root
from edgetl._io import sha256_file
from edgetl.bench.settings import BenchSettings
from edgetl.bundle import prototype
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
from edgetl.bundle.manifest import MAX_DIM
from edgetl.bundle.signing import SignatureStatus
from edgetl.data.layout import IMAGE_SUFFIXES
from edgetl.errors import BundleError, DataError, MissingDependencyError
from edgetl.tasks import DEFAULT_TASK, get_task, require_modules
from edgetl.tasks.base import TaskRecord
from edgetl.tensors import Feeds, batch_size, concat, take


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
    def slot(self) -> str:
        """What the workstation keys this artifact by under its target: ``optimized`` or the precision."""
        return self.manifest.get("slot") or self.precision

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def threads(self) -> int | None:
        return (self.manifest.get("target") or {}).get("threads")

    def file(self, rel: str) -> Path:
        if rel not in self.manifest["files"]:
            raise BundleError(f"{self.source}: the manifest names {rel!r} but does not list it: rebuild the bundle")
        return self.root / rel

    @property
    def task(self):
        """The bundle's task, once the modules its preprocessing needs are installed here."""
        return require_modules(get_task(self.manifest["task"]))

    @property
    def record(self) -> TaskRecord:
        return TaskRecord.of_bundle(self.manifest, self.root)

    @functools.cached_property
    def prototypes(self) -> np.ndarray | None:
        """The prototype head's rows (labels, D), checked: shape, finite, normalised; None without a head."""
        head = self.manifest.get("head")
        if head is None:
            return None
        dim = self.manifest["outputs"][0]["shape"][1]
        rows = self._npy(head["file"], {"dtype": "float32", "shape": ["classes", dim]}, len(self.labels))
        why = prototype.problem(rows, len(self.labels), dim)
        if why:
            raise BundleError(f"{self.source}: {head['file']} {why}: rebuild the bundle or enrol its classes again")
        return rows

    def headed(self, outputs: Feeds) -> dict[str, np.ndarray]:
        """The model's outputs, with the prototype head's ``logits`` where the bundle has one."""
        head = self.manifest.get("head")
        return dict(outputs) if head is None else prototype.with_head(outputs, self.prototypes, head["scale"])

    def golden(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(input feeds, expected outputs) by tensor name, checked against the manifest's specs;
        never unpickles."""
        g, m = self.manifest["golden"], self.manifest
        samples = g["samples"]
        read = lambda specs, files: {t["name"]: self._npy(files[t["name"]], t, samples) for t in specs}  # noqa: E731
        return read(m["inputs"], g["inputs"]), read(m["outputs"], g["expected"])

    def _npy(self, rel: str, tensor: dict[str, Any], samples: int) -> np.ndarray:
        """A C-order .npy of ``tensor``'s dtype holding ``samples`` rows of its shape (a named dimension:
        any size): header and file size checked before any data is read."""
        path = self.file(rel)
        dtype = np.dtype(tensor["dtype"])
        wanted = (samples, *tensor["shape"][1:])
        bad = f"{self.source}: {rel} is not a plain {dtype} .npy array of shape {tuple(wanted)}"
        with open(path, "rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f"npy format version {version}")
                got, fortran_order, got_dtype = read_header(fh)
            except ValueError as exc:
                # numpy's reasons span lines and may quote the header: its first line, bounded
                reason = (str(exc).splitlines() or ["unreadable header"])[0][:200]
                raise BundleError(f"{bad} ({reason}): refusing it") from None
            fits = len(got) == len(wanted) and all(g == w if isinstance(w, int) else 1 <= g <= MAX_DIM
                                                   for g, w in zip(got, wanted, strict=False))
            if got_dtype != dtype or fortran_order or not fits:
                raise BundleError(f"{bad} (it holds {got_dtype}{' Fortran-order' if fortran_order else ''} {tuple(got)}): "
                                  "rebuild the bundle")
            if fh.tell() + math.prod(got) * dtype.itemsize != path.stat().st_size:
                raise BundleError(f"{bad} (its size does not match its header): rebuild the bundle")
            return np.fromfile(fh, dtype=dtype).reshape(got)


def open_bundle(path: str | os.PathLike, *, allow_unsigned: bool | None = None) -> Bundle:
    """Check a bundle (archive or folder) and return it; refuses anything unsigned where signatures
    are required, unsafe or tampered. ``allow_unsigned`` None: ``signing.unsigned_allowed()``."""
    path = Path(path)
    if os.path.isdir(path):  # os.path: a name too long for the file system does not exist, no OSError
        _refuse_run_folder(path)
        return _assets_checked(Bundle.of(path, load_folder(path, allow_unsigned=allow_unsigned), path))
    if not os.path.isfile(path):
        raise BundleError(f"bundle {path} does not exist")
    root = cache_root() / "bundles" / sha256_file(path)[:24]
    if (root / MANIFEST).is_file():
        with contextlib.suppress(BundleError):  # a damaged or foreign cache entry: extract the archive again
            if _cached_head(root) == read_head(path):
                return _assets_checked(Bundle.of(root, load_folder(root, allow_unsigned=allow_unsigned), path))
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(root.parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable")
    except OSError as exc:  # below a file, a link to nowhere, not writable
        raise BundleError(f"cannot use the bundle cache {cache_root()} ({exc.strerror}): point EDGETL_CACHE at a "
                          "writable folder") from None
    return _assets_checked(Bundle.of(root, unpack_archive(path, root, allow_unsigned=allow_unsigned), path))


def _assets_checked(bundle: Bundle) -> Bundle:
    """``bundle`` once its task has judged its asset files (``check_assets``, where a task has one):
    they are rules the preprocessing runs (a tokenizer's), so verify refuses a hostile one before
    ``ship`` makes the bundle current, not the first ``predict``. A prototype head's rows likewise."""
    _ = bundle.prototypes  # a NaN or unnormalised row: refused here, by every command
    check = getattr(get_task(bundle.manifest["task"]), "check_assets", None)
    if check is not None:
        try:
            check(bundle.record)
        except DataError as exc:
            raise BundleError(f"{bundle.source}: {exc}") from None
    return bundle


def _refuse_run_folder(path: Path) -> None:
    """A run folder is the usual wrong guess for a bundle: name the command that makes one from it."""
    manifest = Path(path) / "manifest.json"
    if not Path(path).is_dir() or is_bundle(path) or not manifest.is_file():
        return
    try:
        run_manifest = json.loads(manifest.read_text(encoding="utf-8"))
        if "format" in run_manifest or not {"schema", "artifacts", "train", "compiled"} & set(run_manifest):
            return  # not a run's manifest either: the bundle check says what is wrong
        compiled = run_manifest.get("compiled") or {}
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError, RecursionError):
        return
    target = next((e.get("target") for e in compiled.values() if isinstance(e, dict)), None) or "T"
    raise BundleError(f"{path} is a run folder, not a bundle: edgetl bundle {path} --target {target}, "
                      f"then verify the .tar.gz it writes")


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
    # A backend need not list every flavour: without an entry no minimum is known, and the golden
    # outputs (verify) decide whether this runtime reads the artifact.
    need = (rt.get("min_version") or {}).get(flavour)
    if need and version_tuple(have) < version_tuple(need):
        raise BundleError(
            f"bundle {bundle.name} needs {flavour} >= {need} (it was built with {rt.get('built_with')}), "
            f'this machine has {have}: pip install -U "edgetl[{backend.extra}]"'
        )
    return backend


def open_session(bundle: Bundle, threads: int | None = None):
    """A Session on this machine's runtime, after what the runtime must do first on a device
    (``Backend.prepare``: TensorRT builds, or reuses, its engine). With a prototype head, its ``run``
    gives the head's ``logits`` too, so every command reads it like a classifier's."""
    backend = require_runtime(bundle)
    session = backend.load(backend.prepare(bundle), threads or bundle.threads)
    head = bundle.manifest.get("head")
    return session if head is None else prototype.HeadSession(session, bundle.prototypes, head["scale"])


def run_each(session, feeds: Feeds) -> dict[str, np.ndarray]:
    """One sample at a time: every artifact accepts batch 1 (some have a fixed batch)."""
    return concat(session.run(take(feeds, slice(i, i + 1))) for i in range(batch_size(feeds)))


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
    worst = 0.0
    for name, want_all in expected.items():
        got_all = actual.get(name)
        if got_all is None or got_all.shape != want_all.shape:
            raise BundleError(
                f"{bundle.source}: output {name!r} has shape {None if got_all is None else got_all.shape} on this "
                f"device, {golden['expected'][name]} has {want_all.shape}: the artifact does not match its bundle"
            )
        for i, (got, want) in enumerate(zip(got_all.astype(np.float64), want_all.astype(np.float64), strict=True)):
            allowed = tol["atol"] + tol["rtol"] * float(np.abs(want).max())
            diff = np.abs(got - want)
            worst = max(worst, float(diff.max() / allowed))
            if not np.all(diff <= allowed):
                raise BundleError(f"{bundle.source}: golden sample {i} ({_golden_input(bundle, i)}): output {name!r} "
                                  f"{_where(bundle, golden['expected'][name], got, want, diff)} (|diff| {diff.max():.4f} > tolerance {allowed:.4f} "
                                  f"for {bundle.precision}): this device's {bundle.runtime} does not reproduce the "
                                  "workstation's results")
    return {
        "bundle": bundle.name,
        "source": str(bundle.source),
        "runtime": f"{bundle.runtime} {require_runtime(bundle).version()}",
        "precision": bundle.precision,
        "signature": str(bundle.signature),
        "files_checked": len(bundle.manifest["files"]) + 1,
        "golden_samples": batch_size(inputs),
        "top1_agreement": _agreement(bundle, actual, expected),
        "worst_diff_over_tolerance": round(worst, 4),
        "ok": True,
    }


def _agreement(bundle: Bundle, actual: Feeds, expected: Feeds) -> float:
    """How often this device's top answer (the task's ``postprocess``) is the workstation's."""
    top = lambda outputs: [p[0].index for p in bundle.task.postprocess(bundle.headed(outputs), bundle.record, 1)]  # noqa: E731
    return float(np.mean(np.equal(top(actual), top(expected))))


def _golden_input(bundle: Bundle, i: int) -> str:
    """Which golden sample, as files: "golden/in.0.npy[3]"."""
    return ", ".join(f"{rel}[{i}]" for rel in bundle.manifest["golden"]["inputs"].values())


def _where(bundle: Bundle, file: str, got: np.ndarray, want: np.ndarray, diff: np.ndarray) -> str:
    """The worst value of one sample's output, named by its label when the output is one score per label."""
    j = int(diff.argmax())
    labels = bundle.labels
    place = f"for {_label(labels, j)!r}" if got.shape == (len(labels),) else f"at {np.unravel_index(j, got.shape)}"
    wanted = f" ({_label(labels, int(want.argmax()))!r} on the workstation)" if got.shape == (len(labels),) else ""
    return f"{place}{wanted} is {got.flat[j]:.4f}, {file} says {want.flat[j]:.4f}"


def _label(labels: list[str], index: int) -> str:
    return labels[index] if 0 <= index < len(labels) else str(index)


# -- predict --------------------------------------------------------------------------------------
def image_files(target: str | os.PathLike) -> list[Path]:
    """An image, or every image under a folder (sorted, recursive). Listed, never opened: a FIFO or
    a device named like an image is caught by ``not_a_file`` before anything reads it."""
    target = Path(target)
    if os.path.isdir(target):  # os.path: a name too long for the file system does not exist, no OSError
        files = sorted(p for p in target.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
        if not files:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {target}")
        return files
    if not os.path.lexists(target):
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


def predict(path: str | os.PathLike, images: str | os.PathLike | Sequence[str | os.PathLike], top: int = 3,
            threads: int | None = None, stdin: IO[str] | None = None) -> list[dict]:
    """Top-k labels with probabilities for each sample the arguments name (the task's
    ``predict_samples``): an image, every image in a folder, or each of several; a text task's
    strings, text files (one sample per line) or ``-`` (the lines of ``stdin``).

    One row per sample, in the order given (a folder's sorted), keyed ``"image"`` for images and
    ``"sample"`` for other tasks; a bundle with task heads adds ``"heads"``: each head's top-k by name; a sample that cannot be read (corrupt, truncated, not a regular
    file) gets ``"top": []`` and an ``"error"`` saying why, and the others go on. A path that does
    not exist is one ``DataError`` before anything runs.
    """
    args = [os.fspath(images)] if isinstance(images, str | os.PathLike) else [os.fspath(p) for p in images]
    check_argument_order(Path(path), Path(args[0]))
    bundle = open_bundle(path)
    task, record = bundle.task, bundle.record
    key = "image" if task.name == DEFAULT_TASK else "sample"
    samples = task.predict_samples(args, stdin)
    results = []
    with open_session(bundle, threads) as session:
        for name, sample in samples:
            try:
                # a file sample is stat-ed first: a FIFO or a device is never opened (a text is just text)
                files = getattr(task, "sample_kind", "file") == "file"
                why = not_a_file(Path(sample)) if files and os.path.lexists(sample) else None
                if why:
                    raise DataError(f"{sample}: {why}")
                feeds = task.preprocess([sample], record)
            except DataError as exc:
                results.append({key: name, "top": [], "error": str(exc)})
                continue
            outputs = session.run(feeds)
            (answer,) = task.postprocess(outputs, record, top)
            row = {key: name, "top": [dataclasses.asdict(p) for p in answer]}
            if record.heads:  # --task-head bundles: every extra head's answers too, by head name
                row["heads"] = {head: [dataclasses.asdict(p) for p in rows[0]]
                                for head, rows in task.head_predictions(outputs, record, top).items()}
            results.append(row)
    return results


# -- bench ----------------------------------------------------------------------------------------
def bench(
    path: str | os.PathLike,
    *,
    batches: tuple[int, ...] | list[int] | None = None,
    threads: int | None = None,
    iterations: int | None = None,
    duration_s: float | None = None,
    device_name: str | None = None,
    data: str | os.PathLike | None = None,
    progress=None,
    settings: BenchSettings | None = None,
) -> dict[str, Any]:
    """Bench a bundle on this machine with the bench stage's harness: its result document
    (``edgetl.bench.run.SCHEMA``).

    Latency is timed on the golden inputs (real preprocessed validation images); ``golden`` says how
    closely this device reproduces the workstation's logits. ``accuracy`` is measured on ``data``, a
    labelled folder or CSV (``edgetl.bench.labelled``); without it, it is null and the accuracy
    budget reads "not measured here" next to the workstation's measurement
    (``workstation_accuracy``). The target profile's budgets are applied as gates. ``settings``
    (``BenchSettings``, its defaults when None) with the keyword values over it where given.
    """
    from edgetl.bench.gates import validate_budgets
    from edgetl.bench.labelled import folder_accuracy, labelled_images
    from edgetl.bench.measure import measure
    from edgetl.bench.run import default_threads, result_doc
    from edgetl.bench.system import device_slug, system_record
    from edgetl.config import Budgets

    settings = BenchSettings.parse(settings, batches=batches, threads=threads,
                                   iterations=iterations, duration_s=duration_s, isolated=False)
    bundle = open_bundle(path)
    require_runtime(bundle)  # a missing runtime fails before any timing
    images = labelled_images(data, bundle.labels, bundle.task) if data is not None else None  # so does a bad folder
    workstation = (bundle.manifest.get("workstation") or {}).get("accuracy")
    settings = settings.with_threads(settings.threads or bundle.threads or default_threads())
    threads = settings.threads
    inputs, expected = bundle.golden()
    measured = measure(lambda: open_session(bundle, threads), inputs, batches=settings.batches,
                       iterations=settings.iterations, duration_s=settings.duration_s, warmup_iters=settings.warmup_iters,
                       warmup_s=settings.warmup_s, threads=threads, progress=progress)
    with open_session(bundle, threads) as session:
        actual = run_each(session, inputs)
        if images is not None:
            measured["accuracy"] = folder_accuracy(session, data, images, bundle.task, bundle.record, workstation,
                                                   enrolled=(bundle.manifest.get("head") or {}).get("enrolled", []))
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
    key = f"{target.get('name', bundle.runtime)}/{bundle.slot}"
    doc = result_doc(key, target.get("name", bundle.runtime), measured, system_record(threads, device_slug(device_name)),
                     settings.record(), None, budgets, artifact=artifact, accuracy_elsewhere=workstation or {})
    doc["workstation_accuracy"] = workstation
    doc["golden"] = {
        "samples": batch_size(inputs),
        "top1_agreement": _agreement(bundle, actual, expected),
        "max_abs_diff": max(float(np.abs(actual[k].astype(np.float64) - v).max()) for k, v in expected.items()),
    }
    return doc
