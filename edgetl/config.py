"""Pydantic models for device profiles and calibration recipes, and their TOML loading.

Profiles live in ``targets/*.toml`` and recipes in ``calibration/*.toml``; both folders are read
from the current directory first (a user's own profiles), then from the ones shipped with edgetl.
A bad file gets one line naming the file and the field.
"""

from __future__ import annotations

import difflib
import re
import sys
import typing
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from edgetl.errors import ConfigError, UnknownNameError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_ROOT = Path(__file__).resolve().parent
# edgetl/_data/{targets,calibration} link to the repository's top-level folders; wheels copy them.
_SHIPPED = {kind: [_ROOT / "_data" / kind] for kind in ("targets", "calibration")}


# The most threads a profile, a bench or a bundle may ask for: more is a typo, and each one is an OS thread.
MAX_THREADS = 1024


class _Strict(BaseModel):
    # strict: TOML has real types, so `threads = "4"` or `per_channel = "no"` is a mistake to report,
    # not a value to coerce ("no" would become False, but "off" an error). No inf/nan budgets either.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Goal(NamedTuple):
    """A goal on a metric: ``value`` is the most (``bound = "max"``) or the least (``"min"``) it may be.
    ``key`` is how the profile spelt it, for messages."""

    metric: str
    bound: Literal["max", "min"]
    value: float
    key: str


# The three keys profiles have always had: each is a goal on a metric (a task's or the bench's).
LEGACY_GOALS = {"max_accuracy_drop_pp": ("accuracy_drop_pp", "max"),
                "p90_latency_ms": ("p90_latency_ms", "max"),
                "max_memory_mb": ("memory_mb", "max")}


class Limit(_Strict):
    """One entry of ``[budgets.goals]``: ``top1 = { min = 0.9 }`` or ``p90_latency_ms = { max = 20 }``."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> Limit:
        if (self.min is None) == (self.max is None):
            raise ValueError("give one bound: { min = VALUE } or { max = VALUE }")
        return self

    @model_serializer(mode="wrap")
    def _the_bound(self, handler) -> dict[str, float]:
        return {k: v for k, v in handler(self).items() if v is not None}


def metric_table(task: str | None = None) -> dict:
    """name -> Metric a budget may set a goal on: ``task``'s metrics (every registered task's when
    None, as a profile does not know the run it will gate) and the bench's."""
    from edgetl.tasks import BENCH_METRICS, get_task, tasks

    names = [task] if task else tasks()
    return {m.name: m for t in names for m in get_task(t).metrics} | {m.name: m for m in BENCH_METRICS}


def unknown_metric(name: str, valid: list[str]) -> str:
    return f"unknown metric {name!r}.{_closest(name, valid)} Valid: {', '.join(sorted(valid))}"


class Budgets(_Strict):
    """Pass/fail gates the bench stage enforces on this device: goals on metrics (``as_goals``).

    The three named fields are the historical spelling of three goals; ``goals`` sets a goal on any
    metric a task declares or the bench measures (``[budgets.goals]`` in the TOML)."""

    max_accuracy_drop_pp: float | None = Field(None, ge=0, le=100, description="top-1 drop vs FP32, points")
    p90_latency_ms: float | None = Field(None, gt=0, description="batch-1 p90 latency")
    max_memory_mb: float | None = Field(None, gt=0, description="peak resident memory of the session")
    goals: dict[str, Limit] = Field({}, description="metric = { min = VALUE } or { max = VALUE }")

    @field_validator("goals")
    @classmethod
    def _declared_metrics(cls, goals: dict[str, Limit]) -> dict[str, Limit]:
        metrics = metric_table()
        for name, limit in goals.items():
            if name not in metrics:
                raise ValueError(unknown_metric(name, list(metrics)))
            wanted = "min" if metrics[name].better == "higher" else "max"
            if getattr(limit, wanted) is None:  # a floor on latency, a ceiling on top-1: a typo, not a goal
                raise ValueError(f"{name} is better {metrics[name].better}: give it a {wanted} "
                                 f"({name} = {{ {wanted} = VALUE }})")
            if wanted == "max" and limit.max < 0:  # as the named fields: no drop, latency or memory is below 0
                raise ValueError(f"{name} = {{ max = {limit.max:g} }} can never be met: give a value >= 0")
        return goals

    @model_validator(mode="after")
    def _each_metric_once(self) -> Budgets:
        for key, (metric, _) in LEGACY_GOALS.items():
            if getattr(self, key) is not None and metric in self.goals:
                raise ValueError(f"{key} and goals.{metric} set the same goal: keep one")
        return self

    def as_goals(self) -> list[Goal]:
        """Every goal, the named fields first (in their order), then ``goals`` in the file's order."""
        named = [Goal(metric, bound, getattr(self, key), key)
                 for key, (metric, bound) in LEGACY_GOALS.items() if getattr(self, key) is not None]
        general = [Goal(name, "min" if limit.min is not None else "max",
                        limit.min if limit.min is not None else limit.max, f"goals.{name}")
                   for name, limit in self.goals.items()]
        return named + general

    @model_serializer(mode="wrap")
    def _without_unset(self, handler) -> dict[str, Any]:
        # Dumped into bench results, manifests and bundles: only the goals the profile sets.
        return {k: v for k, v in handler(self).items() if v not in (None, {})}


