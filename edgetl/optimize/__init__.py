"""``edgetl optimize``: find the fastest artifact that meets a device's budgets, by measurement.

``optimize(run, target)`` searches every runtime that serves the target profile's device x the
variants each declares (``optimize.space``), builds and evaluates each candidate (cached by
fingerprint under ``runs/<name>/optimize/<target>/``), times them on the device (``optimize.timing``)
in successive-halving rounds, recovers int8 accuracy when nothing meets the budget, and promotes
the pick to ``compiled["<target>/optimized"]``. The record (``optimize.record.OptimizeRecord``) is
written once, at the end: an interrupted search leaves the earlier record and pick as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edgetl._io import atomic_dir, sha256_json, write_json
from edgetl.backends import Compiled, get_backend
from edgetl.compiler import OPTIMIZED
from edgetl.config import MAX_THREADS, load_target, name_list
from edgetl.errors import ConfigError
from edgetl.optimize.record import OptimizeRecord, PointResult, is_latency
from edgetl.rundir import RunDir
from edgetl.stages import Reporter, RichReporter, SilentReporter

SLOT = OPTIMIZED  # the compiled slot of the pick: compiled/<target>/optimized
DEFAULT_BUDGET_S = 600.0


@dataclasses.dataclass
class OptimizeResult:
    """The search's record, and the compiled entry it promoted (None when nothing met the budgets)."""

    record: OptimizeRecord
    promoted: Any = None  # compiler.CompiledEntry

    @property
    def pick(self) -> PointResult | None:
        return self.record.point(self.record.pick)


def parse_budget(text: str | float | int) -> float:
    """Seconds from ``600``, ``90s``, ``10m`` or ``1h``; > 0."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
        if not match:
            raise ConfigError(f"--budget {text!r}: give seconds or a duration like 90s, 10m or 1h")
        seconds = float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]
    if not seconds > 0:
        raise ConfigError(f"--budget {text!r} must be more than 0 seconds")
    return seconds


def optimize(run_path: str | Path, target: str, *, remote: str | None = None, access=None,
             budget_s: float | str = DEFAULT_BUDGET_S, max_drop_pp: float | None = None, threads: int | None = None,
             runtimes: str | Sequence[str] | None = None, force: bool = False, reporter: Reporter | None = None,
             progress: bool = True) -> OptimizeResult:
    """Search, measure, pick and promote the fastest artifact of ``run_path`` for profile ``target``
    that meets its budgets. Bad input raises ``EdgetlError`` before anything is built."""
    from edgetl.compiler import _Context
    from edgetl.data.arrays import DataView
    from edgetl.export.onnx import export_run
    from edgetl.optimize import search as s
    from edgetl.optimize.space import candidates, serving_runtimes

    budget_s = parse_budget(budget_s)
    if max_drop_pp is not None and not 0 <= max_drop_pp <= 100:
        raise ConfigError(f"--max-drop {max_drop_pp:g} must be between 0 and 100 percentage points")
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise ConfigError(f"--threads {threads} must be from 1 to {MAX_THREADS}")
    profile = load_target(target)
    wanted = name_list("runtimes", runtimes)
    run = RunDir.open(run_path, need="train")
    budgets = s.with_max_drop(profile.budgets, max_drop_pp)
    started = time.monotonic()
    if reporter is None:
        reporter = _stderr_reporter() if progress else SilentReporter()

    names, unserved = serving_runtimes(profile, wanted, _remote_usable if remote else _local_usable)
    with _one_search(run, run.path / "optimize" / profile.name):  # promoting and recording too
        with tempfile.TemporaryDirectory(prefix="edgetl-optimize-") as work:
            view = DataView(run)
            timer = _timer(run, remote, access, Path(work), view)
            ctx = _Context(run, export_run(run, view=view), view)
            from edgetl.compiler import task_options

            space = candidates(profile, names, lambda rt: task_options(run, _probe_cell(profile, rt)).get("quantization", {}))
            axis = _threads_axis(profile.threads if threads is None else threads, timer, reporter)
            root = run.path / "optimize" / profile.name
            search = s.Search(ctx, profile.name, dict(profile.options), root, timer, budgets,
                              lambda c: [None] if get_backend(c.runtime).devices == ("gpu",) else axis,
                              force=force, deadline=started + budget_s, reporter=reporter)
            search.not_tried += [f"{u} (not searched)" for u in unserved]
            builts = search.build_all(space)
            points = search.points_of(builts)
            search.screen(points)
            points += search.recover(points, builts)
            search.halve(points)
            rows, pick = s.results(points, budgets)
            reference = _reference(timer, run, root, sorted({p.threads for p in points if p.threads and p.latency}), force,
                                   reporter)

        record = OptimizeRecord(
            target=profile.name, device=timer.where, remote=remote, budgets=budgets.model_dump(), pick=pick,
            reference=_reference_of(reference, rows, pick), points=rows, fallback=search.fallback,
            settings={"budget_s": budget_s, "max_drop_pp": max_drop_pp, "threads": axis, "runtimes": names,
                      "rounds": search.rounds, "eta": s.ETA, "timer": timer.where},
            elapsed_s=round(time.monotonic() - started, 2), budget_spent=search.spent(), not_tried=search.not_tried,
            fingerprint=sha256_json({"onnx": ctx.onnx_sha, "space": sorted(b.fingerprint for b in builts),
                                     "budgets": budgets.model_dump(), "timer": timer.where, "threads": axis}),
        )
        promoted = None
        if pick is not None:
            promoted = _promote(run, profile, next(p for p in points if p.id == pick))
        _commit(run, profile.name, record, promoted)
        return OptimizeResult(record, promoted)


@contextlib.contextmanager
def _one_search(run: RunDir, root: Path) -> Iterator[None]:
    """One search of a target on a run at a time: two would build, time and promote into the same
    folders (an exclusive ``flock`` on ``optimize/<target>/``; it goes with the process)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another `edgetl optimize` of {root.name} is running on {run.path}: wait for it to "
                              "finish, then run this one (it reuses what that one built and timed)") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _stderr_reporter() -> RichReporter:
    from rich.console import Console

    return RichReporter(Console(stderr=True))


