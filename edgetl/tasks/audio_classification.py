"""Keyword spotting: a float32 waveform window in (16 kHz mono), one score per word out; top-1 and
the false-accept rate of the background class as the metrics.

The log-mel front end is inside the model (``edgetl.audio.models``), so the device only reads WAV
files (``edgetl.audio.wav``: the standard library and numpy, never torch) and feeds samples.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgetl.audio.wav import SUFFIXES, read_clips, read_wav
from edgetl.data.layout import SPLIT_NAMES, TRAIN_NAMES, VAL_NAMES
from edgetl.errors import DataError
from edgetl.tasks.base import Classifier, LabelledSamples, Metric, TaskRecord, check_label
from edgetl.tensors import TensorSpec

INPUT, OUTPUT = "waveform", "logits"
BACKGROUND = "_background_"  # the class of clips that hold no keyword (noise, silence, other words)
FRONTEND_PREFIX = "frontend"  # the model's log-mel module: int8 keeps its nodes in float


class AudioPreprocess(BaseModel):
    """A bundle's ``preprocess`` for this task (untrusted input: every value bounded)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # "16000" is not 16000 in a manifest

    sample_rate: int = Field(16_000, ge=8_000, le=48_000)
    samples: int = Field(16_000, ge=512, le=16_000 * 10)  # the window the model takes
    frontend: str = Field("oww-logmel", pattern=r"^[a-z0-9-]{1,40}$")  # inside the model; recorded for people
    n_mels: int = Field(32, ge=1, le=256)
    hop: int = Field(160, ge=1, le=4096)
    n_fft: int = Field(512, ge=16, le=8192)


def preprocess_of(record: TaskRecord) -> AudioPreprocess:
    return AudioPreprocess.model_validate(dict(record.preprocess))


