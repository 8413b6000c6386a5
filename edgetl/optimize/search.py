"""The search: build every candidate and measure its accuracy (cached by fingerprint), time the
points in successive-halving rounds, recover int8 when none meets the accuracy budget, pick.

Order (docs/architecture.md, "Optimize"):
1. build + accuracy of every candidate, cached under ``optimize/<target>/<id>/`` (``candidate.json``
   holds the accuracy, the files' sha256s and the timings already taken);
2. round 1: a short timing of every point (a candidate at a thread count), failing ones included so
   the Pareto chart has them;
3. recovery when no int8 point meets the accuracy budget: other calibration methods for the fastest
   failing int8 candidates, then the keep-float fallback (``optimize.fallback``) where it is installed;
4. successive halving (eta 3) over the points that meet the accuracy budget: keep the fastest third
   (at least 2) after each round, each round longer; the last round uses the full timing policy;
5. the pick: the lowest final p50 among the points that meet every budget of the profile.
The time budget stops new builds and screening rounds; points already measured are finished.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgetl import __version__
from edgetl._io import sha256_file, sha256_json, write_json
from edgetl.bench.gates import PASS, UNDECIDED, evaluate_gates
from edgetl.compiler import KEEP_FLOAT_SCHEME, _Context, _jsonable, build_artifact, cell_fingerprint
from edgetl.config import Budgets
from edgetl.errors import EdgetlError
from edgetl.optimize.record import PointResult, is_accuracy, is_latency
from edgetl.optimize.space import Candidate
from edgetl.stages import Reporter
from edgetl.tasks import BENCH_METRICS
from edgetl.tensors import batch_size

ETA = 3  # successive halving keeps the fastest third
MIN_KEPT = 2
SCREEN_S = (0.3, 1.0)  # screening rounds' timed seconds; the round after them is the final one
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
RECOVER_FROM = 2  # recovery starts from the fastest failing int8 candidates, this many
MORE_SAMPLES = 3  # recovery also calibrates the fastest failing one on this many times the recipe's samples
MAX_RECORD_BYTES = 16 << 20  # a candidate.json is a few kB; a larger one is not one this search wrote


@dataclasses.dataclass
class Built:
    """One candidate's artifact (built now or read from the cache) and what was measured of it."""

    candidate: Candidate
    fingerprint: str
    folder: Path
    data: dict[str, Any]  # candidate.json ({} when it was not built)
    error: str | None = None
    skipped: bool = False  # not in the cache, and the time budget was spent before it could be built

    @property
    def id(self) -> str:
        return self.fingerprint[:12]

    @property
    def entry(self) -> dict[str, Any]:
        """CompiledEntry-shaped: what a timer loads and a bundle carries."""
        return {"runtime": self.candidate.runtime, "precision": self.candidate.variant.precision,
                "path": self.data["path"], "files": list(self.data["files"]), "options": self.data.get("options", {}),
                "variant": self.candidate.variant.label}


@dataclasses.dataclass
class Point:
    built: Built
    threads: int | None
    timings: list[dict] = dataclasses.field(default_factory=list)  # one per round, in order
    status: str = "measured"
    why: str | None = None

    @property
    def id(self) -> str:
        return self.built.id + (f"@{self.threads}t" if self.threads is not None else "")

    @property
    def latency(self) -> dict | None:
        return self.timings[-1] if self.timings else None

    @property
    def p50(self) -> float:
        return self.latency["p50_ms"] if self.latency else math.inf


# -- budgets ---------------------------------------------------------------------------------------
def with_max_drop(budgets: Budgets, max_drop: float | None) -> Budgets:
    """The profile's budgets with ``--max-drop`` as the accuracy-drop goal."""
    if max_drop is None:
        return budgets
    data = budgets.model_dump()
    data.get("goals", {}).pop("accuracy_drop_pp", None)
    return Budgets.model_validate({**data, "max_accuracy_drop_pp": max_drop})


def drop_budget(budgets: Budgets) -> float | None:
    """The accuracy-drop budget in pp, however the profile spells it (a named field or a goal)."""
    return next((g.value for g in budgets.as_goals() if g.metric == "accuracy_drop_pp" and g.bound == "max"), None)


