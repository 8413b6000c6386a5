"""Deep CORAL (Sun & Saenko, 2016): the distance between the covariances of source and target
features, so the target's pooled features are spread like the source's the head was trained on."""

from __future__ import annotations

from edgetl.adapt.alignments import Alignment


class Coral(Alignment):
    description = "match the covariance of target features to the source's (Deep CORAL)"

    def loss(self, source_features, target_features, target_logits):
        import torch

        d = source_features.shape[1]
        gap = torch.cov(source_features.T) - torch.cov(target_features.T)
        return (gap**2).sum() / (4 * d * d)
