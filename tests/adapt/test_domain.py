"""--mode domain-adapt on the tiny fixture: it runs, records what it adapted to, AdaBN moves the
BatchNorm statistics to the target's, the shipped model is one plain network that exports and
compiles, and a bad target folder is one line and exit 2 with nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

torch = pytest.importorskip("torch")

from edgetl.adapt import domain  # noqa: E402
from edgetl.adapt.options import TrainOptions  # noqa: E402
from edgetl.adapt.train import train, train_inputs_hash  # noqa: E402
from edgetl.cli import cli  # noqa: E402
from edgetl.data import arrays, unlabelled  # noqa: E402
from edgetl.data.preprocess import PreprocessSpec  # noqa: E402
from edgetl.models.build import create_model, load_trained  # noqa: E402
from edgetl.models.registry import resolve  # noqa: E402
from edgetl.rundir import RunDir  # noqa: E402

BACKBONE = "timm:test_efficientnet"


def _tiny(**options) -> TrainOptions:
    return TrainOptions(pretrained=False, image_size=32, seed=0, unfreeze="all", augment=False, epochs=2,
                        head_epochs=3, lr=1e-2, **options)


@pytest.fixture(scope="module")
def inverted(digits_dir, tmp_path_factory):
    """The digits as a second sensor sees them: light ink on dark ground, in class subfolders (which
    target training ignores) and one more level down, as a camera's dated folders would be."""
    root = tmp_path_factory.mktemp("target") / "frames"
    for path in sorted(digits_dir.rglob("*.png")):
        dest = root / path.parent.name / "day1" / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        ImageOps.invert(Image.open(path).convert("RGB")).save(dest)
    return root


