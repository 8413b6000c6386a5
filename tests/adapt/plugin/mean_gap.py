"""An alignment loss from outside edgetl: the squared gap between mean source and target features."""

from __future__ import annotations

from edgetl.adapt.alignments import Alignment


class MeanGap(Alignment):
    description = "squared distance of the feature means"

    def loss(self, source_features, target_features, target_logits):
        return ((source_features.mean(0) - target_features.mean(0)) ** 2).sum()
