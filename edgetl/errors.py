"""User-facing errors.

An ``EdgetlError`` is the user's mistake (a bad path, an unknown name, a corrupt file): the CLI prints
its message on one line and exits with code 2, without a traceback. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgetlError(Exception):
    """A mistake the user can fix; the message says what, where and what to do."""

    exit_code = 2


class ConfigError(EdgetlError):
    """A bad option value, profile or recipe."""


class DataError(EdgetlError):
    """A missing, empty or unusable data set."""


class UnknownNameError(EdgetlError):
    """A name that is not in one of edgetl's registries."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        valid = sorted(valid)
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}.{hint} Valid: {', '.join(valid)}.")
        self.name = name
        self.valid = valid


class MissingDependencyError(EdgetlError):
    """An optional dependency that is not installed."""


class RunDirError(EdgetlError):
    """A run directory that is missing, incomplete or tampered with."""


class ArtifactError(EdgetlError):
    """A missing or corrupt artifact (for example a sha256 mismatch)."""


class ExportError(EdgetlError):
    """The model could not be exported, or the export disagrees with PyTorch."""


class CompileError(EdgetlError):
    """A runtime could not compile the model (names the op or option at fault)."""


class BundleError(EdgetlError):
    """A bundle that is malformed, unsafe, tampered with, or meant for another runtime."""


class RemoteError(EdgetlError):
    """An SSH host that cannot be reached or refused the command."""


class GatesFailed(EdgetlError):
    """A budget failed under ``--check`` (exit code 1: the command worked, the model did not pass)."""

    exit_code = 1