@pytest.fixture(scope="module")
def adapted(digits_dir, inverted, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "adapted"
    section = train(digits_dir, _tiny(mode="domain-adapt", target_data=str(inverted), target_val=str(inverted)),
                    out=out, backbone=BACKBONE)
    return RunDir.open(out), section


def test_domain_adapt_records_the_method_and_the_target(adapted, inverted):
    run, section = adapted
    train_section = run.manifest["train"]
    assert train_section == json.loads(json.dumps(section))
    assert train_section["mode"] == "domain-adapt" and train_section["hparams"]["target_data"] == str(inverted)
    record = train_section["adaptation"]
    files = unlabelled.image_files(inverted, "--target-data")
    assert len(files) == 60 and record["target_images"] == 60
    assert record["method"] == "adabn+coral" and record["alignment_weight"] == 1.0
    assert record["target_hash"] == unlabelled.files_hash(inverted, files)
    assert list(record["target_val"]["top1"]) == ["head only", "fine-tuned", "adapted"]
    assert record["target_val"]["images"] == 60
    history = json.loads((run.path / "train" / "history.json").read_text())
    assert {row["phase"] for row in history} == {"head", "finetune"}


def test_the_shipped_model_holds_the_target_s_batchnorm_statistics(adapted, inverted):
    """Re-estimating on the target images gives back exactly the shipped statistics; on the source
    images they differ: AdaBN was the last step."""
    run, section = adapted
    spec = arrays.spec_of(run)
    shipped = load_trained(run)
    target = unlabelled.decode(unlabelled.image_files(inverted, "--target-data"), spec)
    source, _ = arrays.split_set(run, "train")
    bn = [name for name, _ in shipped.named_buffers() if name.endswith("running_mean")]
    assert bn
    again = load_trained(run)
    domain.reestimate_batchnorm(again, target, spec)
    for name in bn:
        assert torch.allclose(shipped.get_buffer(name), again.get_buffer(name), atol=1e-5), name
    domain.reestimate_batchnorm(again, source, spec)
    assert any(not torch.allclose(shipped.get_buffer(n), again.get_buffer(n), atol=1e-3) for n in bn)
    # the manifest's target top-1 after adaptation is the shipped model's
    labels = np.array([int(p.parts[-3]) for p in unlabelled.image_files(inverted, "--target-data")])
    assert domain.top1(shipped, target, labels, spec) == pytest.approx(section["adaptation"]["target_val"]["top1"]["adapted"])


def test_adabn_sets_the_running_statistics_to_the_target_s(digits_dir, inverted):
    """The first BatchNorm's running mean and variance are its input's per-channel moments over the
    target images (one batch: the cumulative average is exact)."""
    model = create_model(resolve(BACKBONE), 3, pretrained=False)
    spec = PreprocessSpec(input_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    target = unlabelled.decode(unlabelled.image_files(inverted, "--target-data")[:40], spec)
    first = domain.batchnorms(model)[0]
    seen = []
    handle = first.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
    domain.reestimate_batchnorm(model, target, spec)
    handle.remove()
    x = torch.cat(seen)
    assert len(x) == 40
    assert torch.allclose(first.running_mean, x.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(first.running_var, x.var((0, 2, 3), unbiased=True), atol=1e-4)
    assert not first.training


def test_the_adapted_model_exports_and_compiles(adapted, tmp_path):
    run, _ = adapted
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    result = CliRunner().invoke(cli, ["compile", str(copy), "--target", "onnxruntime", "--precision", "fp32", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output[result.output.index("["):])[0]
    assert row["status"] == "ok", row
    export = RunDir.open(copy).manifest["export"]
    assert export["max_abs_diff"] < 1e-3 and export["top1_agreement"] == 1.0


def test_a_changed_target_image_changes_the_inputs_hash(digits_dir, inverted, tmp_path):
    frames = tmp_path / "frames"
    shutil.copytree(inverted, frames)
    opts = _tiny(mode="domain-adapt", target_data=str(frames))
    before = train_inputs_hash(digits_dir, opts, backbone=BACKBONE)
    victim = next(frames.rglob("*.png"))
    Image.new("RGB", (32, 32), "red").save(victim)
    assert train_inputs_hash(digits_dir, opts, backbone=BACKBONE) != before


def _bad_folders(tmp_path, inverted):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(inverted, corrupt)
    (corrupt / "0" / "broken.png").write_bytes(b"not a png")
    sliver = tmp_path / "sliver"
    shutil.copytree(inverted, sliver)
    Image.new("L", (1, 4000)).save(sliver / "0" / "sliver.png")  # gigabytes once resized
    return {"missing": (tmp_path / "nowhere", "not a folder"), "empty": (empty, "holds no images"),
            "corrupt": (corrupt, "cannot read image"), "sliver": (sliver, "one side over 100 times the other")}


# torch and timm blocked: the target folder is refused before they load
_NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['timm'] = None\nfrom edgetl.cli import main; main()"


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "sliver"])
def test_a_bad_target_folder_is_one_line_and_exit_2(digits_dir, inverted, tmp_path, case):
    folder, message = _bad_folders(tmp_path, inverted)[case]
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", _NO_TORCH, "train", "--data", str(digits_dir), "--out", str(out),
                             "--backbone", BACKBONE, "--mode", "domain-adapt", "--target-data", str(folder)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: --target-data") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    from tests.bundle.sshd import sshd_missing, start_sshd

    reason = sshd_missing()
    if reason:
        pytest.skip(reason)
    proc, server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    proc.terminate()
    proc.wait(timeout=10)


def test_an_adapted_run_bundles_verifies_predicts_and_ships(adapted, inverted, sshd, tmp_path, monkeypatch):
    """The bundle invariants hold for a domain-adapted run of a non-default backbone: signed bundle,
    golden outputs verified here and on a loopback device, predictions on target-domain images."""
    from edgetl.bundle.create import create_bundle
    from edgetl.bundle.format import check_folder
    from edgetl.bundle.runner import predict, verify
    from edgetl.bundle.ship import ship
    from edgetl.compiler import compile as compile_run

    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    run, _ = adapted
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    rows = compile_run(copy, ["onnxruntime"], ["int8"], progress=False)
    assert all(r["status"] == "ok" for r in rows), rows
    bundle = create_bundle(copy, "onnxruntime", "int8")
    assert verify(bundle)["precision"] == "int8"
    frames = sorted(inverted.rglob("*.png"))[:3]
    rows = predict(bundle, [str(p) for p in frames], top=2)
    assert [len(r["top"]) for r in rows] == [2, 2, 2] and not any("error" in r for r in rows)
    done = ship(bundle, sshd.url(str(tmp_path / "device")), remote_edgetl=str(Path(sys.executable).with_name("edgetl")),
                ssh_options=sshd.options)
    assert done.copied and done.verified == "golden"
    current = next((tmp_path / "device").iterdir()) / "current"
    assert check_folder(current)["precision"] == "int8"
