"""The pick of ``edgetl optimize`` as a bundle: keyed ``<target>/optimized``, carrying the pick's
runtime and threads, verified, predicted and benched with them (a hand-made pick, tests/optimized.py)."""

from __future__ import annotations

import shutil

from click.testing import CliRunner

from edgetl.bench.run import bench as bench_run
from edgetl.bundle.create import BundleRecord, choose_compiled, create_bundle, up_to_date
from edgetl.bundle.format import inspect_archive
from edgetl.bundle.runner import bench, predict, verify
from edgetl.bundle.ship import Remote, Shipper, SshUrl
from edgetl.cli import cli
from edgetl.rundir import RunDir


def _copy(run: RunDir, tmp_path) -> RunDir:
    shutil.copytree(run.path, tmp_path / "run")
    return RunDir.open(tmp_path / "run")


def test_the_optimized_bundle_carries_the_picks_runtime_and_threads(optimized_run, tmp_path, digits_dir, monkeypatch):
    monkeypatch.setenv("EDGETL_ALLOW_UNSIGNED", "1")
    run = _copy(optimized_run, tmp_path)
    made = create_bundle(run.path, "host-cpu", "optimized")
    assert made == run.path / "bundles" / "host-cpu-optimized.tar.gz"
    manifest = inspect_archive(made)  # validated as a device validates it
    assert manifest["slot"] == "optimized" and manifest["precision"] == "fp32"
    assert manifest["runtime"]["name"] == "openvino" and manifest["runtime"]["extra"] == "openvino"
    target = manifest["target"]
    assert target["name"] == "host-cpu" and target["runtime"] == "openvino" and target["threads"] == 1
    assert target["budgets"]["max_accuracy_drop_pp"] == 1.0  # the profile's budgets travel with the pick
    assert manifest["model"]["compiled"] == "host-cpu/optimized"
    record = run.entries(BundleRecord)["host-cpu/optimized"]
    assert record.slot == "optimized" and record.runtime == "openvino" and record.path == "bundles/host-cpu-optimized.tar.gz"
    assert up_to_date(run, "host-cpu", "optimized") == made

    checked = verify(made)
    assert checked["runtime"].startswith("openvino ") and checked["top1_agreement"] == 1.0
    rows = predict(made, next(digits_dir.glob("*/*.png")))
    assert rows and rows[0]["top"][0]["label"] in manifest["labels"]
    doc = bench(made, iterations=5)
    assert doc["key"] == "host-cpu/optimized" and doc["artifact"]["runtime"] == "openvino"
    assert doc["settings"]["threads"] == 1 and doc["device"]["threads"] == 1
    assert doc["gates"]["budgets"]  # the profile's budgets were applied on the device


def test_ship_installs_the_picks_runtime(optimized_run, tmp_path):
    run = _copy(optimized_run, tmp_path)
    made = create_bundle(run.path, "host-cpu", "optimized")
    shipper = Shipper(Remote(SshUrl.parse("ssh://pi@device/models"), [], 10, "edgetl"), made)
    assert shipper.extra == "openvino" and shipper.slot == "optimized" and shipper.target == "host-cpu"


def test_the_pick_and_the_profiles_artifact_are_separate_bundles(optimized_run, tmp_path):
    """Promoting a pick leaves the other artifacts' bundles as they were, keyed by precision."""
    run = _copy(optimized_run, tmp_path)
    plain = create_bundle(run.path, "onnxruntime", "int8")
    assert plain.name == "onnxruntime-int8.tar.gz" and inspect_archive(plain)["slot"] is None
    key, entry = choose_compiled(run, "host-cpu")  # the target's only artifact is its pick
    assert key == "host-cpu/optimized" and entry["threads"] == 1 and entry["variant"] == "openvino fp32"


def test_cli_bundle_optimized(optimized_run, tmp_path):
    run = _copy(optimized_run, tmp_path)
    result = CliRunner().invoke(cli, ["bundle", str(run.path), "--target", "host-cpu", "--optimized"])
    assert result.exit_code == 0, result.output
    assert "host-cpu-optimized.tar.gz" in result.output
    # the variant is the candidate's whole label: the runtime is named once, the threads in words
    assert "(optimize's pick: openvino fp32 at 1 thread, " in result.output and "openvino openvino" not in result.output


