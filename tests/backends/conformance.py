"""Shared conformance tests that every backend must pass.

How to add a runtime's tests (one small file, ``tests/backends/test_<runtime>.py``)::

    from tests.backends.conformance import BackendConformance

    class TestOpenVino(BackendConformance):
        runtime = "openvino"             # the name in edgetl.backends.get_backend
        # optional: options passed to Backend.compile (over {"threads": 2})
        compile_options = {"bias_correction": "fast"}

The class compiles three tiny trained models once per precision listed in the backend's
``precisions``, loads and runs them through the same ``compile``/``load``/``run``, and checks every
output against PyTorch within that precision's tolerance (``tolerance``):

- ``image``: timm ``test_efficientnet``, 3 classes, float32 NCHW 32x32 (``input`` -> ``logits``);
- ``text``: two int64 inputs ``input_ids`` and ``attention_mask`` (batch, sequence): embedding,
  masked mean, linear;
- ``audio``: one float32 ``waveform`` (batch, samples): two conv1d, mean over time, linear.

Each variant the backend declares for this machine's CPU (``Backend.variants``, what ``edgetl optimize``
searches) compiles, loads and matches PyTorch the same way (``test_variant_matches_pytorch``).

The last two (``NAMED_MODELS``) are exported through ``edgetl.export.onnx.export_onnx``: they prove
that nothing between export and ``Session.run`` assumes one float32 image input. A backend whose
artifacts need a GPU to run (TensorRT) overrides the ``..._matches_pytorch`` tests with
``@pytest.mark.gpu`` and checks its ``Compiled.estimate_with`` ONNX on ONNX Runtime CPU instead
(see ``test_tensorrt.py``).

The model and data are built here, with torch (test side only), so no model hub is needed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from edgetl._cpu import target_cpu
from edgetl.backends import Backend, Compiled, SearchDevice, Session, Variant, get_backend
from edgetl.config import CalibrationRecipe
from edgetl.errors import DataError, EdgetlError
from edgetl.tasks.text_classification import QUANTIZATION as TEXT_QUANTIZATION
from edgetl.tensors import Feeds, TensorSpec, concat, take

SIZE = 32
CLASSES = 3

# Per precision, against PyTorch FP32: the largest |out - ref| relative to max |ref| ("max_rel"),
# the mean |out - ref| relative to mean |ref| ("mean_rel") and the least top-1 agreement.
TOLERANCES = {
    "fp32": {"max_rel": 1e-4, "mean_rel": 1e-4, "agreement": 1.0},
    "fp16": {"max_rel": 2e-2, "mean_rel": 1e-2, "agreement": 0.97},
    "int8": {"agreement": 0.97},  # its max_rel/mean_rel: INT8_BOUNDS
}
# int8 (max_rel, mean_rel) per model and runtime: what each reached on an AVX2 EPYC without VNNI
# (the worst x86 case: ONNX Runtime quantizes 7-bit weights there, OpenVINO's first layer too),
# times 1.3, rounded up; "*": the loosest of the three, for a runtime with no measurement of its own.
# TensorRT's are its ONNX twin's on ONNX Runtime CPU (``estimate_with``). Measured (max, mean):
#   image: onnxruntime 0.338/0.053  openvino 0.366/0.181  tensorrt 0.140/0.087
#   text:  onnxruntime 0.206/0.054  openvino 0.200/0.051  tensorrt 0.005/0.004
#   (text: the task's schemes; ONNX Runtime's per-channel dynamic int8 after fusion, every op:
#   per-tensor of MatMul alone reached 0.010/0.009; OpenVINO's weight-only int8 0.003/0.002, its
#   NNCF transformer type 0.200/0.051)
#   audio: onnxruntime 0.017/0.007  openvino 0.009/0.005  tensorrt 0.011/0.006
# Every agreement was 1.0. OpenVINO's image mean stayed under 0.15 on an AVX-512 VNNI Zen 4.
INT8_BOUNDS = {
    "image": {"onnxruntime": (0.44, 0.07), "openvino": (0.48, 0.24), "tensorrt": (0.19, 0.12), "*": (0.48, 0.24)},
    "text": {"onnxruntime": (0.27, 0.071), "openvino": (0.26, 0.067), "tensorrt": (0.006, 0.006), "*": (0.27, 0.071)},
    "audio": {"onnxruntime": (0.023, 0.01), "openvino": (0.012, 0.007), "tensorrt": (0.015, 0.009), "*": (0.023, 0.01)},
}


def tolerance(runtime: str, model: str, precision: str) -> dict[str, float]:
    if precision != "int8":
        return TOLERANCES[precision]
    bounds = INT8_BOUNDS[model]
    max_rel, mean_rel = bounds.get(runtime, bounds["*"])
    return {**TOLERANCES["int8"], "max_rel": max_rel, "mean_rel": mean_rel}


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


# -- models with named, non-image inputs: the core must not assume "one float32 NCHW image" ---------
SEQUENCE, VOCAB, SAMPLES = 12, 48, 256


def synthetic_text(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Token ids and a padding mask; the class is the vocabulary band (ids ``16c..16c+15``) that four
    of the real tokens come from. Padded positions hold random ids too: only the mask hides them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    ids = rng.integers(0, VOCAB, (n, SEQUENCE))
    lengths = rng.integers(6, SEQUENCE + 1, n)
    mask = (np.arange(SEQUENCE) < lengths[:, None]).astype(np.int64)
    band = VOCAB // CLASSES
    for i, c in enumerate(labels):
        ids[i, rng.choice(lengths[i], 4, replace=False)] = rng.integers(c * band, (c + 1) * band, 4)
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask}, labels.astype(np.int64)


def synthetic_audio(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Noisy sine tones; the class is the tone's frequency band."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    t = np.arange(SAMPLES) / SAMPLES
    freq = (4 + 10 * labels + rng.uniform(-1, 1, n))[:, None]
    wave = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi, (n, 1))) + rng.normal(0, 0.3, (n, SAMPLES))
    return {"waveform": wave.astype(np.float32)}, labels.astype(np.int64)


def _text_model():
    import torch

    class TinyText(torch.nn.Module):
        """Embedding, mean over the unmasked tokens, linear: an encoder's shape, in 1k weights."""

        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, 16)
            self.head = torch.nn.Linear(16, CLASSES)

        def forward(self, input_ids, attention_mask):
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.head(pooled)

    return TinyText()


