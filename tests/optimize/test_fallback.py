"""Accuracy-aware fallback (edgetl/optimize/fallback.py) on real builds: the layer ranking, the
recovery that keeps the fewest of them float, and ``recipe.keep_float_nodes`` on every runtime.

Three tiny models fail an int8 budget on purpose: a hand-made CNN with one large weight planted in two
of its layers (a per-tensor int8 scale set by that weight rounds the layer's other weights away), a
residual Add whose inputs' int8 ranges are set by a channel that cancels in the sum (only an
activation op is at fault), and the session's tiny trained run quantized with minmax on 10 samples
and per-tensor weights.
Every number asserted is measured on the artifacts the backends build, never a time.
"""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetl.backends import get_backend
from edgetl.config import CalibrationRecipe
from edgetl.optimize.fallback import LayerScore, rank_layers, recover

# U8S8 with 7-bit weights (what the onnxruntime backend builds for AVX2 without VNNI), whatever CPU
# runs the tests: the measured drops are the same everywhere.
CPU = {"cpu_arch": "x86_64", "cpu_flags": ["avx2"]}
BUDGET_PP = 0.5
BAD = CalibrationRecipe(name="bad", method="minmax", samples=10, per_channel=False)


# -- recover: the search over counts, on drops given per count ----------------------------------
def _ranked(n: int) -> list[LayerScore]:
    return [LayerScore(f"layer{i}", "Conv", 1.0 / (i + 1)) for i in range(n)]


def _drops(table: dict[int, float], calls: list[tuple[str, ...]]):
    def measure(kept: tuple[str, ...]) -> float:
        calls.append(kept)
        return table[len(kept)]
    return measure


def test_recover_doubles_then_bisects_to_the_fewest_layers():
    calls: list[tuple[str, ...]] = []
    table = {1: 3.0, 2: 2.0, 4: 1.5, 5: 0.9, 6: 0.4, 7: 0.3, 8: 0.2}
    found = recover(_ranked(10), _drops(table, calls), BUDGET_PP, max_layers=10, should_stop=lambda: False)
    assert found.met and found.kept == tuple(f"layer{i}" for i in range(6)) and found.drop_pp == 0.4
    assert found.tried == [(1, 3.0), (2, 2.0), (4, 1.5), (8, 0.2), (6, 0.4), (5, 0.9)]
    assert calls[0] == ("layer0",)  # always the most sensitive first


def test_recover_stops_at_max_layers_and_keeps_the_best_it_measured():
    table = {1: 3.0, 2: 2.0, 3: 1.0}
    found = recover(_ranked(10), _drops(table, []), BUDGET_PP, max_layers=3, should_stop=lambda: False)
    assert not found.met and found.tried == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert found.kept == ("layer0", "layer1", "layer2") and found.drop_pp == 1.0


def test_recover_stops_when_the_time_budget_is_spent():
    asked = iter([False, True])
    found = recover(_ranked(10), _drops({1: 3.0}, []), BUDGET_PP, max_layers=10, should_stop=lambda: next(asked))
    assert not found.met and found.tried == [(1, 3.0)] and found.kept == ("layer0",)
    nothing = recover(_ranked(10), _drops({}, []), BUDGET_PP, max_layers=10, should_stop=lambda: True)
    assert nothing.tried == [] and nothing.kept == () and nothing.drop_pp is None and not nothing.met


# -- a model with two planted sensitive layers ------------------------------------------------------
PLANTED = ("conv2", "conv5")


