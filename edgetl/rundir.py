"""The run directory: the hand-off between stages.

``runs/<name>/manifest.json`` records each stage's inputs, outputs (with sha256) and metrics. Every
stage reads what the previous one wrote and adds its own section; writes are atomic and serialised
by an flock on the run folder itself (no lock file in the run), so parallel stages (several targets,
several devices) never lose each other's entries.

Sections: ``train``, ``export``, ``compiled`` (``<target>/<precision>`` -> entry), ``bench``,
``bundles``; ``artifacts`` maps every file a stage produced (relative path) to its sha256.

Each section is a ``Record``, a pydantic model defined in the module that writes it (``TrainRecord``
in adapt/train.py, ``ExportRecord`` in export/onnx.py, ``CompiledEntry`` in compiler.py,
``DeviceBench`` in bench/run.py, ``BundleRecord`` in bundle/create.py). Stages read them through
``RunDir.section`` / ``RunDir.entries`` and write them with ``RunDir.set_record``, never by string
key; a section that does not fit its model is one ``RunDirError`` line. docs/architecture.md, "The
run directory", lists them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgetl._io import sha256_file, write_json
from edgetl.data.layout import IMAGE_SUFFIXES
from edgetl.errors import ArtifactError, RunDirError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class Record(BaseModel):
    """One manifest section (or one entry of a keyed section such as ``compiled``), typed.

    ``SECTION`` names it in the manifest; ``KEYED`` sections map a key (``<target>/<precision>``, a
    device) to one record each. ``schema`` versions the record: a manifest from before it was
    recorded reads as version 1; one from a newer edgetl is refused with a line saying so. Fields
    a model does not declare are kept (``extra="allow"``), so a record from a newer minor version
    still loads and is written back whole.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    SECTION: ClassVar[str]
    KEYED: ClassVar[bool] = False
    VERSION: ClassVar[int] = 1

    schema_version: int = Field(1, alias="schema")

    @field_validator("schema_version")
    @classmethod
    def _readable(cls, version: int) -> int:
        if version > cls.VERSION:
            raise ValueError(f"schema {version} is newer than this edgetl reads ({cls.VERSION}): upgrade edgetl")
        return version

    def dump(self) -> dict[str, Any]:
        """The JSON the manifest holds: the fields it was given (a record read back keeps its shape),
        ``schema`` included."""
        return {**self.fields(), "schema": self.VERSION}

    def fields(self) -> dict[str, Any]:
        """The record's content as JSON, without its schema version: what a hash of its inputs or a
        report shows (the same for a record written before versions were recorded)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"schema_version"})


R = TypeVar("R", bound=Record)


def _run_relative(path: str) -> str:
    """A path inside the run, as stages record them: relative, without '..' (a record edited to name
    ``/home/me/.ssh/id_rsa`` or ``../other`` would otherwise be read, loaded or packed into a bundle)."""
    parts = PurePosixPath(path).parts
    if not path or PurePosixPath(path).is_absolute() or ".." in parts or "\\" in path or "\0" in path:
        raise ValueError(f"{path[:80]!r} is not a path inside the run (absolute or with '..')")
    return path


RunPath = Annotated[str, AfterValidator(_run_relative)]  # a record's run-relative file or folder


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path) -> RunDir:
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        if not (run.path / MANIFEST).exists():
            write_json(run.path / MANIFEST, {"schema": SCHEMA_VERSION, "name": run.path.name, "artifacts": {}})
        return run

    @classmethod
    def open(cls, path: str | Path, *, need: str | None = None) -> RunDir:
        """Open an existing run; ``need`` names a section that must be there (e.g. ``"train"``)."""
        run = cls(path)
        if not run.path.is_dir() or not (run.path / MANIFEST).is_file():
            raise RunDirError(_not_a_run(run.path))
        if need and need not in run.manifest:
            hint = {"train": "edgetl train", "export": "edgetl compile", "compiled": "edgetl compile"}.get(need, need)
            raise RunDirError(f"{run.path} has no {need} stage yet: run `{hint}` on it first")
        return run

    # -- manifest ----------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as JSON: an object whose ``artifacts`` map paths to sha256s, from an edgetl that
        writes this ``SCHEMA_VERSION`` or an older one; else one ``RunDirError`` line."""
        path = self.path / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"), parse_int=_bounded_int)
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, too deep, a 400-digit number
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise RunDirError(f"{path} is corrupt ({reason}); restore it or start a new run") from None
        why = _not_a_manifest(data)
        if why:
            raise RunDirError(f"{path} {why}")
        return data

    @contextlib.contextmanager
    def editing(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write the manifest under an exclusive lock."""
        with _locked(self.path):
            data = self.manifest
            yield data
            write_json(self.path / MANIFEST, data)

    def set(self, section: str, value: Any) -> None:
        with self.editing() as data:
            data[section] = value

    def set_item(self, section: str, key: str, value: Any) -> None:
        with self.editing() as data:
            data.setdefault(section, {})[key] = value

    def get(self, section: str, default: Any = None) -> Any:
        return self.manifest.get(section, default)

    # -- typed records -----------------------------------------------------------------------
    def section(self, model: type[R], manifest: dict[str, Any] | None = None) -> R | None:
        """The manifest's ``model.SECTION`` as a ``model`` (``None`` when that stage has not run)."""
        raw = (self.manifest if manifest is None else manifest).get(model.SECTION)
        return None if raw is None else self._parse(model, raw, model.SECTION)

    def require(self, model: type[R]) -> R:
        """``section``, or the ``RunDirError`` naming the command that writes it."""
        record = self.section(model)
        if record is None:
            self.open(self.path, need=model.SECTION)  # a missing stage: the same hint as everywhere
            raise RunDirError(f"{self.path / MANIFEST}: section '{model.SECTION}' is empty: rerun that stage")
        return record

    def entries(self, model: type[R], manifest: dict[str, Any] | None = None) -> dict[str, R]:
        """A keyed section (``compiled``, ``bench``, ``bundles``): key -> ``model``, empty when absent."""
        raw = (self.manifest if manifest is None else manifest).get(model.SECTION) or {}
        if not isinstance(raw, dict):
            raise RunDirError(f"{self.path / MANIFEST}: section '{model.SECTION}' must map keys to entries, "
                              f"not {type(raw).__name__}: restore the manifest or rerun the stage")
        return {self._key(model, key): self._parse(model, value, f"{model.SECTION}[{_shown(key)}]")
                for key, value in raw.items()}

    def _key(self, model: type[Record], key: str) -> str:
        """A keyed section's key becomes part of file names (``bench/<target>/<precision>@<device>.json``):
        a key edited to hold '..' or a leading '/' is refused before any path is made of it."""
        try:
            return _run_relative(key)
        except ValueError as exc:
            raise RunDirError(f"{self.path / MANIFEST}: section '{model.SECTION}': key {exc}: restore the manifest "
                              "or rerun the stage") from None

    def compiled_entry(self, key: str):
        """``compiled[key]`` as a ``CompiledEntry``; an unknown key is one line listing the compiled ones."""
        from edgetl.compiler import CompiledEntry

        entries = self.entries(CompiledEntry)
        if key not in entries:
            from edgetl.errors import UnknownNameError

            raise UnknownNameError("compiled artifact", key, entries)
        return entries[key]

    def set_record(self, record: Record, key: str | None = None) -> None:
        """Write ``record`` as its section (or as ``key`` of a keyed section), under the lock."""
        if record.KEYED != (key is not None):
            raise TypeError(f"section {record.SECTION!r} {'needs' if record.KEYED else 'takes no'} key")
        with self.editing() as data:
            if key is None:
                data[record.SECTION] = record.dump()
            else:
                data.setdefault(record.SECTION, {})[key] = record.dump()

    def _parse(self, model: type[R], raw: Any, where: str) -> R:
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(printable_key(p) for p in first["loc"])
            at = f" field '{field}'" if field else ""
            raise RunDirError(f"{self.path / MANIFEST}: section {where}{at}: {first['msg'].removeprefix('Value error, ')}; "
                              "the manifest was edited or written by another edgetl version: rerun that stage") from None

    # -- artifacts ---------------------------------------------------------------------------
    def rel(self, path: str | Path) -> str:
        return Path(path).resolve().relative_to(self.path.resolve()).as_posix()

    def record(self, *paths: str | Path) -> dict[str, str]:
        """Hash files (or every file under folders) and record them; returns relpath -> sha256."""
        hashes = {}
        for p in paths:
            p = Path(p)
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            for f in files:
                hashes[self.rel(f)] = sha256_file(f)
        with self.editing() as data:
            data.setdefault("artifacts", {}).update(hashes)
        return hashes

    def inside(self, relpath: str) -> Path:
        """``relpath`` under the run, proven to stay inside it once links are followed."""
        path = self.path / relpath
        try:
            inside = path.resolve().is_relative_to(self.path.resolve()) and path.resolve() != self.path.resolve()
        except (OSError, RuntimeError):  # a link loop
            inside = False
        if not inside:
            raise ArtifactError(f"{self.path / MANIFEST} names {relpath[:80]!r}, which lies outside the run "
                                f"{self.path}: refusing to read it; restore the manifest or rerun the stage")
        return path

    def verify(self, relpath: str) -> Path:
        """Return the artifact's path after checking it exists and matches its recorded sha256."""
        path = self.inside(relpath)
        expected = self.manifest.get("artifacts", {}).get(relpath)
        if not path.is_file():
            raise ArtifactError(f"artifact {path} is missing: rebuild it (edgetl compile {self.path})")
        if expected is None:
            raise ArtifactError(f"artifact {path} is not recorded in {self.path / MANIFEST}")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"artifact {path} is corrupt or was modified (sha256 {actual[:12]}… != recorded {expected[:12]}…): "
                f"rebuild it with `edgetl compile {self.path} --force`"
            )
        return path


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the run folder itself, not on a file in it or next to it.

    manifest.json is replaced by a rename on every write, so locking it would lock a stale inode;
    the folder's inode stays. No lock file means nothing in the run for copies (tests, bundles,
    reports, ``cp -r``) to skip, and nothing to create in a parent the user may not write to.
    Every path to the run (relative, absolute, through a symlink) reaches the same inode. The lock
    goes with the descriptor, so a crashed writer never leaves the run locked.
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def printable_key(part: str | int) -> str:
    """One part of a field's location: a key of an edited manifest may hold a newline, an escape
    sequence or a page of text, so anything but a plain name is shown escaped and cut."""
    text = str(part)
    return text if len(text) <= 80 and text.isprintable() else _shown(text)


