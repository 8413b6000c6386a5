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
import functools
import inspect
import re
import typing
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from edgetl.errors import ConfigError, MissingDependencyError, UnknownNameError
from edgetl.models.registry import DEFAULT_BACKBONE, OFFLINE
from edgetl.tasks import DEFAULT_TASK

# What an unset (None) option means; the help texts below quote them.
HEAD_LR = 1e-3
FINETUNE_EPOCHS = 15
PATIENCE = {"head": 15, "finetune": 5}
HEAD_MIN_BATCH = 64  # the head trains on cached features: small batches only add noise
# Backbone LR scale and layer decay when not given: a fixed depth keeps the former recipe; --unfreeze
# auto trains every stage it chooses at one rate, 0.3 of the head's (measured on the digits: with
# decay 0.5 the early stages barely move and fine-tuning never beat the probe; benchmarks/finetune_auto.py).
RECIPE = {"fixed": {"backbone_lr_scale": 0.1, "layer_decay": 0.5}, "auto": {"backbone_lr_scale": 0.3, "layer_decay": 1.0}}
# Where and how fast training runs, not what it learns (amp is not here: it changes the weights).
EXECUTION = frozenset({"device", "channels_last", "workers"})
# --from (edgetl/adapt/continual.py): exemplars per class, and the distillation's weight and temperature
MEMORY, DISTILL_WEIGHT, DISTILL_TEMPERATURE = 20, 1.0, 2.0
MAX_MEMORY = 10_000  # exemplars per class: the most --memory keeps


def flag(name: str) -> str:
    """The command-line flag of an option field: ``val_split`` -> ``--val-split``."""
    return "--" + name.replace("_", "-")


def option_error(exc: ValidationError) -> str:
    """The one-line message of an option model's first error, named by its flag."""
    first = exc.errors()[0]
    # a validator's own words, without pydantic's "Value error, " in front
    msg = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
    if not first["loc"]:  # a check of several fields together: its message names the flags
        return msg
    return f"option {flag('-'.join(str(p) for p in first['loc']))}: {msg} (got {first.get('input')!r})"


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


def _spelled_like(value, pattern: str, expected: str, words: dict[str, str]):
    """``value`` when it is a string matching ``pattern``; else the error a user can act on (what is
    expected and the suggestion of the closest of ``words``), instead of pydantic's "String should
    match pattern"."""
    if not isinstance(value, str) or re.fullmatch(pattern, value):
        return value  # a non-string gets pydantic's own type error
    close = difflib.get_close_matches(value.lower(), list(words), n=1, cutoff=0.5)
    hint = f"; did you mean {words[close[0]]!r}?" if close else ""
    raise ValueError(f"expected {expected}{hint}")


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
    """What a run is trained from besides the data: run-level arguments of ``train``."""

    task: str = Field(DEFAULT_TASK, description="What the model does (`edgetl tasks` lists them), e.g. --task "
                      "text-classification; its own flags apply to it only.")
    backbone: str | None = Field(None, description=f"Default: the task's (images: {DEFAULT_BACKBONE}). Images: an "
                                 f"offline backbone ({', '.join(OFFLINE)}), timm:<name>, or auto: `edgetl select` ranks "
                                 "the offline backbones on the training images for the target and the best within its "
                                 "latency budget is trained. See `edgetl backbones --task NAME`.")
    weights: str | None = Field(None, description="Images: local checkpoint (.safetensors or .pth state dict) for "
                                "the backbone.")
    val: str | None = Field(None, description="Separate validation folder/CSV (same classes).")
    from_run: str | None = Field(None, description="Images: add classes to this trained run (read-only): the new "
                                 "run keeps its classes in their order, starts from its weights and rehearses its "
                                 "exemplar memory, e.g. --data ./images-v2 --from runs/flowers --out runs/flowers-v2.",
                                 json_schema_extra={"flag": "--from"})
    memory: int = Field(MEMORY, ge=0, le=MAX_MEMORY, description="--from: exemplars kept and rehearsed per class (a seeded, "
                        "class-balanced sample in train/exemplars/); 0: no rehearsal (the run still keeps "
                        f"{MEMORY} per class for the next --from).")
    distill_weight: float = Field(DISTILL_WEIGHT, ge=0, le=100, allow_inf_nan=False, description="--from: weight of the "
                                  "distillation loss from the parent's outputs (learning without forgetting); 0: off.")
    distill_temperature: float = Field(DISTILL_TEMPERATURE, gt=0, le=100, allow_inf_nan=False, description="--from: softmax "
                                       "temperature of the distillation.")
    task_heads: dict[str, str] = Field(default_factory=dict, description="Images: an extra task on the same "
                                       "backbone, repeatable: NAME=CSV, the CSV 'path,label' (paths relative to "
                                       "--data) labelling every image; output logits_NAME. E.g. --task-head "
                                       "colour=colour.csv.", json_schema_extra={"flag": "--task-head"})
    task_weights: dict[str, float] = Field(default_factory=dict, description="Loss weight of a --task-head, "
                                           "repeatable: NAME=W (default 1; the folder classes' weight is 1), "
                                           "e.g. --task-weight colour=0.5.", json_schema_extra={"flag": "--task-weight"})

    @field_validator("task")
    @classmethod
    def _registered_task(cls, name: str) -> str:
        from edgetl.tasks import tasks

        if name not in tasks():
            raise ValueError(str(UnknownNameError("task", name, tasks())))
        return name

    @model_validator(mode="after")
    def _heads_named(self):
        from edgetl.adapt.multitask import check_head_names

        check_head_names(self.task_heads, self.task_weights)
        return self


