"""Few-shot enrolment of classes the model never saw, against a linear head trained on the same shots.

Data: scikit-learn's real handwritten digits (shipped in the wheel). The run is trained on the
digits 0-6 only (the embedded pretrained EfficientNet-Lite0, fine-tuned), bundled with
``edgetl bundle --head prototype`` for ONNX Runtime fp32, and the digits 7, 8 and 9 are enrolled
afterwards. For each of ``--draws`` random draws and each k in ``--shots``, k images of each held-out
digit are drawn; every other image of those digits is the test set. All embeddings come from the
bundle's own artifact on its runtime (what a device computes); then

* prototype (3-way): top-1 among the three enrolled classes only, prototypes = ``enrol`` of the shots;
* prototype (10-way): the same images among all ten classes (the bundle's 7 trained prototypes
  plus the 3 enrolled), i.e. what ``edgetl predict`` answers after three ``edgetl enroll`` calls;
  and the base classes' validation top-1 before/after (enrolment never changes their rows);
* linear head (3-way): logistic regression (scikit-learn, L2, C=1, on the L2-normalised embeddings)
  trained on the same shots' embeddings: the workstation alternative;
* linear head (10-way): the same, trained on the base classes' training embeddings plus the shots
  (classes weighted by inverse frequency), scored on the same held-out images among all ten.

Every column is computed for two transforms of the embeddings: "L2N", L2-normalised as the bundle's
head does, and "CL2N", centred on the mean embedding of the run's training split first (SimpleShot,
Wang et al. 2019), with the linear heads trained on the same transformed embeddings.

Mean and spread (standard deviation, min-max) over the draws. One draw's 5-shot enrolment also
goes through the real ``edgetl enroll`` and ``predict`` path, and must agree with the numbers here.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/enroll.py [--draws 10] [--shots 1,5,10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgetl.adapt.options import TrainOptions
from edgetl.adapt.train import train
from edgetl.bundle import prototype
from edgetl.bundle.create import create_bundle
from edgetl.bundle.enroll import enroll
from edgetl.bundle.runner import open_bundle, open_session, predict
from edgetl.data.arrays import load_split
from edgetl.data.demo import write_digits
from edgetl.rundir import RunDir

BASE, HELD_OUT = [str(d) for d in range(7)], ["7", "8", "9"]


def _embed(bundle, paths: list[Path], chunk: int = 64) -> np.ndarray:
    """The bundle's embeddings of ``paths`` on its runtime (the device's computation)."""
    out = []
    with open_session(bundle) as session:
        for i in range(0, len(paths), chunk):
            out.append(session.run(bundle.task.preprocess(paths[i:i + chunk], bundle.record))[prototype.EMBEDDING])
    return np.concatenate(out)


def _linear_head(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, center: np.ndarray,
                 balanced: bool = False) -> np.ndarray:
    """A logistic regression trained on the workstation, on the same transformed embeddings as the head."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced" if balanced else None)
    return model.fit(prototype.normalise(train_x - center), train_y).predict(prototype.normalise(test_x - center))


