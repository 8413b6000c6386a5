"""Text training on the tiny BERT (feature extraction, fine-tuning's layer groups), the run it
writes, and the CLI path: train (the real MiniLM), compile, bundle, verify, predict, bad input."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgetl.adapt.options import TrainOptions
from edgetl.bundle import signing
from edgetl.bundle.format import MANIFEST, file_entries, write_archive
from edgetl.cli import cli
from edgetl.data.arrays import DataView
from edgetl.models.build import load_trained
from edgetl.rundir import RunDir
from edgetl.text import train as text_train

TASK = "text-classification"


def _ok(*args: str, stdin: str | None = None) -> str:
    result = CliRunner().invoke(cli, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_bert, reviews_csv) -> RunDir:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("text-run") / "run"
    text_train.train(reviews_csv, TrainOptions(head_epochs=60, lr=0.02, seed=0), out=out, backbone=str(tiny_bert))
    return RunDir.open(out)


def test_run_records_task_tokens_asset_and_hash(text_run, tiny_bert, reviews_csv):
    train = text_run.manifest["train"]
    assert train["task"] == TASK and train["arch"] == "bert" and train["mode"] == "feature-extraction"
    assert train["assets"] == {"tokenizer.json": "train/assets/tokenizer.json"}
    assert text_run.verify("train/assets/tokenizer.json").read_bytes() == (tiny_bert / "tokenizer.json").read_bytes()
    tokens = train["dataset"]["tokens"]
    assert tokens["median_tokens"] <= train["preprocess"]["max_length"] <= tokens["longest_tokens"]
    assert train["hparams"]["max_length"] is None  # measured on the data, not given
    assert train["dataset"]["train_images"] + train["dataset"]["val_images"] == 48
    assert train["metrics"]["val_top1"] >= 0.8 and 0 <= train["metrics"]["val_macro_f1"] <= 1
    split = json.loads(text_run.verify("train/split.json").read_text())
    assert isinstance(split["train"][0][0], str) and " " in split["train"][0][0]  # the text itself
    assert train["inputs_hash"] == text_train.inputs_hash(reviews_csv, TrainOptions(head_epochs=60, lr=0.02),
                                                          backbone=str(tiny_bert))
    other = text_train.inputs_hash(reviews_csv, TrainOptions(head_epochs=60, lr=0.02, max_length=12),
                                   backbone=str(tiny_bert))
    assert other != train["inputs_hash"]


def test_load_trained_is_the_trained_classifier(text_run):
    view = DataView(text_run)
    feeds = view.val_feeds()
    model = load_trained(text_run)
    with torch.no_grad():
        logits = model(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy()
    pred = logits.argmax(1)
    assert float((pred == view.val_labels()).mean()) == text_run.manifest["train"]["metrics"]["val_top1"]
    np.testing.assert_allclose(view.reference()["logits"], logits, atol=1e-5)


def test_finetune_groups_unfreeze_the_last_layers_with_decaying_rates(tiny_bert):
    from edgetl.adapt.feature_extraction import build_head
    from edgetl.text.bert import TextClassifier, load_encoder

    model = TextClassifier(load_encoder(tiny_bert), build_head(32, 2, "linear"))
    opts = TrainOptions(mode="finetune", unfreeze="1", lr=0.01, backbone_lr_scale=0.1, layer_decay=0.5)
    groups = text_train._layer_groups(model, opts)
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.001])
    assert all(p.requires_grad for p in model.encoder.layers[1].parameters())
    assert not any(p.requires_grad for p in [*model.encoder.layers[0].parameters(), *model.encoder.word.parameters()])
    opts = TrainOptions(mode="finetune", unfreeze="all", lr=0.01, backbone_lr_scale=0.1, layer_decay=0.5)
    assert [g["lr"] for g in text_train._layer_groups(model, opts)] == pytest.approx([0.01, 0.001, 0.0005])
    defaults = TrainOptions(mode="finetune", unfreeze="all", lr=0.01)  # the text recipe, not the images'
    assert [g["lr"] for g in text_train._layer_groups(model, defaults)] == pytest.approx([0.01, 0.0005, 0.00045])


def test_finetune_trains_and_keeps_the_better_phase(tmp_path, tiny_bert, reviews_csv):
    section = text_train.train(reviews_csv, TrainOptions(mode="finetune", unfreeze="all", epochs=1, head_epochs=5),
                               out=tmp_path / "run", backbone=str(tiny_bert))
    history = json.loads((tmp_path / "run" / "train" / "history.json").read_text())
    assert [r["phase"] for r in history][-1] == "finetune"
    assert sum(r["kept"] for r in history) == 1 and section["metrics"]["kept"]["phase"] in ("head", "finetune")
    assert section["choices"]["finetune_recipe"] == text_train.RECIPE


def test_compile_bundle_verify_predict_val(text_run, reviews_csv):
    run = str(text_run.path)
    shown = _ok("compile", run, "--target", "onnxruntime", "--precision", "fp32,int8", "--threads", "1")
    int8 = text_run.manifest["compiled"]["onnxruntime/int8"]
    # the summary says the task's metric and why this int8 scheme
    assert "macro_f1" in shown and f"{int8['accuracy']['macro_f1']:.3f}" in shown
    assert "onnxruntime/int8: int8: ONNX Runtime's transformer fusion" in " ".join(shown.split())
    assert int8["options"]["quantization"]["scheme"] == "dynamic" and int8["accuracy"]["agreement"] >= 0.9
    assert int8["options"]["per_channel"] and not int8["options"]["reduce_range"]  # the task's measured choice
    assert int8["options"]["fusion"] == "bert" and int8["options"]["fused_ops"]  # the tiny BERT's LayerNorms fuse
    _ok("bundle", run, "--target", "onnxruntime", "--precision", "int8")
    bundle = str(text_run.path / "bundles" / "onnxruntime-int8.tar.gz")
    assert json.loads(_ok("verify", bundle, "--json"))["ok"]
    rows = json.loads(_ok("predict", bundle, "the film was lovely and superb", "--json"))
    assert rows[0]["top"][0]["label"] == "pos"
    rows = json.loads(_ok("predict", bundle, "-", "--json", stdin="awful and broken plot\n\nsuperb great actor\n"))
    assert [r["top"][0]["label"] for r in rows] == ["neg", "pos"]
    # texts of many lengths in one labelled CSV: batches padded to their own longest text
    got = json.loads(_ok("val", bundle, str(reviews_csv), "--json"))
    got = got["accuracy"]
    assert got["n"] == 48 and got["top1"] >= 0.8 and 0.8 <= got["macro_f1"] <= 1 and not got["skipped"]
    shown = _ok("val", bundle, str(reviews_csv))  # the table a person reads: samples, and macro-F1 with its interval
    lo, hi = got["macro_f1_ci"]
    assert f"{got['macro_f1']:.3f} [{lo:.3f}, {hi:.3f}]" in shown and "(48 samples)" in shown
    assert "images" not in shown
    for args, message in (([bundle, "reviews.txt"], "reviews.txt: no such file"),  # a typo is not a text
                          (["val", bundle, "reviews.cvs"], "labelled data reviews.cvs does not exist")):
        result = CliRunner().invoke(cli, args if args[0] == "val" else ["predict", *args])
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_predict_never_stats_a_text_and_val_lists_skipped_rows(text_run, reviews_csv, tmp_path, monkeypatch):
    """A text (from stdin) equal to a folder's or a FIFO's name in the working directory is still a
    text, never opened; the rows val's reader skipped (an empty text) are listed, not dropped."""
    import os

    run = str(text_run.path)
    _ok("compile", run, "--target", "onnxruntime", "--precision", "fp32", "--threads", "1")
    _ok("bundle", run, "--target", "onnxruntime", "--precision", "fp32")
    bundle = str(text_run.path / "bundles" / "onnxruntime-fp32.tar.gz")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    os.mkfifo(tmp_path / "superb")
    rows = json.loads(_ok("predict", bundle, "-", "--json", stdin="docs\nsuperb\n"))
    assert [r.get("error") for r in rows] == [None, None] and all(r["top"] for r in rows)
    data = tmp_path / "val.csv"
    data.write_text(reviews_csv.read_text(encoding="utf-8") + ",pos\n", encoding="utf-8")
    got = json.loads(_ok("val", bundle, str(data), "--json"))["accuracy"]
    assert got["n"] == 48 and [s["reason"] for s in got["skipped"]] == ["empty text"]


