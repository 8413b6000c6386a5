"""The few CUDA runtime calls a TensorRT session needs, through ctypes.

TensorRT's Python API has no device memory allocation of its own. Rather than require torch,
cupy or cuda-python on the device (a Jetson has libcudart from JetPack but often none of those),
this loads ``libcudart`` directly, as Polygraphy does. Device side: numpy and ctypes only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import sys

import numpy as np

_H2D, _D2H = 1, 2  # cudaMemcpyKind
_CC_MAJOR, _CC_MINOR = 75, 76  # cudaDeviceAttr


def _candidates() -> list[str]:
    names = [ctypes.util.find_library("cudart") or ""]
    for root in sys.path:  # NVIDIA's pip wheels (nvidia-cuda-runtime*) keep it under site-packages
        names += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libcudart.so*")), reverse=True)
    for root in ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/aarch64-linux/lib", "/usr/lib/aarch64-linux-gnu"):
        names += sorted(glob.glob(os.path.join(root, "libcudart.so*")), reverse=True)
    return [n for n in names if n] + ["libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"]


@functools.lru_cache(maxsize=1)
def cudart() -> CudaRuntime | None:
    """The CUDA runtime, or None when no libcudart can be loaded here."""
    for name in _candidates():
        try:
            return CudaRuntime(ctypes.CDLL(name))
        except OSError:
            continue
    return None


def gpu_arch() -> str | None:
    """Compute capability of GPU 0 as ``sm89``, or None without a usable NVIDIA GPU."""
    rt = cudart()
    if rt is None or rt.device_count() == 0:
        return None
    return rt.arch(0)


class CudaError(RuntimeError):
    pass


class CudaRuntime:
    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        lib.cudaFree.argtypes = [ctypes.c_void_p]
        lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        lib.cudaStreamCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        lib.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]
        lib.cudaStreamDestroy.argtypes = [ctypes.c_void_p]
        lib.cudaGetErrorString.restype = ctypes.c_char_p

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise CudaError(f"{what} failed: {self.lib.cudaGetErrorString(status).decode()}")

    def device_count(self) -> int:
        n = ctypes.c_int(0)
        # No driver or no GPU is an error code here, which simply means "no GPU".
        return n.value if self.lib.cudaGetDeviceCount(ctypes.byref(n)) == 0 else 0

    def arch(self, device: int) -> str:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.cudaDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device), "cudaDeviceGetAttribute")
        self._check(self.lib.cudaDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device), "cudaDeviceGetAttribute")
        return f"sm{major.value}{minor.value}"

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), max(nbytes, 1)), "cudaMalloc")
        return ptr.value

    def free(self, ptr: int) -> None:
        self.lib.cudaFree(ptr)

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self._check(self.lib.cudaMemcpy(ptr, array.ctypes.data, array.nbytes, _H2D), "cudaMemcpy host->device")

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        self._check(self.lib.cudaMemcpy(array.ctypes.data, ptr, array.nbytes, _D2H), "cudaMemcpy device->host")

    def stream_create(self) -> int:
        stream = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        return stream.value or 0

    def stream_sync(self, stream: int) -> None:
        self._check(self.lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def stream_destroy(self, stream: int) -> None:
        self.lib.cudaStreamDestroy(stream)
