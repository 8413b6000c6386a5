"""The decision table: per target, the artifact to ship and its verdict, from bench result documents."""

from __future__ import annotations

from edgetl.report.decide import decisions
from edgetl.report.render import to_markdown


def _doc(key: str, gate: str = "PASS", p90: float = 1.0, drop: float = 0.0, failed: tuple = (), status: str = "ok",
         reason: str | None = None) -> dict:
    runtime, precision = {"host-cpu": "onnxruntime", "jetson-orin-nano": "tensorrt"}.get(key.split("/")[0], "x"), \
        key.split("/")[1]
    doc = {"key": key, "target": key.split("/")[0], "status": status, "reason": reason,
           "artifact": {"runtime": runtime, "precision": precision}}
    if status == "ok":
        doc |= {"latency": [{"batch": 1, "p50_ms": p90 * 0.9, "p90_ms": p90, "speedup_vs_reference": 10 / p90}],
                "accuracy": {"top1": 0.9, "drop_pp": drop},
                "gates": {"status": gate, "failed": list(failed),
                          "checks": [{"name": "accuracy_drop", "value": drop, "budget": 1.0, "unit": "pp"}]}}
    return doc


def _only(bench: dict, compiled: dict | None = None) -> dict:
    [row] = decisions(compiled or {}, bench)
    return row


def test_pass_ships_the_fastest_artifact_that_meets_every_budget():
    row = _only({"ci": [_doc("host-cpu/int8", "FAIL", p90=0.5, drop=3.0, failed=("accuracy_drop 3 pp > budget 1 pp",)),
                        _doc("host-cpu/fp16", p90=0.8, drop=0.4), _doc("host-cpu/fp32", p90=1.5)]})
    assert (row["verdict"], row["artifact"], row["runtime"], row["precision"]) == ("PASS", "host-cpu/fp16",
                                                                                   "onnxruntime", "fp16")
    assert row["speedup"] == 10 / 0.8 and row["drop_pp"] == 0.4 and "accuracy_drop 0.4 ≤ 1 pp" in row["why"]


def test_fail_names_the_failing_budget_of_the_closest_artifact():
    row = _only({"ci": [
        _doc("host-cpu/int8", "FAIL", p90=0.5, drop=3.0, failed=("accuracy_drop 3 pp > budget 1 pp", "memory 900 MB > budget 512 MB")),
        _doc("host-cpu/fp32", "FAIL", p90=60, failed=("p90_latency 60 ms > budget 50 ms",))]})
    assert row["verdict"] == "FAIL" and row["artifact"] == "host-cpu/fp32"
    assert "p90_latency 60 ms > budget 50 ms" in row["why"]
    data = {"run": "r", "path": "runs/r", "generated": "now", "edgetl": "0", "missing": [], "decisions": [row],
            "next": [], "bundles": [], "bench": {}, "compiled": {}}
    assert "| host-cpu | nothing (closest: onnxruntime fp32) | **FAIL** |" in to_markdown(data, [])


def test_too_few_images_to_decide_is_undecided_not_fail():
    doc = _doc("host-cpu/int8", "UNDECIDED", p90=0.5, drop=0.0)
    doc["gates"]["undecided"] = ["accuracy_drop +0.00 pp (n=60: 95% CI -4.1..+6.0) straddles budget 1 pp"]
    row = _only({"ci": [doc, _doc("host-cpu/fp32", "FAIL", p90=60, failed=("p90_latency 60 ms > budget 50 ms",))]})
    assert row["verdict"] == "UNDECIDED" and row["artifact"] == "host-cpu/int8" and "straddles budget 1 pp" in row["why"]
    from edgetl.report.decide import next_commands

    commands = [c["command"] for c in next_commands("runs/r", {"compiled": {"x": {}}, "bundles": {
        "host-cpu/int8": {"path": "bundles/host-cpu-int8.tar.gz"}}}, [{**row, "target": "host-cpu"}])]
    assert commands[0].startswith("edgetl val runs/r/bundles/host-cpu-int8.tar.gz ")  # decide it on more images
    assert not any(c.startswith("edgetl compile") for c in commands)  # it was decided as far as it can be


def test_a_target_without_budgets_says_so():
    row = _only({"ci": [_doc("onnxruntime/fp32", "n/a", p90=2.0), _doc("onnxruntime/int8", "n/a", p90=1.0)]})
    assert row["verdict"] == "no budgets" and row["artifact"] == "onnxruntime/int8" and "no budgets" in row["why"]


def test_an_artifact_that_cannot_run_here_is_not_measured_and_shows_its_estimated_accuracy():
    compiled = {"jetson-orin-nano/int8": {"target": "jetson-orin-nano", "runtime": "tensorrt", "precision": "int8",
                                          "accuracy": {"top1": 0.95, "drop_pp": 0.5, "estimated": True}}}
    row = _only({"ci": [_doc("jetson-orin-nano/int8", status="unavailable", reason="no GPU here")]}, compiled)
    assert row["verdict"] == "not measured here" and row["why"] == "no GPU here"
    assert row["estimated"] and row["drop_pp"] == 0.5 and row["speedup"] is None
    data = {"run": "r", "path": "runs/r", "generated": "now", "edgetl": "0", "missing": [], "decisions": [row],
            "next": [], "bundles": [], "bench": {}, "compiled": compiled}
    md = to_markdown(data, [])
    assert "| jetson-orin-nano | tensorrt int8 | **not measured here** | — | — | 95.0% (estimated) | 0.50 (estimated) |" in md


def test_errors_and_targets_never_benched_have_their_own_rows():
    compiled = {"host-cpu/int8": {"target": "host-cpu", "runtime": "onnxruntime", "precision": "int8"},
                "raspberry-pi-5/int8": {"target": "raspberry-pi-5", "runtime": "onnxruntime", "precision": "int8"}}
    rows = decisions(compiled, {"ci": [_doc("host-cpu/int8", status="error", reason="ArtifactError: bad file")]})
    assert [(r["target"], r["verdict"], r["device"]) for r in rows] == [
        ("host-cpu", "error", "ci"), ("raspberry-pi-5", "not benched yet", None)]
    assert rows[0]["why"] == "ArtifactError: bad file"


def test_the_reference_row_is_never_a_decision():
    reference = _doc("pytorch-eager/fp32", "n/a") | {"reference": True}
    assert decisions({}, {"ci": [reference]}) == []
