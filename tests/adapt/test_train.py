"""edgetl train end to end on real (tiny) images with timm's tiny test model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from edgetl.adapt.options import TrainOptions  # noqa: E402
from edgetl.adapt.train import train  # noqa: E402
from edgetl.rundir import RunDir  # noqa: E402

BACKBONE = "timm:test_efficientnet"


def _tiny(**options) -> TrainOptions:
    return TrainOptions(pretrained=False, image_size=32, seed=0, **options)
EDGETL = [sys.executable, "-m", "edgetl.cli"]


def _cli(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGETL, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def test_feature_extraction_writes_a_complete_run(digits_dir, tmp_path):
    section = train(digits_dir, _tiny(mode="feature-extraction", epochs=20), out=tmp_path / "run", backbone=BACKBONE)
    run = RunDir.open(tmp_path / "run", need="train")
    manifest = run.manifest
    assert manifest["train"] == json.loads(json.dumps(section))
    assert section["classes"] == ["0", "1", "2"] and section["num_classes"] == 3
    assert section["preprocess"]["input_size"] == [32, 32]
    assert section["dataset"]["train_images"] + section["dataset"]["val_images"] == 60
    state = load_file(run.verify("train/model.safetensors"))
    assert state["classifier.weight"].shape[0] == 3
    history = json.loads((run.path / "train" / "history.json").read_text())
    assert history and all(row["phase"] == "head" for row in history)
    assert section["metrics"]["val_top1"] == max(r["val_top1"] for r in history)


def test_without_a_console_train_prints_nothing_and_with_one_its_bars_go_there(digits_dir, tmp_path, capfd,
                                                                                 monkeypatch):
    """A notebook silences ``edgetl.train`` with ``console=None`` (the default) and redirects it with its
    own Console: feature extraction, the head and fine-tuning draw their bars there, never on stdout."""
    import io

    from rich.console import Console

    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))  # features are computed, not read back
    options = _tiny(mode="finetune", unfreeze="1", epochs=1, head_epochs=2, augment=False)
    train(digits_dir, options, out=tmp_path / "quiet", backbone=BACKBONE)
    assert capfd.readouterr() == ("", "")

    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache2"))
    redirected = io.StringIO()
    train(digits_dir, options, out=tmp_path / "shown", backbone=BACKBONE, console=Console(file=redirected, width=120))
    assert capfd.readouterr() == ("", "")
    for bar in ("features (train)", "head", "finetune 1/1", "edgetl train"):
        assert bar in redirected.getvalue(), bar


def test_training_is_reproducible(digits_dir, tmp_path):
    a = train(digits_dir, _tiny(epochs=5), out=tmp_path / "a", backbone=BACKBONE)
    b = train(digits_dir, _tiny(epochs=5), out=tmp_path / "b", backbone=BACKBONE)
    assert RunDir(tmp_path / "a").manifest["artifacts"]["train/model.safetensors"] == \
        RunDir(tmp_path / "b").manifest["artifacts"]["train/model.safetensors"]
    assert a["metrics"]["val_top1"] == b["metrics"]["val_top1"]


def test_finetune_trains_only_the_last_stages(digits_dir, tmp_path):
    from edgetl.models.build import body_stages, create_model
    from edgetl.models.registry import resolve

    train(digits_dir, _tiny(mode="finetune", unfreeze="1", epochs=2, head_epochs=3), out=tmp_path / "ft",
          backbone=BACKBONE)
    history = json.loads((tmp_path / "ft/train/history.json").read_text())
    assert {r["phase"] for r in history} == {"head", "finetune"}
    torch.manual_seed(0)  # train() seeds before building; rebuild the same random init
    start = create_model(resolve("timm:test_efficientnet"), 3, pretrained=False)
    trained = create_model(resolve("timm:test_efficientnet"), 3, pretrained=False)
    trained.load_state_dict(load_file(tmp_path / "ft/train/model.safetensors"))
    stages_start, stages_trained = body_stages(start), body_stages(trained)
    assert len(stages_start) > 2
    # the fine-tuned weights were kept (not the linear probe's), so the last stage must show training
    assert RunDir.open(tmp_path / "ft").manifest["train"]["metrics"]["kept"]["phase"] == "finetune"
    for i, (before, after) in enumerate(zip(stages_start, stages_trained, strict=True)):
        changed = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
        if i == len(stages_start) - 1:
            assert any(changed), "the last stage is unfrozen with --unfreeze 1: its weights must change"
        else:
            assert not any(changed), f"stage {i} must stay frozen with --unfreeze 1"


def test_second_run_reuses_cached_features(digits_dir, tmp_path):
    env = {**os.environ, "EDGETL_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    args = ["train", "--data", str(digits_dir), "--backbone", "timm:test_efficientnet", "--no-pretrained",
            "--image-size", "32", "--epochs", "3"]
    first = _cli(*args, "--out", str(tmp_path / "r1"), env=env)
    assert first.returncode == 0, first.stderr
    assert "features (train)" in first.stdout
    second = _cli(*args, "--out", str(tmp_path / "r2"), env=env)
    assert second.returncode == 0, second.stderr
    assert "features (train)" not in second.stdout
    assert "val top-1" in second.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/does/not/exist"], "does not exist"),
        (["--backbone", "efficientnet_lte0"], "Did you mean 'efficientnet_lite0'"),
        (["--unfreeze", "few"], "--unfreeze"),
        (["--val-split", "1.5"], "--val-split"),
        (["--weights", "{weights}"], "do not fit"),
        (["--seed", "-1"], "option --seed: Input should be greater than or equal to 0"),
        (["--seed", str(2**32)], "option --seed: Input should be less than or equal to 4294967295"),
        (["--weight-decay", "inf"], "option --weight-decay: Input should be a finite number"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(digits_dir, tmp_path, args, message):
    from safetensors.torch import save_file

    weights = tmp_path / "other.safetensors"
    save_file({"conv_stem.weight": torch.zeros(8, 3, 3, 3)}, str(weights))
    args = [a.replace("{weights}", str(weights)) for a in args]
    base = {"--data": str(digits_dir), "--backbone": "timm:test_efficientnet", "--image-size": "32",
            "--out": str(tmp_path / "run")}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    result = _cli("train", *[x for kv in base.items() for x in kv])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ctrl_c_keeps_the_best_checkpoint(digits_dir, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [*EDGETL, "train", "--data", str(digits_dir), "--backbone", "timm:test_efficientnet", "--no-pretrained",
         "--image-size", "32", "--mode", "finetune", "--unfreeze", "all", "--epochs", "500", "--patience", "500",
         "--head-epochs", "2", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    ckpt = out / "train" / "model.safetensors"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    state = load_file(ckpt)  # still a valid checkpoint
    run = RunDir.open(out, need="train")
    assert run.manifest["train"]["metrics"]["interrupted"] is True
    assert run.verify("train/model.safetensors") == ckpt and "classifier.weight" in state
    assert torch.load(out / "train" / "last.pt", weights_only=True)["phases"]  # what --resume continues from


def test_torchrun_two_processes_produce_a_valid_run(digits_dir, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "edgetl.cli", "train", "--data",
         str(digits_dir), "--backbone", "timm:test_efficientnet", "--no-pretrained", "--image-size", "32",
         "--mode", "finetune", "--unfreeze", "all", "--no-augment", "--epochs", "2", "--head-epochs", "3",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = RunDir.open(out, need="train")
    assert run.manifest["train"]["world_size"] == 2
    assert run.verify("train/model.safetensors").is_file()
    assert any(r["phase"] == "finetune" for r in json.loads((out / "train/history.json").read_text()))


def _split_copy(digits_dir: Path, dest: Path, val_per_class: int = 6) -> Path:
    """digits_dir laid out as dest/train/<class>/ and dest/val/<class>/, as many public data sets are."""
    import shutil

    for cls in sorted(d for d in digits_dir.iterdir() if d.is_dir()):
        images = sorted(cls.iterdir())
        for part, chosen in (("val", images[:val_per_class]), ("train", images[val_per_class:])):
            (dest / part / cls.name).mkdir(parents=True)
            for image in chosen:
                shutil.copy(image, dest / part / cls.name / image.name)
    return dest


def test_split_folder_and_a_probe_that_fine_tuning_cannot_beat(digits_dir, tmp_path):
    """train/ and val/ are used as such (not as two classes); a fine-tuning that diverges (lr 9 on
    every stage) never beats the linear probe, and the summary, manifest and history say the probe
    was kept."""
    data = _split_copy(digits_dir, tmp_path / "d")
    out = tmp_path / "run"
    result = _cli("train", "--data", str(data), "--out", str(out), "--backbone", "timm:test_efficientnet",
                  "--no-pretrained", "--image-size", "32", "--mode", "finetune", "--unfreeze", "all", "--no-augment",
                  "--head-epochs", "5", "--epochs", "2", "--lr", "9", "--backbone-lr-scale", "1",
                  env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"using {data / 'train'} for training and {data / 'val'} for validation" in result.stdout
    section = RunDir.open(out).manifest["train"]
    assert section["classes"] == sorted(d.name for d in digits_dir.iterdir() if d.is_dir())
    assert section["dataset"]["val_images"] == 6 * len(section["classes"])
    assert set(section["dataset"]["val_counts"].values()) == {6}

    kept = section["metrics"]["kept"]
    assert kept["phase"] == "head" and kept["finetune_best_val_top1"] < kept["val_top1"]
    assert "linear probe (epoch" in result.stdout and "fine-tuning did not improve on it" in result.stdout
    history = json.loads((out / "train" / "history.json").read_text())
    assert [(r["phase"], r["epoch"]) for r in history if r.get("kept")] == [("head", kept["epoch"])]
    assert "val images" in result.stdout  # the per-class count is the validation count
    assert f"next: edgetl compile {out} --target host-cpu" in result.stdout
