"""Where edgetl keeps what it can rebuild: extracted bundles, TensorRT engines, training features.

Standard library only: the device side (bundle runner, engine builds) asks it too. One root for
every cache, so a user moves or clears them all with one setting.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$EDGETL_CACHE``, else ``$XDG_CACHE_HOME/edgetl``, else ``~/.cache/edgetl``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG base-directory spec asks (it would move
    with the working directory); ``EDGETL_CACHE`` is the user's own choice and taken as given.
    """
    if os.environ.get("EDGETL_CACHE"):
        return Path(os.environ["EDGETL_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "edgetl"
