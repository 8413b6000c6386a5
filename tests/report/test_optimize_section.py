"""The report's "Optimize" section, from a hand-made OptimizeRecord (contract fields): the candidate
table with every runner-up's reason, the Pareto chart with the pick marked, the fallback, the JSON."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from edgetl.optimize.record import OptimizeRecord
from edgetl.report import make_report
from edgetl.report.decide import PASS, bundle_flag, next_commands
from edgetl.rundir import RunDir


def _point(pid, runtime, variant, threads, status, p50, drop, *, meets=True, pareto=False, why=None, **extra):
    return {"id": f"{pid}@{threads}t", "artifact": pid, "runtime": runtime, "precision": "int8", "variant": variant,
            "threads": threads, "recipe": "percentile", "status": status, "size_bytes": 1_300_000, "compile_s": 2.0,
            "accuracy": None if drop is None else {"top1": 0.9, "drop_pp": drop, "drop_ci_pp": [drop - 1, drop + 1],
                                                   "agreement": 0.98},
            "latency": None if p50 is None else {"p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.3,
                                                 "mean_ms": p50, "iterations": 200, "busy": False, "round": 2},
            "meets": meets, "pareto": pareto, "why": why, **extra}


RECORD = {
    "target": "host-cpu", "device": "this machine (ci, 2 cores)", "remote": None,
    "budgets": {"max_accuracy_drop_pp": 1.0, "p90_latency_ms": 50.0}, "pick": "aaaaaaaaaaaa@2t",
    "reference": {"p50_ms": 31.9, "p90_ms": 33.0, "threads": 2, "by_threads": {"2": {"p50_ms": 31.9, "p90_ms": 33.0},
                                                                              "1": {"p50_ms": 60.0, "p90_ms": 61.0}}},
    "points": [
        _point("bbbbbbbbbbbb", "onnxruntime", "int8 u8s8 per-channel", 2, "measured", 2.21, 0.4,
               why="p50 2.21 ms: 1.02x the pick's"),
        _point("aaaaaaaaaaaa", "openvino", "int8 qdq", 2, "picked", 2.16, 0.5, pareto=True),
        _point("cccccccccccc", "openvino", "int8 nncf mixed", 1, "pruned", 4.44, 0.3, pareto=True,
               why="pruned in round 1: 2.1x the fastest point"),
        _point("dddddddddddd", "onnxruntime", "int8 s8s8", 2, "measured", 2.0, 1.8, meets=False, pareto=True,
               why="accuracy_drop_pp 1.8 > 1 pp", keep_float=[]),
        _point("eeeeeeeeeeee", "onnxruntime", "int8 s8s8", 2, "measured", 2.3, 0.6, keep_float=["/conv_stem/Conv"],
               why="p50 2.3 ms: 1.06x the pick's"),
        _point("ffffffffffff", "openvino", "fp32 bf16-hint", 2, "failed", None, None, meets=False,
               error="openvino failed to compile: no bf16 on this CPU"),
    ],
    "fallback": {"from": "dddddddddddd@2t", "ranked": [["/conv_stem/Conv", "Conv", 0.8]], "kept": ["/conv_stem/Conv"],
                 "tried": [[1, 0.6]], "met": True, "drop_pp": 0.6},
    "settings": {"budget_s": 600, "threads": [1, 2]}, "elapsed_s": 95.0, "budget_spent": False,
    "not_tried": ["tensorrt (cannot be timed here: needs an NVIDIA GPU)"], "fingerprint": "f" * 64,
}
RECORD["points"][3]["accuracy"]["drop_ci_pp"] = [1.2, 2.4]


def _run_with_record(benched_run, tmp_path, record=RECORD) -> RunDir:
    shutil.copytree(benched_run.path, tmp_path / "run")
    run = RunDir.open(tmp_path / "run")
    run.set_item(OptimizeRecord.SECTION, "host-cpu", record)
    return run


def test_the_optimize_section_shows_the_pick_the_table_the_chart_and_the_reasons(benched_run, tmp_path):
    run = _run_with_record(benched_run, tmp_path)
    OptimizeRecord.model_validate(RECORD)  # the record is one core writes
    make_report(run.path)
    data = json.loads((run.path / "report.json").read_text())
    assert data["optimize"]["host-cpu"]["pick"] == "aaaaaaaaaaaa@2t"
    assert len(data["optimize"]["host-cpu"]["points"]) == 6
    md = (run.path / "report.md").read_text()
    section = md[md.index("## Optimize: host-cpu"):md.index("## ", md.index("## Optimize: host-cpu") + 3)]
    assert "**Picked openvino int8 qdq at 2 threads**: p50 2.16 ms, 14.8× PyTorch eager, drop +0.50 pp" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and "@" in line]
    assert rows[0].startswith("| **★ aaaaaaaaaaaa@2t**") and "picked ◆" in rows[0]  # the pick first, starred
    for reason in ("p50 2.21 ms: 1.02x the pick's", "pruned in round 1", "accuracy_drop_pp 1.8 > 1 pp",
                   "no bf16 on this CPU"):
        assert sum(reason in r for r in rows) == 1, reason
    assert "int8 s8s8 +1 float" in section  # a recovered point says what it kept float
    assert "Keep-float fallback from dddddddddddd@2t: kept 1 layer(s) float (/conv_stem/Conv); met the accuracy " \
           "budget. Tried: 1 float: +0.60 pp." in section
    assert "Not tried: tensorrt (cannot be timed here: needs an NVIDIA GPU)." in section
    html = (run.path / "report.html").read_text()
    chart = html[html.index("<h2>Optimize: host-cpu</h2>"):]
    chart = chart[:chart.index("</section>")]
    assert "<svg" in chart and "Accuracy drop against latency of every point optimize timed" in chart
    assert ">pick<" in chart and ">Pareto front<" in chart and "drop budget 1 pp" in chart


def test_a_run_without_optimize_has_no_such_section(benched_run, tmp_path):
    shutil.copytree(benched_run.path, tmp_path / "run")
    make_report(tmp_path / "run")
    assert "Optimize" not in (tmp_path / "run" / "report.md").read_text()
    assert json.loads((tmp_path / "run" / "report.json").read_text())["optimize"] == {}


def _first_point(**changed) -> list[dict]:
    first = RECORD["points"][0]
    return [{**first, **{k: (v(first[k]) if callable(v) else v) for k, v in changed.items()}}, *RECORD["points"][1:]]


@pytest.mark.parametrize("edit, field", [
    ({"points": "many"}, "points"),
    ({"pick": "deadbeef0000@2t"}, "none of the points"),
    ({"points": _first_point(latency=lambda t: {**t, "p50_ms": math.nan})}, "latency"),
    ({"points": _first_point(latency=lambda t: {**t, "p50_ms": -5.0})}, "latency"),
    ({"points": _first_point(latency=lambda t: {**t, "p50_ms": "fast"})}, "latency"),
    ({"points": _first_point(accuracy=lambda a: {**a, "top1": "x"})}, "accuracy"),
    ({"points": _first_point(accuracy=lambda a: {**a, "drop_ci_pp": [1.0]})}, "accuracy"),
    ({"points": _first_point(threads=10**9)}, "threads"),
    ({"points": RECORD["points"] * 4000}, "points"),
    ({"reference": {**RECORD["reference"], "by_threads": {"2": {"p50_ms": "slow", "p90_ms": 1.0}}}}, "reference"),
], ids=["points-not-a-list", "pick-not-a-point", "nan-p50", "negative-p50", "text-p50", "text-top1", "short-ci",
        "huge-threads", "huge-point-list", "text-reference"])
def test_a_malformed_optimize_record_is_a_note_not_a_failure(benched_run, tmp_path, edit, field):
    run = _run_with_record(benched_run, tmp_path, {**RECORD, **edit})
    written = make_report(run.path)
    assert any(n.startswith("optimize results left out:") and field in n for n in written.notes), written.notes
    assert "## Optimize" not in (run.path / "report.md").read_text()


def test_a_search_without_a_pick_says_so(benched_run, tmp_path):
    points = [p | {"status": "measured", "meets": False} for p in RECORD["points"][:2]]
    run = _run_with_record(benched_run, tmp_path, {**RECORD, "pick": None, "points": points})
    make_report(run.path)
    assert "no point meets every budget, nothing was promoted" in (run.path / "report.md").read_text()


def test_the_pick_is_bundled_with_optimized():
    assert bundle_flag("host-cpu/optimized") == "--optimized" and bundle_flag("host-cpu/int8") == "--precision int8"
    rows = [{"target": "host-cpu", "artifact": "host-cpu/optimized", "precision": "int8", "verdict": PASS}]
    commands = next_commands("runs/x", {"compiled": {"host-cpu/optimized": {}}}, rows)
    assert commands[0]["command"] == "edgetl bundle runs/x --target host-cpu --optimized"
    bundles = {"host-cpu/optimized": {"path": "bundles/host-cpu-optimized.tar.gz"}}
    commands = next_commands("runs/x", {"compiled": {"host-cpu/optimized": {}}, "bundles": bundles}, rows)
    assert commands[0]["command"] == "edgetl ship runs/x/bundles/host-cpu-optimized.tar.gz ssh://user@device/opt/models"


def test_a_fallback_try_without_a_result_says_so():
    from edgetl.report.optimize import blocks

    fallback = {"from": "dddddddddddd", "kept": [], "tried": [[1, None], [2, 1.4]], "met": False}
    texts = [b[1] for b in blocks({**RECORD, "fallback": fallback}) if b[0] == "text"]
    assert "Keep-float fallback from dddddddddddd: kept 0 layer(s) float; the budget still did not hold. Tried: " \
           "1 float: no result, 2 float: +1.40 pp." in texts
