"""Fine-tuning: the head first (a linear probe on cached features, which is LP-FT: it keeps a random
head from wrecking pretrained features), then the last N stages with discriminative learning rates
(each earlier stage gets ``layer_decay`` times the rate of the next, all far below the head's),
linear warm-up then cosine decay, and augmentation on by default.
"""

from __future__ import annotations

import math

import numpy as np

from edgetl.adapt import distributed
from edgetl.adapt.distributed import Dist
from edgetl.adapt.loop import FitResult, fit, predict
from edgetl.adapt.options import TrainOptions
from edgetl.data.preprocess import PreprocessSpec, normalize
from edgetl.models.build import body_stages, head_parameters


def freeze_for_finetune(model, unfreeze: int | str, keep_bn_stats: bool = True) -> tuple[list[list], list]:
    """Freeze all but the last ``unfreeze`` stages; returns (trainable stages, BatchNorm to keep in eval).

    With pretrained weights (``keep_bn_stats``) every BatchNorm stays in eval mode, its affine
    parameters still learning where unfrozen: the
    head of phase 1 was fitted on features normalised with the pretrained running statistics, and
    batch statistics of small batches of a new domain would shift those features away from it
    (measured on digits, 25 images/class: val top-1 fell from 79% to 55% in the first epoch).
    From random weights there are no statistics to keep: only frozen stages' BatchNorm stays put.
    """
    import torch.nn as nn

    stages = body_stages(model)
    n = len(stages) if unfreeze == "all" else min(int(unfreeze), len(stages))
    trainable = stages[len(stages) - n :] if n else []
    trainable_ids = {id(p) for stage in trainable for p in stage} | {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable_ids)
    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                  and (keep_bn_stats or not any(p.requires_grad for p in m.parameters()))]
    return trainable, batchnorms


def param_groups(model, trainable: list[list], lr: float, backbone_lr_scale: float, layer_decay: float) -> list[dict]:
    groups = [{"params": head_parameters(model), "lr": lr}]
    for depth, stage in enumerate(reversed(trainable)):
        groups.append({"params": stage, "lr": lr * backbone_lr_scale * layer_decay**depth})
    return groups


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int):
    import torch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


DEFAULT_CROP_SCALE = (0.25, 1.0)  # --augment on: the area range of random resized crops


def open_item(item):
    """An image file as RGB, or decoded pixels (uint8 H x W x 3: --from's exemplars, which have no file)."""
    from PIL import Image

    from edgetl.data.preprocess import open_rgb

    return Image.fromarray(item) if isinstance(item, np.ndarray) else open_rgb(item)


class AugmentedImages:
    """Random resized crop (area fraction in ``crop_scale``; None: the eval resize and centre crop)
    and, with ``flip``, a horizontal flip, on images kept in memory at the eval resize scale."""

    def __init__(self, paths: list, labels: np.ndarray, spec: PreprocessSpec,
                 crop_scale: tuple[float, float] | None = DEFAULT_CROP_SCALE, flip: bool = True):
        from torchvision import transforms

        from edgetl.data.preprocess import _INTERPOLATION

        interp = _INTERPOLATION[spec.interpolation]
        scale = max(spec.scale_size())
        # Decoding and downscaling once keeps epochs fast on big photos; crops stay above model resolution.
        self.images = [self._shrink(open_item(p), scale, interp) for p in paths]
        self.labels = labels
        mode = transforms.InterpolationMode(spec.interpolation)
        crop = ([transforms.RandomResizedCrop(spec.input_size, scale=crop_scale, interpolation=mode)] if crop_scale
                else [transforms.Resize(scale, interpolation=mode), transforms.CenterCrop(spec.input_size)])
        self.transform = transforms.Compose(
            [*crop, *([transforms.RandomHorizontalFlip()] if flip else []), transforms.ToTensor(),
             transforms.Normalize(spec.mean, spec.std)]
        )

    @staticmethod
    def _shrink(img, scale: int, interp):
        w, h = img.size
        if min(w, h) <= scale:
            return img
        ratio = scale / min(w, h)
        return img.resize((round(w * ratio), round(h * ratio)), interp)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def finetune(
    model,
    train_data,
    val_pixels: np.ndarray,
    y_val: np.ndarray,
    spec: PreprocessSpec,
    opts: TrainOptions,
    dist: Dist,
    *,
    keep_bn_stats: bool = True,
    on_improve=None,
    console=None,
    on_epoch=None,
    checkpoint=None,
    train_net=None,
    joint=None,
) -> FitResult:
    """Phase 2: the last ``opts.unfreeze`` stages with the head, for ``opts.phase_epochs("finetune")``,
    on the rank's device (``dist.execution``). ``console``: where the progress is drawn (None:
    nowhere); ``checkpoint``: an ``edgetl.adapt.resume.Checkpointer`` (``--resume``); ``train_net``:
    wraps the network that is trained (domain adaptation adds its alignment loss there;
    edgetl/adapt/domain.py); ``joint``: an ``edgetl.adapt.multitask.Joint``, every head trained with its loss."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    execution = dist.execution
    if joint is not None:
        train_data = joint.dataset(train_data)
    trainable, batchnorms = freeze_for_finetune(model, opts.unfreeze, keep_bn_stats)
    sampler = (DistributedSampler(train_data, dist.world, dist.rank, shuffle=True, seed=opts.seed)
               if dist.enabled else None)
    loader = DataLoader(train_data, batch_size=opts.batch_size, shuffle=sampler is None, sampler=sampler,
                        drop_last=len(train_data) > opts.batch_size * dist.world, **execution.loader_options(opts.seed))
    groups = param_groups(model, trainable, opts.head_lr, **opts.recipe())
    optimizer = torch.optim.AdamW(groups, weight_decay=opts.weight_decay)
    epochs = opts.phase_epochs("finetune")
    total = epochs * len(loader)
    scheduler = warmup_cosine(optimizer, warmup_steps=min(len(loader), total // 5 or 1), total_steps=total)
    net = distributed.wrap(dist, model)
    if train_net is not None:
        net = train_net(net)
    x_val = normalize(val_pixels, spec)

    def evaluate(_net) -> float:
        # Every rank evaluates the whole split, so all ranks take the same early-stopping decision.
        return float((predict(model, x_val, execution=execution).argmax(1) == y_val).mean())

    return fit(
        net,
        loader,
        evaluate,
        optimizer,
        epochs=epochs,
        patience=opts.phase_patience("finetune"),
        phase="finetune",
        console=console,
        world=dist.world,
        scheduler=scheduler,
        eval_modules=batchnorms,
        on_improve=on_improve,
        on_epoch=on_epoch,
        label_smoothing=opts.label_smoothing,
        execution=execution,
        checkpoint=checkpoint,
        criterion=joint.criterion if joint is not None else None,
    )
