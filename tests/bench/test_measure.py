"""Measuring a session: in this process, in a fresh one, and an open session without a run dir
(what a bundle on a device uses)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from edgetl.bench.measure import MeasureCrashed, artifact_opener, bench_session, measure, measure_isolated
from edgetl.errors import ArtifactError

SETTINGS = {"batches": [1, 4], "iterations": 20, "warmup_iters": 2, "warmup_s": 0.0}


def crashing_opener():
    """An opener whose runtime is killed (a segfaulting plugin, the OOM killer) (used by the child process)."""

    def load():
        os.kill(os.getpid(), signal.SIGKILL)

    return load


@pytest.fixture
def arrays(tmp_path, tiny_inputs, ort_session):
    reference = ort_session.run({"input": tiny_inputs})["logits"]
    labels = reference.argmax(1)
    labels[:5] = (labels[:5] + 1) % 5  # 75 % top-1 for the reference, so a drop would show
    files = {"inputs": tmp_path / "inputs.npy", "labels": tmp_path / "labels.npy", "reference": tmp_path / "ref.npy"}
    for name, arr in zip(files, (tiny_inputs, labels, reference), strict=True):
        np.save(files[name], arr)
    named = {"inputs": {"input": str(files["inputs"])}, "labels": str(files["labels"]),
             "reference": {"logits": str(files["reference"])}}
    return {"inputs": {"input": tiny_inputs}, "labels": labels, "reference": {"logits": reference}, "files": named}


def test_bench_session_on_an_open_session(ort_session, arrays):
    phases = set()
    result = bench_session(ort_session, arrays["inputs"], arrays["labels"], arrays["reference"],
                           progress=lambda phase, d, t: phases.add(phase), **SETTINGS)
    assert [row["batch"] for row in result["latency"]] == [1, 4]
    assert all(row["iterations"] == 20 for row in result["latency"])
    assert result["accuracy"]["n"] == 20 and result["accuracy"]["agreement"] == 1.0
    assert result["accuracy"]["top1"] == pytest.approx(0.75)
    assert phases == {"batch 1", "batch 4", "accuracy"}


def test_bench_session_without_labels_measures_latency_only(ort_session, arrays):
    result = bench_session(ort_session, arrays["inputs"], **SETTINGS)
    assert result["accuracy"] is None and len(result["latency"]) == 2


def test_input_shape_mismatch_is_a_clear_artifact_error(ort_session):
    with pytest.raises(ArtifactError, match="expects 'input' of shape 3x8x8 but the validation samples are 3x16x16"):
        bench_session(ort_session, {"input": np.zeros((2, 3, 16, 16), np.float32)})


def test_inputs_the_artifact_does_not_take_are_a_clear_artifact_error(ort_session):
    feeds = {"input": np.zeros((2, 3, 8, 8), np.float32), "mask": np.ones((2, 8), np.int64)}
    with pytest.raises(ArtifactError, match=r"takes inputs \['input'\] but the data has \['input', 'mask'\]"):
        bench_session(ort_session, feeds)


def test_measure_in_process_adds_load_and_memory(tiny_onnx, arrays):
    result = measure(artifact_opener("onnxruntime", str(tiny_onnx), 1), arrays["inputs"], arrays["labels"],
                     arrays["reference"], **SETTINGS)
    assert result["load"]["load_ms"] > 0 and result["load"]["first_run_ms"] > 0
    assert result["memory"]["session_peak_mb"] >= 0
    assert result["accuracy"]["agreement"] == 1.0


def test_measure_isolated_matches_in_process_accuracy_and_reports_progress(tiny_onnx, arrays):
    seen = []
    result = measure_isolated("edgetl.bench.measure:artifact_opener",
                              {"runtime": "onnxruntime", "path": str(tiny_onnx), "threads": 1},
                              arrays["files"], progress=lambda *msg: seen.append(msg), **SETTINGS)
    assert result["memory"]["isolated"] is True
    assert result["memory"]["process_peak_mb"] > result["memory"]["session_peak_mb"]
    assert result["accuracy"]["top1"] == pytest.approx(0.75)
    assert [row["batch"] for row in result["latency"]] == [1, 4]
    assert ("accuracy", 20, 20) in seen


def test_user_errors_in_the_child_keep_their_class_and_message(tmp_path, arrays):
    with pytest.raises(ArtifactError, match="does not exist"):
        measure_isolated("edgetl.bench.measure:artifact_opener",
                         {"runtime": "onnxruntime", "path": str(tmp_path / "missing.onnx"), "threads": 1},
                         {"inputs": arrays["files"]["inputs"]}, **SETTINGS)


def test_a_crashing_runtime_fails_only_its_measurement(arrays):
    with pytest.raises(MeasureCrashed, match="SIGKILL"):
        measure_isolated("tests.bench.test_measure:crashing_opener", {}, {"inputs": arrays["files"]["inputs"]},
                         **SETTINGS)


def test_a_model_with_two_int64_inputs_is_measured_through_the_same_harness(tmp_path):
    """Named feeds end to end: batches, latency, first inference and accuracy never pick "input 0"."""
    from edgetl.backends import get_backend
    from tests.bench.conftest import build_two_input_onnx

    build_two_input_onnx(tmp_path / "text.onnx")
    rng = np.random.default_rng(2)
    feeds = {"ids": rng.integers(0, 50, (12, 7), dtype=np.int64), "mask": np.ones((12, 7), np.int64)}
    feeds["mask"][:, 5:] = 0
    with get_backend("onnxruntime").load(tmp_path / "text.onnx", threads=1) as session:
        reference = session.run(feeds)
    labels = reference["logits"].argmax(1)
    result = measure(artifact_opener("onnxruntime", str(tmp_path / "text.onnx"), 1), feeds, labels, reference,
                     **SETTINGS)
    assert [row["batch"] for row in result["latency"]] == [1, 4]
    assert result["accuracy"]["n"] == 12 and result["accuracy"]["top1"] == 1.0 and result["accuracy"]["agreement"] == 1.0
    with pytest.raises(ArtifactError, match=r"takes inputs \['ids', 'mask'\] but the data has \['ids'\]"):
        measure(artifact_opener("onnxruntime", str(tmp_path / "text.onnx"), 1), {"ids": feeds["ids"]}, **SETTINGS)
