"""The bundle manifest as one validated model: every field typed and bounded before anything uses it.

``parse(raw, where)`` is called right after the signature check and before a single other member
is extracted or loaded. Strict JSON types (``"3"`` is not ``3``), no unknown fields, sizes and
shapes within what an edge device can hold, names and paths that are safe to use in a file system,
a task, runtime and pip extra only from edgetl's own registries, and the cross-checks that keep the
parts consistent (the tensors are what the task makes of the preprocessing and labels:
``Task.check_bundle``; one golden file per tensor; every named file listed).
Device side: pydantic and the standard library only.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from edgetl.config import MAX_THREADS, TargetProfile
from edgetl.errors import BundleError
from edgetl.tasks.base import ASSETS
from edgetl.tensors import TensorSpec

FORMAT = "edgetl.bundle/2"  # /2: named inputs and outputs, the task
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MAX_FILES = 10_000
MAX_FILE_SIZE = 2**40
MAX_BATCH = 1024
MAX_SIDE = 4096
MAX_CLASSES = 100_000
MAX_TENSORS = 16
MAX_RANK = 8
MAX_DIM = 2**20
MAX_SAMPLE_VALUES = 4 * MAX_SIDE * MAX_SIDE  # a 4-channel 4096x4096 image
DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")  # what a golden .npy may hold
_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]*$"  # tasks.base.UNPRINTABLE: one-line messages, no terminal tricks
# A runtime or task a bundle names that no installed package registers: the machine lacks a plugin.
NOT_INSTALLED = "needs the package that registers it installed here"
MAX_ASSETS = 16
MAX_ASSET_SIZE = 512 * 2**20  # a tokenizer is a few MB
MAX_PREPROCESS_KEYS = 64


def is_safe_relpath(name: str) -> bool:
    """A path inside the bundle: relative, normalised, no '..', no backslashes, NULs or drive letters."""
    path = PurePosixPath(name)
    return bool(
        name
        and len(name) <= 1024
        and not path.is_absolute()
        and not name.startswith(("/", "\\"))
        and ".." not in path.parts
        and "\\" not in name
        and re.fullmatch(_PRINTABLE, name)
        and not re.match(r"^[A-Za-z]:", name)
        and path.as_posix() == name  # "./a", "a//b": one spelling per file, so listings can be compared
    )


def _relpath(name: str) -> str:
    if not is_safe_relpath(name):
        raise ValueError(f"unsafe path {_short(name)} (absolute, with '..', or not normalised)")
    if name in (MANIFEST, SIGNATURE):
        raise ValueError(f"{name} cannot be listed among the bundle's files")
    return name


def _slug(name: str) -> str:
    if not _SLUG.match(name) or ".." in name:
        raise ValueError("must be a slug: letters, digits, '.', '_', '-', at most 64, no '..'")
    return name


RelPath = Annotated[str, AfterValidator(_relpath)]
Slug = Annotated[str, AfterValidator(_slug)]
Text = Annotated[str, Field(max_length=1000, pattern=_PRINTABLE)]
Label = Annotated[str, Field(min_length=1, max_length=200, pattern=_PRINTABLE)]
Precision = Literal["fp32", "fp16", "int8"]
GpuArch = Annotated[str, Field(pattern=r"^sm[0-9]{2,3}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class FileEntry(_Model):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, le=MAX_FILE_SIZE)


class Runtime(_Model):
    name: str
    extra: str
    min_version: dict[Slug, Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+){0,3}$")]] = {}
    built_with: Text | None = None

    @model_validator(mode="after")
    def _registered(self) -> Runtime:
        """Only a runtime of edgetl's registry, with exactly its pip extra (the device may pip install it)."""
        from edgetl.backends import get_backend, runtimes

        if self.name not in runtimes():
            raise ValueError(f"runtime {self.name[:40]!r} is not one of {', '.join(runtimes())} (a plugin's "
                             f"runtime {NOT_INSTALLED})")
        extra = get_backend(self.name).extra
        if self.extra != extra:
            raise ValueError(f"extra {self.extra[:40]!r} is not {self.name}'s pip extra {extra!r}")
        return self


def _tensor_name(name: str) -> str:
    if not name or len(name) > 200 or not re.fullmatch(_PRINTABLE, name):
        raise ValueError("a tensor name must be 1..200 printable characters")
    return name