def _planted_model(path, depth: int = 6, width: int = 8, outlier: float = 28.0):
    """Conv+Relu x ``depth``, global pool, a head with a class per channel. In each planted layer one
    large weight reads a channel that is always zero: no effect in float, but it sets the per-tensor
    int8 scale of that layer's weights."""
    rng = np.random.default_rng(0)
    inits, nodes, x, cin = [], [], "input", 3
    for i in range(1, depth + 1):
        name = f"conv{i}"
        w = rng.normal(0, np.sqrt(2 / (cin * 9)), (width, cin, 3, 3)).astype(np.float32)
        if f"conv{i + 1}" in PLANTED:
            w[0] = 0  # output channel 0 is always zero ...
        if name in PLANTED:
            w[0, 0, 1, 1] = outlier  # ... and the large weight reads it
        inits.append(numpy_helper.from_array(w, f"{name}.weight"))
        nodes += [helper.make_node("Conv", [x, f"{name}.weight"], [f"{name}.out"], name=name, pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"{name}.out"], [f"relu{i}.out"], name=f"relu{i}")]
        x, cin = f"relu{i}.out", width
    head = np.eye(width, dtype=np.float32)[1:]  # a class per channel: a channel's error flips close calls
    inits += [numpy_helper.from_array(head, "head.weight"), numpy_helper.from_array(np.zeros(width - 1, np.float32), "head.bias")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "head.weight", "head.bias"], ["logits"], name="head", transB=1)]
    graph = helper.make_graph(
        nodes, "planted", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", width - 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _outputs(backend, path, feeds):
    with backend.load(path, threads=1) as session:
        return session.run(feeds)


class _Case:
    """A float model, its calibration and validation feeds, fp32 outputs, and real int8 builds (one
    per set of kept nodes: the tests that measure the same set share its build)."""

    def __init__(self, onnx_path, calibration, val, reference, recipe, tmp):
        self.onnx_path, self.calibration, self.val, self.reference = onnx_path, calibration, val, reference
        self.recipe, self.tmp, self.ort = recipe, tmp, get_backend("onnxruntime")
        self.builds: dict[tuple[str, ...], dict] = {}

    def build(self, kept: tuple[str, ...]):
        if kept not in self.builds:
            out = self.tmp / f"build{len(self.builds)}"
            out.mkdir()
            recipe = self.recipe.model_copy(update={"keep_float_nodes": list(kept)})
            compiled = self.ort.compile(self.onnx_path, out, "int8", self.calibration, {"recipe": recipe, **CPU})
            self.builds[kept] = _outputs(self.ort, compiled.path, self.val)
        return self.builds[kept]

    def drop_pp(self, kept: tuple[str, ...]) -> float:
        """Top-1 disagreement with fp32, in percentage points."""
        out, ref = self.build(kept)["logits"], self.reference["logits"]
        return 100.0 * float(np.mean(out.argmax(1) != ref.argmax(1)))

    def error(self, kept: tuple[str, ...]) -> float:
        out = self.build(kept)
        return sum(float(np.mean((out[k] - v) ** 2)) for k, v in self.reference.items())

    def rank(self):
        return rank_layers(self.onnx_path, self.calibration, self.recipe, self.val, self.reference,
                           self.tmp / "rank", options=CPU, threads=1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    path = _planted_model(tmp / "model.onnx")
    rng = np.random.default_rng(1)
    calibration = {"input": rng.normal(0, 1, (32, 3, 16, 16)).astype(np.float32)}
    val = {"input": rng.normal(0, 1, (200, 3, 16, 16)).astype(np.float32)}
    reference = _outputs(get_backend("onnxruntime"), path, val)
    return _Case(path, calibration, val, reference, BAD.model_copy(update={"samples": 32}), tmp)


def test_ranking_finds_the_planted_layers_and_keeping_them_float_meets_the_budget(planted):
    ranked = planted.rank()
    assert sorted(s.node for s in ranked) == ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "flatten", "head", "pool"]
    assert {s.node for s in ranked[:2]} == set(PLANTED)
    assert ranked[0].score > 0.5 > ranked[2].score  # most of the output error is the first layer's
    base, top = planted.drop_pp(()), planted.drop_pp((ranked[0].node,))
    lowest = planted.drop_pp(tuple(s.node for s in ranked[-2:]))
    assert top <= BUDGET_PP < base  # measured: 0.0 against 2.5 pp
    assert lowest > BUDGET_PP  # the two lowest-ranked kept float recover nothing (measured 5.5 pp)

    found = recover(ranked, planted.drop_pp, BUDGET_PP, max_layers=4, should_stop=lambda: False)
    assert found.met and found.kept == (ranked[0].node,) and found.tried == [(1, top)]


def test_ranking_stops_when_the_time_budget_is_spent_and_gives_no_partial_order(planted):
    asked = []

    def stop_after_three() -> bool:
        asked.append(1)
        return len(asked) > 3

    assert rank_layers(planted.onnx_path, planted.calibration, planted.recipe, planted.val, planted.reference,
                       planted.tmp / "cut", options=CPU, threads=1, should_stop=stop_after_three) is None
    assert len(asked) == 4  # asked before each node: three measured, then stopped


def test_keeping_every_layer_float_gives_the_float_outputs_back(planted):
    """ONNX Runtime's quantizer drops the Relu after a quantized Conv (the uint8 range clips instead);
    a layer read in float gets it back, or negative values would flow through."""
    every = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "head")
    assert planted.error(every) < 0.01 * planted.error(())


