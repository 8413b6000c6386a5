"""The Backend and Session protocols every runtime file implements.

Adding a runtime = one file here + one profile in ``targets/`` + one conformance test subclass in
``tests/backends/``. Load/run code never imports torch: sessions run on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class Compiled:
    """What ``Backend.compile`` produced in ``out_dir``."""

    runtime: str
    precision: str
    path: Path  # the file ``Backend.load`` takes
    files: list[Path] = field(default_factory=list)  # everything to hash and bundle (includes path)
    options: dict[str, Any] = field(default_factory=dict)  # what was chosen, and why, for the report
    # When the artifact cannot run on this machine (a TensorRT engine without a GPU), an ONNX model
    # with the same quantization that ONNX Runtime CPU can run, to *estimate* its accuracy.
    estimate_with: Path | None = None


@runtime_checkable
class Session(Protocol):
    input_shape: tuple[int, ...]  # (batch or -1, 3, H, W)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW batch -> float32 logits (N, classes)."""

    def __enter__(self) -> Session: ...

    def __exit__(self, *exc) -> None: ...


@runtime_checkable
class Backend(Protocol):
    name: str  # "onnxruntime", "openvino", "tensorrt", "torch"
    precisions: tuple[str, ...]  # e.g. ("fp32", "fp16", "int8")
    extra: str  # pip extra that installs the runtime

    def available(self) -> bool:
        """True when the runtime can be imported here (compile may still need more, e.g. a GPU)."""

    def can_run_here(self) -> bool:
        """True when compiled artifacts can be executed on this machine."""

    def version(self) -> str: ...

    def compile(
        self,
        onnx_path: Path,
        out_dir: Path,
        precision: str,
        calibration: np.ndarray | None,
        options: dict[str, Any],
    ) -> Compiled:
        """Build the artifact for ``precision`` into ``out_dir``; ``calibration`` is float32 NCHW."""

    def load(self, path: Path, threads: int | None = None) -> Session:
        """Open an artifact produced by ``compile`` for inference."""


class SessionBase:
    """Context-manager plumbing shared by the sessions."""

    input_shape: tuple[int, ...] = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass
