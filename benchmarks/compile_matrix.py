"""Compile seconds, artifact size and accuracy drop for every runtime x precision of a trained run.

    python benchmarks/compile_matrix.py runs/demo                       # every runtime x precision
    python benchmarks/compile_matrix.py runs/demo --calibration default,entropy,percentile
    python benchmarks/compile_matrix.py runs/demo --runtimes onnxruntime --precisions int8

Works on a scratch copy of the run (its export and caches, not its compiled artifacts), so every
cell is built fresh and the run itself is left untouched. Sizes are also given as a ratio of the
same runtime's fp32 artifact; accuracy is on the full validation split against the FP32 PyTorch
reference, with the drop in points and as a fraction of FP32 top-1 (MLPerf asks >= 99%).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgetl._cpu import host_cpu_flags
from edgetl.backends import get_backend
from edgetl.backends import runtimes as registered_runtimes
from edgetl.compiler import compile as compile_run
from edgetl.export.onnx import export_run
from edgetl.rundir import RunDir

_SKIP = shutil.ignore_patterns("compiled", "bench", "bundles", "report.*")


def scratch_copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=_SKIP)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a trained run directory (edgetl train --out ...)")
    ap.add_argument("--runtimes", default=",".join(registered_runtimes()))
    ap.add_argument("--precisions", default="fp32,fp16,int8")
    ap.add_argument("--calibration", default="default", help="comma-separated recipes, each gives its own int8 rows")
    ap.add_argument("--gpu-arch", default=None, help="TensorRT engine target (default: the backend's)")
    args = ap.parse_args()
    console = Console()
    runtimes = [r for r in args.runtimes.split(",") if r]
    precisions = [p for p in args.precisions.split(",") if p]
    recipes = [c for c in args.calibration.split(",") if c]

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-compile-") as tmp:
        first = scratch_copy(args.run, Path(tmp) / "run0")
        export_run(RunDir.open(first, need="train"))  # once: every copy below reuses it and its caches
        for i, recipe in enumerate(recipes):
            # Each recipe gets its own copy: int8 cells of different recipes share a folder name.
            work = first if i == 0 else scratch_copy(first, Path(tmp) / f"run{i}")
            wanted = precisions if i == 0 else [p for p in precisions if p == "int8"]
            if not wanted:
                continue
            for r in compile_run(work, runtimes, wanted, calibration=recipe, gpu_arch=args.gpu_arch, force=True):
                rows.append({**r, "recipe": recipe if r["precision"] == "int8" else "-"})

    console.print(_table(rows, args.run))
    versions = ", ".join(f"{n} {get_backend(n).version()}" for n in runtimes if get_backend(n).available())
    flags = " ".join(sorted(f for f in host_cpu_flags() if f.startswith(("avx", "amx", "asimd", "sve"))))
    console.print(f"[dim]{platform.machine()} {platform.processor() or ''} flags: {flags}; {versions}[/]", highlight=False)
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def _table(rows: list[dict], run: Path) -> Table:
    fp32_size = {r["runtime"]: r["size_mb"] for r in rows if r["precision"] == "fp32" and r["status"] != "failed"}
    table = Table(title=f"compile matrix of {run}", title_justify="left")
    for col in ("runtime", "precision", "recipe", "compile s", "size MB", "vs fp32", "top-1", "drop pp",
                "% of fp32", "agreement", "note"):
        table.add_column(col, justify="left" if col in ("runtime", "precision", "recipe", "note") else "right")
    for r in rows:
        if r["status"] == "failed":
            table.add_row(r["runtime"], r["precision"], r["recipe"], *[""] * 7, f"[red]{r['error']}[/]")
            continue
        base = fp32_size.get(r["runtime"])
        fp32_top1 = r["top1"] + r["drop_pp"] / 100
        table.add_row(
            r["runtime"], r["precision"], r["recipe"], f"{r['compile_s']:.1f}", f"{r['size_mb']:.2f}",
            f"{r['size_mb'] / base:.2f}x" if base else "", f"{r['top1']:.2%}", f"{r['drop_pp']:+.2f}",
            f"{r['top1'] / fp32_top1:.2%}" if fp32_top1 else "", f"{r['agreement']:.2%}",
            "; ".join(filter(None, ["estimated on ORT CPU" if r["estimated"] else "", r.get("note", "")])),
        )
    return table


if __name__ == "__main__":
    sys.exit(main())