def _dim(dim: int | str) -> int | str:
    """A fixed size 1..MAX_DIM, or the name of a dynamic dimension ("batch", "sequence")."""
    if isinstance(dim, str) and not _DIM_NAME.match(dim):
        raise ValueError(f"dimension name {_short(dim)} must be an identifier of at most 32 characters")
    if isinstance(dim, int) and not 1 <= dim <= MAX_DIM:
        raise ValueError(f"dimension {dim} is outside 1..{MAX_DIM}")
    return dim


TensorName = Annotated[str, AfterValidator(_tensor_name)]
Dim = Annotated[int | str, AfterValidator(_dim)]


class Tensor(_Model):
    """One named input or output (``edgetl.tensors.TensorSpec``): its file names in the bundle are
    chosen by edgetl (``golden/in.<i>.npy``), never derived from ``name``."""

    name: TensorName
    dtype: Literal[DTYPES]
    shape: list[Dim] = Field(min_length=1, max_length=MAX_RANK)

    @model_validator(mode="after")
    def _bounded(self) -> Tensor:
        batch = self.shape[0]
        if isinstance(batch, int) and batch > MAX_BATCH:
            raise ValueError(f"{_short(self.name)}: batch {batch} must be a name (dynamic) or 1..{MAX_BATCH}")
        values = math.prod(d for d in self.shape[1:] if isinstance(d, int))
        if values > MAX_SAMPLE_VALUES:
            raise ValueError(f"{_short(self.name)}: shape {self.shape} holds {values} values per sample, more than "
                             f"{MAX_SAMPLE_VALUES}")
        return self

    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.dtype, tuple(self.shape))


class Tolerance(_Model):
    """Recorded for people; verify takes the tolerance from ``format.tolerance`` (code), never from here."""

    source: Literal["same", "proxy"]
    precision: Precision
    atol: float = Field(ge=0)
    rtol: float = Field(ge=0)


class Golden(_Model):
    inputs: dict[TensorName, RelPath] = Field(min_length=1, max_length=MAX_TENSORS)  # input name -> .npy
    expected: dict[TensorName, RelPath] = Field(min_length=1, max_length=MAX_TENSORS)  # output name -> .npy
    samples: int = Field(ge=1, le=MAX_BATCH)
    expected_from: Text
    tolerance: Tolerance


class BuildSettings(_Model):
    """What the device needs to finish the artifact (``Backend.build_settings``: a TensorRT engine)."""

    precision: Precision
    gpu_arch: GpuArch | None
    options: dict[Slug, Any]

    @model_validator(mode="after")
    def _max_batch(self) -> BuildSettings:
        batch = self.options.get("max_batch")
        if batch is not None and not (type(batch) is int and 1 <= batch <= MAX_BATCH):
            raise ValueError(f"options.max_batch must be an integer 1..{MAX_BATCH}")
        return self


class ModelFiles(_Model):
    path: RelPath
    files: list[RelPath] = Field(min_length=1, max_length=MAX_FILES)
    compiled: Text | None = None
    kind: Slug | None = None  # e.g. "onnx-for-tensorrt": what ``path`` is when the device finishes it
    build: BuildSettings | None = None


class BareTarget(_Model):
    """A bundle made for a runtime name rather than a device profile."""

    name: Slug


Finite = Annotated[float, Field(allow_inf_nan=False)]
Interval = Annotated[list[Finite], Field(min_length=2, max_length=2)]


class WorkstationAccuracy(_Model):
    """The compile stage's accuracy of the artifact: the fields the device computes with and prints
    (the drop against FP32 and its gate) are typed; the rest is kept as the workstation wrote it."""

    model_config = ConfigDict(extra="allow")
    n: int | None = Field(None, ge=0)
    top1: Finite | None = None
    top1_ci: Interval | None = None
    fp32_top1: Finite | None = None
    drop_pp: Finite | None = None
    drop_ci_pp: Interval | None = None

    @model_validator(mode="after")
    def _metrics_are_numbers(self) -> WorkstationAccuracy:
        """A kept field named after a task metric (``agreement``), or its ``<metric>_ci``, is what the
        gates print for that metric's goal on a device without labelled images: numbers, as above."""
        from edgetl.config import metric_table

        metrics = metric_table()
        for key, value in (self.model_extra or {}).items():
            if key in metrics and not _finite(value):
                raise ValueError(f"{key} must be a finite number, like the metric it is named after")
            if key.endswith("_ci") and key[:-3] in metrics and not (
                    isinstance(value, list) and len(value) == 2 and all(map(_finite, value))):
                raise ValueError(f"{key} must be an interval [low, high] of finite numbers")
        return self

    @model_serializer(mode="wrap")
    def _as_written(self, handler) -> dict[str, Any]:
        """The fields the bundle holds, without the defaults of those it does not."""
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set or k in (self.model_extra or {})}


