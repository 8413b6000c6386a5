"""The system record stored with every bench result: a latency without its machine means nothing.

Device side: the standard library and the runtime registry. Nothing heavy is imported: runtime
versions come from the installed distributions' metadata (each backend names its distributions),
so recording them costs no import of torch or a runtime.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import importlib.util
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

from edgetl._cpu import FLAGS_OF_INTEREST, parse_cpu_flags

# Distributions whose versions change the numbers besides the runtimes' (``Backend.distributions``).
_DISTS = ("numpy", "torch", "edgetl")
# Environment variables that change how many threads runtimes use behind our back.
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY",
               "KMP_BLOCKTIME", "KMP_AFFINITY", "GOMP_SPINCOUNT", "TBB_NUM_THREADS")


def device_slug(name: str | None = None) -> str:
    """A file-name-safe device name: the given one or this machine's short host name."""
    raw = name or socket.gethostname().split(".")[0] or "host"
    slug = re.sub(r"[^a-z0-9_-]+", "-", raw.lower()).strip("-")
    return slug or "host"


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return ""


def _cpuinfo(text: str) -> dict[str, str]:
    """The first processor block of /proc/cpuinfo text plus the ARM-wide lines."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = (s.strip() for s in line.split(":", 1))
            info.setdefault(key, value)
    return info


def _physical_cores() -> int | None:
    """Distinct (package, core) pairs in sysfs; hyper-threads share a core."""
    cores = set()
    for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*"):
        core, pkg = _read(f"{cpu}/topology/core_id"), _read(f"{cpu}/topology/physical_package_id")
        if core:
            cores.add((pkg, core))
    return len(cores) or None


def _sysctl(key: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_record(cpuinfo: str | None = None) -> dict:
    """This CPU; ``cpuinfo`` is /proc/cpuinfo text to read model and flags from instead of this machine's."""
    text = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    info = _cpuinfo(text)
    model = (info.get("model name") or info.get("Model") or info.get("Hardware") or info.get("cpu model")
             or _sysctl("machdep.cpu.brand_string") or platform.processor() or platform.machine())
    flags = parse_cpu_flags(text)
    if sys.platform == "darwin" and platform.machine() == "arm64":
        flags |= {"neon", "asimd"}  # every Apple silicon core has them; macOS has no cpuinfo
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        usable = os.cpu_count()
    return {
        "model": model,
        "arch": platform.machine(),
        "flags": [f for f in FLAGS_OF_INTEREST if f in flags],
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores() or (int(_sysctl("hw.physicalcpu") or 0) or None),
        "usable_cores": usable,  # what this process may run on (cgroups, taskset)
        "virtualized": "hypervisor" in flags,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") or None,
        "max_mhz": _max_mhz(),
    }


def _max_mhz() -> float | None:
    khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    return int(khz) / 1000 if khz.isdigit() else None


def memory_record() -> dict:
    meminfo = {}
    for line in _read("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            meminfo[key] = int(rest.split()[0]) / 1024  # kB -> MB
    total = meminfo.get("MemTotal") or (int(_sysctl("hw.memsize") or 0) / 2**20 or None)
    return {"total_mb": total, "available_mb": meminfo.get("MemAvailable")}


def gpu_record() -> list[dict]:
    """NVIDIA GPUs from nvidia-smi; on Jetson (no nvidia-smi GPU query) the L4T release."""
    gpus = []
    if shutil.which("nvidia-smi"):
        query = "name,driver_version,memory.total,compute_cap"
        try:
            out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=15).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.strip().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 4:
                gpus.append({"name": parts[0], "driver": parts[1], "memory_mb": _num(parts[2]),
                             "compute_capability": parts[3]})
    tegra = _read("/etc/nv_tegra_release")
    if tegra and not gpus:
        gpus.append({"name": "NVIDIA Jetson (integrated)", "l4t": tegra.splitlines()[0]})
    return gpus


def _num(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def runtime_versions() -> dict[str, str]:
    """Installed versions of every runtime and of the reference stack, from package metadata."""
    from edgetl.backends import get_backend, runtimes

    backends = [get_backend(name) for name in runtimes()]
    patterns = [*_DISTS, *(p for b in backends for p in b.distributions)]
    found = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if any(fnmatch(name, p) for p in patterns) and not name.endswith(("-libs", "-bindings")):
            found[name] = dist.version
    for backend in backends:
        if not any(fnmatch(name, p) for name in found for p in backend.distributions):
            found.update(_unpackaged_version(backend.modules[:1]))
    return dict(sorted(found.items()))


def _unpackaged_version(modules: tuple[str, ...]) -> dict[str, str]:
    """A runtime installed without pip metadata (JetPack's TensorRT comes from apt): its module's version."""
    for module in modules:
        if importlib.util.find_spec(module):
            try:
                return {module: str(importlib.import_module(module).__version__)}
            except Exception:  # a broken install must not stop the bench
                return {module: "unknown (import failed)"}
    return {}


def system_record(threads: int | None = None, name: str | None = None) -> dict:
    """Everything about this machine that changes a benchmark's numbers."""
    return {
        "name": device_slug(name),
        "hostname": socket.gethostname(),
        "board": _read("/proc/device-tree/model") or None,  # Raspberry Pi, Jetson ...
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpu": cpu_record(),
        "threads": threads,
        "memory": memory_record(),
        "gpus": gpu_record(),
        "runtimes": runtime_versions(),
        "thread_env": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
        # Other work on the machine while measuring is the first suspect of a noisy result.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def busy_warning(record: dict) -> str | None:
    """A warning when more processes wanted the CPU than it has cores, over the last minute."""
    load, cores = record.get("load_average"), record["cpu"].get("usable_cores") or 1
    if load and load[0] > cores:
        return (f"this machine is busy (load average {load[0]:.1f} on {cores} cores): latencies will be "
                "noisy; bench on an idle machine for numbers to publish")
    return None


def summary(record: dict) -> str:
    """One line for tables: CPU, cores, threads, the flags that matter."""
    cpu = record.get("cpu", {})
    flags = ", ".join(cpu.get("flags", [])) or "none of interest"
    gpus = "; ".join(g.get("name", "") for g in record.get("gpus", []))
    return (f"{cpu.get('model')} ({cpu.get('physical_cores') or '?'} cores / {cpu.get('logical_cores')} threads, "
            f"{record.get('threads')} used) · flags: {flags}" + (f" · GPU: {gpus}" if gpus else ""))
