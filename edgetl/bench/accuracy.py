"""Accuracy of an artifact against the FP32 reference, from logits (numpy only, device side).

The drop is reported two ways: in percentage points (what budgets use) and as the fraction of the
FP32 accuracy that is kept (MLPerf's closed division asks for >= 99%). Agreement counts how often
the artifact's top-1 prediction equals the FP32 model's, whatever the label: it catches
quantization damage even where the validation split is too small to move top-1.

Every proportion carries a 95% interval for the number of images it was measured on: Wilson's
score interval for top-1 (it stays inside [0, 1] and keeps its coverage for small n and for
accuracies near 100%, where the normal approximation collapses to a zero width), and Newcombe's
hybrid score interval for the drop (method 10 of Newcombe 1998, built from the two Wilson
intervals): paired, with the phi correlation of the two models' per-image correctness, when both
were evaluated on the same images; unpaired (phi = 0) when they were not, e.g. a device's top-1 on
its own folder against the workstation's FP32 top-1. The paired interval is driven by the
discordant pairs (images only one of the two models gets right), as it should be.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from edgetl.bench.latency import static_batch
from edgetl.errors import ArtifactError
from edgetl.tensors import Feeds, batch_size, concat, take

Z95 = 1.959963984540054  # two-sided 95%


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion; ``(0, 1)`` when nothing was measured."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(p1: float, ci1: tuple[float, float], p2: float, ci2: tuple[float, float],
                        phi: float = 0.0) -> tuple[float, float]:
    """Newcombe's hybrid score interval of ``p1 - p2`` from the two Wilson intervals; ``phi`` is the
    correlation of paired outcomes (0 for independent samples)."""
    (l1, u1), (l2, u2) = ci1, ci2
    d = p1 - p2
    below = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    above = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return max(-1.0, d - below), min(1.0, d + above)


def paired_drop_interval(ok_ref: np.ndarray, ok: np.ndarray) -> tuple[float, float]:
    """95% interval of top-1(reference) - top-1(artifact), in percentage points, on the same images."""
    n = int(ok.size)
    both, ref_only = int((ok_ref & ok).sum()), int((ok_ref & ~ok).sum())
    art_only, neither = int((~ok_ref & ok).sum()), int((~ok_ref & ~ok).sum())
    denominator = (both + ref_only) * (art_only + neither) * (both + art_only) * (ref_only + neither)
    phi = _corrected_association(both * neither - ref_only * art_only, n) / math.sqrt(denominator) if denominator else 0.0
    p1, p2 = (both + ref_only) / n, (both + art_only) / n
    lo, hi = difference_interval(p1, wilson(both + ref_only, n), p2, wilson(both + art_only, n), phi)
    return lo * 100.0, hi * 100.0


def _corrected_association(cross: int, n: int) -> float:
    """Newcombe's (1998, paired, method 10) continuity correction of the 2x2 table's ``AD - BC``: a
    positive association shrinks by n/2, else an artifact that agrees with the reference on every
    image gets phi = 1 and an interval only as wide as the asymmetry of the two Wilson intervals
    (+-0.3 pp on 72 images at 47% top-1), as if no image could ever disagree."""
    if cross > n / 2:
        return cross - n / 2
    return min(cross, 0)


def unpaired_drop_interval(ref_top1: float, ref_n: int, top1: float, n: int) -> tuple[float, float]:
    """95% interval of ``ref_top1 - top1`` in percentage points, measured on different images."""
    ref_ci, ci = wilson(round(ref_top1 * ref_n), ref_n), wilson(round(top1 * n), n)
    lo, hi = difference_interval(ref_top1, ref_ci, top1, ci)
    return lo * 100.0, hi * 100.0


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N,): the label is among the ``k`` highest logits."""
    if k == 1:
        return logits.argmax(axis=1) == labels
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


