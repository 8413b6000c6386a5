"""The bench stage: every compiled artifact of a run, on this machine, next to PyTorch FP32.

``bench(run)`` verifies each artifact's sha256, measures the PyTorch eager FP32 reference and then
each artifact in a fresh process (``edgetl.bench.measure``), evaluates accuracy on the full
validation split in the artifact's own runtime, applies the target profile's budgets, writes one
result file per artifact and a summary in ``manifest["bench"][<device>]``.

Result file ``runs/<name>/bench/<target>/<precision>@<device>.json``, schema ``edgetl.bench/1``
(a device benching a bundle writes the same document with the same code, see ``result_doc``)::

    {
      "schema": "edgetl.bench/1",
      "created": "2025-01-01T12:00:00+00:00",    # UTC
      "edgetl": "0.1.0",
      "key": "host-cpu/int8",                    # "<target>/<precision>"; the reference: "pytorch-eager/fp32"
      "target": "host-cpu",                      # profile or bare runtime name
      "reference": false,                        # true for the PyTorch eager FP32 row
      "device": {...},                           # edgetl.bench.system.system_record(): name, cpu (model, flags,
                                                 # cores), memory, os, python, gpus, runtimes (versions)
      "settings": {"threads", "batches", "iterations", "duration_s", "warmup_iters", "warmup_s", "isolated"},
                                                 # the reference adds "warmup_max_s", "max_s", "median_precision"
      "artifact": {"runtime", "precision", "path", "files": {relpath: sha256}, "size_bytes", "versions"},
      "load": {"load_ms", "first_run_ms", "first_inference_ms"},
      "memory": {"method", "baseline_mb", "process_peak_mb", "session_peak_mb", "isolated"},
      "latency": [{"batch", "iterations", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms",
                   "max_ms", "throughput_ips", "warmup_iterations", "warmup_ms", "samples_ms": [...],
                   "p50_ci_ms": [lo, hi],                # 95% interval of the median (order statistics)
                   "stop": "iterations" | "duration" | "time cap, median within +-5%" | ...,
                   "contention": {"method", "others_cores", "cpus", "threads", "busy"},  # see bench.latency
                   "busy": bool,                         # this row or the reference's row was busy
                   "speedup_vs_reference": float | null, # reference p50 / this p50, same batch
                   "speedup_ci": [lo, hi] | null}],      # from the two medians' intervals
      "skipped_batches": [{"batch", "reason"}],
      "accuracy": {"n", "num_classes", "top1", "top1_ci", "fp32_top1", "fp32_top1_ci", "drop_pp",
                   "drop_ci_pp", "interval", "fraction_of_fp32", "agreement", "max_abs_diff", "nonfinite",
                   "top5"?, "top5_ci"?, "fp32_top5"?, "per_class_changed": [...]},   # *_ci: 95% [lo, hi]
      "reference_latency": {"<batch>": {"p50_ms", "p90_ms", "p50_ci_ms", "busy"}} | null,
      "reference_method": {"runtime", "process", "threads": {"intra_op", "inter_op"}, "warmup",
                           "iterations", "stop_rule", "timed": {"<batch>": {"iterations", "stop"}},
                           "summary"} | null,   # how the speed-ups' denominator was measured
      "gates": {"status": "PASS" | "FAIL" | "UNDECIDED" | "not measured here" | "n/a", "budgets": {...},
                "checks": [...], "failed": [...], "undecided": [...]}     # rules: edgetl.bench.gates
    }

A target that cannot run here (TensorRT without a GPU) gets a row with ``"status": "unavailable"``,
its ``reason`` and ``accuracy_estimate``: the compile stage's accuracy, estimated on its ONNX.

A bundle benched on a device (``edgetl.bundle.runner.bench``) writes the same document plus
``golden`` (agreement with the workstation's logits) and ``workstation_accuracy`` (the bundle
manifest's); its ``accuracy`` is null, or with ``--data`` the labelled folder's
(``edgetl.bench.labelled``: ``per_class`` with intervals, ``skipped``, and ``drop_pp``/``drop_ci_pp``
against the workstation's FP32 top-1 with ``drop_against`` saying so).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgetl import __version__
from edgetl._io import write_json
from edgetl.adapt.train import TrainRecord
from edgetl.backends import get_backend, runtimes
from edgetl.backends import torch as torch_reference
from edgetl.bench import gates as gates_mod
from edgetl.bench.measure import evaluate_heads, heads_job, measure, measure_isolated, resolve_loader
from edgetl.bench.settings import BenchSettings
from edgetl.bench.system import busy_warning, cpu_record, device_slug, system_record
from edgetl.compiler import CompiledEntry
from edgetl.config import Budgets, TargetProfile, load_target, name_list, target_names
from edgetl.errors import ConfigError, EdgetlError, GatesFailed, UnknownNameError  # noqa: F401 (GatesFailed: re-exported)
from edgetl.rundir import Record, RunDir, RunPath, printable_key
from edgetl.stages import Bars, Reporter, RichReporter, SilentReporter, StageResult

SCHEMA = "edgetl.bench/1"  # the result document's schema id; bump it when ``BenchDocument``'s shape changes
REFERENCE_KEY = f"{torch_reference.NAME}/fp32"
# The reference gets the artifacts' rule (warm-up >= 50 runs and >= 0.2 s, then --iterations runs), in
# its own fresh process, at the same threads. Only when that would take long (PyTorch eager is 10-100x
# slower than an int8 artifact; EfficientNet-Lite0 at batch 8 takes ~3 s a run on a loaded 2-core VM)
# is it cut: the warm-up at 10 s, the timed runs at 60 s once the median's 95% interval is within
# +-5% of it (at 120 s whatever the interval). ``stop`` in each latency row says which rule ended it.
REFERENCE_TIMING = {"warmup_max_s": 10.0, "max_s": 60.0, "median_precision": 0.05}


class BenchFailed(EdgetlError):
    """Some artifacts could not be measured (each row says why); the others were."""


# -- the records: the result document and the manifest's summary -----------------------------------
class _Open(BaseModel):
    # Nested parts are written by the harness (edgetl.bench.measure, latency, accuracy, gates) and
    # documented in the module docstring; the record types the fields the stages read.
    model_config = ConfigDict(extra="allow")


class BenchGates(_Open):
    status: str
    budgets: dict[str, Any] = Field(default_factory=dict)
    checks: list[dict[str, Any]] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)
    undecided: list[str] = Field(default_factory=list)


class BenchDocument(_Open):
    """One ``edgetl.bench/1`` result document (the module docstring describes every field).

    A measured row (``status`` "ok") has every measurement; an unavailable or failed row has its
    ``reason`` (and, unavailable, the compile stage's ``accuracy_estimate``)."""

    schema_id: Literal["edgetl.bench/1"] = Field(SCHEMA, alias="schema")
    created: str | None = None
    edgetl: str | None = None
    key: str
    target: str
    reference: bool = False
    status: Literal["ok", "unavailable", "error"]
    reason: str | None = None
    device: dict[str, Any]
    settings: dict[str, Any] | None = None  # BenchSettings.record(); the reference adds its time caps
    artifact: dict[str, Any]
    load: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None
    latency: list[dict[str, Any]] = Field(default_factory=list)
    skipped_batches: list[dict[str, Any]] = Field(default_factory=list)
    accuracy: dict[str, Any] | None = None
    accuracy_estimate: dict[str, Any] | None = None
    reference_latency: dict[str, dict[str, Any]] | None = None
    reference_method: dict[str, Any] | None = None
    gates: BenchGates | None = None
    file: str | None = None  # run-relative path of the saved document (added when saved)

    @field_validator("device")
    @classmethod
    def _named(cls, device: dict[str, Any]) -> dict[str, Any]:
        """The device's name keys the document everywhere (the report's columns, the manifest's rows)."""
        if not isinstance(device.get("name"), str) or not device["name"]:
            raise ValueError("needs a name (text): the machine it was measured on")
        return device

    def dump(self) -> dict[str, Any]:
        """The JSON document, with only the fields it was given (an unavailable row stays short)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True) | {"schema": SCHEMA}

    @classmethod
    def read(cls, path: Path) -> BenchDocument:
        """A saved document, or an ``EdgetlError`` naming the file and what is wrong with it."""
        import json

        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            if isinstance(exc, ValidationError):
                first = exc.errors()[0]
                exc = f"field '{'.'.join(map(printable_key, first['loc']))}': {first['msg'].removeprefix('Value error, ')}"
            raise EdgetlError(f"bench result {path} is unreadable ({exc}): bench again") from None


class BenchSummary(_Open):
    """One row of ``manifest["bench"][<device>]["results"]``: the few numbers of a result document."""

    status: str | None = None
    runtime: str | None = None
    precision: str | None = None
    reason: str | None = None
    file: RunPath | None = None
    batch: int | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    throughput_ips: float | None = None
    speedup_vs_reference: float | None = None
    busy: bool | None = None
    top1: float | None = None
    top1_ci: list[float] | None = None
    drop_pp: float | None = None
    drop_ci_pp: list[float] | None = None
    agreement: float | None = None
    memory_mb: float | None = None
    gate: str | None = None


class DeviceBench(Record):
    """The manifest's ``bench[<device>]`` entry: the machine, when, and one summary per compiled key."""

    SECTION: ClassVar[str] = "bench"
    KEYED: ClassVar[bool] = True

    system: dict[str, Any] | None = None  # cpu, flags, cores, board, runtimes (and remote: the device's URL)
    settings: dict[str, Any] | None = None  # a remote bench's settings
    updated: str | None = None
    results: dict[str, BenchSummary] = Field(default_factory=dict)


@dataclass
class BenchResults(StageResult):
    """What the bench stage returns: one result document per row; it decides pass/fail."""

    run: Path
    device: str
    system: dict
    rows: list[dict] = field(default_factory=list)  # result documents, reference first
    warnings: list[str] = field(default_factory=list)
    error_class: ClassVar[type[EdgetlError]] = BenchFailed
    what_failed: ClassVar[str] = "could not be benched"

    def failed_gates(self) -> list[str]:
        return [f"{r['key']}: {'; '.join(r['gates']['failed'])}" for r in self.rows
                if r.get("status") == "ok" and r["gates"]["status"] == gates_mod.FAIL]

    def undecided_gates(self) -> list[str]:
        """Budgets the data could not decide (UNDECIDED): they do not fail ``--check``, but say so."""
        return [f"{r['key']}: {'; '.join(r['gates'].get('undecided') or [])}" for r in self.rows
                if r.get("status") == "ok" and r["gates"].get("undecided")]

    def errors(self) -> list[str]:
        return [f"{r['key']}: {r['reason']}" for r in self.rows if r.get("status") == "error"]

    def checked_gates(self) -> list[str]:
        """Artifacts measured here against budgets: what a passing ``--check`` vouches for."""
        return [r["key"] for r in self.rows if r.get("status") == "ok" and (r.get("gates") or {}).get("budgets")]

    def unchecked_gates(self) -> list[str]:
        """Artifacts with budgets that could not run here: their gates say nothing about this run."""
        return [r["key"] for r in self.rows if r.get("status") == "unavailable" and (r.get("gates") or {}).get("budgets")]



@dataclass
class DocumentResult(StageResult):
    """One result document (a bundle benched here or on a device over SSH) as a stage result."""

    doc: dict

    def failed_gates(self) -> list[str]:
        gates = self.doc.get("gates") or {}
        return ["; ".join(gates.get("failed") or [])] if gates.get("status") == gates_mod.FAIL else []


# -- options ---------------------------------------------------------------------------------------
def default_threads() -> int:
    """Physical cores this process may use: one thread per core is what latency-bound runs want."""
    cpu = cpu_record()
    return max(1, min(cpu["physical_cores"] or cpu["usable_cores"] or 1, cpu["usable_cores"] or 1))


def select(compiled: dict[str, CompiledEntry], targets: str | Sequence[str] | None) -> list[str]:
    """Keys of ``compiled`` for the given target names or ``target/precision`` keys (all when None).
    A prototype-head artifact (slot ``prototype``) outputs embeddings, not the task's logits: it is
    benched as its bundle (``edgetl bench BUNDLE``, through the head), never here."""
    compiled = {k: e for k, e in compiled.items() if e.slot != "prototype"}
    targets = name_list("targets", targets)
    if not targets:
        return list(compiled)
    keys: list[str] = []
    for t in targets:
        hits = [k for k in compiled if k == t or compiled[k].target == t]
        if not hits:
            raise UnknownNameError("compiled target", t, {*compiled, *(e.target for e in compiled.values())})
        keys += [k for k in hits if k not in keys]
    return keys


def budgets_for(entry: CompiledEntry) -> Budgets | None:
    """The target profile's budgets; ``None`` for a bare runtime target (no profile, no gates)."""
    name = entry.target
    if isinstance((entry.model_extra or {}).get("profile"), dict):
        profile = TargetProfile.model_validate(entry.model_extra["profile"])
    elif name in target_names():
        profile = load_target(name)
    elif name in runtimes():
        return None
    else:
        raise ConfigError(
            f"target {name!r} was compiled from a profile that is not in ./targets or the shipped ones: "
            f"restore targets/{name}.toml to bench it with its budgets"
        )
    gates_mod.validate_budgets(profile.budgets, f"target profile {name!r}")
    return profile.budgets


def _availability(runtime: str) -> str | None:
    """``None`` when artifacts of ``runtime`` can run here, else why not."""
    if runtime not in runtimes():
        return f"runtime {runtime!r} is not installed here (no installed package registers it)"
    try:
        backend = get_backend(runtime)
    except (ImportError, EdgetlError) as exc:
        return f"{runtime} backend unavailable ({exc})"
    if not backend.available():
        return f"{runtime} is not installed: pip install 'edgetl[{backend.extra}]'"
    if not backend.can_run_here():
        return f"needs {backend.runs_on}"
    return None


# -- the stage -------------------------------------------------------------------------------------
def bench(
    run_path: str | Path,
    targets: str | Sequence[str] | None = None,
    device_name: str | None = None,
    batches: Sequence[int] | None = None,
    threads: int | None = None,
    iterations: int | None = None,
    duration_s: float | None = None,
    check: bool = False,
    *,
    isolate: bool | None = None,
    settings: BenchSettings | None = None,
    console=None,
    reporter: Reporter | None = None,
) -> BenchResults:
    """Bench the run's compiled artifacts on this machine; see the module docstring for the files.

    ``settings`` (``BenchSettings``; its defaults when None) with ``batches``, ``threads``,
    ``iterations``, ``duration_s`` and ``isolate`` over it where given. ``threads`` is one count for
    every row (default: this machine's usable physical cores), so the rows compare. ``isolate``
    measures each artifact in a fresh process (recommended: see ``edgetl.bench.measure``). ``reporter`` (``edgetl.stages``) gets the progress and warnings;
    without one, ``console`` (a rich Console) shows them, else nothing does. ``check`` raises
    ``GatesFailed`` (exit code 1) after writing everything when a budget fails.
    """
    targets = name_list("targets", targets)
    run = RunDir.open(run_path, need="compiled")
    compiled = run.entries(CompiledEntry)
    run.entries(DeviceBench)  # earlier results are merged into after measuring: a malformed one fails now
    if not compiled:
        raise ConfigError(f"{run.path} has no compiled artifacts: run `edgetl compile {run.path}` first")
    settings = BenchSettings.parse(settings, batches=batches, threads=threads,
                                   iterations=iterations, duration_s=duration_s, isolated=isolate)
    keys = select(compiled, targets)
    # An artifact of a runtime no installed package registers (a plugin since uninstalled) gets an
    # "unavailable" row, as one that needs a GPU does: its profile cannot even be read without it.
    budgets = {k: budgets_for(compiled[k]) if compiled[k].runtime in runtimes() else None for k in keys}
    for k in keys:  # every artifact before any measuring: a tampered one stops the bench (exit 2)
        for rel in compiled[k].files or [compiled[k].path]:
            run.verify(rel)

    settings = settings.with_threads(settings.threads or default_threads())
    threads = settings.threads
    system = system_record(threads, device_slug(device_name))
    results = BenchResults(run.path, system["name"], system)
    if reporter is None:
        reporter = RichReporter(console) if console is not None else SilentReporter()
    if (busy := busy_warning(system)) is not None:
        results.warnings.append(busy)
        reporter.warn(busy)

    with tempfile.TemporaryDirectory(prefix="edgetl-bench-") as tmp, reporter.measuring() as progress:
        why_not = {k: _availability(compiled[k].runtime) for k in keys}  # None: runs here
        runnable = [k for k in keys if why_not[k] is None]
        # Nothing selected runs here (a TensorRT target on a CPU machine): no validation data to
        # prepare, no reference to time, only "unavailable" rows.
        measurer = _Measurer(run, settings.record(), progress, Path(tmp)) if runnable else None
        reference = _bench_reference(run, measurer, results, reporter) if runnable else None
        ref_latency = _latency_by_batch(reference)
        ref_method = reference and reference["method"]
        for key in keys:
            entry = compiled[key]
            stub = {"key": key, "target": entry.target, "artifact": _artifact(run, entry),
                    "device": {"name": results.device}}
            if (reason := why_not[key]) is not None:
                unmeasured = {"status": gates_mod.NA, "checks": [], "failed": [],
                              "budgets": budgets[key].model_dump(exclude_none=True) if budgets[key] else {}}
                results.rows.append(save_result(run, {**stub, "status": "unavailable", "reason": reason,
                                                      "accuracy_estimate": entry.accuracy.model_dump(),
                                                      "gates": unmeasured}))
                continue
            try:
                measured = measurer(key, "edgetl.bench.measure:artifact_opener",
                                    {"runtime": entry.runtime, "path": str(run.path / entry.path), "threads": threads})
            except Exception as exc:  # one failing artifact does not stop the others
                results.rows.append(save_result(run, {**stub, **_failure(exc, reporter)}))
                continue
            doc = result_doc(key, entry.target, measured, system, settings.record(), ref_latency, budgets[key],
                             artifact=stub["artifact"], reference_method=ref_method)
            results.rows.append(save_result(run, doc))

    if check:
        results.raise_for_gates()
    return results


class _Measurer:
    """One measurement of a session, in a fresh process (or here), on the run's validation split."""

    def __init__(self, run: RunDir, settings: dict, progress: Bars, tmp: Path):
        from edgetl.data.arrays import DataView

        self.view = view = DataView(run)
        self.data = {"inputs": view.val_feeds(), "labels": view.val_labels(), "reference": view.reference()}
        self.task, self.classes = view.task.name, list(view.record.classes)
        self.heads = heads_job(view.labelled_heads())  # --task-head runs: every head's accuracy too
        self.settings, self.isolate, self.progress = settings, settings["isolated"], progress
        self.timing = {k: settings[k] for k in ("batches", "iterations", "duration_s", "warmup_iters", "warmup_s",
                                                "threads")}
        self.files: dict = {}
        if self.isolate:  # the child memory-maps these instead of receiving copies; names stay in the JSON job
            self.files["labels"] = _save(tmp / "labels.npy", self.data["labels"])
            for kind in ("inputs", "reference"):
                self.files[kind] = {name: _save(tmp / f"{kind}.{i}.npy", arr)
                                    for i, (name, arr) in enumerate(self.data[kind].items())}

    def __call__(self, key: str, loader: str, kwargs: dict, with_accuracy: bool = True, **timing) -> dict:
        names = ["inputs", "labels", "reference"] if with_accuracy else ["inputs"]
        timing = {**self.timing, **timing, "task": self.task, "classes": self.classes,
                  **({"heads": self.heads} if self.heads and with_accuracy else {})}
        show = self.progress.callback(key)
        try:
            if self.isolate:
                return measure_isolated(loader, kwargs, {n: self.files[n] for n in names}, progress=show, **timing)
            arrays = [self.data[n] for n in names]
            return measure(resolve_loader(loader)(**kwargs), *arrays, progress=show, **timing)
        finally:
            self.progress.done_loading(key)


def _save(path: Path, array: np.ndarray) -> str:
    np.save(path, array)
    return str(path)


def _failure(exc: Exception, reporter: Reporter) -> dict:
    """A row's error: one line for the table; a bug's full text goes to the reporter, not the row."""
    if isinstance(exc, EdgetlError):
        return {"status": "error", "reason": str(exc)}
    reporter.warn(f"{type(exc).__name__} while measuring:\n{exc}")
    return {"status": "error", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}


def _bench_reference(run: RunDir, measurer: _Measurer, results: BenchResults, reporter: Reporter) -> dict | None:
    """PyTorch eager FP32 at the same threads (where torch is installed), under ``REFERENCE_TIMING``.
    Its accuracy *is* the reference logits: no second pass over the validation split. The result
    carries ``method``: how it was measured, for every speed-up computed from it."""
    if importlib.util.find_spec("torch") is None:
        return None
    ckpt = run.require(TrainRecord).checkpoint
    artifact = {"runtime": "torch", "precision": "fp32", "path": ckpt, "size_bytes": (run.path / ckpt).stat().st_size,
                "versions": {"torch": torch_reference.version()}}
    try:
        measured = measurer(REFERENCE_KEY, "edgetl.backends.torch:reference_opener",
                            {"run_path": str(run.path), "threads": results.system["threads"]}, with_accuracy=False,
                            **REFERENCE_TIMING)
    except Exception as exc:  # the artifacts are still worth measuring, without speed-ups
        results.rows.append(save_result(run, {"key": REFERENCE_KEY, "target": torch_reference.NAME, "artifact": artifact,
                                              "device": {"name": results.device}, "reference": True,
                                              **_failure(exc, reporter)}))
        return None
    data = measurer.data
    measured["accuracy"] = measurer.view.task.evaluate(data["reference"], data["labels"], data["reference"],
                                                       measurer.classes)
    if measurer.heads:
        measured["accuracy"]["heads"] = evaluate_heads(measurer.view.task, data["reference"], measurer.heads,
                                                       data["reference"])
    measured["accuracy"]["evaluated_with"] = "the cached reference logits (this model, FP32)"
    settings = {**measurer.settings, **REFERENCE_TIMING}
    measured["method"] = reference_method(settings, measured)
    doc = result_doc(REFERENCE_KEY, torch_reference.NAME, measured, results.system, settings, None, None,
                     artifact=artifact, reference_method=measured["method"])
    doc["reference"] = True
    results.rows.append(save_result(run, doc))
    return measured


def reference_method(settings: dict, measured: dict) -> dict:
    """How the PyTorch reference was measured, in the bench document and under the table."""
    threads = measured.get("threads_info") or {"intra_op": settings["threads"]}
    warmup = (f">= {settings['warmup_iters']} runs and >= {settings['warmup_s']:g} s "
              f"(cut at {settings['warmup_max_s']:g} s, >= 5 runs)")
    planned = (f"{settings['duration_s']:g} s" if settings.get("duration_s") is not None
               else f"{settings['iterations']} runs")
    stop = planned if settings.get("duration_s") is not None else (
        f"{planned}; past {settings['max_s']:g} s, stop once the median's 95% CI is within "
        f"+-{settings['median_precision']:.0%} (at {2 * settings['max_s']:g} s in any case)")
    timed = {str(r["batch"]): {"iterations": r["iterations"], "stop": r.get("stop")} for r in measured["latency"]}
    runs = ", ".join(f"b{b}: {t['iterations']} runs" for b, t in timed.items())
    process = "a fresh process" if settings.get("isolated") else "this process"
    summary = (f"PyTorch eager FP32 (torch.inference_mode) in {process}, {threads.get('intra_op')} intra-op + "
               f"{threads.get('inter_op', '?')} inter-op thread(s); warm-up {warmup}; timed {runs}")
    return {"runtime": "PyTorch eager FP32, torch.inference_mode", "process": process, "threads": threads,
            "warmup": warmup, "iterations": planned, "stop_rule": stop, "timed": timed, "summary": summary}


def _latency_by_batch(measured: dict | None) -> dict[int, dict] | None:
    if measured is None:
        return None
    return {row["batch"]: {"p50_ms": row["p50_ms"], "p90_ms": row["p90_ms"], "p50_ci_ms": row.get("p50_ci_ms"),
                           "busy": bool((row.get("contention") or {}).get("busy"))} for row in measured["latency"]}


def _speedup(row: dict, ref: dict | None) -> None:
    """Reference p50 / this p50, its interval from the two medians' intervals, and the busy flag."""
    row["busy"] = bool((row.get("contention") or {}).get("busy")) or bool(ref and ref.get("busy"))
    row["speedup_vs_reference"] = ref["p50_ms"] / row["p50_ms"] if ref else None
    ref_ci, ci = (ref or {}).get("p50_ci_ms"), row.get("p50_ci_ms")
    row["speedup_ci"] = [ref_ci[0] / ci[1], ref_ci[1] / ci[0]] if ref_ci and ci and min(ci) > 0 else None


def _artifact(run: RunDir, entry: CompiledEntry) -> dict:
    files = entry.files or [entry.path]
    recorded = run.manifest.get("artifacts", {})
    return {
        "runtime": entry.runtime,
        "precision": entry.precision,
        "path": entry.path,
        "files": {f: recorded.get(f) for f in files},
        "size_bytes": sum((run.path / f).stat().st_size for f in files if (run.path / f).is_file()),
        "versions": entry.versions,
        "estimate_with": entry.estimate_with,
    }


def result_doc(key: str, target: str, measured: dict, system: dict, settings: dict,
               reference_latency: dict[int, dict] | None, budgets: Budgets | None, *, artifact: dict,
               reference_method: dict | None = None, accuracy_elsewhere: dict | None = None) -> dict:
    """The ``edgetl.bench/1`` document for one measured session (see the module docstring).
    ``accuracy_elsewhere``: see ``edgetl.bench.gates.evaluate_gates``."""
    for row in measured["latency"]:
        _speedup(row, (reference_latency or {}).get(row["batch"]))
    doc = {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "edgetl": __version__,
        "key": key,
        "target": target,
        "reference": False,
        "status": "ok",
        "device": system,
        "settings": settings,
        "artifact": artifact,
        "load": measured["load"],
        "memory": measured["memory"],
        "latency": measured["latency"],
        "skipped_batches": measured.get("skipped_batches", []),
        "accuracy": measured.get("accuracy"),
        "reference_latency": {str(b): v for b, v in reference_latency.items()} if reference_latency else None,
        "reference_method": reference_method,
    }
    doc["gates"] = gates_mod.evaluate_gates(budgets, doc, accuracy_elsewhere=accuracy_elsewhere)
    return doc


def result_path(run: RunDir, key: str, device: str) -> Path:
    target, precision = key.split("/", 1)
    return run.path / "bench" / target / f"{precision}@{device}.json"


def summary_of(doc: dict) -> dict:
    """The few numbers of a result that the manifest keeps (batch 1, or the smallest batch measured)."""
    out = {"status": doc.get("status"), "runtime": (doc.get("artifact") or {}).get("runtime"),
           "precision": (doc.get("artifact") or {}).get("precision")}
    if doc.get("status") != "ok":
        return {**out, "reason": doc.get("reason")}
    first = min(doc["latency"], key=lambda r: r["batch"]) if doc["latency"] else {}
    acc = doc.get("accuracy") or {}
    return {**out, "file": doc.get("file"), "batch": first.get("batch"), "p50_ms": first.get("p50_ms"),
            "p90_ms": first.get("p90_ms"), "p99_ms": first.get("p99_ms"), "throughput_ips": first.get("throughput_ips"),
            "speedup_vs_reference": first.get("speedup_vs_reference"), "busy": first.get("busy"),
            "top1": acc.get("top1"), "top1_ci": acc.get("top1_ci"), "drop_pp": acc.get("drop_pp"),
            "drop_ci_pp": acc.get("drop_ci_pp"), "agreement": acc.get("agreement"),
            "memory_mb": doc["memory"].get("session_peak_mb"), "gate": doc["gates"]["status"]}


def save_result(run: RunDir, doc: dict) -> dict:
    """Keep one row: a measured document goes to its result file (atomically, sha256 recorded); every
    row's summary is merged into ``manifest["bench"][<device>]``, so benching one target keeps the
    others' rows. A device's result brought back over SSH is saved the same way."""
    doc = BenchDocument.model_validate(doc).dump()  # the one shape, checked before anything is written
    if doc.get("status") == "ok":
        path = result_path(run, doc["key"], doc["device"]["name"])
        write_json(path, doc)
        run.record(path)
        doc["file"] = run.rel(path)
    system = doc["device"]
    merge_summary(run, doc, system_summary(system) if "cpu" in system else None)
    return doc


def system_summary(system: dict) -> dict:
    """The few facts of a system record that the manifest keeps next to a device's results."""
    return {"cpu": system["cpu"].get("model"), "flags": system["cpu"].get("flags"),
            "cores": system["cpu"].get("physical_cores"), "board": system.get("board"), "runtimes": system.get("runtimes")}


def merge_summary(run: RunDir, doc: dict, system: dict | None, **fields) -> None:
    """Put ``doc``'s summary in its device's ``DeviceBench`` (``system`` and ``fields`` replace the
    recorded ones when given), under the manifest lock."""
    device = doc["device"]["name"]
    with run.editing() as manifest:
        old = run.entries(DeviceBench, manifest).get(device) or DeviceBench()
        recorded = old.fields()
        summary = BenchSummary.model_validate(summary_of(doc))
        record = DeviceBench.model_validate({
            **recorded, **({"system": system} if system is not None else {}), **fields,
            "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "results": {**old.results, doc["key"]: summary},
        })
        manifest.setdefault(DeviceBench.SECTION, {})[device] = record.dump()
