"""Do edgetl's latencies agree with the runtimes' own tools? Ratios edgetl / vendor, repeated.

    python benchmarks/vendor_agreement.py                        # EfficientNet-Lite0 (timm, random weights)
    python benchmarks/vendor_agreement.py --run runs/demo        # a run's exported model and a val image
    python benchmarks/vendor_agreement.py --onnx model.onnx --repeats 7 --threads 2 --iterations 300

Two pairs, same model, same settings, each measurement in a fresh process, the order alternating
between repeats so that drift in the machine's load hits both sides alike:

- OpenVINO IR (fp32, built by edgetl's backend): ``edgetl.bench.measure`` (what ``edgetl bench``
  runs) against OpenVINO's ``benchmark_app`` with the same CPU config (latency hint, 1 stream,
  the same threads, f32 inference precision, f32 input, synchronous API, same iteration count,
  the same input file). benchmark_app reports either the median or one percentile per run, so
  it runs twice per repeat: once for p50/mean, once with ``-latency_percentile 90``.
- ONNX model: ``edgetl.bench.measure`` on edgetl's ONNX Runtime session against a plain
  ``InferenceSession.run`` loop with the same session options, warm-up and iterations.

Ratios are edgetl / vendor per repeat; the summary gives their median and range. The target is
agreement within 10% (a ratio between 0.9 and 1.1).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgetl.backends import get_backend
from edgetl.bench.measure import measure_isolated
from edgetl.bench.system import summary, system_record

WARMUP_ITERS, WARMUP_S = 50, 0.2

# A plain ONNX Runtime loop, as a user would write it: edgetl's session options, the same warm-up.
DIRECT_ORT = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
path, npy, threads, iters, warm_iters, warm_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
feed = {sess.get_inputs()[0].name: np.load(npy)}
start, n = time.perf_counter(), 0
while n < warm_iters or time.perf_counter() - start < warm_s:
    sess.run(None, feed); n += 1
times = []
for _ in range(iters):
    t0 = time.perf_counter_ns(); sess.run(None, feed); times.append(time.perf_counter_ns() - t0)
ms = np.array(times) / 1e6
print(json.dumps({"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)), "mean_ms": float(ms.mean())}))
"""


def export_lite0(dest: Path) -> Path:
    """EfficientNet-Lite0 from timm without downloading weights (timing does not depend on them)."""
    import timm
    import torch

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    torch.onnx.export(model, torch.randn(1, 3, 224, 224), str(dest), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    return dest


def model_and_input(args, tmp: Path) -> tuple[Path, np.ndarray]:
    if args.run:
        from edgetl.data.arrays import DataView
        from edgetl.rundir import RunDir

        run = RunDir.open(args.run, need="export")
        return run.path / run.manifest["export"]["path"], DataView(run).val_feeds([0])["input"]
    onnx_path = Path(args.onnx) if args.onnx else export_lite0(tmp / "tf_efficientnet_lite0.onnx")
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    h, w = dims[2].dim_value, dims[3].dim_value
    return onnx_path, np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)


def edgetl_latency(runtime: str, path: Path, npy: Path, threads: int, iterations: int) -> dict:
    result = measure_isolated("edgetl.bench.measure:artifact_opener",
                              {"runtime": runtime, "path": str(path), "threads": threads}, {"inputs": {"input": str(npy)}},
                              batches=[1], iterations=iterations, warmup_iters=WARMUP_ITERS, warmup_s=WARMUP_S)
    row = result["latency"][0]
    return {k: row[k] for k in ("p50_ms", "p90_ms", "mean_ms")}


def benchmark_app(xml: Path, npy: Path, threads: int, iterations: int, tmp: Path) -> dict:
    tool = shutil.which("benchmark_app", path=str(Path(sys.executable).parent)) or shutil.which("benchmark_app")
    if tool is None:
        raise SystemExit("benchmark_app not found: pip install openvino")
    config = tmp / "ov_config.json"
    # edgetl's OpenVINO session config (edgetl/backends/openvino.py), through -load_config because
    # benchmark_app refuses -nstreams/-nthreads together with -hint.
    config.write_text(json.dumps({"CPU": {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                                          "INFERENCE_NUM_THREADS": str(threads), "INFERENCE_PRECISION_HINT": "f32"}}))
    shape = "[" + ",".join(map(str, np.load(npy, mmap_mode="r").shape)) + "]"
    base = [tool, "-m", str(xml), "-d", "CPU", "-load_config", str(config), "-api", "sync", "-niter", str(iterations),
            "-data_shape", shape, "-ip", "f32", "-i", str(npy)]
    out = {}
    for percentile in (50, 90):
        text = subprocess.run([*base, "-latency_percentile", str(percentile)], capture_output=True, text=True,
                              check=True).stdout
        label = "Median" if percentile == 50 else f"{percentile} percentile"
        out[f"p{percentile}_ms"] = _parse(text, label)
        if percentile == 50:
            out["mean_ms"] = _parse(text, "Average")
    return out


