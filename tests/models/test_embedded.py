"""The embedded EfficientNet-Lite0 weights load correctly: timm's model gives the reference
implementation's logits, and it recognises a real photo."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from edgetl.data.preprocess import load_image  # noqa: E402
from edgetl.models.build import create_model, preprocess_spec  # noqa: E402
from edgetl.models.registry import OFFLINE, offline_weights_path, resolve  # noqa: E402


def _imagenet_model():
    """The embedded backbone with its original 1000-class ImageNet head."""
    import timm

    from edgetl.models.build import _load_state_dict

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    ref = _load_state_dict(offline_weights_path(OFFLINE["efficientnet_lite0"]))
    model.load_state_dict(dict(zip(model.state_dict(), ref.values(), strict=True)))
    return model


def test_logits_equal_the_reference_implementation(tmp_path):
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    reference = ref_pkg.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(offline_weights_path(OFFLINE["efficientnet_lite0"]))).eval()
    ours = _imagenet_model()
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)


def test_recognises_a_real_photo(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_sample_image

    path = tmp_path / "china.png"
    Image.fromarray(load_sample_image("china.jpg")).save(path)  # a pagoda among trees
    model = _imagenet_model()
    x = torch.from_numpy(load_image(path, preprocess_spec(model)))[None]
    with torch.inference_mode():
        top5 = model(x).softmax(1).topk(5).indices[0].tolist()
    # ImageNet: 663 monastery, 832 stupa, 698 palace, 483 castle, 538 dome, 668 mosque
    assert set(top5) & {663, 832, 698, 483, 538, 668}


def test_create_model_loads_the_backbone_and_resets_the_head():
    model = create_model(OFFLINE["efficientnet_lite0"], num_classes=7)
    assert model.get_classifier().out_features == 7
    reference = _imagenet_model().state_dict()
    assert torch.equal(model.state_dict()["conv_stem.weight"], reference["conv_stem.weight"])
    spec = preprocess_spec(model)
    assert spec.input_size == (224, 224) and spec.mean == (0.5, 0.5, 0.5)


def test_unknown_backbones_suggest_the_closest():
    from edgetl.errors import ConfigError, UnknownNameError

    with pytest.raises(UnknownNameError, match="efficientnet_lite0"):
        resolve("efficientnet_lite")
    with pytest.raises(UnknownNameError, match="mobilenetv3_large_100"):
        resolve("timm:mobilenetv3_large_10")
    with pytest.raises(ConfigError, match="timm:resnet18"):
        resolve("resnet18")
