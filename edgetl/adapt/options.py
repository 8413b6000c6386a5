"""The options of ``edgetl train``, as models: the one place their names, types, defaults and help live.

``TrainOptions`` holds the hyper-parameters (recorded in the manifest, hashed to skip unchanged
reruns); ``TrainInputs`` what a run is trained from besides the images (backbone, validation set,
start weights). The CLI generates the flags of ``edgetl train`` and ``edgetl deploy`` from their
fields (``edgetl.cli._options.model_options``) and ``edgetl deploy``'s TOML validates with them, so a new
option is one field here. Torch-free: the CLI imports this module to build its flags.

Built with bad values, either model raises the CLI's one-line ``ConfigError`` (``option --epochs:
...``), not pydantic's ``ValidationError``, so a notebook gets the message a shell user gets.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgetl.errors import ConfigError
from edgetl.models.registry import DEFAULT_BACKBONE

# What an unset (None) option means; the help texts below quote them.
HEAD_LR = 1e-3
FINETUNE_EPOCHS = 15
PATIENCE = {"head": 15, "finetune": 5}
HEAD_MIN_BATCH = 64  # the head trains on cached features: small batches only add noise


def flag(name: str) -> str:
    """The command-line flag of an option field: ``val_split`` -> ``--val-split``."""
    return "--" + name.replace("_", "-")


def option_error(exc: ValidationError) -> str:
    """The one-line message of an option model's first error, named by its flag."""
    first = exc.errors()[0]
    return f"option {flag('-'.join(str(p) for p in first['loc']))}: {first['msg']} (got {first.get('input')!r})"


def keyword_parameters(*models, skip=()) -> list[inspect.Parameter]:
    """The fields of option models as keyword-only parameters with their defaults, for the
    ``__signature__`` of a function that takes them as keywords (``edgetl.deploy``)."""
    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=_plain(field.annotation),
                              default=field.get_default(call_default_factory=True))
            for model in models for name, field in model.model_fields.items() if name not in skip]


def _plain(annotation):
    """The annotation without pydantic's constraints: ``list[Annotated[int, Ge(1)]]`` -> ``list[int]``."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _plain(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is list:
        return list[_plain(typing.get_args(annotation)[0])]
    return annotation


def unknown_options(given, valid) -> str | None:
    """The message for the first name in ``given`` that is not in ``valid``; None when all are."""
    for name in given:
        if name not in valid:
            close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            return f"unknown option {name!r}.{hint} Valid: {', '.join(sorted(valid))}"
    return None


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **values):
        problem = unknown_options(values, type(self).model_fields)
        if problem:
            raise ConfigError(problem)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(option_error(exc)) from None

    # Only a direct call runs this (pydantic's RootModel marks its own __init__ so): validation of a
    # TOML file or a nested model skips it and keeps pydantic's error, which ``load_config`` words
    # with the file and the field.
    __init__.__pydantic_base_init__ = True


class TrainInputs(_Options):
    """What a run is trained from besides the images: run-level arguments of ``train``."""

    backbone: str = Field(DEFAULT_BACKBONE, description="efficientnet_lite0 (embedded, offline) or timm:<name>. "
                          "See `edgetl backbones`.")
    weights: str | None = Field(None, description="Local checkpoint (.safetensors or .pth state dict) for the backbone.")
    val: str | None = Field(None, description="Separate validation folder/CSV (same classes).")


class TrainOptions(_Options):
    """Every training hyper-parameter; recorded in the manifest and hashed to skip unchanged reruns.
    The field order is the order of the flags in ``--help``."""

    mode: Literal["feature-extraction", "finetune"] = Field(
        "feature-extraction", description="feature-extraction: frozen backbone, cached features, new head. "
        "finetune: head first, then the last N stages.")
    pretrained: bool = Field(True, description="Start from the backbone's pretrained weights (--no-pretrained: "
                             "from random weights, a baseline to compare with).")
    val_split: float = Field(0.2, gt=0, lt=1, description="Stratified, seeded validation fraction when --val is not given.")
    image_size: int | None = Field(None, ge=16, le=4096, description="Input size override (pixels); small sizes "
                                   "train much faster on a CPU. Default: the backbone's.")
    epochs: int | None = Field(None, ge=1, description="Epochs (default: --head-epochs for the head on features, "
                               f"{FINETUNE_EPOCHS} for fine-tuning).")
    head_epochs: int = Field(100, ge=1, description="Epochs of the head on cached features (finetune: before the "
                             "backbone; feature-extraction: when --epochs is not given).")
    unfreeze: str = Field("2", pattern=r"^(all|auto|\d+)$", description="finetune: number of last stages to train, "
                          "'all', or 'auto' (short runs of a few depths on a split of the training data pick it; "
                          "e.g. --unfreeze auto).")
    lr: float | None = Field(None, gt=0, lt=10, description=f"Head learning rate (default {HEAD_LR:g}); the backbone "
                             "gets --backbone-lr-scale of it.")
    backbone_lr_scale: float = Field(0.1, gt=0, le=1, description="finetune: backbone LR as a fraction of the head's.")
    layer_decay: float = Field(0.5, gt=0, le=1, description="finetune: each earlier stage's LR as a fraction of "
                               "the next one's.")
    batch_size: int = Field(32, ge=1, description=f"Training batch size (the head on features uses at least "
                            f"{HEAD_MIN_BATCH}).")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay.")
    head: Literal["linear", "mlp"] = Field("linear", description="Classifier head: linear, or mlp (one hidden "
                                           "layer of 512).")
    augment: Literal["auto", "on", "off"] = Field(
        "auto", description="finetune: auto measures the crop scale from the objects' extent and allows flips "
        "only when they keep the probe's accuracy; on: random resized crop (25-100%) and flip; off: none.",
        json_schema_extra={"negative_flag": "off"})
    transfer_check: bool = Field(True, description="After the head: train a small CNN from scratch for a few "
                                 "seconds and warn when the pretrained features do no better (--no-transfer-check: "
                                 "skip it).")
    patience: int | None = Field(None, ge=1, description="Early stopping: epochs without a better val top-1 "
                                 f"(default {PATIENCE['head']} head / {PATIENCE['finetune']} finetune).")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Label smoothing of the cross-entropy loss.")
    seed: int = Field(0, description="Seed for the split, the initialisation and the data order.")

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_bool(cls, value):
        """The former ``augment=True/False`` (and TOML's ``augment = false``) still mean on/off."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    def phase_epochs(self, phase: Literal["head", "finetune"]) -> int:
        if phase == "finetune":
            return self.epochs or FINETUNE_EPOCHS
        return (self.epochs or self.head_epochs) if self.mode == "feature-extraction" else self.head_epochs

    def phase_patience(self, phase: Literal["head", "finetune"]) -> int:
        return self.patience or PATIENCE[phase]

    @property
    def head_lr(self) -> float:
        return self.lr or HEAD_LR
