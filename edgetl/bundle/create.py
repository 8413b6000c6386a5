"""Make a bundle from a run: ``runs/<name>/bundles/<target>-<slot>.tar.gz`` (workstation side; the
slot is the precision, or ``optimized`` for the pick of ``edgetl optimize``).

The bundle carries one compiled artifact of the target (what its backend's ``bundle_files`` says:
for TensorRT the ONNX the engine is built from, since engines only run on the GPU and TensorRT
version that built them), everything needed
to preprocess and label images, and golden inputs with the outputs the workstation got for them,
so the device can prove it computes the same thing (``edgetl verify``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgetl._io import sha256_file, sha256_json
from edgetl.bundle import prototype, signing
from edgetl.bundle.format import (
    FORMAT,
    SUFFIX,
    slug,
    tolerance,
    write_bundle,
)
from edgetl.config import target_names
from edgetl.errors import ArtifactError, BundleError, EdgetlError
from edgetl.rundir import Record, RunDir, RunPath
from edgetl.tasks.base import ASSETS
from edgetl.tensors import batch_size


class BundleRecord(Record):
    """One entry of the manifest's ``bundles`` section, keyed like ``compiled`` (``<target>/<slot or precision>``)."""

    SECTION: ClassVar[str] = "bundles"
    KEYED: ClassVar[bool] = True

    path: RunPath  # bundles/<target>-<slot or precision>.tar.gz, run-relative
    sha256: str
    size_bytes: int
    compiled: str  # the compiled key it packs
    precision: str
    runtime: str
    slot: str | None = None  # "optimized" for optimize's pick (the compiled entry's slot)
    name: str
    release: int
    signed_by: str | None = None  # key id of the Ed25519 key that signed it
    inputs: str  # what it was made from: an unchanged bundle is reused (and not shipped again)

GOLDEN_SAMPLES = 8
PROTOTYPE = prototype.KIND  # the slot, and --head's value, of a prototype-head bundle


def bundle_path(run: RunDir, target: str, slot: str) -> Path:
    """One file per target and slot (a precision, or ``optimized``): an fp16, an int8 and the optimized
    bundle of a target never overwrite each other."""
    return run.path / "bundles" / f"{target}-{slot}{SUFFIX}"


def choose_compiled(run: RunDir, target: str, slot: str | None = None) -> tuple[str, dict[str, Any]]:
    """The compiled entry to bundle: ``slot`` (a precision, or ``optimized`` for optimize's pick) if
    given, else the profile's precision (int8 for a bare runtime, as ``compile`` does), else the only
    one compiled."""
    from edgetl.compiler import OPTIMIZED, CompiledEntry

    compiled = {k: e.fields() for k, e in run.entries(CompiledEntry).items()}
    mine = {k: e for k, e in compiled.items() if e["target"] == target}
    if not mine:
        have = sorted({e.get("target") for e in compiled.values()})
        known = target in target_names() or Path(target).is_file()
        close = [] if known else difflib.get_close_matches(target, have, n=1, cutoff=0.75)
        # A typo of a compiled target: suggesting to compile the typo would only fail again.
        todo = f"did you mean {close[0]!r}?" if close else f"run `edgetl compile {run.path} --target {target}` first"
        raise BundleError(
            f"{run.path} has no artifact compiled for target {target!r} (compiled: {', '.join(have) or 'none'}): {todo}"
        )
    by_slot = {_slot(e): (k, e) for k, e in mine.items() if slot == PROTOTYPE or _slot(e) != PROTOTYPE}
    if slot is None:
        from edgetl.compiler import BARE_RUNTIME_PRECISION

        slot = _profile_precision(target) or BARE_RUNTIME_PRECISION
        if slot not in by_slot:
            if len(by_slot) > 1:
                raise BundleError(
                    f"{target} is compiled in several precisions ({', '.join(sorted(by_slot))}): choose one with "
                    f"--precision{' or --optimized' if OPTIMIZED in by_slot else ''}"
                )
            slot = next(iter(by_slot))
    if slot == OPTIMIZED and slot not in by_slot:
        raise BundleError(f"{target} has no optimized artifact in {run.path}: run `edgetl optimize {run.path} "
                          f"--target {target}` first")
    if slot not in by_slot:
        raise BundleError(
            f"{target} has no {slot} artifact in {run.path} (compiled: {', '.join(sorted(by_slot))}): "
            f"compile it first or choose another --precision"
        )
    return by_slot[slot]


