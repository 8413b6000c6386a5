"""Accuracy of an artifact against the FP32 reference, from logits (numpy only, device side).

The drop is reported two ways: in percentage points (what budgets use) and as the fraction of the
FP32 accuracy that is kept (MLPerf's closed division asks for >= 99%). Agreement counts how often
the artifact's top-1 prediction equals the FP32 model's, whatever the label: it catches
quantization damage even where the validation split is too small to move top-1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from edgetl.errors import ArtifactError


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
        "fp32_top1": fp32_top1,
        "drop_pp": (fp32_top1 - top1) * 100.0,
        "fraction_of_fp32": top1 / fp32_top1 if fp32_top1 > 0 else None,
        "agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(np.where(finite, logits, 0) - reference).max()) if n else 0.0,
        "nonfinite": int((~finite).sum()),  # fp16 overflow shows up here, not as an exception
    }
    if num_classes > 5:
        result["top5"] = float(topk_correct(logits, labels, 5).mean())
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


def collect_logits(session, inputs: np.ndarray, batch: int = 32,
                   progress: Callable[[float, float], None] | None = None) -> np.ndarray:
    """Run every input through ``session`` in batches; a static-batch artifact gets its own batch
    size, with the last batch padded (and the padding dropped from the result)."""
    static = session.input_shape[0] if session.input_shape and session.input_shape[0] > 0 else None
    step = static or batch
    n = inputs.shape[0]
    out: list[np.ndarray] = []
    for start in range(0, n, step):
        x = np.ascontiguousarray(inputs[start:start + step], dtype=np.float32)
        real = x.shape[0]
        if static and real < static:
            x = np.concatenate([x, np.repeat(x[-1:], static - real, axis=0)])
        out.append(np.asarray(session.run(x))[:real])
        if progress is not None:
            progress(min(start + step, n), n)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
