"""The compile stage (``edgetl compile``): export, calibrate, quantize and build per target.

For every cell of the matrix targets x precisions it writes ``compiled/<target>/<precision>/``
atomically, measures the artifact's accuracy on the full validation split next to the FP32 PyTorch
reference, and records the cell in ``manifest["compiled"]["<target>/<precision>"]``.

The module is ``compiler`` rather than ``compile`` so that importing it never shadows the
``edgetl.compile`` function a notebook calls.

Choices:
- A target is a profile name from ``targets/`` (runtime, precision, threads, recipe and the
  runtime's own options, e.g. the GPU arch or the device's CPU, come from it) or a bare runtime name
  (precision ``int8`` unless ``precisions`` says otherwise).
- A cell whose inputs (ONNX sha256, runtime and its version, precision, recipe, runtime options)
  are unchanged and whose files still match their sha256 is not rebuilt unless ``force``.
- Calibration needs at least ``MIN_CALIBRATION_SAMPLES`` (10) training images; with fewer than the
  recipe asks, all of them are used and a warning says so.
- A failing cell is reported in its row and does not stop the others; what was compiled before
  stays (a cell only replaces its folder after its build *and* its evaluation succeeded).
"""

from __future__ import annotations

import dataclasses
import re
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgetl import __version__
from edgetl._io import atomic_dir, sha256_file, sha256_json
from edgetl.backends import ONNX_RUNNER, Compiled, get_backend, runtimes
from edgetl.config import CalibrationRecipe, load_recipe, load_target, name_list, target_names
from edgetl.errors import CompileError, ConfigError, EdgetlError, MissingDependencyError, UnknownNameError
from edgetl.rundir import Record, RunDir, RunPath
from edgetl.stages import Reporter, RichReporter, SilentReporter, StageResult
from edgetl.tensors import batch_size

PRECISIONS = ("fp32", "fp16", "int8")
BARE_RUNTIME_PRECISION = "int8"
_EVAL_BATCH = 32


@dataclasses.dataclass(frozen=True)
class Cell:
    """One artifact to build: a target (profile or bare runtime) at one precision."""

    target: str
    runtime: str
    precision: str
    recipe: CalibrationRecipe | None  # int8 only
    options: dict[str, Any]  # the profile's runtime options (backend.options_model), for compile
    threads: int | None

    @property
    def key(self) -> str:
        return f"{self.target}/{self.precision}"


class CompileAccuracy(BaseModel):
    """An artifact's accuracy on the full validation split, next to the FP32 PyTorch reference."""

    model_config = ConfigDict(extra="allow")

    n: int
    top1: float
    fp32_top1: float
    drop_pp: float
    agreement: float
    max_abs_diff: float
    estimated: bool = False  # run through a stand-in (its ONNX on ONNX Runtime CPU), not the artifact
    evaluated_with: str = ""


class CompiledEntry(Record):
    """One entry of the manifest's ``compiled`` section, keyed ``<target>/<slot or precision>``
    (``compiled_key``): ``<target>/<precision>`` for what ``compile`` builds, ``<target>/optimized``
    for the pick of ``edgetl optimize``, whose runtime may differ from the profile's."""

    SECTION: ClassVar[str] = "compiled"
    KEYED: ClassVar[bool] = True

    target: str
    runtime: str
    precision: str
    dir: RunPath
    path: RunPath  # the file a runtime loads
    files: list[RunPath]  # every file of the artifact (run-relative; hashed in ``artifacts``)
    estimate_with: RunPath | None = None
    size_bytes: int
    compile_s: float
    options: dict[str, Any] = Field(default_factory=dict)  # what the backend built with, and why
    versions: dict[str, str] = Field(default_factory=dict)
    gpu_arch: str | None = None
    calibration: str | None = None
    accuracy: CompileAccuracy
    fingerprint: str  # the inputs it was built from: the same fingerprint is not rebuilt
    # `edgetl optimize`'s pick (key `<target>/optimized`): its slot, the threads it was picked at and
    # its variant; None for every other entry (the key's second part is then the precision)
    slot: str | None = None
    threads: int | None = None
    variant: str | None = None


