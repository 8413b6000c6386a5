"""The ``edgetl`` command: thin wrappers that parse options, call a stage and print.

Every command maps to a function a notebook can call too (``edgetl.train``, ``edgetl.compile`` ...).
"""

from __future__ import annotations

import sys

import click
from rich.console import Console

from edgetl.errors import EdgetlError

console = Console(stderr=False)
err_console = Console(stderr=True)


class _Group(click.Group):
    """Turns EdgetlError into one red line and exit code 2; Ctrl-C into exit 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgetlError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="edgetl")
def cli():
    """edgetl: from a pretrained backbone to a validated deployment on edge hardware.

    \b
    Stages (each reads and extends a run directory, runs/<name>/):
      train     adapt a pretrained backbone to your images
      compile   export to ONNX, calibrate, quantize and build per runtime
      bench     latency percentiles + accuracy vs FP32, budgets as gates
      report    Markdown / HTML / JSON report of a run
      bundle    self-checking package for a device; ship copies it over SSH
      deploy    all of the above in one command
    """


@cli.command()
@click.option("--data", required=True, type=click.Path(path_type=str), help="Image folder (one subfolder per class) or CSV manifest (path,label).")
@click.option("--out", default="runs/exp", show_default=True, help="Run directory to create or update.")
@click.option("--backbone", default="efficientnet_lite0", show_default=True, help="efficientnet_lite0 (embedded, offline) or timm:<name>. See `edgetl backbones`.")
@click.option("--mode", type=click.Choice(["feature-extraction", "finetune"]), default="feature-extraction", show_default=True,
              help="feature-extraction: frozen backbone, cached features, new head. finetune: head first, then the last N stages.")
@click.option("--weights", type=click.Path(path_type=str), help="Local checkpoint (.safetensors or .pth state dict) for the backbone.")
@click.option("--no-pretrained", is_flag=True, help="Start from random weights (a baseline to compare with).")
@click.option("--val", "val_dir", type=click.Path(path_type=str), help="Separate validation folder/CSV (same classes).")
@click.option("--val-split", default=0.2, show_default=True, help="Stratified, seeded validation fraction when --val is not given.")
@click.option("--image-size", type=int, help="Input size override (pixels); small sizes train much faster on a CPU.")
@click.option("--epochs", type=int, help="Epochs (default: 100 for the head on features, 15 for fine-tuning).")
@click.option("--unfreeze", default="2", show_default=True, help="finetune: number of last stages to train, or 'all'.")
@click.option("--lr", type=float, help="Head learning rate (default 1e-3); the backbone gets --backbone-lr-scale of it.")
@click.option("--backbone-lr-scale", default=0.1, show_default=True, help="finetune: backbone LR as a fraction of the head's.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--head", type=click.Choice(["linear", "mlp"]), default="linear", show_default=True)
@click.option("--no-augment", is_flag=True, help="finetune: turn off random resized crop and flip.")
@click.option("--patience", type=int, help="Early stopping: epochs without a better val top-1 (default 15 head / 5 finetune).")
@click.option("--seed", default=0, show_default=True)
def train(data, out, backbone, mode, weights, no_pretrained, val_dir, val_split, image_size, epochs, unfreeze, lr,
          backbone_lr_scale, batch_size, head, no_augment, patience, seed):
    """Adapt a pretrained backbone to your images.

    \b
    Examples:
      edgetl train --data ./images --out runs/flowers
      edgetl train --data ./images --backbone timm:mobilenetv3_large_100 --mode finetune --unfreeze 2 --epochs 15
      torchrun --nproc_per_node 2 -m edgetl.cli train --data ./images --mode finetune   # DDP
    """
    from edgetl.adapt.train import train as run_train

    section = run_train(
        data, out=out, backbone=backbone, val=val_dir, weights=weights, console=console,
        mode=mode, pretrained=not no_pretrained, val_split=val_split, image_size=image_size, epochs=epochs,
        unfreeze=unfreeze, lr=lr, backbone_lr_scale=backbone_lr_scale, batch_size=batch_size, head=head,
        augment=not no_augment, patience=patience, seed=seed,
    )
    console.print(f"run written to [bold]{out}[/] (val top-1 {section['metrics']['val_top1']:.2%})")


@cli.command()
def backbones():
    """List the backbones: the embedded default (offline) and suggested timm models."""
    from rich.table import Table

    from edgetl.models import registry

    table = Table(title="backbones (any timm model works as timm:<name>)")
    for col in ("name", "weights offline", "description"):
        table.add_column(col)
    for b in registry.EMBEDDED.values():
        table.add_row(f"[bold]{b.name}[/] (default)", "[green]yes (embedded)[/]", b.description)
    for name, desc in registry.SUGGESTED_TIMM:
        cached = registry.timm_weights_cached(name)
        table.add_row(f"timm:{name}", "[green]yes (cached)[/]" if cached else "no: needs network or --weights", desc)
    console.print(table)


def _int_list(option: str, text: str) -> list[int]:
    from edgetl.errors import ConfigError

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated integers, e.g. {option} 1,8") from None


@cli.command("bench")
@click.argument("run", type=click.Path(path_type=str))
@click.option("--target", "-t", "targets", help="Comma-separated targets: profile or runtime names, or target/precision "
              "keys. Default: every compiled artifact.")
@click.option("--batch", "batches", default="1", show_default=True, help="Comma-separated batch sizes, e.g. 1,8. "
              "Latency budgets are on batch 1.")
@click.option("--threads", type=int, help="Threads for every runtime and for PyTorch, the same for all rows so they "
              "compare. Default: this machine's physical cores.")
@click.option("--iterations", default=200, show_default=True, help="Timed runs per batch size, after a warm-up of "
              ">= 50 runs and >= 200 ms.")
@click.option("--duration", type=float, help="Time each batch size for this many seconds instead of --iterations.")
@click.option("--device", help="Name of this machine in the result files (default: its host name).")
@click.option("--check", is_flag=True, help="Exit 1 when a budget of a target profile fails (for CI).")
def bench_cmd(run, targets, batches, threads, iterations, duration, device, check):
    """Latency and accuracy of a run's compiled artifacts on this machine, next to PyTorch FP32.

    \b
    Examples:
      edgetl bench runs/flowers                                    # every artifact, this machine
      edgetl bench runs/flowers --target jetson-orin-nano --check  # exit 1 when a budget fails (CI)
      edgetl bench runs/flowers --batch 1,8 --threads 2 --iterations 500

    \b
    How it measures: every artifact (and the PyTorch eager FP32 reference, for the
    "vs PyTorch" speed-up) is loaded in a fresh process with fixed threads, run on real
    validation images, warmed up, then timed run by run: p50/p90/p99, throughput, first
    inference (load + first run) and peak resident memory. Accuracy is evaluated on the
    full validation split in the artifact's own runtime: top-1, drop vs FP32 (points),
    agreement with FP32 predictions. Budgets of the target profile give PASS/FAIL; a
    runtime that cannot run here (TensorRT without a GPU) is listed as "n/a here".

    \b
    Writes runs/<name>/bench/<target>/<precision>@<device>.json (schema edgetl.bench/1)
    and a summary in the manifest; `edgetl report` turns them into tables and plots.
    Exit codes: 0 done, 1 a budget failed (with --check), 2 a user error or an artifact
    that could not be benched (its row says why).
    """
    from rich.markup import escape

    from edgetl.bench.run import bench
    from edgetl.errors import ConfigError
    from edgetl.bench.system import summary
    from edgetl.bench.table import rich_table

    if duration is not None and click.get_current_context().get_parameter_source("iterations").name == "COMMANDLINE":
        raise ConfigError("--iterations and --duration exclude each other: pass one of them")
    results = bench(run, targets=[t.strip() for t in targets.split(",") if t.strip()] if targets else None,
                    device_name=device, batches=_int_list("--batch", batches), threads=threads, iterations=iterations,
                    duration_s=duration, console=console)
    console.print(rich_table(results.rows, f"bench on {results.device}"))
    console.print(f"[dim]{escape(summary(results.system))}[/]", highlight=False)
    console.print(f"results in [bold]{results.run / 'bench'}[/]; `edgetl report {run}` for plots")
    results.raise_for_errors()
    if check:
        results.raise_for_gates()
        console.print("[green]all budgets pass[/]")


@cli.command("report")
@click.argument("run", type=click.Path(path_type=str))
def report_cmd(run):
    """Write report.md, report.html (tables + plots) and report.json for a run.

    \b
    The report covers every stage the run has been through (train, export, compile,
    bench per device) and says which ones are missing. report.html is self-contained:
    open it in a browser; its plots (latency distribution per artifact, accuracy vs
    latency with the Pareto front) need matplotlib: pip install 'edgetl[report]'.

    \b
    Example:
      edgetl report runs/flowers && xdg-open runs/flowers/report.html
    """
    from edgetl.report import make_report

    written = make_report(run)
    for note in written.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    for path in written.files:
        console.print(f"wrote [bold]{path}[/]")


def main() -> None:
    cli(prog_name="edgetl")


if __name__ == "__main__":
    main()
