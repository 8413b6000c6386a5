"""Everything a report shows, gathered from a run directory into one JSON-able dict."""

from __future__ import annotations

import datetime as dt
import json

from edgetl import __version__
from edgetl.rundir import RunDir

SCHEMA = "edgetl.report/1"
BENCH_SCHEMA = "edgetl.bench/1"
STAGES = {  # manifest section -> the command that creates it
    "train": "edgetl train",
    "export": "edgetl compile",
    "compiled": "edgetl compile",
    "bench": "edgetl bench",
}


def _bench_docs(run: RunDir, notes: list[str]) -> dict[str, list[dict]]:
    """Result documents per device: the files under bench/, plus the manifest's rows that have no
    file (artifacts not available on that device, or that failed)."""
    devices: dict[str, dict[str, dict]] = {}
    for path in sorted((run.path / "bench").glob("*/*@*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            notes.append(f"skipped {run.rel(path)}: unreadable ({exc})")
            continue
        if doc.get("schema") != BENCH_SCHEMA:
            notes.append(f"skipped {run.rel(path)}: schema {doc.get('schema')!r}, this edgetl reads {BENCH_SCHEMA}")
            continue
        doc["file"] = run.rel(path)
        devices.setdefault(doc["device"]["name"], {})[doc["key"]] = doc
    for device, section in (run.get("bench") or {}).items():
        for key, summary in (section.get("results") or {}).items():
            if summary.get("status") != "ok" and key not in devices.get(device, {}):
                devices.setdefault(device, {})[key] = {
                    "key": key, "status": summary.get("status"), "reason": summary.get("reason"),
                    "artifact": {"runtime": summary.get("runtime"), "precision": summary.get("precision")},
                }
    return {d: sorted(docs.values(), key=lambda r: (not r.get("reference"), r["key"])) for d, docs in sorted(devices.items())}


def collect(run: RunDir) -> tuple[dict, list[str]]:
    """(report data, notes about what is missing or was skipped)."""
    manifest = run.manifest
    notes: list[str] = []
    missing = [f"{stage} (run `{cmd} {run.path}`)" for stage, cmd in STAGES.items() if not manifest.get(stage)]
    bench = _bench_docs(run, notes)
    if manifest.get("bench") and not bench:
        notes.append("the manifest lists bench results but no result files were found under bench/")
    data = {
        "schema": SCHEMA,
        "run": manifest.get("name", run.path.name),
        "path": str(run.path),
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "edgetl": __version__,
        "missing": missing,
        "train": manifest.get("train"),
        "export": manifest.get("export"),
        "compiled": manifest.get("compiled") or {},
        "bench": bench,
    }
    return data, notes


def scalars(section: dict | None, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """A stage's section as (name, value) rows: nested dicts one level deep, long lists summarised."""
    rows: list[tuple[str, str]] = []
    for key, value in (section or {}).items():
        if key in skip:
            continue
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", _short(v)) for k, v in value.items()]
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
            "evaluated with": (acc.get("evaluated_with") or "—") + (" (estimated)" if acc.get("estimated") else ""),
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items()) or "—",
        })
    return rows

