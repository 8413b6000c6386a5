"""Registry of tasks: the one table that train, compile, bench, bundle, predict and `edgetl tasks` read.

Tasks are registered under the ``edgetl.tasks`` entry-point group, like the runtimes
(``edgetl.backends``), the built-in ones in edgetl's own pyproject.toml::

    [project.entry-points."edgetl.tasks"]
    image-classification = "edgetl.tasks.image_classification:ImageClassification"

The entry point's name is the task's name. Device side: no torch here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from edgetl._plugins import instance, registered
from edgetl.tasks.base import BENCH_METRICS, Metric, Task, TaskRecord

GROUP = "edgetl.tasks"
DEFAULT_TASK = "image-classification"  # what a run or bundle that records no task is


def _entry_points():
    return registered(GROUP, "tasks")


def tasks() -> tuple[str, ...]:
    """The names of every registered task, sorted."""
    return tuple(_entry_points())


def get_task(name: str):
    return instance(GROUP, "tasks", "task", name)


def task_of_train(train: Mapping[str, Any], run=None) -> tuple[Task, TaskRecord]:
    """A run's task and its record, from the run's ``train`` section (a run from before tasks:
    ``DEFAULT_TASK``); ``run`` resolves the assets."""
    return get_task(train.get("task", DEFAULT_TASK)), TaskRecord.of_train(train, run)


def require_modules(task: Task) -> Task:
    """``task`` once the modules its device side needs (``Task.requires``) are importable here; else
    one line with the pip command."""
    import importlib.util

    missing = [m for m in getattr(task, "requires", ()) if importlib.util.find_spec(m) is None]
    if missing:
        from edgetl.errors import MissingDependencyError

        extra = getattr(task, "extra", None)
        install = f'pip install "edgetl[{extra}]"' if extra else f"pip install {' '.join(missing)}"
        raise MissingDependencyError(f"task {task.name} needs {', '.join(missing)}, which is not installed here: "
                                     f"{install}")
    return task


def task_rows() -> list[dict]:
    """Every registered task as ``edgetl tasks`` lists it (JSON-ready)."""
    rows = []
    for name in tasks():
        task = get_task(name)
        rows.append({"name": name, "description": task.description,
                     "inputs": [s.to_dict() for s in task.inputs()], "outputs": [s.to_dict() for s in task.outputs()],
                     "metrics": [dataclasses.asdict(m) for m in (*task.metrics, *BENCH_METRICS)]})
    return rows


__all__ = ["BENCH_METRICS", "DEFAULT_TASK", "GROUP", "Metric", "get_task", "require_modules", "task_of_train",
           "task_rows", "tasks"]
