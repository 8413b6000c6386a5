"""Feature extraction: the backbone stays frozen (BatchNorm in eval mode); its pooled features are
computed once, cached on disk keyed by backbone + data, and a head is trained on them in seconds.
"""

from __future__ import annotations

import numpy as np

from edgetl._cache import cache_root
from edgetl._io import atomic_path, sha256_json
from edgetl.adapt import distributed
from edgetl.adapt.distributed import Dist
from edgetl.adapt.loop import FitResult, fit, predict, progress_bar
from edgetl.adapt.options import HEAD_MIN_BATCH, TrainOptions
from edgetl.data.preprocess import PreprocessSpec, normalize


def extract(model, pixels: np.ndarray, spec: PreprocessSpec, dist: Dist, desc: str, batch: int = 64,
            console=None) -> np.ndarray:
    """Pooled pre-logits features (float32) of uint8 images, on the rank's device under its autocast;
    each rank does its shard, all ranks get all rows. ``console``: where the bar is drawn (None: nowhere)."""
    import torch

    execution = dist.execution
    rows = pixels[distributed.shard(dist, len(pixels))]
    model.eval()
    out = []
    with progress_bar(console) as progress, torch.inference_mode(), execution.autocast():
        task = progress.add_task(desc, total=len(rows), stats="")
        for i in range(0, len(rows), batch):
            x = execution.to(torch.from_numpy(normalize(rows[i : i + batch], spec)))
            out.append(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu().numpy())
            progress.update(task, advance=len(x))
    width = model.get_classifier().in_features
    local = np.concatenate(out) if out else np.empty((0, width), np.float32)
    return distributed.gather_rows(dist, local)


def cached_features(key: dict, compute, shape: tuple[int, int]) -> np.ndarray:
    """``compute()``'s float32 features of ``shape`` (images, width), from the cache when an entry
    for ``key`` holds exactly such features. The cache may be shared or edited: an entry that is a
    link, unreadable, of another shape or type, or not finite is computed again and replaced."""
    path = cache_root() / "features" / f"{sha256_json(key)[:24]}.npy"
    cached = _stored_features(path, shape)
    if cached is not None:
        return cached
    features = compute()
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, features)
    except OSError:
        pass  # a read-only cache costs speed, not correctness
    return features


def _stored_features(path, shape: tuple[int, int]) -> np.ndarray | None:
    if path.is_symlink() or not path.is_file():
        return None
    try:
        stored = np.load(path, mmap_mode="r", allow_pickle=False)  # the header first: no read of a wrong file
        if stored.dtype != np.float32 or stored.shape != tuple(shape):
            return None
        features = np.array(stored)
    except (OSError, ValueError, EOFError):
        return None
    return features if np.isfinite(features).all() else None


def build_head(in_features: int, num_classes: int, kind: str):
    import torch.nn as nn

    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_features, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, num_classes))
    return nn.Linear(in_features, num_classes)


def train_head(
    f_train: np.ndarray,
    y_train: np.ndarray,
    f_val: np.ndarray,
    y_val: np.ndarray,
    head,
    opts: TrainOptions,
    dist: Dist,
    *,
    on_improve=None,
    console=None,
    on_epoch=None,
    checkpoint=None,
    criterion=None,
) -> FitResult:
    """AdamW on cached features for ``opts.phase_epochs("head")``; every rank trains the same head on
    all rows (it takes seconds), on the rank's device in fp32. ``console``: where the progress is
    drawn (None: nowhere); ``checkpoint``: an ``edgetl.adapt.resume.Checkpointer`` (``--resume``);
    ``criterion``: a multi-task loss, ``y_train`` then holding one label column per head."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    execution = dist.execution.without_amp()  # features in memory: no workers, no autocast
    epochs = opts.phase_epochs("head")
    loader = DataLoader(
        TensorDataset(torch.from_numpy(f_train), torch.from_numpy(y_train)),
        batch_size=max(opts.batch_size, HEAD_MIN_BATCH),
        shuffle=True,
        generator=torch.Generator().manual_seed(opts.seed),
        pin_memory=execution.is_cuda,
    )
    optimizer = torch.optim.AdamW(head.parameters(), lr=opts.head_lr, weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))

    def evaluate(model) -> float:
        return float((predict(model, f_val, execution=execution).argmax(1) == y_val).mean())

    return fit(
        head,
        loader,
        evaluate,
        optimizer,
        epochs=epochs,
        patience=opts.phase_patience("head"),
        phase="head",
        console=console,
        world=1,  # identical on every rank: no gradient sync needed
        scheduler=scheduler,
        on_improve=on_improve,
        on_epoch=on_epoch,
        label_smoothing=opts.label_smoothing,
        per_epoch_bars=False,
        execution=execution,
        checkpoint=checkpoint,
        criterion=criterion,
    )
