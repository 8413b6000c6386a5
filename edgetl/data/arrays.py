"""Preprocessed arrays of a run's images, cached in ``runs/<name>/cache/`` so that compiling and
benching many targets reads and decodes the images once.

Validation images feed accuracy checks; calibration images come from the *training* split only, so
quantization never sees the images it is judged on.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict

import numpy as np

from edgetl._io import atomic_path, sha256_json
from edgetl._lazy import require
from edgetl.data.preprocess import PreprocessSpec, normalize, open_rgb, resize_and_crop
from edgetl.errors import RunDirError


def load_split(run) -> dict:
    path = run.path / "train" / "split.json"
    if not path.is_file():
        raise RunDirError(f"{run.path} has no train/split.json: run `edgetl train --out {run.path}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def spec_of(run) -> PreprocessSpec:
    return PreprocessSpec.from_dict(run.manifest["train"]["preprocess"])


def pixels(paths: list[str], spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N, H, W, 3) after resize and crop."""
    h, w = spec.input_size
    out = np.empty((len(paths), h, w, 3), np.uint8)
    for i, p in enumerate(paths):
        out[i] = resize_and_crop(open_rgb(p), spec)
    return out


def _cached(run, name: str, key: dict, compute) -> dict[str, np.ndarray]:
    """Load ``cache/<name>.npz`` when its key matches, else compute and store it atomically."""
    path = run.path / "cache" / f"{name}.npz"
    digest = sha256_json(key)
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) == digest:
                return {k: data[k] for k in data.files if k != "key"}
    arrays = compute()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, key=np.array(digest), **arrays)
    return arrays


def split_set(run, part: str) -> tuple[np.ndarray, np.ndarray]:
    """``part`` ("train" or "val") through the eval transform: uint8 (N, H, W, 3) and labels."""
    split, spec = load_split(run), spec_of(run)
    key = {part: split[part], "spec": spec.to_dict()}
    arrays = _cached(
        run,
        part,
        key,
        lambda: {
            "pixels": pixels([p for p, _ in split[part]], spec),
            "labels": np.array([lab for _, lab in split[part]], np.int64),
        },
    )
    return arrays["pixels"], arrays["labels"]


def val_set(run) -> tuple[np.ndarray, np.ndarray]:
    return split_set(run, "val")


def val_inputs(run) -> np.ndarray:
    return normalize(val_set(run)[0], spec_of(run))


def sample_calibration(train: list, n: int, sampling: str, seed: int) -> list[str]:
    """Class-balanced (round-robin over shuffled classes) or random, seeded; at most ``n`` paths."""
    rng = random.Random(seed)
    if sampling == "random":
        items = sorted(train)
        rng.shuffle(items)
        return [p for p, _ in items[:n]]
    by_class: dict[int, list[str]] = defaultdict(list)
    for p, label in sorted(train):
        by_class[label].append(p)
    for paths in by_class.values():
        rng.shuffle(paths)
    chosen: list[str] = []
    while len(chosen) < n and any(by_class.values()):
        for label in sorted(by_class):
            if by_class[label] and len(chosen) < n:
                chosen.append(by_class[label].pop())
    return chosen


def calibration_set(run, recipe) -> np.ndarray:
    """float32 NCHW calibration batch from the training split, per the recipe (too few images for int8
    is the quantizer's error to raise: ``edgetl.backends._qdq.check_calibration``)."""
    split, spec = load_split(run), spec_of(run)
    paths = sample_calibration(split["train"], recipe.samples, recipe.sampling, recipe.seed)
    key = {"paths": paths, "spec": spec.to_dict()}
    name = f"calib-{sha256_json(key)[:12]}"
    return normalize(_cached(run, name, key, lambda: {"pixels": pixels(paths, spec)})["pixels"], spec)


def reference_logits(run) -> np.ndarray:
    """FP32 PyTorch logits on the validation inputs (the reference every artifact is compared with)."""
    ckpt = run.manifest["train"]["checkpoint"]
    key = {"checkpoint": run.manifest.get("artifacts", {}).get(ckpt), "val": load_split(run)["val"]}

    def compute():
        torch = require("torch", "the FP32 reference")
        from edgetl.models.build import load_trained

        model = load_trained(run)
        x = torch.from_numpy(val_inputs(run))
        with torch.inference_mode():
            logits = torch.cat([model(b) for b in x.split(64)]).numpy()
        return {"logits": logits.astype(np.float32)}

    return _cached(run, "reference", key, compute)["logits"]

