"""TensorRT engines for bundles, built on the device and cached.

An engine only runs on the GPU model and TensorRT version that built it, so a TensorRT bundle
carries the ONNX (QDQ for int8) and the build settings, and the device builds its own engine once.
The engine is cached outside the bundle (bundles stay read-only and hash-checked) under
``<cache>/engines/<onnx sha256>/<gpu>-<sm>-<tensorrt version>.engine``: a new GPU, driver-side
TensorRT upgrade or bundle gets a fresh build, everything else reuses it.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import time
from pathlib import Path

from edgetl._cache import cache_root
from edgetl._io import atomic_path, write_json
from edgetl.bundle.format import slug
from edgetl.errors import BundleError


def gpu_name() -> str:
    """GPU 0's marketing name (e.g. 'NVIDIA GeForce RTX 4090', 'Orin'); 'gpu' when unknown."""
    from edgetl.backends import _cuda

    rt = _cuda.cudart()
    if rt is not None:
        # cudaDeviceProp starts with char name[256] in every CUDA version; the buffer is larger
        # than any version's struct, so the call never writes past it.
        prop = ctypes.create_string_buffer(8192)
        for symbol in ("cudaGetDeviceProperties_v2", "cudaGetDeviceProperties"):
            fn = getattr(rt.lib, symbol, None)
            if fn is not None and fn(prop, 0) == 0:
                return prop.raw[:256].split(b"\0", 1)[0].decode(errors="replace") or "gpu"
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    return "gpu"


def engine_key(gpu: str, arch: str, tensorrt: str) -> str:
    return slug(f"{gpu}-{arch}-{tensorrt}".lower().replace(" ", "-"))


def build_engine(bundle, *, force: bool = False, any_arch: bool = False) -> Path:
    """The cached engine of ``bundle`` for this GPU, built now when missing (or ``force``).

    Refuses a bundle made for another GPU architecture unless ``any_arch``: its workstation
    numbers and tolerances were chosen for that target.
    """
    from edgetl.backends import _cuda
    from edgetl.backends import tensorrt as trt_backend

    arch = _cuda.gpu_arch()
    if arch is None:
        raise BundleError(
            f"bundle {bundle.name} runs on TensorRT, which needs an NVIDIA GPU, and this machine has none "
            "(its files were checked): use it on a device with one"
        )
    trt = trt_backend.trt_module()
    flavour = f"{trt.__name__}-{trt.__version__}"
    model = bundle.manifest["model"]
    onnx_rel = model["path"]
    onnx_sha = bundle.manifest["files"][onnx_rel]["sha256"]
    folder = cache_root() / "engines" / onnx_sha[:24]
    path = folder / f"{engine_key(gpu_name(), arch, flavour)}.engine"
    if path.is_file() and not force:
        return path
    target = bundle.manifest.get("target") or {}
    wanted = target.get("gpu_arch")  # only a profile's explicit arch; a bare `tensorrt` target fits any GPU
    if wanted and wanted != arch and not any_arch:
        target = target.get("name", "?")
        raise BundleError(
            f"bundle {bundle.name} was made for {wanted} (target {target}) but this GPU is {arch}: make a bundle for a "
            f"target with gpu_arch = \"{arch}\", or build anyway with `edgetl build --any-arch`"
        )
    if trt_backend.cannot_target(trt, arch):
        raise BundleError(
            f"{trt.__name__} {trt.__version__} cannot build engines for this GPU ({arch}): install a TensorRT that "
            "supports it (JetPack's on a Jetson, `pip install tensorrt` elsewhere)"
        )
    options = (model.get("build") or {}).get("options") or {}
    max_batch = int(options.get("max_batch") or trt_backend.DEFAULT_MAX_BATCH)
    start = time.perf_counter()
    plan = trt_backend.build_engine(trt, bundle.file(onnx_rel), None, max_batch, options.get("shapes"))
    with atomic_path(path) as tmp:
        tmp.write_bytes(plan)
    write_json(path.with_suffix(".json"), {
        "bundle": bundle.name, "onnx": onnx_rel, "onnx_sha256": onnx_sha, "gpu": gpu_name(), "gpu_arch": arch,
        "tensorrt": flavour, "max_batch": max_batch, "shapes": options.get("shapes"), "build_s": round(time.perf_counter() - start, 3),
    })
    return path


def engine_info(path: Path) -> dict:
    meta = path.with_suffix(".json")
    return json.loads(meta.read_text()) if meta.is_file() else {}
