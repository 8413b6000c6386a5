"""The image task's workstation side (``ImageClassification.workstation``): the timm backbones,
``edgetl.adapt.train``'s training and ``edgetl.models.build``'s model rebuilding.

The image task's flags are ``TrainOptions``' own, so it adds no ``options_model``. Imported when
``TrainOptions`` is built: the training code loads on first call.
"""

from __future__ import annotations

from edgetl.models.registry import DEFAULT_BACKBONE, OFFLINE

BACKBONES = {name: b.description for name, b in OFFLINE.items()}  # and any timm:<name>, or auto
options_model = None


def train(data, options, **kwargs) -> dict:
    from edgetl.adapt.train import train_images

    return train_images(data, options, **kwargs)


def inputs_hash(data, options, **kwargs) -> str:
    from edgetl.adapt.train import image_inputs_hash

    return image_inputs_hash(data, options, **kwargs)


def load_trained(run):
    """The run's network; with --task-head heads, one output per task (edgetl/adapt/multitask.py)."""
    from edgetl.models.build import load_image_classifier

    info = run.get("train")
    if info.get("heads"):
        from edgetl.adapt.multitask import load

        return load(run, info)
    return load_image_classifier(run)


__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "inputs_hash", "load_trained", "options_model", "train"]
