"""Adding classes without forgetting: old-class top-1 after `edgetl train --from` adds digits 5-9
to a model of digits 0-4, for naive fine-tuning on the new data only, distillation alone,
rehearsal alone, rehearsal + distillation (the default), and joint training on all data (the
upper bound).

    python benchmarks/continual.py                                  # 32 px, finetune, 3 epochs
    python benchmarks/continual.py --size 48 --epochs 5 --per-class 100

The data: scikit-learn's real digit scans (edgetl/data/demo.py), per class split seeded into
training and validation images once, so every row is judged on the same images. The parent is
trained on 0-4; each continual row is one `edgetl train --data <5-9> --from parent` with the
row's --memory and --distill-weight; old/new/all are the lineage's numbers (the validation split
of the child: the parent's plus the new classes'). Joint trains one model on 0-9 from the backbone's
ImageNet weights, scored on the same validation images.

Measured (2 shared CPU cores, one thread; efficientnet_lite0; old-class top-1 after adding; the
first command above / `--per-class 100 --seed 1`, 75 / 125 old-class validation images):

    run                                         old before    old after     new after
    naive fine-tune (--memory 0 --distill 0)    86.7 / 92.0    0.0 / 23.2   81.3 / 72.8
    distillation only (--memory 0)              86.7 / 92.0   16.0 / 20.0   86.7 / 72.8
    rehearsal only (--distill-weight 0)         86.7 / 92.0   77.3 / 86.4   89.3 / 91.2
    rehearsal + distillation (defaults)         86.7 / 92.0   84.0 / 83.2   86.7 / 92.0
    joint training on 0-9 (upper bound)              -        84.0 / 87.2   85.3 / 84.0

Rehearsal keeps the old classes near joint training; distillation alone does not (no old image in
the data); distillation on top of rehearsal is within the intervals (+6.7, -3.2 points).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

OLD, NEW = [str(d) for d in range(5)], [str(d) for d in range(5, 10)]
ROWS = (("naive fine-tune (new data only)", 0, 0.0), ("distillation only (LwF)", 0, 1.0),
        ("rehearsal only", 20, 0.0), ("rehearsal + distillation", 20, 1.0))


def split_folders(root: Path, per_class: int, val_fraction: float, seed: int) -> None:
    """root/{train,val}/<digit>/*.png from the demo digits, split seeded per class."""
    from edgetl.data.demo import write_digits

    digits = write_digits(root / "all", per_class=per_class)
    rng = np.random.default_rng(seed)
    for label in OLD + NEW:
        files = sorted((digits / label).glob("*.png"))
        order = rng.permutation(len(files))
        n_val = round(len(files) * val_fraction)
        for part, idx in (("val", order[:n_val]), ("train", order[n_val:])):
            dest = root / part / label
            dest.mkdir(parents=True)
            for i in idx:
                shutil.copy(files[i], dest / files[i].name)


def subset(root: Path, part: str, labels: list[str]) -> Path:
    """A folder of ``part``'s class folders for ``labels`` only (links, no copies)."""
    dest = root / f"{part}-{labels[0]}-{labels[-1]}"
    if not dest.exists():
        dest.mkdir()
        for label in labels:
            (dest / label).symlink_to(root / part / label, target_is_directory=True)
    return dest


def old_top1(section: dict) -> float:
    """Old-class top-1 of a run trained on every class: the per-class top-1 weighted by images."""
    counts, per_class = section["dataset"]["val_counts"], section["metrics"]["per_class_val_top1"]
    return sum(per_class[c] * counts[c] for c in OLD) / sum(counts[c] for c in OLD)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--head-epochs", type=int, default=30)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--mode", default="finetune")
    parser.add_argument("--backbone", default=None, help="default: edgetl's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from edgetl.adapt.options import TrainOptions
    from edgetl.adapt.train import train

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    console = Console(width=160)
    opts = TrainOptions(mode=args.mode, image_size=args.size, epochs=args.epochs, head_epochs=args.head_epochs,
                        seed=args.seed, transfer_check=False)
    child_opts = TrainOptions(mode=args.mode, epochs=args.epochs, head_epochs=args.head_epochs, seed=args.seed,
                              transfer_check=False)
    table = Table(title=f"digits 0-4 then +5-9, {args.size} px, {args.mode}, {args.epochs} epochs, "
                        f"{args.per_class} scans per class")
    for column in ("run", "old before", "old after", "new after", "all after", "seconds"):
        table.add_column(column, justify="left" if column == "run" else "right")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        split_folders(root, args.per_class, 0.25, args.seed)
        backbone = {"backbone": args.backbone} if args.backbone else {}
        started = time.perf_counter()
        parent = train(subset(root, "train", OLD), opts, out=root / "parent", val=subset(root, "val", OLD),
                       **backbone)
        console.print(f"parent (0-4): val top-1 {parent['metrics']['val_top1']:.1%} "
                      f"({time.perf_counter() - started:.0f} s)")
        for name, memory, distill in ROWS:
            started = time.perf_counter()
            section = train(subset(root, "train", NEW), child_opts, out=root / name.replace(" ", "_"),
                            val=subset(root, "val", NEW), from_run=root / "parent", memory=memory,
                            distill_weight=distill)
            f = section["lineage"]["forgetting"]
            table.add_row(f"{name} (--memory {memory} --distill-weight {distill:g})",
                          *(f"{f[k]['top1']:.1%} [{f[k]['low']:.0%}, {f[k]['high']:.0%}]"
                            for k in ("old_before", "old_after", "new_after", "all_after")),
                          f"{time.perf_counter() - started:.0f}")
            table.caption = f"top-1 [Wilson 95% interval]; {f['old_after']['n']} old / {f['new_after']['n']} new images"
            console.print(f"{name}: old {f['old_after']['top1']:.1%}, new {f['new_after']['top1']:.1%}")
        started = time.perf_counter()
        joint = train(root / "train", opts, out=root / "joint", val=root / "val", **backbone)
        per_class, counts = joint["metrics"]["per_class_val_top1"], joint["dataset"]["val_counts"]
        new = sum(per_class[c] * counts[c] for c in NEW) / sum(counts[c] for c in NEW)
        table.add_row("joint training on 0-9 (upper bound)", "-", f"{old_top1(joint):.1%}", f"{new:.1%}",
                      f"{joint['metrics']['val_top1']:.1%}", f"{time.perf_counter() - started:.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
