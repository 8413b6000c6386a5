"""The ``edgetl`` command: thin wrappers that parse options, call a stage and print.

Every command maps to a function a notebook can call too (``edgetl.train``, ``edgetl.compile`` ...).
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import sys
import threading
import typing
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from edgetl.adapt.options import TrainInputs, TrainOptions
from edgetl.adapt.options import flag as flag_of
from edgetl.bench.settings import DEFAULTS as BENCH
from edgetl.bench.settings import BenchSettings
from edgetl.errors import EdgetlError

console = Console(soft_wrap=True)  # messages stay one greppable line; tables still fit the width
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = 140  # logs and CI: rich's 80-column default would fold every table
err_console = Console(stderr=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, systemd, a CI timeout), raised where the program is, as Ctrl-C is: every
    ``finally`` runs, so atomic writes remove their temporary files and child processes are stopped."""


def _raise_terminated(signum, frame):
    raise Terminated()


class _Group(click.Group):
    """Turns EdgetlError into one red line and exit code 2; Ctrl-C into exit 130, SIGTERM into 143
    (128 + the signal's number, what a shell reports for a process the signal ended)."""

    def invoke(self, ctx):
        in_main = threading.current_thread() is threading.main_thread()  # signal handlers live there only
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
        try:
            return super().invoke(ctx)
        except EdgetlError as exc:
            # escape: messages hold literal brackets, e.g. pip install "edgetl[onnxruntime]"
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except Terminated:
            err_console.print("[yellow]terminated[/]")
            sys.exit(128 + signal.SIGTERM)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            sys.exit(130)
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


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

    \b
    On the device (no PyTorch needed): verify, predict, val (accuracy on labelled
    images), bench BUNDLE, build (TensorRT engine). keys: sign bundles, trust keys.

    \b
    Exit codes: 0 done, 1 a budget failed (--check), 2 a user error (one line),
    130 Ctrl-C, 143 SIGTERM (128 + 15, as a shell reports it). Interrupted or
    terminated, a stage removes its temporary files and keeps earlier results.
    """


def _click_type(annotation):
    """click's type for a field: a Literal's values as choices, int and float as such, the rest str."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice(args)
    if args and typing.get_origin(annotation) is not typing.Literal:  # X | None
        return _click_type(args[0])
    return annotation if annotation in (int, float) else str


def _model_option(name: str, field, with_defaults: bool):
    """One flag for a field of an options model: its name, type, help (the field's description, with
    its default) and, with ``with_defaults``, the default; a True-default bool becomes ``--no-<name>``."""
    default = field.get_default(call_default_factory=True)
    if field.annotation is bool:
        flag, value = (flag_of(f"no_{name}"), False) if default else (flag_of(name), True)
        return click.option(flag, name, is_flag=True, flag_value=value, default=default if with_defaults else None,
                            help=field.description)
    shown = f"  [default: {default}]" if default is not None else ""
    return click.option(flag_of(name), name, type=_click_type(field.annotation), default=default if with_defaults else None,
                        help=f"{field.description}{shown}")


def model_options(*models, with_defaults: bool):
    """The flags of the options models' fields, in field order. Without ``with_defaults`` an option not
    given is None (deploy: the config file's value, else the model's default, applies)."""
    def decorate(f):
        fields = [(name, field) for model in models for name, field in model.model_fields.items()]
        for name, field in reversed(fields):
            f = _model_option(name, field, with_defaults)(f)
        return f

    return decorate


def _take_fields(params: dict, model) -> dict:
    """Pop ``model``'s fields out of the command's parameters, leaving out options not given (None)."""
    return {name: value for name in model.model_fields if (value := params.pop(name)) is not None}


@cli.command()
@click.option("--data", required=True, type=click.Path(path_type=str),
              help="Image folder (one subfolder per class), CSV manifest (path,label), or a folder holding "
              "train/ and val/ (or training/, validation/, valid/) class folders.")
@click.option("--out", default="runs/exp", show_default=True, help="Run directory to create or update.")
@model_options(TrainInputs, TrainOptions, with_defaults=True)
def train(data, out, **params):
    """Adapt a pretrained backbone to your images.

    \b
    Examples:
      edgetl train --data ./images --out runs/flowers
      edgetl train --data ./images --backbone timm:mobilenetv3_large_100 --mode finetune --unfreeze 2 --epochs 15
      torchrun --nproc_per_node 2 -m edgetl.cli train --data ./images --mode finetune   # DDP
    """
    from edgetl.data.layout import resolve_layout

    inputs, options = TrainInputs(**_take_fields(params, TrainInputs)), TrainOptions(**_take_fields(params, TrainOptions))
    resolve_layout(data, inputs.val)  # a wrong path answers now, not after torch and timm load
    from edgetl.adapt.train import train as run_train

    section = run_train(data, options, out=out, console=console, **inputs.model_dump())
    console.print(f"run written to [bold]{out}[/] (val top-1 {section['metrics']['val_top1']:.2%})")
    console.print(f"next: edgetl compile {out} --target host-cpu   (`edgetl targets` lists the others)", highlight=False)


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
        cached = registry.timm_weights_in_hub_cache(name)  # importing timm to ask would take seconds
        table.add_row(f"timm:{name}", "[green]yes (cached)[/]" if cached else "no: needs network or --weights", desc)
    console.print(table)


