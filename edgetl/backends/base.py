"""The Backend and Session protocols every runtime file implements.

A runtime is one self-describing plugin: its backend class carries every fact about it (see
``Backend``), and it is registered under the ``edgetl.backends`` entry-point group (see
``edgetl/backends/__init__.py``). Adding a runtime = one file + one profile in ``targets/`` + one
conformance test subclass in ``tests/backends/``. Load/run code never imports torch: sessions run on
the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgetl._cpu import TargetCpu
from edgetl.errors import ArtifactError, EdgetlError
from edgetl.tensors import TensorSpec, check_feeds


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


@dataclass(frozen=True)
class Variant:
    """One point of a runtime's search space: how to build (and run) one candidate artifact."""

    precision: str  # "fp32" | "fp16" | "int8" (one of backend.precisions)
    label: str  # short, unique within the backend: "int8 s8s8 per-tensor", "fp32 bf16-hint"
    # merged OVER the profile's options into compile()'s `options` (JSON values only; they enter the fingerprint)
    options: Mapping[str, Any] = field(default_factory=dict)
    # CalibrationRecipe field overrides for int8, e.g. {"symmetric_activations": True}; {} = the profile's recipe as is
    recipe: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchDevice:
    """What a backend needs to know to list its variants for one device."""

    device: str  # the profile's `device`: "cpu" | "gpu" | "npu"
    cpu: TargetCpu  # the device's CPU (edgetl._cpu.target_cpu(profile options))
    hint: Mapping[str, Any]  # the task's int8 hint for this runtime (Task.quantization(record, runtime, "int8")), {} for none
    options: Mapping[str, Any]  # the profile's runtime options


@runtime_checkable
class Session(Protocol):
    """One loaded artifact. Tensors are named (docs/architecture.md, "Named tensors"): a session
    takes every input by name and returns every output by name, in the artifact's own dtypes."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{input name: batch}`` -> ``{output name: batch}``; a missing, unknown or mis-typed input is
        one ``DataError`` line (``check_feeds``), never the runtime's own error."""

    def __enter__(self) -> Session: ...

    def __exit__(self, *exc) -> None: ...


class NoOptions(BaseModel):
    """Profile fields of a runtime that has none of its own."""

    # strict and closed, like the profile itself: a typo is reported, never ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class CpuOptions(NoOptions):
    """Profile fields of the CPU runtimes: the device's CPU, so a workstation can cross-compile.

    Left out, int8 types are chosen for the CPU that compiles (fine for ``host-cpu``).
    """

    cpu_arch: Literal["x86_64", "aarch64"] | None = Field(None, description="the device's CPU architecture")
    cpu_flags: list[str] | None = Field(
        None, description="the device's CPU feature flags, as /proc/cpuinfo's flags/Features line lists them")