OPTIMIZED = "optimized"  # the slot of optimize's pick: compiled/<target>/optimized/, bundles/<target>-optimized.tar.gz


def compiled_key(entry: CompiledEntry | dict[str, Any]) -> str:
    """``<target>/<slot or precision>``: how the manifest's compiled, bench and bundles sections, the
    bundle and bench file names and the report all key one artifact of a target."""
    fields = entry if isinstance(entry, dict) else entry.model_dump()
    return f"{fields['target']}/{fields.get('slot') or fields['precision']}"


# -- planning: every name is checked before anything is built --------------------------------------
def plan(targets: str | Sequence[str], precisions: str | Sequence[str] | None = None, calibration: str | None = None,
         gpu_arch: str | None = None, threads: int | None = None) -> list[Cell]:
    targets, precisions = name_list("targets", targets), name_list("precisions", precisions)
    if gpu_arch is not None and not isinstance(gpu_arch, str):
        raise ConfigError(f"--gpu-arch {gpu_arch!r} must be a text like 'sm89'")
    if not targets:
        raise ConfigError("no target given: pass --target with a profile (see `edgetl targets`) or a runtime name")
    for p in precisions or []:
        if p not in PRECISIONS:
            raise UnknownNameError("precision", p, PRECISIONS)
    if gpu_arch is not None and not re.fullmatch(r"sm\d{2,3}", gpu_arch):
        raise ConfigError(f"--gpu-arch {gpu_arch!r} must look like sm89 (compute capability 8.9)")
    profiles = set(target_names())
    recipes: dict[str, CalibrationRecipe] = {}
    cells = []
    for name in targets:
        if name in profiles or name.endswith(".toml"):
            profile = load_target(name)
            runtime, default_precision = profile.runtime, profile.precision
            name = profile.name
        elif name in runtimes():
            profile, runtime, default_precision = None, name, BARE_RUNTIME_PRECISION
        else:
            raise UnknownNameError("target", name, [*profiles, *runtimes()])
        options = _options(runtime, profile.options if profile else {}, gpu_arch)
        for precision in precisions or [default_precision]:
            recipe = None
            if precision == "int8":
                source = calibration or (profile.calibration if profile else "default")
                recipe = recipes.get(source) or recipes.setdefault(source, load_recipe(source))
            cells.append(Cell(name, runtime, precision, recipe, options,
                              threads or (profile.threads if profile else None)))
    return list({c.key: c for c in cells}.values())  # a target named twice compiles once


def _options(runtime: str, profile_options: dict[str, Any], gpu_arch: str | None) -> dict[str, Any]:
    """The profile's runtime options, with --gpu-arch over them for a runtime that has a GPU arch."""
    options = dict(profile_options)
    if gpu_arch is not None and "gpu_arch" in get_backend(runtime).options_model.model_fields:
        options["gpu_arch"] = gpu_arch
    return options


# -- the stage ---------------------------------------------------------------------------------------
def compile(run_path: str | Path, targets: str | Sequence[str], precisions: str | Sequence[str] | None = None,  # noqa: A001
            calibration: str | None = None, gpu_arch: str | None = None, threads: int | None = None,
            force: bool = False, *, progress: bool = True, reporter: Reporter | None = None) -> CompileResults:
    """Compile the run's model for every target x precision; returns one result row per cell.

    ``targets`` and ``precisions``: lists of names, or one string as the CLI takes them ("host-cpu",
    "onnxruntime,openvino"). Bad names, recipes and run directories raise (``EdgetlError``) before anything is built; a cell
    that fails afterwards is returned with ``status="failed"`` and its ``error`` (the result's
    ``raise_for_errors`` turns those into one line). ``reporter`` (``edgetl.stages``) gets the
    progress; without one, a rich bar on stderr when ``progress``, else nothing.
    """
    from edgetl.export.onnx import export_run

    run = RunDir.open(run_path, need="train")
    cells = plan(targets, precisions, calibration, gpu_arch, threads)
    from edgetl.data.arrays import DataView

    view = DataView(run)  # one read of the split for the export and every cell
    onnx_path = export_run(run, view=view)
    ctx = _Context(run, onnx_path, view)
    if reporter is None:
        reporter = _stderr_reporter() if progress else SilentReporter()
    rows = CompileResults()
    reporter.start("compile", total=len(cells))
    for cell in cells:
        reporter.step("compile", f"{cell.key}: checking inputs")
        rows.append(_compile_cell(ctx, cell, force, reporter))
        reporter.advance("compile", f"{_DONE.get(rows[-1]['status'], 'failed')} {cell.key}")
    return rows


