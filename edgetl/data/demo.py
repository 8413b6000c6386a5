"""The embedded demo data set: scikit-learn's handwritten digits (1,797 real 8x8 scans from UCI,
10 classes), shipped inside the scikit-learn wheel, written out as an ordinary image folder so the
demo takes exactly the path a user's own folder takes. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from edgetl._io import atomic_dir
from edgetl._lazy import require


def write_digits(dest: str | Path, *, per_class: int | None = None, classes: int = 10, size: int = 32) -> Path:
    """Write ``dest/<digit>/<n>.png`` (grayscale, upscaled to ``size`` px); returns ``dest``."""
    dest = Path(dest)
    marker = dest / ".complete"
    wanted = f"{per_class}:{classes}:{size}"
    if marker.is_file() and marker.read_text() == wanted:
        return dest
    digits = require("sklearn.datasets", "the demo data set").load_digits()
    with atomic_dir(dest) as tmp:
        counts: dict[int, int] = {}
        for image, label in zip(digits.images, digits.target, strict=True):
            label = int(label)
            if label >= classes or counts.get(label, 0) == (per_class or 10**9):
                continue
            counts[label] = counts.get(label, 0) + 1
            folder = tmp / str(label)
            folder.mkdir(exist_ok=True)
            pixels = (255 - image * (255 / 16)).clip(0, 255).astype(np.uint8)  # dark ink on white paper
            Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{counts[label]:04d}.png")
        (tmp / ".complete").write_text(wanted)
    return dest


if __name__ == "__main__":  # `python -m edgetl.data.demo DEST` (used by `make demo`)
    import sys

    print(write_digits(sys.argv[1] if len(sys.argv) > 1 else "demo-data/digits"))
