"""One backbone with two heads against one model per task: batch-1 latency and per-task accuracy.

Data: scikit-learn's real handwritten digits (10 classes) at ``--size`` pixels, one fixed,
seeded, stratified 80/20 split written as train/ and val/ folders, so every model sees the same
images. Task 1: the digit (the folder classes). Task 2: its parity (odd/even), a real property
of each image, given as a ``--task-head`` CSV to the joint model and as even/ odd/ folders (links
to the same files) to its own model.

Three trainings with the same options and seed: joint (``--task-head parity=...``), digit only,
parity only. Each is compiled for ONNX Runtime at ``--precision`` (one thread). Latency: batch-1,
real validation images, the joint artifact against the two single-task artifacts run one after
the other, interleaved round by round on the same input so load on the machine hits both alike;
p50 of each and their ratio. Accuracy: each artifact's top-1 on the validation split (compile's
numbers: the artifact in its runtime), per task.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/multitask.py [--size 64] [--mode finetune]

Measured on a shared 2-core CPU (efficientnet_lite0, 64 px, --mode finetune --unfreeze 1, 3 epochs,
1,442 train / 355 val, 2,000 rounds)::

    model(s)                          batch-1 p50 ms  digit top-1  parity top-1  size MB
    joint: one artifact, two outputs           4.391       96.90%        97.18%    13.49
    separate: digit then parity               11.005       96.90%        97.18%    26.92
    latency ratio separate / joint: 2.51x

The joint and the digit-only runs kept their linear probe (fine-tuning peaked at 96.62% and 96.34%);
the parity-only run kept its fine-tuned weights, 345/355 as the joint run's parity head.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgetl.adapt.options import TrainOptions
from edgetl.adapt.train import train
from edgetl.backends import get_backend
from edgetl.compiler import compile as compile_run
from edgetl.data.arrays import DataView
from edgetl.data.demo import write_digits
from edgetl.rundir import RunDir


def parity(digit: str) -> str:
    return "odd" if int(digit) % 2 else "even"


def write_layout(source: Path, root: Path, seed: int) -> tuple[Path, Path, Path]:
    """digits/{train,val}/<digit>/ (a seeded stratified 80/20 split), parity/{train,val}/{even,odd}/
    (links to the same files) and parity.csv (paths relative to digits/)."""
    rng = np.random.default_rng(seed)
    digits, parities, rows = root / "digits", root / "parity", []
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.png"))
        val = set(rng.choice(len(files), size=len(files) // 5, replace=False).tolist())
        for i, image in enumerate(files):
            part = "val" if i in val else "train"
            for dest in (digits / part / folder.name / image.name,
                         parities / part / parity(folder.name) / f"{folder.name}-{image.name}"):
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.symlink_to(image.resolve())
            rows.append((f"{part}/{folder.name}/{image.name}", parity(folder.name)))
    labels = root / "parity.csv"
    with open(labels, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("path", "label"), *rows])
    return digits, parities, labels


def trained(data: Path, out: Path, opts: TrainOptions, **heads) -> RunDir:
    started = time.perf_counter()
    train(data, opts, out=out, **heads)
    rows = compile_run(out, ["onnxruntime"], [opts_precision], threads=1, progress=False)
    assert all(r["status"] != "failed" for r in rows), rows
    print(f"{out.name}: trained and compiled in {time.perf_counter() - started:.0f} s", flush=True)
    return RunDir.open(out)


def artifact(run: RunDir) -> tuple[Path, dict]:
    entry = run.manifest["compiled"][f"onnxruntime/{opts_precision}"]
    return run.path / entry["path"], entry["accuracy"]


def p50_pair(joint: Path, first: Path, second: Path, feeds: dict, rounds: int) -> tuple[float, float]:
    """Batch-1 p50 (ms) of the joint artifact and of the two single-task ones run back to back."""
    backend = get_backend("onnxruntime")
    sessions = [backend.load(p, threads=1) for p in (joint, first, second)]
    inputs = [{"input": feeds["input"][i : i + 1]} for i in range(min(32, len(feeds["input"])))]
    for s in sessions:  # warm-up
        for x in inputs:
            s.run(x)
    joint_ms, separate_ms = [], []
    for r in range(rounds):
        x = inputs[r % len(inputs)]
        begun = time.perf_counter()
        sessions[0].run(x)
        joint_ms.append((time.perf_counter() - begun) * 1e3)
        begun = time.perf_counter()
        sessions[1].run(x)
        sessions[2].run(x)
        separate_ms.append((time.perf_counter() - begun) * 1e3)
    for s in sessions:
        s.close()
    return float(np.median(joint_ms)), float(np.median(separate_ms))


def main() -> None:
    global opts_precision
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--mode", default="finetune", choices=("feature-extraction", "finetune"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    opts_precision = args.precision
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = args.work or Path(tempfile.mkdtemp(prefix="edgetl-multitask-"))
    source = write_digits(work / "source", size=args.size)
    digits, parities, labels = write_layout(source, work / "data", args.seed)
    extra = {"unfreeze": "1", "augment": "off", "epochs": args.epochs} if args.mode == "finetune" else {}
    opts = TrainOptions(mode=args.mode, image_size=args.size, seed=args.seed, **extra)

    joint = trained(digits, work / "runs" / "joint", opts, task_heads={"parity": str(labels)})
    digit = trained(digits, work / "runs" / "digit", opts)
    odd = trained(parities, work / "runs" / "parity", opts)

    (joint_path, joint_acc), (digit_path, digit_acc), (parity_path, parity_acc) = map(artifact, (joint, digit, odd))
    feeds = DataView(joint).val_feeds()
    joint_ms, separate_ms = p50_pair(joint_path, digit_path, parity_path, feeds, args.rounds)

    table = Table(title=f"one backbone, two heads vs one model per task (digits {args.size} px, {args.mode}, "
                        f"ONNX Runtime {args.precision}, 1 thread)", title_justify="left")
    for col in ("model(s)", "batch-1 p50 ms", "digit top-1", "parity top-1", "size MB"):
        table.add_column(col, justify="left" if col == "model(s)" else "right")
    size = lambda p: p.stat().st_size / 1e6  # noqa: E731
    table.add_row("joint: one artifact, two outputs", f"{joint_ms:.3f}", f"{joint_acc['top1']:.2%}",
                  f"{joint_acc['heads']['parity']['top1']:.2%}", f"{size(joint_path):.2f}")
    table.add_row("separate: digit then parity", f"{separate_ms:.3f}", f"{digit_acc['top1']:.2%}",
                  f"{parity_acc['top1']:.2%}", f"{size(digit_path) + size(parity_path):.2f}")
    console = Console(width=140)
    console.print(table)
    n = joint_acc["n"]
    console.print(f"latency ratio separate / joint: {separate_ms / joint_ms:.2f}x ({args.rounds} interleaved rounds); "
                  f"val images: {n}; work folder: {work}")
    print(json.dumps({"joint_p50_ms": joint_ms, "separate_p50_ms": separate_ms, "ratio": separate_ms / joint_ms,
                      "joint": {"digit": joint_acc["top1"], "parity": joint_acc["heads"]["parity"]["top1"]},
                      "separate": {"digit": digit_acc["top1"], "parity": parity_acc["top1"]}, "n": n}))


opts_precision = "fp32"

if __name__ == "__main__":
    main()