def _bundles(run) -> list[str]:
    """The run's bundle files (the shared fixture may already hold some)."""
    return sorted(p.name for p in (run.path / "bundles").glob("*")) if (run.path / "bundles").is_dir() else []


def test_cli_bundle_optimized_without_a_pick_says_run_optimize(bundle_run, tmp_path):
    run = _copy(bundle_run, tmp_path)
    before = _bundles(run)
    result = CliRunner().invoke(cli, ["bundle", str(run.path), "--target", "onnxruntime", "--optimized"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: onnxruntime has no optimized artifact in {run.path}: run `edgetl optimize {run.path} --target "
        "onnxruntime` first"]
    assert _bundles(run) == before  # nothing written


def test_local_bench_of_the_pick(optimized_run, tmp_path):
    """`edgetl bench RUN --target host-cpu/optimized`: its own result file and manifest row."""
    run = _copy(optimized_run, tmp_path)
    results = bench_run(run.path, "host-cpu/optimized", device_name="here", iterations=5, isolate=False)
    rows = [r for r in results.rows if not r.get("reference")]
    assert [r["key"] for r in rows] == ["host-cpu/optimized"] and rows[0]["artifact"]["runtime"] == "openvino"
    assert (run.path / "bench" / "host-cpu" / "optimized@here.json").is_file()
    summary = run.manifest["bench"]["here"]["results"]["host-cpu/optimized"]
    assert summary["runtime"] == "openvino" and summary["status"] == "ok"


def test_remote_bench_of_the_pick_is_stored_under_its_key(sshd, optimized_run, tmp_path, monkeypatch):
    """`edgetl bench RUN --remote URL --target host-cpu/optimized`: the device benches the pick at its
    threads, the workstation stores it as bench/host-cpu/optimized@<device>.json."""
    import sys
    from pathlib import Path

    from edgetl.bundle.remote import Access, BenchSettings, remote_bench

    monkeypatch.setenv("EDGETL_ALLOW_UNSIGNED", "1")
    run = _copy(optimized_run, tmp_path)
    edgetl = str(Path(sys.executable).with_name("edgetl"))
    doc = remote_bench(run.path, sshd.url(str(tmp_path / "device")), "host-cpu", precision="optimized",
                       device_name="loop-pi", settings=BenchSettings(iterations=5), access=Access(sshd.options, edgetl))
    assert doc["key"] == "host-cpu/optimized" and doc["settings"]["threads"] == 1
    assert doc["file"] == "bench/host-cpu/optimized@loop-pi.json" and (run.path / doc["file"]).is_file()
    assert run.manifest["bench"]["loop-pi"]["results"]["host-cpu/optimized"]["runtime"] == "openvino"


def test_cli_bundle_optimized_with_a_precision_is_one_line(optimized_run, tmp_path):
    run = _copy(optimized_run, tmp_path)
    before = _bundles(run)
    result = CliRunner().invoke(cli, ["bundle", str(run.path), "--target", "host-cpu", "--optimized",
                                      "--precision", "int8"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --optimized packages optimize's pick, whatever its precision: leave out --precision"]
    assert _bundles(run) == before  # nothing written


def test_a_picks_target_section_keeps_the_device_cpu_and_validates_as_a_profile():
    """Another runtime than the profile's: the CPU options it shares stay (int8 built for the device's
    CPU), the pick's runtime, precision and threads replace the profile's, and it is a valid profile."""
    from edgetl.bundle.create import _target_section
    from edgetl.config import TargetProfile, load_target

    section = _target_section({"target": "raspberry-pi-5", "runtime": "openvino", "precision": "int8",
                               "slot": "optimized", "threads": 2})
    profile = TargetProfile.model_validate(section)
    assert (profile.runtime, profile.precision, profile.threads) == ("openvino", "int8", 2)
    assert profile.options["cpu_arch"] == "aarch64" and profile.budgets == load_target("raspberry-pi-5").budgets
    # the profile's own artifacts keep the profile as it is
    assert _target_section({"target": "raspberry-pi-5", "runtime": "onnxruntime", "precision": "fp32"}) == \
        load_target("raspberry-pi-5").model_dump()
