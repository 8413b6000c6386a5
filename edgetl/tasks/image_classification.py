"""The first task: one float32 NCHW image in, class logits out, top-1 as the metric.

Device side: numpy and Pillow (``edgetl.data.preprocess``), never torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgetl.data.preprocess import PreprocessSpec, decode_images, normalize
from edgetl.tasks.base import Classifier, LabelledSamples, Metric, TaskRecord
from edgetl.tensors import TensorSpec

INPUT, OUTPUT = "input", "logits"
MAX_SIDE = 4096  # a bundle's largest image side
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")  # edgetl.data.preprocess


class Preprocess(BaseModel):
    """A bundle's ``preprocess``: ``PreprocessSpec.to_dict()``, within ranges that keep a resize small."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    input_size: tuple[Annotated[int, Field(ge=1, le=MAX_SIDE)], Annotated[int, Field(ge=1, le=MAX_SIDE)]]
    mean: list[Annotated[float, Field(ge=-10, le=10)]] = Field(min_length=1, max_length=4)
    std: list[Annotated[float, Field(gt=1e-6, le=1e3)]] = Field(min_length=1, max_length=4)
    interpolation: Literal[_INTERPOLATIONS]
    crop_pct: float = Field(ge=0.5, le=1.0)  # the resize before the crop is size / crop_pct
    crop_mode: Literal["center", "squash", "border"]


class ImageClassification(Classifier):
    name = "image-classification"
    description = "one RGB image in (float32 NCHW), one score per class out; top-1 accuracy"
    # The numbers compile and bench measure against the FP32 reference; a profile's budgets set
    # goals on these and on BENCH_METRICS.
    metrics = (
        Metric("top1", "higher", "", "top-1 accuracy on the validation split"),
        Metric("accuracy_drop_pp", "lower", "pp", "top-1 drop against the FP32 PyTorch reference"),
        Metric("agreement", "higher", "", "share of images whose top-1 equals the reference's"),
    )
    preprocess_model = Preprocess
    workstation = "edgetl.adapt.image"  # today's training (edgetl/adapt/train.py) and model building
    requires: tuple[str, ...] = ()  # numpy and Pillow come with edgetl
    extra = None

    def read_labelled(self, source: Path) -> LabelledSamples:
        """An image folder (one subfolder per class) or a CSV manifest (``path,label``); unreadable
        images are skipped with the reason (``edgetl.data.datasets``)."""
        from edgetl.data.datasets import load_image_set

        images = load_image_set(source)
        return LabelledSamples([p for p, _ in images.samples], [images.classes[i] for _, i in images.samples],
                               list(images.classes), list(images.skipped), images.source)

    def predict_samples(self, args: Sequence[str], stdin: IO[str] | None) -> list[tuple[str, str]]:
        """Image files, and every image under a folder (sorted, recursive)."""
        from edgetl.bundle.runner import image_files

        return [(str(f), str(f)) for arg in args for f in image_files(arg)]

    def assets(self, record: TaskRecord) -> list[str]:
        return []

    def quantization(self, record: TaskRecord, runtime: str, precision: str) -> dict[str, Any]:
        return {}  # each runtime's own int8 recipe: static QDQ of every op (CNNs lose little)

    def max_dims(self, record: TaskRecord) -> dict[str, int]:
        return {}  # only the batch is dynamic

    def inputs(self, record: TaskRecord | None = None) -> list[TensorSpec]:
        height, width = PreprocessSpec.from_dict(record.preprocess).input_size if record else ("height", "width")
        return [TensorSpec(INPUT, "float32", ("batch", 3, height, width))]

    def load(self, samples: Sequence[str | Path], record: TaskRecord) -> dict[str, np.ndarray]:
        """uint8 (N, H, W, 3) after resize and crop: a quarter of the float feeds, so this is what is cached."""
        return {"pixels": decode_images(samples, PreprocessSpec.from_dict(record.preprocess))}

    def feeds(self, loaded: Mapping[str, np.ndarray], record: TaskRecord) -> dict[str, np.ndarray]:
        return {INPUT: normalize(loaded["pixels"], PreprocessSpec.from_dict(record.preprocess))}

    def dummy_inputs(self, record: TaskRecord, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        (spec,) = self.inputs(record)
        shape = (batch, *spec.shape[1:])
        return {spec.name: np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)}

    def check_bundle(self, inputs: list[TensorSpec], outputs: list[TensorSpec], record: TaskRecord) -> str | None:
        """The image-specific reasons first (they say what to fix), then the specs themselves."""
        spec = PreprocessSpec.from_dict(record.preprocess)
        image = inputs[0].shape
        if len(image) == 4 and image[1] != 3:
            return f"{image[1]} channels: 3 expected (RGB)"
        if len(image) == 4 and list(image[2:]) != list(spec.input_size):
            return f"preprocess.input_size {list(spec.input_size)} is not the input's {list(image[2:])}"
        if not len(spec.mean) == len(spec.std) == 3:
            return "preprocess mean and std need one value per input channel (3)"
        return self.check_tensors(inputs, outputs, record)


