"""Minimum Class Confusion (Jin et al., 2020): on target batches, penalise the probability mass two
classes share, weighted towards confident samples; needs no source features."""

from __future__ import annotations

from edgetl.adapt.alignments import Alignment

TEMPERATURE = 2.5  # the paper's value for all its benchmarks


class Mcc(Alignment):
    description = "make target predictions confident and distinct between classes (MCC)"

    def loss(self, source_features, target_features, target_logits):
        import torch

        probs = torch.softmax(target_logits / TEMPERATURE, dim=1)
        entropy = -(probs * torch.log(probs + 1e-5)).sum(1)
        weight = 1 + torch.exp(-entropy)
        weight = len(probs) * weight / weight.sum()
        confusion = (probs * weight[:, None]).T @ probs
        confusion = confusion / confusion.sum(1, keepdim=True)
        return (confusion.sum() - confusion.trace()) / probs.shape[1]
