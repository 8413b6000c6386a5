"""Where training computes: ``--device``, ``--amp``, ``--channels-last`` and ``--workers`` resolved
once into an ``Execution`` that the loops, feature extraction and ``predict`` use.

``auto`` picks CUDA when PyTorch sees a GPU, else Apple's MPS, else the CPU; a device that is not
there is the CLI's one-line ``ConfigError`` naming what is. Under ``torchrun`` on CUDA each rank
takes ``cuda:$LOCAL_RANK``. Mixed precision ``auto`` is bf16 autocast where the GPU supports it,
else fp16 with a GradScaler, and off on a CPU (where bf16 still works when asked for).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace

from edgetl.errors import ConfigError

GPU_WORKERS = 4  # decoding and augmenting a batch on the CPU must keep up with a GPU


@dataclass(frozen=True)
class Execution:
    """How this process trains; ``record()`` is what the manifest keeps."""

    device: str = "cpu"  # a torch device string: cpu, cuda:0, mps
    label: str = "cpu"  # the device as a person reads it, e.g. "cuda:0 (NVIDIA H200)"
    amp: str = "off"  # off, bf16 or fp16
    channels_last: bool = False
    workers: int = 0

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    def without_amp(self) -> Execution:
        """The same device in fp32: the head on cached features trains and predicts so."""
        return replace(self, amp="off")

    def autocast(self):
        """The forward passes' autocast context (a no-op with amp off)."""
        if self.amp == "off":
            return contextlib.nullcontext()
        import torch

        return torch.autocast(self.device_type, dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    def grad_scaler(self):
        """fp16 gradients underflow without loss scaling; bf16 and fp32 need none (a disabled scaler)."""
        import torch

        return torch.amp.GradScaler(self.device_type, enabled=self.amp == "fp16")

    def place(self, model):
        """Move a model here, channels-last where that is on."""
        import torch

        if self.channels_last:
            return model.to(self.device, memory_format=torch.channels_last)
        return model.to(self.device)

    def to(self, tensor):
        """A CPU batch on this device (without blocking when the loader pinned it); images (4-D)
        channels-last where that is on."""
        import torch

        non_blocking = self.is_cuda and tensor.is_pinned()
        if self.channels_last and tensor.dim() == 4:
            return tensor.to(self.device, non_blocking=non_blocking, memory_format=torch.channels_last)
        return tensor.to(self.device, non_blocking=non_blocking)

    def loader_options(self, seed: int) -> dict:
        """DataLoader keywords: workers (pinned and kept alive on CUDA); torch seeds each worker's
        torch, random and numpy from the loader's generator, so a seed gives the same batches and
        augmentations every run."""
        import torch

        options = {"num_workers": self.workers, "pin_memory": self.is_cuda,
                   "generator": torch.Generator().manual_seed(seed)}
        if self.workers:
            options.update(persistent_workers=self.is_cuda)
        return options

    def record(self) -> dict:
        return {"device": self.label, "amp": self.amp, "channels_last": self.channels_last, "workers": self.workers}


def resolve(device: str = "auto", amp: str = "auto", channels_last: bool | None = None, workers: int | None = None,
            *, local_rank: int | None = None) -> Execution:
    """The ``Execution`` of the options; ``local_rank``: this process's LOCAL_RANK under torchrun."""
    where = _device(device, local_rank)
    cuda = where.startswith("cuda")
    return Execution(
        device=where,
        label=_label(where),
        amp=_amp(amp, where),
        channels_last=cuda if channels_last is None else channels_last,
        workers=(min(GPU_WORKERS, os.cpu_count() or 1) if cuda else 0) if workers is None else workers,
    )


def _device(requested: str, local_rank: int | None) -> str:
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()
    if requested == "auto":
        requested = "cuda" if cuda else "mps" if mps else "cpu"
    if requested == "cpu" or (requested == "mps" and mps):
        return requested
    if requested.startswith("cuda") and cuda:
        return _cuda_index(requested, local_rank, cuda)
    raise ConfigError(f"--device {requested}: not available here; {_available(cuda, mps)}")


def _cuda_index(requested: str, local_rank: int | None, count: int) -> str:
    if local_rank is not None:  # torchrun: one GPU per rank, as NCCL requires
        if requested != "cuda":
            raise ConfigError(f"--device {requested}: under torchrun each rank takes cuda:$LOCAL_RANK; "
                              f"use --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
        index = local_rank
    else:
        index = int(requested.partition(":")[2] or 0)
    if index >= count:
        raise ConfigError(f"--device cuda:{index}: not available here; {_available(count, False)}")
    return f"cuda:{index}"


def _available(cuda: int, mps: bool) -> str:
    names = ["cpu"] + [f"cuda:{i}" for i in range(cuda)] + (["mps"] if mps else [])
    return f"this machine has: {', '.join(names)}"


def _label(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)})"
    return device


def _amp(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    if not device.startswith("cuda"):
        return "off"  # autocast on a CPU is slower than fp32 on most of them
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def local_rank() -> int | None:
    """LOCAL_RANK under torchrun with several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(os.environ.get("LOCAL_RANK", "0"))
