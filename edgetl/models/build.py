"""Build a backbone with a new head, load weights safely, and split it into freezable stages."""

from __future__ import annotations

from pathlib import Path

from edgetl._io import sha256_file
from edgetl._lazy import require
from edgetl.data.preprocess import PreprocessSpec
from edgetl.errors import ConfigError
from edgetl.models.registry import Backbone, offline_weights_path


def _load_state_dict(path: Path) -> dict:
    """Tensors only: safetensors, or torch.load(weights_only=True) which refuses pickled objects."""
    torch = require("torch")
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickled objects, wrong format
        raise ConfigError(f"cannot load weights {path}: {str(exc).splitlines()[0]}") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"weights file {path} does not hold a state dict")
    return state


def _load_offline(model, backbone: Backbone) -> None:
    """An offline backbone's file lines up, tensor by tensor in order, with its timm architecture
    (EfficientNet-Lite ports with tf_efficientnet_lite*, torchvision's MobileNetV2 with mobilenetv2_100);
    every shape is checked, and the ImageNet head is left out for the new one."""
    ref = _load_state_dict(offline_weights_path(backbone))
    target = model.state_dict()
    mapped = {}
    for (ours, tensor), (theirs, value) in zip(target.items(), ref.items(), strict=True):
        if ours.startswith("classifier."):
            continue
        if tensor.shape != value.shape:
            raise RuntimeError(f"{backbone.name} weights do not line up: {theirs} {tuple(value.shape)} -> {ours}")
        mapped[ours] = value
    model.load_state_dict(mapped, strict=False)


def _load_user_weights(model, path: Path) -> None:
    state = _load_state_dict(path)
    own = model.state_dict()
    classifier = {f"{n}" for n, _ in model.get_classifier().named_parameters(prefix=classifier_prefix(model))}
    # A checkpoint's head was trained for other classes: drop it, the new head starts fresh.
    state = {k: v for k, v in state.items() if k not in classifier}
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and k not in classifier and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        detail = (wrong or missing or unexpected)[0]
        raise ConfigError(
            f"weights {path} do not fit {model.default_cfg.get('architecture', 'the model')}: "
            f"{len(wrong)} wrong shapes, {len(missing)} missing, {len(unexpected)} unexpected keys (first: {detail}); "
            "pass weights trained for this architecture"
        )
    model.load_state_dict(state, strict=False)


def classifier_prefix(model) -> str:
    head = model.get_classifier()
    for name, module in model.named_modules():
        if module is head:
            return name
    return "classifier"


def create_model(backbone: Backbone, num_classes: int, *, pretrained: bool = True, weights: Path | None = None):
    """A timm model with a fresh ``num_classes`` head; weights from an offline package, a local file or timm."""
    timm = require("timm", "building backbones")
    offline = backbone.weights is not None
    from_hub = pretrained and weights is None and not offline
    # The preprocessing these weights were evaluated with, where it is not timm's for the architecture.
    overlay = {"interpolation": backbone.interpolation} if backbone.interpolation else None
    try:
        model = timm.create_model(backbone.arch, pretrained=from_hub, num_classes=num_classes,
                                  pretrained_cfg_overlay=overlay)
    except Exception as exc:
        if from_hub:
            raise ConfigError(
                f"could not fetch pretrained weights for {backbone.name} ({type(exc).__name__}); "
                "offline? pass --weights PATH or use an offline backbone (`edgetl backbones`)"
            ) from None
        raise
    if weights is not None:
        _load_user_weights(model, Path(weights))
    elif pretrained and offline:
        _load_offline(model, backbone)
    return model


def weights_id(backbone: Backbone, *, pretrained: bool, weights: Path | None) -> str:
    """What identifies the starting weights (for the manifest and the feature cache key)."""
    if weights is not None:
        return f"file:{sha256_file(weights)}"
    if not pretrained:
        return "random"
    if backbone.weights is not None:
        return f"embedded:{sha256_file(offline_weights_path(backbone))}"
    return f"timm:{backbone.arch}:default"


def preprocess_spec(model, image_size: int | None = None) -> PreprocessSpec:
    """The backbone's own eval preprocessing (timm's data config), at ``image_size`` if given."""
    timm = require("timm")
    cfg = timm.data.resolve_data_config({}, model=model)
    size = (image_size, image_size) if image_size else tuple(cfg["input_size"][-2:])
    return PreprocessSpec(
        input_size=size,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg.get("interpolation", "bicubic"),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        crop_mode=cfg.get("crop_mode", "center"),
    )


def body_stages(model) -> list[list]:
    """The body's parameter groups from stem to last stage (timm's coarse group matcher), head excluded."""
    timm_models = require("timm").models
    named = dict(model.named_parameters())
    groups = timm_models.group_parameters(model, model.group_matcher(coarse=True))
    head = {f"{classifier_prefix(model)}.{n}" for n, _ in model.get_classifier().named_parameters()}
    stages, seen = [], set(head)
    for names in groups.values():
        body = [n for n in names if n not in head]
        if body:
            stages.append(body)
            seen.update(body)
    # Parameters no group claims (e.g. a final 1x1 conv before pooling) belong to the last stage.
    stages[-1].extend(n for n in named if n not in seen)
    return [[named[n] for n in stage] for stage in stages]


def head_parameters(model) -> list:
    return list(model.get_classifier().parameters())


def load_trained(run):
    """The run's trained model (eval mode, fp32, CPU): its task's workstation module rebuilds it."""
    from edgetl.tasks import DEFAULT_TASK, get_task

    info = run.get("train")
    if info is None:
        from edgetl.errors import RunDirError

        raise RunDirError(f"{run.path} has no trained model: run `edgetl train --out {run.path}` first")
    return workstation_module(get_task(info.get("task", DEFAULT_TASK))).load_trained(run)


def workstation_module(task):
    """The task's torch-side module (``Task.workstation``): its backbones, options, train and load_trained."""
    import importlib

    if not task.workstation:
        raise ConfigError(f"task {task.name} has no workstation side: edgetl cannot train or rebuild its models")
    return importlib.import_module(task.workstation)


def load_image_classifier(run):
    """An image classifier run's model (eval mode, fp32, CPU), rebuilt from the manifest and the state dict."""
    from edgetl.models.registry import resolve

    info = run.get("train")
    model = create_model(resolve(info["backbone"]), info["num_classes"], pretrained=False)
    ckpt = run.verify(info["checkpoint"])
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(ckpt)))
    return model.eval()
