"""edgetl: adapt a pretrained backbone, compile it for edge runtimes, bench it, ship it.

The stage functions are importable for notebooks; heavy dependencies load on first call.
"""

from __future__ import annotations

__version__ = "0.1.0"


def train(*args, **kwargs):
    from edgetl.adapt.train import train as _train

    return _train(*args, **kwargs)
