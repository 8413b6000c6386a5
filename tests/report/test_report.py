"""`edgetl report`: Markdown, HTML with charts, JSON; at any stage of a run."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys

import click
import pytest
from click.testing import CliRunner

from edgetl.cli import cli
from edgetl.report import make_report
from edgetl.report.data import compile_rows
from edgetl.report.plots import accuracy_limits, pareto_front
from edgetl.rundir import RunDir

SECTIONS = ("Decision: what to ship", "Bundles", "Speed and accuracy on ci", "Training curves",
            "Validation: confusion matrix and per-class accuracy", "Details")


def _copy(run: RunDir, dest) -> RunDir:
    shutil.copytree(run.path, dest)
    return RunDir.open(dest)


def _suggested(md: str) -> list[list[str]]:
    """The commands of the report's "Next:" list, as argument lists without the leading `edgetl`."""
    commands = re.findall(r"^- `(edgetl [^`]+)`", md, flags=re.M)
    return [shlex.split(c)[1:] for c in commands]


def test_pareto_front_keeps_only_unbeaten_points():
    points = [(1.0, 90.0, "int8"), (2.0, 95.0, "fp16"), (3.0, 94.0, "slow-worse"), (4.0, 96.0, "fp32"),
              (1.5, 89.0, "beaten")]
    assert pareto_front(points) == ["int8", "fp16", "fp32"]


@pytest.mark.parametrize("values", [[100.0, 91.7], [100.0, 100.0], [0.0, 3.0], [75.2, 74.9]])
def test_accuracy_axis_stays_within_0_100_and_tight_to_the_data(values):
    lo, hi = accuracy_limits(values)
    assert 0.0 <= lo <= min(values) and max(values) <= hi <= 100.0
    assert hi - lo <= (max(values) - min(values)) * 1.4 + 2.0  # no padding up to 106%


def test_an_estimated_accuracy_says_so_once():
    entry = {"runtime": "tensorrt", "precision": "int8", "accuracy": {
        "top1": 0.9, "estimated": True, "evaluated_with": "onnxruntime 1.32.0 CPU on model.qdq.onnx (estimate)"}}
    text = compile_rows({"jetson-orin-nano/int8": entry})[0]["evaluated with"]
    assert text.count("estimat") == 1


def test_report_leads_with_the_decision_then_bundles_charts_and_details(benched_run):
    written = make_report(benched_run.path)
    assert [p.name for p in written.files] == ["report.json", "report.md", "report.html"]
    md = (benched_run.path / "report.md").read_text()
    html = (benched_run.path / "report.html").read_text()

    md_at = [md.index(f"## {title}\n") for title in SECTIONS]
    html_at = [html.index(f"<h2>{title}</h2>") for title in SECTIONS]
    assert md_at == sorted(md_at) and html_at == sorted(html_at)  # the same order in both
    assert md.index("| host-cpu | onnxruntime fp32 | **PASS** |") < md_at[1]
    assert re.search(r"^\| onnxruntime \| onnxruntime (fp32|int8) \| \*\*no budgets\*\* \|", md, flags=re.M)
    assert "Stages not run yet" not in md and "(estimate) (estimated)" not in md
    bundles = md.split("## Bundles")[1].split("## ")[0]
    assert f"No bundles yet. `edgetl bundle {benched_run.path} --target host-cpu --precision fp32`" in bundles

    # charts: accuracy vs latency, latency distribution, training curves, confusion matrix
    assert html.count("<svg") == 4
    for text in ("p90 latency, batch 1 (ms", "Pareto front", "latency per run (ms", "training loss",
                 "predicted class", 'class="decision"', 'class="best"'):
        assert text in html
    # the long lists are collapsed, without the settings that were never set
    assert "<details><summary>Training settings" in html and "<details><summary>Export to ONNX" in html
    assert "hparams.patience" not in md and "| None |" not in md

    data = json.loads((benched_run.path / "report.json").read_text())
    assert data["schema"] == "edgetl.report/2"
    decided = {d["target"]: d for d in data["decisions"]}
    assert decided["host-cpu"]["verdict"] == "PASS" and decided["host-cpu"]["artifact"] == "host-cpu/fp32"
    assert decided["host-cpu"]["speedup"] > 0 and decided["host-cpu"]["drop_pp"] == pytest.approx(0)
    docs = {d["key"]: d for d in data["bench"]["ci"]}
    assert {"pytorch-eager/fp32", "onnxruntime/fp32", "onnxruntime/int8", "host-cpu/fp32"} <= set(docs)
    assert docs["onnxruntime/int8"]["latency"][0]["samples_ms"]


def test_per_class_counts_are_validation_counts(benched_run):
    make_report(benched_run.path)
    data = json.loads((benched_run.path / "report.json").read_text())
    val = data["validation"]
    split = json.loads((benched_run.path / "train" / "split.json").read_text())
    expected = [sum(1 for _, label in split["val"] if label == i) for i in range(len(val["classes"]))]
    assert val["split"] == "validation" and val["counts"] == expected and val["n"] == len(split["val"])
    assert sum(map(sum, val["confusion"])) == len(split["val"])
    trained = benched_run.manifest["train"]["dataset"]["counts"]
    assert expected != [trained[c] for c in val["classes"]]  # the fixture's split tells the two apart
    md = (benched_run.path / "report.md").read_text()
    assert f"| {val['classes'][0]} | {expected[0]} | " in md.split("## Validation")[1]


