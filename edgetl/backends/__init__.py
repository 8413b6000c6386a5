"""Registry of runtimes: the one table that config, compile, bench, bundle, the CLI and the docs read.

Runtimes are registered under the ``edgetl.backends`` entry-point group, the built-in three in
edgetl's own pyproject.toml::

    [project.entry-points."edgetl.backends"]
    onnxruntime = "edgetl.backends.onnxruntime:OnnxRuntimeBackend"

A third party ships a runtime the same way, from its own package, without touching edgetl. The
entry point's name is the runtime's name (the backend class's ``name``). Modules are imported on
first use, so a runtime that is not installed costs nothing.
"""

from __future__ import annotations

from edgetl._plugins import instance, registered
from edgetl.backends.base import (
    Backend,
    BackendBase,
    Compiled,
    CpuBackendBase,
    CpuOptions,
    NoOptions,
    SearchDevice,
    Session,
    Variant,
)

GROUP = "edgetl.backends"
# The runtime that runs a plain ONNX file on any CPU: compile's accuracy estimates and a bundle's
# golden outputs where the artifact cannot run on the workstation (a TensorRT engine without a GPU).
ONNX_RUNNER = "onnxruntime"


def _entry_points():
    return registered(GROUP, "runtimes")


def runtimes() -> tuple[str, ...]:
    """The names of every registered runtime, sorted."""
    return tuple(_entry_points())


def get_backend(name: str) -> Backend:
    return instance(GROUP, "runtimes", "runtime", name)


def __getattr__(attr: str):
    if attr == "RUNTIMES":  # computed on each access: the registry can grow at run time
        return runtimes()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["Backend", "BackendBase", "Compiled", "CpuBackendBase", "CpuOptions", "NoOptions", "SearchDevice", "Session", "Variant",
           "ONNX_RUNNER", "RUNTIMES",
           "get_backend", "runtimes"]