class CommonTrainOptions(_Options):
    """The hyper-parameters every strategy shares (the fine-tuning ones too: domain adaptation
    fine-tunes); ``TrainOptions`` adds each registered strategy's own. The field order is the order
    of the flags in ``--help``."""

    mode: str = Field("feature-extraction", description="Training strategy (see edgetl/adapt/strategies).")
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
    backbone_lr_scale: float | None = Field(None, gt=0, le=1, description="finetune: backbone LR as a fraction of "
                                            f"the head's (default {RECIPE['fixed']['backbone_lr_scale']:g}; with "
                                            f"--unfreeze auto {RECIPE['auto']['backbone_lr_scale']:g}).")
    layer_decay: float | None = Field(None, gt=0, le=1, description="finetune: each earlier stage's LR as a fraction "
                                      f"of the next one's (default {RECIPE['fixed']['layer_decay']:g}; with "
                                      f"--unfreeze auto {RECIPE['auto']['layer_decay']:g}: one rate for all).")
    batch_size: int = Field(32, ge=1, description=f"Training batch size (the head on features uses at least "
                            f"{HEAD_MIN_BATCH}).")
    weight_decay: float = Field(1e-2, ge=0, allow_inf_nan=False, description="AdamW weight decay.")
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
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for the split, the initialisation and the data "
                      "order (0 to 2^32-1, numpy's range).")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="Where to train: auto (CUDA "
                        "when PyTorch sees a GPU, else mps, else cpu), cpu, cuda, cuda:N or mps. Under torchrun each "
                        "rank takes cuda:$LOCAL_RANK. E.g. --device cuda:1.")
    amp: Literal["auto", "off", "bf16", "fp16"] = Field("auto", description="Mixed precision (autocast): auto = bf16 "
                                                        "on a GPU that supports it, else fp16 with loss scaling; off "
                                                        "on a CPU. bf16 also works on a CPU when asked for.")
    channels_last: bool | None = Field(None, description="Channels-last memory format (faster convolutions on "
                                       "tensor cores). Default: on for CUDA, off elsewhere.")
    workers: int | None = Field(None, ge=0, description="Data-loader worker processes for fine-tuning. Default: 0 "
                                "on a CPU (images are decoded in memory once), a few on CUDA.")

    def hashed(self, task: str | None = None) -> dict:
        """The options that shape the weights: all but the execution settings (``EXECUTION``), so a
        rerun on another device is not new work. What ``inputs_hash`` and ``--resume`` compare;
        ``task``: with that task's own options (``hparams``)."""
        return {k: v for k, v in self.hparams(task).items() if k not in EXECUTION}

    def check_task(self, task: str) -> None:
        """Refuse another task's option given a value (``--max-length`` under the image task)."""
        for name in importable_tasks():
            model = task_options_model(name)
            for field_name, field in (model.model_fields.items() if model and name != task else ()):
                default = field.get_default(call_default_factory=True)
                if getattr(self, field_name, default) != default:  # absent: built before that task was installed
                    raise ConfigError(f"option {flag(field_name)} is for --task {name}, not {task}")

    @field_validator("unfreeze", mode="before")
    @classmethod
    def _unfreeze_in_words(cls, value):
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # unfreeze=2 from Python or TOML means "2"
        return _spelled_like(value, r"all|auto|\d+", "a number of stages, 'all' or 'auto'",
                             {"all": "all", "auto": "auto"})

    @field_validator("device", mode="before")
    @classmethod
    def _device_in_words(cls, value):
        return _spelled_like(value, r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, cuda, cuda:N or mps",
                             {"auto": "auto", "cpu": "cpu", "cuda": "cuda", "mps": "mps", "gpu": "cuda"})

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

    def recipe(self) -> dict[str, float]:
        """The backbone LR scale and layer decay fine-tuning uses: the given ones, else ``RECIPE``'s."""
        defaults = RECIPE["auto" if self.unfreeze == "auto" else "fixed"]
        return {k: v if (v := getattr(self, k)) is not None else defaults[k] for k in defaults}

    @field_validator("mode")
    @classmethod
    def _registered_mode(cls, mode: str) -> str:
        from edgetl.adapt.strategies import strategies

        if mode not in strategies():
            raise ValueError(str(UnknownNameError("training strategy", mode, strategies())))
        return mode

    @model_validator(mode="after")
    def _options_fit_the_mode(self):
        from edgetl.adapt.strategies import get_strategy, importable

        for name in importable():
            model = get_strategy(name).options_model
            for field_name, field in (model.model_fields.items() if model else ()):
                if name != self.mode and getattr(self, field_name) != field.get_default(call_default_factory=True):
                    raise ValueError(f"option {flag(field_name)} is for --mode {name}, not {self.mode}")
        get_strategy(self.mode).check(self)
        return self

    def hparams(self, task: str | None = None) -> dict:
        """What the manifest records and ``inputs_hash`` hashes: the shared fields and this mode's own
        (another strategy's options are not this run's); ``task``: and that task's own options (the
        image task has none, so its runs record what they always did)."""
        from edgetl.adapt.strategies import get_strategy

        own = get_strategy(self.mode).options_model
        of_task = task_options_model(task) if task else None
        return self.model_dump(include={*CommonTrainOptions.model_fields, *(own.model_fields if own else ()),
                                        *(of_task.model_fields if of_task else ())})