_DONE = {"ok": "built", "cached": "unchanged"}


class CompileResults(list, StageResult):
    """The compile stage's rows (one dict per cell, as before); failed cells are its errors."""

    error_class: ClassVar[type[EdgetlError]] = CompileError
    what_failed: ClassVar[str] = "could not be built"

    def errors(self) -> list[str]:
        return [f"{r['cell']}: {r['error']}" for r in self if r.get("status") == "failed"]


def _stderr_reporter():
    from rich.console import Console

    return RichReporter(Console(stderr=True))


class _Context:
    """What every cell shares: the run, its ONNX and its data view (arrays read once, kept)."""

    def __init__(self, run: RunDir, onnx_path: Path, view):
        self.run, self.onnx_path, self.view = run, onnx_path, view
        self.onnx_sha = sha256_file(onnx_path)
        self._calib: dict[str, dict[str, np.ndarray]] = {}  # recipe hash -> calibration feeds
        # (session, outputs) -> outputs with the task's: an embedding artifact's prototype head
        # (edgetl/export/embedding.py); None for a classifier
        self.head = None

    def calibration(self, recipe: CalibrationRecipe, warn) -> dict[str, np.ndarray]:
        """The task's calibration feeds for ``recipe`` (one read per recipe)."""
        key = sha256_json(recipe.model_dump())
        if key not in self._calib:
            feeds = self.view.task.calibration(self.view, recipe)
            n = batch_size(feeds)
            if n < recipe.samples:
                warn(f"recipe {recipe.name!r} asks for {recipe.samples} calibration samples; the training split "
                     f"has {n}, all of them are used")
            self._calib[key] = feeds
        return self._calib[key]


# Bumped when keep_float_nodes keeps more of a node float (2: its output edge too, and any node kind,
# not only Conv/Gemm), so builds and rankings made under the old meaning are not reused.
KEEP_FLOAT_SCHEME = 2


def _fingerprint(onnx_sha: str, cell: Cell, backend, of_task: dict[str, Any] | None = None) -> str:
    """What a cell is built from; the task's options (``task_options``) only where it has some, so
    the fingerprints of image runs stay what they were."""
    kept = cell.recipe is not None and bool(cell.recipe.keep_float_nodes)
    return sha256_json({
        "onnx": onnx_sha, "runtime": cell.runtime, "version": backend.version(), "precision": cell.precision,
        "recipe": cell.recipe.model_dump() if cell.recipe else None, "options": backend.fingerprint(cell.options),
        "edgetl": __version__, **(of_task or {}),
        **({"keep_float": KEEP_FLOAT_SCHEME} if kept else {}),  # what keeping a node float means (below)
    })


def task_options(run: RunDir, cell: Cell) -> dict[str, Any]:
    """What the run's task adds to the cell's compile options, each only where it has one:
    ``quantization`` (``Task.quantization``: its int8 scheme for the runtime) and ``max_dims``
    (``Task.max_dims``: the largest size of each dynamic axis, for an engine's profile)."""
    from edgetl.tasks import task_of_train

    task, record = task_of_train(run.manifest["train"], run)
    hint = dict(task.quantization(record, cell.runtime, cell.precision) or {})
    dims = dict(task.max_dims(record) or {})
    return {**({"quantization": hint} if hint else {}), **({"max_dims": dims} if dims else {})}


def fingerprints(run: RunDir, cells: list[Cell]) -> dict[str, str | None] | None:
    """Each cell's fingerprint (what its ``CompiledEntry`` records), None for a cell this machine
    cannot build; None as a whole while the export is not current (it would be redone first)."""
    from edgetl.export.onnx import current_export

    onnx_path = current_export(run)
    if onnx_path is None:
        return None
    onnx_sha, out = sha256_file(onnx_path), {}
    for cell in cells:
        backend = get_backend(cell.runtime)
        buildable = backend.available() and cell.precision in backend.precisions
        out[cell.key] = _fingerprint(onnx_sha, cell, backend, task_options(run, cell)) if buildable else None
    return out


