"""Install the ``ortwrap`` plugin runtime as pip would: its module and a dist-info with the entry point."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PROFILE = HERE / "ortwrap-cpu.toml"


def install(site: Path) -> Path:
    """Write the plugin into ``site`` (a folder to put on sys.path) and return it."""
    site.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "ortwrap_backend.py", site / "ortwrap_backend.py")
    info = site / "ortwrap_plugin-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ortwrap-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edgetl.backends]\nortwrap = ortwrap_backend:OrtWrapBackend\n")
    return site


@contextlib.contextmanager
def registered(site: Path):
    """The plugin is registered in this process and in the processes it starts (bench's measuring child)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
        yield
