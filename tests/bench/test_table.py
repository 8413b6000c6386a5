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
    assert notes == ["a/int8: p90_latency 1 ms > budget 0.5 ms", "jetson/int8: n/a here (no GPU)"]


def test_top5_column_only_when_some_artifact_has_it():
    assert "top-5" not in columns([doc("a/fp32", 1.0)])
    assert "top-5" in columns([doc("a/fp32", 1.0, top5=0.99)])


def test_the_false_accept_rate_has_a_column_with_its_interval_only_for_keyword_spotting():
    assert "false acc." not in columns([doc("a/fp32", 1.0)])
    kws = doc("kws/int8", 1.0)
    kws["accuracy"].update(false_accept_rate=0.25, false_accept_rate_ci=[0.089, 0.53], false_accept_n=12)
    assert "false acc." in columns([kws, doc("pytorch-eager/fp32", 2.0, reference=True)])
    rows, _ = bench_rows([kws])
    assert rows[0]["false acc."] == "25.0% [9–53]" and rows[0]["samples/s"] == "1.0"  # clips, texts or images


def test_rich_table_escapes_markup_in_reasons():
    from rich.console import Console

    bad = {"key": "x/int8", "status": "error", "reason": "pip install 'edgetl[openvino]'", "artifact": {}}
    console = Console(width=200, record=True)
    console.print(rich_table([bad], "bench on ci"))
    assert "edgetl[openvino]" in console.export_text()


def test_busy_speedups_get_a_mark_and_one_note_and_the_reference_method_is_stated():
    ref = doc("pytorch-eager/fp32", 4.0, reference=True)
    ref["reference_method"] = {"summary": "PyTorch eager FP32 in a fresh process, 1 intra-op + 1 inter-op thread(s)"}
    busy = doc("a/int8", 1.0)
    busy["latency"][0]["busy"] = True
    quiet = doc("b/int8", 2.0)
    rows, notes = bench_rows([ref, busy, quiet])
    assert [r["vs PyTorch"] for r in rows] == ["1.00×", "2.00×!", "2.00×"]
    assert notes[0] == ("vs PyTorch = reference p50 / artifact p50; reference: PyTorch eager FP32 in a fresh "
                        "process, 1 intra-op + 1 inter-op thread(s)")
    assert notes[1].startswith("! measured while other processes used the CPU (a/int8 b1)")


def test_intervals_are_shown_next_to_accuracy_and_drop():
    d = doc("a/int8", 1.0, gate="UNDECIDED")
    d["accuracy"].update(top1_ci=[0.81, 0.95], drop_ci_pp=[-1.234, 12.6])
    d["gates"]["undecided"] = ["accuracy_drop +0.50 pp (n=60: 95% CI -1.23..+12.60) straddles budget 1 pp"]
    rows, notes = bench_rows([d])
    assert rows[0]["top-1"] == "90.0% [81–95]" and rows[0]["drop pp"] == "+0.50 [-1.2,+13]"
    assert rows[0]["gate"] == "UNDECIDED [1]" and "straddles budget 1 pp" in notes[0]


def test_a_target_that_cannot_run_here_keeps_its_row_with_the_estimated_accuracy():
    trt = {"key": "jetson/int8", "status": "unavailable", "reason": "needs an NVIDIA GPU",
           "artifact": {"runtime": "tensorrt"},
           "accuracy_estimate": {"top1": 0.95, "drop_pp": 0.5, "estimated": True,
                                 "evaluated_with": "onnxruntime 1.22 CPU on model.qdq.onnx"}}
    rows, notes = bench_rows([trt])
    assert rows[0]["top-1"] == "95.0% est." and rows[0]["gate"] == "[1] n/a here"
    assert notes == ["jetson/int8: n/a here (needs an NVIDIA GPU): accuracy estimated 95.0% (drop +0.50 pp) "
                     "with onnxruntime 1.22 CPU on model.qdq.onnx"]


def test_the_star_has_a_legend_in_the_terminal():
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(rich_table([doc("a/int8", 1.0, "PASS")], "bench on ci"))
    text = console.export_text()
    assert "★ a/int8" in text and "★ best: the fastest artifact (batch-1 p90) that does not fail a gate" in text


def test_a_narrow_terminal_drops_columns_never_the_artifact_names_and_a_log_gets_them_all():
    import io

    from rich.console import Console

    from edgetl.bench.table import print_table

    docs = [doc("host-openvino/int8", 1.0, "PASS", top5=0.99), doc("pytorch-eager/fp32", 30.0, reference=True)]
    terminal = Console(width=90, force_terminal=True, record=True, file=io.StringIO())
    print_table(terminal, docs, "bench on ci")
    text = terminal.export_text()
    header = next(line for line in text.splitlines() if "artifact" in line)
    assert "host-openvino/int8" in text and "pytorch-eager/fp32" in text and "drop pp" in header
    assert "top-5" not in header and "p99 ms" not in header and "…" not in header
    assert max(map(len, text.splitlines())) <= 90

    log = io.StringIO()
    print_table(Console(file=log, width=80), docs, "bench on ci")  # a pipe: not a terminal
    header = next(line for line in log.getvalue().splitlines() if "artifact" in line)
    assert all(c in header for c in ("top-5", "p99 ms", "size MB", "mem MB", "gate")) and "…" not in header