def _audio_model():
    import torch

    class TinyAudio(torch.nn.Module):
        """Two strided 1-D convolutions over the waveform, mean over time, linear."""

        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv1d(1, 8, 9, stride=2, padding=4)
            self.conv2 = torch.nn.Conv1d(8, 16, 9, stride=2, padding=4)
            self.head = torch.nn.Linear(16, CLASSES)

        def forward(self, waveform):
            x = torch.relu(self.conv1(waveform.unsqueeze(1)))
            return self.head(torch.relu(self.conv2(x)).mean(-1))

    return TinyAudio()


# name -> (model factory, data, input specs, output specs)
NAMED_MODELS = {
    "text": (_text_model, synthetic_text,
             (TensorSpec("input_ids", "int64", ("batch", "sequence")),
              TensorSpec("attention_mask", "int64", ("batch", "sequence"))),
             (TensorSpec("logits", "float32", ("batch", CLASSES)),)),
    "audio": (_audio_model, synthetic_audio,
              (TensorSpec("waveform", "float32", ("batch", "samples")),),
              (TensorSpec("logits", "float32", ("batch", CLASSES)),)),
}


# The int8 schemes the text and audio tasks hand the backends (``Task.quantization``): what static
# QDQ of every op costs transformers and log-mel front ends (issue 12's measurements). "*": every
# runtime. Text: the schemes the task ships (its QUANTIZATION); audio keeps its first convolution
# (module ``conv1``, the front end here) float.
TASK_SCHEMES = {
    "text": {runtime: {k: v for k, v in hint.items() if k != "why"} for runtime, hint in TEXT_QUANTIZATION.items()},
    "audio": {"*": {"keep_float_prefixes": ["conv1"]}},
}


def task_scheme(model: str, runtime: str) -> dict:
    schemes = TASK_SCHEMES[model]
    return schemes.get(runtime, schemes.get("*", {}))


def float_convs(path: Path) -> list[str]:
    """Names of the Conv nodes of an ONNX artifact whose weight is not dequantized (kept float)."""
    import onnx

    model = onnx.load(str(path))
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] not in dequantized]


def build_named_onnx(name: str, path: Path, steps: int = 150):
    """Train the ``NAMED_MODELS`` model a few steps on its rule and export it with ``export_onnx``.
    Returns (onnx path, torch model in eval mode)."""
    import torch

    from edgetl.export.onnx import export_onnx

    factory, data, inputs, outputs = NAMED_MODELS[name]
    torch.manual_seed(0)
    model = factory()
    feeds, labels = data(256, seed=1)
    args = [torch.from_numpy(feeds[spec.name]) for spec in inputs]
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(*args), torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    export_onnx(model, take(feeds, slice(0, 2)), inputs, outputs, path)
    return path, model


