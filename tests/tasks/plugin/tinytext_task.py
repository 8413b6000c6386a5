"""A tiny text task, the way a plugin adds one: whitespace tokens looked up in a vocabulary file
(the task's asset), ``input_ids`` + ``attention_mask`` in (int64, dynamic sequence), logits out.

Device side: numpy and pydantic only. Its workstation side is ``tinytext_train``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgetl.errors import DataError
from edgetl.tasks.base import LabelledSamples, Metric, Prediction, TaskRecord, spec_mismatch
from edgetl.tensors import TensorSpec

VOCAB = "vocab.txt"
PAD, UNK = 0, 1


class TinyTextPreprocess(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    max_length: int = Field(ge=2, le=512)
    vocab: Literal["vocab.txt"]
    lowercase: bool


class TinyText:
    name = "tiny-text"
    description = "whitespace tokens in (int64 ids and mask), one score per class out; a test plugin"
    metrics = (
        Metric("top1", "higher", "", "top-1 accuracy on the validation split"),
        Metric("accuracy_drop_pp", "lower", "pp", "top-1 drop against the FP32 PyTorch reference"),
        Metric("agreement", "higher", "", "share of samples whose top-1 equals the reference's"),
        Metric("macro_f1", "higher", "", "F1 averaged over the classes"),
    )
    preprocess_model = TinyTextPreprocess
    workstation = "tinytext_train"
    requires: tuple[str, ...] = ()
    extra = None

    def inputs(self, record: TaskRecord | None = None) -> list[TensorSpec]:
        return [TensorSpec("input_ids", "int64", ("batch", "sequence")),
                TensorSpec("attention_mask", "int64", ("batch", "sequence"))]

    def outputs(self, record: TaskRecord | None = None) -> list[TensorSpec]:
        return [TensorSpec("logits", "float32", ("batch", len(record.classes) if record else "classes"))]

    def read_labelled(self, source: Path) -> LabelledSamples:
        """A ``text,label`` CSV."""
        source = Path(source)
        if not source.is_file() or source.suffix != ".csv":
            raise DataError(f"{source} is not a text,label CSV")
        rows = [r for r in csv.reader(source.read_text(encoding="utf-8").splitlines()) if r and r != ["text", "label"]]
        if any(len(r) != 2 or not r[0].strip() for r in rows):
            raise DataError(f"{source}: every row must be text,label")
        texts, labels = [r[0] for r in rows], [r[1] for r in rows]
        return LabelledSamples(texts, labels, sorted(set(labels)), [], str(source), files=False)

    def predict_samples(self, args: Sequence[str], stdin: IO[str] | None) -> list[tuple[str, str]]:
        out = []
        for arg in args:
            if arg == "-":
                out += [(line.strip(), line.strip()) for line in (stdin or []) if line.strip()]
            elif Path(arg).is_file():
                out += [(line, line) for line in Path(arg).read_text(encoding="utf-8").splitlines() if line.strip()]
            else:
                out.append((arg, arg))
        return out

    def assets(self, record: TaskRecord) -> list[str]:
        return [record.preprocess["vocab"]]

    def quantization(self, record: TaskRecord, runtime: str, precision: str) -> dict[str, Any]:
        if precision != "int8":
            return {}
        return {"onnxruntime": {"scheme": "dynamic", "why": "a test: dynamic int8, no calibration"},
                "openvino": {"model_type": "transformer", "why": "a test: NNCF's transformer scheme"},
                "tensorrt": {"op_types": ["MatMul", "Gemm"], "why": "a test: QDQ of the matrix products only"},
                }.get(runtime, {})

    def max_dims(self, record: TaskRecord) -> dict[str, int]:
        return {"sequence": record.preprocess["max_length"]}

    def _vocab(self, record: TaskRecord) -> dict[str, int]:
        words = Path(record.assets[VOCAB]).read_text(encoding="utf-8").splitlines()
        return {w: i for i, w in enumerate(words)}

    def load(self, samples: Sequence[str | Path], record: TaskRecord) -> dict[str, np.ndarray]:
        vocab, n = self._vocab(record), record.preprocess["max_length"]
        ids = np.full((len(samples), n), PAD, np.int64)
        for row, text in enumerate(samples):
            words = (str(text).lower() if record.preprocess["lowercase"] else str(text)).split()[:n]
            ids[row, :len(words)] = [vocab.get(w, UNK) for w in words]
        return {"input_ids": ids, "attention_mask": (ids != PAD).astype(np.int64)}

    def feeds(self, loaded: Mapping[str, np.ndarray], record: TaskRecord) -> dict[str, np.ndarray]:
        return dict(loaded)

    def preprocess(self, samples: Sequence[str | Path], record: TaskRecord) -> dict[str, np.ndarray]:
        return self.feeds(self.load(samples, record), record)

    def dummy_inputs(self, record: TaskRecord, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        n = record.preprocess["max_length"]
        ids = np.random.default_rng(seed).integers(2, 10, (batch, n), dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    def golden_inputs(self, view, n: int) -> dict[str, np.ndarray]:
        from edgetl.tasks.base import spread_over_classes

        return view.val_feeds(spread_over_classes(view.val_labels(), n))

    def calibration(self, view, recipe) -> dict[str, np.ndarray]:
        return view.calibration_feeds(recipe)

    def postprocess(self, outputs: Mapping[str, np.ndarray], record: TaskRecord, top: int) -> list[list[Prediction]]:
        from edgetl.tasks.image_classification import ImageClassification

        return ImageClassification().postprocess(outputs, record, top)

    def check_bundle(self, inputs, outputs, record: TaskRecord) -> str | None:
        return spec_mismatch(self.inputs(record), inputs, "inputs") or spec_mismatch(self.outputs(record), outputs,
                                                                                      "outputs")

    def evaluate(self, outputs, labels, reference, classes=None) -> dict[str, Any]:
        from edgetl.tasks.image_classification import ImageClassification

        pred, labels = np.asarray(outputs["logits"]).argmax(1), np.asarray(labels)
        f1 = [2 * ((pred == c) & (labels == c)).sum() / max(1, (pred == c).sum() + (labels == c).sum())
              for c in np.unique(labels)]
        return {**ImageClassification().evaluate(outputs, labels, reference, classes), "macro_f1": float(np.mean(f1))}
