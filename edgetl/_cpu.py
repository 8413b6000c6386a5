"""The CPU an artifact is built for: this machine's, or the one a target profile describes.

Standard library only (the bench's system record uses it on the device). Int8 kernels differ per
instruction set, so a workstation compiling for a Raspberry Pi must choose by the Pi's CPU, which
the profile carries (``cpu_arch``, ``cpu_flags``), not by its own.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# CPU features that decide which kernels a runtime can use (int8 dot products, bf16, AMX, NEON).
FLAGS_OF_INTEREST = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "asimdhp", "sve", "sve2", "i8mm", "bf16", "neon",
)
# int8 dot products that accumulate u8 x s8 in int32 without the int16 saturation of vpmaddubsw.
X86_VNNI = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
ARM_ARCHS = frozenset({"aarch64", "arm64"})


def parse_cpu_flags(cpuinfo: str) -> set[str]:
    """Feature flags from /proc/cpuinfo text: the first ``flags`` (x86) or ``Features`` (ARM) line."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def host_cpu_flags() -> set[str]:
    """Feature flags of this CPU (empty where /proc/cpuinfo is absent, e.g. macOS)."""
    try:
        return parse_cpu_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return set()


@dataclass(frozen=True)
class TargetCpu:
    """The CPU int8 types are chosen for, and where that description came from."""

    arch: str  # "aarch64", "x86_64", or "" when only the flags are known
    flags: frozenset[str]
    source: str  # "the target profile" or "this workstation"

    @property
    def is_arm(self) -> bool:
        return self.arch.lower() in ARM_ARCHS or "asimd" in self.flags

    @property
    def vnni(self) -> frozenset[str]:
        return self.flags & X86_VNNI

    def record(self) -> dict[str, Any]:
        """For the manifest: which CPU the artifact was built for (the flags that choose kernels)."""
        return {"arch": self.arch or None, "flags": [f for f in FLAGS_OF_INTEREST if f in self.flags], "from": self.source}


def target_cpu(options: dict[str, Any]) -> TargetCpu:
    """The profile's CPU when it names one (``cpu_arch`` and/or ``cpu_flags``), else this machine's."""
    arch, flags = options.get("cpu_arch"), options.get("cpu_flags")
    if arch is None and flags is None:
        return TargetCpu(platform.machine().lower(), frozenset(host_cpu_flags()), "this workstation")
    return TargetCpu(arch or "", frozenset(flags or ()), "the target profile")