def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


class Workstation(_Model):
    """Informational: the workstation's accuracy and latency (by machine) of the artifact."""

    accuracy: WorkstationAccuracy | None = None
    latency: dict[str, dict[str, Any]] = {}


def npy_size(shape: tuple[int, ...]) -> int:
    """The bytes ``np.save`` writes for a C-order float32 array of ``shape`` (.npy format 1.0: the
    header padded to 64 bytes): a head's file size follows from the labels and D alone."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    base = 10 + len(header) + 1  # magic, version, header length; the header ends in a newline
    return base + (-base % 64) + 4 * math.prod(shape)


HEAD_FILE = "head/prototypes.npy"  # edgetl.bundle.prototype.FILE
HEAD_FOLDER = "head/"


class Head(_Model):
    """A prototype head (edgetl/bundle/prototype.py): the model outputs ``embedding``, the classes
    are the rows of ``file`` (float32, one L2-normalised row per label), logits are ``scale`` times
    the cosines."""

    kind: Literal["prototype"]
    file: Literal["head/prototypes.npy"]
    scale: float = Field(ge=1, le=100)
    output: Literal["embedding"]
    shots: dict[Label, Annotated[int, Field(ge=1, le=2**31)]]  # label -> images its prototype is the mean of
    # labels `edgetl enroll` added or replaced: the workstation's accuracy never saw them (val gives no drop)
    enrolled: list[Label] = Field(default_factory=list, max_length=MAX_CLASSES)


class Lineage(_Model):
    """Informational: the run this model was trained from with ``edgetl train --from`` and the
    labels it added (edgetl/adapt/continual.py)."""

    parent: Slug
    parent_checkpoint: str = Field(pattern=r"^[0-9a-f]{64}$")
    added: list[Label] = Field(min_length=1, max_length=MAX_CLASSES)

HEAD_NAME = r"^[a-z][a-z0-9_]{0,31}$"  # edgetl.adapt.multitask.NAME


class HeadEntry(_Model):
    """An extra task head (``edgetl train --task-head``): its name, its output (``logits_<name>``)
    and its class names; ``_consistent`` checks the output exists with one class per label."""

    name: Annotated[str, Field(pattern=HEAD_NAME)]
    output: Annotated[str, Field(max_length=40)]
    labels: list[Label] = Field(min_length=2, max_length=MAX_CLASSES)

    @model_validator(mode="after")
    def _named(self) -> HeadEntry:
        if self.name == "logits":
            raise ValueError("a head may not be named 'logits'")
        if self.output != f"logits_{self.name}":
            raise ValueError(f"head {self.name!r}: its output must be 'logits_{self.name}', not {_short(self.output, 40)}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"head {self.name!r}: labels must be unique")
        return self


class BundleManifest(_Model):
    format: Literal["edgetl.bundle/2"]
    name: Slug
    task: str
    release: int = Field(ge=0, le=2**63 - 1)  # increases with every bundle; ship refuses to go back
    run: Text | None = None
    target: TargetProfile | BareTarget
    precision: Precision
    # "optimized": the pick of `edgetl optimize` (its key is <target>/optimized); "prototype": an
    # embedding model with a prototype head (<target>/prototype); absent for the rest
    slot: Literal["optimized", "prototype"] | None = None
    gpu_arch: GpuArch | None = None
    runtime: Runtime
    model: ModelFiles
    inputs: list[Tensor] = Field(min_length=1, max_length=MAX_TENSORS)
    outputs: list[Tensor] = Field(min_length=1, max_length=MAX_TENSORS)
    preprocess: dict[str, Any] = Field(max_length=MAX_PREPROCESS_KEYS)  # the task's preprocess_model checks it
    assets: list[Slug] = Field([], max_length=MAX_ASSETS)  # the task's files, in assets/<name>
    labels: list[Label] = Field(min_length=1, max_length=MAX_CLASSES)
    heads: list[HeadEntry] = Field([], max_length=MAX_TENSORS - 1)  # --task-head runs; absent: one output
    golden: Golden
    workstation: Workstation = Workstation()
    versions: dict[Slug, Text] = {}
    lineage: Lineage | None = None  # absent unless the run was trained with --from
    files: dict[RelPath, FileEntry] = Field(max_length=MAX_FILES)
    head: Head | None = None  # only on a prototype-head bundle

    @field_validator("task")
    @classmethod
    def _registered_task(cls, name: str) -> str:
        """Only a task of edgetl's registry: its code, not the bundle, says what the tensors mean."""
        from edgetl.tasks import tasks

        if name not in tasks():
            raise ValueError(f"task {_short(name, 40)} is not one of {', '.join(tasks())} (a plugin's task "
                             f"{NOT_INSTALLED})")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> BundleManifest:
        self._head_of_task()
        self._preprocess_of_task()
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if self.lineage is not None and not set(self.lineage.added) <= set(self.labels):
            raise ValueError("lineage.added names labels the bundle does not have")
        if self.lineage is not None and len(set(self.lineage.added)) != len(self.lineage.added):
            raise ValueError("lineage.added must be unique")
        self._heads_are_outputs()
        for what, tensors, golden in (("inputs", self.inputs, self.golden.inputs),
                                      ("outputs", self.outputs, self.golden.expected)):
            names = [t.name for t in tensors]
            if len(set(names)) != len(names):
                raise ValueError(f"{what}: tensor names must be unique")
            if sorted(golden) != sorted(names):
                raise ValueError(f"golden files name {sorted(golden)} but the model's {what} are {names}")
        self._matches_task()
        if isinstance(self.target, TargetProfile) and (self.target.threads or 1) > MAX_THREADS:
            raise ValueError(f"target.threads must be at most {MAX_THREADS}")
        named = [self.model.path, *self.model.files, *self.golden.inputs.values(), *self.golden.expected.values()]
        unlisted = [rel for rel in named if rel not in self.files]
        if unlisted:
            raise ValueError(f"{unlisted[0]!r} is used but not listed in files")
        self._assets_of_task()
        self._head_consistent()
        return self

    def _heads_are_outputs(self) -> None:
        """Every head is named once and names an output of the model (that every other output is the
        primary's ``logits`` is the task's check of the tensors)."""
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise ValueError("heads: head names must be unique")
        outputs = {t.name for t in self.outputs}
        for head in self.heads:
            if head.output not in outputs:
                raise ValueError(f"head {head.name!r} names the output {head.output!r}, which the model does not have")

    def _preprocess_of_task(self) -> None:
        """The task's ``preprocess_model`` validates the preprocessing, as JSON (strict types, bounded values)."""
        from edgetl.tasks import get_task

        model = get_task(self.task).preprocess_model
        try:
            model.model_validate_json(json.dumps(self.preprocess))
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
            raise ValueError(f"field {_location(('preprocess', *error['loc']))}: {message}") from None

    def _record(self):
        from edgetl.tasks.base import Head, TaskRecord

        heads = tuple(Head(h.name, h.output, tuple(h.labels)) for h in self.heads)
        return TaskRecord(self.preprocess, tuple(self.labels), heads=heads)

    def _matches_task(self) -> None:
        """The tensors are what the task makes of the preprocessing and labels (an image: 3 channels at
        the preprocessing's size; one output class per label). A prototype head's model outputs an
        embedding; the head's logits, one per label, are what the task checks."""
        from edgetl.tasks import get_task

        task = get_task(self.task)
        outputs = [t.spec() for t in self.outputs]
        if self.head is not None:
            outputs = [TensorSpec("logits", "float32", (outputs[0].shape[0], len(self.labels)))]
        why = task.check_bundle([t.spec() for t in self.inputs], outputs, self._record())
        if why:
            raise ValueError(why)

    def _assets_of_task(self) -> None:
        """The assets are the ones the task's preprocessing reads, each listed (hashed, signed) and of a
        bounded size; no other file lives in assets/."""
        from edgetl.tasks import get_task

        wanted = sorted(get_task(self.task).assets(self._record()))
        if sorted(self.assets) != wanted:
            raise ValueError(f"assets {sorted(self.assets)[:MAX_ASSETS]} are not the files the task {self.task} "
                             f"reads ({wanted})")
        for name in self.assets:
            entry = self.files.get(f"{ASSETS}/{name}")
            if entry is None:
                raise ValueError(f"asset {name!r} is not listed in files")
            if entry.size > MAX_ASSET_SIZE:
                raise ValueError(f"asset {name!r} holds {entry.size} bytes, more than {MAX_ASSET_SIZE}")
        stray = sorted(rel for rel in self.files if rel.startswith(f"{ASSETS}/")
                       and rel[len(ASSETS) + 1:] not in self.assets)
        if stray:
            raise ValueError(f"{stray[0]!r} is not one of the bundle's assets")


    def _head_of_task(self) -> None:
        """Checked first, since the tensors' check would otherwise be the message: no head/ files and
        no slot 'prototype' without a head, and a head only on an image bundle."""
        from edgetl.tasks import DEFAULT_TASK

        if self.head is None and (self.slot == "prototype" or any(rel.startswith(HEAD_FOLDER) for rel in self.files)):
            raise ValueError("head/ files or slot 'prototype' without a head: rebuild the bundle")
        if self.head is not None and self.task != DEFAULT_TASK:
            raise ValueError(f"a prototype head is for image runs (--task {DEFAULT_TASK}), not {_short(self.task, 40)}")

    def _head_consistent(self) -> None:
        """A head's file is listed, of the size a float32 (labels, D) array has, the only file in
        head/; its shots name the labels; its model outputs one ``embedding`` (batch, D); the slot says it."""
        if self.head is None:
            return
        stray = sorted(rel for rel in self.files if rel.startswith(HEAD_FOLDER) and rel != HEAD_FILE)
        if self.slot != "prototype":
            raise ValueError("a bundle with a prototype head must have slot 'prototype'")
        shape = self.outputs[0].shape
        if len(self.outputs) != 1 or self.outputs[0].name != self.head.output or self.outputs[0].dtype != "float32" \
                or len(shape) != 2 or not isinstance(shape[1], int):
            raise ValueError(f"a prototype head reads one output 'embedding' float32 (batch, D), the model has "
                             f"{[(t.name, t.dtype, t.shape) for t in self.outputs][:MAX_TENSORS]}")
        if sorted(self.head.shots) != sorted(self.labels):
            raise ValueError("head.shots must name every label once, and nothing else")
        if len(set(self.head.enrolled)) != len(self.head.enrolled) or not set(self.head.enrolled) <= set(self.labels):
            raise ValueError("head.enrolled must name labels of the bundle, each once")
        entry = self.files.get(self.head.file)
        if entry is None:
            raise ValueError(f"{self.head.file!r} is used but not listed in files")
        want = npy_size((len(self.labels), shape[1]))
        if entry.size != want:
            raise ValueError(f"{self.head.file} holds {entry.size} bytes, a float32 ({len(self.labels)}, {shape[1]}) "
                             f"array (one row per label, D={shape[1]}) holds {want}")
        if stray:
            raise ValueError(f"{stray[0]!r} is not the head's file")


