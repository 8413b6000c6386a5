"""`edgetl bench`: a run here, a bundle, a device over SSH or a fleet, and how their results print."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape

from edgetl.bench.settings import DEFAULTS as BENCH
from edgetl.bench.settings import BenchSettings
from edgetl.cli import cli, console, err_console
from edgetl.cli._options import (
    _int_list,
    _joined,
    _remote_options,
    _trust_option,
)


@cli.command("bench")
@click.argument("run", type=click.Path(path_type=str))
@click.option("--target", "--targets", "-t", "targets", multiple=True, callback=_joined,
              help="Comma-separated targets: profile or runtime names, or target/precision keys "
              "(target/optimized: the pick of `edgetl optimize`); repeatable "
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
    when the drop's interval straddles the budget (too few samples to tell); a runtime
    that cannot run here (TensorRT without a GPU) is listed as "n/a here".

    \b
    Writes runs/<name>/bench/<target>/<precision>@<device>.json (its "schema" names
    the version; optimize's pick: <target>/optimized@<device>.json) and a summary in the manifest; `edgetl report` turns them into tables and plots.
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
    table = Table("batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "samples/s",
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


def _task_metrics(acc: dict) -> list[str]:
    """The metrics besides top-1/top-5 that come with an interval (``<name>_ci``)."""
    return [k for k in acc if f"{k}_ci" in acc and k not in ("top1", "top5")]


def _print_accuracy(acc: dict, workstation: dict | None) -> None:
    """Top-1/top-5/drop with 95% intervals on this device beside the workstation's, then per class."""
    from rich.table import Table

    def pct(v, ci=None):
        return "—" if v is None else f"{v:.1%}" + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "")

    ws = workstation or {}
    table = Table("", "this device [95% CI]", "workstation (bundle manifest)",
                  title=f"accuracy on {acc['source']} ({acc['n']} samples)", title_justify="left")
    table.add_row("top-1", pct(acc["top1"], acc.get("top1_ci")), pct(ws.get("top1")) + (f" (n={ws['n']})" if ws.get("n") else ""))
    if "top5" in acc:
        table.add_row("top-5", pct(acc["top5"], acc.get("top5_ci")), "—")
    if acc.get("false_accept_rate") is not None:  # keyword spotting: background clips answered as a word
        table.add_row(f"false accepts ({acc['false_accept_n']} background)",
                      pct(acc["false_accept_rate"], acc.get("false_accept_rate_ci")), pct(ws.get("false_accept_rate")))
    for name in _task_metrics(acc):  # the task's own, e.g. text's macro-F1 (the false-accept rate: above)
        if name == "false_accept_rate":
            continue
        lo, hi = acc[f"{name}_ci"]
        table.add_row(name, f"{acc[name]:.3f} [{lo:.3f}, {hi:.3f}]",
                      "—" if ws.get(name) is None else f"{ws[name]:.3f}")
    if ws.get("fp32_top1") is not None:
        table.add_row("FP32 top-1", "— (no FP32 model here)", pct(ws["fp32_top1"]))
    if acc.get("drop_pp") is not None:
        lo, hi = acc["drop_ci_pp"]
        table.add_row("drop vs FP32 (pp)", f"{acc['drop_pp']:+.2f} [{lo:+.2f}, {hi:+.2f}]",
                      "—" if ws.get("drop_pp") is None else f"{ws['drop_pp']:+.2f}")
    console.print(table)
    per_class = Table("class", "samples", "top-1 [95% CI]", title="per class", title_justify="left")
    for row in acc["per_class"]:
        per_class.add_row(escape(row["class"]), str(row["n"]), pct(row["top1"], row["top1_ci"]))
    console.print(per_class)
    if acc.get("drop_against"):
        console.print(f"[dim]drop against {escape(acc['drop_against'])}[/]", highlight=False)
    if acc.get("skipped"):
        console.print(f"[yellow]{len(acc['skipped'])} unreadable sample(s) skipped[/], first: "
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


