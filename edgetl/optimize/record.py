"""What ``edgetl optimize`` records: the manifest's ``optimize`` section, one ``OptimizeRecord`` per
target, each holding every point it measured (``PointResult``: one row of the candidate table)."""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from edgetl.config import MAX_THREADS
from edgetl.rundir import Record

Status = Literal["picked", "measured", "pruned", "failed", "skipped"]
MAX_LATENCY_MS = 3_600_000.0  # one batch-1 run taking an hour is no latency a device measured
MAX_POINTS = 10_000  # every variant x threads of every runtime is tens of points; more is no search's record


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_latency(latency: Any) -> bool:
    """A timing as a timer returns it: positive, finite, ordered percentiles and a count of runs."""
    if not isinstance(latency, dict):
        return False
    values = [latency.get(k) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")]
    return (all(finite(v) and 0 < v <= MAX_LATENCY_MS for v in values) and values[0] <= values[1] <= values[2]
            and type(latency.get("iterations")) is int and latency["iterations"] >= 1
            and ("memory_mb" not in latency or finite(latency["memory_mb"])))


def is_accuracy(accuracy: Any) -> bool:
    """An accuracy as the compiler measures it: a finite drop, finite scores where it has them, and an
    interval (when there is one) of two finite bounds: what the search decides on and the tables show."""
    if not isinstance(accuracy, dict) or not finite(accuracy.get("drop_pp")):
        return False
    ci = accuracy.get("drop_ci_pp")
    return (all(finite(accuracy[k]) for k in ("top1", "fp32_top1", "agreement") if k in accuracy)
            and (ci is None or (isinstance(ci, list) and len(ci) == 2 and all(finite(v) for v in ci))))


def _is_reference(ref: Any) -> bool:
    return isinstance(ref, dict) and all(finite(ref.get(k)) and 0 < ref[k] <= MAX_LATENCY_MS for k in ("p50_ms", "p90_ms"))


def _must(check, what: str) -> AfterValidator:
    """A field that holds only what a search measures: ``check(value)``, else "not a measured <what>"."""
    def checked(value):
        if not check(value):
            raise ValueError(f"not a measured {what}")
        return value

    return AfterValidator(checked)


class PointResult(BaseModel):
    """One candidate artifact at one thread count: one row of the candidate table."""

    id: str  # "<artifact id>@<threads>t" (or "<artifact id>" without threads)
    artifact: str  # the artifact id (12 hex of its fingerprint)
    runtime: str
    precision: str
    variant: str
    keep_float: list[str] = Field(default_factory=list)
    threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] | None
    recipe: str | None  # e.g. "percentile" or "percentile+symmetric" (int8)
    status: Status
    error: str | None = None
    size_bytes: int | None = None
    compile_s: float | None = None
    accuracy: Annotated[dict, _must(is_accuracy, "accuracy (a finite drop_pp, finite numbers)")] | None = None  # CompiledEntry.accuracy's fields (top1, drop_pp, drop_ci_pp, agreement, ...)
    latency: Annotated[dict, _must(is_latency, "latency (positive, finite, ordered p50 <= p90 <= p99 ms)")] | None = None  # Timer.time()'s dict + "round"
    gates: dict | None = None  # bench.gates.evaluate_gates(...) of this point
    meets: bool = False
    pareto: bool = False
    why: str | None = None  # for every row but the pick: why it lost, in words


class OptimizeRecord(Record):
    """``manifest["optimize"][<target>]``: one search, its points and its pick."""

    SECTION: ClassVar[str] = "optimize"
    KEYED: ClassVar[bool] = True

    target: str
    device: str
    remote: str | None = None
    budgets: dict
    pick: str | None  # a PointResult.id
    reference: dict | None = None  # PyTorch eager: p50_ms, p90_ms, threads
    points: list[PointResult] = Field(max_length=MAX_POINTS)
    fallback: dict | None = None  # {"from": id, "ranked": [[node, op, score]], "kept": [...], "tried": [[k, drop]]}
    settings: dict = Field(default_factory=dict)
    elapsed_s: float
    budget_spent: bool = False
    not_tried: list[str] = Field(default_factory=list)
    fingerprint: str  # onnx sha + space + budgets + timer: is-current check

    @field_validator("reference")
    @classmethod
    def _reference(cls, value: dict | None) -> dict | None:
        by = (value or {}).get("by_threads") or {}
        if value is not None and not (_is_reference(value) and isinstance(by, dict)
                                      and all(_is_reference(r) for r in by.values())):
            raise ValueError("not a measured PyTorch latency (positive, finite p50_ms and p90_ms)")
        return value

    @model_validator(mode="after")
    def _pick_is_a_point(self) -> OptimizeRecord:
        if self.pick is not None and self.point(self.pick) is None:
            raise ValueError(f"the pick {self.pick[:40]!r} is none of the points")
        return self

    def point(self, point_id: str | None) -> PointResult | None:
        return next((p for p in self.points if p.id == point_id), None)
