"""Accuracy against the FP32 reference, from logits."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.bench.accuracy import (
    collect_outputs,
    evaluate,
    label_accuracy,
    paired_drop_interval,
    unpaired_drop_interval,
    wilson,
)
from edgetl.errors import ArtifactError


def one_hot(pred, classes):
    out = np.zeros((len(pred), classes), np.float32)
    out[np.arange(len(pred)), pred] = 1
    return out


def test_top1_drop_fraction_and_agreement():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    ref = one_hot([0, 1, 2, 0, 1, 2, 0, 1, 2, 1], 3)  # 9/10 right
    art = one_hot([0, 1, 2, 0, 1, 2, 0, 2, 2, 0], 3)  # 9/10 right, but different mistakes
    r = evaluate(art, labels, ref, classes=["cat", "dog", "fox"])
    assert r["n"] == 10 and r["num_classes"] == 3
    assert r["top1"] == pytest.approx(0.9) and r["fp32_top1"] == pytest.approx(0.9)
    assert r["drop_pp"] == pytest.approx(0.0)
    assert r["fraction_of_fp32"] == pytest.approx(1.0)
    assert r["agreement"] == pytest.approx(0.8)  # top-1 unchanged, yet two predictions moved
    assert "top5" not in r
    changed = {c["class"]: c["delta_pp"] for c in r["per_class_changed"]}
    assert changed == {"dog": pytest.approx(-100 / 3), "cat": pytest.approx(25.0)}
    assert r["per_class_changed"][0]["class"] == "dog"  # largest loss first


def test_drop_in_points_and_fraction_of_fp32():
    labels = np.arange(4) % 2
    ref = one_hot(labels, 2)
    art = one_hot([0, 1, 1, 1], 2)
    r = evaluate(art, labels, ref)
    assert r["top1"] == 0.75 and r["drop_pp"] == pytest.approx(25.0)
    assert r["fraction_of_fp32"] == pytest.approx(0.75)
    assert r["per_class_changed"][0]["class"] == "0"  # no names: the index


def test_top5_only_with_more_than_five_classes():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 50)
    r = evaluate(logits, labels, logits)
    expected = np.mean([lab in np.argsort(-row)[:5] for row, lab in zip(logits, labels, strict=True)])
    assert r["top5"] == pytest.approx(expected) and r["fp32_top5"] == pytest.approx(expected)
    assert r["agreement"] == 1.0 and r["max_abs_diff"] == 0.0 and r["per_class_changed"] == []


def test_nonfinite_logits_are_counted_not_raised():
    ref = one_hot([0, 1], 2)
    art = ref.copy()
    art[1, 0] = np.inf
    r = evaluate(art, np.array([0, 1]), ref)
    assert r["nonfinite"] == 1


def test_class_count_mismatch_is_an_artifact_error():
    with pytest.raises(ArtifactError, match="4 classes but the reference model has 3"):
        evaluate(np.zeros((2, 4)), np.array([0, 1]), np.zeros((2, 3)))


def test_collect_outputs_dynamic_batches_match_one_big_run(ort_session, tiny_inputs):
    whole = ort_session.run({"input": tiny_inputs})["logits"]
    seen = []
    out = collect_outputs(ort_session, {"input": tiny_inputs}, batch=6, progress=lambda d, t: seen.append((d, t)))
    assert list(out) == ["logits"]
    out = out["logits"]
    np.testing.assert_allclose(out, whole, rtol=1e-5, atol=1e-5)
    assert seen[-1] == (20, 20)


def test_collect_outputs_pads_a_static_batch(tmp_path, tiny_inputs):
    from edgetl.backends import get_backend
    from tests.bench.conftest import build_tiny_onnx

    build_tiny_onnx(tmp_path / "static.onnx", static_batch=8)
    with get_backend("onnxruntime").load(tmp_path / "static.onnx", threads=1) as static:
        assert static.inputs[0].shape[0] == 8
        out = collect_outputs(static, {"input": tiny_inputs})["logits"]  # 20 images = 8 + 8 + 4 padded to 8
    with get_backend("onnxruntime").load(tmp_path / "static.onnx", threads=1) as s:
        expected = np.concatenate([s.run({"input": tiny_inputs[:8]})["logits"], s.run({"input": tiny_inputs[8:16]})["logits"]])
    assert out.shape == (20, 5)
    np.testing.assert_allclose(out[:16], expected, rtol=1e-5, atol=1e-5)


def test_wilson_interval_matches_scipy_and_stays_inside_0_1():
    from scipy.stats import binomtest

    for hits, n in [(81, 263), (54, 60), (0, 10), (10, 10), (1, 1)]:
        ci = binomtest(hits, n).proportion_ci(method="wilson")
        assert wilson(hits, n) == pytest.approx((ci.low, ci.high))
    assert wilson(0, 0) == (0.0, 1.0)


def test_unpaired_drop_interval_reproduces_newcombes_published_example():
    # Newcombe (1998), "Interval estimation for the difference between independent proportions",
    # method 10 on 56/70 - 48/80: 0.0524 to 0.3339
    lo, hi = unpaired_drop_interval(56 / 70, 70, 48 / 80, 80)
    assert (lo, hi) == (pytest.approx(5.24, abs=0.01), pytest.approx(33.39, abs=0.01))


def test_paired_drop_interval_is_driven_by_the_discordant_pairs():
    ok_ref = np.ones(200, bool)
    ok_ref[:10] = False                      # the reference gets 190 of 200 right
    same = ok_ref.copy()                      # an artifact with exactly the same mistakes
    lo, hi = paired_drop_interval(ok_ref, same)
    assert lo < 0 < hi and hi - lo < 6        # no discordant pair: centred on 0, still not a point
    worse = ok_ref.copy()
    worse[10:30] = False                      # 20 more mistakes, no new successes
    lo2, hi2 = paired_drop_interval(ok_ref, worse)
    assert 0 < lo2 < 10 < hi2                 # a real drop of 10 pp: the interval excludes 0
    unpaired = unpaired_drop_interval(0.95, 200, 0.85, 200)
    assert hi2 - lo2 < unpaired[1] - unpaired[0]  # pairing the same images narrows the interval


def test_paired_drop_interval_without_disagreement_is_not_narrower_than_one_image():
    # 72 images, the artifact right exactly where the reference is: before the continuity correction
    # of phi the interval was +-0.28 pp at 34/72 and +-2.95 pp at 57/72 (the Wilson asymmetry only)
    for right in (34, 57):
        ok_ref = np.arange(72) < right
        lo, hi = paired_drop_interval(ok_ref, ok_ref.copy())
        assert lo == pytest.approx(-hi) and hi > 100 / 72   # one disagreeing image would already be 1.39 pp
    assert paired_drop_interval(np.arange(72) < 34, np.arange(72) < 34)[1] == pytest.approx(2.667, abs=0.001)


def test_evaluate_reports_intervals_for_the_validation_size():
    labels = np.arange(60) % 3
    ref = one_hot(labels, 3)
    pred = labels.copy()
    pred[0] = 1                               # one image of 60 lost: 1.67 pp
    r = evaluate(one_hot(pred, 3), labels, ref)
    assert r["drop_pp"] == pytest.approx(100 / 60)
    lo, hi = r["drop_ci_pp"]
    assert lo < 0 < r["drop_pp"] < hi         # one image cannot prove a 1 pp budget failed
    assert r["top1_ci"] == pytest.approx(list(wilson(59, 60)))
    assert r["fp32_top1_ci"] == pytest.approx(list(wilson(60, 60)))


def test_label_accuracy_per_class_with_intervals():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    pred = np.array([0, 1, 1, 1, 2, 0, 2, 0])
    r = label_accuracy(one_hot(pred, 4), labels, ["a", "b", "c", "d"])
    assert r["n"] == 8 and r["top1"] == pytest.approx(6 / 8)
    assert [c["class"] for c in r["per_class"]] == ["a", "b", "c"]  # d has no image: no row
    assert r["per_class"][0]["top1"] == pytest.approx(2 / 3)
    assert r["per_class"][0]["top1_ci"] == pytest.approx(list(wilson(2, 3)))