def _slot(entry: dict[str, Any]) -> str:
    """The second half of the entry's key (``compiler.compiled_key``): "optimized" or its precision."""
    return entry.get("slot") or entry["precision"]


def _target_section(entry: dict[str, Any]) -> dict[str, Any]:
    """The bundle's ``target``: the profile the artifact was built for, with what the artifact itself
    runs with, since optimize's pick may use another runtime, precision and threads than the
    profile's. The profile's runtime options that the pick's runtime does not take (TensorRT's
    ``gpu_arch`` for an OpenVINO pick) are left out; the ones it shares (the CPU) are kept."""
    from edgetl.backends import get_backend
    from edgetl.config import TargetProfile

    profile = _profile(entry["target"])
    if profile is None:
        return {"name": entry["target"]}
    if entry.get("slot") in (None, PROTOTYPE):
        return profile  # what compile built from the profile: the profile as it is
    common = set(TargetProfile.model_fields) - {"options"}
    own = get_backend(entry["runtime"]).options_model.model_fields  # the profile dumps its options flat
    kept = {k: v for k, v in profile.items() if k in common or k in own}
    return {**kept, "runtime": entry["runtime"], "precision": entry["precision"],
            "threads": entry.get("threads") or profile.get("threads")}


def _profile_precision(target: str) -> str | None:
    profile = _profile(target)
    return profile.get("precision") if profile else None


def _profile(target: str) -> dict[str, Any] | None:
    """The target's device profile, or None for a bare runtime name (e.g. ``onnxruntime``)."""
    from edgetl.config import load_target

    try:
        return load_target(target).model_dump()
    except EdgetlError:
        return None


def create_bundle(run_path: str | Path, target: str, slot: str | None = None, *,
                  sign: str | os.PathLike | None = None, release: int | None = None,
                  head: str | None = None) -> Path:
    """Write ``runs/<name>/bundles/<target>-<slot>.tar.gz`` atomically; the manifest records it
    under ``bundles["<target>/<slot>"]`` (the compiled key). ``slot``: a precision, or ``optimized``
    for optimize's pick (``choose_compiled``).

    ``sign``: an Ed25519 private key file; its signature over the exact manifest bytes travels as
    ``manifest.sig``. ``release``: the bundle's release counter (default: UTC seconds now); a device
    refuses to go back to a lower one. ``head="prototype"``: the run's embedding model with a
    prototype head (``slot`` then a precision, or None for the profile's), compiled first when it
    is not current (edgetl/export/embedding.py): ``bundles/<target>-prototype.tar.gz``.
    """
    if release is not None and not 0 <= release < 2**63:
        raise BundleError(f"--release {release}: expected an integer from 0 to 2**63-1")
    if head not in (None, PROTOTYPE):
        raise BundleError(f"--head {head!r}: the only head is {PROTOTYPE!r}")
    private_key = signing.load_private_key(sign) if sign is not None else None  # a bad key fails before any work
    if head == PROTOTYPE:
        from edgetl.export.embedding import compile_prototype

        if slot == "optimized":
            raise BundleError("--head prototype builds its own embedding artifact: leave out --optimized")
        compile_prototype(run_path, target, slot)
        slot = PROTOTYPE
    run = RunDir.open(run_path, need="compiled")
    key, entry = choose_compiled(run, target, slot)
    for rel in entry["files"]:
        run.verify(rel)  # a tampered artifact is never packaged
    dest = bundle_path(run, target, _slot(entry))
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=run.path) as tmp:
        stage = Path(tmp)
        manifest = _stage(run, key, entry, stage, int(time.time()) if release is None else release)
        manifest = write_bundle(stage, manifest, dest, private_key=private_key,
                                where=f"{run.path}: the bundle for {entry['target']}")
    record = BundleRecord(
        path=run.rel(dest),
        sha256=sha256_file(dest),
        size_bytes=dest.stat().st_size,
        compiled=key,
        precision=entry["precision"],
        runtime=entry["runtime"],
        **({"slot": entry["slot"]} if entry.get("slot") else {}),
        name=manifest["name"],
        release=manifest["release"],
        signed_by=signing.key_id(private_key.public_key()) if private_key is not None else None,
        inputs=_inputs_hash(run, key, entry),
    )
    run.record(dest)
    run.set_record(record, key)
    return dest


