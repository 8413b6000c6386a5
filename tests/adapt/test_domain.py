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
from edgetl.data.preprocess import PreprocessSpec, decode_images, normalize  # noqa: E402
from edgetl.models.build import create_model, load_trained  # noqa: E402
from edgetl.models.registry import resolve  # noqa: E402
from edgetl.rundir import RunDir  # noqa: E402

BACKBONE = "timm:test_efficientnet"


def _tiny(**options) -> TrainOptions:
    return TrainOptions(**{**dict(pretrained=False, image_size=32, seed=0, unfreeze="all", augment=False, epochs=2,
                                  head_epochs=3, lr=1e-2), **options})


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
    assert len(files) == 60 and record["target_images"] == record["target_images_found"] == 60
    assert record["method"] == "adabn+coral" and record["alignment_weight"] == 1.0
    assert record["target_hash"] == unlabelled.files_hash(inverted, files)
    assert list(record["target_val"]["top1"]) == ["head only", "fine-tuned", "adapted"]
    assert record["target_val"]["images"] == 60
    assert list(record["source_val"]["top1"]) == ["head only", "fine-tuned", "adapted"]
    assert record["source_val"]["top1"]["adapted"] == pytest.approx(section["metrics"]["val_top1"])
    # the batch-statistics recipe where the options left it open (--unfreeze was given: all)
    assert record["recipe"] == {"unfreeze": "all", "backbone_lr_scale": 1.0, "layer_decay": 1.0}
    assert record["adapted_batchnorms"] == len(domain.batchnorms(load_trained(run)))
    history = json.loads((run.path / "train" / "history.json").read_text())
    assert {row["phase"] for row in history} == {"head", "finetune"}


def test_the_shipped_model_holds_the_target_s_batchnorm_statistics(adapted, inverted):
    """Re-estimating on the target images gives back exactly the shipped statistics; on the source
    images they differ: AdaBN was the last step."""
    run, section = adapted
    spec = arrays.spec_of(run)
    shipped = load_trained(run)
    target = decode_images(unlabelled.image_files(inverted, "--target-data"), spec)
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
    target = decode_images(unlabelled.image_files(inverted, "--target-data")[:40], spec)
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


def _classes_in_order() -> np.ndarray:
    """128 images as a class-sorted set comes: 64 black, then 64 white."""
    return np.concatenate([np.zeros((64, 32, 32, 3), np.uint8), np.full((64, 32, 32, 3), 255, np.uint8)])


