"""Everything a report shows, gathered from a run directory into one JSON-able dict."""

from __future__ import annotations

import datetime as dt
import json
import shlex

import numpy as np

from edgetl import __version__
from edgetl.adapt.train import TrainRecord
from edgetl.bench.run import SCHEMA as BENCH_SCHEMA
from edgetl.bench.run import BenchDocument, DeviceBench
from edgetl.bundle.create import BundleRecord
from edgetl.compiler import CompiledEntry
from edgetl.errors import EdgetlError
from edgetl.export.onnx import ExportRecord
from edgetl.report.decide import DEFAULT_PROFILE, FAIL, NO_BUDGETS, PASS, UNDECIDED, decisions, next_commands
from edgetl.report.optimize import collect as optimize_records
from edgetl.rundir import RunDir

# 2: leads with "decisions", adds "bundles", "history", "validation" and "next"; "optimize" (target ->
# OptimizeRecord, empty when the run has none) was added within 2: readers that ignore it are unaffected.
SCHEMA = "edgetl.report/2"
STAGES = {  # manifest section -> the command that creates it ({run}: the run directory)
    "train": "edgetl train --data IMAGES --out {run}",
    "export": "edgetl compile {run} --target " + DEFAULT_PROFILE,
    "compiled": "edgetl compile {run} --target " + DEFAULT_PROFILE,
    "bench": "edgetl bench {run}",
}
# Above this many classes the confusion matrix is unreadable as a picture and too big for report.json.
CONFUSION_MAX_CLASSES = 40


def _bench_docs(run: RunDir, notes: list[str]) -> dict[str, list[dict]]:
    """Result documents per device: the files under bench/, plus the manifest's rows that have no
    file (artifacts not available on that device, or that failed)."""
    devices: dict[str, dict[str, dict]] = {}
    for path in sorted((run.path / "bench").glob("*/*@*.json")):
        try:
            doc = BenchDocument.read(path)
        except EdgetlError as exc:
            schema = _schema_of(path)
            notes.append(f"skipped {run.rel(path)}: " + (f"schema {schema!r}, this edgetl reads {BENCH_SCHEMA}"
                                                          if schema not in (None, BENCH_SCHEMA) else str(exc)))
            continue
        doc.file = run.rel(path)
        devices.setdefault(doc.device["name"], {})[doc.key] = doc.dump()
    for device, section in run.entries(DeviceBench).items():
        for key, summary in section.results.items():
            if summary.status != "ok" and key not in devices.get(device, {}):
                devices.setdefault(device, {})[key] = {
                    "key": key, "status": summary.status, "reason": summary.reason,
                    "artifact": {"runtime": summary.runtime, "precision": summary.precision},
                }
    return {d: sorted(docs.values(), key=lambda r: (not r.get("reference"), r["key"])) for d, docs in sorted(devices.items())}


def _schema_of(path) -> str | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc.get("schema") if isinstance(doc, dict) else None


def collect(run: RunDir) -> tuple[dict, list[str]]:
    """(report data, notes about what is missing or was skipped)."""
    manifest = run.manifest
    train, export = run.section(TrainRecord, manifest), run.section(ExportRecord, manifest)
    compiled = {k: e.fields() for k, e in run.entries(CompiledEntry, manifest).items()}
    bundles = run.entries(BundleRecord, manifest)
    notes: list[str] = []
    quoted = shlex.quote(str(run.path))
    missing = [f"{stage} (run `{cmd.format(run=quoted)}`)" for stage, cmd in STAGES.items() if not manifest.get(stage)]
    bench = _bench_docs(run, notes)
    if manifest.get("bench") and not bench:
        notes.append("the manifest lists bench results but no result files were found under bench/")
    rows = decisions(compiled, bench)
    data = {
        "schema": SCHEMA,
        "run": manifest.get("name", run.path.name),
        "path": str(run.path),
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "edgetl": __version__,
        "missing": missing,
        "decisions": rows,
        "next": next_commands(str(run.path), manifest, rows),
        "bundles": [{"target": key.split("/")[0], **record.fields()} for key, record in bundles.items()],
        "history": _history(run, notes),
        "validation": _validation(run, train, bench, rows, notes) if train else None,
        "train": train.fields() if train else None,
        "export": export.fields() if export else None,
        "compiled": compiled,
        "bench": bench,
        "optimize": optimize_records(run, manifest, notes),  # target -> OptimizeRecord (edgetl/report/optimize.py)
    }
    return data, notes


