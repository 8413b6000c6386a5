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


def main() -> None:
    cli(prog_name="edgetl")


if __name__ == "__main__":
    main()