def test_suggested_commands_parse_with_the_real_cli():
    """Every command the reports suggest resolves to a real subcommand with valid options."""
    from edgetl.report.decide import next_commands

    rows = [{"target": "jetson-orin-nano", "verdict": "not measured here", "precision": "int8", "artifact": "x"},
            {"target": "host-cpu", "verdict": "PASS", "precision": "int8", "artifact": "host-cpu/int8"},
            {"target": "onnxruntime", "verdict": "not benched yet", "precision": "fp32", "artifact": "y"}]
    manifests = [{}, {"compiled": {"x": {}}},
                 {"compiled": {"x": {}}, "bundles": {"host-cpu/int8": {"path": "bundles/host-cpu-int8.tar.gz"}}}]
    commands = [c["command"] for m in manifests for c in next_commands("runs/my run", m, rows)]
    assert {c.split()[1] for c in commands} == {"compile", "bench", "bundle", "ship"}
    for command in commands:
        args = shlex.split(command)
        assert args[0] == "edgetl"
        sub = cli.get_command(click.Context(cli), args[1])
        sub.make_context(args[1], args[2:])  # raises click.UsageError on a missing --target


def test_undecided_targets_are_bundled_for_more_data_not_compiled_again():
    from edgetl.report.decide import next_commands

    rows = [{"target": "host-cpu", "verdict": "UNDECIDED", "precision": "int8", "artifact": "host-cpu/int8"},
            {"target": "jetson-orin-nano", "verdict": "not measured here", "precision": "int8", "artifact": "x"}]
    commands = next_commands("runs/tex", {"compiled": {"host-cpu/int8": {}, "jetson-orin-nano/int8": {}}}, rows)
    assert [c["command"] for c in commands] == [
        "edgetl bundle runs/tex --target host-cpu --precision int8",
        "edgetl bench runs/tex --target jetson-orin-nano --remote ssh://user@device"]
    assert "edgetl val BUNDLE FOLDER" in commands[0]["why"]
    bundled = {"compiled": {"host-cpu/int8": {}}, "bundles": {"host-cpu/int8": {"path": "bundles/host-cpu-int8.tar.gz"}}}
    assert [c["command"] for c in next_commands("runs/tex", bundled, rows[:1])] == [
        "edgetl val runs/tex/bundles/host-cpu-int8.tar.gz ./labelled"]
    cli.get_command(click.Context(cli), "val").make_context("val", ["runs/tex/bundles/host-cpu-int8.tar.gz", "./labelled"])


def test_the_suggested_compile_of_a_trained_run_works(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path / "run")
    result = CliRunner().invoke(cli, ["report", str(run.path)])
    assert result.exit_code == 0, result.output
    md = (run.path / "report.md").read_text()
    assert "Stages not run yet" in md and f"edgetl compile {run.path} --target host-cpu" in md
    assert "<svg" in (run.path / "report.html").read_text()  # training curves and confusion matrix
    compile_args = next(a for a in _suggested(md) if a[0] == "compile")
    result = CliRunner().invoke(cli, compile_args)
    assert result.exit_code == 0, result.output
    assert RunDir.open(run.path).manifest["compiled"]


def test_the_suggested_bundle_works_and_the_bundle_is_listed(benched_run, tmp_path):
    run = _copy(benched_run, tmp_path / "run")
    make_report(run.path)
    bundle_args = next(a for a in _suggested((run.path / "report.md").read_text()) if a[0] == "bundle")
    assert bundle_args[1:] == [str(run.path), "--target", "host-cpu", "--precision", "fp32"]
    result = CliRunner().invoke(cli, bundle_args)
    assert result.exit_code == 0, result.output

    make_report(run.path)
    md = (run.path / "report.md").read_text()
    record = RunDir.open(run.path).manifest["bundles"]["host-cpu/fp32"]
    bundles = md.split("## Bundles")[1].split("## ")[0]
    assert f"| host-cpu | {record['path']} | host-cpu/fp32 | {record['size_bytes'] / 1e6:.2f} |" in bundles
    assert record["sha256"][:16] in bundles and "| no |" in bundles  # unsigned
    assert f"edgetl ship {run.path}/{record['path']} ssh://" in md


def test_without_matplotlib_the_html_keeps_its_tables_and_says_how_to_get_charts(benched_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    written = make_report(benched_run.path)
    assert any("pip install 'edgetl[report]'" in n for n in written.notes)
    html = (benched_run.path / "report.html").read_text()
    assert "<svg" not in html and "<table" in html and "edgetl[report]" in html
    assert "Chart in report.html" not in (benched_run.path / "report.md").read_text()


def test_unreadable_result_files_are_skipped_with_a_note(benched_run, tmp_path):
    run = _copy(benched_run, tmp_path / "run")
    (run.path / "bench" / "onnxruntime" / "int8@ci.json").write_text("{not json")
    written = make_report(run.path)
    assert any("int8@ci.json" in n and "unreadable" in n for n in written.notes)
    assert "onnxruntime/fp32" in (run.path / "report.md").read_text()


def test_report_of_a_missing_run_is_exit_2(tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "nope").exists()


def test_the_headline_of_a_keyword_spotter_gives_the_false_accept_rate_with_its_interval():
    from edgetl.report.render import _headline

    train = {"backbone": "logmel-cnn", "mode": "feature-extraction", "classes": ["_background_", "go"],
             "dataset": {"val_images": 72},
             "metrics": {"val_top1": 0.625, "false_accept_rate": 0.5, "false_accept_rate_ci": [0.25, 0.75],
                         "false_accept_n": 12}}
    line = _headline({"path": "runs/kws", "train": train, "generated": "now", "edgetl": "0"})
    assert "validation top-1 62.5% on 72 samples, false accepts 50.0% [25.0%–75.0%] of 12 background clips" in line
    del train["metrics"]["false_accept_rate"]
    assert "false accepts" not in _headline({"path": "r", "train": train, "generated": "now", "edgetl": "0"})