def evaluate(
    logits: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    classes: Sequence[str] | None = None,
) -> dict:
    """Top-1 (top-5 when there are more than 5 classes), drop and agreement vs ``reference``."""
    logits, reference = np.asarray(logits), np.asarray(reference)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ArtifactError(f"the artifact returned logits of shape {logits.shape} for {labels.shape[0]} images")
    if reference.shape != logits.shape:
        raise ArtifactError(
            f"the artifact returns {logits.shape[1]} classes but the reference model has {reference.shape[1]}: "
            "was it compiled from another run? Recompile it with `edgetl compile`"
        )
    n, num_classes = logits.shape
    ok = topk_correct(logits, labels, 1)
    ok_ref = topk_correct(reference, labels, 1)
    top1, fp32_top1 = float(ok.mean()), float(ok_ref.mean())
    finite = np.isfinite(logits)
    result = {
        "n": int(n),
        "num_classes": int(num_classes),
        "top1": top1,
        "top1_ci": list(wilson(int(ok.sum()), n)),
        "fp32_top1": fp32_top1,
        "fp32_top1_ci": list(wilson(int(ok_ref.sum()), n)),
        "drop_pp": (fp32_top1 - top1) * 100.0,
        "drop_ci_pp": list(paired_drop_interval(ok_ref, ok)) if n else [-100.0, 100.0],
        "interval": "95%: Wilson (top-1), Newcombe hybrid score, paired (drop)",
        "fraction_of_fp32": top1 / fp32_top1 if fp32_top1 > 0 else None,
        "agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(np.where(finite, logits, 0) - reference).max()) if n else 0.0,
        "nonfinite": int((~finite).sum()),  # fp16 overflow shows up here, not as an exception
    }
    if num_classes > 5:
        ok5 = topk_correct(logits, labels, 5)
        result["top5"] = float(ok5.mean())
        result["top5_ci"] = list(wilson(int(ok5.sum()), n))
        result["fp32_top5"] = float(topk_correct(reference, labels, 5).mean())
    result["per_class_changed"] = per_class_changed(ok, ok_ref, labels, num_classes, classes)
    return result


def per_class_changed(ok: np.ndarray, ok_ref: np.ndarray, labels: np.ndarray, num_classes: int,
                      classes: Sequence[str] | None) -> list[dict]:
    """Per-class top-1 for the classes whose accuracy moved, largest loss first."""
    rows = []
    for c in range(num_classes):
        mask = labels == c
        n = int(mask.sum())
        if n == 0:
            continue
        acc, ref = float(ok[mask].mean()), float(ok_ref[mask].mean())
        if acc != ref:
            name = classes[c] if classes is not None and c < len(classes) else str(c)
            rows.append({"class": name, "index": c, "n": n, "top1": acc, "fp32_top1": ref,
                         "delta_pp": (acc - ref) * 100.0})
    return sorted(rows, key=lambda r: r["delta_pp"])


def collect_outputs(session, feeds: Feeds, batch: int = 32,
                    progress: Callable[[float, float], None] | None = None) -> dict[str, np.ndarray]:
    """Every output of ``session`` for every sample of ``feeds``, run in batches; a static-batch
    artifact gets its own batch size, with the last batch padded (and the padding dropped)."""
    static = static_batch(session)
    step = static or batch
    n = batch_size(feeds)
    out: list[dict[str, np.ndarray]] = []
    for start in range(0, n, step):
        part = take(feeds, slice(start, start + step))
        real = batch_size(part)
        if static and real < static:
            part = take(part, np.arange(static) % real)
        out.append({k: np.asarray(v)[:real] for k, v in session.run(part).items()})
        if progress is not None:
            progress(min(start + step, n), n)
    return concat(out)


def label_accuracy(logits: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict:
    """Top-1 (and top-5 with more than 5 classes) and per-class top-1 against labels only, each with
    its Wilson interval: what a device can measure on a labelled folder without the FP32 model."""
    labels = np.asarray(labels, dtype=np.int64)
    n, num_classes = logits.shape
    ok = topk_correct(logits, labels, 1)
    result = {"n": int(n), "num_classes": int(num_classes), "top1": float(ok.mean()) if n else 0.0,
              "top1_ci": list(wilson(int(ok.sum()), n))}
    if num_classes > 5:
        ok5 = topk_correct(logits, labels, 5)
        result.update(top5=float(ok5.mean()), top5_ci=list(wilson(int(ok5.sum()), n)))
    per_class = []
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            hits, count = int(ok[mask].sum()), int(mask.sum())
            per_class.append({"class": classes[c], "index": c, "n": count, "top1": hits / count,
                              "top1_ci": list(wilson(hits, count))})
    result["per_class"] = per_class
    result["interval"] = "95% Wilson score"
    return result
