"""Install the ``tiny-text`` test task as pip would: its two modules and a dist-info with the entry point."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from tests.backends.plugin import registered  # noqa: F401  (the same registration for a task plugin)

HERE = Path(__file__).resolve().parent
TASK = "tiny-text"
WORDS = {"pos": ["good", "great", "fine", "nice", "lovely"], "neg": ["bad", "awful", "poor", "sad", "broken"]}
FILLER = ["the", "a", "phone", "battery", "screen", "it", "was", "very", "quite"]


def install(site: Path) -> Path:
    """Write the plugin into ``site`` (a folder to put on sys.path) and return it."""
    site.mkdir(parents=True, exist_ok=True)
    for module in ("tinytext_task.py", "tinytext_train.py"):
        shutil.copyfile(HERE / module, site / module)
    info = site / "tinytext_plugin-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinytext-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[edgetl.tasks]\n{TASK} = tinytext_task:TinyText\n")
    return site


def write_reviews(path: Path, per_class: int = 30, seed: int = 0) -> Path:
    """A text,label CSV of short 'reviews': two sentiment words of the class among filler words."""
    rng = random.Random(seed)
    rows = ["text,label"]
    for label, words in WORDS.items():
        for _ in range(per_class):
            text = rng.sample(FILLER, 4) + rng.sample(words, 2)
            rng.shuffle(text)
            rows.append(f"{' '.join(text)},{label}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path
