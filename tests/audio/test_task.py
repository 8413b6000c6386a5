"""The audio-classification task, torch-free: layouts, predict's arguments, the bundle's preprocess
bounds, the metrics (false accepts on the background class) and the int8 scheme."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from pydantic import ValidationError

from edgetl.errors import DataError
from edgetl.tasks import get_task
from edgetl.tasks.base import TaskRecord

TASK = get_task("audio-classification")
RECORD = TaskRecord({"sample_rate": 16_000, "samples": 16_000, "frontend": "oww-logmel", "n_mels": 32, "hop": 160,
                     "n_fft": 512}, ("_background_", "no", "yes"))


def test_specs_are_a_waveform_window_in_and_logits_out():
    (wave,), (logits,) = TASK.inputs(RECORD), TASK.outputs(RECORD)
    assert (wave.name, wave.dtype, wave.shape) == ("waveform", "float32", ("batch", 16_000))
    assert (logits.name, logits.shape) == ("logits", ("batch", 3))
    assert TASK.check_bundle([wave], [logits], RECORD) is None


def test_read_labelled_folder_skips_unreadable_clips(kws_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(kws_dir / "train", data)
    (data / "yes" / "broken.wav").write_bytes(b"RIFF....WAVEnope")
    labelled = TASK.read_labelled(data)
    assert labelled.classes == ["_background_", "no", "yes"]
    assert len(labelled.samples) == 3 * 32
    assert labelled.skipped == [(str(data / "yes" / "broken.wav"), "not a readable WAV file (no fmt chunk)")]


def test_read_labelled_csv_paths_relative_to_the_csv(kws_dir, tmp_path):
    rows = ["path,label"] + [f"{p.relative_to(kws_dir)},{p.parent.name}" for p in sorted((kws_dir / "val").glob("*/*.wav"))]
    (kws_dir / "val.csv").write_text("\n".join(rows))
    try:
        labelled = TASK.read_labelled(kws_dir / "val.csv")
    finally:
        (kws_dir / "val.csv").unlink()
    assert labelled.counts() == {"_background_": 10, "no": 10, "yes": 10}


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "no class folders of .wav files"),
    (lambda d: (d / "yes").mkdir() or (d / "yes" / "a.wav").write_bytes(b"x"),
     r"none of its 1 .wav clips could be read \(first: .*a.wav: not a readable WAV file \(no RIFF/WAVE header\)\)"),
])
def test_read_labelled_refuses_an_unusable_folder(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DataError, match=message):
        TASK.read_labelled(tmp_path)


def test_a_csv_of_wrong_paths_says_which_and_why_in_one_line(tmp_path):
    from click.testing import CliRunner

    from edgetl.cli import cli

    (tmp_path / "words.csv").write_text("path,label\nclips/yes1.wav,yes\nclips/no1.wav,no\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--task", "audio-classification", "--data", str(tmp_path / "words.csv"),
                                      "--out", str(out)])
    assert result.exit_code == 2 and not out.exists()
    missing = tmp_path / "clips" / "yes1.wav"
    assert result.output.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'words.csv'}: none of its 2 .wav clips could be read "
        f"(first: {missing}: cannot read the WAV file (No such file or directory))")


def test_a_folder_of_splits_is_not_read_as_words(kws_dir):
    with pytest.raises(DataError, match=f"{kws_dir} holds train/val splits, not words: give one of them, e.g. "
                                        f"{kws_dir / 'val'}$"):
        TASK.read_labelled(kws_dir)


def test_predict_samples_expands_folders_and_refuses_missing_paths(kws_dir):
    pairs = TASK.predict_samples([str(kws_dir / "val" / "yes")], io.StringIO(""))
    assert len(pairs) == 10 and all(name.endswith(".wav") for name, _ in pairs)
    with pytest.raises(DataError, match="nope.wav: no such WAV file or folder"):
        TASK.predict_samples(["nope.wav"], None)


def test_preprocess_reads_the_window_the_model_takes(kws_dir):
    files = sorted((kws_dir / "val" / "no").glob("*.wav"))[:3]
    feeds = TASK.preprocess(files, RECORD)
    assert feeds["waveform"].shape == (3, 16_000) and feeds["waveform"].dtype == np.float32


@pytest.mark.parametrize("field, value", [("samples", 10**9), ("sample_rate", 0), ("n_fft", -1),
                                          ("frontend", "../../x"), ("extra", 1), ("samples", "16000"),
                                          ("n_mels", 32.0), ("hop", True)])
def test_hostile_bundle_preprocess_is_refused(field, value):
    """Bounded and strict, as a manifest reads it (JSON): "16000" is not 16000, like the text task's."""
    with pytest.raises(ValidationError):
        TASK.preprocess_model.model_validate({**RECORD.preprocess, field: value})
    with pytest.raises(ValidationError):
        TASK.preprocess_model.model_validate_json(json.dumps({**RECORD.preprocess, field: value}))