def _probe_cell(profile, runtime: str):
    from edgetl.compiler import Cell

    return Cell(profile.name, runtime, "int8", None, {}, None)


def _local_usable(backend) -> str | None:
    if not backend.available():
        return f"not installed (pip install 'edgetl[{backend.extra}]')"
    if not backend.can_run_here():
        return f"cannot be timed here: it needs {backend.runs_on}; time it on the device with --remote"
    return None


def _remote_usable(backend) -> str | None:
    return None if backend.available() else f"not installed here (pip install 'edgetl[{backend.extra}]')"


def _timer(run: RunDir, remote: str | None, access, work: Path, view):
    if remote is None:
        from edgetl.optimize.timing import LocalTimer

        return LocalTimer(run, work, view)
    from edgetl.optimize.remote import RemoteTimer

    return RemoteTimer(run, remote, access, work)


def _threads_axis(threads: int | None, timer, reporter: Reporter) -> list[int]:
    """The profile's (or --threads') thread count, else 1 and every physical core of the device."""
    cores = timer.cores()
    if threads and threads > cores:  # more threads than cores time the scheduler, not the model
        reporter.warn(f"{threads} threads is more than the {cores} physical cores of {timer.where}: "
                      "its latencies include waiting for a core")
    return [threads] if threads else sorted({1, cores})