def _parse(text: str, label: str) -> float:
    match = re.search(rf"{re.escape(label)}:\s+([\d.]+) ms", text)
    if not match:
        raise SystemExit(f"could not find '{label}' in benchmark_app's output:\n{text[-2000:]}")
    return float(match.group(1))


def direct_ort(onnx_path: Path, npy: Path, threads: int, iterations: int) -> dict:
    out = subprocess.run([sys.executable, "-c", DIRECT_ORT, str(onnx_path), str(npy), str(threads), str(iterations),
                          str(WARMUP_ITERS), str(WARMUP_S)], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--run", help="use a run's exported ONNX and one of its validation images")
    src.add_argument("--onnx", help="an ONNX model with input N x 3 x H x W")
    ap.add_argument("--repeats", type=int, default=10, help="pairs per runtime; more repeats beat a noisy machine")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    args = ap.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 140)  # logs: the whole table, not squeezed
    console.print(summary(system_record(args.threads)), highlight=False)

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgetl-vendor-") as tmp_name:
        tmp = Path(tmp_name)
        onnx_path, x = model_and_input(args, tmp)
        npy = tmp / "input.npy"
        np.save(npy, np.ascontiguousarray(x, dtype=np.float32))
        xml = get_backend("openvino").compile(onnx_path, tmp / "ir", "fp32", None, {}).path
        console.print(f"load average {system_record()['load_average']}; model {onnx_path.name}, input {tuple(x.shape)}, {args.threads} threads, "
                      f"{args.iterations} iterations, {args.repeats} repeats", highlight=False)
        pairs = {
            "openvino": (lambda: edgetl_latency("openvino", xml, npy, args.threads, args.iterations),
                         lambda: benchmark_app(xml, npy, args.threads, args.iterations, tmp)),
            "onnxruntime": (lambda: edgetl_latency("onnxruntime", onnx_path, npy, args.threads, args.iterations),
                            lambda: direct_ort(onnx_path, npy, args.threads, args.iterations)),
        }
        for rep in range(args.repeats):
            for runtime, (ours, theirs) in pairs.items():
                # Alternate who goes first, so a trend in the machine's load does not favour one side.
                if rep % 2 == 0:
                    a, b = ours(), theirs()
                else:
                    b, a = theirs(), ours()
                rows.append({"repeat": rep, "runtime": runtime, "edgetl": a, "vendor": b})
                console.print(f"repeat {rep + 1} {runtime:<12} edgetl p50 {a['p50_ms']:.3f} p90 {a['p90_ms']:.3f} | "
                              f"vendor p50 {b['p50_ms']:.3f} p90 {b['p90_ms']:.3f} ms", highlight=False)

    table = Table(title="edgetl / vendor latency ratio (1.00 = identical; target 0.90-1.10)", title_justify="left")
    for col in ("runtime", "vendor tool", "metric", "edgetl ms (median)", "vendor ms (median)", "ratio median",
                "ratio range", "within 10%"):
        table.add_column(col, justify="left" if col in ("runtime", "vendor tool", "metric") else "right")
    tools = {"openvino": "benchmark_app", "onnxruntime": "InferenceSession.run loop"}
    for runtime in ("openvino", "onnxruntime"):
        mine = [r for r in rows if r["runtime"] == runtime]
        for metric in ("p50_ms", "p90_ms", "mean_ms"):
            ratios = [r["edgetl"][metric] / r["vendor"][metric] for r in mine]
            med = statistics.median(ratios)
            table.add_row(runtime, tools[runtime], metric[:-3], f"{statistics.median(r['edgetl'][metric] for r in mine):.3f}",
                          f"{statistics.median(r['vendor'][metric] for r in mine):.3f}", f"{med:.3f}",
                          f"{min(ratios):.2f}-{max(ratios):.2f}", "yes" if 0.9 <= med <= 1.1 else "[red]no[/]")
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps({"system": system_record(args.threads), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