def test_false_accept_rate_counts_background_clips_answered_as_keywords():
    labels = np.array([0, 0, 0, 0, 1, 2])
    logits = np.eye(3, dtype=np.float32)[[0, 0, 2, 1, 1, 2]]  # two of four background clips fire a keyword
    result = TASK.evaluate({"logits": logits}, labels, {"logits": logits}, RECORD.classes)
    assert result["false_accept_rate"] == 0.5 and result["top1"] == pytest.approx(4 / 6)
    lo, hi = result["false_accept_rate_ci"]  # Wilson, 4 background clips: wide
    assert result["false_accept_n"] == 4 and 0.1 < lo < 0.5 < hi < 0.9
    no_background = TASK.evaluate({"logits": logits}, labels, None, ["a", "b", "c"])
    assert no_background["false_accept_rate"] is None


def test_int8_and_fp16_keep_the_frontend_float_on_every_runtime():
    for runtime in ("onnxruntime", "openvino", "tensorrt"):
        assert TASK.quantization(RECORD, runtime, "int8")["keep_float_prefixes"] == ["frontend"]
        assert TASK.quantization(RECORD, runtime, "fp16")["keep_float_prefixes"] == ["frontend"]
        assert TASK.quantization(RECORD, runtime, "fp32") == {}


def test_fifos_in_the_data_are_never_opened(kws_dir, tmp_path):
    """A FIFO as the CSV, or named by one of its rows: refused or skipped, never read (it would block)."""
    os.mkfifo(tmp_path / "labels.csv")
    with pytest.raises(DataError, match="labels.csv: not a regular file"):
        TASK.read_labelled(tmp_path / "labels.csv")
    os.mkfifo(tmp_path / "fifo.wav")
    clips = sorted((kws_dir / "val").glob("*/*.wav"))
    rows = ["path,label", f"{tmp_path / 'fifo.wav'},yes"] + [f"{p},{p.parent.name}" for p in clips]
    (tmp_path / "rows.csv").write_text("\n".join(rows))
    labelled = TASK.read_labelled(tmp_path / "rows.csv")
    assert labelled.skipped == [(str(tmp_path / "fifo.wav"), "not a regular file (a FIFO, socket or device): "
                                 "skipped without reading it")]


def test_a_word_no_bundle_can_carry_is_refused_when_read(kws_dir, tmp_path):
    clips = sorted((kws_dir / "val").glob("*/*.wav"))
    rows = ["path,label", f"{clips[0]},bad\x1b[2Jword"] + [f"{p},{p.parent.name}" for p in clips[1:]]
    (tmp_path / "rows.csv").write_text("\n".join(rows))
    with pytest.raises(DataError, match=r"rows.csv: the label 'bad\?\[2Jword' must be 1..200 characters"):
        TASK.read_labelled(tmp_path / "rows.csv")


def test_a_name_too_long_for_the_file_system_is_no_such_file():
    with pytest.raises(DataError, match=r"no such WAV file or folder$"):
        TASK.predict_samples(["x" * 3000 + ".wav"], None)
