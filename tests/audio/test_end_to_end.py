"""A trained keyword spotter through the CLI: int8 keeps the log-mel front end float, the bundle
verifies, and ``predict`` answers WAV files and folders on the device side."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edgetl.cli import cli  # noqa: E402


@pytest.fixture(scope="module")
def compiled(kws_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("e2e") / "kws"
    shutil.copytree(kws_run.path, run)
    result = CliRunner().invoke(cli, ["compile", str(run), "--target", "onnxruntime", "--precision", "int8"])
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def bundle(compiled):
    made = CliRunner().invoke(cli, ["bundle", str(compiled), "--target", "onnxruntime", "--precision", "int8"])
    assert made.exit_code == 0, made.output
    return compiled / "bundles" / "onnxruntime-int8.tar.gz"


def test_int8_keeps_the_frontend_float(compiled):
    import onnx

    from edgetl.backends._qdq import prefixed_nodes

    model = onnx.load(str(compiled / "compiled" / "onnxruntime" / "int8" / "model.int8.onnx"))
    graph, kept = model.graph, set(prefixed_nodes(model, ["frontend"]))  # by the exporter's module scopes
    frontend = [n for n in graph.node if n.name in kept]
    produced_by = {out: n.op_type for n in graph.node for out in n.output}
    assert frontend and not [n for n in frontend if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    for conv in (n for n in frontend if n.op_type == "Conv"):  # the STFT: float weights, float input
        assert all(produced_by.get(i) != "DequantizeLinear" for i in conv.input)
    assert "DequantizeLinear" in produced_by.values()  # the CNN after it is int8


def test_bundle_verifies_and_predicts_wav_files_and_folders(bundle, kws_dir):
    runner = CliRunner()
    verified = runner.invoke(cli, ["verify", str(bundle)])
    assert verified.exit_code == 0 and "golden samples reproduce" in verified.output
    clip = next((kws_dir / "val" / "yes").glob("*.wav"))
    answered = runner.invoke(cli, ["predict", str(bundle), str(clip), str(kws_dir / "val" / "no"), "--json"])
    assert answered.exit_code == 0, answered.output
    rows = json.loads(answered.output)
    assert [r["sample"] for r in rows][:1] == [str(clip)] and len(rows) == 11
    assert {r["top"][0]["label"] for r in rows} <= {"_background_", "no", "yes"}


def test_a_corrupt_wav_is_its_rows_error_and_the_others_go_on(bundle, kws_dir, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x04\x00\x00\x00WAVE")
    clip = next((kws_dir / "val" / "yes").glob("*.wav"))
    answered = CliRunner().invoke(cli, ["predict", str(bundle), str(bad), str(clip), "--json"])
    assert answered.exit_code == 2
    rows = json.loads(answered.stdout)
    assert rows[0]["error"] == f"{bad}: not a readable WAV file (no fmt chunk)" and rows[1]["top"]
    assert answered.stderr.strip() == f"error: 1 of 2 sample(s) could not be read, e.g. {rows[0]['error']}"


def test_val_shows_the_false_accept_rate_with_its_interval(bundle, kws_dir):
    runner = CliRunner()
    result = json.loads(runner.invoke(cli, ["val", str(bundle), str(kws_dir / "val"), "--json"]).output)["accuracy"]
    lo, hi = result["false_accept_rate_ci"]
    assert result["false_accept_n"] == 10 and lo <= result["false_accept_rate"] <= hi  # 10 held-out speakers
    table = runner.invoke(cli, ["val", str(bundle), str(kws_dir / "val")], terminal_width=200)
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if "false accepts (10 background)" in line)
    assert f"{result['false_accept_rate']:.1%} [{lo:.1%}, {hi:.1%}]" in row
    assert "images" not in table.output


def test_predict_and_val_help_teach_the_audio_inputs():
    runner = CliRunner()
    assert "predict kws-bundle.tar.gz clip.wav" in runner.invoke(cli, ["predict", "--help"]).output
    assert "_background_" in runner.invoke(cli, ["val", "--help"]).output
    train = runner.invoke(cli, ["train", "--help"], terminal_width=200).output
    assert "train --task audio-classification --data ./keywords" in train and "folders of .wav per word" in train
    assert "deploy --task audio-classification --data ./keywords" in runner.invoke(cli, ["deploy", "--help"]).output


def test_compile_says_what_int8_kept_float_and_the_false_accept_rate(compiled):
    shown = CliRunner().invoke(cli, ["compile", str(compiled), "--target", "onnxruntime", "--precision", "int8"],
                               terminal_width=250)
    assert shown.exit_code == 0, shown.output
    assert "false_accept_rate" in shown.output and "unchanged [1]" in shown.output
    assert "[1] onnxruntime/int8: int8: keeps frontend/* float: int8 of the log-mel front end" in shown.output
