"""How well frozen features suit a labelled data set, before any training: LogME and a k-NN probe.

Numpy only. LogME (You et al., ICML 2021; the fixed-point form of "Ranking and Tuning Pre-trained
Models", 2021) is the log marginal evidence, per sample, of a Bayesian linear model from the
features to each class's one-hot column, with its prior (alpha) and noise (beta) precisions set by
maximising that evidence; the score is the mean over classes. Higher is better; it is comparable
between backbones on the same samples, not between data sets. The k-NN probe is a check a user can
read: leave-one-out top-1 of a cosine nearest-neighbour vote, with its Wilson interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgetl.bench.accuracy import wilson

_EPS = 1e-5  # keeps alpha and beta finite when a class is fitted exactly
_MAX_STEPS = 11  # the fixed point converges in a few steps; the reference stops at 11 too
_TOL = 1e-3  # relative change of alpha/beta that counts as converged


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features`` (N x D) for integer ``labels`` (N,): mean over classes of the maximum
    log evidence per sample."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    if n > d:  # as the reference: directions with no variance carry no evidence
        keep = s > 1e-10
        u, s = u[:, keep], s[keep]
    sigma = s**2
    return float(np.mean([_class_evidence((y == c).astype(np.float64), u, sigma, n, d)
                          for c in range(int(y.max()) + 1)]))


def _class_evidence(target: np.ndarray, u: np.ndarray, sigma: np.ndarray, n: int, d: int) -> float:
    """Fixed-point maximisation of the evidence of one target column over alpha and beta."""
    x2 = (u.T @ target) ** 2  # the target in the features' singular basis
    rest = float(target @ target - x2.sum())  # the part no feature direction can explain
    alpha, beta = 1.0, 1.0
    for _ in range(_MAX_STEPS):
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum()  # effective number of well-determined weights
        m2 = (sigma * x2 / (t + sigma) ** 2).sum()  # squared norm of the posterior mean
        res2 = (x2 / (1 + sigma / t) ** 2).sum() + rest  # squared residual
        alpha, beta = gamma / (m2 + _EPS), (n - gamma) / (res2 + _EPS)
        if abs(alpha / beta - t) / t <= _TOL:
            break
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.log(alpha + beta * sigma).sum()
                - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
    return float(evidence / n)


@dataclass(frozen=True)
class KnnProbe:
    """Leave-one-out top-1 of a k-nearest-neighbour vote and its 95% Wilson interval."""

    k: int
    top1: float
    ci: tuple[float, float]
    n: int


def knn_probe(features: np.ndarray, labels: np.ndarray, k: int = 5) -> KnnProbe:
    """Each sample is classified by its ``k`` most cosine-similar others (votes weighted by the
    similarity, so ties break towards the closer neighbours); no split, no seed, nothing trained."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    n = len(y)
    k = max(1, min(k, n - 1))
    unit = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)  # leave one out: a sample never votes for itself
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    votes = np.zeros((n, int(y.max()) + 1))
    rows = np.repeat(np.arange(n), k)
    np.add.at(votes, (rows, y[nearest].ravel()), 1.0 + sim[rows, nearest.ravel()])
    correct = int((votes.argmax(1) == y).sum())
    low, high = wilson(correct, n)
    top1 = correct / n
    return KnnProbe(k, top1, (min(low, top1), max(high, top1)), n)  # rounding must not leave 0 or 1 outside
