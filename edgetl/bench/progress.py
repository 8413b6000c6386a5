"""Progress display for the bench stage: one rich bar per measurement (a batch size, accuracy)."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class BenchProgress:
    """``callback(key)`` -> ``(phase, done, total)`` function for ``edgetl.bench.measure``; a no-op
    without a console (notebooks, tests)."""

    def __init__(self, console=None):
        self._progress = None
        if console is not None:
            self._progress = Progress(
                TextColumn("{task.description:<42}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=console, transient=True, refresh_per_second=4,  # the display must not steal the CPU
            )
        self._tasks: dict[tuple[str, str], int] = {}
        self._loading: dict[str, int] = {}

    def __enter__(self) -> BenchProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def callback(self, key: str):
        if self._progress is None:
            return None
        self._loading[key] = self._progress.add_task(f"{key} · loading", total=None)

        def update(phase: str, done: float, total: float) -> None:
            self.done_loading(key)
            task = self._tasks.get((key, phase))
            if task is None:
                task = self._tasks[(key, phase)] = self._progress.add_task(f"{key} · {phase}", total=total)
            self._progress.update(task, completed=done, total=total)

        return update

    def done_loading(self, key: str) -> None:
        """Remove ``key``'s "loading" bar (on its first progress, or when it failed to load)."""
        task = self._loading.pop(key, None)
        if task is not None:
            self._progress.remove_task(task)
