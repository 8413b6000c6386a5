"""The numpy preprocessing (used for validation, calibration and on the device) equals timm's
training-time eval transform, pixel for pixel, on real images of every shape and mode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgetl.data.preprocess import PreprocessSpec, load_image, open_rgb
from edgetl.errors import DataError

timm = pytest.importorskip("timm")


def _real_photo() -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg"))  # 640x427 real photo


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec((224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.875),  # EfficientNet-Lite0
        PreprocessSpec((64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 0.9),
        PreprocessSpec((96, 128), (0.5,) * 3, (0.5,) * 3, "bicubic", 1.0),
    ],
)
@pytest.mark.parametrize("variant", ["landscape", "portrait", "grayscale", "rgba", "tiny"])
def test_matches_timm_eval_transform(tmp_path, spec, variant):
    photo = _real_photo()
    img = {
        "landscape": photo,
        "portrait": photo.transpose(Image.Transpose.ROTATE_90),
        "grayscale": photo.convert("L"),
        "rgba": photo.convert("RGBA"),
        "tiny": photo.resize((20, 13)),
    }[variant]
    path = tmp_path / f"{variant}.png"
    img.save(path)
    transform = timm.data.create_transform(
        input_size=(3, *spec.input_size), interpolation=spec.interpolation, mean=spec.mean, std=spec.std,
        crop_pct=spec.crop_pct, crop_mode=spec.crop_mode, is_training=False,
    )
    expected = transform(Image.open(path).convert("RGB")).numpy()
    ours = load_image(path, spec)
    assert ours.shape == expected.shape == (3, *spec.input_size)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


def test_sixteen_bit_and_palette_images_open_as_rgb(tmp_path):
    gray16 = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    gray16.save(tmp_path / "g16.png")
    _real_photo().convert("P").save(tmp_path / "p.png")
    for name in ("g16.png", "p.png"):
        img = open_rgb(tmp_path / name)
        assert img.mode == "RGB"


@pytest.mark.parametrize("size", [(1, 3000), (5000, 2)])
def test_a_sliver_image_is_refused_before_it_is_decoded(tmp_path, size):
    """A 1 x 3000 image is a 3 kB file, but resized to the model's shorter side it would be a
    100 MB one (1 x 10^8 pixels: gigabytes): slivers are no photos, and are refused unread."""
    Image.new("L", size).save(tmp_path / "sliver.png")
    with pytest.raises(DataError, match=r"sliver\.png: \d+x\d+ pixels, one side over 100 times the other"):
        open_rgb(tmp_path / "sliver.png")
    Image.new("L", (1000, 10)).save(tmp_path / "panorama.png")  # 100:1 still opens
    assert open_rgb(tmp_path / "panorama.png").size == (1000, 10)


def test_spec_round_trips_through_json():
    spec = PreprocessSpec((96, 128), (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "bilinear", 0.95, "center")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
