"""The first task: one float32 NCHW image in, class logits out, top-1 as the metric."""

from __future__ import annotations

from edgetl.tasks.base import Metric


class ImageClassification:
    name = "image-classification"
    description = "one RGB image in (float32 NCHW), one score per class out; top-1 accuracy"
    # The numbers compile and bench measure against the FP32 reference; a profile's budgets set
    # goals on these and on BENCH_METRICS.
    metrics = (
        Metric("top1", "higher", "", "top-1 accuracy on the validation split"),
        Metric("accuracy_drop_pp", "lower", "pp", "top-1 drop against the FP32 PyTorch reference"),
        Metric("agreement", "higher", "", "share of images whose top-1 equals the reference's"),
    )
