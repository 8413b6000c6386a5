"""Negative-transfer check: do the frozen pretrained features beat a small CNN trained from scratch?

After the head phase, a four-layer CNN learns the same training split at ``SIZE`` pixels for a fixed
budget of images (a few seconds on a CPU core; the same budget on every run, so the verdict is
reproducible), and is scored on the same validation images as the linear probe. When the probe does
no better, the pretrained features do not fit this data: the summary and the manifest say so and
suggest training every stage (``--unfreeze all``) or another backbone (``edgetl select``).
"""

from __future__ import annotations

import time

import numpy as np

from edgetl.bench.accuracy import paired_drop_interval

SIZE = 32  # pixels: small enough for seconds, large enough for digits, signs, textures
EPOCHS = 10
MAX_IMAGES = 6_000  # the budget on large data sets: at most this many images seen in all
BATCH = 64
LR = 3e-3


def small_cnn(num_classes: int):
    """Four conv blocks (8-16-32-64 channels) with BatchNorm, global pooling and a linear layer."""
    import torch.nn as nn

    layers, channels = [], 3
    for width in (8, 16, 32, 64):
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                   nn.MaxPool2d(2)]
        channels = width
    return nn.Sequential(*layers[:-1], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def _small(pixels: np.ndarray, chunk: int = 256):
    """uint8 (N, H, W, 3) -> float (N, 3, SIZE, SIZE) in [-1, 1], area-averaged; in chunks, so only
    the small copy of a large split is ever held in float."""
    import torch
    import torch.nn.functional as F

    out = torch.empty((len(pixels), 3, SIZE, SIZE))
    for i in range(0, len(pixels), chunk):
        x = torch.from_numpy(np.ascontiguousarray(pixels[i : i + chunk])).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        out[i : i + chunk] = F.interpolate(x, size=(SIZE, SIZE), mode="area") if x.shape[-1] != SIZE else x
    return out


def train_from_scratch(train_pixels: np.ndarray, y_train: np.ndarray, val_pixels: np.ndarray, num_classes: int,
                       seed: int = 0) -> tuple[np.ndarray, dict]:
    """The small CNN's predictions on the validation pixels, and what it cost (images seen, seconds)."""
    import torch
    import torch.nn.functional as F

    from edgetl.adapt.loop import predict

    torch.manual_seed(seed)
    started = time.perf_counter()
    model = small_cnn(num_classes)
    if len(train_pixels) > MAX_IMAGES:  # the budget sees at most this many: shrink no more than that
        keep = np.sort(np.random.default_rng(seed).choice(len(train_pixels), MAX_IMAGES, replace=False))
        train_pixels, y_train = train_pixels[keep], y_train[keep]
    x, y = _small(train_pixels), torch.from_numpy(y_train).long()
    steps_per_epoch = max(1, -(-len(x) // BATCH))
    steps = max(1, min(EPOCHS * steps_per_epoch, MAX_IMAGES // BATCH))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    seen = 0
    for step in range(steps):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(x), generator=generator)
        idx = order[(step % steps_per_epoch) * BATCH:][:BATCH]
        # A crop-free shift by up to 2 pixels: the only augmentation that is safe for any data set.
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
        batch = torch.roll(x[idx], shifts=(dy, dx), dims=(2, 3))
        loss = F.cross_entropy(model(batch), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        seen += len(idx)
    pred = predict(model, _small(val_pixels).numpy()).argmax(1)
    return pred, {"images_seen": seen, "seconds": round(time.perf_counter() - started, 2), "size": SIZE}


def compare(probe_pred: np.ndarray, scratch_pred: np.ndarray, y_val: np.ndarray, cost: dict) -> dict:
    """The record of the check: both accuracies on the same images, the 95% interval (Newcombe, paired)
    of probe minus scratch in points, and ``warning`` when the probe does no better."""
    ok_probe, ok_scratch = probe_pred == y_val, scratch_pred == y_val
    # paired_drop_interval(ref, other) is ref - other: scratch - probe; negate for probe - scratch.
    lo, hi = paired_drop_interval(ok_scratch, ok_probe)
    probe, scratch = float(ok_probe.mean()), float(ok_scratch.mean())
    record = {"probe_val_top1": probe, "scratch_val_top1": scratch, "difference_pp": round((probe - scratch) * 100, 2),
              "difference_ci_pp": [round(-hi, 2), round(-lo, 2)], "scratch": cost, "warning": None}
    if probe <= scratch:
        certainty = "worse than" if lo > 0 else "no better than"  # lo > 0: scratch beats the probe for sure
        record["warning"] = (
            f"negative transfer: the frozen features ({probe:.1%} val top-1) do {certainty} a small CNN trained "
            f"from scratch for {cost['seconds']:.0f} s ({scratch:.1%}); try --mode finetune --unfreeze all, "
            "or another backbone (edgetl select)")
    return record


def check_transfer(probe_pred: np.ndarray, train_pixels: np.ndarray, y_train: np.ndarray, val_pixels: np.ndarray,
                   y_val: np.ndarray, num_classes: int, seed: int = 0) -> dict:
    """Train the small CNN on the training split and compare it with the probe's validation predictions."""
    scratch_pred, cost = train_from_scratch(train_pixels, y_train, val_pixels, num_classes, seed)
    return compare(probe_pred, scratch_pred, y_val, cost)
