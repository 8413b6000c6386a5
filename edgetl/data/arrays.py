"""A run's split seen through its task: ``DataView``, built once per stage, hands export, compile,
bundle and bench the validation feeds, labels, FP32 reference outputs and calibration feeds.

Decoded arrays are cached in ``runs/<name>/cache/`` (keyed by the samples, the task and its
preprocessing), so compiling and benching many targets reads and decodes the files once; the view
also keeps them in memory, so one stage never re-reads the run. Validation samples feed accuracy
checks; calibration samples come from the *training* split only, so quantization never sees the
samples it is judged on. See docs/architecture.md, "Tasks".
"""

from __future__ import annotations

import json
import random
from collections import defaultdict

import numpy as np

from edgetl._io import atomic_path, sha256_json
from edgetl.data.preprocess import PreprocessSpec, normalize
from edgetl.errors import RunDirError
from edgetl.tasks import DEFAULT_TASK, get_task
from edgetl.tasks.base import TaskRecord
from edgetl.tensors import Feeds, TensorSpec, batches, concat, take

__all__ = ["DataView", "load_split", "normalize", "sample_calibration", "spec_of", "split_set"]
_REFERENCE_BATCH = 64


def load_split(run) -> dict:
    path = run.path / "train" / "split.json"
    if not path.is_file():
        raise RunDirError(f"{run.path} has no train/split.json: run `edgetl train --out {run.path}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def spec_of(run) -> PreprocessSpec:
    return PreprocessSpec.from_dict(run.manifest["train"]["preprocess"])


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


class DataView:
    """One run's split, its task and preprocessing, read once; every array is computed at most once."""

    def __init__(self, run):
        self.run = run
        train = run.manifest.get("train") or {}
        if "preprocess" not in train:
            raise RunDirError(f"{run.path} has no trained model: run `edgetl train --out {run.path}` first")
        self.split = load_split(run)
        self.task = get_task(train.get("task", DEFAULT_TASK))
        # classes from the split: training reads the view before it writes its train section whole
        self.record = TaskRecord.of_train({**train, "classes": self.split["classes"]}, run)
        # what decoding depends on: the task, its preprocessing and its asset files' contents (a text run
        # retrained with another tokenizer must not reuse the cached token ids)
        assets = {name: run.manifest.get("artifacts", {}).get(rel) for name, rel in (train.get("assets") or {}).items()}
        self._decode_key = {"task": self.task.name, "preprocess": self.record.preprocess,
                            **({"assets": assets} if assets else {})}  # image runs keep their cache keys
        self._memo: dict[str, dict] = {}

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.task.inputs(self.record)

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.task.outputs(self.record)

    def _remember(self, name: str, key: dict, compute) -> dict[str, np.ndarray]:
        if name not in self._memo:
            self._memo[name] = _cached(self.run, name, key, compute)
        return self._memo[name]

    def _decoded(self, name: str, samples: list[str]) -> dict[str, np.ndarray]:
        key = {"files": samples, **self._decode_key}
        return self._remember(name, key, lambda: self.task.load(samples, self.record))

    def part(self, part: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``part`` ("train" or "val") as the task decodes it (images: uint8 pixels) and its labels."""
        samples = self.split[part]
        decoded = self._decoded(part, [p for p, _ in samples])
        return decoded, np.array([label for _, label in samples], np.int64)

    def memory(self) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
        """The exemplars (``train --from``'s memory in ``train/exemplars/``) of the classes the training
        split lacks, as ``part`` gives them: a run that added classes from new images only keeps its
        old classes there. None for every other run. Read and hashed once per view: every int8 recipe
        a search calibrates asks for it."""
        if "memory" not in self._memo:
            self._memo["memory"] = {"found": self._read_memory()}
        return self._memo["memory"]["found"]

    def _read_memory(self) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
        if not self.run.manifest["train"].get("lineage"):
            return None
        from edgetl.adapt.continual import EXEMPLARS, read_memory

        spec = PreprocessSpec.from_dict(self.record.preprocess)
        pixels, labels = read_memory(self.run.verify(EXEMPLARS), list(self.record.classes), (*spec.input_size, 3))
        keep = ~np.isin(labels, self.part("train")[1])
        return ({"pixels": pixels[keep]}, labels[keep]) if keep.any() else None

    def val_labels(self) -> np.ndarray:
        return self.part("val")[1]

    def labelled_heads(self) -> list:
        """Each extra task head of the run (``--task-head``) with its validation labels; [] for one head."""
        stored = self.split.get("heads") or {}
        return [(head, np.array(stored[head.name]["val"], np.int64)) for head in self.record.heads]

    def val_feeds(self, index: list[int] | slice | None = None) -> dict[str, np.ndarray]:
        """The validation split's feeds (all of them, or the samples at ``index``)."""
        if "val-feeds" not in self._memo:
            self._memo["val-feeds"] = self.task.feeds(self.part("val")[0], self.record)
        feeds = self._memo["val-feeds"]
        return feeds if index is None else take(feeds, np.asarray(index) if isinstance(index, list) else index)

    def calibration_feeds(self, recipe) -> dict[str, np.ndarray]:
        """Feeds of the training samples the recipe picks (too few for int8 is the quantizer's error
        to raise: ``edgetl.backends._qdq.check_calibration``)."""
        files = sample_calibration(self.split["train"], recipe.samples, recipe.sampling, recipe.seed)
        name = f"calib-{sha256_json({'files': files, **self._decode_key})[:12]}"
        feeds = self.task.feeds(self._decoded(name, files), self.record)
        memory = self.memory()  # a continual run's old classes: their activations set ranges too
        return feeds if memory is None else concat([feeds, self.task.feeds(memory[0], self.record)])

    def reference(self) -> dict[str, np.ndarray]:
        """FP32 PyTorch outputs on the validation feeds, by output name: what every artifact is compared with."""
        ckpt = self.run.manifest["train"]["checkpoint"]
        key = {"checkpoint": self.run.manifest.get("artifacts", {}).get(ckpt), "val": self.split["val"]}
        return self._remember("reference", key, lambda: self._run_torch(self.val_feeds()))

    def _run_torch(self, feeds: Feeds) -> dict[str, np.ndarray]:
        from edgetl.backends.torch import TorchSession
        from edgetl.models.build import load_trained

        with TorchSession(load_trained(self.run), tuple(self.inputs), tuple(self.outputs)) as session:
            return concat(session.run(b) for b in batches(feeds, _REFERENCE_BATCH))


def split_set(run, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Training's view of a part: uint8 pixels (N, H, W, 3) after resize and crop, and the labels."""
    decoded, labels = DataView(run).part(part)
    return decoded["pixels"], labels


def reference_logits(run) -> np.ndarray:
    """The FP32 reference logits of an image classifier (the report's per-class view)."""
    return DataView(run).reference()["logits"]
