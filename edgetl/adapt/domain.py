"""Domain adaptation with unlabelled target images (edgetl/data/unlabelled.py reads them): AdaBN, and
the training-time alignment loss (edgetl/adapt/alignments) joined to fine-tuning.

AdaBN (Li et al., 2016) re-estimates every BatchNorm's statistics on the target images, so each
domain is normalised with its own. It helps only in a network that learned to work with the
statistics of the images it sees: fine-tuned with BatchNorm in batch mode. A pretrained network
does not tolerate new statistics, even the source domain's: re-estimating Lite0's on the source
digits (48 px) dropped its probe from 89% to 16% on source val, so the strategy trains in batch mode.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn as nn

from edgetl.adapt.loop import CPU
from edgetl.data.preprocess import PreprocessSpec, normalize

BATCH = 64


def batchnorms(model) -> list:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def trained_batchnorms(model) -> list:
    """The BatchNorm layers fine-tuning trained (``requires_grad``: the unfrozen stages)."""
    return [m for m in batchnorms(model) if any(p.requires_grad for p in m.parameters())]


def reestimate_batchnorm(model, pixels: np.ndarray, spec: PreprocessSpec, layers: list | None = None,
                         seed: int = 0) -> None:
    """AdaBN: the running statistics of ``layers`` (default: every BatchNorm) become those of
    ``pixels`` (an equal-weight average over batches); nothing else changes, and the model is left
    in eval mode.

    The batches are drawn in a seeded random order: images come sorted by class, and a batch of one
    or two classes has a small variance, so class-ordered batches would underestimate every
    variance and scale the features up."""
    layers = batchnorms(model) if layers is None else layers
    order = np.random.default_rng(seed).permutation(len(pixels))
    momenta = [m.momentum for m in layers]
    device = next(model.parameters()).device  # the training device (edgetl/adapt/device.py)
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average, not an exponential one
        m.train()
    with torch.no_grad():
        for batch in np.array_split(order, -(-len(order) // BATCH)):  # equal sizes: no batch of one or two
            model(torch.from_numpy(normalize(pixels[batch], spec)).to(device))
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    model.eval()


@contextlib.contextmanager
def target_batch_statistics(model):
    """Every BatchNorm that trains in batch mode normalises the target batch with its own statistics,
    as AdaBN will normalise target images once trained, without folding them into its running
    (source) ones: momentum 0. Those in eval mode (frozen stages) keep theirs, as they will ship."""
    layers = [m for m in batchnorms(model) if m.training]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum


def _endless(loader):
    while True:
        yield from loader


class AlignedNet(nn.Module):
    """The network as fine-tuning trains it: each source batch (BatchNorm with the source batch's
    statistics) is followed by a target batch through the same backbone (with the target batch's,
    as after AdaBN), and ``weight`` times the alignment loss of their pooled features is left in
    ``aux_loss``, which fit() adds to the cross-entropy before loss scaling (so fp16's scaler scales
    both). In eval mode it is the plain model; ``module`` is what fit() saves."""

    def __init__(self, model, target_loader, alignment, weight: float, execution=CPU):
        super().__init__()
        self.module = model
        self.target_batches = _endless(target_loader)
        self.alignment, self.weight, self.execution = alignment, weight, execution
        self.aux_loss = None

    def _pooled(self, x):
        return self.module.forward_head(self.module.forward_features(x), pre_logits=True)

    def forward(self, x):
        self.aux_loss = None
        if not self.training:
            return self.module(x)
        xt, _ = next(self.target_batches)
        xt = self.execution.to(xt)
        source = self._pooled(x)
        logits = self.module.get_classifier()(source)
        with target_batch_statistics(self.module):
            target = self._pooled(xt)
        if len(x) < 2 or len(xt) < 2:  # no covariance or confusion from one image
            return logits
        self.aux_loss = self.weight * self.alignment.loss(source, target, self.module.get_classifier()(target))
        return logits


def aligner(target_data, alignment, weight: float, batch_size: int, seed: int, execution=CPU):
    """What ``finetune(..., train_net=)`` wraps the network with: target batches of ``batch_size``,
    loaded as the source batches are (workers, pinned memory on CUDA) in another seeded order."""
    loader = torch.utils.data.DataLoader(target_data, batch_size=batch_size, shuffle=True,
                                         drop_last=len(target_data) > batch_size, **execution.loader_options(seed + 1))
    return lambda net: AlignedNet(net, loader, alignment, weight, execution)


def top1(model, pixels: np.ndarray, labels: np.ndarray, spec: PreprocessSpec, execution=CPU) -> float:
    from edgetl.adapt.loop import predict

    return float((predict(model, normalize(pixels, spec), execution=execution).argmax(1) == labels).mean())
