"""What ``edgetl optimize`` records: the manifest's ``optimize`` section, one ``OptimizeRecord`` per
target, each holding every point it measured (``PointResult``: one row of the candidate table)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from edgetl.rundir import Record

Status = Literal["picked", "measured", "pruned", "failed", "skipped"]


class PointResult(BaseModel):
    """One candidate artifact at one thread count: one row of the candidate table."""

    id: str  # "<artifact id>@<threads>t" (or "<artifact id>" without threads)
    artifact: str  # the artifact id (12 hex of its fingerprint)
    runtime: str
    precision: str
    variant: str
    keep_float: list[str] = Field(default_factory=list)
    threads: int | None
    recipe: str | None  # e.g. "percentile" or "percentile+symmetric" (int8)
    status: Status
    error: str | None = None
    size_bytes: int | None = None
    compile_s: float | None = None
    accuracy: dict | None = None  # CompiledEntry.accuracy's fields (top1, drop_pp, drop_ci_pp, agreement, ...)
    latency: dict | None = None  # Timer.time()'s dict + "round"
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
    points: list[PointResult]
    fallback: dict | None = None  # {"from": id, "ranked": [[node, op, score]], "kept": [...], "tried": [[k, drop]]}
    settings: dict = Field(default_factory=dict)
    elapsed_s: float
    budget_spent: bool = False
    not_tried: list[str] = Field(default_factory=list)
    fingerprint: str  # onnx sha + space + budgets + timer: is-current check

    def point(self, point_id: str | None) -> PointResult | None:
        return next((p for p in self.points if p.id == point_id), None)