def _stats(values: list[float]) -> str:
    v = np.array(values) * 100
    return f"{v.mean():.1f} ± {v.std():.1f} ({v.min():.0f}-{v.max():.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shots", default="1,5,10")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--work", help="Folder for the data and the run (default: a temporary one).")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # the machine's cores are shared
    shots = [int(s) for s in args.shots.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="edgetl-enroll-"))
    digits = write_digits(work / "digits", size=32)
    base = work / "base"
    if not base.exists():
        for d in BASE:
            shutil.copytree(digits / d, base / d)
    run_path = work / "runs" / "digits0-6"
    options = TrainOptions(mode="finetune", image_size=args.image_size, epochs=args.epochs, head_epochs=30,
                           augment="off", transfer_check=False, seed=0)
    train(base, options, out=run_path)
    bundle_path = create_bundle(run_path, "onnxruntime", "fp32", head="prototype", release=1)
    run = RunDir.open(run_path)
    bundle = open_bundle(bundle_path)
    print(f"run: {run_path} (digits 0-6, classifier val top-1 {run.manifest['train']['metrics']['val_top1']:.3f}); "
          f"embedding D={bundle.prototypes.shape[1]}; prototype head top-1 on the base val split "
          f"{run.manifest['compiled']['onnxruntime/prototype']['accuracy']['top1']:.3f}")

    held = {d: sorted((digits / d).glob("*.png")) for d in HELD_OUT}
    held_emb = {d: _embed(bundle, paths) for d, paths in held.items()}
    split = load_split(run)
    train_emb = _embed(bundle, [Path(p) for p, _ in split["train"]])
    train_y = np.array([label for _, label in split["train"]])
    val_emb = _embed(bundle, [Path(p) for p, _ in split["val"]])
    val_y = np.array([label for _, label in split["val"]])
    # the two embedding transforms compared: raw L2-normalised (the bundle's head), and centred on the
    # training split's    # mean embedding then L2-normalised ("CL2N", SimpleShot): the head's functions given x - center
    variants = {"L2N": np.zeros(train_emb.shape[1], np.float32), "CL2N": train_emb.mean(axis=0)}
    base_rows = {v: prototype.class_prototypes(train_emb - c, train_y, len(BASE)) for v, c in variants.items()}
    base_top1 = {v: float(np.mean(prototype.logits(val_emb - c, base_rows[v], 16).argmax(1) == val_y))
                 for v, c in variants.items()}

    rng = np.random.default_rng(0)
    results = {(v, k): {"proto3": [], "proto10": [], "linear3": [], "linear10": [], "base10": []}
               for v in variants for k in shots}
    check_draw = None
    for _ in range(args.draws):
        for k in shots:
            picks = {d: rng.permutation(len(held[d])) for d in HELD_OUT}
            shot_x = np.concatenate([held_emb[d][picks[d][:k]] for d in HELD_OUT])
            shot_y = np.repeat(np.arange(3), k)
            test_x = np.concatenate([held_emb[d][picks[d][k:]] for d in HELD_OUT])
            test_y = np.concatenate([np.full(len(picks[d]) - k, i) for i, d in enumerate(HELD_OUT)])
            for v, c in variants.items():
                new_rows = np.stack([prototype.enrol(shot_x[shot_y == i] - c) for i in range(3)])
                all_rows = np.vstack([base_rows[v], new_rows])
                r = results[v, k]
                r["proto3"].append(float(np.mean(prototype.logits(test_x - c, new_rows, 16).argmax(1) == test_y)))
                r["proto10"].append(float(np.mean(prototype.logits(test_x - c, all_rows, 16).argmax(1) == test_y + 7)))
                r["base10"].append(float(np.mean(prototype.logits(val_emb - c, all_rows, 16).argmax(1) == val_y)))
                r["linear3"].append(float(np.mean(_linear_head(shot_x, shot_y, test_x, c) == test_y)))
                # 10-way linear head: the base classes' training embeddings plus the same shots, classes
                # weighted by their inverse frequency (unweighted, a thousand base images drown k shots)
                ten = _linear_head(np.vstack([train_emb, shot_x]), np.concatenate([train_y, shot_y + 7]),
                                   test_x, c, balanced=True)
                r["linear10"].append(float(np.mean(ten == test_y + 7)))
            if check_draw is None and k == 5:  # the bundle's head is the raw L2N one
                check_draw = {d: [held[d][j] for j in picks[d][:k]] for d in HELD_OUT}, \
                    {d: [held[d][j] for j in picks[d][k:]] for d in HELD_OUT}, results["L2N", k]["proto10"][-1]

    # the real device path for one 5-shot draw: three `edgetl enroll` calls, then `predict`
    if check_draw is not None:
        enrolled, test, expected = check_draw
        current = bundle_path
        for d in HELD_OUT:
            current = enroll(current, d, enrolled[d], out=work / f"enrolled-{d}.tar.gz").path
        rows = predict(current, [str(p) for d in HELD_OUT for p in test[d]], top=1)
        truth = [d for d in HELD_OUT for _ in test[d]]
        got = float(np.mean([r["top"][0]["label"] == t for r, t in zip(rows, truth, strict=True)]))
        print(f"edgetl enroll x3 + predict (one 5-shot draw, 10-way): top-1 {got:.3f}; "
              f"computed here {expected:.3f}")

    table = Table("embedding", "shots per class", "prototype, 3-way", "linear head, 3-way", "prototype, 10-way",
                  "linear head, 10-way", "base classes after, 10-way",
                  title=f"top-1 % on held-out digits 7-9 (mean ± sd (min-max) over {args.draws} draws; base "
                  "classes before: " + ", ".join(f"{v} {t * 100:.1f}" for v, t in base_top1.items()) + ")")
    for v in variants:
        for k in shots:
            r = results[v, k]
            table.add_row(v, str(k), _stats(r["proto3"]), _stats(r["linear3"]), _stats(r["proto10"]),
                          _stats(r["linear10"]), _stats(r["base10"]))
    Console(width=200).print(table)
    print(f"test images per draw: {sum(len(v) for v in held.values())} - 3 x shots; work folder: {work}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
