"""The ``edgetl`` command: thin wrappers that parse options, call a stage and print.

Every command maps to a function a notebook can call too (``edgetl.train``, ``edgetl.compile`` ...).
This module holds the group, its error and signal handling and ``main``; the commands live in
``workstation`` (train ... deploy), ``bench`` and ``device`` (verify, predict, val, enroll, build, ship, keys).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import click
from rich.console import Console
from rich.markup import escape

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
        except Terminated as exc:
            err_console.print(f"[yellow]terminated[/]{_next_step(exc)}", highlight=False, soft_wrap=True)
            sys.exit(128 + signal.SIGTERM)
        except KeyboardInterrupt as exc:
            err_console.print(f"[yellow]interrupted[/]{_next_step(exc)}", highlight=False, soft_wrap=True)
            sys.exit(130)
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _next_step(stop: KeyboardInterrupt) -> str:
    """What a command that was stopped set on the exception as the way to go on (e.g. ``--resume``)."""
    step = getattr(stop, "next_step", None)
    return f": {escape(step)}" if step else ""


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="edgetl")
def cli():
    """edgetl: from a pretrained backbone to a validated deployment on edge hardware.

    \b
    Stages (each reads and extends a run directory, runs/<name>/):
      train     adapt a pretrained backbone to your images
      compile   export to ONNX, calibrate, quantize and build per runtime
      bench     latency percentiles + accuracy vs FP32, budgets as gates
      optimize  measure runtimes x variants x threads, pick the fastest in budget
      report    Markdown / HTML / JSON report of a run
      bundle    self-checking package for a device; ship copies it over SSH
      deploy    all of the above in one command

    \b
    On the device (no PyTorch needed): verify, predict, val (accuracy on labelled
    images), bench BUNDLE, build (TensorRT engine), enroll (add a class to a
    prototype-head bundle). keys: sign bundles, trust keys.

    \b
    Exit codes: 0 done, 1 a budget failed (--check), 2 a user error (one line),
    130 Ctrl-C, 143 SIGTERM (128 + 15, as a shell reports it). Interrupted or
    terminated, a stage removes its temporary files and keeps earlier results.
    """




def main() -> None:
    cli(prog_name="edgetl")



# The commands register themselves on ``cli`` when their modules are imported.
from edgetl.cli import bench, device, optimize, workstation  # noqa: E402
from edgetl.cli._options import model_options  # noqa: E402
from edgetl.cli.workstation import deploy, train  # noqa: E402

__all__ = ["bench", "cli", "console", "deploy", "device", "optimize", "err_console", "main", "model_options", "train", "workstation"]