def _inputs_hash(run: RunDir, key: str, entry: dict[str, Any]) -> str:
    """What a bundle is made of; an unchanged bundle is reused (and not shipped again)."""
    arts = run.manifest.get("artifacts", {})
    assets = (run.get("train") or {}).get("assets") or {}
    return sha256_json({"files": {f: arts.get(f) for f in entry["files"]}, "entry": entry, "format": FORMAT,
                        "workstation": _workstation(run, key, entry),
                        **({"assets": {n: arts.get(rel) for n, rel in assets.items()}} if assets else {})})


def up_to_date(run: RunDir, target: str, slot: str | None = None, *,
               sign: str | os.PathLike | None = None) -> Path | None:
    """The existing bundle of ``target`` (at ``slot``, chosen as ``create_bundle`` would) when it
    was made from the current artifact (and, with ``sign``, signed by that key), else None."""
    key, entry = choose_compiled(run, target, slot)
    try:
        record = run.entries(BundleRecord).get(key)
    except EdgetlError:  # a malformed record: the bundle is remade
        return None
    dest = bundle_path(run, target, _slot(entry))
    if not record or not dest.is_file() or sha256_file(dest) != record.sha256:
        return None
    if sign is not None and record.signed_by != signing.key_id(signing.load_private_key(sign).public_key()):
        return None
    if _inputs_hash(run, key, entry) != record.inputs:
        return None
    return dest


def candidate_bundle(run: RunDir, entry: dict[str, Any], dest: Path, *, hashes: dict[str, str], name: str,
                     sign: str | os.PathLike | None = None, release: int | None = None) -> Path:
    """A bundle of an artifact the manifest does not list (a candidate of ``edgetl optimize``, timed on
    a device): ``entry`` is CompiledEntry-shaped, its files are checked against ``hashes`` (run-relative
    path -> sha256) instead of the manifest, and the run's manifest is left as it was. ``name``: the
    bundle's name, so candidates go to their own folder on the device, never over its deployed bundle."""
    private_key = signing.load_private_key(sign) if sign is not None else None

    def verify(rel: str) -> Path:
        if rel not in hashes:
            return run.verify(rel)  # the exported ONNX a TensorRT bundle carries: recorded in the manifest
        path = run.inside(rel)
        if not path.is_file() or sha256_file(path) != hashes[rel]:
            raise ArtifactError(f"{path} is missing or no longer matches the sha256 it was built with: optimize again")
        return path

    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=run.path) as tmp:
        stage = Path(tmp)
        key = f"{entry['target']}/{_slot(entry)}"
        manifest = _stage(run, key, entry, stage, int(time.time()) if release is None else release, verify=verify,
                          name=name)
        write_bundle(stage, manifest, dest, private_key=private_key, where=f"{run.path}: the bundle for {entry['target']}")
    return dest