def _passes(check: dict) -> bool:
    """A check the point meets: PASS, or UNDECIDED with its point estimate within the budget."""
    if check["status"] == PASS:
        return True
    if check["status"] == UNDECIDED and check.get("value") is not None:
        return check["value"] <= check["budget"] if check["goal"] == "max" else check["value"] >= check["budget"]
    return False


def _why_missed(check: dict) -> str:
    """A missed check's reason. The gates call an interval that straddles the budget undecided; the
    search decides it on the point estimate, so its reason says that instead of "too few samples"."""
    if check["status"] != UNDECIDED or check.get("value") is None:
        return check["reason"]
    unit = f" {check['unit']}" if check.get("unit") else ""
    fmt = (lambda v: f"{v:+.2f}") if check.get("unit") == "pp" else (lambda v: f"{v:.3g}")  # noqa: E731
    lo, hi = check.get("interval") or (check["value"], check["value"])
    return (f"{check['name']} {fmt(check['value'])}{unit} {'>' if check['goal'] == 'max' else '<'} budget "
            f"{check['budget']:g}{unit} on its point estimate (n={check.get('n')}: 95% CI {fmt(lo)}..{fmt(hi)} "
            "straddles the budget; optimize decides on the point estimate)")


def gates_of(budgets: Budgets, accuracy: dict | None, latency: dict | None) -> dict:
    latency_rows = [{"batch": 1, **latency}] if latency else []
    memory = {"session_peak_mb": latency["memory_mb"]} if latency and "memory_mb" in latency else {}
    return evaluate_gates(budgets, {"accuracy": accuracy, "latency": latency_rows, "memory": memory})


_LATER = frozenset(m.name for m in BENCH_METRICS)  # goals the timing decides; the task's by its accuracy


def accuracy_met(budgets: Budgets, accuracy: dict | None) -> tuple[bool, str | None]:
    """(whether the accuracy goals hold on the point estimate, why not)."""
    if accuracy is None:
        return False, "no accuracy"
    checks = [c for c in gates_of(budgets, accuracy, None)["checks"] if c["metric"] not in _LATER]
    failed = [_why_missed(c) for c in checks if not _passes(c)]
    return not failed, "; ".join(failed) or None


def all_met(budgets: Budgets, accuracy: dict | None, latency: dict | None) -> tuple[dict, bool, str | None]:
    gates = gates_of(budgets, accuracy, latency)
    failed = [_why_missed(c) for c in gates["checks"] if not _passes(c)]
    return gates, not failed, "; ".join(failed) or None