def parse(raw: bytes, where: str) -> dict[str, Any]:
    """Validate the exact manifest bytes; the manifest as plain JSON data, or one-line BundleError."""
    try:
        model = BundleManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise BundleError(f"{where}: {_describe(exc)}") from None
    return model.model_dump(mode="json")


def _describe(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    for error in errors:  # a wrong format first: no other field means anything then
        if error["loc"] == ("format",):
            fmt = error.get("input")
            known = isinstance(fmt, str) and fmt.startswith("edgetl.bundle/")
            hint = "upgrade edgetl on this machine" if known else "not an edgetl bundle"
            return f"bundle format {_short(fmt)} is not {FORMAT!r}: {hint}"
    missing = next((e for e in errors if e["type"] == "value_error" and NOT_INSTALLED in str(e["ctx"]["error"])), None)
    if missing:  # nothing in the bundle is wrong (the profile naming the runtime fails too): this machine lacks a plugin
        return f"{MANIFEST}: {_short(str(missing['ctx']['error']), 300, quote=False)}"
    error = errors[0]
    if not error["loc"] and error["type"] == "model_type":
        return f"{MANIFEST} is not a JSON object: not an edgetl bundle"
    loc = _location(error["loc"])
    message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"field {loc}: " if loc else ""
    return f"{MANIFEST} is malformed: {where}{_short(message, 300, quote=False)}{more}: rebuild the bundle with `edgetl bundle`"


def _location(loc: tuple) -> str:
    """('files', '../x', '[key]') -> files['../x']; union members (by class name) left out."""
    text = ""
    for part in loc:
        if part in ("[key]", "TargetProfile", "BareTarget"):
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{_short(part)}]"
    return text


def _short(value: Any, limit: int = 60, quote: bool = True) -> str:
    """A bundle's text in a message: bounded, on one line."""
    text = repr(value) if quote else str(value)
    text = re.sub(r"[\x00-\x1f\x7f-\x9f]", "?", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
