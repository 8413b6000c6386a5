"""openWakeWord's feature models ported to torch are the ONNX models, on real spoken clips; the mel
front end's floor is per clip (the ONNX graph's is per batch); the exported front end (run by ONNX
Runtime, numpy in and out, as on the device) equals the torch one the model trained with."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from edgetl.audio import oww  # noqa: E402


def _onnx(name: str):
    return ort.InferenceSession(str(oww.model_file(name)), providers=["CPUExecutionProvider"])


def test_logmel_equals_the_onnx_mel_model_clip_by_clip(clips):
    session = _onnx(oww.MEL_FILE)
    with torch.no_grad():
        ported = oww.LogMel()(torch.from_numpy(clips)).numpy()
    for clip, mine in zip(clips, ported, strict=True):
        theirs = session.run(None, {"input": clip[None]})[0][0, 0] / 10 + 2  # openWakeWord's scaling
        np.testing.assert_allclose(mine, theirs, atol=2e-5)


def test_the_floor_is_per_clip_not_per_batch(clips):
    """A quiet clip batched with a loud one: the ONNX graph changes its features, the port does not."""
    quiet = clips[:1] * 1e-3
    pair = np.concatenate([clips[1:2], quiet])
    with torch.no_grad():
        alone, batched = oww.LogMel()(torch.from_numpy(quiet)), oww.LogMel()(torch.from_numpy(pair))[1:]
    np.testing.assert_allclose(alone.numpy(), batched.numpy(), atol=1e-5)
    session = _onnx(oww.MEL_FILE)
    onnx_alone = session.run(None, {"input": quiet})[0][0]
    onnx_batched = session.run(None, {"input": pair})[0][1]
    assert np.abs(onnx_alone - onnx_batched).max() > 1.0  # dB: why the port changes it


def test_speech_embedding_equals_the_onnx_embedding_model(clips):
    with torch.no_grad():
        windows = oww.windows(oww.LogMel()(torch.from_numpy(clips)))
        ported = oww.SpeechEmbedding()(windows).numpy()
    theirs = _onnx(oww.EMBEDDING_FILE).run(None, {"input_1": windows.numpy()[..., None]})[0].reshape(-1, 96)
    np.testing.assert_allclose(ported, theirs, atol=1e-3 * np.abs(theirs).max())


def test_exported_frontend_equals_the_torch_frontend(clips, tmp_path):
    frontend = oww.LogMel().eval()
    program = torch.onnx.export(frontend, (torch.from_numpy(clips[:2]),), dynamo=True, input_names=["waveform"],
                                output_names=["mel"], dynamic_shapes={"waveform": {0: torch.export.Dim("batch")}})
    program.save(str(tmp_path / "frontend.onnx"))
    session = ort.InferenceSession(str(tmp_path / "frontend.onnx"), providers=["CPUExecutionProvider"])
    device_side = session.run(None, {"waveform": clips})[0]
    with torch.no_grad():
        np.testing.assert_allclose(device_side, frontend(torch.from_numpy(clips)).numpy(), atol=1e-4)