def test_cli_trains_the_real_minilm(tmp_path, reviews_csv):
    out = tmp_path / "run"
    _ok("train", "--task", TASK, "--data", str(reviews_csv), "--out", str(out), "--max-length", "16",
        "--head-epochs", "10")
    train = RunDir.open(out).manifest["train"]
    assert train["backbone"] == "minilm-l6" and train["preprocess"]["max_length"] == 16
    assert train["backbone_facts"]["config"]["hidden_size"] == 384 and train["hparams"]["max_length"] == 16


@pytest.mark.parametrize("content, extra, message", [
    ("text,category\nhi,a\n", [], "lacks a 'text' and a 'label' column"),
    ("text,label\nhi,a\nho,a\n", [], "found 1 class ('a')"),
    ("text,label\nhi,a\nho,\x1b[31mb\n", [], "the label '?[31mb' must be 1..200 characters without control"),
    ("text,label\nhi,a\nho,b\n", ["--mode", "domain-adapt", "--target-data", "."], "is not for text-classification"),
    ("text,label\nhi,a\nho,b\n", ["--unfreeze", "auto", "--mode", "finetune"], "--unfreeze auto is for images"),
    ('text,label\nhi,a\n"ho,b\nhey,a\n', [], 'd.csv:3: a quoted field opened in this row is never closed'),
    ("text,label\nhi,a\nho,b\n", ["--image-size", "64"], "option --image-size is for images, not text-"),
    ("text,label\nhi,a\nho,b\n", ["--no-pretrained"], "option --no-pretrained is for images, not text-"),
])
def test_bad_text_input_is_one_line_and_writes_nothing(tmp_path, content, extra, message):
    data = tmp_path / "d.csv"
    data.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(cli, ["train", "--task", TASK, "--data", str(data), "--out", str(tmp_path / "run"),
                                      *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def _retar(bundle: Path, dest: Path, change, key: Path | None = None) -> Path:
    """``bundle`` extracted, ``change(folder)`` applied, its hashes listed again (signed with ``key``
    when given, else its signature left as it was), and packed as ``dest``."""
    with tarfile.open(bundle) as tar:
        tar.extractall(dest.parent / "x", filter="data")
    root = next((dest.parent / "x").iterdir())
    change(root)
    if key is not None:
        manifest = json.loads((root / MANIFEST).read_text())
        manifest["files"] = file_entries(root)
        (root / MANIFEST).write_text(json.dumps(manifest))
        (root / signing.SIGNATURE).write_bytes(signing.sign(signing.load_private_key(key), (root / MANIFEST).read_bytes()))
    write_archive(root, dest, root.name)
    return dest


def _refused(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_a_signed_text_bundle_refuses_a_changed_or_hostile_tokenizer(text_run, tmp_path, monkeypatch):
    """One byte of the signed tokenizer changed: refused by its hash; a ReDoS tokenizer signed by the
    trusted key (a careless signer): refused when the bundle opens, before a text is tokenized."""
    private, public = signing.new_key_pair(tmp_path / "keys", "release")
    monkeypatch.setenv("EDGETL_TRUSTED_KEYS", str(public))
    run = str(text_run.path)
    _ok("compile", run, "--target", "onnxruntime", "--precision", "fp32", "--threads", "1")
    _ok("bundle", run, "--target", "onnxruntime", "--precision", "fp32", "--sign", str(private))
    bundle = text_run.path / "bundles" / "onnxruntime-fp32.tar.gz"

    def flip_a_byte(root: Path) -> None:
        data = bytearray((root / "assets" / "tokenizer.json").read_bytes())
        data[len(data) // 2] ^= 1
        (root / "assets" / "tokenizer.json").write_bytes(bytes(data))

    changed = _retar(bundle, tmp_path / "changed" / "b.tar.gz", flip_a_byte)
    _refused(["verify", str(changed)], "assets/tokenizer.json does not match its sha256")
    _refused(["predict", str(changed), "lovely"], "assets/tokenizer.json does not match its sha256")

    def redos(root: Path) -> None:
        spec = json.loads((root / "assets" / "tokenizer.json").read_text())
        spec["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(a|aa)+$"}, "behavior": "Isolated",
                                 "invert": False}
        (root / "assets" / "tokenizer.json").write_text(json.dumps(spec))

    hostile = _retar(bundle, tmp_path / "hostile" / "b.tar.gz", redos, key=private)
    for args in (["verify", str(hostile)], ["predict", str(hostile), "a" * 40 + "!"]):
        _refused(args, "not a tokenizer.json edgetl runs (pre_tokenizer 'Split' is not one of")


def test_a_pad_id_past_the_vocabulary_is_one_line(text_run, reviews_csv, tmp_path):
    """An unsigned bundle whose pad_id the model cannot embed: val (texts padded in batches) says so in
    one line (predict runs one text at a time: nothing is padded)."""
    run = str(text_run.path)
    _ok("compile", run, "--target", "onnxruntime", "--precision", "fp32", "--threads", "1")
    _ok("bundle", run, "--target", "onnxruntime", "--precision", "fp32")

    def pad_past_the_vocabulary(root: Path) -> None:
        manifest = json.loads((root / MANIFEST).read_text())
        manifest["preprocess"]["pad_id"] = 9_999_999
        (root / MANIFEST).write_text(json.dumps(manifest))
        (root / signing.SIGNATURE).unlink(missing_ok=True)

    bundle = _retar(text_run.path / "bundles" / "onnxruntime-fp32.tar.gz", tmp_path / "b" / "b.tar.gz",
                    pad_past_the_vocabulary)
    _refused(["val", str(bundle), str(reviews_csv)], "model.fp32.onnx cannot run these inputs")


def test_ship_refuses_a_hostile_tokenizer_and_keeps_the_current_text_bundle(text_run, sshd, tmp_path):
    """A device running a text bundle is sent a newer one whose tokenizer would panic or hang predict:
    refused (locally or by the device's verify), and the device's current bundle stays."""
    import os
    import sys

    from edgetl.bundle.ship import ship
    from edgetl.errors import EdgetlError

    edgetl = str(Path(sys.executable).with_name("edgetl"))
    run = str(text_run.path)
    _ok("compile", run, "--target", "onnxruntime", "--precision", "fp32", "--threads", "1")
    _ok("bundle", run, "--target", "onnxruntime", "--precision", "fp32")
    good = text_run.path / "bundles" / "onnxruntime-fp32.tar.gz"
    dest = tmp_path / "device"
    ship(good, sshd.url(str(dest)), remote_edgetl=edgetl, ssh_options=sshd.options)
    current = dest / json.loads(tarfile.open(good).extractfile(f"{_top(good)}/{MANIFEST}").read())["name"] / "current"
    before = os.readlink(current)

    def redos_newer(root: Path) -> None:
        spec = json.loads((root / "assets" / "tokenizer.json").read_text())
        spec["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(a|aa)+$"}, "behavior": "Isolated",
                                 "invert": False}
        (root / "assets" / "tokenizer.json").write_text(json.dumps(spec))
        manifest = json.loads((root / MANIFEST).read_text())
        manifest["release"] += 1
        manifest["files"] = file_entries(root)
        (root / MANIFEST).write_text(json.dumps(manifest))
        (root / signing.SIGNATURE).unlink(missing_ok=True)

    hostile = _retar(good, tmp_path / "hostile" / "b.tar.gz", redos_newer)
    with pytest.raises(EdgetlError, match="not a tokenizer.json edgetl runs"):
        ship(hostile, sshd.url(str(dest)), remote_edgetl=edgetl, ssh_options=sshd.options)
    assert os.readlink(current) == before
    assert json.loads(_ok("predict", str(current), "lovely superb film", "--json"))[0]["top"][0]["label"] == "pos"


def _top(archive: Path) -> str:
    with tarfile.open(archive) as tar:
        return tar.next().name


def test_deploy_refuses_an_image_flag_under_text_before_any_work(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text,label\nhi,a\nho,b\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["deploy", "--task", TASK, "--data", str(data), "--targets", "host-cpu",
                                      "--out", str(tmp_path / "run"), "--no-augment"])
    assert result.exit_code == 2, result.output
    assert "option --augment/--no-augment is for images, not text-classification" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_summary_lists_skipped_rows_and_says_where_max_length_came_from(tmp_path, tiny_bert, reviews_csv):
    from rich.console import Console

    data = tmp_path / "d.csv"
    data.write_text(reviews_csv.read_text(encoding="utf-8") + ",good\nno label here,\n", encoding="utf-8")
    console = Console(record=True, width=200)
    text_train.train(data, TrainOptions(head_epochs=2), out=tmp_path / "run", backbone=str(tiny_bert),
                     console=console)
    shown = console.export_text()
    rows = len(reviews_csv.read_text(encoding="utf-8").splitlines())
    assert "skipped 2 text(s):" in shown
    assert f"d.csv:{rows + 1}: empty text" in shown and f"d.csv:{rows + 2}: empty label" in shown
    assert "95th percentile of the training texts, at most 128" in shown


def test_summary_says_when_fine_tuning_did_not_beat_the_head():
    history = [{"phase": "head", "epoch": 1, "val_top1": 0.9}, {"phase": "finetune", "epoch": 1, "val_top1": 0.85},
               {"phase": "finetune", "epoch": 2, "val_top1": 0.875}]
    assert text_train._kept_text({"phase": "head", "epoch": 1}, history) == (
        "head epoch 1; fine-tuning did not improve on it (best val top-1 87.50% in 2 epoch(s))")
    assert text_train._kept_text({"phase": "finetune", "epoch": 2}, history) == "finetune epoch 2"
    assert text_train._kept_text({"phase": "head", "epoch": 1}, history[:1]) == "head epoch 1"
