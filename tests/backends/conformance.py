"""Shared conformance tests that every backend must pass.

How to add a runtime's tests (one small file, ``tests/backends/test_<runtime>.py``)::

    from tests.backends.conformance import BackendConformance

    class TestOpenVino(BackendConformance):
        runtime = "openvino"             # the name in edgetl.backends.get_backend
        # optional: options passed to Backend.compile (merged over ``base_options``)
        compile_options = {"bias_correction": "fast"}

The class compiles a tiny trained model (timm ``test_efficientnet``, 3 classes, 32x32) once per
precision listed in the backend's ``precisions`` and checks the outputs against PyTorch within that
precision's tolerance (``TOLERANCES``). A backend whose artifacts need a GPU to run (TensorRT)
overrides ``test_outputs_match_pytorch`` with ``@pytest.mark.gpu`` and checks its
``Compiled.estimate_with`` ONNX on ONNX Runtime CPU instead (see ``test_tensorrt.py``).

The model and data are built here, with torch (test side only), so no model hub is needed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from edgetl.backends import Backend, Compiled, get_backend
from edgetl.errors import DataError, EdgetlError
from edgetl.tensors import Feeds, concat, take

SIZE = 32
CLASSES = 3

# Per precision, against PyTorch FP32: the largest |out - ref| relative to max |ref| ("max_rel"),
# the mean |out - ref| relative to mean |ref| ("mean_rel") and the least top-1 agreement. Int8 bounds
# the mean tightly and the max loosely: a few logits sit on a quantization step's edge. The int8 mean
# depends on the CPU's kernels: OpenVINO's int8 stayed under 0.15 on the AVX-512 VNNI Zen 4 this was
# first set on, and gave 0.18 on an AVX2-only EPYC (agreement 1.0 on both): the bound allows either.
TOLERANCES = {
    "fp32": {"max_rel": 1e-4, "mean_rel": 1e-4, "agreement": 1.0},
    "fp16": {"max_rel": 2e-2, "mean_rel": 1e-2, "agreement": 0.97},
    "int8": {"max_rel": 0.6, "mean_rel": 0.25, "agreement": 0.9},
}


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth noisy images whose class is the channel carrying a bright blob: easy but not trivial."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    x = rng.normal(0, 0.5, (n, 3, SIZE, SIZE)).astype(np.float32)
    for i, c in enumerate(labels):
        cy, cx = rng.uniform(0.25, 0.75, 2)
        x[i, c] += 2.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
    return x.astype(np.float32), labels.astype(np.int64)


def build_tiny_onnx(path: Path, steps: int = 40) -> tuple[Path, object]:
    """Train timm's ``test_efficientnet`` a few steps on synthetic data and export it to ONNX.

    A trained model has well-separated logits, so int8 agreement is meaningful (a random-init
    model's logits differ in the third decimal and any noise flips its argmax).
    Returns (onnx path, torch model in eval mode).
    """
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=CLASSES)
    x, y = synthetic_images(256, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        idx = slice((step * 16) % 256, (step * 16) % 256 + 16)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy exporter deprecation: it is fast and exact here
        torch.onnx.export(
            model, (torch.from_numpy(x[:2]),), str(path), input_names=["input"], output_names=["logits"],
            opset_version=18, dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )
    return path, model


def compare(out: Feeds, ref: Feeds) -> dict[str, float]:
    """The metrics ``TOLERANCES`` bounds, the worst over every output (each one a score per class)."""
    worst = {"max_rel": 0.0, "mean_rel": 0.0, "agreement": 1.0}
    for name, r in ref.items():
        err = np.abs(out[name] - r)
        worst["max_rel"] = max(worst["max_rel"], float(err.max() / np.abs(r).max()))
        worst["mean_rel"] = max(worst["mean_rel"], float(err.mean() / np.abs(r).mean()))
        worst["agreement"] = min(worst["agreement"], float((out[name].argmax(1) == r.argmax(1)).mean()))
    return worst


def run_onnx_cpu(path: Path, feeds: Feeds) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds)), strict=True))


_TINY: dict[str, tuple] = {}


def tiny_case(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """Built once per test session and shared by every backend's tests (training takes seconds)."""
    if "case" not in _TINY:
        import torch

        onnx_path, model = build_tiny_onnx(tmp_path_factory.mktemp("tiny") / "model.onnx")
        calib, _ = synthetic_images(64, seed=2)
        x, _ = synthetic_images(96, seed=3)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        _TINY["case"] = (onnx_path, {"input": calib}, {"input": x}, {"logits": ref})
    return _TINY["case"]


class BackendConformance:
    runtime: str = ""
    compile_options: dict = {}

    # -- parametrisation: one test per precision the backend declares -------------------------
    def pytest_generate_tests(self, metafunc):
        if "precision" in metafunc.fixturenames:
            metafunc.parametrize("precision", get_backend(self.runtime).precisions)

    # -- fixtures (class scope: the model and each precision compile once) --------------------
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> Backend:
        backend = get_backend(cls.runtime)
        if not backend.available():
            pytest.skip(f"{cls.runtime} is not installed (pip install 'edgetl[{backend.extra}]')")
        return backend

    @pytest.fixture(scope="class")
    @classmethod
    def tiny(cls, tmp_path_factory):
        """(onnx path, calibration feeds, test feeds, PyTorch reference outputs), all by tensor name."""
        return tiny_case(tmp_path_factory)

    @pytest.fixture(scope="class")
    @classmethod
    def build(cls, backend, tiny, tmp_path_factory):
        """precision -> Compiled, compiled on first use."""
        onnx_path, calib, _, _ = tiny
        cache: dict[str, Compiled] = {}

        def _build(precision: str) -> Compiled:
            if precision not in cache:
                out = tmp_path_factory.mktemp(f"{cls.runtime}-{precision}")
                options = {"threads": 2, **cls.compile_options}
                cache[precision] = backend.compile(
                    onnx_path, out, precision, calib if precision == "int8" else None, options
                )
            return cache[precision]

        return _build

    # -- the contract ---------------------------------------------------------------------------
    def test_declares_itself(self, backend):
        assert isinstance(backend, Backend)
        assert backend.name == self.runtime
        assert set(backend.precisions) <= set(TOLERANCES)
        assert backend.extra
        assert backend.version()

    def test_compile_writes_artifact(self, build, precision):
        compiled = build(precision)
        assert compiled.runtime == self.runtime and compiled.precision == precision
        assert compiled.path.is_file()
        assert compiled.path in compiled.files
        assert all(f.is_file() and f.stat().st_size > 0 for f in compiled.files)
        # every file lives in the output folder, so the compile stage can move it atomically
        assert len({f.parent for f in compiled.files} | {compiled.path.parent}) == 1
        assert compiled.options  # what was chosen, for the report

    def test_outputs_match_pytorch(self, backend, build, tiny, precision):
        """(A runtime that needs a GPU overrides this with ``@pytest.mark.gpu``.)"""
        _, _, x, ref = tiny
        with backend.load(build(precision).path, threads=2) as session:
            assert [s.name for s in session.inputs] == list(x) and [s.name for s in session.outputs] == list(ref)
            out = concat([session.run(take(x, slice(0, 1))), session.run(take(x, slice(1, None)))])
        self._check(out, ref, precision)

    def test_run_checks_the_feeds(self, backend, build, tiny):
        """A missing, unknown or mis-typed input is one DataError line naming it, not the runtime's error."""
        if not backend.can_run_here():
            pytest.skip(f"{self.runtime} artifacts cannot run here")
        _, _, x, _ = tiny
        one = take(x, slice(0, 2))
        name = next(iter(one))
        with backend.load(build("fp32").path, threads=1) as session:
            with pytest.raises(DataError, match=f"missing \\['{name}'\\]"):
                session.run({k: v for k, v in one.items() if k != name})
            with pytest.raises(DataError, match="unknown \\['extra'\\]"):
                session.run({**one, "extra": one[name]})
            with pytest.raises(DataError, match=f"{name}: dtype float16"):
                session.run({**one, name: one[name].astype(np.float16)})

    def test_rejects_unknown_precision(self, backend, tiny, tmp_path):
        with pytest.raises(EdgetlError, match="int3"):
            backend.compile(tiny[0], tmp_path, "int3", None, {})

    def test_int8_needs_calibration(self, backend, tiny, tmp_path):
        if "int8" not in backend.precisions:
            pytest.skip("no int8")
        with pytest.raises(EdgetlError, match="calibration"):
            backend.compile(tiny[0], tmp_path, "int8", None, {})

    def test_load_missing_artifact_is_user_error(self, backend, tmp_path):
        with pytest.raises(EdgetlError):
            backend.load(tmp_path / "nothing.here")

    @staticmethod
    def _check(out: Feeds, ref: Feeds, precision: str) -> None:
        assert set(out) == set(ref)
        assert all(out[k].dtype == np.float32 and out[k].shape == ref[k].shape for k in ref)
        got, tol = compare(out, ref), TOLERANCES[precision]
        for key in ("max_rel", "mean_rel"):
            assert got[key] <= tol[key], f"{precision}: {key} error {got[key]:.2e} > {tol[key]}"
        assert got["agreement"] >= tol["agreement"], f"{precision}: top-1 agreement {got['agreement']:.3f} < {tol['agreement']}"
