"""Eval-time preprocessing in numpy and Pillow only.

This is the one implementation used for validation during training, for calibration, for
accuracy checks of every artifact and on the device, so all of them see the same pixels. It follows
timm's eval transform (``Resize(floor(size / crop_pct))`` on the shorter side, ``CenterCrop``,
``ToTensor``, ``Normalize``) step for step; ``tests/data/test_preprocess.py`` proves the match.
Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from edgetl.errors import DataError

_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """What a model expects: stored in the manifest, the ONNX metadata and every bundle."""

    input_size: tuple[int, int] = (224, 224)  # (height, width)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    extra: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        try:
            return cls(
                input_size=tuple(int(v) for v in d["input_size"][-2:]),
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                interpolation=str(d.get("interpolation", "bicubic")),
                crop_pct=float(d.get("crop_pct", 0.875)),
                crop_mode=str(d.get("crop_mode", "center")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"bad preprocessing spec {d!r}: {exc}") from None

    def scale_size(self) -> tuple[int, int]:
        return tuple(math.floor(s / self.crop_pct) for s in self.input_size)


# Resizing the shorter side to the model's multiplies the pixels by the aspect ratio: a 1 x 3000
# sliver (a few kB) would become gigabytes. Wider than any panorama: refused from its header.
MAX_ASPECT = 100


def open_rgb(path: str | Path) -> Image.Image:
    """Open any image (grayscale, palette, RGBA, 16-bit) as RGB; a corrupt file, or a sliver over
    ``MAX_ASPECT`` times longer than wide, raises DataError."""
    try:
        with Image.open(path) as img:
            if max(img.size) > MAX_ASPECT * min(img.size):
                raise DataError(f"cannot read image {path}: {img.width}x{img.height} pixels, one side over "
                                f"{MAX_ASPECT} times the other (not a photo)")
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                img = Image.fromarray((np.asarray(img, dtype=np.float64) / 256).clip(0, 255).astype(np.uint8))
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def _resize_shorter(img: Image.Image, size: int, interpolation) -> Image.Image:
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), interpolation)


def _center_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    crop_h, crop_w = size
    w, h = img.size
    if crop_w > w or crop_h > h:  # torchvision pads with zeros, then crops
        padded = Image.new("RGB", (max(w, crop_w), max(h, crop_h)))
        padded.paste(img, ((max(w, crop_w) - w) // 2, (max(h, crop_h) - h) // 2))
        img, (w, h) = padded, padded.size
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


def resize_and_crop(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB image -> uint8 array (H, W, 3) at the model's input size, before normalisation."""
    interpolation = _INTERPOLATION.get(spec.interpolation)
    if interpolation is None:
        raise DataError(f"unknown interpolation {spec.interpolation!r}; valid: {', '.join(_INTERPOLATION)}")
    scale = spec.scale_size()
    if spec.crop_mode == "squash":
        img = img.resize((scale[1], scale[0]), interpolation)
    elif scale[0] == scale[1]:
        img = _resize_shorter(img, scale[0], interpolation)
    else:  # non-square target: timm's ResizeKeepRatio, shortest edge matched to its target edge
        ratio = min(img.height / scale[0], img.width / scale[1])
        img = img.resize((round(img.width / ratio), round(img.height / ratio)), interpolation)
    return np.asarray(_center_crop(img, spec.input_size), dtype=np.uint8)


def decode_images(files, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N, H, W, 3) at the model's input size, as validation images are prepared: the one
    batch decoder of training, selection, domain adaptation and the image task."""
    pixels = np.empty((len(files), *spec.input_size, 3), np.uint8)
    for i, path in enumerate(files):
        pixels[i] = resize_and_crop(open_rgb(path), spec)
    return pixels


def normalize(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N, H, W, 3) or (H, W, 3) -> float32 (N, 3, H, W) or (3, H, W), normalised."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def load_image(path: str | Path, spec: PreprocessSpec) -> np.ndarray:
    """Path -> float32 (3, H, W), exactly what the model saw during validation."""
    return normalize(resize_and_crop(open_rgb(path), spec), spec)