class AudioClassification(Classifier):
    name = "audio-classification"
    description = ("keyword spotting: a 16 kHz mono waveform window in (float32), one score per word out; "
                   "top-1 and the background class's false-accept rate")
    metrics = (
        Metric("top1", "higher", "", "top-1 accuracy on the validation split"),
        Metric("accuracy_drop_pp", "lower", "pp", "top-1 drop against the FP32 PyTorch reference"),
        Metric("agreement", "higher", "", "share of clips whose top-1 equals the reference's"),
        Metric("false_accept_rate", "lower", "", f"share of the {BACKGROUND} class's clips answered as a keyword"),
    )
    preprocess_model = AudioPreprocess
    workstation = "edgetl.audio.workstation"
    requires: tuple[str, ...] = ()  # numpy and the standard library read WAV files
    extra = None

    def inputs(self, record: TaskRecord | None = None) -> list[TensorSpec]:
        return [TensorSpec(INPUT, "float32", ("batch", preprocess_of(record).samples if record else "samples"))]

    def read_labelled(self, source: Path) -> LabelledSamples:
        """A folder of class folders of ``.wav`` files, or a CSV of ``path,label`` rows (paths relative
        to the CSV's folder). Files that cannot be read are skipped with their reason."""
        source = Path(source)
        pairs = _csv_pairs(source) if source.suffix.lower() == ".csv" else _folder_pairs(source)
        samples, labels, skipped = [], [], []
        for path, label in pairs:
            try:
                read_wav(path)
            except DataError as exc:
                skipped.append((path, str(exc).removeprefix(f"{path}: ")))
                continue
            samples.append(path)
            labels.append(check_label(label, str(source)))
        if skipped and not samples:  # say why, or a CSV of wrong paths reads like a wrong layout
            path, reason = skipped[0]
            raise DataError(f"{source}: none of its {len(skipped)} .wav clips could be read (first: {path}: {reason})")
        if not samples:
            raise DataError(f"{source}: no readable .wav clips (expected one folder of .wav files per word, "
                            "or a CSV of path,label rows)")
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise DataError(f"{source}: {len(classes)} class ({classes[0]}); keyword spotting needs at least 2 "
                            f"(add a {BACKGROUND} folder of noise and other words)")
        return LabelledSamples(samples, labels, classes, skipped, str(source))

    def predict_samples(self, args: Sequence[str], stdin: IO[str] | None) -> list[tuple[str, str]]:
        """``.wav`` files, and folders (their ``.wav`` files, sorted, recursively)."""
        out = []
        for arg in args:
            path = Path(arg)
            if os.path.isdir(arg):  # os.path: a name too long for the file system is "no such file", not an OSError
                out += [(str(p), str(p)) for p in sorted(path.rglob("*")) if p.suffix.lower() in SUFFIXES]
            elif os.path.isfile(arg):
                out.append((arg, arg))
            else:
                raise DataError(f"{arg}: no such WAV file or folder")
        if not out:
            raise DataError(f"no .wav files in {', '.join(args) or 'the arguments'}")
        return out

    def assets(self, record: TaskRecord) -> list[str]:
        return []

    def quantization(self, record: TaskRecord, runtime: str, precision: str) -> dict[str, Any]:
        """int8 everywhere but the log-mel front end (its dB values span 80 dB: one int8 scale loses
        the quiet bands); see README "Keyword spotting" for the measured drops."""
        if precision == "fp16":  # a silent clip's power floor (1e-10) and a loud one's (~65,536) leave fp16's range
            return {"keep_float_prefixes": [FRONTEND_PREFIX],
                    "why": "the log-mel front end stays float32: its power spectrum leaves fp16's range"}
        if precision != "int8":
            return {}
        return {"keep_float_prefixes": [FRONTEND_PREFIX],
                "why": "int8 of the log-mel front end collapses accuracy (its dB values span 80 dB; every op "
                       "int8: 80.9% against 97.7% on the demo words); the CNN after it quantizes with a small drop"}

    def max_dims(self, record: TaskRecord) -> dict[str, int]:
        return {}  # the window is fixed: only the batch is dynamic

    def load(self, samples: Sequence[str | Path], record: TaskRecord) -> dict[str, np.ndarray]:
        spec = preprocess_of(record)
        return {INPUT: read_clips(samples, spec.sample_rate, spec.samples)}

    def feeds(self, loaded: Mapping[str, np.ndarray], record: TaskRecord) -> dict[str, np.ndarray]:
        return {INPUT: np.asarray(loaded[INPUT], np.float32)}

    def dummy_inputs(self, record: TaskRecord, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        shape = (batch, preprocess_of(record).samples)
        return {INPUT: 0.1 * np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)}

    def check_bundle(self, inputs: list[TensorSpec], outputs: list[TensorSpec], record: TaskRecord) -> str | None:
        spec = preprocess_of(record)
        wave = inputs[0].shape
        if len(wave) == 2 and wave[1] != spec.samples:
            return f"preprocess.samples {spec.samples} is not the input's window {wave[1]}"
        return self.check_tensors(inputs, outputs, record)

    def evaluate(self, outputs: Mapping[str, np.ndarray], labels: np.ndarray,
                 reference: Mapping[str, np.ndarray] | None, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """The image task's top-1, drop and agreement (``bench/accuracy.py``), and
        ``false_accept_rate``: the share of background clips answered as a keyword (None without a
        ``_background_`` class, or without background clips), with ``false_accept_rate_ci``, its 95%
        Wilson interval for ``false_accept_n`` background clips, which gates and tables read."""
        result = super().evaluate(outputs, labels, reference, classes)
        result.update(false_accepts(outputs[OUTPUT], labels, classes))
        return result


def false_accepts(logits: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None) -> dict[str, Any]:
    """``false_accept_rate`` with its 95% interval (``_ci``) and ``false_accept_n`` background clips;
    the rate is None without a ``_background_`` class or clips of it. Few background clips give a
    wide interval (10 clips: a 0% rate still allows 28%), which the tables and gates show."""
    from edgetl.bench.accuracy import wilson

    if not classes or BACKGROUND not in classes:
        return {"false_accept_rate": None}
    background = list(classes).index(BACKGROUND)
    quiet = np.asarray(labels) == background
    if not quiet.any():
        return {"false_accept_rate": None}
    fired = int((np.asarray(logits)[quiet].argmax(axis=1) != background).sum())
    n = int(quiet.sum())
    return {"false_accept_rate": fired / n, "false_accept_rate_ci": list(wilson(fired, n)), "false_accept_n": n}


def _folder_pairs(root: Path) -> list[tuple[str, str]]:
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected one folder of .wav files per word) nor a .csv")
    folders = {p.name for p in root.iterdir() if p.is_dir()}
    if folders and folders <= set(SPLIT_NAMES) and folders & set(TRAIN_NAMES):  # not classes
        held = sorted(folders & set(VAL_NAMES)) or sorted(folders)
        raise DataError(f"{root} holds train/val splits, not words: give one of them, e.g. {root / held[0]}")
    pairs = [(str(p), folder.name) for folder in sorted(root.iterdir()) if folder.is_dir()
             for p in sorted(folder.rglob("*")) if p.suffix.lower() in SUFFIXES and p.is_file()]
    if not pairs:
        raise DataError(f"{root}: no class folders of .wav files (expected {root}/<word>/*.wav)")
    return pairs


def _csv_pairs(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():  # a FIFO named like a CSV would block the read forever
        raise DataError(f"{path}: not a regular file (expected a CSV of path,label rows)")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the CSV ({exc})") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    pairs = []
    for line, row in enumerate(rows, start=2):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{path}, line {line}: expected path,label")
        pairs.append((str((path.parent / row[0].strip()).resolve()), row[1].strip()))
    if not pairs:
        raise DataError(f"{path}: no rows (expected path,label)")
    return pairs