# -- the search ------------------------------------------------------------------------------------
class Search:
    def __init__(self, ctx: _Context, target: str, profile_options: dict, root: Path, timer, budgets: Budgets,
                 threads_axis: Callable[[Candidate], list[int | None]], *, force: bool, deadline: float,
                 reporter: Reporter):
        self.ctx, self.run, self.target, self.profile_options = ctx, ctx.run, target, profile_options
        self.root, self.timer, self.budgets, self.threads_axis = root, timer, budgets, threads_axis
        self.force, self.deadline, self.reporter = force, deadline, reporter
        self.not_tried: list[str] = []
        self.fallback: dict | None = None
        self.labels: dict[str, str] = {}  # fingerprint -> the label of the first candidate that built it
        self.rounds = 0

    def spent(self) -> bool:
        return time.monotonic() >= self.deadline

    # -- building ------------------------------------------------------------------------------
    def build_all(self, candidates: list[Candidate], what: str = "building") -> list[Built]:
        self.reporter.start("build", total=len(candidates))
        out = []
        for cand in candidates:
            self.reporter.step("build", f"{what} {cand.label}")
            built = self.build(cand, new=not self.spent())  # once the budget is spent, the cache only
            first = self.labels.setdefault(built.fingerprint, cand.label) if not built.error else cand.label
            if first != cand.label:  # two labels, one artifact: timing it twice would list it twice
                self.not_tried.append(f"{cand.label}: the same artifact as {first} [{built.id}] (identical build "
                                      "settings: the profile already sets what this variant changes)")
                self.reporter.advance("build", f"same as {first} [{built.id}]: {cand.label}")
                continue
            out.append(built)
            state = "failed" if built.error else "skipped" if built.skipped else "ready"
            if built.skipped:
                self.not_tried.append(f"{cand.label}: not built, the time budget was spent")
            self.reporter.advance("build", f"{state} {cand.label} [{built.id}]")
        self.reporter.done("build", f"{len(out)} candidates")
        return out

    def build(self, cand: Candidate, new: bool = True) -> Built:
        """The candidate from its cache, else built now (``new``) or marked skipped."""
        cell = cand.cell(self.target, self.profile_options)
        try:
            fingerprint = cell_fingerprint(self.ctx, cell)
        except EdgetlError as exc:
            return Built(cand, "0" * 12, self.root, {}, error=str(exc))
        folder = self.root / fingerprint[:12]
        cached = None if self.force else self._cached(folder, fingerprint)
        if cached is not None:
            return Built(cand, fingerprint, folder, cached)
        if not new:
            return Built(cand, fingerprint, folder, {}, skipped=True)
        try:
            compiled, accuracy, compile_s = build_artifact(self.ctx, cell, folder / "artifact", self.reporter)
        except Exception as exc:  # one candidate that cannot be built (a runtime's refusal or crash) fails its row
            message = str(exc) if isinstance(exc, EdgetlError) else f"{type(exc).__name__}: {exc}"
            return Built(cand, fingerprint, folder, {}, error=message.splitlines()[0][:300] if message else "failed")
        data = {"fingerprint": fingerprint, "runtime": cand.runtime, "precision": cand.variant.precision,
                "variant": cand.variant.label, "path": self.run.rel(compiled.path),
                "files": {self.run.rel(f): sha256_file(f) for f in compiled.files},
                "size_bytes": sum(f.stat().st_size for f in compiled.files), "compile_s": round(compile_s, 3),
                "options": _jsonable(compiled.options), "accuracy": accuracy, "timings": {},
                # the ONNX twin whose run estimated the accuracy (TensorRT): a bundle's golden outputs come from it
                "estimate_with": self.run.rel(compiled.estimate_with) if compiled.estimate_with else None}
        write_json(folder / "candidate.json", data)
        return Built(cand, fingerprint, folder, data)

    def _cached(self, folder: Path, fingerprint: str) -> dict | None:
        """candidate.json when it is this candidate's, its files are its own and still have their
        sha256, and its numbers are ones a measurement gives; else None (a corrupt, edited or
        half-written cache is rebuilt, never trusted)."""
        try:
            record = folder / "candidate.json"
            if record.stat().st_size > MAX_RECORD_BYTES:
                return None
            data = json.loads(record.read_text(encoding="utf-8"))
            ok = (isinstance(data, dict) and data.get("fingerprint") == fingerprint and isinstance(data.get("files"), dict)
                  and is_accuracy(data.get("accuracy")) and isinstance(data.get("timings"), dict)
                  and all(is_latency(t) for t in data["timings"].values())
                  and data["path"] in data["files"]
                  and all(self._own_file(folder, f) and sha256_file(self.run.inside(f)) == sha
                          for f, sha in data["files"].items()))
        except (OSError, ValueError, KeyError, TypeError, EdgetlError):
            return None
        return data if ok else None

    def _own_file(self, folder: Path, rel: str) -> bool:
        """A file of the candidate's own artifact folder: not a link, not another candidate's file
        (promoting and bundling copy it from there)."""
        path = self.run.inside(rel)
        return not path.is_symlink() and path.resolve().is_relative_to((folder / "artifact").resolve())

    # -- timing --------------------------------------------------------------------------------
    def time_round(self, points: list[Point], round_no: int, final: bool) -> None:
        """Time ``points`` in round ``round_no`` (1: the short screening every point gets)."""
        self.rounds = max(self.rounds, round_no)
        stage = f"round {round_no}" + (" (final)" if final else "")
        duration = None if final else SCREEN_S[min(round_no - 1, len(SCREEN_S) - 1)]
        self.reporter.start(stage, total=len(points))
        for p in points:
            self.reporter.step(stage, f"timing {p.built.candidate.label} at {p.threads or '-'} threads")
            try:
                p.timings.append({**self._timed(p, round_no, duration, final), "round": round_no, "final": final})
            except Exception as exc:  # a runtime that crashes while timing fails this point only
                p.status, p.why = "failed", f"timing failed: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
            self.reporter.advance(stage, f"{p.built.candidate.label} @{p.threads or '-'}t: "
                                  + (f"p50 {p.p50:.3f} ms" if p.status != "failed" else "failed"))
        self.reporter.done(stage, f"{len(points)} points timed")

    def _timed(self, p: Point, round_no: int, duration: float | None, final: bool) -> dict:
        key = f"{self.timer.where}|{p.threads}t|r{round_no}{'f' if final else ''}"
        cached = p.built.data["timings"].get(key)
        if isinstance(cached, dict) and not cached.get("busy") and not self.force:  # a busy machine's timing is retaken
            return cached
        measured = self.timer.time(self.run, p.built.folder, p.built.entry, p.threads, duration, final)
        p.built.data["timings"][key] = measured
        write_json(p.built.folder / "candidate.json", p.built.data)
        return measured

    # -- the steps ----------------------------------------------------------------------------
    def points_of(self, builts: list[Built]) -> list[Point]:
        return [Point(b, t, status="skipped", why="not built: the time budget was spent") if b.skipped else Point(b, t)
                for b in builts for t in self.threads_axis(b.candidate)]

    def usable(self, points: list[Point]) -> list[Point]:
        """The points that have an artifact to time."""
        return [p for p in points if not p.built.error and not p.built.skipped]

    def meets_accuracy(self, p: Point) -> bool:
        return bool(self.usable([p])) and accuracy_met(self.budgets, p.built.data.get("accuracy"))[0]

    def meets_memory(self, p: Point) -> bool:
        """Whether the memory budget holds where it was read. Peak memory is no timing noise: a point over
        it in a screening round never meets it, and must not take a finalist's place."""
        checks = gates_of(self.budgets, None, p.latency)["checks"]
        return all(_passes(c) for c in checks if c["metric"] == "memory_mb" and c.get("value") is not None)

    def screen(self, points: list[Point]) -> None:
        self.time_round(self.usable(points), 1, final=False)

    def halve(self, points: list[Point]) -> list[Point]:
        """Successive halving over the points that meet the accuracy and memory budgets; returns the
        finalists (timed under the full policy)."""
        alive = sorted((p for p in points if self.meets_accuracy(p) and self.meets_memory(p) and p.status != "failed"),
                       key=lambda p: p.p50)
        round_no = 1
        while alive:
            if len(alive) > MIN_KEPT:
                keep = max(MIN_KEPT, math.ceil(len(alive) / ETA))
                best = alive[0].p50
                for p in alive[keep:]:
                    p.status = "pruned"
                    p.why = (f"pruned after round {round_no}: p50 {p.p50:.3f} ms, {p.p50 / best:.2f}x the fastest "
                             f"({best:.3f} ms)")
                alive = alive[:keep]
            round_no += 1
            final = len(alive) <= MIN_KEPT or self.spent() or round_no > len(SCREEN_S)
            self.time_round(alive, round_no, final=final)
            alive = sorted((p for p in alive if p.status != "failed"), key=lambda p: p.p50)
            if final:
                return alive
        return []

    def recover(self, points: list[Point], builts: list[Built]) -> list[Point]:
        """New points from other calibration methods, then the keep-float fallback, when no int8
        point meets the accuracy budget (the fastest failing int8 candidates first)."""
        int8 = [p for p in self.usable(points) if p.built.candidate.variant.precision == "int8" and p.latency]
        if not int8 or any(self.meets_accuracy(p) for p in int8):
            return []
        failing = []
        for p in sorted(int8, key=lambda p: p.p50):
            if p.built.candidate not in [b.candidate for b in failing]:
                failing.append(p.built)
        failing = failing[:RECOVER_FROM]
        tried = {b.fingerprint for b in builts}
        retries = [b.candidate.with_recipe({"method": m}, m) for b in failing for m in CALIBRATION_METHODS
                   if m != b.candidate.recipe.method]
        first = failing[0].candidate
        if batch_size(self.ctx.calibration(first.recipe, self.reporter.warn)) >= first.recipe.samples:
            # the training split may hold more: ranges from MORE_SAMPLES x as many (capped by the split)
            more = first.recipe.samples * MORE_SAMPLES
            retries.append(first.with_recipe({"samples": more}, f"{more} samples"))
        self.reporter.warn(f"no int8 candidate meets the accuracy budget: trying {len(retries)} other calibrations")
        new = [b for b in self.build_all(retries, "recovering: building") if b.fingerprint not in tried]
        fresh = self.points_of(new)
        self.screen(fresh)
        if not any(self.meets_accuracy(p) for p in fresh):
            # the fastest failing int8 structure, with whichever of its calibrations lost least
            same = [b for b in [failing[0], *new] if not b.error and b.candidate.runtime == first.runtime
                    and b.candidate.variant.precision == first.variant.precision
                    and b.candidate.variant.options == first.variant.options]
            fresh += self._fallback(min(same, key=lambda b: b.data["accuracy"]["drop_pp"]))
        return fresh

    def _fallback(self, built: Built) -> list[Point]:
        from edgetl.optimize import fallback

        if self.spent():
            self.not_tried.append("keep-float fallback: the time budget was spent")
            return []
        cand = built.candidate
        budget_pp = drop_budget(self.budgets)
        if budget_pp is None:
            self.not_tried.append("keep-float fallback: the profile sets no accuracy-drop budget")
            return []
        try:
            ranked = self._ranked(cand)
        except Exception as exc:  # the ranking's own failure ends the fallback, not the search
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            self.not_tried.append(f"keep-float fallback: ranking the layers failed: {reason}")
            return []
        if ranked is None:
            self.not_tried.append("keep-float fallback: the time budget was spent while ranking the layers "
                                  "(a larger --budget ranks them once; the ranking is cached)")
            return []
        builds: dict[tuple[str, ...], Built] = {}

        def measure_drop(kept: tuple[str, ...]) -> float:
            builds[kept] = self.build(cand.keeping_float(kept), new=not self.spent())
            if builds[kept].error or builds[kept].skipped:  # no drop to show: it cannot meet the budget
                return math.inf
            return builds[kept].data["accuracy"]["drop_pp"]

        recovery = fallback.recover(ranked, measure_drop, budget_pp, max_layers=len(ranked), should_stop=self.spent)
        finite = lambda v: v if v is not None and math.isfinite(v) else None  # noqa: E731  (JSON has no inf)
        self.fallback = {"from": built.id, "ranked": [[s.node, s.op_type, s.score] for s in ranked],
                         "kept": list(recovery.kept), "drop_pp": finite(recovery.drop_pp), "met": recovery.met,
                         "tried": [[k, finite(d)] for k, d in recovery.tried]}
        if not recovery.met or tuple(recovery.kept) not in builds:
            return []
        recovered = self.points_of([builds[tuple(recovery.kept)]])
        self.screen(recovered)
        return recovered

    def _ranked(self, cand: Candidate) -> list | None:
        """The layers of ``cand``'s int8 model, most sensitive first: measured once per model, recipe and
        device CPU (``fallback/ranked-<key>.json``; minutes on a real network), then read back."""
        from edgetl.optimize import fallback
        from edgetl.tensors import take

        view = self.ctx.view
        n = min(fallback.MAX_SAMPLES, len(view.val_labels()))
        key = sha256_json({"onnx": self.ctx.onnx_sha, "recipe": cand.recipe.model_dump(), "n": n,
                           "options": self.profile_options, "edgetl": __version__,
                           "keep_float": KEEP_FLOAT_SCHEME})[:16]
        path = self.root / "fallback" / f"ranked-{key}.json"
        if not self.force:
            try:
                return [fallback.LayerScore(*row) for row in json.loads(path.read_text(encoding="utf-8"))]
            except (OSError, ValueError, TypeError):
                pass
        self.reporter.step("build", f"recovering: ranking the layers of {cand.label}")
        ranked = fallback.rank_layers(self.ctx.onnx_path, self.ctx.calibration(cand.recipe, self.reporter.warn),
                                      cand.recipe, take(view.val_feeds(), slice(0, n)),
                                      take(view.reference(), slice(0, n)), self.root / "fallback" / "work",
                                      options=self.profile_options, should_stop=self.spent)
        if ranked is not None:  # cut short by the time budget: nothing to cache
            write_json(path, [[s.node, s.op_type, s.score] for s in ranked])
        return ranked


