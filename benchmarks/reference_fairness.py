"""Is edgetl's PyTorch FP32 reference timed fairly? edgetl's reference p50 / a hand-written loop's p50.

    python benchmarks/reference_fairness.py --run runs/demo                 # 1 and 2 threads, 5 repeats
    python benchmarks/reference_fairness.py --run runs/demo --threads 1,2,4 --repeats 7 --iterations 300

Every "vs PyTorch" speed-up in a bench table divides by the reference's median, so an inflated
reference inflates every speed-up. This runs, in the same run and for each thread count:

- edgetl: ``edgetl.bench.measure.measure_isolated`` on ``edgetl.backends.torch:reference_opener``
  with the bench stage's ``REFERENCE_TIMING`` (what ``edgetl bench`` runs for its reference row);
- by hand: a plain loop a user would write, in its own fresh process: the same trained model
  (``edgetl.models.build.load_trained``), the same input (one preprocessed validation image),
  ``torch.set_num_threads(T)`` and ``torch.set_num_interop_threads(1)``, ``torch.inference_mode``,
  the same warm-up (>= 50 runs and >= 0.2 s) and the same number of timed runs.

Both sides run in fresh processes, alternating which goes first between repeats so a trend in the
machine's load hits both alike. Ratios are edgetl / hand per repeat; the summary gives their median
and range; the target is agreement within 10% (a ratio between 0.9 and 1.1). Both sides record
whether other processes used the CPU while they timed (``edgetl.bench.latency.Contention``, read
outside the timed loop); "quiet" ratios use only the pairs where neither side was busy: with
2 threads on a 2-core machine that others share, either side swings 10x from one run to the next.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgetl.bench.measure import measure_isolated
from edgetl.bench.run import REFERENCE_TIMING
from edgetl.bench.system import summary, system_record

WARMUP_ITERS, WARMUP_S = 50, 0.2

HAND_LOOP = r"""
import json, sys, time
import numpy as np, torch
from edgetl.models.build import load_trained
from edgetl.bench.latency import Contention
from edgetl.rundir import RunDir
run, npy, threads, iters, warm_iters, warm_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
torch.set_num_threads(threads)
torch.set_num_interop_threads(1)
model = load_trained(RunDir.open(run)).eval()
x = torch.from_numpy(np.load(npy))
with torch.inference_mode():
    start, n = time.perf_counter(), 0
    while n < warm_iters or time.perf_counter() - start < warm_s:
        model(x); n += 1
    times, load = [], Contention(threads)
    load.start()
    for _ in range(iters):
        t0 = time.perf_counter_ns(); model(x); times.append(time.perf_counter_ns() - t0)
    busy = load.stop()["busy"]
print(json.dumps({"p50_ms": float(np.percentile(np.array(times) / 1e6, 50)), "threads": torch.get_num_threads(),
                  "busy": bool(busy)}))
"""


def edgetl_reference(run: str, npy: Path, threads: int, iterations: int) -> dict:
    result = measure_isolated("edgetl.backends.torch:reference_opener", {"run_path": run, "threads": threads},
                              {"inputs": str(npy)}, batches=[1], iterations=iterations, warmup_iters=WARMUP_ITERS,
                              warmup_s=WARMUP_S, threads=threads, **REFERENCE_TIMING)
    row = result["latency"][0]
    return {"p50_ms": row["p50_ms"], "busy": bool(row["contention"].get("busy")), "threads": result.get("threads_info")}


def hand_loop(run: str, npy: Path, threads: int, iterations: int) -> dict:
    out = subprocess.run([sys.executable, "-c", HAND_LOOP, run, str(npy), str(threads), str(iterations),
                          str(WARMUP_ITERS), str(WARMUP_S)], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a trained run (its checkpoint and one validation image are used)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--repeats", type=int, default=5, help="pairs per thread count; more repeats beat a noisy machine")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    args = ap.parse_args()
    threads_list = [int(t) for t in args.threads.split(",")]
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(summary(system_record(max(threads_list))), highlight=False)

    from edgetl.data.arrays import DataView
    from edgetl.rundir import RunDir

    run = RunDir.open(args.run, need="train")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgetl-reference-") as tmp:
        npy = Path(tmp) / "input.npy"
        np.save(npy, np.ascontiguousarray(DataView(run).val_feeds([0])["input"], dtype=np.float32))
        console.print(f"load average {system_record()['load_average']}; run {run.path}, {args.iterations} iterations, "
                      f"{args.repeats} repeats", highlight=False)
        for rep in range(args.repeats):
            for threads in threads_list:
                ours = functools.partial(edgetl_reference, str(run.path), npy, threads, args.iterations)
                theirs = functools.partial(hand_loop, str(run.path), npy, threads, args.iterations)
                if rep % 2 == 0:  # alternate who goes first
                    a, b = ours(), theirs()
                else:
                    b, a = theirs(), ours()
                rows.append({"repeat": rep, "threads": threads, "edgetl": a, "hand": b})
                console.print(f"repeat {rep + 1} threads {threads}: edgetl p50 {a['p50_ms']:.3f} ms"
                              f"{' (busy)' if a['busy'] else ''} | hand p50 {b['p50_ms']:.3f} ms"
                              f"{' (busy)' if b['busy'] else ''}", highlight=False)

    table = Table(title="edgetl reference / hand-written PyTorch loop, p50 (1.00 = identical; target 0.90-1.10)",
                  title_justify="left")
    for col in ("threads", "edgetl ms (median)", "hand ms (median)", "ratio median", "ratio range", "busy pairs",
                "quiet ratio median", "within 10%"):
        table.add_column(col, justify="right")
    for threads in threads_list:
        mine = [r for r in rows if r["threads"] == threads]
        ratios = [r["edgetl"]["p50_ms"] / r["hand"]["p50_ms"] for r in mine]
        quiet = [r["edgetl"]["p50_ms"] / r["hand"]["p50_ms"] for r in mine if not (r["edgetl"]["busy"] or r["hand"]["busy"])]
        med = statistics.median(quiet or ratios)
        table.add_row(str(threads), f"{statistics.median(r['edgetl']['p50_ms'] for r in mine):.3f}",
                      f"{statistics.median(r['hand']['p50_ms'] for r in mine):.3f}", f"{statistics.median(ratios):.3f}",
                      f"{min(ratios):.2f}-{max(ratios):.2f}", f"{len(mine) - len(quiet)}/{len(mine)}",
                      f"{statistics.median(quiet):.3f} (n={len(quiet)})" if quiet else "—",
                      "yes" if 0.9 <= med <= 1.1 else "[red]no[/]")
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps({"system": system_record(max(threads_list)), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
