"""`edgetl optimize`: search, measure and pick the fastest artifact that meets a target's budgets."""

from __future__ import annotations

import sys

import click

from edgetl.cli import cli, console
from edgetl.cli._options import _remote_options


@cli.command("optimize")
@click.argument("run", type=click.Path(path_type=str))
@click.option("--target", "-t", required=True, help="Target profile (see `edgetl targets`): its device, CPU, "
              "threads and budgets define the search.")
@click.option("--budget", default="10m", show_default=True, help="Time for the whole search: seconds or 90s, 10m, 1h. "
              "When it is spent no new candidate is built and the points already measured are finished.")
@click.option("--max-drop", type=float, metavar="PP", help="Accuracy-drop budget in percentage points, instead of "
              "the profile's max_accuracy_drop_pp.")
@click.option("--threads", type=int, help="Time every point at this many threads. Default: the profile's threads, "
              "else 1 and every physical core of the device.")
@click.option("--runtimes", help="Comma-separated runtimes to search, e.g. onnxruntime,openvino. Default: every "
              "installed runtime that serves the profile's device.")
@click.option("--force", is_flag=True, help="Rebuild and retime every candidate instead of reusing the cache.")
@click.option("--remote", metavar="ssh://[user@]host[:port][/path]", help="Time on this device over SSH: each "
              "candidate is compiled here, shipped as a bundle and timed there.")
@click.option("--sign", "sign_key", type=click.Path(path_type=str), metavar="KEY",
              help="With --remote: sign the bundles shipped for timing with this Ed25519 private key (needed when "
              "the device trusts keys: `edgetl keys trust`).")
@_remote_options
def optimize_cmd(run, target, budget, max_drop, threads, runtimes, force, remote, sign_key, remote_edgetl, ssh_options,
                 install, connect_timeout, allow_rollback):
    """Find the fastest artifact that meets a target's budgets, by measurement.

    \b
    What is searched: every installed runtime that serves the profile's device
    x the variants each runtime declares for that device (precision, int8
    scheme, OpenVINO running ONNX Runtime's QDQ model, fp16/bf16 hints where
    the CPU has them) x threads (the profile's, else 1 and all cores).
    How it is measured: each candidate's accuracy on the full validation split
    in its own runtime (next to the FP32 PyTorch model), its batch-1 latency
    on the device, each in a fresh process; PyTorch eager is timed once at
    the same threads for the "vs PyTorch" column.
    Pruned: a short round times every point; successive halving keeps the
    fastest third (at least 2) of those meeting the accuracy budget; the last
    round uses the full bench policy (>= 50 warm-up runs, >= 200 timed runs).
    Recovery: when no int8 candidate meets the accuracy budget, other
    calibration methods, then keeping the most sensitive layers in float.
    Picked: the lowest final p50 among the points meeting every budget (an
    accuracy drop whose interval straddles the budget counts on its point
    estimate). It becomes compiled/<target>/optimized.
    Results are cached under RUN/optimize/<target>/ by fingerprint: a rerun
    rebuilds nothing that is unchanged.

    \b
    Examples:
      edgetl optimize runs/flowers --target host-cpu
      edgetl optimize runs/flowers --target host-cpu --budget 90s --runtimes onnxruntime
      edgetl optimize runs/flowers --target host-cpu --max-drop 0.5 --threads 2
      edgetl optimize runs/flowers --target raspberry-pi-5 --remote ssh://pi@raspberrypi.local

    \b
    Exit codes: 0 a pick meets every budget, 1 no candidate meets them (the
    table says why; nothing is promoted), 2 a user error.
    """
    from edgetl.optimize import optimize
    from edgetl.optimize.table import candidate_table, summary
    from edgetl.stages import RichReporter

    access = None
    if remote:
        from edgetl.bundle.remote import Access

        access = Access(list(ssh_options), remote_edgetl, install, connect_timeout, allow_rollback, sign=sign_key)
    elif install or ssh_options or allow_rollback or sign_key:
        from edgetl.errors import ConfigError

        raise ConfigError("--install, --ssh-option, --allow-rollback and --sign need --remote")
    result = optimize(run, target, remote=remote, access=access, budget_s=budget, max_drop_pp=max_drop,
                      threads=threads, runtimes=runtimes, force=force)
    RichReporter(console).table(candidate_table(result.record))  # a log gets every column unfolded
    console.print(summary(result.record), highlight=False, markup=False)
    if result.record.pick is None:
        sys.exit(1)