def _stage(run: RunDir, key: str, entry: dict[str, Any], stage: Path, release: int, *,
           verify: Callable[[str], Path] | None = None, name: str | None = None) -> dict[str, Any]:
    """Write the bundle's files into ``stage`` and return its manifest (``write_bundle`` lists, checks
    and writes it).
    ``verify``: how a run-relative file is checked before it is read (default: against the manifest)."""
    verify = verify or run.verify
    from edgetl.adapt.train import TrainRecord
    from edgetl.backends import get_backend

    train = run.require(TrainRecord)
    runtime = entry["runtime"]
    backend = get_backend(runtime)
    model_files, model_path = _copy_model(backend.bundle_files(entry, _export_path(run, entry)), stage / "model",
                                          verify)
    golden, inputs, outputs = _write_golden(run, entry, stage / "golden", verify)
    assets = _copy_assets(run, train.assets, stage / ASSETS)
    head = _write_head(run, entry, stage, verify) if entry.get("slot") == PROTOTYPE else None
    manifest = {
        "format": FORMAT,
        "name": name or f"{slug(run.path.name)}-{slug(entry['target'])}"[:64].rstrip("-."),
        "task": train.task,
        "release": release,
        "run": run.path.name,
        "target": _target_section(entry),
        "precision": entry["precision"],
        **({"slot": entry["slot"]} if entry.get("slot") else {}),  # other bundles' manifests stay as before
        "gpu_arch": entry.get("gpu_arch"),
        "runtime": {
            "name": runtime,
            "extra": backend.extra,
            "min_version": backend.min_versions,
            "built_with": (entry.get("versions") or {}).get(runtime),
        },
        "model": {"path": model_path, "files": model_files, "compiled": key, **backend.build_settings(entry)},
        "inputs": [s.to_dict() for s in inputs],
        "outputs": [s.to_dict() for s in outputs],
        "preprocess": train.preprocess,
        **({"assets": sorted(assets)} if assets else {}),  # an image bundle has none: its manifest is as before
        "labels": list(train.classes),
        # --task-head runs: each extra head's output and labels; other bundles' manifests stay as before
        **({"heads": [{"name": h["name"], "output": h["output"], "labels": h["classes"]} for h in train.heads]}
           if train.heads else {}),
        "golden": golden,
        "workstation": _workstation(run, key, entry),
        "versions": entry.get("versions") or {},
        **({"head": head} if head else {}),
        **({"lineage": _lineage(train.lineage)} if train.lineage else {}),  # a bundle without one is as before
    }
    return manifest


def _lineage(lineage: dict) -> dict:
    """The manifest's ``lineage``: the parent run (as a slug), its checkpoint's sha256, the labels added."""
    return {"parent": slug(lineage["parent"])[:64].rstrip("-."), "parent_checkpoint": lineage["parent_checkpoint"],
            "added": list(lineage["new_classes"])}


def _copy_assets(run: RunDir, assets: dict[str, str], out: Path) -> list[str]:
    """Copy the task's asset files (name -> run-relative path, each checked against its recorded
    hash) into ``out``; their names."""
    for name, rel in assets.items():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run.verify(rel), out / name)
    return list(assets)


def _copy_model(carried: tuple[list[str], str], out: Path, verify: Callable[[str], Path]) -> tuple[list[str], str]:
    """Copy the run-relative ``carried`` files (the list, and the one to load) into ``out``."""
    files, main = carried
    base = Path(main).parent
    names = []
    for rel in files:
        src = verify(rel)
        name = Path(rel).relative_to(base).as_posix() if Path(rel).is_relative_to(base) else Path(rel).name
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / name)
        names.append(f"model/{name}")
    return names, f"model/{Path(main).relative_to(base).as_posix()}"


def _write_golden(run: RunDir, entry: dict[str, Any], out: Path,
                  verify: Callable[[str], Path]) -> tuple[dict[str, Any], list, list]:
    """Golden feeds (the task picks them from the validation split) and the outputs the workstation got
    for them, one ``.npy`` per tensor: ``golden/in.<i>.npy``, ``golden/out.<i>.npy`` in the order of the
    model's tensors, so no file name ever comes from a tensor name. Also the model's tensor specs."""
    from edgetl.data.arrays import DataView

    view = DataView(run)
    if len(view.val_labels()) == 0:
        raise BundleError(f"{run.path} has no validation images: golden inputs cannot be chosen")
    feeds = view.task.golden_inputs(view, GOLDEN_SAMPLES)
    expected, source, batch = _expected_outputs(run, entry, feeds, verify)
    inputs, outputs = _with_batch(view.inputs, batch), _with_batch(_outputs(run, entry, view), batch)
    out.mkdir(parents=True)
    files: dict[str, dict[str, str]] = {"inputs": {}, "expected": {}}
    for kind, prefix, specs, arrays in (("inputs", "in", inputs, feeds), ("expected", "out", outputs, expected)):
        for i, spec in enumerate(specs):
            np.save(out / f"{prefix}.{i}.npy", np.ascontiguousarray(arrays[spec.name], dtype=spec.dtype), allow_pickle=False)
            files[kind][spec.name] = f"golden/{prefix}.{i}.npy"
    golden = {
        **files,
        "samples": batch_size(feeds),
        "expected_from": source["what"],
        "tolerance": {**tolerance(entry["precision"], source["kind"]), "precision": entry["precision"],
                      "source": source["kind"]},
    }
    return golden, inputs, outputs


