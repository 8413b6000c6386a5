"""Entry-point groups: how runtimes (``edgetl.backends``) and tasks (``edgetl.tasks``) are registered.

Standard library only (the device imports it). A group is read once per ``sys.path``: a distribution
added to it later (a plugin installed at run time) is seen.
"""

from __future__ import annotations

import functools
import sys
from importlib.metadata import EntryPoint, entry_points

from edgetl.errors import MissingDependencyError, UnknownNameError


def registered(group: str, what: str) -> dict[str, EntryPoint]:
    """Name -> entry point of ``group``, sorted; ``what`` ("runtimes", "tasks") names them in the error."""
    return _scan(group, what, tuple(sys.path))


@functools.lru_cache(maxsize=16)
def _scan(group: str, what: str, path: tuple[str, ...]) -> dict[str, EntryPoint]:
    found = {ep.name: ep for ep in entry_points(group=group)}
    if not found:  # a venv from before the entry points: the user's to fix, so one line and exit 2
        raise MissingDependencyError(f"no {what} are registered under the {group!r} entry points: edgetl's "
                                     "install predates them; reinstall it (pip install -e . in a checkout)")
    return dict(sorted(found.items()))


def instance(group: str, what: str, kind: str, name: str):
    """The registered class ``name`` of ``group``, instantiated; an unknown name lists the valid ones
    (``kind``: "runtime", "task"), and a plugin that cannot be imported is one line naming it."""
    found = registered(group, what)
    if name not in found:
        raise UnknownNameError(kind, name, found)
    try:
        cls = found[name].load()
    except Exception as exc:  # a third party's module: a missing dependency, a syntax error ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MissingDependencyError(f"{kind} {name!r} ({found[name].value}) cannot be imported: {first}; "
                                     "reinstall or remove the package that registers it") from exc
    return cls()
