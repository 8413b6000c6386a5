"""TensorRT bundles carry the ONNX and build settings; the device builds and caches its own engine."""

from __future__ import annotations

import json
import shutil

import pytest

from edgetl.backends import _cuda, get_backend
from edgetl.backends._trt_engine import build_engine
from edgetl.bundle.create import create_bundle
from edgetl.bundle.format import MANIFEST, extract_archive, inspect_archive
from edgetl.bundle.runner import open_bundle, verify
from edgetl.errors import BundleError


@pytest.fixture(scope="module")
def trt_bundle(bundle_run, tmp_path_factory):
    if not get_backend("tensorrt").available():
        pytest.skip("neither tensorrt nor tensorrt_rtx is installed")
    from edgetl.compiler import compile as compile_run

    dest = tmp_path_factory.mktemp("trt") / "tiny"
    shutil.copytree(bundle_run.path, dest)
    rows = compile_run(dest, ["tensorrt"], ["int8"], progress=False)
    assert rows[0]["status"] != "failed", rows
    return create_bundle(dest, "tensorrt")


def test_carries_the_qdq_onnx_not_the_engine(trt_bundle):
    manifest = inspect_archive(trt_bundle)
    assert set(manifest["files"]) == {"model/model.qdq.onnx", "golden/in.0.npy", "golden/out.0.npy"}
    assert manifest["model"]["path"] == "model/model.qdq.onnx"
    assert manifest["model"]["kind"] == "onnx-for-tensorrt"
    assert manifest["model"]["build"]["options"]["strongly_typed"] is True
    # the engine cannot run on the workstation: expected outputs come from the same QDQ model on ORT
    assert manifest["golden"]["tolerance"]["source"] == "proxy"
    assert "model.qdq.onnx on onnxruntime" in manifest["golden"]["expected_from"]


def test_without_a_gpu_says_so(trt_bundle):
    if _cuda.gpu_arch() is not None:
        pytest.skip("this machine has a GPU")
    with pytest.raises(BundleError, match="needs an NVIDIA GPU, and this machine has none"):
        verify(trt_bundle)


def test_refuses_a_bundle_for_another_gpu_arch(trt_bundle, tmp_path, monkeypatch):
    root = tmp_path / "b"
    extract_archive(trt_bundle, root)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["target"] = {"name": "jetson-orin-nano", "runtime": "tensorrt", "device": "gpu", "gpu_arch": "sm87"}
    (root / MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setattr(_cuda, "gpu_arch", lambda: "sm89")  # the GPU this "device" has
    with pytest.raises(BundleError, match=r"made for sm87 \(target jetson-orin-nano\) but this GPU is sm89.*--any-arch"):
        build_engine(open_bundle(root))


@pytest.mark.gpu
def test_builds_caches_and_verifies_on_a_gpu(trt_bundle):
    from edgetl.backends import tensorrt as trt_backend

    reason = trt_backend.cannot_target(trt_backend.trt_module(), _cuda.gpu_arch())
    if reason:  # e.g. tensorrt_rtx on a Hopper GPU (sm90)
        pytest.skip(reason)
    bundle = open_bundle(trt_bundle)
    engine = build_engine(bundle)
    assert engine.is_file() and _cuda.gpu_arch() in engine.name
    assert build_engine(bundle) == engine  # cached: keyed by GPU, compute capability, TensorRT version
    assert verify(trt_bundle)["ok"]