def named_case(name: str, tmp_path_factory) -> tuple[Path, dict, dict, dict]:
    """Like ``tiny_case``, for a ``NAMED_MODELS`` model: (onnx, calibration feeds, test feeds, reference)."""
    if name not in _TINY:
        import torch

        _, data, inputs, _ = NAMED_MODELS[name]
        onnx_path, model = build_named_onnx(name, tmp_path_factory.mktemp(name) / "model.onnx")
        calib, _ = data(64, seed=2)
        x, _ = data(96, seed=3)
        with torch.no_grad():
            ref = model(*[torch.from_numpy(x[spec.name]) for spec in inputs]).numpy()
        _TINY[name] = (onnx_path, calib, x, {"logits": ref})
    return _TINY[name]


def host_device(backend: Backend, hint: dict | None = None) -> SearchDevice:
    """The device ``edgetl optimize`` lists a backend's variants for on this machine (its first
    device kind; this CPU, as a profile without ``cpu_arch``/``cpu_flags`` describes it)."""
    return SearchDevice(backend.devices[0], target_cpu({}), hint or {}, {})


class BackendConformance:
    runtime: str = ""
    compile_options: dict = {}

    # -- parametrisation: one test per precision, and per variant, the backend declares ---------
    def pytest_generate_tests(self, metafunc):
        backend = get_backend(self.runtime)
        if "precision" in metafunc.fixturenames:
            metafunc.parametrize("precision", backend.precisions)
        if "variant" in metafunc.fixturenames:
            found = backend.variants(host_device(backend))
            metafunc.parametrize("variant", found, ids=[v.label for v in found])

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

    @pytest.fixture(scope="class")
    @classmethod
    def build_variant(cls, backend, tiny, tmp_path_factory):
        """Variant -> Compiled, the way the search builds it: its options over the profile's, its
        recipe overrides over the default recipe."""
        onnx_path, calib, _, _ = tiny
        cache: dict[str, Compiled] = {}

        def _build(variant: Variant) -> Compiled:
            if variant.label not in cache:
                out = tmp_path_factory.mktemp(f"{cls.runtime}-variant")
                recipe = CalibrationRecipe(name="default").model_copy(update=dict(variant.recipe))
                options = {"threads": 2, **cls.compile_options, **variant.options, "recipe": recipe}
                int8 = variant.precision == "int8"
                cache[variant.label] = backend.compile(onnx_path, out, variant.precision, calib if int8 else None, options)
            return cache[variant.label]

        return _build

    @pytest.fixture(scope="class")
    @classmethod
    def build_scheme(cls, backend, tmp_path_factory):
        """model name -> int8 Compiled with the task's scheme (``TASK_SCHEMES``) in ``options["quantization"]``."""
        cache: dict[str, Compiled] = {}

        def _build(name: str) -> Compiled:
            if "int8" not in backend.precisions:
                pytest.skip("no int8")
            if name not in cache:
                onnx_path, calib, _, _ = named_case(name, tmp_path_factory)
                out = tmp_path_factory.mktemp(f"{cls.runtime}-{name}-scheme")
                options = {"threads": 2, **cls.compile_options, "quantization": task_scheme(name, cls.runtime)}
                cache[name] = backend.compile(onnx_path, out, "int8", calib, options)
            return cache[name]

        return _build

    @pytest.fixture(scope="class")
    @classmethod
    def build_named(cls, backend, tmp_path_factory):
        """(model name, precision) -> Compiled, for the ``NAMED_MODELS``, compiled on first use."""
        cache: dict[tuple[str, str], Compiled] = {}

        def _build(name: str, precision: str) -> Compiled:
            if (name, precision) not in cache:
                onnx_path, calib, _, _ = named_case(name, tmp_path_factory)
                out = tmp_path_factory.mktemp(f"{cls.runtime}-{name}-{precision}")
                options = {"threads": 2, **cls.compile_options}
                cache[name, precision] = backend.compile(
                    onnx_path, out, precision, calib if precision == "int8" else None, options
                )
            return cache[name, precision]

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
            assert isinstance(session, Session)
            assert [s.name for s in session.inputs] == list(x) and [s.name for s in session.outputs] == list(ref)
            out = concat([session.run(take(x, slice(0, 1))), session.run(take(x, slice(1, None)))])
        self._check(out, ref, precision)

    def test_variants_are_declared(self, backend):
        """At least one variant; labels unique; precisions the backend has; JSON options (fingerprinted)
        and recipe overrides that are ``CalibrationRecipe`` fields."""
        import json

        found = backend.variants(host_device(backend))
        assert found and all(isinstance(v, Variant) for v in found)
        assert len({v.label for v in found}) == len(found)
        assert {v.precision for v in found} <= set(backend.precisions)
        assert all(json.loads(json.dumps(dict(v.options))) == dict(v.options) for v in found)
        assert all(set(v.recipe) <= set(CalibrationRecipe.model_fields) for v in found)

    def test_variant_matches_pytorch(self, backend, build_variant, tiny, variant):
        """Every variant the search would build here runs and stays within its precision's tolerance.
        (A runtime that needs a GPU overrides this with ``@pytest.mark.gpu``.)"""
        _, _, x, ref = tiny
        with backend.load(build_variant(variant).path, threads=2) as session:
            out = concat([session.run(take(x, slice(0, 1))), session.run(take(x, slice(1, None)))])
        self._check(out, ref, variant.precision)

    @pytest.mark.parametrize("named", list(NAMED_MODELS))
    def test_named_model_compiles(self, build_named, named, precision):
        compiled = build_named(named, precision)
        assert compiled.path.is_file() and compiled.path in compiled.files

    @pytest.mark.parametrize("named", list(NAMED_MODELS))
    def test_named_model_matches_pytorch(self, backend, build_named, tmp_path_factory, named, precision):
        """Int64 ids + mask, or a 1-D waveform, through the same compile/load/run as the image model.
        (A runtime that needs a GPU overrides this with ``@pytest.mark.gpu``.)"""
        _, _, x, ref = named_case(named, tmp_path_factory)
        with backend.load(build_named(named, precision).path, threads=2) as session:
            assert [(s.name, s.dtype) for s in session.inputs] == [(s.name, s.dtype) for s in NAMED_MODELS[named][2]]
            out = concat([session.run(take(x, slice(0, 1))), session.run(take(x, slice(1, None)))])
        self._check(out, ref, precision, named)

    @pytest.mark.parametrize("named", list(NAMED_MODELS))
    def test_task_scheme_matches_pytorch(self, backend, build_scheme, tmp_path_factory, named):
        """int8 with the text or audio task's scheme, within the int8 bounds.
        (A runtime that needs a GPU overrides this with ``@pytest.mark.gpu``.)"""
        _, _, x, ref = named_case(named, tmp_path_factory)
        with backend.load(build_scheme(named).path, threads=2) as session:
            out = concat([session.run(take(x, slice(0, 1))), session.run(take(x, slice(1, None)))])
        self._check(out, ref, "int8", named)

    def test_run_checks_the_feeds(self, backend, build, tiny):
        """A missing, unknown or mis-typed input is one DataError line naming it, not the runtime's error.
        (A runtime that needs a GPU overrides this with ``@pytest.mark.gpu``.)"""
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

    def test_calibration_must_match_the_inputs(self, backend, tiny, tmp_path_factory, tmp_path):
        """Calibration feeds are checked against the model's inputs: one DataError line, nothing built."""
        if "int8" not in backend.precisions:
            pytest.skip("no int8")
        with pytest.raises(DataError, match=r"calibration samples: inputs \['pixels'\] do not match the model's \['input'\]"):
            backend.compile(tiny[0], tmp_path, "int8", {"pixels": tiny[1]["input"]}, {})
        text, calib, _, _ = named_case("text", tmp_path_factory)
        floats = {**calib, "input_ids": calib["input_ids"].astype(np.float32)}
        with pytest.raises(DataError, match="calibration samples: input_ids: dtype float32, expected int64"):
            backend.compile(text, tmp_path, "int8", floats, {})
        assert not [p for p in tmp_path.rglob("*") if p.is_file()]

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

    def _check(self, out: Feeds, ref: Feeds, precision: str, model: str = "image") -> None:
        assert set(out) == set(ref)
        assert all(out[k].dtype == np.float32 and out[k].shape == ref[k].shape for k in ref)
        got, tol = compare(out, ref), tolerance(self.runtime, model, precision)
        for key in ("max_rel", "mean_rel"):
            assert got[key] <= tol[key], f"{precision}: {key} error {got[key]:.2e} > {tol[key]}"
        assert got["agreement"] >= tol["agreement"], f"{precision}: top-1 agreement {got['agreement']:.3f} < {tol['agreement']}"
