"""Text classification on real reviews: feature extraction vs fine-tuning, int8 per runtime and
scheme, batch-1 latency against PyTorch eager, bundle size.

    python benchmarks/text_classification.py                       # 2 x 1,000 movie reviews
    python benchmarks/text_classification.py --source sms --per-class 700 --finetune-epochs 1 --unfreeze all

Trains two runs on the same seeded split (``--out``/feature-extraction and /finetune) of the demo
text (``edgetl.data.demo_text``; a run already trained on the same inputs is reused). On the
feature-extraction run's ONNX export it quantizes for ONNX Runtime with dynamic int8 of MatMul/Gemm
per-channel (the task's choice), dynamic int8 of every op per-tensor, static QDQ of every op, and
static QDQ of MatMul/Gemm per-channel, and compiles OpenVINO fp32 and int8 (NNCF's transformer type,
the task's choice). Each artifact is scored on the whole validation split against the FP32 PyTorch
reference and timed at batch 1 on ``--threads`` threads at the data's median and longest token
count (at most max_length), as is PyTorch eager on the same threads (the fair reference).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import edgetl
from edgetl.backends import get_backend
from edgetl.backends._qdq import quantize_dynamic_int8, quantize_qdq
from edgetl.bundle.create import create_bundle
from edgetl.compiler import compile as compile_run
from edgetl.config import CalibrationRecipe
from edgetl.data.arrays import DataView
from edgetl.data.demo_text import write_demo_text
from edgetl.export.onnx import export_run
from edgetl.models.build import load_trained
from edgetl.rundir import RunDir
from edgetl.tasks.text_classification import QUANTIZATION

TASK = "text-classification"


def p50_ms(run_once, repeats: int) -> float:
    for _ in range(5):
        run_once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_once()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def feeds_of_length(length: int, vocab: int = 30000, seed: int = 0) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1000, vocab, (1, length), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def scores(logits: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    from edgetl.tasks.text_classification import macro_f1

    pred = logits.argmax(1)
    return {"top1": float((pred == labels).mean()), "agreement": float((pred == reference.argmax(1)).mean()),
            "macro_f1": macro_f1(pred, labels, logits.shape[1])}


def run_session(session, feeds: dict[str, np.ndarray], batch: int = 32) -> np.ndarray:
    n = len(feeds["input_ids"])
    return np.concatenate([session.run({k: v[i: i + batch] for k, v in feeds.items()})["logits"]
                           for i in range(0, n, batch)])


def trained_run(data: Path, options, out: Path) -> tuple[dict, float]:
    """The train section and its seconds; a run already trained on the same inputs is reused."""
    from edgetl.adapt.train import train_inputs_hash

    done = RunDir(out).get("train") if (out / "manifest.json").is_file() else None
    if done and done["inputs_hash"] == train_inputs_hash(data, options, task=TASK):
        return done, done["metrics"]["seconds"]
    start = time.perf_counter()
    section = edgetl.train(data, options, task=TASK, out=out)
    return section, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="reviews", choices=["reviews", "sms"])
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--out", default="runs/bench-text")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--unfreeze", default="2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    console = Console()
    out = Path(args.out)
    data = write_demo_text(out / f"{args.source}.csv", args.source, args.per_class)

    trained = {}
    for name, options in (("feature-extraction", edgetl.TrainOptions()),
                          ("finetune", edgetl.TrainOptions(mode="finetune", epochs=args.finetune_epochs,
                                                           unfreeze=args.unfreeze))):
        trained[name] = trained_run(data, options, out / name)
    table = Table(title=f"training on {args.source} ({args.per_class} per class, 80/20 split)")
    for col in ("mode", "val top-1", "val macro-F1", "kept", "seconds"):
        table.add_column(col)
    for name, (section, seconds) in trained.items():
        m = section["metrics"]
        table.add_row(name, f"{m['val_top1']:.2%}", f"{m['val_macro_f1']:.3f}",
                      f"{m['kept']['phase']} epoch {m['kept']['epoch']}", f"{seconds:.0f}")
    console.print(table)

    run = RunDir.open(out / "feature-extraction")
    view = DataView(run)
    feeds, labels, reference = view.val_feeds(), view.val_labels(), view.reference()["logits"]
    tokens = run.manifest["train"]["dataset"]["tokens"]
    max_length = run.manifest["train"]["preprocess"]["max_length"]
    lengths = {"median": tokens["median_tokens"], "longest": min(tokens["longest_tokens"], max_length)}
    onnx_path = export_run(run, view=view)
    calibration = view.calibration_feeds(CalibrationRecipe(name="bench", samples=300))
    ort = get_backend("onnxruntime")

    rows = []
    model = load_trained(run)
    for label, length in lengths.items():
        f = {k: torch.from_numpy(v) for k, v in feeds_of_length(length).items()}
        with torch.inference_mode():
            rows.append(("pytorch eager fp32", label, length, None, p50_ms(lambda f=f: model(**f), args.repeats)))
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"onnxruntime fp32": onnx_path}
        chosen = QUANTIZATION["onnxruntime"]
        variants["onnxruntime int8 dynamic, MatMul/Gemm per-channel (chosen)"] = Path(tmp) / "dyn.onnx"
        quantize_dynamic_int8(onnx_path, Path(tmp) / "dyn.onnx", reduce_range=chosen["reduce_range"],
                              op_types=chosen["op_types"], per_channel=chosen["per_channel"])
        variants["onnxruntime int8 dynamic, every op per-tensor"] = Path(tmp) / "dyn-all.onnx"
        quantize_dynamic_int8(onnx_path, Path(tmp) / "dyn-all.onnx", reduce_range=False)
        variants["onnxruntime int8 static, all ops"] = Path(tmp) / "all.onnx"
        quantize_qdq(onnx_path, variants["onnxruntime int8 static, all ops"], calibration,
                     CalibrationRecipe(name="bench"), activation_type="uint8", weight_type="int8", reduce_range=False)
        variants["onnxruntime int8 static, MatMul/Gemm per-channel"] = Path(tmp) / "mm.onnx"
        quantize_qdq(onnx_path, variants["onnxruntime int8 static, MatMul/Gemm per-channel"], calibration,
                     CalibrationRecipe(name="bench"), activation_type="uint8", weight_type="int8",
                     reduce_range=False, op_types=["MatMul", "Gemm"])
        for name, path in variants.items():
            with ort.load(path, threads=args.threads) as session:
                acc = scores(run_session(session, feeds), labels, reference)
                for label, length in lengths.items():
                    f = feeds_of_length(length)
                    rows.append((name, label, length, acc, p50_ms(lambda s=session, f=f: s.run(f), args.repeats)))
                console.print(name, acc, rows[-2:])
        compile_run(run.path, "host-openvino", "fp32,int8", threads=args.threads, progress=False)
        ov = get_backend("openvino")
        for precision in ("fp32", "int8"):
            entry = run.manifest["compiled"][f"host-openvino/{precision}"]
            with ov.load(run.path / entry["path"], threads=args.threads) as session:
                acc = scores(run_session(session, feeds), labels, reference)
                for label, length in lengths.items():
                    f = feeds_of_length(length)
                    name = f"openvino {precision}" + (" NNCF transformer (chosen)" if precision == "int8" else "")
                    rows.append((name, label, length, acc, p50_ms(lambda s=session, f=f: s.run(f), args.repeats)))

    ref = scores(reference, labels, reference)
    table = Table(title=f"artifacts of the feature-extraction run: {len(labels)} val texts, FP32 PyTorch top-1 "
                        f"{ref['top1']:.2%}; batch-1 p50 on {args.threads} thread(s)")
    for col in ("artifact", "tokens", "top-1", "drop pp", "agreement", "macro-F1", "p50 ms", "x eager"):
        table.add_column(col)
    eager = {label: ms for name, label, _, _, ms in rows if name.startswith("pytorch")}
    for name, label, length, acc, ms in rows:
        cells = ([f"{acc['top1']:.2%}", f"{(ref['top1'] - acc['top1']) * 100:+.1f}", f"{acc['agreement']:.1%}",
                  f"{acc['macro_f1']:.3f}"] if acc else ["", "", "", ""])
        table.add_row(name, f"{label} {length}", *cells, f"{ms:.2f}", f"{eager[label] / ms:.2f}x")
    console.print(table)

    for target in ("host-cpu",):
        compile_run(run.path, target, "int8", threads=args.threads, progress=False)
        path = create_bundle(run.path, target, "int8")
        console.print(f"bundle {target} int8: {Path(path).stat().st_size / 1e6:.1f} MB ({path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