def _with_batch(specs, batch: int | None) -> list:
    """The task's specs, with the artifact's fixed batch size when it has one."""
    return [dataclasses.replace(s, shape=(batch, *s.shape[1:])) if batch else s for s in specs]


def _export_path(run: RunDir, entry: dict[str, Any]) -> str:
    """The run-relative ONNX the entry was compiled from: the embedding model's for a prototype head."""
    if entry.get("slot") == PROTOTYPE:
        from edgetl.export.embedding import EmbeddingExportRecord

        return run.require(EmbeddingExportRecord).path
    from edgetl.export.onnx import ExportRecord

    return run.require(ExportRecord).path


def _outputs(run: RunDir, entry: dict[str, Any], view) -> list:
    """The model's output specs: the task's, or the embedding model's one ``embedding`` (batch, D)."""
    if entry.get("slot") != PROTOTYPE:
        return view.outputs
    from edgetl.export.embedding import EmbeddingExportRecord, embedding_spec

    return [embedding_spec(run.require(EmbeddingExportRecord).dim)]


def _artifact_session(run: RunDir, entry: dict[str, Any], verify: Callable[[str], Path]):
    """A session of the artifact itself, or of a stand-in ONNX on ONNX Runtime when it cannot run
    here; and {"kind": "same" or "proxy", "what": which, in words}."""
    from edgetl.backends import ONNX_RUNNER, get_backend

    backend = get_backend(entry["runtime"])
    if backend.available() and backend.can_run_here():
        path, kind = verify(entry["path"]), "same"
        what = f"the artifact on {entry['runtime']} {backend.version()} (workstation CPU)"
        load = backend.load
    else:
        backend = get_backend(ONNX_RUNNER)
        proxy = entry.get("estimate_with") or _export_path(run, entry)
        path, kind = verify(proxy), "proxy"
        what = f"{proxy} on {ONNX_RUNNER} {backend.version()}: {entry['runtime']} cannot run on the workstation"
        load = backend.load_as_specified  # the device's arithmetic, not this CPU's fused int8 kernels
    return load(path, threads=1), {"kind": kind, "what": what}


def _expected_outputs(run: RunDir, entry: dict[str, Any], feeds: dict[str, np.ndarray], verify: Callable[[str], Path]):
    """Outputs of the artifact itself, or of a stand-in ONNX on ONNX Runtime when it cannot run here;
    and the artifact's fixed batch size (None when dynamic)."""
    from edgetl.bundle.runner import run_each

    session, source = _artifact_session(run, entry, verify)
    with session:
        outputs = run_each(session, feeds)
        batch = next((s.shape[0] for s in session.inputs if isinstance(s.shape[0], int)), None)
    return outputs, source, batch


def _write_head(run: RunDir, entry: dict[str, Any], stage: Path, verify: Callable[[str], Path]) -> dict[str, Any]:
    """``head/prototypes.npy``: the class means of the training split's embeddings, computed with the
    artifact's own session (as the golden outputs are), so they match what the device computes; the
    manifest's ``head``."""
    from edgetl.data.arrays import DataView
    from edgetl.export.embedding import run_prototypes

    session, _ = _artifact_session(run, entry, verify)
    with session:
        rows, shots = run_prototypes(session, DataView(run))
    (stage / prototype.FILE).parent.mkdir(parents=True)
    np.save(stage / prototype.FILE, rows, allow_pickle=False)
    return {"kind": prototype.KIND, "file": prototype.FILE, "scale": prototype.DEFAULT_SCALE,
            "output": prototype.EMBEDDING, "shots": shots}


def _workstation(run: RunDir, key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Accuracy (compile stage) and latency per machine the run was benched on (bench stage), when known.

    Results brought back from devices (remote bench) are left out: they are measured *with* a bundle,
    and counting them would make every remote bench change, and re-ship, the bundle.
    """
    from edgetl.bench.run import DeviceBench

    latency = {}
    for device, section in run.entries(DeviceBench).items():
        if (section.system or {}).get("remote"):
            continue
        row = section.results.get(key)
        if row and row.status == "ok":
            latency[device] = {"cpu": (section.system or {}).get("cpu"), **row.model_dump(mode="json", exclude_unset=True)}
    return {"accuracy": entry.get("accuracy"), "latency": latency}
