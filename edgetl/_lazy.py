"""Optional heavy imports, with the pip extra to install when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgetl.errors import MissingDependencyError

# module -> extra that provides it; a runtime's modules are its backend's facts (``modules``, ``extra``)
EXTRAS = {
    "torch": "train",
    "torchvision": "train",
    "timm": "train",
    "onnx": "train",
    "safetensors": "train",
    "matplotlib": "report",
    "sklearn": "demo",
}


def require(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise a one-line error naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS.get(top) or _runtime_extra(top) or "all"
        why = f" (needed for {purpose})" if purpose else ""
        raise MissingDependencyError(
            f"{top} is not installed{why}: pip install 'edgetl[{extra}]'  [{exc}]"
        ) from None


def _runtime_extra(module: str) -> str | None:
    """The pip extra of the registered runtime that provides ``module``."""
    from edgetl.backends import get_backend, runtimes

    for name in runtimes():
        backend = get_backend(name)
        if module in backend.modules:
            return backend.extra
    return None


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:
        return False