def _shown(text: str) -> str:
    """``repr`` of a manifest's text for a one-line message: escaped, cut at 80 characters."""
    text = repr(text)
    return text if len(text) <= 80 else text[:79] + "…"


def _bounded_int(text: str) -> int:
    """A JSON integer as Python reads it, refused past 64 bits: every count, size and id of a run fits,
    and a 400-digit "size" would fail as a float later, far from the manifest."""
    value = int(text)
    if not -(2**63) <= value < 2**64:
        raise ValueError(f"the number {text[:20]}... does not fit in 64 bits")
    return value


def _not_a_manifest(data: Any) -> str | None:
    """Why parsed JSON is not a run manifest this edgetl reads (a phrase), or None."""
    if not isinstance(data, dict):
        return f"is not a JSON object but {type(data).__name__}: restore it or start a new run"
    version = data.get("schema", SCHEMA_VERSION)
    if type(version) is not int:
        return f"field 'schema' is {str(version)[:20]!r}, not a version number: restore it or start a new run"
    if version > SCHEMA_VERSION:
        return f"has schema {version}, newer than this edgetl reads ({SCHEMA_VERSION}): upgrade edgetl"
    artifacts = data.get("artifacts", {})
    if not isinstance(artifacts, dict) or not all(isinstance(v, str) for v in artifacts.values()):
        return "field 'artifacts' must map run-relative paths to sha256s: restore the manifest or rerun the stage"
    return None


def _not_a_run(path: Path) -> str:
    """Why ``path`` is not a run, and the command that makes one from what the user holds."""
    train = "edgetl train --data {} --out runs/<name>"
    if not path.exists():
        return f"run directory {path} does not exist: create it with `edgetl train --out {path}`"
    if path.is_file():
        kind = "a bundle" if path.name.endswith((".tar.gz", ".tgz")) else "a file"
        return f"{path} is {kind}, not a run directory: give the folder `edgetl train --out` wrote (runs/<name>)"
    if _holds_images(path):
        # The data, not the run: suggesting `--out` here would write a run into the user's images.
        return f"{path} is an image folder, not a run: train on it first with `{train.format(path)}`"
    return f"{path} is not an edgetl run (no {MANIFEST}): create it with `edgetl train --out {path}`"


def _holds_images(path: Path) -> bool:
    """True for a class-folder tree (or a train/val split of one): images one or two levels down."""
    for pattern in ("*/*", "*/*/*"):
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.glob(pattern)):
            return True
    return False