def pareto(points: list[Point]) -> set[str]:
    """Ids of the points no other point beats on both drop and p50."""
    rows = [(p.id, p.built.data["accuracy"]["drop_pp"], p.p50) for p in points
            if p.latency and not p.built.error and p.status != "failed"]
    return {i for i, d, t in rows
            if not any((d2 <= d and t2 <= t) and (d2 < d or t2 < t) for _, d2, t2 in rows)}


def results(points: list[Point], budgets: Budgets) -> tuple[list[PointResult], str | None]:
    """The table rows, each with its gates and why it lost; the pick's id (None when nothing meets
    every budget)."""
    finalists = [p for p in points if p.latency and p.latency.get("final") and p.status == "measured"]
    judged = {p.id: all_met(budgets, p.built.data["accuracy"], p.latency) for p in finalists}
    meeting = sorted((p for p in finalists if judged[p.id][1]), key=lambda p: p.p50)
    pick = meeting[0] if meeting else None
    front = pareto(points)
    rows = []
    for p in points:
        data, cand = p.built.data, p.built.candidate
        accuracy = data.get("accuracy")
        gates, meets, why_not = judged.get(p.id) or all_met(budgets, accuracy, p.latency)
        status, why = p.status, p.why
        if p.built.error:
            status, why = "failed", f"build failed: {p.built.error}"
        elif p.built.skipped:
            pass  # its status and why say it was not built
        elif p is pick:
            status, why = "picked", None
        elif status == "measured" and not accuracy_met(budgets, accuracy)[0]:
            why = accuracy_met(budgets, accuracy)[1]
        elif status == "measured" and p.latency and not meets:  # a finalist, or one left out over its memory
            why = why_not
        elif status == "measured" and pick is not None and p.id in judged:
            why = f"{p.p50 / pick.p50:.2f}x slower than the pick (p50 {p.p50:.3f} vs {pick.p50:.3f} ms)"
        rows.append(PointResult(
            id=p.id, artifact=p.built.id, runtime=cand.runtime, precision=cand.variant.precision,
            variant=cand.variant.label, keep_float=list(cand.keep_float), threads=p.threads,
            recipe=cand.recipe_label, status=status, error=p.built.error, size_bytes=data.get("size_bytes"),
            compile_s=data.get("compile_s"), accuracy=accuracy, latency=p.latency,
            gates=gates if p.latency else None, meets=bool(p.latency and meets and status in ("picked", "measured")),
            pareto=p.id in front, why=why))
    return rows, pick.id if pick else None


def copy_files(built: Built, run, dest_tmp: Path) -> tuple[Path, list[Path]]:
    """The candidate's files copied under ``dest_tmp`` (same layout); (the loaded file, every file)."""
    src_root = built.folder / "artifact"
    files = []
    for rel in built.data["files"]:
        src = run.path / rel
        target = dest_tmp / src.relative_to(src_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        files.append(target)
    return dest_tmp / (run.path / built.data["path"]).relative_to(src_root), files


def copied(built: Built, run, rel: str | None, dest: Path) -> Path | None:
    """Where ``copy_files`` put the candidate file ``rel`` under ``dest``."""
    return dest / (run.path / rel).relative_to(built.folder / "artifact") if rel else None


__all__ = ["Built", "Point", "Search", "pareto", "results", "with_max_drop"]
