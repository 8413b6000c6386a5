"""The image task's workstation side (``ImageClassification.workstation``): the timm backbones,
``edgetl.adapt.train``'s training and ``edgetl.models.build``'s model rebuilding.

The image task's flags are ``TrainOptions``' own, so it adds no ``options_model``.
"""

from __future__ import annotations

from edgetl.adapt.train import train
from edgetl.adapt.train import train_inputs_hash as inputs_hash
from edgetl.models.build import load_image_classifier as load_trained
from edgetl.models.registry import DEFAULT_BACKBONE, OFFLINE

BACKBONES = {name: b.description for name, b in OFFLINE.items()}  # and any timm:<name>
options_model = None

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "inputs_hash", "load_trained", "options_model", "train"]