class TargetProfile(_Strict):
    """A device profile. Besides these fields, a profile holds its runtime's own fields (``gpu_arch``
    for TensorRT, ``cpu_arch``/``cpu_flags`` for the CPU runtimes): the backend's ``options_model``
    validates them into ``options``, and they dump back flat, as the TOML file has them."""

    name: str
    description: str = ""
    runtime: str
    precision: Literal["fp32", "fp16", "int8"] = "int8"
    threads: int | None = Field(None, ge=1, le=MAX_THREADS)
    device: Literal["cpu", "gpu", "npu"] = Field("cpu", validate_default=True, description="what runs the model")
    calibration: str = "default"
    budgets: Budgets = Budgets()
    options: dict[str, Any] = Field({}, description="the runtime's own fields, validated by its backend")

    @model_validator(mode="before")
    @classmethod
    def _runtime_fields(cls, data: Any) -> Any:
        """Move the fields that are not common to every profile into ``options``, validated by the runtime."""
        from edgetl.backends import get_backend, runtimes

        if not isinstance(data, dict) or data.get("runtime") not in runtimes():
            return data  # the runtime field reports it; other fields are reported as unknown
        common = set(cls.model_fields) - {"options"}
        own = {k: v for k, v in data.items() if k not in common}
        nested = own.pop("options", {})  # a dumped profile read back may nest them
        if not isinstance(nested, dict):
            raise ValueError("field 'options' must be a table of the runtime's own fields (or leave it out)")
        own = {**nested, **own}
        own = {k: v for k, v in own.items() if v is not None}  # manifests of older bundles list unset fields
        model = get_backend(data["runtime"]).options_model
        for field in own:
            if field not in model.model_fields:
                raise ValueError(_unknown_profile_field(field, data["runtime"], sorted(common | set(model.model_fields))))
        try:
            options = model.model_validate(own)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"field '{where}': {_explain(model, first)}") from None
        return {**{k: v for k, v in data.items() if k in common}, "options": options.model_dump(exclude_none=True)}

    @model_serializer(mode="wrap")
    def _flat(self, handler) -> dict[str, Any]:
        dumped = handler(self)
        options = dumped.pop("options", {})
        return {**dumped, **options}

    @field_validator("runtime")
    @classmethod
    def _registered(cls, v: str) -> str:
        from edgetl.backends import runtimes

        if v not in runtimes():
            raise ValueError(f"unknown runtime {v!r}.{_closest(v, list(runtimes()))} Valid: {', '.join(runtimes())}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str, info: ValidationInfo) -> str:
        from edgetl.backends import get_backend

        runtime = info.data.get("runtime")
        if runtime is None:
            return v
        devices = get_backend(runtime).devices
        if v not in devices:
            raise ValueError(f"runtime {runtime!r} runs on {' or '.join(devices)}: set device = \"{devices[0]}\" (it is {v!r})")
        return v


def _unknown_profile_field(field: str, runtime: str, valid: list[str]) -> str:
    """An unknown field, or one that belongs to another runtime."""
    from edgetl.backends import get_backend, runtimes

    owners = [r for r in runtimes() if field in get_backend(r).options_model.model_fields]
    if owners:
        return (f"field '{field}': only applies to runtime {' or '.join(repr(o) for o in owners)}, "
                f"not {runtime!r}: remove it")
    return f"field '{field}': unknown field.{_closest(field, valid)} Valid: {', '.join(valid)}"


class CalibrationRecipe(_Strict):
    name: str
    description: str = ""
    samples: int = Field(300, ge=1)
    sampling: Literal["class-balanced", "random"] = "class-balanced"
    seed: int = 0
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = Field(99.999, gt=50, le=100)
    per_channel: bool = True
    symmetric_activations: bool = False
    keep_float_ops: list[str] = Field(default_factory=list, description="op types left in float")
    keep_float_nodes: list[str] = Field(default_factory=list, description="node names left in float")
    keep_float_depthwise: bool = Field(False, description="leave depthwise (grouped) convolutions in float")
    bias_correction: Literal["fast", "accurate", "none"] = "fast"


def validation_message(path: Path, model: type[BaseModel], exc: ValidationError) -> str:
    first = exc.errors()[0]
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    if not first["loc"]:  # a model-level check: its message names the field itself
        return f"{path}: {_explain(model, first)}{more}"
    where = ".".join(str(p) for p in first["loc"])
    return f"{path}: field '{where}': {_explain(model, first)}{more}"


def _explain(model: type[BaseModel], error: dict) -> str:
    """Pydantic's message, plus the closest valid name for a misspelt field or choice."""
    if error["type"] == "extra_forbidden":
        *parents, field = [str(p) for p in error["loc"]]
        model = _model_at(model, parents)  # e.g. budgets.p90_latency -> the Budgets model's fields
        valid = sorted(model.model_fields)
        return f"unknown field.{_closest(field, valid)} Valid: {', '.join(valid)}"
    if error["type"] == "literal_error" and isinstance(error.get("input"), str):
        choices = re.findall(r"'([^']*)'", error["ctx"]["expected"])
        return f"{error['msg']}.{_closest(error['input'], choices)}".rstrip(".")
    if error["type"] == "value_error":  # our validators: drop pydantic's "Value error, " prefix
        return str(error["ctx"]["error"])
    return error["msg"]


def _model_at(model: type[BaseModel], path: list[str]) -> type[BaseModel]:
    """The model that holds the last field of ``path``; a dict's keys (``budgets.goals.top1``) are skipped."""
    for part in path:
        if isinstance(model, type) and issubclass(model, BaseModel):
            model = model.model_fields[part].annotation
        else:  # dict[str, Model]: ``part`` is a key, the values are the model
            model = typing.get_args(model)[-1]
    return model


def _closest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} {'is a directory' if path.is_dir() else 'does not exist'}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file (TOML must be UTF-8)") from None


