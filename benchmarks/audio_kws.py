"""Keyword spotting on espeak-ng words, speakers held out: backbones, training modes, int8 schemes
per runtime, batch-1 latency per runtime against PyTorch eager, model size.

    python -m edgetl.data.demo_audio demo-data/keywords
    OMP_NUM_THREADS=1 python benchmarks/audio_kws.py demo-data/keywords --out /tmp/kws-bench

1. trains ``logmel-cnn`` (from scratch), ``oww-embedding`` feature extraction and fine-tuning with
   ``edgetl.train(task="audio-classification")`` on ``train/``, validated on ``val/`` (other voices);
2. exports the chosen run (``--quantize``, default logmel-cnn) and quantizes it to int8 three ways
   per runtime: every op, every op but the ``frontend`` (log-mel) nodes, and with ONNX Runtime also
   only Conv/MatMul/Gemm outside the front end; top-1 and drop against the FP32 PyTorch model;
3. times batch-1 p50 (1 thread) of PyTorch eager, ONNX Runtime and OpenVINO, fp32 and int8.

A run already trained under ``--out`` with the same options is reused (``--retrain`` trains again).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from edgetl.adapt.options import TrainOptions
from edgetl.adapt.train import train, train_inputs_hash
from edgetl.rundir import RunDir

TASK = "audio-classification"
CONFIGS = {  # name -> (backbone, options)
    "logmel-cnn (from scratch)": ("logmel-cnn", {"mode": "finetune"}),
    "oww-embedding feature extraction": ("oww-embedding", {"mode": "feature-extraction"}),
    "oww-embedding fine-tuning": ("oww-embedding", {"mode": "finetune", "epochs": 5}),
}


def p50_ms(run_once, repeats: int = 200) -> float:
    for _ in range(20):
        run_once()
    times = []
    for _ in range(repeats):
        begun = time.perf_counter()
        run_once()
        times.append((time.perf_counter() - begun) * 1e3)
    return float(np.median(times))


def val_set(run: RunDir):
    from edgetl.tasks import task_of_train

    split = json.loads((run.path / "train" / "split.json").read_text())
    task, record = task_of_train(run.get("train"), run)
    x = task.preprocess([p for p, _ in split["val"]], record)["waveform"]
    return x, np.array([y for _, y in split["val"]]), split["classes"]


def training_clips(run: RunDir, n: int) -> np.ndarray:
    """``n`` training clips (a seeded sample): what compile calibrates on."""
    from edgetl.tasks import task_of_train

    split = json.loads((run.path / "train" / "split.json").read_text())
    task, record = task_of_train(run.get("train"), run)
    chosen = np.random.default_rng(0).permutation(len(split["train"]))[:n]
    return task.preprocess([split["train"][i][0] for i in sorted(chosen)], record)["waveform"]


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_int8(fp32: Path, dest: Path, calib: np.ndarray, keep_float: list[str], op_types: list[str] | None) -> Path:
    """edgetl's own static QDQ (the default recipe, this CPU's int8 types), as ``edgetl compile`` runs it."""
    from edgetl._cpu import host_cpu_flags
    from edgetl.backends._qdq import quantize_qdq
    from edgetl.backends.onnxruntime import choose_int8_types
    from edgetl.config import load_recipe

    types = choose_int8_types(host_cpu_flags(), platform.machine())
    quantize_qdq(fp32, dest, {"waveform": calib}, load_recipe("default"), activation_type=types["activations"],
                 weight_type=types["weights"], reduce_range=types["reduce_range"], op_types=op_types,
                 keep_float_prefixes=keep_float)
    return dest


def ov_model(path: Path, calib: np.ndarray | None, exclude: list[str] | None):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    if calib is not None:
        import nncf

        scope = nncf.IgnoredScope(names=exclude, validate=False) if exclude else None
        model = nncf.quantize(model, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                              subset_size=len(calib), ignored_scope=scope)
    return core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1})


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="python -m edgetl.data.demo_audio DEST writes it (train/ + val/)")
    ap.add_argument("--out", type=Path, default=Path("runs/kws-bench"))
    ap.add_argument("--retrain", action="store_true", help="train again even where --out holds the run")
    ap.add_argument("--quantize", default="logmel-cnn (from scratch)", choices=list(CONFIGS))
    args = ap.parse_args()
    import onnx
    import torch

    from edgetl.audio.workstation import load_trained
    from edgetl.backends._qdq import prefixed_nodes
    from edgetl.export.onnx import export_run

    torch.set_num_threads(1)
    print("## Training (validation: held-out speakers)\n")
    print("| model | val top-1 | false accepts | train s |\n|---|---|---|---|")
    runs = {}
    for name, (backbone, options) in CONFIGS.items():
        out = args.out / backbone / options["mode"]
        opts = TrainOptions(device="cpu", **options)
        done = RunDir(out).get("train") if (out / "manifest.json").is_file() else None
        if args.retrain or done is None or done["inputs_hash"] != train_inputs_hash(args.data, opts, backbone=backbone,
                                                                                      task=TASK):
            done = train(args.data, opts, out=out, backbone=backbone, task=TASK)
        section = done
        m = section["metrics"]
        runs[name] = RunDir.open(out)
        far = "n/a (no _background_)" if m["false_accept_rate"] is None else f"{m['false_accept_rate']:.1%}"
        print(f"| {name} | {m['val_top1']:.1%} | {far} | {m['seconds']:.0f} |", flush=True)

    run = runs[args.quantize]
    fp32 = export_run(run)
    x, y, _ = val_set(run)
    calib = training_clips(run, 300)
    model = load_trained(run)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    ref_top1 = top1(reference, y)
    front = prefixed_nodes(onnx.load(str(fp32)), ["frontend"])  # the nodes of module `frontend`
    print(f"\n## int8 of {args.quantize} (FP32 PyTorch top-1 {ref_top1:.1%}; {len(front)} front-end nodes)\n")
    print("| runtime | precision / scheme | top-1 | drop pp | batch-1 p50 ms | MB |\n|---|---|---|---|---|---|")
    one = torch.from_numpy(x[:1])
    with torch.no_grad():
        eager = p50_ms(lambda: model(one))
    print(f"| PyTorch eager | fp32 | {ref_top1:.1%} | 0.0 | {eager:.2f} | |")
    work = args.out / "int8"
    work.mkdir(parents=True, exist_ok=True)
    ort_cells = {"fp32": fp32,
                 "int8 all ops": ort_int8(fp32, work / "all.onnx", calib, [], None),
                 "int8 front end float": ort_int8(fp32, work / "front.onnx", calib, ["frontend"], None),
                 "int8 Conv/MatMul/Gemm, front end float": ort_int8(fp32, work / "conv.onnx", calib, ["frontend"],
                                                                   ["Conv", "MatMul", "Gemm"])}
    for label, path in ort_cells.items():
        session = ort_session(path)
        logits = np.concatenate([session.run(None, {"waveform": x[i:i + 32]})[0] for i in range(0, len(x), 32)])
        ms = p50_ms(lambda s=session: s.run(None, {"waveform": x[:1]}))
        print(f"| onnxruntime | {label} | {top1(logits, y):.1%} | {(ref_top1 - top1(logits, y)) * 100:+.1f} | "
              f"{ms:.2f} | {path.stat().st_size / 2**20:.2f} |", flush=True)
    for label, (c, exclude) in {"fp32": (None, None), "int8 all ops": (calib, None),
                                "int8 front end float": (calib, front)}.items():
        compiled = ov_model(fp32, c, exclude)
        logits = np.concatenate([compiled(x[i:i + 1])[0] for i in range(len(x))])
        ms = p50_ms(lambda m=compiled: m(x[:1]))
        print(f"| openvino | {label} | {top1(logits, y):.1%} | {(ref_top1 - top1(logits, y)) * 100:+.1f} | "
              f"{ms:.2f} | |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
