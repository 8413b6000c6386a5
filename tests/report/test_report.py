"""`edgetl report`: Markdown, HTML with charts, JSON; at any stage of a run."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from click.testing import CliRunner

from edgetl.cli import cli
from edgetl.report import make_report
from edgetl.report.plots import pareto_front
from edgetl.rundir import RunDir


@pytest.fixture(scope="module")
def benched_run(tiny_run, tmp_path_factory):
    from edgetl.bench.run import bench
    from edgetl.compiler import compile

    dest = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_run.path, dest, ignore=shutil.ignore_patterns(".manifest.lock"))
    compile(dest, ["onnxruntime"], precisions=["fp32", "int8"], progress=False)
    bench(dest, device_name="ci", threads=1, iterations=20, isolate=False)
    return RunDir.open(dest)


def test_pareto_front_keeps_only_unbeaten_points():
    points = [(1.0, 90.0, "int8"), (2.0, 95.0, "fp16"), (3.0, 94.0, "slow-worse"), (4.0, 96.0, "fp32"),
              (1.5, 89.0, "beaten")]
    assert pareto_front(points) == ["int8", "fp16", "fp32"]


def test_full_report_has_tables_charts_and_data(benched_run):
    written = make_report(benched_run.path)
    assert [p.name for p in written.files] == ["report.json", "report.md", "report.html"]

    md = (benched_run.path / "report.md").read_text()
    for text in ("## Train", "## Export", "## Compile matrix", "## Bench on ci", "pytorch-eager/fp32",
                 "onnxruntime/int8", "| p50 ms |", "★"):
        assert text in md
    assert "Stages not run yet" not in md

    html = (benched_run.path / "report.html").read_text()
    assert html.count("<svg") == 2  # latency distribution + accuracy vs latency
    for text in ("latency per run (ms", "p90 latency, batch 1 (ms", "top-1 on the validation split (%",
                 "Pareto front", "<table>", 'class="best"'):
        assert text in html

    data = json.loads((benched_run.path / "report.json").read_text())
    assert data["schema"] == "edgetl.report/1"
    docs = {d["key"]: d for d in data["bench"]["ci"]}
    assert {"pytorch-eager/fp32", "onnxruntime/fp32", "onnxruntime/int8"} <= set(docs)
    assert docs["onnxruntime/int8"]["latency"][0]["samples_ms"]


def test_report_of_a_run_that_was_only_trained_says_what_is_missing(tiny_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(tiny_run.path, dest, ignore=shutil.ignore_patterns(".manifest.lock"))
    result = CliRunner().invoke(cli, ["report", str(dest)])
    assert result.exit_code == 0, result.output
    md = (dest / "report.md").read_text()
    assert "Stages not run yet" in md and "compiled (run `edgetl compile" in md and "bench (run `edgetl bench" in md
    assert "<svg" not in (dest / "report.html").read_text()


def test_without_matplotlib_the_html_keeps_its_tables_and_says_how_to_get_charts(benched_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    written = make_report(benched_run.path)
    assert any("pip install 'edgetl[report]'" in n for n in written.notes)
    html = (benched_run.path / "report.html").read_text()
    assert "<svg" not in html and "<table>" in html and "edgetl[report]" in html


def test_unreadable_result_files_are_skipped_with_a_note(benched_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(benched_run.path, dest, ignore=shutil.ignore_patterns(".manifest.lock"))
    (dest / "bench" / "onnxruntime" / "int8@ci.json").write_text("{not json")
    written = make_report(dest)
    assert any("int8@ci.json" in n and "unreadable" in n for n in written.notes)
    assert "onnxruntime/fp32" in (dest / "report.md").read_text()


def test_report_of_a_missing_run_is_exit_2(tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output