# -- a residual Add whose inputs' int8 range is set by a channel that cancels ----------------------
def _residual_model(path, offset: float = 1000.0):
    """Two 1x1 convolutions of the input added (a residual block's Add), Relu, pool, a class per
    channel. Channel 0 of one branch is +``offset`` and of the other -``offset``: their sum is small,
    but each branch's int8 scale spans the offset and rounds the other channels away before the Add.
    Only the Add's inputs are at fault: no layer with weights is."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    for name, sign in (("branch", 1.0), ("skip", -1.0)):
        bias = np.zeros(4, np.float32)
        bias[0] = sign * offset
        inits += [numpy_helper.from_array(rng.normal(0, 1, (4, 3, 1, 1)).astype(np.float32), f"{name}.weight"),
                  numpy_helper.from_array(bias, f"{name}.bias")]
        nodes.append(helper.make_node("Conv", ["input", f"{name}.weight", f"{name}.bias"], [name], name=name))
    inits += [numpy_helper.from_array(np.eye(4, dtype=np.float32)[1:], "head.weight"),
              numpy_helper.from_array(np.zeros(3, np.float32), "head.bias")]
    nodes += [helper.make_node("Add", ["branch", "skip"], ["sum"], name="add"),
              helper.make_node("Relu", ["sum"], ["relu"], name="relu"),
              helper.make_node("GlobalAveragePool", ["relu"], ["pooled"], name="pool"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "head.weight", "head.bias"], ["logits"], name="head", transB=1)]
    graph = helper.make_graph(
        nodes, "residual", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_residual_add_is_ranked_and_kept_float_with_the_tensors_around_it(tmp_path):
    """The Add itself ranks first, and a build that keeps it alone float gets the float outputs back:
    its inputs are read before quantization, and its output (after the Relu ONNX Runtime folds into
    the Add's range, put back) reaches the pool unquantized."""
    path = _residual_model(tmp_path / "model.onnx")
    rng = np.random.default_rng(1)
    val = {"input": rng.normal(0, 1, (64, 3, 8, 8)).astype(np.float32)}
    case = _Case(path, {"input": rng.normal(0, 1, (32, 3, 8, 8)).astype(np.float32)}, val,
                 _outputs(get_backend("onnxruntime"), path, val), BAD.model_copy(update={"samples": 32}), tmp_path)
    ranked = case.rank()
    assert (ranked[0].node, ranked[0].op_type) == ("add", "Add") and ranked[0].score > 0.99  # measured: 1.0
    assert {s.node for s in ranked} == {"branch", "skip", "add", "pool", "flatten", "head"}
    assert case.error(("add",)) < 1e-3 * case.error(())  # measured: 8e-5 of it
    assert case.drop_pp(("add",)) <= BUDGET_PP < case.drop_pp(())  # measured: 0.0 against 25 pp


# -- the tiny trained run -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_run, tmp_path_factory):
    from edgetl.data.arrays import DataView

    view = DataView(tiny_run)
    calibration = view.task.calibration(view, BAD)
    return _Case(tiny_run.path / "export" / "model.onnx", calibration, view.val_feeds(), view.reference(),
                 BAD, tmp_path_factory.mktemp("tiny-fallback"))


def test_top_ranked_layer_of_the_tiny_run_recovers_more_than_the_lowest_or_random_ones(tiny):
    ranked = tiny.rank()
    names = [s.node for s in ranked]
    base, top, lowest = tiny.error(()), tiny.error(tuple(names[:1])), tiny.error(tuple(names[-1:]))
    rng = random.Random(0)
    chance = np.mean([tiny.error((rng.choice(names),)) for _ in range(3)])
    assert top < 0.5 * base  # measured: the head alone holds two thirds of the output error
    assert top < lowest and top < chance


# -- keep_float_nodes on every runtime --------------------------------------------------------------
def _kept_nodes(onnx_path) -> list[str]:
    """A 1x1 convolution in the middle of the tiny model, the Mul of a squeeze-excitation gate (no
    weights: two activations in, one out) and the classifier."""
    model = onnx.load(str(onnx_path))
    producer = {o: n for n in model.graph.node for o in n.output}
    conv = next(n.name for n in model.graph.node if n.op_type == "Conv" and "conv_pwl" in n.input[1])
    gate = next(n.name for n in model.graph.node if n.op_type == "Mul" and n.input[1] in producer
                and producer[n.input[1]].op_type == "Sigmoid" and producer[n.input[1]].input[0] != n.input[0])
    head = next(n.name for n in model.graph.node if n.op_type == "Gemm")
    return [conv, gate, head]


def _onnx_edges(path, names):
    """{node: (op types producing its inputs, op types reading its outputs)} of an ONNX artifact
    ("initializer" for constants)."""
    model = onnx.load(str(path))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    weights = {t.name for t in model.graph.initializer}
    return {n.name: ([producer.get(i, "initializer" if i in weights else "input") for i in n.input],
                     [r.op_type for r in model.graph.node for o in n.output if o in r.input])
            for n in model.graph.node if n.name in names}


def _openvino_edges(path, names):
    """{op: (type of each input's producer, types of its outputs' readers, its weights' producer and
    element type or None)} of an OpenVINO IR; ONNX's Conv and Gemm with a bias are
    "<name>/WithoutBiases" + an Add "<name>" there (where OpenVINO kept the Add), whose readers count."""
    ov = pytest.importorskip("openvino")
    ops = {op.get_friendly_name(): op for op in ov.Core().read_model(str(path)).get_ordered_ops()}
    found = {}
    for name in names:
        op = ops.get(f"{name}/WithoutBiases") or ops[name]
        inputs = [i.get_source_output().get_node().get_type_name() for i in op.inputs()]
        readers = [t.get_node().get_type_name() for o in (ops.get(name) or op).outputs() for t in o.get_target_inputs()]
        weights = None
        if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul"):
            weights = (inputs[1], op.input(1).get_element_type().get_type_name())
        found[name] = (inputs, readers, weights)
    return found


def _quantized(edges: tuple) -> bool:
    """A Q/DQ pair or a FakeQuantize on an input or an output, or weights that are not a plain f32
    constant (OpenVINO)."""
    inputs, readers, *weights = edges
    return (bool({"DequantizeLinear", "FakeQuantize"} & set(inputs)) or bool({"QuantizeLinear", "FakeQuantize"} & set(readers))
            or weights not in ([], [None], [("Constant", "f32")]))


@pytest.mark.parametrize(("runtime", "options"), [("onnxruntime", {}), ("tensorrt", {}), ("openvino", {}),
                                                  ("openvino", {"source": "qdq"})], ids=["onnxruntime", "tensorrt",
                                                                                         "openvino", "openvino-qdq"])
def test_keep_float_nodes_leave_the_nodes_and_their_edges_float_in_the_artifact(tiny, runtime, options, tmp_path):
    """A convolution, an activation-only Mul and the classifier, kept float: no Q/DQ (ONNX Runtime,
    TensorRT's QDQ ONNX) or FakeQuantize (OpenVINO, nncf's and the converted QDQ model) on their inputs
    or outputs, and no int8 weights."""
    backend = get_backend(runtime)
    if not backend.available():
        pytest.skip(f"{runtime} is not installed")
    names = _kept_nodes(tiny.onnx_path)

    def edges(recipe, folder):
        folder.mkdir()
        compiled = backend.compile(tiny.onnx_path, folder, "int8", tiny.calibration, {"recipe": recipe, **CPU, **options})
        if runtime == "openvino":
            return _openvino_edges(compiled.path, names)
        return _onnx_edges(compiled.estimate_with or compiled.path, names)  # TensorRT: its QDQ ONNX

    quantized = edges(BAD, tmp_path / "all")
    assert all(_quantized(quantized[n]) for n in names), quantized  # the check can fail
    kept = edges(BAD.model_copy(update={"keep_float_nodes": names}), tmp_path / "kept")
    assert not any(_quantized(kept[n]) for n in names), kept


def test_two_kept_layers_reading_one_folded_relu_share_its_float_copy(tmp_path):
    """Conv -> Relu -> two Convs, both kept float: the Relu ONNX Runtime folded into the first Conv's
    quantization is put back once, and the artifact loads and matches the float model closely."""
    rng = np.random.default_rng(0)
    weights = {name: rng.normal(0, 0.3, (4, c, 3, 3)).astype(np.float32) for name, c in (("w0", 3), ("wa", 4), ("wb", 4))}
    nodes = [helper.make_node("Conv", ["input", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "wa"], ["a"], name="conva", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["r0", "wb"], ["b"], name="convb", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["a", "b"], ["out"], name="add")]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4, 8, 8])],
                              [numpy_helper.from_array(w, n) for n, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "model.onnx"))
    feeds = {"input": rng.normal(0, 1, (16, 3, 8, 8)).astype(np.float32)}
    ort = get_backend("onnxruntime")
    recipe = CalibrationRecipe(name="keep", keep_float_nodes=["conva", "convb"])
    compiled = ort.compile(tmp_path / "model.onnx", tmp_path, "int8", feeds, {"recipe": recipe, **CPU})
    built = onnx.load(str(compiled.path))
    assert [n.name for n in built.graph.node if n.op_type == "Relu"] == ["relu0/float"]
    out, ref = _outputs(ort, compiled.path, feeds)["out"], _outputs(ort, tmp_path / "model.onnx", feeds)["out"]
    assert np.mean((out - ref) ** 2) < 1e-3 * np.mean(ref ** 2)  # only conv0 is int8