def current_rows(run: RunDir, cells: list[Cell]) -> CompileResults | None:
    """The rows ``compile`` would return when every cell is already built from the same inputs
    (the rule ``compile`` applies per cell), else None: something would be built."""
    wanted = fingerprints(run, cells)
    if wanted is None:
        return None
    rows = CompileResults()
    for cell in cells:
        entry = _current(run, cell, wanted[cell.key]) if wanted[cell.key] else None
        if entry is None:
            return None
        rows.append({**_row(cell), **_summary(entry), "status": "cached"})
    return rows


def _row(cell: Cell) -> dict[str, Any]:
    return {"cell": cell.key, "target": cell.target, "runtime": cell.runtime, "precision": cell.precision}


def _compile_cell(ctx: _Context, cell: Cell, force: bool, reporter: Reporter) -> dict[str, Any]:
    row = _row(cell)
    try:
        backend = get_backend(cell.runtime)
        if not backend.available():
            raise MissingDependencyError(f"{cell.runtime} is not installed: pip install 'edgetl[{backend.extra}]'")
        if cell.precision not in backend.precisions:
            raise CompileError(f"{cell.runtime} cannot build {cell.precision}: it supports {', '.join(backend.precisions)}")
        fingerprint = _fingerprint(ctx.onnx_sha, cell, backend, task_options(ctx.run, cell))
        entry = _current(ctx.run, cell, fingerprint) if not force else None
        status = "cached"
        if entry is None:
            entry, status = _build(ctx, cell, backend, fingerprint, reporter), "ok"
        return {**row, **_summary(entry), "status": status}
    except EdgetlError as exc:
        return {**row, "status": "failed", "error": str(exc)}
    except Exception as exc:  # a bug or a runtime crash: this cell fails, the others still run
        return {**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def _current(run: RunDir, cell: Cell, fingerprint: str) -> CompiledEntry | None:
    """The manifest entry when it was built from the same inputs and its files are intact."""
    try:
        entry = run.entries(CompiledEntry).get(cell.key)
        if not entry or entry.fingerprint != fingerprint:
            return None
        for f in entry.files:
            run.verify(f)
    except EdgetlError:  # a malformed or tampered entry is rebuilt
        return None
    return entry


def cell_fingerprint(ctx: _Context, cell: Cell) -> str:
    """What ``cell`` is built from (its ``CompiledEntry.fingerprint``): the same one is not rebuilt."""
    return _fingerprint(ctx.onnx_sha, cell, get_backend(cell.runtime), task_options(ctx.run, cell))


def build_artifact(ctx: _Context, cell: Cell, out_dir: Path, reporter: Reporter) -> tuple[Compiled, dict[str, Any], float]:
    """Build ``cell`` into ``out_dir`` (replaced atomically, once the build *and* its evaluation
    succeeded) and measure its accuracy: (the artifact in ``out_dir``, its accuracy as
    ``CompiledEntry.accuracy`` holds it, compile seconds). Records nothing in the manifest."""
    backend = get_backend(cell.runtime)
    calibration = None
    if cell.precision == "int8":
        reporter.step("compile", f"{cell.key}: calibration images")
        calibration = ctx.calibration(cell.recipe, reporter.warn)
    of_task = task_options(ctx.run, cell)
    options = {**cell.options, "recipe": cell.recipe, "threads": cell.threads, **of_task}
    with atomic_dir(out_dir) as tmp:
        reporter.step("compile", f"{cell.key}: {cell.runtime} {cell.precision}")
        started = time.perf_counter()
        compiled = backend.compile(ctx.onnx_path, tmp, cell.precision, calibration, options)
        compile_s = time.perf_counter() - started
        if "quantization" in of_task:  # recorded whatever the backend reports: it is part of the entry's inputs
            compiled.options["quantization"] = of_task["quantization"]
        reporter.step("compile", f"{cell.key}: accuracy on the validation split")
        accuracy = _accuracy(ctx, backend, compiled, cell.threads)
    return _moved(compiled, tmp, out_dir), accuracy, compile_s


def _build(ctx: _Context, cell: Cell, backend, fingerprint: str, reporter: Reporter) -> CompiledEntry:
    run = ctx.run
    dest = run.path / "compiled" / cell.target / cell.precision
    moved, accuracy, compile_s = build_artifact(ctx, cell, dest, reporter)
    entry = entry_for(run, cell, moved, dest, accuracy, compile_s, fingerprint)
    record_entry(run, cell.key, entry)
    return entry


def entry_for(run: RunDir, cell: Cell, compiled: Compiled, out_dir: Path, accuracy: dict[str, Any], compile_s: float,
              fingerprint: str, **fields) -> CompiledEntry:
    """The manifest entry of an artifact built for ``cell`` into ``out_dir`` (``fields``: the
    optional ones, e.g. ``slot``)."""
    backend = get_backend(cell.runtime)
    files = [run.rel(f) for f in compiled.files]
    return CompiledEntry(
        target=cell.target, runtime=cell.runtime, precision=cell.precision,
        dir=run.rel(out_dir), path=run.rel(compiled.path), files=files,
        estimate_with=run.rel(compiled.estimate_with) if accuracy["estimated"] and compiled.estimate_with else None,
        size_bytes=sum(f.stat().st_size for f in compiled.files), compile_s=round(compile_s, 3),
        options=_jsonable(compiled.options), versions=_versions(backend, accuracy),
        gpu_arch=compiled.options.get("gpu_arch"),
        calibration=cell.recipe.name if cell.recipe else None,
        accuracy=accuracy, fingerprint=fingerprint, **fields,
    )


def record_entry(run: RunDir, key: str, entry: CompiledEntry) -> None:
    """The artifact's hashes and its ``compiled[key]`` entry, in one locked write."""
    hashes = entry_hashes(run, entry)
    with run.editing() as manifest:
        put_entry(manifest, key, entry, hashes)


def entry_hashes(run: RunDir, entry: CompiledEntry) -> dict[str, str]:
    return {f: sha256_file(run.path / f) for f in entry.files}


def put_entry(manifest: dict, key: str, entry: CompiledEntry | None, hashes: dict[str, str], folder: str = "") -> None:
    """``compiled[key]`` := ``entry`` and its files' hashes, inside a caller's locked edit; ``entry`` None
    removes the key and the hashes of everything under ``folder``."""
    artifacts = manifest.setdefault("artifacts", {})
    folder = entry.dir if entry is not None else folder
    for stale in [k for k in artifacts if k.startswith(folder + "/") and k not in hashes]:
        del artifacts[stale]  # files of the artifact this one replaced
    artifacts.update(hashes)
    if entry is not None:
        manifest.setdefault(CompiledEntry.SECTION, {})[key] = entry.dump()
    else:
        manifest.get(CompiledEntry.SECTION, {}).pop(key, None)


def _moved(compiled: Compiled, tmp: Path, dest: Path) -> Compiled:
    """The same artifact, with its paths in the final folder."""
    move = lambda p: dest / Path(p).relative_to(tmp) if p is not None else None  # noqa: E731
    return dataclasses.replace(compiled, path=move(compiled.path), files=[move(f) for f in compiled.files],
                               estimate_with=move(compiled.estimate_with))


_RECORDED = ("top1", "accuracy_drop_pp", "agreement")  # every task's, recorded as below (the drop as drop_pp)


def _accuracy(ctx: _Context, backend, compiled: Compiled, threads: int | None) -> dict[str, Any]:
    """The task's metrics on the full validation split (image classification: top-1, drop and
    agreement), in the artifact's own runtime, or estimated on ONNX Runtime CPU through
    ``estimate_with`` when the artifact cannot run here."""
    from edgetl.bench.accuracy import collect_outputs

    view = ctx.view
    if backend.can_run_here():
        session, evaluated_with, estimated = backend.load(compiled.path, threads), f"{backend.name} {backend.version()} CPU", False
        fallback = dict(getattr(session, "info", None) or {}).get("inference_precision_fallback")
        if fallback:  # a bf16/f16 hint this CPU cannot honour: measured in f32, an estimate of the device's
            evaluated_with, estimated = f"{evaluated_with} ({fallback})", True
    elif compiled.estimate_with is not None:
        ort = get_backend(ONNX_RUNNER)
        if not ort.available():
            raise MissingDependencyError(f"estimating {backend.name} accuracy needs {ONNX_RUNNER}: pip install 'edgetl[{ort.extra}]'")
        session = ort.load_as_specified(compiled.estimate_with, threads)
        evaluated_with = f"{ONNX_RUNNER} {ort.version()} CPU on {compiled.estimate_with.name}"  # "estimated" says it is an estimate: say it once
        estimated = True
    else:
        raise CompileError(f"{backend.name} artifacts cannot run here and have no ONNX to estimate their accuracy with")
    with session:
        outputs = collect_outputs(session, view.val_feeds(), _EVAL_BATCH)
        if ctx.head is not None:
            outputs = ctx.head(session, outputs)
    metrics = view.task.evaluate(outputs, view.val_labels(), view.reference(), view.record.classes)
    heads = view.labelled_heads()  # --task-head runs: each extra head's numbers under accuracy["heads"]
    by_head = {name: head_accuracy(m) for name, m in view.task.evaluate_heads(outputs, heads, view.reference()).items()} if heads else {}
    # the task's own metrics besides these (text: macro_f1; audio: false_accept_rate) and their
    # intervals, so a profile's gates read them like top-1
    own = {key: metrics[key] for m in view.task.metrics if m.name not in _RECORDED
           for key in (m.name, f"{m.name}_ci") if key in metrics}
    return {
        "n": metrics["n"], "top1": metrics["top1"], "fp32_top1": metrics["fp32_top1"],
        "drop_pp": round(metrics["drop_pp"], 4), "agreement": metrics["agreement"],
        "max_abs_diff": metrics["max_abs_diff"], **_drop_interval(metrics), **own, "estimated": estimated, "evaluated_with": evaluated_with,
        **({"heads": by_head} if by_head else {}),
    }


def head_accuracy(metrics: dict[str, Any]) -> dict[str, Any]:
    """An extra head's accuracy numbers as ``accuracy["heads"][NAME]`` records them."""
    return {"n": metrics["n"], "top1": metrics["top1"], "fp32_top1": metrics["fp32_top1"],
            "drop_pp": round(metrics["drop_pp"], 4), "agreement": metrics["agreement"], **_drop_interval(metrics)}


def _drop_interval(metrics: dict[str, Any]) -> dict[str, Any]:
    """The drop's 95% interval where the task gives one: an optimize candidate's accuracy gate needs it."""
    ci = metrics.get("drop_ci_pp")
    return {"drop_ci_pp": [round(float(v), 4) for v in ci]} if ci is not None else {}


def _versions(backend, accuracy: dict) -> dict[str, str]:
    versions = {backend.name: backend.version()}
    if accuracy["estimated"]:
        versions[ONNX_RUNNER] = get_backend(ONNX_RUNNER).version()
    return versions


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _summary(entry: CompiledEntry) -> dict[str, Any]:
    acc = entry.accuracy
    row = {"path": entry.path, "size_mb": entry.size_bytes / 1e6, "compile_s": entry.compile_s,
           "top1": acc.top1, "drop_pp": acc.drop_pp, "agreement": acc.agreement, "estimated": acc.estimated}
    extra = acc.model_extra or {}
    # the task's own metrics with their intervals (text: macro_f1; keyword spotting: false_accept_rate)
    row["task_metrics"] = {k: (v, extra[f"{k}_ci"]) for k, v in extra.items() if f"{k}_ci" in extra}
    row["heads"] = extra.get("heads") or {}  # --task-head runs: a row per extra head under the artifact's
    scheme, notes = entry.options.get("quantization") or {}, []
    if scheme.get("why"):  # the task's int8 scheme: what it keeps float, and why
        kept = ", ".join(f"{p}/*" for p in scheme.get("keep_float_prefixes", []))
        notes.append("int8: " + (f"keeps {kept} float: " if kept else "") + scheme["why"])
    if "engine" in entry.options:  # a TensorRT engine left to the device: say it in the row
        notes.append(f"engine {entry.options['engine']}")
    if notes:
        row["note"] = "; ".join(notes)
    return row


# -- the targets table ----------------------------------------------------------------------------
def target_rows() -> list[dict[str, Any]]:
    """Every profile, then the bare runtimes, with whether this machine can build and run them."""
    rows = []
    for name in target_names():
        try:
            p = load_target(name)
        except EdgetlError as exc:  # one broken user profile must not hide the others
            rows.append({"name": name, "runtime": "?", "error": str(exc)})
            continue
        rows.append({"name": p.name, "runtime": p.runtime, "precision": p.precision, "device": p.device,
                     "options": p.options, "threads": p.threads, "calibration": p.calibration,
                     "budgets": p.budgets.model_dump(exclude_none=True), "description": p.description,
                     "here": _availability(p.runtime)})
    for runtime in runtimes():
        rows.append({"name": runtime, "runtime": runtime, "precision": BARE_RUNTIME_PRECISION, "device": "",
                     "options": {}, "threads": None, "calibration": "default", "budgets": {},
                     "description": "bare runtime: any precision it supports, no budgets", "here": _availability(runtime)})
    return rows


def _availability(runtime: str) -> str:
    backend = get_backend(runtime)
    if not backend.available():
        return f"no: pip install 'edgetl[{backend.extra}]'"
    return "yes" if backend.can_run_here() else "build only (no GPU: accuracy estimated)"


# -- display -------------------------------------------------------------------------------------
def _metric_text(metrics: dict[str, Any], name: str) -> str:
    """``0.892 [0.850, 0.930]``: a task metric and its 95% interval, or "—"."""
    value, ci = metrics.get(name, (None, None))
    if value is None:
        return "—"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def summary_table(rows: list[dict[str, Any]]):
    """A rich table of the matrix (what ``edgetl compile`` prints)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="compiled artifacts", title_justify="left")
    own = sorted({name for r in rows for name in r.get("task_metrics") or {}})  # the task's own metrics
    for col, just in [("target", "left"), ("runtime", "left"), ("precision", "left"), ("size MB", "right"),
                      ("compile s", "right"), ("top-1", "right"), ("drop pp", "right"), ("agreement", "right"),
                      *[(name, "right") for name in own], ("status", "left")]:
        table.add_column(col, justify=just)
    notes: list[str] = []  # long explanations go under the table, so rows stay one line
    for r in rows:
        if r["status"] == "failed":
            notes.append(f"[red]{r['cell']} failed:[/] {escape(r['error'])}")
            table.add_row(r["target"], r["runtime"], r["precision"], "", "", "", "", "", *[""] * len(own),
                          f"[red]failed [{len(notes)}][/]")
            continue
        est = "*" if r["estimated"] else ""
        status = "built" if r["status"] == "ok" else "unchanged"
        if r.get("note"):
            notes.append(f"{r['cell']}: {escape(r['note'])}")
            status += f" [{len(notes)}]"
        table.add_row(r["target"], r["runtime"], r["precision"], f"{r['size_mb']:.2f}", f"{r['compile_s']:.1f}",
                      f"{r['top1']:.2%}{est}", f"{r['drop_pp']:+.2f}", f"{r['agreement']:.2%}",
                      *[_metric_text((r.get("task_metrics") or {}), name) for name in own], status)
        for name, head in (r.get("heads") or {}).items():
            table.add_row("", "", f"  head {escape(name)}", "", "", f"{head['top1']:.2%}{est}", f"{head['drop_pp']:+.2f}",
                          f"{head['agreement']:.2%}", *[""] * len(own), "")
    if any(r.get("estimated") for r in rows):
        notes.append("* estimated: the artifact cannot run here; its ONNX twin ran on ONNX Runtime CPU")
    table.caption = "\n".join(f"[{i}] {n}" if not n.startswith("*") else n for i, n in enumerate(notes, 1)) or None
    table.caption_justify = "left"
    return table