def test_adabn_draws_its_batches_across_classes():
    """Class-sorted images in batches of 64 would give the first BatchNorm the variance inside one
    colour (none); the seeded shuffle gives it about the variance of the whole set."""
    model = create_model(resolve(BACKBONE), 3, pretrained=False)
    spec = PreprocessSpec(input_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    first = domain.batchnorms(model)[0]
    seen = []
    handle = first.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
    domain.reestimate_batchnorm(model, _classes_in_order(), spec)
    handle.remove()
    whole = torch.cat(seen).var((0, 2, 3))
    assert len(seen) == 2 and (whole > 1e-3).any()
    assert torch.all(first.running_var > 0.7 * whole)


def test_adabn_can_leave_layers_alone(inverted):
    """``layers``: only those statistics move (the strategy's frozen stages keep theirs)."""
    model = create_model(resolve(BACKBONE), 3, pretrained=False)
    spec = PreprocessSpec(input_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    target = decode_images(unlabelled.image_files(inverted, "--target-data")[:40], spec)
    first, *rest = domain.batchnorms(model)
    before = [m.running_mean.clone() for m in rest]
    domain.reestimate_batchnorm(model, target, spec, layers=[first])
    assert not torch.allclose(first.running_mean, torch.zeros_like(first.running_mean))
    assert all(torch.equal(m.running_mean, b) for m, b in zip(rest, before, strict=True))


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


def test_with_frozen_stages_only_the_trained_batchnorm_adapts(digits_dir, inverted, tmp_path):
    """--unfreeze 1: the frozen stages normalised with their running statistics while training, and
    ship with them; only the last stage's BatchNorm takes the target's."""
    out = tmp_path / "run"
    section = train(digits_dir, _tiny(mode="domain-adapt", target_data=str(inverted), unfreeze="1", alignment="none"),
                    out=out, backbone=BACKBONE)
    shipped = load_trained(RunDir.open(out))
    fresh = create_model(resolve(BACKBONE), 3, pretrained=False)
    moved = [not torch.equal(a.running_mean, b.running_mean)
             for a, b in zip(domain.batchnorms(shipped), domain.batchnorms(fresh), strict=True)]
    assert section["adaptation"]["recipe"]["unfreeze"] == "1"
    assert 0 < sum(moved) == section["adaptation"]["adapted_batchnorms"] < len(moved)
    assert moved[-1] and not moved[0]


def test_the_recipe_fills_only_what_the_user_left_open(inverted):
    from edgetl.adapt.strategies.domain_adapt import batch_statistics_recipe

    opts = TrainOptions(mode="domain-adapt", target_data=str(inverted))
    assert batch_statistics_recipe(opts) == {"unfreeze": "all", "backbone_lr_scale": 1.0, "layer_decay": 1.0}
    opts = TrainOptions(mode="domain-adapt", target_data=str(inverted), unfreeze="2", layer_decay=0.5)
    assert batch_statistics_recipe(opts) == {"backbone_lr_scale": 1.0}


def test_train_s_flags_not_given_stay_unset(digits_dir, inverted, tmp_path, monkeypatch):
    """The CLI passes only the options given, so the recipe sees what the user left open."""
    import edgetl.adapt.train as train_module

    seen = []
    monkeypatch.setattr(train_module, "train", lambda data, options, **kw: seen.append(options) or 1 / 0)
    CliRunner().invoke(cli, ["train", "--data", str(digits_dir), "--out", str(tmp_path / "run"), "--backbone",
                             BACKBONE, "--mode", "domain-adapt", "--target-data", str(inverted), "--unfreeze", "3"])
    assert seen and seen[0].model_fields_set == {"mode", "target_data", "unfreeze"}


def test_target_batches_leave_every_running_statistic_as_it_was(inverted):
    """Inside ``target_batch_statistics`` layers in batch mode normalise with the batch's statistics
    without storing them, and layers in eval mode (frozen stages) stay in eval mode."""
    model = create_model(resolve(BACKBONE), 3, pretrained=False)
    spec = PreprocessSpec(input_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    target = decode_images(unlabelled.image_files(inverted, "--target-data")[:16], spec)
    model.train()
    frozen, *training = domain.batchnorms(model)
    frozen.eval()
    before = {name: b.clone() for name, b in model.named_buffers()}
    with domain.target_batch_statistics(model):
        model(torch.from_numpy(normalize(target, spec)))
        assert not frozen.training and all(m.training for m in training)
    assert all(torch.equal(before[name], b) for name, b in model.named_buffers() if not name.endswith("num_batches_tracked"))
    assert all(m.momentum == 0.1 for m in training)


def test_the_alignment_loss_joins_the_step_before_loss_scaling():
    import torch.nn.functional as F

    from edgetl.adapt.alignments import get_alignment
    from edgetl.adapt.device import Execution
    from edgetl.adapt.loop import _step

    torch.manual_seed(0)
    model = create_model(resolve("timm:test_efficientnet"), 3, pretrained=False)
    target = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))
    net = domain.aligner(target, get_alignment("coral"), 5.0, batch_size=4, seed=0)(model)
    net.train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    fp16 = Execution(amp="fp16")  # a GradScaler that scales: the alignment must be scaled with the cross-entropy
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    logits, loss = _step(net, x, y, optimizer, fp16.grad_scaler(), Execution(), 0.0)
    assert net.aux_loss is not None and float(net.aux_loss.detach()) > 0
    ce = float(F.cross_entropy(logits.detach().float(), y))
    assert loss == pytest.approx(ce + float(net.aux_loss.detach()), rel=1e-5)
    net.eval()
    net(x)
    assert net.aux_loss is None  # evaluation is the plain model


def test_a_worse_adapted_model_is_said_not_shipped_silently():
    from edgetl.adapt.strategies.domain_adapt import worse_after_adapting

    assert worse_after_adapting({"head only": 0.5, "fine-tuned": 0.6, "adapted": 0.7}) is None
    warning = worse_after_adapting({"head only": 0.69, "fine-tuned": 0.63, "adapted": 0.56})
    assert "head only 69.0% -> adapted 56.0%" in warning and "--alignment none" in warning


def test_a_target_val_class_the_model_does_not_know_is_one_line_before_anything_is_written(digits_dir, inverted,
                                                                                             tmp_path):
    target_val = tmp_path / "target-val"
    shutil.copytree(inverted, target_val)
    (target_val / "2").rename(target_val / "two")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--data", str(digits_dir), "--out", str(out), "--backbone", BACKBONE,
                                      "--no-pretrained", "--image-size", "32", "--mode", "domain-adapt",
                                      "--target-data", str(inverted), "--target-val", str(target_val)])
    assert result.exit_code == 2, result.output
    classes = ["0", "1", "2"]
    assert result.output.strip().splitlines()[-1] == (f"error: {target_val}: classes ['two'] are not in the "
                                                      f"training classes {classes}")
    assert not out.exists()


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


def test_a_huge_target_folder_is_sampled_not_held_whole():
    from edgetl.adapt.strategies.domain_adapt import _at_most

    files = [f"f{i}.png" for i in range(12)]
    assert _at_most(files, 20, seed=0) == files
    sample = _at_most(files, 5, seed=0)
    assert len(sample) == 5 and sample == sorted(sample, key=files.index) and sample == _at_most(files, 5, seed=0)