def _load_model(model: type[BaseModel], path: Path):
    data = load_toml(path)
    # The file name is the name other stages look the profile up by (manifest keys, bench budgets).
    if data.setdefault("name", path.stem) != path.stem:
        raise ConfigError(
            f"{path}: field 'name': {data['name']!r} differs from the file name {path.stem!r}; "
            "remove the field (the file name is the name) or rename the file"
        )
    try:
        loaded = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(path, model, exc)) from None
    recipe = getattr(loaded, "calibration", None)
    if recipe is not None and not recipe.endswith(".toml") and recipe not in recipe_names():
        valid = recipe_names()
        raise ConfigError(
            f"{path}: field 'calibration': unknown calibration recipe {recipe!r}.{_closest(recipe, valid)} "
            f"Valid: {', '.join(valid)}, or a path to a .toml recipe"
        )
    return loaded


def _catalogue(kind: str) -> dict[str, Path]:
    """name -> file, user's ./<kind>/ first, then the shipped folder."""
    found: dict[str, Path] = {}
    for folder in [Path.cwd() / kind, *_SHIPPED[kind]]:
        if folder.is_dir():
            for f in sorted(folder.glob("*.toml")):
                found.setdefault(f.stem, f)
    return found


def _resolve(kind: str, name_or_path: str | Path) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.is_file():
        if not candidate.is_file():
            raise ConfigError(f"{kind} file {candidate} does not exist")
        return candidate
    table = _catalogue(kind)
    if str(name_or_path) not in table:
        raise UnknownNameError("target profile" if kind == "targets" else "calibration recipe", str(name_or_path), table)
    return table[str(name_or_path)]


def name_list(option: str, value: Any) -> list[str] | None:
    """A list option of names as the Python API got it: a list of texts, or one text read as the CLI's
    comma list (``targets="host-cpu,raspberry-pi-5"``; ``"host-cpu"`` is one name, not eight).
    Anything else is one line naming the option."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{option} must be a list of names, e.g. ['host-cpu'], or one comma-separated text, "
                          f"not {repr(value)[:80]}")
    return [v.strip() for v in value if v.strip()]


def target_names() -> list[str]:
    return list(_catalogue("targets"))


def recipe_names() -> list[str]:
    return list(_catalogue("calibration"))


def load_target(name_or_path: str | Path) -> TargetProfile:
    return _load_model(TargetProfile, _resolve("targets", name_or_path))


def load_recipe(name_or_path: str | Path) -> CalibrationRecipe:
    return _load_model(CalibrationRecipe, _resolve("calibration", name_or_path))
