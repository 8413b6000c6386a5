"""Registry of runtimes: the one table that the CLI, the docs and the tests read."""

from __future__ import annotations

import importlib

from edgetl.backends.base import Backend, Compiled, Session
from edgetl.errors import UnknownNameError

# name -> "module:Class"; modules are imported on first use so a missing runtime costs nothing.
_BACKENDS = {
    "onnxruntime": "edgetl.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edgetl.backends.openvino:OpenVinoBackend",
    "tensorrt": "edgetl.backends.tensorrt:TensorRtBackend",
}

RUNTIMES = tuple(_BACKENDS)


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise UnknownNameError("runtime", name, _BACKENDS)
    module, cls = _BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["Backend", "Compiled", "Session", "RUNTIMES", "get_backend"]
