"""A fourth runtime, shipped the way a third party would: one backend file, registered through the
``edgetl.backends`` entry point of its own distribution (see ``tests/backends/plugin/__init__.py``).

It is ONNX Runtime under another name, so the whole flow (compile, bench, bundle, verify, predict)
runs here; nothing in edgetl names it.
"""

from __future__ import annotations

from edgetl.backends.onnxruntime import OnnxRuntimeBackend


class OrtWrapBackend(OnnxRuntimeBackend):
    name = "ortwrap"
    # version() says "1.32.0" without a flavour, so the runtime's own name is the key
    min_versions = {"ortwrap": "1.16"}
    runs_on = "a CPU with ONNX Runtime (wrapped)"