@runtime_checkable
class Backend(Protocol):
    """Every fact about one runtime; ``BackendBase`` gives the defaults most runtimes keep."""

    name: str  # "onnxruntime", "openvino", "tensorrt": the entry-point name, profiles' `runtime`
    precisions: tuple[str, ...]  # e.g. ("fp32", "fp16", "int8")
    extra: str  # pip extra that installs the runtime: pip install "edgetl[<extra>]"
    modules: tuple[str, ...]  # importable modules that extra provides (for "pip install" hints)
    min_versions: dict[str, str]  # oldest runtime per flavour (module) that can read what we ship
    distributions: tuple[str, ...]  # fnmatch patterns of the distributions the system record lists
    devices: tuple[str, ...]  # the profile `device` values it runs on ("cpu", "gpu", "npu")
    runs_on: str  # what a machine needs to run the artifacts ("needs an NVIDIA GPU")
    options_model: type[BaseModel]  # the profile fields of this runtime; validated values reach compile
    builds_on_device: bool  # True when the device must finish the artifact (``prepare``) before running
    plot_style: tuple[str, str]  # (colour, matplotlib marker) of its points in the report's charts

    def available(self) -> bool:
        """True when the runtime can be imported here (compile may still need more, e.g. a GPU)."""

    def can_run_here(self) -> bool:
        """True when compiled artifacts can be executed on this machine."""

    def version(self) -> str:
        """"1.23.0", or "<flavour> <version>" where the runtime comes in flavours (a ``min_versions`` key)."""

    def compile(
        self,
        onnx_path: Path,
        out_dir: Path,
        precision: str,
        calibration: dict[str, np.ndarray] | None,
        options: dict[str, Any],
    ) -> Compiled:
        """Build the artifact for ``precision`` into ``out_dir``. ``calibration`` (int8): every input's
        samples by name, stacked on axis 0 (``tensors.batches`` splits them). ``options``: ``recipe``,
        ``threads`` and the profile's own fields (``options_model``)."""

    def load(self, path: Path, threads: int | None = None) -> Session:
        """Open an artifact produced by ``compile`` for inference."""

    def bundle_files(self, entry: dict[str, Any], export_path: str) -> tuple[list[str], str]:
        """(run-relative files a bundle carries, the one the device loads) for a compiled entry."""

    def build_settings(self, entry: dict[str, Any]) -> dict[str, Any]:
        """What the device needs to finish the artifact (``model.kind`` and ``model.build``), or {}."""

    def prepare(self, bundle, *, force: bool = False, any_arch: bool = False) -> Path:
        """What the device does before running a bundle; returns the file ``load`` takes."""

    def fingerprint(self, options: dict[str, Any]) -> dict[str, Any]:
        """Everything besides the model, precision and recipe that changes what ``compile`` builds."""

    def variants(self, device: SearchDevice) -> list[Variant]:
        """The candidates ``edgetl optimize`` builds and measures on ``device``: only those that can win
        there (threads are not a variant: the search adds them)."""


class BackendBase:
    """Defaults: the bundle carries the compiled files as they are and the device loads them."""

    modules: ClassVar[tuple[str, ...]] = ()
    distributions: ClassVar[tuple[str, ...]] = ()
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    runs_on = "a CPU"
    options_model: ClassVar[type[BaseModel]] = NoOptions
    builds_on_device = False  # True: `edgetl build` finishes the artifact on the device (``prepare``)
    plot_style: ClassVar[tuple[str, str]] = ("#bbbbbb", "o")

    def bundle_files(self, entry: dict[str, Any], export_path: str) -> tuple[list[str], str]:
        return list(entry["files"]), entry["path"]

    def build_settings(self, entry: dict[str, Any]) -> dict[str, Any]:
        return {}

    def prepare(self, bundle, *, force: bool = False, any_arch: bool = False) -> Path:
        return bundle.file(bundle.manifest["model"]["path"])

    def fingerprint(self, options: dict[str, Any]) -> dict[str, Any]:
        return dict(options)

    def variants(self, device: SearchDevice) -> list[Variant]:
        # every precision as the profile builds it: a plugin runtime joins the search with no code
        return [Variant(p, p) for p in self.precisions]


class CpuBackendBase(BackendBase):
    """A CPU runtime: int8 is built for the profile's CPU, else this machine's (``_cpu.target_cpu``),
    so that CPU is part of what it builds: compiling the same run on another machine rebuilds it."""

    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    options_model: ClassVar[type[BaseModel]] = CpuOptions

    def fingerprint(self, options: dict[str, Any]) -> dict[str, Any]:
        from edgetl._cpu import target_cpu

        return {**options, "cpu": target_cpu(options).record()}


class SessionBase:
    """What the sessions share: the feed check and the context-manager plumbing.

    A session sets ``inputs``/``outputs`` when it loads and implements ``_run``, which gets feeds
    already checked against ``inputs``."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    where = "the model"  # how the feed check names the artifact: its file name
    # what the session chose at load that the artifact did not say, e.g. a precision hint this CPU
    # lacks ("inference_precision_fallback"); read-only here, a session sets its own dict
    info: Mapping[str, str] = MappingProxyType({})

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.inputs, feeds, self.where)
        try:
            return self._run(feeds)
        except EdgetlError:
            raise
        except Exception as exc:  # the runtime's own types: a token id past the model's vocabulary, a bad op
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ArtifactError(f"{self.where} cannot run these inputs: {reason}") from exc

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass
