"""The report's first table: per target and device, the artifact to ship and whether it passed.

A target is what ``edgetl compile --target`` was given: a device profile (with budgets) or a bare
runtime name (without). Its artifacts (one per precision) were benched on a device; the verdict is

- PASS: the fastest artifact (batch-1 p90) that meets every budget of the profile;
- UNDECIDED: none passes, and the fastest of those whose accuracy interval straddles a budget (too few
  validation images to tell) is shown with the reason;
- FAIL: every artifact misses a budget; the one closest to passing is shown with the budgets it misses;
- no budgets: the target has none (a bare runtime name); the fastest artifact is shown;
- not measured here: its artifacts cannot run on the benching machine (e.g. TensorRT without a GPU);
- error: its artifacts could not be measured (the reason is shown);
- not benched yet: compiled, never benched.

The gate statuses are the bench stage's (edgetl/bench/gates.py); this module only ranks them.
"""

from __future__ import annotations

import shlex

from edgetl.bench.gates import FAIL, PASS, UNDECIDED  # the bench stage's own words

NO_BUDGETS, UNMEASURED, ERROR, NOT_BENCHED = "no budgets", "not measured here", "error", "not benched yet"
# A profile shipped with edgetl, with budgets: what the report suggests compiling for.
DEFAULT_PROFILE = "host-cpu"


def _target(doc: dict) -> str:
    return doc.get("target") or doc["key"].split("/", 1)[0]


def _batch1(doc: dict) -> dict:
    rows = sorted(doc.get("latency") or [], key=lambda r: r["batch"])
    return next((r for r in rows if r["batch"] == 1), rows[0] if rows else {})


def _p90(doc: dict) -> float:
    return _batch1(doc).get("p90_ms", float("inf"))


def _measured_row(doc: dict, verdict: str, why: str) -> dict:
    artifact, acc, first = doc.get("artifact") or {}, doc.get("accuracy") or {}, _batch1(doc)
    return {"verdict": verdict, "artifact": doc["key"], "runtime": artifact.get("runtime"),
            "precision": artifact.get("precision"), "p90_ms": first.get("p90_ms"),
            "speedup": first.get("speedup_vs_reference"), "busy": bool(first.get("busy")), "top1": acc.get("top1"),
            "drop_pp": acc.get("drop_pp"), "drop_ci_pp": acc.get("drop_ci_pp"), "estimated": False, "why": why}


def _compiled_row(doc: dict, entry: dict | None, verdict: str, why: str) -> dict:
    """A row for an artifact not measured on this device: its compile-time accuracy, if any."""
    artifact, acc = doc.get("artifact") or {}, (entry or {}).get("accuracy") or {}
    return {"verdict": verdict, "artifact": doc["key"], "runtime": artifact.get("runtime") or (entry or {}).get("runtime"),
            "precision": artifact.get("precision") or (entry or {}).get("precision"), "p90_ms": None,
            "speedup": None, "top1": acc.get("top1"), "drop_pp": acc.get("drop_pp"),
            "estimated": bool(acc.get("estimated")), "why": why}


def _passed_why(doc: dict) -> str:
    """Each goal's check, whatever its metric: "top1 0.95 ≥ 0.9; p90_latency 12 ≤ 50 ms"."""
    def met(c: dict) -> str:
        sign = "≥" if c.get("goal") == "min" else "≤"  # results written before min goals existed: all max
        return f"{c['name']} {c['value']:.3g} {sign} {c['budget']:g} {c['unit']}".rstrip()

    return "meets every budget: " + "; ".join(met(c) for c in doc["gates"]["checks"])


def decide(docs: list[dict], compiled: dict) -> dict:
    """The decision for one target's result documents on one device."""
    ok = sorted((d for d in docs if d.get("status") == "ok" and d.get("latency")), key=_p90)
    passing = [d for d in ok if d["gates"]["status"] == PASS]
    if passing:
        return _measured_row(passing[0], PASS, _passed_why(passing[0]))
    undecided = [d for d in ok if d["gates"]["status"] == UNDECIDED]
    if undecided:
        return _measured_row(undecided[0], UNDECIDED, "; ".join(undecided[0]["gates"].get("undecided") or []))
    if ok and all(d["gates"]["status"] == FAIL for d in ok):
        closest = min(ok, key=lambda d: (len(d["gates"]["failed"]), _p90(d)))
        return _measured_row(closest, FAIL, "no artifact meets the budgets; closest misses " +
                             "; ".join(closest["gates"]["failed"]))
    if ok:
        return _measured_row(ok[0], NO_BUDGETS, f"target {_target(ok[0])!r} has no budgets: the fastest artifact is "
                             "shown; compile for a device profile (`edgetl targets`) to get a verdict")
    unavailable = [d for d in docs if d.get("status") == "unavailable"]
    if unavailable:
        doc = unavailable[0]
        return _compiled_row(doc, compiled.get(doc["key"]), UNMEASURED, doc.get("reason") or "")
    doc = docs[0]
    return _compiled_row(doc, compiled.get(doc["key"]), ERROR, doc.get("reason") or "")


def decisions(compiled: dict, bench: dict[str, list[dict]]) -> list[dict]:
    """One row per (device, target) benched, then one per compiled target never benched."""
    rows = []
    for device, docs in bench.items():
        targets: dict[str, list[dict]] = {}
        for doc in docs:
            if not doc.get("reference"):
                targets.setdefault(_target(doc), []).append(doc)
        rows += [{"target": t, "device": device, **decide(mine, compiled)} for t, mine in targets.items()]
    benched = {r["target"] for r in rows}
    for key, entry in compiled.items():
        target = entry.get("target") or key.split("/", 1)[0]
        if target not in benched:
            benched.add(target)
            rows.append({"target": target, "device": None, **_compiled_row(
                {"key": key}, entry, NOT_BENCHED, "compiled, not benched on any device yet")})
    return rows


def bundle_flag(key: str) -> str:
    """The ``edgetl bundle`` option that packages the compiled artifact ``key`` (``<target>/<slot>``)."""
    slot = key.split("/", 1)[1]
    return {"optimized": "--optimized", "prototype": "--head prototype"}.get(slot, f"--precision {slot}")


def next_commands(run_path: str, manifest: dict, rows: list[dict]) -> list[dict]:
    """Commands that take the run one step further (``command``, ``why``), each valid as printed."""
    run = shlex.quote(run_path)
    with_budgets = f"edgetl compile {run} --target {DEFAULT_PROFILE}"
    if not manifest.get("compiled"):
        return [{"command": with_budgets, "why": "export, calibrate and quantize for this CPU "
                 "(`edgetl targets` lists the other device profiles)"}]
    commands = []
    if any(r["verdict"] == NOT_BENCHED for r in rows):
        commands.append({"command": f"edgetl bench {run}", "why": "latency and accuracy of every compiled artifact "
                         "on this machine, next to PyTorch FP32"})
    bundles = manifest.get("bundles") or {}
    for r in rows:
        target = shlex.quote(r["target"])
        bundle = bundles.get(r["artifact"])  # keyed like the compiled artifact
        if r["verdict"] == PASS and bundle:
            path = shlex.quote(f"{run_path}/{bundle['path']}")
            commands.append({"command": f"edgetl ship {path} ssh://user@device/opt/models",
                             "why": f"copy the {r['target']} bundle to the device, verify it there and switch to it"})
        elif r["verdict"] == PASS:
            commands.append({"command": f"edgetl bundle {run} --target {target} {bundle_flag(r['artifact'])}",
                             "why": f"package {r['artifact']} for the device"})
        elif r["verdict"] == UNDECIDED and bundle:
            path = shlex.quote(f"{run_path}/{bundle['path']}")
            commands.append({"command": f"edgetl val {path} ./labelled",
                             "why": f"decide {r['artifact']}'s accuracy on more labelled images than the validation "
                                    "split (one subfolder per label)"})
        elif r["verdict"] == UNDECIDED:
            commands.append({"command": f"edgetl bundle {run} --target {target} {bundle_flag(r['artifact'])}",
                             "why": f"package {r['artifact']}, then decide its accuracy on more labelled images "
                                    "with `edgetl val BUNDLE FOLDER`"})
        elif r["verdict"] == UNMEASURED:
            commands.append({"command": f"edgetl bench {run} --target {target} --remote ssh://user@device",
                             "why": f"measure {r['target']} on the device itself"})
    # Only when no compiled target has budgets yet: an UNDECIDED one has them, compiling again decides nothing.
    if not any(r["verdict"] in (PASS, FAIL, UNDECIDED) or r["target"] == DEFAULT_PROFILE for r in rows):
        commands += [{"command": with_budgets, "why": "a device profile has budgets, so its bench gives a verdict"},
                     {"command": f"edgetl bench {run} --target {DEFAULT_PROFILE}", "why": "then bench it"}]
    return list({c["command"]: c for c in commands}.values())
