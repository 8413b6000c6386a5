"""One stage shape: results decide pass/fail, one reporter serves every stage, deploy skips by one rule."""

from __future__ import annotations

import pytest

from edgetl.errors import CompileError, GatesFailed
from edgetl.stages import SilentReporter, StageResult

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


class Recorder(SilentReporter):
    """A notebook's own reporter: keeps every event instead of printing it."""

    def __init__(self):
        self.events: list[tuple] = []

    def start(self, stage, total=None):
        self.events.append(("start", stage, total))

    def step(self, stage, message):
        self.events.append(("step", stage, message))

    def advance(self, stage, message):
        self.events.append(("advance", stage, message))

    def warn(self, message):
        self.events.append(("warn", message))

    def done(self, stage, note):
        self.events.append(("done", stage, note))

    def table(self, table):
        self.events.append(("table", table))

    def of(self, kind: str) -> list[tuple]:
        return [e[1:] for e in self.events if e[0] == kind]


@pytest.fixture
def writable_run(copy_run):
    return copy_run()


def test_the_silent_reporter_prints_nothing_through_compile_and_bench(writable_run, capfd):
    from edgetl.bench.run import bench
    from edgetl.compiler import compile as compile_run

    rows = compile_run(writable_run.path, ["onnxruntime"], ["fp32"], reporter=SilentReporter())
    results = bench(writable_run.path, device_name="ci", threads=1, iterations=5, isolate=False,
                    reporter=SilentReporter())
    assert [r["status"] for r in rows] == ["ok"]
    assert [r["status"] for r in results.rows] == ["ok", "ok"]  # the reference, then the artifact
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_a_custom_reporter_receives_the_events_of_compile_and_bench(writable_run):
    from edgetl.bench.run import bench
    from edgetl.compiler import compile as compile_run

    seen = Recorder()
    compile_run(writable_run.path, ["onnxruntime"], ["fp32", "int8"], reporter=seen)
    assert seen.of("start") == [("compile", 2)]
    assert seen.of("advance") == [("compile", "built onnxruntime/fp32"), ("compile", "built onnxruntime/int8")]
    steps = [m for _, m in seen.of("step")]
    assert "onnxruntime/int8: calibration images" in steps
    assert "onnxruntime/fp32: accuracy on the validation split" in steps

    again = Recorder()
    compile_run(writable_run.path, ["onnxruntime"], ["fp32"], reporter=again)
    assert again.of("advance") == [("compile", "unchanged onnxruntime/fp32")]

    class Bars:
        def __init__(self):
            self.phases = []

        def callback(self, key):
            return lambda phase, done, total: self.phases.append((key, phase))

        def done_loading(self, key):
            pass

    bars = Bars()

    class Measuring(Recorder):
        def measuring(self):
            import contextlib

            return contextlib.nullcontext(bars)

    bench(writable_run.path, targets=["onnxruntime/fp32"], device_name="ci", threads=1, iterations=5, isolate=False,
          reporter=Measuring())
    assert {("onnxruntime/fp32", "batch 1"), ("onnxruntime/fp32", "accuracy")} <= set(bars.phases)


def test_a_result_decides_pass_and_fail():
    class Result(StageResult):
        error_class = CompileError
        what_failed = "could not be built"

        def __init__(self, errors, failed):
            self._errors, self._failed = errors, failed

        def errors(self):
            return self._errors

        def failed_gates(self):
            return self._failed

    Result([], []).raise_for_errors()
    Result([], []).raise_for_gates()
    with pytest.raises(CompileError, match=r"^2 artifact\(s\) could not be built: a: x \| b: y$") as err:
        Result(["a: x", "b: y"], []).raise_for_errors()
    assert err.value.exit_code == 2
    with pytest.raises(GatesFailed, match=r"^budget failed: a: p90") as err:
        Result([], ["a: p90"]).raise_for_gates()
    assert err.value.exit_code == 1


def test_deploy_is_a_loop_that_skips_every_current_stage_by_one_rule(digits_dir, tmp_path, capfd):
    from edgetl.pipeline import DeployConfig, deploy

    config = DeployConfig.model_validate({
        "data": str(digits_dir), "out": str(tmp_path / "run"), "backbone": "timm:test_efficientnet",
        "targets": ["onnxruntime"], "precisions": ["fp32"], "iterations": 5, "threads": 1,
        "train": {"pretrained": False, "image_size": 32, "epochs": 1, "head_epochs": 2},
    })
    first = Recorder()
    result = deploy(config, reporter=first)
    assert [s for s, _ in first.of("done")] == ["train", "compile", "bench", "bundle", "report", "deploy"]
    assert not any(note.startswith("skipped") for _, note in first.of("done"))
    assert set(result["bundles"]) == {"onnxruntime/fp32"}

    second = Recorder()
    again = deploy(config, reporter=second)
    for stage in ("train", "compile", "bench", "bundle"):  # skipped because their inputs hash the same
        assert again["stages"][stage]["skipped"] and not result["stages"][stage]["skipped"]
        assert again["stages"][stage]["fingerprint"] == result["stages"][stage]["fingerprint"], stage
    notes = dict(second.of("done"))
    for stage in ("train", "compile", "bench", "bundle"):
        assert notes[stage].startswith("skipped — "), (stage, notes[stage])
    assert not notes["report"].startswith("skipped")  # the report is always written
    assert [s for s, _ in second.of("start")] == ["train", "compile", "bench", "bundle", "report"]

    # A deleted bundle makes only the bundle stage (and the report) run again.
    (tmp_path / "run" / "bundles" / "onnxruntime-fp32.tar.gz").unlink()
    third = Recorder()
    deploy(config, reporter=third)
    ran = [s for s, note in third.of("done") if not note.startswith("skipped") and s != "deploy"]
    assert ran == ["bundle", "report"]
    assert (tmp_path / "run" / "bundles" / "onnxruntime-fp32.tar.gz").is_file()
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)  # every stage, training too, reported to the recorder only
    epochs = [m for s, m in first.of("step") if s == "train"]
    assert epochs and epochs[0].startswith("head epoch 1: loss "), epochs
