"""The tiny text task's workstation side: a mean of word embeddings and a linear head, trained in
a few hundred steps on CPU. What a real task's module provides, in the fewest lines."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from edgetl._io import sha256_json, write_json
from edgetl.adapt.options import _Options
from edgetl.tasks import get_task

TASK = "tiny-text"
BACKBONES = {"bag-of-words": "a mean of 16-d word embeddings (test only)"}
DEFAULT_BACKBONE = "bag-of-words"
WIDTH = 16


class TinyTextOptions(_Options):
    max_words: int = Field(12, ge=2, le=64, description="tiny-text: tokens per sample (longer texts are cut).")


options_model = TinyTextOptions


def build(vocab_size: int, classes: int):
    import torch

    class BagOfWords(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(vocab_size, WIDTH)
            self.head = torch.nn.Linear(WIDTH, classes)

        def forward(self, input_ids, attention_mask):
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.head(pooled)

    return BagOfWords()


def _split(data, opts):
    from edgetl.data.datasets import split_samples

    found = get_task(TASK).read_labelled(Path(data))
    return found, *split_samples(found.indexed(), found.classes, opts.val_split, opts.seed)


def inputs_hash(data, options, *, backbone, val=None) -> str:
    found, _, _ = _split(data, options)
    return sha256_json({"task": TASK, "backbone": backbone, "hparams": options.hashed(TASK),
                        "data": found.content_hash()})


def train(data, options, *, out, backbone, val=None, console=None, reporter=None) -> dict:
    import torch
    from safetensors.torch import save_file

    from edgetl.adapt.train import TrainRecord, write_assets
    from edgetl.rundir import RunDir

    started = time.perf_counter()
    torch.manual_seed(options.seed)
    found, train_rows, val_rows = _split(data, options)
    run = RunDir.create(out)
    words = sorted({w for text, _ in train_rows for w in text.lower().split()})
    vocab = run.path / "train" / "vocab.tmp"
    vocab.parent.mkdir(parents=True, exist_ok=True)
    vocab.write_text("\n".join(["[PAD]", "[UNK]", *words]) + "\n", encoding="utf-8")
    assets = write_assets(run, {"vocab.txt": vocab})
    vocab.unlink()
    preprocess = {"max_length": options.max_words, "vocab": "vocab.txt", "lowercase": True}
    write_json(run.path / "train" / "split.json", {"classes": found.classes, "train": train_rows, "val": val_rows})
    run.set_item("train", "task", TASK)  # the data view reads the task before the section is whole
    run.set_item("train", "preprocess", preprocess)
    run.set_item("train", "assets", assets)
    run.set_item("train", "checkpoint", "train/model.safetensors")

    from edgetl.data.arrays import DataView

    view = DataView(run)
    (x_train, y_train), x_val, y_val = view.part("train"), view.val_feeds(), view.val_labels()
    model = build(len(words) + 2, len(found.classes))
    optim = torch.optim.Adam(model.parameters(), lr=0.05)
    feeds = lambda f: (torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"]))  # noqa: E731
    for epoch in range(options.epochs or 30):
        optim.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(*feeds(x_train)), torch.from_numpy(y_train))
        loss.backward()
        optim.step()
        if reporter is not None:
            reporter.step("train", f"epoch {epoch}: loss {loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        top1 = float((model(*feeds(x_val)).argmax(1).numpy() == y_val).mean())
    ckpt = run.path / "train" / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    run.record(ckpt, run.path / "train" / "split.json")
    counts = found.counts()
    record = TrainRecord.model_validate({
        "task": TASK, "backbone": backbone, "arch": backbone, "head": "linear", "num_classes": len(found.classes),
        "classes": found.classes, "preprocess": preprocess, "assets": assets, "checkpoint": "train/model.safetensors",
        "mode": options.mode, "hparams": options.hparams(TASK),
        "dataset": {"source": str(data), "hash": found.content_hash(), "train_images": len(train_rows),
                    "val_images": len(val_rows), "counts": counts},
        "metrics": {"val_top1": top1, "seconds": time.perf_counter() - started},
        "inputs_hash": inputs_hash(data, options, backbone=backbone, val=val),
    })
    run.set_record(record)
    return record.dump()


def load_trained(run):
    from safetensors.torch import load_file

    info = run.get("train")
    state = load_file(str(run.verify(info["checkpoint"])))
    model = build(state["embed.weight"].shape[0], info["num_classes"])
    model.load_state_dict(state)
    return model.eval()
