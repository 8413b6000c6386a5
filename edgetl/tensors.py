"""Named tensors: what a model takes and gives, described once and checked everywhere.

Every ``Session`` takes ``feeds: Mapping[str, ndarray]`` and returns ``dict[str, ndarray]``; its
``inputs`` and ``outputs`` are ``TensorSpec``s, like Polygraphy's runners and optimum's ``OnnxConfig``.
A dimension is an ``int`` when fixed, or a name (``"batch"``, ``"sequence"``, ``"samples"``) when
dynamic; axis 0 is the batch axis of every tensor. numpy and the standard library only: this runs
on the device.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetl.errors import DataError

Dim = int | str
Feeds = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: ``TensorSpec("input", "float32", ("batch", 3, 224, 224))``."""

    name: str
    dtype: str  # a numpy dtype name: "float32", "int64", ...
    shape: tuple[Dim, ...]

    @classmethod
    def of(cls, name: str, dtype: Any, dims) -> TensorSpec:
        """From what a runtime reports: a dim that is ``None``, negative or a name is dynamic; an
        unnamed one becomes ``"batch"`` on axis 0 and ``"dim<axis>"`` elsewhere."""
        shape = tuple(d if isinstance(d, str) and d else int(d) if isinstance(d, int) and d >= 0
                      else "batch" if axis == 0 else f"dim{axis}" for axis, d in enumerate(dims))
        return cls(name, np.dtype(dtype).name, shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(str(d["name"]), str(d["dtype"]), tuple(d["shape"]))

    # Derived once per spec: sessions check every feed of every run, inside the bench's timed calls.
    @functools.cached_property
    def _np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @functools.cached_property
    def _fixed(self) -> tuple[tuple[int, int], ...]:
        return tuple((axis, d) for axis, d in enumerate(self.shape) if isinstance(d, int) and d >= 0)

    def matches(self, array: np.ndarray) -> str | None:
        """None when ``array`` fits this spec, else why not (one phrase)."""
        if array.dtype != self._np_dtype:
            return f"{self.name}: dtype {array.dtype}, expected {self.dtype}"
        if array.ndim != len(self.shape):
            return f"{self.name}: {array.ndim} dimensions {list(array.shape)}, expected {list(self.shape)}"
        shape = array.shape
        for axis, want in self._fixed:
            if shape[axis] != want:
                return f"{self.name}: dimension {axis} is {shape[axis]}, expected {want} (shape {list(self.shape)})"
        return None


def check_feeds(specs: Iterable[TensorSpec], feeds: Feeds, where: str) -> None:
    """Raise one ``DataError`` line when ``feeds`` lacks, adds or mis-shapes a tensor."""
    specs = list(specs)
    names = [s.name for s in specs]
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if missing or extra:
        raise DataError(f"{where}: inputs {sorted(feeds)} do not match the model's {names}"
                        + (f" (missing {missing})" if missing else "") + (f" (unknown {extra})" if extra else ""))
    for spec in specs:
        why = spec.matches(np.asarray(feeds[spec.name]))
        if why:
            raise DataError(f"{where}: {why}")


def batch_size(feeds: Feeds) -> int:
    """The common length of axis 0 (every tensor is batched on it)."""
    if not feeds:
        raise DataError("no inputs were given (the feeds hold no tensor)")
    sizes = {len(v) for v in feeds.values()}
    if len(sizes) != 1:
        raise DataError(f"inputs disagree on the batch size: { {k: len(v) for k, v in feeds.items()} }")
    return sizes.pop()


def take(feeds: Feeds, index: slice | np.ndarray) -> dict[str, np.ndarray]:
    """The same rows of every tensor (a batch, or a sample of the data)."""
    return {k: np.ascontiguousarray(v[index]) for k, v in feeds.items()}


def batches(feeds: Feeds, size: int) -> Iterable[dict[str, np.ndarray]]:
    n = batch_size(feeds)
    for start in range(0, n, size):
        yield take(feeds, slice(start, start + size))


def concat(parts: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Outputs of several batches, joined on axis 0 per name."""
    parts = list(parts)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