def _names(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def _joined(ctx, param, values: tuple[str, ...]) -> str | None:
    """A repeatable comma-list option: ``-t a -t b,c`` is ``a,b,c`` (never only the last one)."""
    return ",".join(values) if values else None


@cli.command("compile")
@click.argument("run", type=click.Path(path_type=str))
@click.option("--target", "--targets", "-t", "targets", required=True, metavar="NAMES", multiple=True,
              callback=_joined, help="Comma-separated targets: device profiles or bare runtime names (both "
              "listed by `edgetl targets`), or paths to profile .toml files; repeatable (-t a -t b).")
@click.option("--precision", "-p", "precisions", metavar="LIST",
              help="Comma-separated precisions: fp32, fp16, int8. Default: each profile's own precision; "
              "int8 for a bare runtime name.")
@click.option("--calibration", "-c", metavar="NAME|PATH",
              help="int8 calibration recipe: default (min-max), entropy, percentile, or your own .toml "
              "(fields in calibration/default.toml). Default: the profile's recipe, else 'default'.")
@click.option("--gpu-arch", metavar="smXY", help="TensorRT: GPU to build the engine for (sm75 Turing, sm86 Ampere, "
              "sm87 Jetson Orin, sm89 Ada, sm120 Blackwell). Default: the profile's, else sm89.")
@click.option("--threads", type=int, help="CPU threads for the accuracy check (default: the profile's, else all cores).")
@click.option("--force", is_flag=True, help="Rebuild artifacts whose inputs did not change (otherwise they are kept).")
@click.option("--json", "as_json", is_flag=True, help="Print the result rows as JSON on stdout instead of a table.")
def compile_cmd(run, targets, precisions, calibration, gpu_arch, threads, force, as_json):
    """Export the trained model to ONNX, then calibrate, quantize and build it per target.

    \b
    Examples:
      edgetl compile runs/flowers --target onnxruntime --precision int8
      edgetl compile runs/flowers --target openvino --precision int8 --calibration entropy
      edgetl compile runs/flowers --target tensorrt --precision int8 --gpu-arch sm89
      edgetl compile runs/flowers --target jetson-orin-nano            # a device profile
      edgetl compile runs/flowers --target onnxruntime,openvino --precision fp32,int8   # a matrix

    \b
    What happens:
      1. export     runs/<name>/export/model.onnx (skipped when the checkpoint did not change),
                    checked against PyTorch on the validation images
      2. calibrate  int8 only: images from the TRAINING split (class-balanced, seeded),
                    never the validation split; cached in runs/<name>/cache/
      3. build      onnxruntime: optimised fp32, fp16, int8 QDQ (types chosen for the profile's
                                 cpu_arch/cpu_flags, else for this CPU)
                    openvino:    IR fp32, fp16 (compressed weights), int8 via NNCF
                    tensorrt:    QDQ ONNX (symmetric int8, float bias) + strongly typed engine,
                                 built here without a GPU by tensorrt_rtx for --gpu-arch
      4. check      top-1, drop vs FP32 (points) and agreement on the full validation split,
                    in the artifact's own runtime; TensorRT without a GPU is estimated on its
                    ONNX with ONNX Runtime CPU (marked *)

    \b
    Artifacts go to runs/<name>/compiled/<target>/<precision>/ and the manifest. A failing
    target is reported in its row and the others still build; the command then exits 2.
    """
    from edgetl.compiler import compile as compile_run
    from edgetl.compiler import summary_table

    rows = compile_run(run, _names(targets), _names(precisions), calibration, gpu_arch, threads, force,
                       progress=not as_json)
    if as_json:
        click.echo(json.dumps([{k: v for k, v in r.items() if k != "traceback"} for r in rows], indent=2))
    else:
        console.print(summary_table(rows))
    for r in rows:
        if "traceback" in r:  # not a user mistake: keep the evidence
            err_console.print(r["traceback"], highlight=False, markup=False)
    built = [r for r in rows if r["status"] != "failed"]
    if built and not as_json:
        first = built[0]
        console.print(f"next: edgetl bench {run} --target {first['target']}   then: edgetl bundle {run} "
                      f"--target {first['target']} --precision {first['precision']}", highlight=False)
    rows.raise_for_errors()


@cli.command()
def targets():
    """List device profiles and runtimes, and whether this machine can build and run them.

    \b
    A profile (targets/<name>.toml, or ./targets/<name>.toml of your own) names a runtime,
    a precision, threads, the runtime's own options (TensorRT: gpu_arch, max_batch; ONNX
    Runtime and OpenVINO: the device's cpu_arch and cpu_flags, to cross-compile int8), the
    calibration recipe and the budgets `edgetl bench --check` enforces. Use its name with
    --target; a bare runtime name works too.
    """
    from rich.markup import escape
    from rich.table import Table

    from edgetl.bench.gates import goal_text
    from edgetl.compiler import target_rows
    from edgetl.config import Budgets

    table = Table(title="targets (use with `edgetl compile RUN --target NAME`)", title_justify="left")
    for col in ("name", "runtime", "precision", "device", "options", "budgets", "available here"):
        table.add_column(col)
    for r in target_rows():
        if "error" in r:
            table.add_row(r["name"], "", "", "", "", "", f"[red]broken:[/] {escape(r['error'])}")
            continue
        budgets = ", ".join(goal_text(goal) for goal in Budgets.model_validate(r["budgets"]).as_goals())
        here = "[green]yes[/]" if r["here"] == "yes" else escape(r["here"])
        # a list (cpu_flags) is counted, not spelled out: the profile file has it
        options = ", ".join(f"{len(v)} {k.replace('_', ' ')}" if isinstance(v, list) else f"{k}={v}"
                            for k, v in r["options"].items())
        table.add_row(f"[bold]{r['name']}[/]", r["runtime"], r["precision"], r["device"], escape(options), budgets, here)
    console.print(table)


@cli.command("tasks")
@click.option("--json", "as_json", is_flag=True, help="Print the tasks as JSON on stdout instead of a table.")
def tasks_cmd(as_json):
    """List the tasks: what a model takes and gives, and what is measured on it.

    \b
    A run records its task when it is trained (`image-classification` for runs older than
    tasks); its bundles carry it. Axis 0 of every tensor is the batch; a named dimension is
    fixed by the run (e.g. the image size it was trained at) or dynamic. Budgets in a target
    profile set goals on these metrics.

    \b
    Examples:
      edgetl tasks
      edgetl tasks --json | jq '.[].metrics[].name'
    """
    from rich.table import Table

    from edgetl.tasks import task_rows

    rows = task_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    spec = lambda t: f"{t['name']}: {t['dtype']} ({', '.join(map(str, t['shape']))})"  # noqa: E731
    table = Table(title="tasks", title_justify="left")
    for col in ("name", "inputs", "outputs", "metrics", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(f"[bold]{r['name']}[/]", escape("\n".join(map(spec, r["inputs"]))),
                      escape("\n".join(map(spec, r["outputs"]))),
                      "\n".join(f"{m['name']} ({m['better']})" for m in r["metrics"]), escape(r["description"]))
    console.print(table)


def _int_list(option: str, text: str) -> list[int]:
    from edgetl.errors import ConfigError

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated integers, e.g. {option} 1,8") from None


def _remote_options(f):
    """Options of every command that reaches a device over SSH."""
    f = click.option("--allow-rollback", is_flag=True, help="Install a bundle whose release is lower than the one "
                     "the device runs (refused otherwise).")(f)
    f = click.option("--connect-timeout", default=10, show_default=True, help="Seconds to wait for the SSH connection.")(f)
    f = click.option("--install", is_flag=True, help='pip install "edgetl[<runtime>]" on the device first (with the '
                     "python next to --remote-edgetl, else python3).")(f)
    f = click.option("--ssh-option", "-o", "ssh_options", multiple=True, envvar="EDGETL_SSH_OPTIONS", metavar="KEY=VALUE",
                     help="Extra `ssh -o` option, repeatable, e.g. -o IdentityFile=~/.ssh/pi -o ProxyJump=gateway "
                     "(env EDGETL_SSH_OPTIONS). ~/.ssh/config applies as usual.")(f)
    f = click.option("--remote-edgetl", default="edgetl", show_default=True, envvar="EDGETL_REMOTE_EDGETL",
                     metavar="COMMAND", help="edgetl on the device, e.g. /home/pi/venv/bin/edgetl when it lives in a "
                     "venv (env EDGETL_REMOTE_EDGETL).")(f)
    return f


def _trust_option(f):
    """--allow-unsigned for every command that opens a bundle: sets the opt-out for the whole command."""

    @functools.wraps(f)
    def wrapper(*args, allow_unsigned, **kwargs):
        from edgetl.bundle.signing import allowing_unsigned

        with allowing_unsigned(allow_unsigned):
            return f(*args, **kwargs)

    return click.option("--allow-unsigned", is_flag=True, envvar="EDGETL_ALLOW_UNSIGNED",
                        help="Accept unsigned bundles although trusted keys are configured (env "
                        "EDGETL_ALLOW_UNSIGNED=1). A bad signature or an unknown key is refused always.")(wrapper)


@cli.command("bench")
@click.argument("run", type=click.Path(path_type=str))
@click.option("--target", "--targets", "-t", "targets", multiple=True, callback=_joined,
              help="Comma-separated targets: profile or runtime names, or target/precision keys; repeatable "
              "(-t a -t b). Default: every compiled artifact.")
@click.option("--batch", "batches", default=",".join(map(str, BENCH.batches)), show_default=True,
              help="Comma-separated batch sizes, e.g. 1,8. Latency budgets are on batch 1.")
@click.option("--threads", type=int, help="Threads for every runtime and for PyTorch, the same for all rows so they "
              "compare. Default: this machine's physical cores.")
@click.option("--iterations", default=BENCH.iterations, show_default=True, help="Timed runs per batch size, after a "
              f"warm-up of >= {BENCH.warmup_iters} runs and >= {BENCH.warmup_s * 1000:g} ms.")
@click.option("--duration", type=float, help="Time each batch size for this many seconds instead of --iterations.")
@click.option("--device", help="Name of this machine in the result files (default: its host name).")
@click.option("--check", is_flag=True, help="Exit 1 when a budget of a target profile fails (for CI).")
@click.option("--remote", metavar="ssh://[user@]host[:port][/path]", help="Bench on this device over SSH: ships the "
              "target's bundle there (when it lacks it), runs `edgetl bench` on it and brings the result back.")
@click.option("--fleet", type=click.Path(path_type=str), help="TOML list of devices ([[device]] name, url, target) "
              "to bench in parallel over SSH.")
@click.option("--json", "as_json", is_flag=True, help="Bundles: print the bench result document (JSON, as the run's bench/ files hold) on "
              "stdout.")
@click.option("--data", type=click.Path(path_type=str), help="Bundles: a labelled image folder (one subfolder per "
              "label) or CSV (path,label) to measure top-1/top-5 on this device. Without it the accuracy budget "
              "reads 'not measured here'. A run is always measured on its validation split.")
@_remote_options
@_trust_option
def bench_cmd(run, targets, batches, threads, iterations, duration, device, check, remote, fleet, as_json, data,
              remote_edgetl, ssh_options, install, connect_timeout, allow_rollback):
    """Latency and accuracy of a run's compiled artifacts on this machine, next to PyTorch FP32.

    \b
    Examples:
      edgetl bench runs/flowers                                    # every artifact, this machine
      edgetl bench runs/flowers --target jetson-orin-nano --check  # exit 1 when a budget fails (CI)
      edgetl bench runs/flowers --batch 1,8 --threads 2 --iterations 500
      edgetl bench model-bundle.tar.gz                             # a bundle, on this device
      edgetl bench model-bundle.tar.gz --data ./labelled --check   # + accuracy on your labelled images
      edgetl bench runs/flowers --remote ssh://pi@raspberrypi.local --target raspberry-pi-5
      edgetl bench runs/flowers --fleet fleet.toml                 # [[device]] name, url, target

    \b
    How it measures: every artifact (and the PyTorch eager FP32 reference, for the
    "vs PyTorch" speed-up) is loaded in a fresh process with fixed threads, run on real
    validation images, warmed up (>= 50 runs and >= 200 ms), then timed run by run:
    p50/p90/p99, throughput, first inference (load + first run) and peak resident memory.
    The reference follows the same rule (a slow one is cut once its median is known to
    +-5%); the notes under the table say how it ran, and "!" marks a speed-up measured
    while other processes used the CPU. Accuracy is evaluated on the full validation
    split in the artifact's own runtime: top-1, drop vs FP32 (points), agreement, each
    with its 95% interval. Budgets of the target profile give PASS, FAIL, or UNDECIDED
    when the drop's interval straddles the budget (too few images to tell); a runtime
    that cannot run here (TensorRT without a GPU) is listed as "n/a here".

    \b
    Writes runs/<name>/bench/<target>/<precision>@<device>.json (its "schema" names the
    version) and a summary in the manifest; `edgetl report` turns them into tables and plots.
    Exit codes: 0 done (UNDECIDED budgets are printed, not failed), 1 a budget failed
    (with --check), 2 a user error or an artifact that could not be benched (its row
    says why).
    """
    from rich.markup import escape

    from edgetl.bench.run import bench
    from edgetl.bench.system import summary
    from edgetl.bench.table import print_table
    from edgetl.errors import ConfigError
    from edgetl.stages import RichReporter

    if duration is not None and click.get_current_context().get_parameter_source("iterations").name == "COMMANDLINE":
        raise ConfigError("--iterations and --duration exclude each other: pass one of them")
    from edgetl.bundle.format import is_bundle

    if data is not None and (remote or fleet or not is_bundle(run)):
        raise ConfigError("--data applies to a bundle benched on this machine (edgetl bench BUNDLE --data FOLDER); "
                          "a run is measured on its own validation split")
    if remote or fleet or is_bundle(run):  # a bundle here, or a device over SSH: edgetl.bundle does it
        from edgetl.bundle.remote import Access

        settings = BenchSettings.parse(batches=_int_list("--batch", batches), threads=threads, iterations=iterations,
                                       duration_s=duration)
        access = Access(list(ssh_options), remote_edgetl, install, connect_timeout, allow_rollback)
        return _bench_elsewhere(run, targets, device, check, remote, fleet, as_json, settings, access, data)
    results = bench(run, targets=[t.strip() for t in targets.split(",") if t.strip()] if targets else None,
                    device_name=device, batches=_int_list("--batch", batches), threads=threads, iterations=iterations,
                    duration_s=duration, reporter=RichReporter(console))
    print_table(console, results.rows, f"bench on {results.device}")
    console.print(f"[dim]{escape(summary(results.system))}[/]", highlight=False)
    console.print(f"results in [bold]{results.run / 'bench'}[/]; `edgetl report {run}` for plots")
    _say_undecided(results.undecided_gates())
    results.raise_for_errors()
    if check:
        results.raise_for_gates()
        if results.unchecked_gates():
            console.print(f"[yellow]budgets not checked (cannot run here):[/] {', '.join(results.unchecked_gates())}")
        if results.undecided_gates():
            console.print("[bold yellow]no budget failed, but some could not be decided (above)[/]")
        elif not results.checked_gates():
            console.print("[bold yellow]no artifact with budgets was measured here: --check decided nothing[/]")
        else:
            console.print("[green]all budgets of the artifacts measured here pass[/]")


def _say_undecided(lines: list[str]) -> None:
    """UNDECIDED and not-measured budgets do not fail --check: say them where no one can miss them."""
    for line in lines:
        # A drop this machine could not measure (no --data) is not one the data could not decide.
        label = "NOT MEASURED HERE" if ": not measured here" in line else "UNDECIDED"
        console.print(f"[bold yellow]{label}[/] {escape(line)}", highlight=False)


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


# -- bundles and devices ---------------------------------------------------------------------------
@cli.command("bundle")
@click.argument("run", type=click.Path(path_type=str))
@click.option("--target", "-t", required=True, help="Compiled target (profile or runtime name) to package.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), help="Which artifact when the target "
              "was compiled in several precisions (default, as compile: the profile's precision, int8 for a "
              "bare runtime name).")
@click.option("--sign", "sign_key", type=click.Path(path_type=str), metavar="KEY",
              help="Sign the manifest with this Ed25519 private key (from `edgetl keys new`).")
@click.option("--release", type=int, help="Release counter written into the manifest (default: UTC seconds now); "
              "devices refuse to go back to a lower one.")
def bundle_cmd(run, target, precision, sign_key, release):
    """Package a compiled artifact for a device: runs/<name>/bundles/<target>-<precision>.tar.gz.

    \b
    The bundle holds the artifact (for TensorRT: the ONNX and build settings; the device
    builds its own engine), labels, preprocessing, the workstation's accuracy and latency,
    and golden inputs with their expected outputs. On the device, with only
    `pip install "edgetl[<runtime>]"` (no PyTorch): edgetl verify / predict / bench BUNDLE.

    \b
    Examples:
      edgetl bundle runs/flowers --target jetson-orin-nano
      edgetl bundle runs/flowers --target onnxruntime --precision fp32
      edgetl bundle runs/flowers --target jetson-orin-nano --sign ~/.config/edgetl/keys/edgetl.key
      edgetl ship runs/flowers/bundles/jetson-orin-nano-int8.tar.gz ssh://nvidia@orin.local/opt/models
    """
    from edgetl.bundle.create import BundleRecord, choose_compiled, create_bundle
    from edgetl.rundir import RunDir

    with console.status(f"bundling {target}: golden outputs, hashes"):
        path = create_bundle(run, target, precision, sign=sign_key, release=release)
    opened = RunDir.open(run)
    key, _ = choose_compiled(opened, target, precision)
    made = opened.entries(BundleRecord)[key]
    signed = f"signed by {made.signed_by}" if made.signed_by else "unsigned"
    console.print(f"wrote [bold]{path}[/] ({made.runtime} {made.precision}, {made.size_bytes / 1e6:.2f} MB, "
                  f"release {made.release}, {signed}, sha256 {made.sha256[:16]}…)", highlight=False)
    console.print(f"next: edgetl ship {path} ssh://user@device/path", highlight=False)


@cli.group()
def keys():
    """Ed25519 keys that sign bundles (workstation) and the keys a device trusts.

    \b
    Trusted public keys live in $EDGETL_TRUSTED_KEYS (folders or files, separated by ':'),
    else in ~/.config/edgetl/trusted-keys/ ($XDG_CONFIG_HOME honoured). Once one is there,
    verify, predict, bench and ship accept only bundles signed by a trusted key (unsigned
    ones with --allow-unsigned); with none, unsigned bundles work as before.

    \b
    Examples:
      edgetl keys new --name release                  # ~/.config/edgetl/keys/release.{key,pub}
      edgetl bundle runs/flowers -t raspberry-pi-5 --sign ~/.config/edgetl/keys/release.key
      edgetl keys trust release.pub                   # on the device (copy the .pub there first)
      edgetl keys list
    """


@keys.command("new")
@click.option("--out", type=click.Path(path_type=str), help="Folder for NAME.key (private, mode 0600) and NAME.pub. "
              "Default: ~/.config/edgetl/keys.")
@click.option("--name", default="edgetl", show_default=True, help="File name of the pair, without suffix.")
def keys_new(out, name):
    """Make an Ed25519 key pair for signing bundles; never overwrites a key."""
    from edgetl.bundle import signing
    from edgetl.errors import ConfigError

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (a file name, no folders)")
    private, public = signing.new_key_pair(out or signing.default_key_dir(), name)
    kid = signing.key_id(signing.load_public_key(public))
    console.print(f"wrote [bold]{private}[/] (private: keep it secret) and [bold]{public}[/] (key id {kid})", highlight=False)
    console.print(f"next: edgetl bundle RUN --target T --sign {private}; on each device: edgetl keys trust {public.name}",
                  highlight=False)


@keys.command("trust")
@click.argument("public_key", metavar="PUB", type=click.Path(path_type=str))
def keys_trust(public_key):
    """Trust a public key (PEM or raw 32 bytes): copy it into the trusted keys folder."""
    from edgetl.bundle import signing

    kid, dest = signing.trust(public_key)
    console.print(f"trusted key {kid}: [bold]{dest}[/]", highlight=False)


@keys.command("list")
def keys_list():
    """List the trusted public keys and where they are read from."""
    from rich.table import Table

    from edgetl.bundle import signing

    places = ", ".join(str(p) for p in signing.trusted_key_paths())
    found = signing.trusted_keys()
    if not found:
        console.print(f"no trusted keys (read from {places}): unsigned bundles are accepted", highlight=False)
        return
    table = Table("key id", "file", title=f"trusted keys ({places})", title_justify="left")
    for kid, (_, path) in sorted(found.items()):
        table.add_row(kid, str(path))
    console.print(table)


@cli.command("ship")
@click.argument("bundle", type=click.Path(path_type=str))
@click.argument("url", metavar="ssh://[user@]host[:port][/path]")
@_remote_options
@_trust_option
def ship_cmd(bundle, url, remote_edgetl, ssh_options, install, connect_timeout, allow_rollback):
    """Copy a bundle to a device over SSH, check it there and make it current.

    \b
    Uses the system ssh client, so ~/.ssh/config, keys, agents and jump hosts work.
    Steps: copy to <path>/<name>/.incoming/, compare its sha256 on arrival, extract
    into <path>/<name>/releases/<id>/ (files 0644, folders 0755: the archive's owners
    and modes are not kept), run `edgetl verify` there (golden outputs on the device's
    runtime; file hashes only when edgetl is absent), then switch the
    <path>/<name>/current symlink atomically. If anything fails the device keeps its
    previous bundle and the upload is removed. A bundle whose release is lower than
    the installed one is refused unless --allow-rollback. A path without a leading
    /~/ is absolute; no path: ~/edgetl; ~user paths are refused.

    \b
    Examples:
      edgetl ship runs/flowers/bundles/raspberry-pi-5-int8.tar.gz ssh://pi@raspberrypi.local/~/models
      edgetl ship b.tar.gz ssh://nvidia@orin:2222/opt/models --install --remote-edgetl /opt/venv/bin/edgetl
    """
    from edgetl.bundle.ship import ship

    with console.status("shipping") as status:
        done = ship(bundle, url, install=install, remote_edgetl=remote_edgetl, ssh_options=ssh_options,
                    connect_timeout=connect_timeout, allow_rollback=allow_rollback, step=lambda m: status.update(m))
    how = "golden outputs verified on the device" if done.verified == "golden" else \
        "file hashes checked (no edgetl there: pass --install to verify its outputs)"
    copied = "copied" if done.copied else "already on the device"
    console.print(f"[green]shipped[/] {done.name} to {done.url} ({copied}); {how}", highlight=False)
    console.print(f"  {done.current} -> releases/{Path(done.release).name}", highlight=False)


@cli.command("verify")
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("--threads", type=int, help="Runtime threads (default: the target profile's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_trust_option
def verify_cmd(bundle, threads, as_json):
    """Check a bundle on this machine: signature, manifest, file hashes, then golden outputs.

    \b
    Exit 0 when the signature is by a trusted key (or the bundle is unsigned and no key is
    trusted here, or --allow-unsigned), every file matches its sha256 and the golden inputs
    give the workstation's outputs within edgetl's tolerance for the precision on this
    machine's runtime; exit 2 otherwise, naming what differs.

    \b
    Examples:
      edgetl verify model-bundle.tar.gz
      EDGETL_TRUSTED_KEYS=/etc/edgetl/keys edgetl verify model-bundle.tar.gz --json
    """
    from edgetl.bundle.runner import verify

    _refuse_run_folder(bundle)
    result = verify(bundle, threads)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    signature = "unsigned" if result["signature"] == "unsigned" else f"signature {result['signature']}"
    console.print(
        f"[green]OK[/] {result['bundle']} ({signature}): {result['files_checked']} files match their sha256; "
        f"{result['golden_samples']} golden samples reproduce the workstation's outputs on {result['runtime']} "
        f"(top-1 agreement {result['top1_agreement']:.0%}, worst difference {result['worst_diff_over_tolerance']:.0%} "
        "of the tolerance)", highlight=False)


def _refuse_run_folder(path: str) -> None:
    """A run folder is the usual wrong guess for a bundle: name the command that makes one from it."""
    from edgetl.bundle.format import is_bundle
    from edgetl.errors import BundleError

    manifest = Path(path) / "manifest.json"
    if not Path(path).is_dir() or is_bundle(path) or not manifest.is_file():
        return
    try:
        run_manifest = json.loads(manifest.read_text(encoding="utf-8"))
        if "format" in run_manifest or not {"schema", "artifacts", "train", "compiled"} & set(run_manifest):
            return  # not a run's manifest either: the bundle check says what is wrong
        compiled = run_manifest.get("compiled") or {}
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError, RecursionError):
        return
    target = next((e.get("target") for e in compiled.values() if isinstance(e, dict)), None) or "T"
    raise BundleError(f"{path} is a run folder, not a bundle: edgetl bundle {path} --target {target}, "
                      f"then verify the .tar.gz it writes")


@cli.command("predict")
@click.argument("bundle", type=click.Path(path_type=str))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--top", default=3, show_default=True, help="How many labels per image.")
@click.option("--threads", type=int, help="Runtime threads (default: the target profile's).")
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
@_trust_option
def predict_cmd(bundle, images, top, threads, as_json):
    """Classify images, or every image under a folder, with a bundle (the bundle comes first).

    \b
    Examples:
      edgetl predict model-bundle.tar.gz photo.jpg --top 3
      edgetl predict model-bundle.tar.gz shots/*.jpg              # several images, in this order
      edgetl predict model-bundle.tar.gz ./photos --json > predictions.json

    \b
    An image that cannot be read (corrupt, truncated, not an image, a FIFO or device
    named like one) gets an error in its row (JSON: "error") and the others go on; the
    command then exits 2 with a one-line count. FIFOs and devices are never opened.
    """
    from rich.table import Table

    from edgetl.bundle.runner import predict
    from edgetl.errors import DataError

    results = predict(bundle, images, top=top, threads=threads)
    failed = [r for r in results if "error" in r]
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        k = max(len(r["top"]) for r in results)
        table = Table("image", *[f"#{i + 1}" for i in range(k)], *(["error"] if failed else []))
        folder = Path(images[0]) if len(images) == 1 and Path(images[0]).is_dir() else None
        for r in results:
            name = Path(r["image"]).relative_to(folder).as_posix() if folder else r["image"]
            cells = [f"{t['label']} ({t['score']:.1%})" for t in r["top"]] or [""] * k
            table.add_row(escape(name), *cells, *([escape(r.get("error", ""))] if failed else []))
        console.print(table)
    if failed:
        raise DataError(f"{len(failed)} of {len(results)} image(s) could not be read, e.g. {failed[0]['error']}")


@cli.command("build")
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("--force", is_flag=True, help="Rebuild even when a cached engine exists.")
@click.option("--any-arch", is_flag=True, help="Build although the bundle was made for another GPU architecture.")
@_trust_option
def build_cmd(bundle, force, any_arch):
    """Finish a bundle's artifact on this device (a TensorRT engine), and cache it.

    \b
    Engines only run on the GPU and TensorRT version that built them, so TensorRT bundles
    carry the ONNX; the engine is cached by GPU name, compute capability and TensorRT
    version in engines/ under the cache root: $EDGETL_CACHE, else $XDG_CACHE_HOME/edgetl,
    else ~/.cache/edgetl. verify, predict and bench build it on first use too; run this
    once after shipping to take the wait out of the first run.

    \b
    Examples:
      edgetl build model-bundle.tar.gz
      EDGETL_CACHE=/data/edgetl edgetl build model-bundle.tar.gz --force
    """
    from edgetl.backends._trt_engine import engine_info
    from edgetl.bundle.runner import open_bundle, require_runtime
    from edgetl.errors import BundleError

    opened = open_bundle(bundle)
    backend = require_runtime(opened)
    if not backend.builds_on_device:
        raise BundleError(f"bundle {opened.name} runs on {opened.runtime}: there is no engine to build, it runs as it is")
    with console.status(f"building the {opened.runtime} engine (minutes on a Jetson)"):
        path = backend.prepare(opened, force=force, any_arch=any_arch)
    info = engine_info(path)
    console.print(f"engine [bold]{path}[/] ({info.get('gpu')}, {info.get('gpu_arch')}, {info.get('tensorrt')})", highlight=False)


@cli.command("val")
@click.argument("bundle", type=click.Path(path_type=str))
@click.argument("data", type=click.Path(path_type=str))
@click.option("--threads", type=int, help="Runtime threads (default: the target profile's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_trust_option
def val_cmd(bundle, data, threads, as_json):
    """Accuracy of a bundle on this machine on labelled images: top-1, top-5, per class.

    \b
    DATA is a folder with one subfolder per label (named like the bundle's labels; a
    subset of them is fine) or a CSV of path,label rows. Images go through the bundle's
    own preprocessing; no PyTorch needed. Every number has its 95% interval for the
    number of images (Wilson); the drop is against the workstation's FP32 top-1 from the
    bundle manifest, measured on other images (unpaired interval), shown beside it.

    \b
    Examples:
      edgetl val model-bundle.tar.gz ./labelled
      edgetl val model-bundle.tar.gz labels.csv --json > accuracy.json
    """
    from edgetl.bench.labelled import bundle_accuracy

    with console.status("evaluating"):
        result = bundle_accuracy(bundle, data, threads)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    console.print(f"{escape(result['bundle'])} ({result['runtime']} {result['precision']})", highlight=False)
    _print_accuracy(result["accuracy"], result["workstation_accuracy"])


def _bench_elsewhere(run, targets, device, check, remote, fleet, as_json, settings, access, data=None):
    """``edgetl bench`` on a bundle (this machine), on a device (--remote) or on a fleet (--fleet)."""
    from edgetl.bench.run import DocumentResult
    from edgetl.errors import ConfigError
    from edgetl.stages import RichReporter

    if remote and fleet:
        raise ConfigError("--remote and --fleet exclude each other: pass one of them")
    if fleet:
        return _bench_fleet(run, fleet, check, settings, access)
    if remote:
        from edgetl.bundle.remote import remote_bench

        target, _, precision = (targets or "").partition("/")
        if "," in target:
            raise ConfigError("--remote benches one target: pass --target NAME (or NAME/PRECISION)")
        with console.status(f"benching on {remote}") as status:
            doc = remote_bench(run, remote, target or None, precision=precision or None, device_name=device,
                               settings=settings, access=access, step=lambda m: status.update(m))
        _print_bundle_bench(doc)
        console.print(f"result in [bold]{Path(run) / doc['file']}[/]", highlight=False)
    else:
        from edgetl.bundle.runner import bench as bench_bundle

        if targets:
            raise ConfigError("--target does not apply to a bundle: it holds one artifact")
        if access.install or access.ssh_options or access.allow_rollback:
            raise ConfigError("--install, --ssh-option and --allow-rollback need --remote or --fleet")
        with RichReporter(err_console if as_json else console).measuring() as progress:
            doc = bench_bundle(run, settings=settings, device_name=device, data=data,
                               progress=progress.callback(Path(run).name))
        if as_json:
            click.echo(json.dumps(doc))
        else:
            _print_bundle_bench(doc)
    if not as_json:
        _say_undecided(doc["gates"].get("undecided") or [])
    if check:
        DocumentResult(doc).raise_for_gates()


def _print_bundle_bench(doc):
    from rich.table import Table

    from edgetl.bench.system import summary
    from edgetl.bench.table import fmt_ms

    art, golden = doc["artifact"], doc["golden"]
    table = Table("batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "img/s",
                  title=f"{art['bundle']} ({art['runtime']} {art['precision']}) on {doc['device']['name']}")
    for row in doc["latency"]:
        table.add_row(str(row["batch"]), *(fmt_ms(row[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")),
                      f"{row['throughput_ips']:.1f}")
    console.print(table)
    busy = [str(row["batch"]) for row in doc["latency"] if (row.get("contention") or {}).get("busy")]
    if busy:
        console.print(f"[yellow]! batch {', '.join(busy)} measured while other processes used the CPU: "
                      "latencies may be far off[/]", highlight=False)
    peak = doc["memory"].get("session_peak_mb")
    memory = "—" if peak is None else f"{peak:.0f}"  # a device may not say
    console.print(f"first inference {fmt_ms(doc['load']['first_inference_ms'])} ms · session memory "
                  f"{memory} MB · golden top-1 agreement {golden['top1_agreement']:.0%} · "
                  f"gate {doc['gates']['status']}", highlight=False)
    if doc.get("accuracy"):
        _print_accuracy(doc["accuracy"], doc.get("workstation_accuracy"))
    for check in doc["gates"]["checks"]:
        colour = {"PASS": "green", "FAIL": "bold red"}.get(check["status"], "bold yellow")
        console.print(f"[{colour}]{escape(check['status'])}[/] {escape(check['reason'])}", highlight=False)
    console.print(f"[dim]{escape(summary(doc['device']))}[/]", highlight=False)


def _print_accuracy(acc: dict, workstation: dict | None) -> None:
    """Top-1/top-5/drop with 95% intervals on this device beside the workstation's, then per class."""
    from rich.table import Table

    def pct(v, ci=None):
        return "—" if v is None else f"{v:.1%}" + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "")

    ws = workstation or {}
    table = Table("", "this device [95% CI]", "workstation (bundle manifest)",
                  title=f"accuracy on {acc['source']} ({acc['n']} images)", title_justify="left")
    table.add_row("top-1", pct(acc["top1"], acc.get("top1_ci")), pct(ws.get("top1")) + (f" (n={ws['n']})" if ws.get("n") else ""))
    if "top5" in acc:
        table.add_row("top-5", pct(acc["top5"], acc.get("top5_ci")), "—")
    if ws.get("fp32_top1") is not None:
        table.add_row("FP32 top-1", "— (no FP32 model here)", pct(ws["fp32_top1"]))
    if acc.get("drop_pp") is not None:
        lo, hi = acc["drop_ci_pp"]
        table.add_row("drop vs FP32 (pp)", f"{acc['drop_pp']:+.2f} [{lo:+.2f}, {hi:+.2f}]",
                      "—" if ws.get("drop_pp") is None else f"{ws['drop_pp']:+.2f}")
    console.print(table)
    per_class = Table("class", "images", "top-1 [95% CI]", title="per class", title_justify="left")
    for row in acc["per_class"]:
        per_class.add_row(escape(row["class"]), str(row["n"]), pct(row["top1"], row["top1_ci"]))
    console.print(per_class)
    if acc.get("drop_against"):
        console.print(f"[dim]drop against {escape(acc['drop_against'])}[/]", highlight=False)
    if acc.get("skipped"):
        console.print(f"[yellow]{len(acc['skipped'])} unreadable image(s) skipped[/], first: "
                      f"{escape(acc['skipped'][0]['reason'])}", highlight=False)


def _bench_fleet(run, fleet, check, settings, access):
    from rich.table import Table

    from edgetl.bench.table import fmt_ms
    from edgetl.bundle.remote import bench_fleet

    with console.status(f"benching the fleet of {fleet}") as status:
        rows = bench_fleet(run, fleet, settings=settings, access=access,
                           step=lambda dev, m: status.update(f"{dev}: {m}"))
    table = Table("device", "target", "status", "p50 ms", "p90 ms", "gate", "note", title=f"fleet bench ({fleet})")
    for r in rows:
        ok = r["status"] == "ok"
        table.add_row(r["device"], r["target"], "[green]ok[/]" if ok else "[red]failed[/]", fmt_ms(r.get("p50_ms")),
                      fmt_ms(r.get("p90_ms")), r.get("gate", "—"), r.get("file") if ok else r["reason"])
    console.print(table)
    rows.raise_for_errors()
    if check:
        rows.raise_for_gates()


@cli.command()
@click.option("--config", "config_file", type=click.Path(path_type=str),
              help="TOML file holding any of these options (see README); the command line wins over it.")
@click.option("--data", type=click.Path(path_type=str), help="Image folder or CSV manifest (path,label).")
@click.option("--out", help="Run directory (default runs/exp). Rerunning only does what changed.")
# --target too: compile and bench spell it so, and a user going from them to deploy types it.
@click.option("--targets", "--target", "-t", "targets", metavar="NAMES", multiple=True, callback=_joined,
              help="Comma-separated device profiles or runtimes, repeatable (-t a -t b; default host-cpu).")
@model_options(TrainInputs, TrainOptions, with_defaults=False)
@click.option("--precision", "precisions", metavar="LIST", help="Comma-separated precisions (default: each profile's).")
@click.option("--calibration", metavar="NAME|PATH", help="int8 calibration recipe (default: the profile's).")
@click.option("--gpu-arch", metavar="smXY", help="TensorRT compute capability (default: the profile's).")
@click.option("--threads", type=int, help="CPU threads for compile checks and bench (default: physical cores).")
@click.option("--batch", "batches", metavar="LIST",
              help=f"Bench batch sizes, e.g. 1,8 (default {','.join(map(str, BENCH.batches))}).")
@click.option("--iterations", type=int, help=f"Bench iterations per measurement (default {BENCH.iterations}).")
@click.option("--no-bundle", is_flag=True, help="Make no bundles (train, compile, bench and report only).")
@click.option("--sign", type=click.Path(path_type=str), metavar="KEY",
              help="Sign every bundle with this Ed25519 private key (`edgetl keys new`).")
@click.option("--check", is_flag=True, help="Exit 1 when a budget of a target profile fails (for CI).")
def deploy(config_file, data, out, targets, precisions, calibration, gpu_arch, threads, batches, iterations,
           no_bundle, sign, check, **params):
    """Train, compile, bench, bundle and report in one command.

    Every option (targets, precisions, recipes, batches, [train] fields, the data path) is
    checked before training starts. Stages whose inputs did not change are skipped, so adding
    a target to an existing run only builds, benches and bundles the new target.

    \b
    At the end a table gives each artifact's gate on this machine: PASS, FAIL (with the
    failing budget), no budgets (a bare runtime), or not measured here (e.g. TensorRT
    without a GPU: bench its bundle on the device). An artifact that FAILED a budget is
    not bundled (`edgetl bundle RUN --target T --precision P` still makes it). Bundles are
    runs/<name>/bundles/<target>-<precision>.tar.gz.
    Exit codes: 0 done, 1 a budget failed (with --check), 2 a user error or an artifact
    that could not be built or benched.

    \b
    Examples:
      edgetl deploy --data ./images --targets host-cpu,jetson-orin-nano --out runs/flowers
      edgetl deploy --config deploy.toml --targets host-cpu,raspberry-pi-5
      edgetl deploy --data ./images --targets raspberry-pi-5 --check     # CI: exit 1 on a failed budget
      edgetl deploy --data ./images --targets raspberry-pi-5 --sign ~/.config/edgetl/keys/release.key
    """
    from edgetl.pipeline import deploy as run_deploy
    from edgetl.pipeline import load_config

    run_level, options = _take_fields(params, TrainInputs), _take_fields(params, TrainOptions)
    overrides = {
        "data": data, "out": out, "targets": _names(targets), "precisions": _names(precisions),
        "calibration": calibration, "gpu_arch": gpu_arch, "threads": threads, "iterations": iterations,
        "batches": _int_list("--batch", batches) if batches else None,
        "bundle": False if no_bundle else None, "sign": sign, "check": True if check else None,
        **run_level, "train": options,
    }
    if config_file is None and data is None:
        raise click.UsageError("give --data (or a --config file that sets data)")
    run_deploy(load_config(config_file, overrides), console=console)


def main() -> None:
    cli(prog_name="edgetl")


if __name__ == "__main__":
    main()
