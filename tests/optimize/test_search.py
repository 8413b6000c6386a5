"""The search's decisions, checked on the numbers it measured (never on wall-clock thresholds)."""

from __future__ import annotations

import json
import math

import pytest

from edgetl.compiler import CompiledEntry
from edgetl.optimize import optimize
from edgetl.optimize.record import OptimizeRecord
from edgetl.stages import SilentReporter
from tests.optimize.conftest import SEARCH


def _round_p50(run, row, round_no: int) -> float:
    """A point's p50 in one round, from its candidate cache."""
    data = json.loads((run.path / "optimize" / "host-cpu" / row.artifact / "candidate.json").read_text())
    return next(t["p50_ms"] for k, t in data["timings"].items() if k.endswith(f"|{row.threads}t|r{round_no}")
                or k.endswith(f"|{row.threads}t|r{round_no}f"))


def test_the_pick_is_the_fastest_point_that_meets_every_budget(searched):
    run, result = searched
    record = run.entries(OptimizeRecord)["host-cpu"]
    assert record.pick == result.record.pick is not None
    finalists = [r for r in record.points if r.latency and r.latency["final"]]
    meeting = [r for r in finalists if r.meets]
    pick = record.point(record.pick)
    assert pick.status == "picked" and pick in meeting
    assert pick.latency["p50_ms"] == min(r.latency["p50_ms"] for r in meeting)
    assert pick.gates["status"] != "FAIL" and pick.accuracy["drop_pp"] <= 50
    assert all(r.why for r in record.points if r.status != "picked")  # every runner-up says why it lost
    assert {r.runtime for r in record.points} == {"onnxruntime", "openvino"} and {r.threads for r in record.points} == {1}
    assert record.reference["threads"] == 1 and record.reference["p50_ms"] > 0  # PyTorch eager, same threads


def test_successive_halving_drops_the_slowest_third_after_round_1(searched):
    run, _ = searched
    record = run.entries(OptimizeRecord)["host-cpu"]
    pruned = [r for r in record.points if r.status == "pruned"]
    kept = [r for r in record.points if r.latency and r.latency["final"]]
    within = [r for r in record.points if r.accuracy and r.accuracy["drop_pp"] <= 50]
    assert len(within) == len(record.points) > 2  # every point meets a 50 pp budget: more than halving keeps
    first = [r for r in pruned if r.latency["round"] == 1]
    survived = [r for r in record.points if r not in first]
    assert len(survived) == max(2, math.ceil(len(within) / 3))  # halving keeps the fastest third, at least 2
    assert len(kept) == 2 and len(pruned) == len(within) - 2
    assert first and all("pruned after round 1" in r.why for r in first)
    assert min(_round_p50(run, r, 1) for r in first) >= max(_round_p50(run, r, 1) for r in survived)


def test_the_pick_is_promoted_to_an_ordinary_compiled_entry(searched):
    run, _ = searched
    record = run.entries(OptimizeRecord)["host-cpu"]
    pick = record.point(record.pick)
    entry = run.entries(CompiledEntry)["host-cpu/optimized"]
    assert (entry.slot, entry.threads, entry.runtime, entry.precision) == ("optimized", 1, pick.runtime, pick.precision)
    assert entry.fingerprint.startswith(pick.artifact) and entry.dir == "compiled/host-cpu/optimized"
    for f in entry.files:
        run.verify(f)  # hashed in the manifest's artifacts like any compiled file


def _mtimes(run) -> dict[str, int]:
    root = run.path / "optimize" / "host-cpu"
    return {str(f.relative_to(root)): f.stat().st_mtime_ns for f in root.glob("*/artifact/**/*") if f.is_file()}


def test_a_rerun_is_served_from_the_cache_a_corrupt_candidate_is_rebuilt_and_force_rebuilds(copy_searched):
    run = copy_searched()
    before = _mtimes(run)
    pick = run.entries(OptimizeRecord)["host-cpu"].pick
    assert optimize(run.path, "host-cpu", **SEARCH).record.pick == pick
    assert _mtimes(run) == before  # nothing rebuilt

    model = next(f for f in (run.path / "optimize" / "host-cpu").glob("*/artifact/*.onnx"))
    model.write_bytes(model.read_bytes() + b"tampered")
    optimize(run.path, "host-cpu", **SEARCH)
    after = _mtimes(run)
    changed = {k for k in before if after.get(k) != before[k]}
    assert changed and all(k.startswith(model.parent.parent.name + "/") for k in changed)  # that candidate only
    assert not model.read_bytes().endswith(b"tampered")

    other = next(d for d in (run.path / "optimize" / "host-cpu").glob("*/candidate.json") if d.parent != model.parent.parent)
    other.write_text("{not json")  # a half-written or edited cache record
    optimize(run.path, "host-cpu", **SEARCH)
    again = _mtimes(run)
    assert {k for k in after if again[k] != after[k]} == {k for k in after if k.startswith(other.parent.name + "/")}
    assert json.loads(other.read_text())["fingerprint"].startswith(other.parent.name)
    after = again

    optimize(run.path, "host-cpu", **SEARCH, force=True)
    forced = _mtimes(run)
    assert all(forced[k] != after[k] for k in after)


