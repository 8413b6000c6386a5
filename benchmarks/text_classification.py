"""Text classification on real reviews: feature extraction vs fine-tuning, int8 per runtime and
scheme, batch-1 latency against PyTorch eager, bundle size.

    python benchmarks/text_classification.py                       # 2 x 1,000 movie reviews
    python benchmarks/text_classification.py --int8-only --threads 1,2   # the int8 comparison table alone
    python benchmarks/text_classification.py --source sms --per-class 700 --finetune-epochs 1 --unfreeze all

Trains two runs on the same seeded split (``--out``/feature-extraction and /finetune) of the demo
text (``edgetl.data.demo_text``; a run already trained on the same inputs is reused; ``--int8-only``:
the feature-extraction run alone). On its ONNX export it builds every int8 scheme worth comparing:
for ONNX Runtime, dynamic int8 (MatMul/Gemm per-channel, or every op per-tensor), static QDQ (every
op, or MatMul/Gemm per-channel), and ONNX Runtime's transformer fusion (``_qdq.fuse_transformer``)
in fp32 and before dynamic int8; for OpenVINO, NNCF's transformer type (with and without
SmoothQuant) and NNCF weight-only int8 (asymmetric and symmetric), the latter also loaded with the CPU
plugin's dynamic quantization of activations switched off (``DYNAMIC_QUANTIZATION_GROUP_SIZE`` 0; its
default on CPU is 32). Each artifact is scored on the whole validation split against the FP32
PyTorch reference and timed at batch 1 on each of ``--threads`` at the data's median and longest
token count (at most max_length), as is PyTorch eager on the same threads (the fair reference): p50
of ``--rounds`` rounds of ``--repeats`` runs, with the lowest and highest round's p50 (the spread)
and the 1-minute load average (another process on the machine shows there). The chosen scheme per
runtime (``QUANTIZATION`` in edgetl/tasks/text_classification.py) is marked.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import edgetl
from edgetl.backends import get_backend
from edgetl.backends._qdq import fuse_transformer, quantize_dynamic_int8, quantize_qdq
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


def p50_ms(run_once, repeats: int, rounds: int = 3) -> tuple[float, float, float]:
    """The median of ``rounds`` round p50s, and the lowest and highest round p50 (the spread)."""
    for _ in range(5):
        run_once()
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run_once()
            times.append((time.perf_counter() - start) * 1e3)
        medians.append(statistics.median(times))
    return statistics.median(medians), min(medians), max(medians)


def feeds_of_length(length: int, vocab: int = 30000, seed: int = 0) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1000, vocab, (1, length), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def scores(logits: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    from edgetl.tasks.text_classification import macro_f1

    pred = logits.argmax(1)
    return {"top1": float((pred == labels).mean()), "agreement": float((pred == reference.argmax(1)).mean()),
            "macro_f1": macro_f1(pred, labels, logits.shape[1]),
            "max_abs_diff": float(np.abs(logits - reference).max())}


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


class OpenVinoLoadHint:
    """An OpenVINO IR on the CPU plugin as the backend loads it, with DYNAMIC_QUANTIZATION_GROUP_SIZE
    set (0: off): the load-time alternative the bench compares, not a shipped setting."""

    def __init__(self, path: Path, threads: int, group_size: int):
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32",
                  "INFERENCE_NUM_THREADS": threads, "DYNAMIC_QUANTIZATION_GROUP_SIZE": group_size}
        self._request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()

    def run(self, feeds):
        return {"logits": self._request.infer(feeds)[0]}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._request = None


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in (path, path.with_suffix(".bin")) if p.is_file()) / 1e6


def shipped(runtime: str, hint: dict) -> bool:
    """Whether ``hint`` is the scheme QUANTIZATION ships for ``runtime`` (its ``why`` aside)."""
    ships = {k: v for k, v in QUANTIZATION[runtime].items() if k != "why"}
    return {**ships, **hint} == ships and set(hint) >= set(ships) - {"reduce_range"}


def ort_variants(onnx_path: Path, tmp: Path, calibration) -> dict[str, tuple[Path, bool]]:
    """name -> (ONNX file, shipped) of every ONNX Runtime scheme compared (fp32 first)."""
    fused = tmp / "fused.onnx"
    fuse_transformer(onnx_path, fused, "bert")
    built = {"onnxruntime fp32": (onnx_path, False), "onnxruntime fp32, transformer fusion": (fused, False)}
    mm = {"op_types": ["MatMul", "Gemm"], "per_channel": True}
    dynamic = {"int8 dynamic, MatMul/Gemm per-channel": mm,
               "int8 dynamic, every op per-tensor": {},
               "int8 fusion + dynamic, MatMul/Gemm per-channel": {**mm, "fusion": "bert"},
               "int8 fusion + dynamic, every op per-channel": {"per_channel": True, "fusion": "bert"}}
    for i, (name, hint) in enumerate(dynamic.items()):
        quantize_dynamic_int8(onnx_path, tmp / f"dyn{i}.onnx", reduce_range=False, **hint)
        built[f"onnxruntime {name}"] = (tmp / f"dyn{i}.onnx", shipped("onnxruntime", {"scheme": "dynamic", **hint}))
    for file, (name, op_types) in {"all.onnx": ("int8 static, all ops", None),
                                   "mm.onnx": ("int8 static, MatMul/Gemm per-channel", ["MatMul", "Gemm"])}.items():
        quantize_qdq(onnx_path, tmp / file, calibration, CalibrationRecipe(name="bench"), activation_type="uint8",
                     weight_type="int8", reduce_range=False, op_types=op_types)
        built[f"onnxruntime {name}"] = (tmp / file, False)
    return built


def ov_variants(onnx_path: Path, tmp: Path, calibration) -> dict[str, tuple[Path, bool]]:
    """name -> (IR, shipped) of every OpenVINO scheme compared, built by the backend with each hint."""
    ov = get_backend("openvino")
    hints = {"fp32": ("fp32", None),
             "int8 NNCF transformer": ("int8", {"model_type": "transformer"}),
             "int8 NNCF transformer, no SmoothQuant": ("int8", {"model_type": "transformer", "smooth_quant": False}),
             "int8 weight-only asym": ("int8", {"scheme": "weights", "weights_mode": "int8_asym"}),
             "int8 weight-only sym": ("int8", {"scheme": "weights", "weights_mode": "int8_sym"})}
    built = {}
    for i, (name, (precision, hint)) in enumerate(hints.items()):
        compiled = ov.compile(onnx_path, tmp / f"ov{i}", precision, calibration, {"quantization": hint or {}, "threads": 1})
        built[f"openvino {name}"] = (compiled.path, hint is not None and shipped("openvino", hint))
    return built


def time_artifacts(artifacts, feeds, labels, reference, lengths, threads_list, repeats, rounds, console):
    """Rows (artifact, threads, length label, tokens, scores, MB, (p50, lo, hi), load) per artifact."""
    ort, ov = get_backend("onnxruntime"), get_backend("openvino")
    rows = []
    for name, (path, load_hint, chosen) in artifacts.items():
        name += " *" if chosen else ""
        def load(threads, path=path, load_hint=load_hint):
            if load_hint is not None:
                return OpenVinoLoadHint(path, threads, load_hint)
            return (ov if path.suffix == ".xml" else ort).load(path, threads=threads)

        with load(threads_list[0]) as session:
            acc = scores(run_session(session, feeds), labels, reference)
        for threads in threads_list:
            with load(threads) as session:
                for label, length in lengths.items():
                    f = feeds_of_length(length)
                    rows.append((name, threads, label, length, acc, size_mb(path),
                                 p50_ms(lambda s=session, f=f: s.run(f), repeats, rounds), os.getloadavg()[0]))
        console.print(f"{name}: top-1 {acc['top1']:.2%}, " + ", ".join(f"{r[3]} tok x{r[1]} {r[6][0]:.1f} ms" for r in rows
                                                                      if r[0] == name))
    return rows


def comparison_table(rows, eager_rows, ref, n_val):
    table = Table(title=f"int8 schemes on the feature-extraction run: {n_val} val texts, FP32 PyTorch top-1 "
                        f"{ref['top1']:.2%}; batch 1, p50 [lowest-highest round] ms; * = shipped")
    for col in ("artifact", "thr", "tokens", "top-1", "drop pp", "agree", "max |diff|", "MB", "p50 ms", "x eager",
                "load"):
        table.add_column(col)
    eager = {(r[1], r[2]): r[6][0] for r in eager_rows}
    for name, threads, label, length, acc, mb, (ms, lo, hi), load in eager_rows + rows:
        cells = ([f"{acc['top1']:.2%}", f"{(ref['top1'] - acc['top1']) * 100:+.1f}", f"{acc['agreement']:.1%}",
                  f"{acc['max_abs_diff']:.1e}", f"{mb:.0f}"] if acc else ["", "", "", "", ""])
        table.add_row(name, str(threads), f"{label} {length}", *cells,
                      f"{ms:.1f} [{lo:.1f}-{hi:.1f}]", f"{eager[threads, label] / ms:.2f}x", f"{load:.1f}")
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="reviews", choices=["reviews", "sms"])
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--out", default="runs/bench-text")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--unfreeze", default="2")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts, each timed (default 1,2)")
    parser.add_argument("--repeats", type=int, default=30, help="runs per round (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per timing; the spread is over them (default 3)")
    parser.add_argument("--int8-only", action="store_true", help="train the feature-extraction run only, no bundle")
    args = parser.parse_args()
    import torch

    threads_list = [int(t) for t in args.threads.split(",")]
    console = Console(width=max(Console().width, 180))  # the comparison table has 11 columns
    out = Path(args.out)
    data = write_demo_text(out / f"{args.source}.csv", args.source, args.per_class)

    modes = [("feature-extraction", edgetl.TrainOptions())]
    if not args.int8_only:
        modes.append(("finetune", edgetl.TrainOptions(mode="finetune", epochs=args.finetune_epochs, unfreeze=args.unfreeze)))
    torch.set_num_threads(threads_list[0])
    trained = {name: trained_run(data, options, out / name) for name, options in modes}
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

    model = load_trained(run)
    eager_rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for label, length in lengths.items():
            f = {k: torch.from_numpy(v) for k, v in feeds_of_length(length).items()}
            with torch.inference_mode():
                eager_rows.append(("pytorch eager fp32", threads, label, length, None, 0.0,
                                   p50_ms(lambda f=f: model(**f), args.repeats, args.rounds), os.getloadavg()[0]))
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {name: (path, None, chosen) for name, (path, chosen) in ort_variants(onnx_path, Path(tmp), calibration).items()}
        for name, (path, chosen) in ov_variants(onnx_path, Path(tmp), calibration).items():
            artifacts[name] = (path, None, chosen)
            if "weight-only" in name:
                artifacts[f"{name}, dynamic quantization off"] = (path, 0, False)
        rows = time_artifacts(artifacts, feeds, labels, reference, lengths, threads_list, args.repeats, args.rounds,
                              console)
    console.print(comparison_table(rows, eager_rows, scores(reference, labels, reference), len(labels)))

    if not args.int8_only:
        compile_run(run.path, "host-cpu", "int8", threads=threads_list[0], progress=False)
        path = create_bundle(run.path, "host-cpu", "int8")
        console.print(f"bundle host-cpu int8: {Path(path).stat().st_size / 1e6:.1f} MB ({path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