def _history(run: RunDir, notes: list[str]) -> list[dict] | None:
    """Per-epoch loss and accuracy written by the train stage (train/history.json)."""
    path = run.path / "train" / "history.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        notes.append(f"training curves left out: {run.rel(path)} is unreadable ({exc})")
        return None


def _validation(run: RunDir, train: TrainRecord, bench: dict[str, list[dict]], rows: list[dict],
                notes: list[str]) -> dict | None:
    """Per-class top-1 and the confusion matrix of the FP32 model on the validation split, with the
    per-class top-1 of each decided artifact (from its bench result's classes that moved)."""
    from edgetl.data.arrays import load_split, reference_logits

    try:
        labels = np.array([label for _, label in load_split(run)["val"]], np.int64)
        predicted = reference_logits(run).argmax(axis=1)
    except (EdgetlError, OSError, ValueError) as exc:
        notes.append(f"per-class accuracy and confusion matrix left out: {exc}")
        return None
    classes = [str(c) for c in train.classes]
    k = max(len(classes), int(labels.max(initial=-1)) + 1, int(predicted.max(initial=-1)) + 1)
    classes += [str(i) for i in range(len(classes), k)]
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    counts = confusion.sum(axis=1)
    fp32 = [float(confusion[i, i] / n) if n else None for i, n in enumerate(counts)]
    artifacts = {}
    docs = {(device, d["key"]): d for device, ds in bench.items() for d in ds}
    for row in rows:
        doc = docs.get((row["device"], row["artifact"]))
        if row["verdict"] in (PASS, FAIL, UNDECIDED, NO_BUDGETS) and doc:
            moved = {c["index"]: c["top1"] for c in (doc.get("accuracy") or {}).get("per_class_changed") or []}
            name = row["artifact"] if len(bench) == 1 else f"{row['artifact']} on {row['device']}"
            artifacts[name] = [moved.get(i, fp32[i]) for i in range(k)]
    return {
        "split": "validation", "n": int(counts.sum()), "classes": classes,
        "counts": [int(n) for n in counts], "fp32_top1": fp32, "artifacts_top1": artifacts,
        "confusion": confusion.tolist() if k <= CONFUSION_MAX_CLASSES else None,
    }


def scalars(section: dict | None, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """A stage's section as (name, value) rows: nested dicts one level deep, long lists summarised."""
    rows: list[tuple[str, str]] = []
    for key, value in (section or {}).items():
        if key in skip or value is None:
            continue
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", _short(v)) for k, v in value.items() if v is not None]
        else:
            rows.append((key, _short(value)))
    return rows


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 8:
        return f"{len(value)} items: {', '.join(map(str, value[:8]))}, …"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def compile_rows(compiled: dict) -> list[dict]:
    rows = []
    for key, entry in compiled.items():
        acc = entry.get("accuracy") or {}
        versions = entry.get("versions") or {}
        rows.append({
            "artifact": key,
            "runtime": entry.get("runtime", ""),
            "precision": entry.get("precision", ""),
            "size MB": f"{entry['size_bytes'] / 1e6:.2f}" if entry.get("size_bytes") is not None else "—",
            "compile s": f"{entry['compile_s']:.1f}" if entry.get("compile_s") is not None else "—",
            "calibration": entry.get("calibration") or "—",
            "top-1": f"{acc['top1'] * 100:.1f}%" if acc.get("top1") is not None else "—",
            "drop pp": f"{acc['drop_pp']:+.2f}" if acc.get("drop_pp") is not None else "—",
            "agree": f"{acc['agreement'] * 100:.1f}%" if acc.get("agreement") is not None else "—",
            "evaluated with": _evaluated_with(acc),
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items()) or "—",
        })
        for name, head in (acc.get("heads") or {}).items():  # --task-head runs: a row per extra head
            rows.append({"artifact": f"{key} · head {name}", "runtime": "", "precision": "", "size MB": "",
                         "compile s": "", "calibration": "", "top-1": f"{head['top1'] * 100:.1f}%",
                         "drop pp": f"{head['drop_pp']:+.2f}", "agree": f"{head['agreement'] * 100:.1f}%",
                         "evaluated with": "", "versions": ""})
    return rows



def _evaluated_with(acc: dict) -> str:
    text = acc.get("evaluated_with") or "—"
    return f"{text} (estimated)" if acc.get("estimated") and "estimat" not in text else text
