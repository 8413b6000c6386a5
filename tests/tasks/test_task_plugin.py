"""A second task, added the way the contract promises: one plugin distribution with a torch-free
task module and a workstation module (tests/tasks/plugin/). Train (its own flag), compile (fp32,
dynamic int8 from the task's quantization hint), bundle (its vocabulary as an asset), verify and
predict run on it through the CLI with nothing in edgetl edited; hostile asset bundles are refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.bundle.format import MANIFEST, extract_archive, file_entries
from edgetl.cli import cli
from edgetl.rundir import RunDir
from tests.bundle.test_security import entry, folder_entries, pack, refused
from tests.tasks.plugin import TASK, install, registered, write_reviews


def _ok(*args: str, stdin: str | None = None) -> str:
    result = CliRunner().invoke(cli, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A tiny-text run trained through the CLI in a fresh process (where the plugin's --max-words flag
    exists), compiled fp32 and int8 for ONNX Runtime and bundled at int8."""
    tmp = tmp_path_factory.mktemp("tinytext")
    site = install(tmp / "site")
    data = write_reviews(tmp / "reviews.csv")
    with registered(site), pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(tmp / "config"))  # no trusted keys: unsigned is fine
        mp.setenv("EDGETL_CACHE", str(tmp / "cache"))
        mp.delenv("EDGETL_TRUSTED_KEYS", raising=False)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        train = subprocess.run([sys.executable, "-m", "edgetl.cli", "train", "--task", TASK, "--data", str(data),
                                "--out", str(tmp / "run"), "--max-words", "8", "--epochs", "40"],
                               capture_output=True, text=True, env=env, timeout=300)
        assert train.returncode == 0, train.stdout + train.stderr
        run = RunDir.open(tmp / "run")
        _ok("compile", str(run.path), "--target", "onnxruntime", "--precision", "fp32,int8", "--threads", "1")
        _ok("bundle", str(run.path), "--target", "onnxruntime", "--precision", "int8")
        yield run, run.path / "bundles" / "onnxruntime-int8.tar.gz", tmp


def test_train_records_the_task_its_option_and_its_asset(text_run):
    run, _, _ = text_run
    train = run.manifest["train"]
    assert train["task"] == TASK and train["backbone"] == "bag-of-words"
    assert train["hparams"]["max_words"] == 8 and train["preprocess"]["max_length"] == 8
    assert train["assets"] == {"vocab.txt": "train/assets/vocab.txt"}
    run.verify("train/assets/vocab.txt")  # hashed in the run's artifacts


def test_compile_applies_the_tasks_quantization_hint(text_run):
    run, _, _ = text_run
    fp32, int8 = (run.manifest["compiled"][f"onnxruntime/{p}"] for p in ("fp32", "int8"))
    assert int8["options"]["quantization"]["scheme"] == "dynamic"
    assert "quantization" not in fp32["options"]
    assert int8["accuracy"]["agreement"] >= 0.9
    assert 0.9 <= int8["accuracy"]["macro_f1"] <= 1  # the task's own metric, for the gates


def test_tensorrt_sizes_its_engine_from_the_tasks_max_dims(text_run):
    """fp16 has no calibration samples to size the sequence axis: the task's max_dims does (built here
    without a GPU, as every TensorRT engine)."""
    run, _, tmp = text_run
    with registered(tmp / "site"):
        _ok("compile", str(run.path), "--target", "tensorrt", "--precision", "fp16")
    entry = RunDir.open(run.path).manifest["compiled"]["tensorrt/fp16"]
    assert entry["options"]["shapes"] == {"input_ids": [1, 8], "attention_mask": [1, 8]}


def test_bundle_verify_and_predict_text(text_run):
    run, bundle, tmp = text_run
    with registered(tmp / "site"):
        names = tarfile.open(bundle).getnames()
        assert "run-onnxruntime/assets/vocab.txt" in names
        manifest = json.loads(tarfile.open(bundle).extractfile(f"run-onnxruntime/{MANIFEST}").read())
        assert manifest["assets"] == ["vocab.txt"] and "assets/vocab.txt" in manifest["files"]
        assert json.loads(_ok("verify", str(bundle), "--json"))["ok"]
        rows = json.loads(_ok("predict", str(bundle), "the screen was lovely and great", "--json"))
        assert rows[0]["sample"] == "the screen was lovely and great" and rows[0]["top"][0]["label"] == "pos"
        rows = json.loads(_ok("predict", str(bundle), "-", "--json", stdin="bad awful phone\n\ngood nice\n"))
        assert [(r["sample"], r["top"][0]["label"]) for r in rows] == [("bad awful phone", "neg"), ("good nice", "pos")]
        lines = tmp / "lines.txt"
        lines.write_text("lovely screen\nthe battery was broken\n")
        rows = json.loads(_ok("predict", str(bundle), str(lines), "--json"))
        assert [r["top"][0]["label"] for r in rows] == ["pos", "neg"]
        accuracy = json.loads(_ok("val", str(bundle), str(tmp / "reviews.csv"), "--json"))["accuracy"]
        assert accuracy["n"] == 60 and accuracy["top1"] >= 0.9  # the task's reader on the device