def task_options_model(task: str):
    """A task's own training options (its workstation module's ``options_model``), or None."""
    from edgetl.models.build import workstation_module
    from edgetl.tasks import get_task

    found = get_task(task)
    return getattr(workstation_module(found), "options_model", None) if found.workstation else None


def importable_tasks() -> tuple[str, ...]:
    """The registered tasks whose workstation module imports: they give their flags. One that does
    not import is an error only where ``--task`` names it."""
    from edgetl.tasks import tasks

    names = []
    for name in tasks():
        try:
            task_options_model(name)
        except (MissingDependencyError, ImportError):
            continue
        names.append(name)
    return tuple(names)


@functools.lru_cache(maxsize=8)
def _train_options(names: tuple[str, ...], task_names: tuple[str, ...] = ()) -> type[CommonTrainOptions]:
    """``CommonTrainOptions`` with every registered strategy's options, then every task's own, and
    ``--mode``'s help from the strategies' descriptions."""
    from edgetl.adapt.strategies import get_strategy

    fields: dict = {}
    models = [("training strategy", name, get_strategy(name).options_model) for name in names]
    models += [("task", name, task_options_model(name)) for name in task_names]
    for kind, name, model in models:
        for field_name, field in (model.model_fields.items() if model else ()):
            if field_name in CommonTrainOptions.model_fields or field_name in fields:  # the plugin's bug
                raise TypeError(f"{kind} {name!r}: option {field_name!r} is taken already")
            fields[field_name] = (field.annotation, field)
    modes = " ".join(f"{name}: {get_strategy(name).description}" for name in names)
    mode = Field("feature-extraction", description=modes)
    return create_model("TrainOptions", __base__=CommonTrainOptions, __module__=__name__, __doc__=_TRAIN_OPTIONS_DOC,
                        mode=(str, mode), **fields)


_TRAIN_OPTIONS_DOC = """Every training hyper-parameter: the shared ones, then each registered strategy's own (their
flags apply to that --mode only), then each task's own (for that --task only). ``hparams()`` (the shared ones and this mode's) is recorded in the
manifest and hashed to skip unchanged reruns. Example: ``TrainOptions(mode="finetune", epochs=10)``."""


def __getattr__(attr: str):
    # Built on first use from the registry (the strategies import this module for ``_Options``), and
    # again when a plugin adds a strategy, so its flags appear.
    if attr == "TrainOptions":
        from edgetl.adapt.strategies import importable

        return _train_options(importable(), importable_tasks())
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