def _reference(timer, run: RunDir, root: Path, threads: list[int], force: bool, reporter: Reporter) -> dict[int, dict]:
    """PyTorch eager at each thread count, timed once per device and checkpoint (cached in reference.json)."""
    if not threads or not hasattr(timer, "reference"):
        return {}
    from edgetl.adapt.train import TrainRecord
    from edgetl.optimize.search import MAX_RECORD_BYTES

    checkpoint = run.require(TrainRecord).checkpoint
    key_of = lambda t: f"{timer.where}|{t}t|{run.manifest.get('artifacts', {}).get(checkpoint)}"  # noqa: E731
    path = root / "reference.json"
    try:
        too_big = path.stat().st_size > MAX_RECORD_BYTES
        cache = {} if force or too_big else json.loads(path.read_text(encoding="utf-8"))
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        cache = {}
    out = {}
    reporter.start("PyTorch reference", total=len(threads))
    for t in threads:
        cached = cache.get(key_of(t))
        # not timed yet, edited into no measurement, or timed while the CPU was busy: timed again
        if not is_latency(cached) or cached.get("busy"):
            reporter.step("PyTorch reference", f"timing PyTorch eager at {t} threads")
            try:
                cache[key_of(t)] = timer.reference(run, t)
            except Exception as exc:  # no torch here, or it crashed: the table goes without "vs PyTorch"
                reporter.warn(f"PyTorch reference not timed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
                continue
        out[t] = cache[key_of(t)]
        reporter.advance("PyTorch reference", f"PyTorch eager @{t}t: p50 {out[t]['p50_ms']:.3f} ms")
    reporter.done("PyTorch reference", f"{len(out)} thread counts")
    root.mkdir(parents=True, exist_ok=True)
    write_json(path, cache)
    return out


def _reference_of(by_threads: dict[int, dict], rows: list[PointResult], pick: str | None) -> dict | None:
    if not by_threads:
        return None
    picked = next((r for r in rows if r.id == pick), None)
    threads = picked.threads if picked and picked.threads in by_threads else max(by_threads)
    ref = by_threads[threads]
    return {"p50_ms": ref["p50_ms"], "p90_ms": ref["p90_ms"], "threads": threads,
            "by_threads": {str(t): {"p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"]} for t, r in by_threads.items()}}


def _promote(run: RunDir, profile, point):
    """The pick's files to ``compiled/<target>/optimized/`` and its entry to ``compiled["<target>/optimized"]``."""
    from edgetl.compiler import entry_for
    from edgetl.optimize.search import copied, copy_files

    built = point.built
    dest = run.path / "compiled" / profile.name / SLOT
    with atomic_dir(dest) as tmp:
        path, files = copy_files(built, run, tmp)
    move = lambda p: dest / p.relative_to(tmp)  # noqa: E731
    data, cand = built.data, built.candidate
    compiled = Compiled(cand.runtime, cand.variant.precision, move(path), [move(f) for f in files],
                        dict(data.get("options") or {}), estimate_with=copied(built, run, data.get("estimate_with"), dest))
    cell = cand.cell(profile.name, dict(profile.options))
    return entry_for(run, cell, compiled, dest, data["accuracy"], data["compile_s"], built.fingerprint,
                     slot=SLOT, threads=point.threads, variant=cand.label)


def _commit(run: RunDir, target: str, record: OptimizeRecord, promoted) -> None:
    """The record and the pick it names (or, without a pick, no pick: an earlier search's would be
    bundled as if this one had confirmed it) in one locked manifest write."""
    from edgetl.compiler import entry_hashes, put_entry

    folder = run.path / "compiled" / target / SLOT
    hashes = entry_hashes(run, promoted) if promoted is not None else {}
    with run.editing() as manifest:
        put_entry(manifest, f"{target}/{SLOT}", promoted, hashes, folder=run.rel(folder))
        manifest.setdefault(OptimizeRecord.SECTION, {})[target] = record.dump()
    if promoted is None and folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)  # after the manifest no longer names it


__all__ = ["DEFAULT_BUDGET_S", "SLOT", "OptimizeRecord", "OptimizeResult", "PointResult", "optimize", "parse_budget"]