def test_a_missing_device_module_is_one_line_with_the_extra(text_run, tmp_path, monkeypatch):
    _, bundle, tmp = text_run
    with registered(tmp / "site"):
        import tinytext_task

        monkeypatch.setattr(tinytext_task.TinyText, "requires", ("edgetl_no_such_tokenizer",))
        monkeypatch.setattr(tinytext_task.TinyText, "extra", "text")
        refused(["predict", str(bundle), "good"], 'needs edgetl_no_such_tokenizer, which is not installed here: '
                'pip install "edgetl[text]"', tmp_path)


def _tampered(tmp: Path, bundle: Path, edit) -> Path:
    """The bundle extracted, ``edit(root, manifest)`` applied (the manifest's hashes redone unless the
    edit returns False), and packed again unsigned."""
    root = tmp / "edit"
    shutil.rmtree(root, ignore_errors=True)
    extract_archive(bundle, root)
    manifest = json.loads((root / MANIFEST).read_text())
    if edit(root, manifest) is not False:
        manifest["files"] = file_entries(root)
    (root / MANIFEST).write_text(json.dumps(manifest))
    return pack(tmp / "bad.tar.gz", folder_entries(root, "run-onnxruntime"))


def _renamed_asset(root, m):
    (root / "assets" / "vocab.txt").rename(root / "assets" / "tokenizer.json")
    m["assets"] = ["tokenizer.json"]


def _changed_byte(root, m):
    path = root / "assets" / "vocab.txt"
    path.write_bytes(path.read_bytes().replace(b"good", b"evil"))
    return False  # the manifest still lists the old hash


def _traversal(root, m):
    m["assets"] = ["../vocab.txt"]


HOSTILE_ASSETS = {
    "changed-byte": (_changed_byte, "assets/vocab.txt"),
    "unknown-name": (_renamed_asset, "assets ['tokenizer.json'] are not the files the task tiny-text reads"),
    "dotdot-name": (_traversal, "field assets[0]: must be a slug"),
    "huge-max-length": (lambda root, m: m["preprocess"].update(max_length=10**9),
                        "field preprocess.max_length: Input should be less than or equal to 512"),
    "max-length-as-text": (lambda root, m: m["preprocess"].update(max_length="8"), "field preprocess.max_length"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_ASSETS))
def test_hostile_asset_bundles_are_refused(text_run, tmp_path, monkeypatch, kind):
    _, bundle, tmp = text_run
    edit, message = HOSTILE_ASSETS[kind]
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    with registered(tmp / "site"):
        bad = _tampered(tmp_path, bundle, edit)
        refused(["predict", str(bad), "good"], message, tmp_path / "cache")


def test_an_asset_that_is_a_link_is_refused(text_run, tmp_path, monkeypatch):
    _, bundle, tmp = text_run
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "edit"
    extract_archive(bundle, root)
    members = [(info, data) for info, data in folder_entries(root, "run-onnxruntime")
               if info.name != "run-onnxruntime/assets/vocab.txt"]
    members.append(entry("run-onnxruntime/assets/vocab.txt", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd"))
    with registered(tmp / "site"):
        refused(["verify", str(pack(tmp_path / "bad.tar.gz", members))], "vocab.txt", tmp_path / "cache")


def test_a_task_option_under_another_task_is_refused(text_run, digits_dir, tmp_path):
    _, _, tmp = text_run
    with registered(tmp / "site"):
        import edgetl

        with pytest.raises(edgetl.errors.ConfigError, match="option --max-words is for --task tiny-text, not image"):
            edgetl.train(str(digits_dir), {"max_words": 4}, out=str(tmp_path / "run"))
        with pytest.raises(edgetl.errors.UnknownNameError, match="unknown tiny-text backbone 'efficientnet_lite0'"):
            edgetl.train(str(tmp / "reviews.csv"), out=str(tmp_path / "run"), task=TASK, backbone="efficientnet_lite0")
        assert not (tmp_path / "run").exists()
        assert "bag-of-words" in _ok("backbones", "--task", TASK)
    refused(["train", "--task", "tiny-txt", "--data", str(digits_dir), "--out", str(tmp_path / "run")],
            "unknown task 'tiny-txt'", tmp_path)
