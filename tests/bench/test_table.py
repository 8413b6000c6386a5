"""The bench table shared by the console and the report: best artifact, notes, columns."""

from __future__ import annotations

from edgetl.bench.table import bench_rows, best_key, columns, rich_table


def doc(key, p90, gate="n/a", top5=None, failed=(), reference=False, batches=(1,)):
    return {
        "key": key, "status": "ok", "reference": reference,
        "artifact": {"runtime": "onnxruntime", "size_bytes": 2_000_000},
        "latency": [{"batch": b, "p50_ms": p90 * b / 2, "p90_ms": p90 * b, "p99_ms": p90 * b, "throughput_ips": 1.0,
                     "speedup_vs_reference": 2.0} for b in batches],
        "accuracy": {"top1": 0.9, "top5": top5, "drop_pp": 0.5, "agreement": 0.95},
        "memory": {"session_peak_mb": 40.0}, "load": {"first_inference_ms": 30.0},
        "gates": {"status": gate, "failed": list(failed)},
    }


def test_best_is_the_fastest_that_does_not_fail_a_gate_and_never_the_reference():
    docs = [doc("pytorch-eager/fp32", 0.5, reference=True), doc("a/int8", 1.0, "FAIL", failed=["x"]),
            doc("b/int8", 2.0, "PASS"), doc("c/fp32", 3.0)]
    assert best_key(docs) == "b/int8"


def test_rows_notes_and_unavailable_artifacts():
    docs = [doc("a/int8", 1.0, "FAIL", failed=["p90_latency 1 ms > budget 0.5 ms"], batches=(1, 8)),
            {"key": "jetson/int8", "status": "unavailable", "reason": "no GPU", "artifact": {"runtime": "tensorrt"}}]
    rows, notes = bench_rows(docs)
    assert [r["batch"] for r in rows] == ["1", "8", "—"]
    assert rows[0]["gate"] == "FAIL [1]" and rows[1]["gate"] == ""  # accuracy & gate on the first row only
    assert rows[2]["gate"] == "[2] n/a here"
    assert notes == ["a/int8: p90_latency 1 ms > budget 0.5 ms", "jetson/int8: not available here: no GPU"]


def test_top5_column_only_when_some_artifact_has_it():
    assert "top-5" not in columns([doc("a/fp32", 1.0)])
    assert "top-5" in columns([doc("a/fp32", 1.0, top5=0.99)])


def test_rich_table_escapes_markup_in_reasons():
    from rich.console import Console

    bad = {"key": "x/int8", "status": "error", "reason": "pip install 'edgetl[openvino]'", "artifact": {}}
    console = Console(width=200, record=True)
    console.print(rich_table([bad], "bench on ci"))
    assert "edgetl[openvino]" in console.export_text()
