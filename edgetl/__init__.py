"""edgetl: adapt a pretrained backbone, compile it for edge runtimes, bench it, ship it.

The stages are importable for notebooks, as the real functions (their own signatures and
docstrings: ``help(edgetl.deploy)``), loaded on first access so that ``import edgetl`` stays light
(no torch, no runtime)::

    import edgetl
    edgetl.select("images", "raspberry-pi-5").recommended   # rank backbones for the device
    edgetl.train("images", edgetl.TrainOptions(mode="finetune", epochs=10), out="runs/flowers")
    edgetl.compile("runs/flowers", ["host-cpu"])
    edgetl.run_bench("runs/flowers")
    edgetl.run_optimize("runs/flowers", "host-cpu").pick   # edgetl optimize: the fastest within budgets
    edgetl.make_report("runs/flowers")
    edgetl.deploy("images", targets=["host-cpu"], out="runs/flowers")   # all of the above
    edgetl.enroll("flowers-host-cpu.tar.gz", "tulip", ["tulip1.jpg", "tulip2.jpg"])   # on the device

A bad option raises the CLI's one-line ``edgetl.errors.EdgetlError``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> (module, attribute). ``edgetl.bench``, ``edgetl.optimize`` and ``edgetl.report`` are subpackages (importing one
# binds that attribute), so their stage functions get verb names that cannot clash.
_API = {
    "select": ("edgetl.adapt.select", "select"),
    "train": ("edgetl.adapt.train", "train"),
    "TrainOptions": ("edgetl.adapt.options", "TrainOptions"),
    "compile": ("edgetl.compiler", "compile"),
    "run_bench": ("edgetl.bench.run", "bench"),
    "run_optimize": ("edgetl.optimize", "optimize"),
    "make_report": ("edgetl.report", "make_report"),
    "deploy": ("edgetl.pipeline", "deploy_with"),
    "enroll": ("edgetl.bundle.enroll", "enroll"),  # device side: a class added to a prototype-head bundle
}


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'edgetl' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = [*_API]  # every name resolves through __getattr__
