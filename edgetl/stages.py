"""The shape every stage shares: results that decide pass/fail, and one reporter for progress.

A stage (train, compile, bench, bundle, report; ``edgetl.pipeline`` lists them for ``deploy``) says
how it fingerprints its inputs, whether its recorded outputs are current for them, and runs into a
``StageResult``. The result, not the caller, decides pass/fail: ``raise_for_errors`` (something
could not be made: exit 2) and ``raise_for_gates`` (a budget failed: ``GatesFailed``, exit 1). The
CLI and ``deploy`` call those and never re-decide an exit code.

Every stage reports through one ``Reporter``: the CLI passes a ``RichReporter`` (rules, bars,
tables on a rich console); a notebook passes ``SilentReporter()`` or its own subclass of it to
collect or redirect the events. docs/architecture.md, "Stages", describes the protocol.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Protocol

from edgetl.errors import EdgetlError, GatesFailed

# (phase, done, total) of one measurement: what edgetl.bench.measure reports while timing.
PhaseCallback = Callable[[str, float, float], None]


class StageResult:
    """What a stage returns; subclasses say what failed (``errors``) and which gates (``failed_gates``)."""

    error_class: ClassVar[type[EdgetlError]] = EdgetlError
    what_failed: ClassVar[str] = "failed"  # "N artifact(s) <what_failed>: ..."

    def errors(self) -> list[str]:
        return []

    def failed_gates(self) -> list[str]:
        return []

    def raise_for_errors(self) -> None:
        """One ``error_class`` line (exit 2) naming every item that could not be made."""
        if errors := self.errors():
            raise self.error_class(self.errors_message(errors))

    def errors_message(self, errors: list[str]) -> str:
        return f"{len(errors)} artifact(s) {self.what_failed}: " + " | ".join(errors)

    def raise_for_gates(self) -> None:
        """``GatesFailed`` (exit 1) naming every failed budget."""
        if failed := self.failed_gates():
            raise GatesFailed("budget failed: " + " | ".join(failed))


class Stage(Protocol):
    """One step of ``deploy``. ``is_current`` is the one skip rule: a current stage is not run, its
    result is read back from what it recorded (``recorded``)."""

    name: str

    def fingerprint(self) -> str:
        """A hash of everything the stage's output depends on."""

    def is_current(self) -> bool:
        """True when the run holds this stage's output for exactly ``fingerprint()``'s inputs."""

    def run(self, reporter: Reporter) -> StageResult:
        """Do the work."""

    def recorded(self) -> StageResult:
        """The result of a current stage, from its records (what ``run`` would return)."""


# -- reporting -------------------------------------------------------------------------------------
class Reporter(Protocol):
    """Progress and results of every stage. ``stage`` is the stage's name ("compile", "bench" ...)."""

    def start(self, stage: str, total: int | None = None) -> None:
        """A stage begins; ``total``: how many items it will go through, when known."""

    def step(self, stage: str, message: str) -> None:
        """What the stage is doing now (replaced by the next step)."""

    def advance(self, stage: str, message: str) -> None:
        """One item is finished (e.g. "built host-cpu/int8")."""

    def warn(self, message: str) -> None:
        """Something the user should read; the stage goes on."""

    def done(self, stage: str, note: str) -> None:
        """The stage ended; ``note`` sums it up (or says why it was skipped)."""

    def table(self, table: Any) -> None:
        """A result table: a rich renderable, or a function of the width there is (None: no limit)
        that makes one."""

    def measuring(self) -> contextlib.AbstractContextManager[Bars]:
        """Live bars for measurements (the bench harness), open while measuring."""


class Bars(Protocol):
    def callback(self, key: str) -> PhaseCallback | None:
        """The harness's progress function for ``key``; None when nothing is shown."""

    def done_loading(self, key: str) -> None:
        """``key`` failed before its first progress: drop its "loading" bar."""


class _NoBars:
    def callback(self, key: str) -> PhaseCallback | None:
        return None

    def done_loading(self, key: str) -> None:
        pass


class SilentReporter:
    """Prints nothing. Subclass it and override the events a notebook wants to see."""

    def start(self, stage: str, total: int | None = None) -> None:
        pass

    def step(self, stage: str, message: str) -> None:
        pass

    def advance(self, stage: str, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def done(self, stage: str, note: str) -> None:
        pass

    def table(self, table: Any) -> None:
        pass

    @contextlib.contextmanager
    def measuring(self) -> Iterator[Bars]:
        yield _NoBars()


class RichReporter(SilentReporter):
    """The CLI's reporter: a numbered rule per stage of ``steps`` (deploy), a transient bar over a
    stage's items, warnings and tables on ``console``."""

    def __init__(self, console, steps: list[str] | tuple[str, ...] = ()):
        self.console, self.steps = console, list(steps)
        self._bar = None
        self._task = None

    def start(self, stage: str, total: int | None = None) -> None:
        if stage in self.steps and total is None:
            self.console.rule(f"[bold]{self.steps.index(stage) + 1}/{len(self.steps)} {stage}")
        if total is not None:
            self._open_bar(stage, total)

    def step(self, stage: str, message: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=message)

    def advance(self, stage: str, message: str) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)
        self.console.print(message, highlight=False, markup=False)

    def warn(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)

    def done(self, stage: str, note: str) -> None:
        from rich.markup import escape

        self._close_bar()
        self.console.print(f"[green]✓[/] {stage}: {escape(note)}", highlight=False)

    def table(self, table: Any) -> None:
        """Printed whole: a terminal gets the table made for its width; a log or a pipe (80 columns by
        default) gets as many columns as the table needs."""
        from rich.console import Console

        self._close_bar()
        if self.console.is_terminal:
            self.console.print(table(self.console.width) if callable(table) else table)
            return
        table = table(None) if callable(table) else table
        needed = Console(width=1000).measure(table).maximum
        Console(file=self.console.file, width=max(self.console.width, needed), no_color=self.console.no_color).print(table)

    @contextlib.contextmanager
    def measuring(self) -> Iterator[Bars]:
        from edgetl.bench.progress import BenchProgress

        with BenchProgress(self.console) as bars:
            yield bars

    def _open_bar(self, stage: str, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._close_bar()
        self._bar = Progress(SpinnerColumn(), TextColumn(f"[bold]{stage}"), TextColumn("{task.description}"),
                             BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=self.console,
                             transient=True)
        self._task = self._bar.add_task("", total=total)
        self._bar.start()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None