class _Interrupt(SilentReporter):
    """Ctrl-C as soon as the search reaches ``when`` (a progress message's start)."""

    def __init__(self, when: str):
        self.when = when

    def step(self, stage: str, message: str) -> None:
        if message.startswith(self.when):
            raise KeyboardInterrupt


@pytest.mark.parametrize("when, force", [("timing", False), ("host-cpu/int8: accuracy", True)])
def test_an_interrupted_search_keeps_the_earlier_record_and_pick(copy_searched, when, force):
    run = copy_searched()
    manifest = run.manifest
    with pytest.raises(KeyboardInterrupt):
        optimize(run.path, "host-cpu", **{**SEARCH, "progress": True}, force=force, reporter=_Interrupt(when))
    assert run.manifest == manifest
    leftovers = [p.name for d in (run.path / "compiled", run.path / "optimize" / "host-cpu") for p in d.rglob(".*")]
    assert leftovers == []
    rerun = optimize(run.path, "host-cpu", **SEARCH).record  # what was built before the interruption is reused
    if not force:  # nothing was rebuilt or retimed: the same measurements make the same decision
        assert rerun.pick == manifest["optimize"]["host-cpu"]["pick"]
    assert rerun.pick is not None


@pytest.fixture
def clipped_profile(tmp_path):
    """host-cpu with a recipe that clips activations at their median: every int8 variant of the tiny
    model loses accuracy, so the search has something to recover (0 pp budget: fp32 meets it)."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "clipped.toml").write_text('method = "percentile"\npercentile = 50.1\nsamples = 30\n')
    (folder / "host-cpu.toml").write_text(f'runtime = "onnxruntime"\ncalibration = "{folder / "clipped.toml"}"\n'
                                          "[budgets]\nmax_accuracy_drop_pp = 0\n")
    return folder / "host-cpu.toml"


def test_a_point_over_the_memory_budget_takes_no_finalist_place(copy_searched, tmp_path):
    # peak memory is read in every round; a point over its budget after screening never meets it
    profile = tmp_path / "host-cpu.toml"
    profile.write_text('runtime = "onnxruntime"\n[budgets]\nmax_memory_mb = 0.001\n')
    record = optimize(copy_searched().path, str(profile), runtimes="onnxruntime", threads=1, progress=False).record
    timed = [r for r in record.points if r.latency]
    assert timed and all(r.latency["memory_mb"] > 0.001 for r in timed)
    assert record.pick is None and all(r.latency["round"] == 1 for r in timed)
    assert all("memory" in r.why for r in timed)


def test_no_int8_point_within_the_budget_tries_other_calibrations(copy_searched, clipped_profile):
    run = copy_searched()
    record = optimize(run.path, str(clipped_profile), runtimes="onnxruntime", threads=1, progress=False).record
    int8 = [r for r in record.points if r.precision == "int8"]
    planted = [r for r in int8 if "method=" not in r.recipe and "samples=" not in r.recipe]
    assert planted and all(r.accuracy["drop_pp"] > 0 for r in planted)  # what the clipped recipe is for
    retried = [r for r in int8 if "method=" in r.recipe]
    assert {r.recipe.rsplit("method=", 1)[1] for r in retried} == {"minmax", "entropy"}
    fastest = sorted(planted, key=lambda r: r.latency["p50_ms"])[:2]  # recovery starts from the fastest failing
    assert {r.variant.rsplit(" ", 1)[0] for r in retried} == {r.variant for r in fastest}
    more = [r for r in int8 if "samples=" in r.recipe]  # and calibrates the fastest on 3x the samples
    assert [r.recipe.rsplit("samples=", 1)[1] for r in more] == ["90"] and more[0].variant.startswith(fastest[0].variant)
    assert all(r.latency for r in retried + more)  # timed like every other point
    if all(r.accuracy["drop_pp"] > 0 for r in retried + more):  # from the fastest structure's best calibration
        same = [r for r in int8 if r.variant.startswith(fastest[0].variant) and r.runtime == fastest[0].runtime]
        best = min(same, key=lambda r: r.accuracy["drop_pp"])
        assert record.fallback is not None and record.fallback["from"] == best.artifact


def test_the_fallback_keeps_the_most_sensitive_layers_float_and_times_the_result(copy_searched, clipped_profile,
                                                                                 tmp_path):
    import time

    from edgetl.compiler import _Context
    from edgetl.config import load_target
    from edgetl.data.arrays import DataView
    from edgetl.export.onnx import export_run
    from edgetl.optimize.search import Search, with_max_drop
    from edgetl.optimize.space import candidates
    from edgetl.optimize.timing import LocalTimer

    pytest.importorskip("edgetl.optimize.fallback")
    run = copy_searched()
    profile = load_target(clipped_profile)
    view = DataView(run)
    ctx = _Context(run, export_run(run, view=view), view)
    search = Search(ctx, profile.name, {}, run.path / "optimize" / profile.name, LocalTimer(run, tmp_path / "work"),
                    with_max_drop(profile.budgets, 0.0), lambda c: [1], force=False,
                    deadline=time.monotonic() + 600, reporter=SilentReporter())
    failing = search.build(next(c for c in candidates(profile, ["onnxruntime"], lambda r: {})
                                if c.variant.precision == "int8"))
    assert failing.data["accuracy"]["drop_pp"] > 0
    recovered = search._fallback(failing)
    fallback = search.fallback
    assert fallback["from"] == failing.id and fallback["ranked"] and fallback["tried"]
    assert fallback["met"] == bool(recovered)
    if recovered:
        point = recovered[0]
        ranked = [node for node, _, _ in fallback["ranked"]]
        assert list(point.built.candidate.keep_float) == fallback["kept"] == ranked[:len(fallback["kept"])]
        assert point.built.data["accuracy"]["drop_pp"] <= 0 and point.latency["round"] == 1


def test_a_spent_time_budget_builds_nothing_new_but_still_uses_the_cache(copy_searched, copy_run):
    cached = optimize(copy_searched().path, "host-cpu", **SEARCH, budget_s=0.001).record
    assert cached.budget_spent and cached.pick is not None  # every candidate came from the cache
    assert not [n for n in cached.not_tried if "not built" in n]

    run = copy_run("fresh")
    record = optimize(run.path, "host-cpu", **SEARCH, budget_s=0.001).record
    assert record.pick is None and record.budget_spent
    assert {r.status for r in record.points} == {"skipped"} and all("time budget" in r.why for r in record.points)
    assert len([n for n in record.not_tried if "not built, the time budget was spent" in n]) == len(record.points)
    assert "host-cpu/optimized" not in run.entries(CompiledEntry)


def _candidate(run, runtime: str, precision: str):
    for path in (run.path / "optimize" / "host-cpu").glob("*/candidate.json"):
        data = json.loads(path.read_text())
        if (data["runtime"], data["precision"]) == (runtime, precision):
            return path, data
    raise AssertionError(f"no cached {runtime} {precision} candidate")


def _fake_p50(data: dict, p50: float) -> dict:
    data["timings"] = {k: {**t, "p50_ms": p50} for k, t in data["timings"].items()}
    return data


def _others_files(run, data: dict) -> dict:
    """This candidate's record naming the files of another candidate of its runtime (same sha256s),
    timed impossibly fast so it would be picked."""
    other = _candidate(run, "onnxruntime", "int8")[1]
    timings = {k: {**t, "p50_ms": 1e-3, "p90_ms": 1e-3, "p99_ms": 1e-3, "mean_ms": 1e-3} for k, t in data["timings"].items()}
    return {**other, "fingerprint": data["fingerprint"], "timings": timings}


@pytest.mark.parametrize("edit", [
    pytest.param(_others_files, id="another-candidates-files"),
    pytest.param(lambda run, d: _fake_p50(d, -5.0), id="negative-p50"),
    pytest.param(lambda run, d: _fake_p50(d, math.nan), id="nan-p50"),
    pytest.param(lambda run, d: {**d, "accuracy": {**d["accuracy"], "drop_pp": math.nan}}, id="nan-drop"),
])
def test_a_cached_candidate_with_foreign_files_or_impossible_numbers_is_rebuilt_not_picked(copy_searched, edit):
    run = copy_searched()
    path, data = _candidate(run, "onnxruntime", "fp32")
    path.write_text(json.dumps(edit(run, data)))  # json writes NaN, and reads it back
    record = optimize(run.path, "host-cpu", **SEARCH).record

    rebuilt = json.loads(path.read_text())
    assert all(f.startswith(f"optimize/host-cpu/{path.parent.name}/artifact/") for f in rebuilt["files"])
    assert math.isfinite(rebuilt["accuracy"]["drop_pp"])
    for row in record.points:
        assert row.latency is None or 0 < row.latency["p50_ms"] < math.inf
    pick = record.point(record.pick)
    entry = run.entries(CompiledEntry)["host-cpu/optimized"]
    assert entry.fingerprint.startswith(pick.artifact) and entry.runtime == pick.runtime


@pytest.mark.parametrize("p50", ["fast", math.nan, -1.0], ids=["text", "nan", "negative"])
def test_a_faked_pytorch_reference_is_timed_again_not_trusted(copy_searched, p50):
    run = copy_searched()
    path = run.path / "optimize" / "host-cpu" / "reference.json"
    path.write_text(json.dumps({k: {**v, "p50_ms": p50} for k, v in json.loads(path.read_text()).items()}))
    record = optimize(run.path, "host-cpu", **SEARCH).record
    assert 0 < record.reference["p50_ms"] < math.inf
    assert all(0 < v["p50_ms"] < math.inf for v in json.loads(path.read_text()).values())


def test_a_pytorch_reference_timed_on_a_busy_machine_is_timed_again(copy_searched):
    run = copy_searched()
    path = run.path / "optimize" / "host-cpu" / "reference.json"
    path.write_text(json.dumps({k: {**v, "p50_ms": 12345.0, "busy": True} for k, v in json.loads(path.read_text()).items()}))
    record = optimize(run.path, "host-cpu", **SEARCH).record
    assert record.reference["p50_ms"] != 12345.0
    assert all(v["p50_ms"] != 12345.0 for v in json.loads(path.read_text()).values())


def test_two_variants_that_build_the_same_artifact_are_one_point(searched):
    # host-cpu's recipe (percentile) already sets bias_correction = "accurate": OpenVINO's "nncf
    # accurate-bc" variant builds exactly "nncf performance", which must be timed and listed once
    run, _ = searched
    record = run.entries(OptimizeRecord)["host-cpu"]
    assert len({r.id for r in record.points}) == len(record.points)
    assert [r.variant for r in record.points if r.variant == "int8 nncf performance"]
    assert not [r for r in record.points if r.variant == "int8 nncf accurate-bc"]
    assert any(n.startswith("openvino int8 nncf accurate-bc: the same artifact as openvino int8 nncf performance [")
               for n in record.not_tried)


def test_a_drop_whose_interval_straddles_the_budget_loses_on_its_point_estimate_and_says_so():
    from edgetl.config import Budgets
    from edgetl.optimize.search import accuracy_met

    accuracy = {"n": 128, "top1": 0.8047, "fp32_top1": 0.8281, "drop_pp": 2.34, "drop_ci_pp": [-2.9, 7.73],
                "agreement": 0.9}
    met, why = accuracy_met(Budgets(max_accuracy_drop_pp=1.0), accuracy)
    assert not met
    assert why == ("accuracy_drop +2.34 pp > budget 1 pp on its point estimate (n=128: 95% CI -2.90..+7.73 "
                   "straddles the budget; optimize decides on the point estimate)")
    assert accuracy_met(Budgets(max_accuracy_drop_pp=3.0), accuracy) == (True, None)  # the point estimate meets it


class _Warnings(SilentReporter):
    def __init__(self):
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def test_threads_above_the_cores_are_timed_with_a_warning(copy_run, tmp_path):
    from edgetl.optimize import _threads_axis
    from edgetl.optimize.timing import LocalTimer

    timer = LocalTimer(copy_run(), tmp_path / "work")
    cores = timer.cores()
    quiet, loud = _Warnings(), _Warnings()
    assert _threads_axis(cores, timer, quiet) == [cores] and quiet.warnings == []
    assert _threads_axis(cores + 1, timer, loud) == [cores + 1]
    assert loud.warnings == [f"{cores + 1} threads is more than the {cores} physical cores of {timer.where}: "
                             "its latencies include waiting for a core"]
    assert _threads_axis(None, timer, quiet) == sorted({1, cores}) and quiet.warnings == []
