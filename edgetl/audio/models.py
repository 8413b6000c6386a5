"""The keyword-spotting model: waveform -> ``frontend`` (log-mel, ``oww.LogMel``) -> ``backbone`` ->
``head`` -> logits. The front end is inside the graph, so the device feeds samples and runs exactly
the workstation's features; its module name ``frontend`` prefixes its ONNX nodes, which int8 keeps
in float (the task's ``quantization``: ``keep_float_prefixes``). Workstation only (torch)."""

from __future__ import annotations

import torch
from torch import nn

from edgetl.audio import oww
from edgetl.audio.workstation import LOGMEL_CNN


class LogMelCNN(nn.Module):
    """(batch, frames, 32) -> (batch, 512): three conv/BN/ReLU blocks, then the mean over time only:
    where in the spectrum the energy lies is what tells words apart, so the 8 band groups stay."""

    width = 64 * oww.N_MELS // 4

    def __init__(self):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.layers = nn.Sequential(nn.BatchNorm2d(1),  # the features' scale, learnt (log-mel is not centred)
                                    *block(1, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 64))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.layers(mel.unsqueeze(1)).mean(dim=2).flatten(1)


class EmbeddingBackbone(nn.Module):
    """(batch, frames, 32) -> (batch, windows * 96): the speech embedding of every 76-frame window."""

    def __init__(self, samples: int):
        super().__init__()
        self.windows = oww.embedding_windows(samples)
        if self.windows < 1:
            raise ValueError(f"{samples} samples are too short for the speech embedding (needs at least "
                             f"{(oww.EMBEDDING_FRAMES - 1) * oww.HOP + oww.N_FFT})")
        self.embedding = oww.SpeechEmbedding()
        self.width = self.windows * oww.EMBEDDING_WIDTH

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.embedding(oww.windows(mel)).reshape(mel.shape[0], self.width)


class KeywordSpotter(nn.Module):
    def __init__(self, backbone: str, num_classes: int, samples: int, head: str = "linear"):
        super().__init__()
        self.frontend = oww.LogMel()
        self.backbone = LogMelCNN() if backbone == LOGMEL_CNN else EmbeddingBackbone(samples)
        width = self.backbone.width
        self.head = (nn.Sequential(nn.Linear(width, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, num_classes))
                     if head == "mlp" else nn.Linear(width, num_classes))

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.frontend(waveform))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(waveform))
