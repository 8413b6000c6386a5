"""Install a fourth training strategy and a third alignment loss as pip would: one module each and a
dist-info with their entry points (tests/adapt/test_strategies.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent


def install(site: Path) -> Path:
    """Write the plugin into ``site`` (a folder to put on sys.path) and return it."""
    site.mkdir(parents=True, exist_ok=True)
    for module in ("shrink_head.py", "mean_gap.py"):
        shutil.copyfile(HERE / module, site / module)
    info = site / "shrink_plugin-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shrink-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edgetl.strategies]\nshrink-head = shrink_head:ShrinkHead\n\n"
                                           "[edgetl.alignments]\nmean-gap = mean_gap:MeanGap\n")
    return site
