"""Training benchmark for the embedded backbone on this machine (or its GPU), in two tables:

* images/s of feature extraction (forward only, frozen backbone) and of fine-tuning (forward +
  backward, last 2 stages + head), in fp32 and under mixed precision (``--amp``), side by side with
  their ratio, measured in the same process at the same input size on ``--device``;
* validation top-1 against the number of labelled images per class, pretrained (embedded ImageNet
  weights) against random initialisation, both fine-tuned with the same recipe.

Data: scikit-learn's real handwritten digits (shipped in the wheel), held-out validation set of
50 images per class that no training subset touches.

    .venv/bin/python benchmarks/train_efficiency.py [--sizes 5,10,25] [--image-size 64] [--epochs 12]
    .venv/bin/python benchmarks/train_efficiency.py --device cuda --amp bf16 --batch 128 --no-accuracy
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from edgetl.adapt import device
from edgetl.adapt.options import TrainOptions
from edgetl.adapt.train import train
from edgetl.data.demo import write_digits
from edgetl.models.build import create_model
from edgetl.models.registry import OFFLINE


def _subsets(root: Path, work: Path, sizes: list[int], val_per_class: int = 50) -> tuple[dict[int, Path], Path]:
    val = work / "val"
    subsets = {n: work / f"train-{n}" for n in sizes}
    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(cls.glob("*.png"))
        for f in files[-val_per_class:]:
            (val / cls.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, val / cls.name / f.name)
        for n, dest in subsets.items():
            (dest / cls.name).mkdir(parents=True, exist_ok=True)
            for f in files[:n]:
                shutil.copy(f, dest / cls.name / f.name)
    return subsets, val


def _throughput(execution, image_size: int, batch: int, steps: int = 10) -> tuple[float, float]:
    """(feature extraction, fine-tuning) images/s of the embedded backbone on ``execution``."""
    from edgetl.adapt.finetune import freeze_for_finetune, param_groups

    model = execution.place(create_model(OFFLINE["efficientnet_lite0"], 10))
    x = execution.to(torch.randn(batch, 3, image_size, image_size))
    y = execution.to(torch.randint(0, 10, (batch,)))
    model.eval()
    with torch.inference_mode(), execution.autocast():
        model(x)
        start = _now(execution)
        for _ in range(steps):
            model.forward_head(model.forward_features(x), pre_logits=True)
        forward = batch * steps / (_now(execution) - start)

    trainable, _ = freeze_for_finetune(model, "2")
    opt = torch.optim.AdamW(param_groups(model, trainable, 1e-3, 0.1, 0.5))
    scaler = execution.grad_scaler()
    model.train()
    for i in range(steps + 1):
        if i == 1:  # the first step allocates and picks kernels
            start = _now(execution)
        with execution.autocast():
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    finetune = batch * steps / (_now(execution) - start)
    return forward, finetune


def _now(execution) -> float:
    """The clock after the GPU finished what was queued (CUDA runs asynchronously)."""
    if execution.is_cuda:
        torch.cuda.synchronize(execution.device)
    return time.perf_counter()


def _speed_table(args) -> Table:
    fp32 = device.resolve(args.device, "off", workers=0)
    mixed = device.resolve(args.device, args.amp, workers=0)
    f32, ft32 = _throughput(fp32, args.image_size, args.batch)
    fam, ftam = _throughput(mixed, args.image_size, args.batch)
    table = Table(title=f"EfficientNet-Lite0 images/s on {fp32.label}, {args.image_size}px, batch {args.batch}"
                        f"{'' if fp32.is_cuda else f', {torch.get_num_threads()} threads'}"
                        f"{', channels-last' if fp32.channels_last else ''}")
    for col in ("", "fp32", f"{args.amp} autocast", "ratio"):
        table.add_column(col, justify="right")
    table.add_row("feature extraction", f"{f32:,.0f}", f"{fam:,.0f}", f"{fam / f32:.2f}x")
    table.add_row("fine-tuning (last 2 stages)", f"{ft32:,.0f}", f"{ftam:,.0f}", f"{ftam / ft32:.2f}x")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5,10,25")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (as edgetl train --device)")
    parser.add_argument("--amp", choices=["bf16", "fp16"], default="bf16",
                        help="the mixed precision compared with fp32 (fp16 for GPUs without bf16)")
    parser.add_argument("--batch", type=int, default=32, help="batch of the images/s measurement")
    parser.add_argument("--no-accuracy", action="store_true", help="measure images/s only")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    console = Console()
    console.print(_speed_table(args))
    if args.no_accuracy:
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subsets, val = _subsets(write_digits(work / "digits"), work, sizes)
        rows = []
        for n, folder in subsets.items():
            row = {"n": n}
            for label, pretrained in (("pretrained", True), ("random init", False)):
                # Flips and crops change what a digit means: fine-tune on the images as they are.
                # From scratch the backbone needs the full learning rate, not a tenth of it.
                options = TrainOptions(mode="finetune", unfreeze="all", epochs=args.epochs, pretrained=pretrained,
                                       augment=False, backbone_lr_scale=0.1 if pretrained else 1.0,
                                       image_size=args.image_size, seed=0, device=args.device)
                section = train(folder, options, out=work / f"run-{n}-{pretrained}", val=val)
                row[label] = section["metrics"]["val_top1"]
            probe = train(folder, TrainOptions(mode="feature-extraction", image_size=args.image_size, seed=0,
                                               device=args.device),
                          out=work / f"probe-{n}", val=val)
            row["linear probe"] = probe["metrics"]["val_top1"]
            rows.append(row)

    table = Table(title=f"EfficientNet-Lite0 (embedded) on digits, {args.image_size}px, --device {args.device}")
    for col in ("labelled / class", "linear probe (pretrained)", "finetune pretrained", "finetune random init"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(str(row["n"]), f"{row['linear probe']:.1%}", f"{row['pretrained']:.1%}", f"{row['random init']:.1%}")
    table.caption = ("fine-tuning starts from the linear probe and keeps it when no epoch beats it on validation; "
                     "random init: the same network and recipe from random weights, backbone at the full learning rate")
    console.print(table)


if __name__ == "__main__":
    main()
