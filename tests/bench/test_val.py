"""Accuracy on the device: `edgetl val BUNDLE FOLDER` and `edgetl bench BUNDLE --data FOLDER`,
in a fresh interpreter that cannot import torch (what a device with the base install has)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgetl.bench.labelled import labelled_images
from edgetl.cli import cli
from edgetl.errors import DataError

NOT_ON_DEVICE = ["torch", "torchvision", "timm", "onnx", "onnxscript", "safetensors", "openvino", "nncf",
                 "tensorrt", "tensorrt_rtx", "sklearn", "matplotlib"]


def device_cli(*args: str) -> subprocess.CompletedProcess:
    """``edgetl ARGS`` in a fresh interpreter where importing any of NOT_ON_DEVICE fails."""
    code = (
        "import sys\n"
        f"for m in {NOT_ON_DEVICE!r}: sys.modules[m] = None\n"
        "from edgetl.cli import main\n"
        f"sys.argv = ['edgetl', *{list(args)!r}]\n"
        "main()\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory):
    """The tiny run compiled for ONNX Runtime int8 under a profile with an accuracy budget, bundled."""
    from edgetl.bundle.create import create_bundle
    from edgetl.compiler import compile

    home = tmp_path_factory.mktemp("val")
    run = home / "run"
    shutil.copytree(tiny_run.path, run)
    (home / "targets").mkdir()
    (home / "targets" / "gated.toml").write_text(
        'runtime = "onnxruntime"\nprecision = "int8"\n\n[budgets]\nmax_accuracy_drop_pp = 1.0\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)  # ./targets/ holds the user's own profiles
        compile(run, ["gated"], progress=False)
        return create_bundle(run, "gated")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "edgetl-cache"))


def test_val_measures_top1_per_class_with_intervals_without_torch(bundle, digits_dir):
    out = device_cli("val", str(bundle), str(digits_dir), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    acc = result["accuracy"]
    assert acc["n"] == 60 and acc["skipped"] == []  # 3 classes x 20 images
    assert acc["top1_ci"][0] <= acc["top1"] <= acc["top1_ci"][1]
    assert [c["class"] for c in acc["per_class"]] == ["0", "1", "2"] and all(c["n"] == 20 for c in acc["per_class"])
    ws = result["workstation_accuracy"]
    assert ws["n"] == 12 and acc["fp32_top1"] == ws["fp32_top1"]  # the drop is against the workstation's FP32
    lo, hi = acc["drop_ci_pp"]
    assert lo <= acc["drop_pp"] <= hi and "unpaired" in acc["drop_against"]

    table = device_cli("val", str(bundle), str(digits_dir))
    assert table.returncode == 0, table.stderr
    for text in ("this device [95% CI]", "workstation (bundle manifest)", "top-1", "per class", "drop vs FP32"):
        assert text in table.stdout


def test_a_csv_of_path_label_works_too(bundle, digits_dir, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in sorted(digits_dir.glob("*/*.png"))[:10]))
    result = CliRunner().invoke(cli, ["val", str(bundle), str(csv), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"]["n"] == 10


def test_bench_bundle_with_data_decides_the_accuracy_gate_and_without_says_not_measured_here(bundle, digits_dir):
    out = device_cli("bench", str(bundle), "--data", str(digits_dir), "--iterations", "10", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    check = doc["gates"]["checks"][0]
    assert doc["accuracy"]["n"] == 60 and check["name"] == "accuracy_drop"
    assert check["status"] in ("PASS", "FAIL", "UNDECIDED") and check["interval"] == doc["accuracy"]["drop_ci_pp"]

    out = device_cli("bench", str(bundle), "--iterations", "10", "--check")
    assert out.returncode == 0, out.stderr  # not measured here never fails --check
    assert "NOT MEASURED HERE accuracy_drop: not measured here" in out.stdout
    assert "UNDECIDED" not in out.stdout  # nothing was measured that the data could not decide
    assert "the workstation measured a drop of" in out.stdout


def test_unknown_class_folders_are_named_in_one_line_and_exit_2(bundle, digits_dir, tmp_path):
    data = tmp_path / "labelled"
    shutil.copytree(digits_dir, data)
    shutil.copytree(data / "2", data / "seven")
    shutil.copytree(data / "2", data / "cat")
    for args in (["val", str(bundle), str(data)], ["bench", str(bundle), "--data", str(data)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert "'cat', 'seven' are not among the bundle's labels (0, 1, 2)" in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_bad_data_paths_and_data_on_a_run_are_one_line_errors(bundle, tiny_run, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(cli, ["val", str(bundle), str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "flat").mkdir()
    flat = runner.invoke(cli, ["val", str(bundle), str(tmp_path / "flat")])
    assert flat.exit_code == 2 and "no class subfolders" in flat.output
    before = sorted(p.name for p in tiny_run.path.iterdir())
    on_run = runner.invoke(cli, ["bench", str(tiny_run.path), "--data", str(tmp_path)])
    assert on_run.exit_code == 2 and "--data applies to a bundle" in on_run.output
    assert sorted(p.name for p in tiny_run.path.iterdir()) == before  # nothing written


def test_unreadable_images_are_skipped_and_counted(bundle, digits_dir, tmp_path):
    data = tmp_path / "labelled"
    shutil.copytree(digits_dir, data)
    (data / "0" / "broken.png").write_bytes(b"not a png")
    result = CliRunner().invoke(cli, ["val", str(bundle), str(data), "--json"])
    assert result.exit_code == 0, result.output
    acc = json.loads(result.output)["accuracy"]
    assert acc["n"] == 60 and [s["path"].endswith("broken.png") for s in acc["skipped"]] == [True]


def test_labelled_images_accepts_a_subset_of_the_labels(digits_dir, tmp_path):
    data = tmp_path / "two"
    shutil.copytree(digits_dir / "1", data / "1")
    paths, targets, skipped = labelled_images(data, ["0", "1", "2"])
    assert skipped == []  # images are read (and skipped) when they are preprocessed
    assert len(paths) == 20 and set(targets.tolist()) == {1}
    with pytest.raises(DataError, match="contains no images"):
        (tmp_path / "empty" / "0").mkdir(parents=True)
        labelled_images(tmp_path / "empty", ["0"])


def test_swapped_arguments_say_the_bundle_comes_first(bundle, digits_dir, tmp_path):
    before = sorted(p.name for p in bundle.parent.iterdir())
    result = CliRunner().invoke(cli, ["val", str(digits_dir), str(bundle)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: {digits_dir} is the labelled data and {bundle} the bundle: the bundle comes first, "
        f"e.g. edgetl val {bundle} {digits_dir}"]
    assert sorted(p.name for p in bundle.parent.iterdir()) == before
