"""The prototype head: a class is the mean direction of its images' embeddings (cosine, nearest class
mean), kept as data next to an embedding model, so a device adds a class without training anything.

Logits = ``scale * normalise(embedding) @ prototypes.T``: softmax over them gives predict's scores,
and adding or replacing a class is one row of ``prototypes``. numpy only: this runs on the device.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgetl.errors import DataError

KIND = "prototype"
EMBEDDING = "embedding"  # the embedding model's one output, float32 (batch, D)
LOGITS = "logits"  # what the head gives, named like a classifier's output so predict/val/bench read it unchanged
FILE = "head/prototypes.npy"
DEFAULT_SCALE = 16.0  # a cosine's range [-1, 1] times 16: softmax scores that are neither flat nor all 0/1
MIN_SCALE, MAX_SCALE = 1.0, 100.0
NORM_TOLERANCE = 1e-3  # a stored row's L2 norm may differ from 1 by float32 rounding, not more
_EPS = 1e-12
MIN_MEAN_NORM = 1e-6  # a mean of unit vectors shorter than this points nowhere in particular


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64; an all-zero row stays zero rather than NaN)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def logits(embedding: np.ndarray, prototypes: np.ndarray, scale: float) -> np.ndarray:
    """(batch, classes) float32: the scaled cosine of each embedding with each class's prototype."""
    return (scale * normalise(embedding) @ np.asarray(prototypes, np.float64).T).astype(np.float32)


def enrol(embeddings: np.ndarray) -> np.ndarray:
    """One class's prototype from its images' embeddings (n, D): the mean of the normalised
    embeddings, normalised, so every image counts the same whatever its feature magnitude. All-zero,
    cancelling or non-finite embeddings have no direction: ``DataError``, not a row ``problem`` refuses."""
    mean = normalise(embeddings).mean(axis=0)
    norm = np.linalg.norm(mean)
    if not np.isfinite(norm) or norm < MIN_MEAN_NORM:
        raise DataError(f"the images' embeddings are zero, cancel out or are not finite (mean norm {norm:.2g}): "
                        "no direction to enrol; use other images of the class")
    return (mean / norm).astype(np.float32)


def class_prototypes(embeddings: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """(classes, D) float32: ``enrol`` of each class's embeddings (every class needs one image)."""
    return np.stack([enrol(embeddings[np.asarray(labels) == c]) for c in range(classes)])


def with_head(outputs: Mapping[str, np.ndarray], prototypes: np.ndarray, scale: float) -> dict[str, np.ndarray]:
    """The embedding model's outputs plus the head's ``logits``: what the task's postprocess reads."""
    return {**outputs, LOGITS: logits(outputs[EMBEDDING], prototypes, scale)}


def problem(prototypes: np.ndarray, classes: int, dim: int) -> str | None:
    """Why ``prototypes`` is not a head for ``classes`` labels and a D=``dim`` embedding, or None."""
    if prototypes.dtype != np.float32 or prototypes.shape != (classes, dim):
        return f"holds {prototypes.dtype} {tuple(prototypes.shape)}, a float32 ({classes}, {dim}) array is expected"
    if not np.all(np.isfinite(prototypes)):
        return "holds values that are not finite (NaN or inf)"
    norms = np.linalg.norm(prototypes.astype(np.float64), axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        return f"row {int(bad[0])} has L2 norm {norms[bad[0]]:.4f}: every row must be normalised (1)"
    return None


class HeadSession:
    """A runtime session of an embedding model whose ``run`` also gives the head's ``logits``: the
    bundle commands run it as they run a classifier's session."""

    def __init__(self, session, prototypes: np.ndarray, scale: float):
        self._session, self._prototypes, self._scale = session, prototypes, scale

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return with_head(self._session.run(feeds), self._prototypes, self._scale)

    def __getattr__(self, name: str):  # inputs, outputs, info, where: the runtime's
        return getattr(self._session, name)

    def __enter__(self) -> HeadSession:
        self._session.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._session.__exit__(*exc)
