"""``optimize``'s RemoteTimer on the loopback sshd: a candidate bundled, shipped and timed on the
"device", and a device whose bench answer lies gets one line and no timing (so never a pick)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from edgetl.bundle.format import inspect_archive
from edgetl.bundle.remote import Access
from edgetl.bundle.runner import bench
from edgetl.errors import RemoteError
from edgetl.optimize.remote import RemoteTimer
from edgetl.rundir import RunDir
from tests.bundle.test_hostile_device import _set, fake_edgetl, with_changes

EDGETL = str(Path(sys.executable).with_name("edgetl"))  # this venv's, as on a device with a venv


def candidate(run: RunDir) -> tuple[Path, dict]:
    """A candidate as the search leaves it: optimize/<target>/<id>/ with candidate.json (its files' sha256)."""
    folder = run.path / "optimize" / "host-cpu" / "0123456789ab"
    source = run.compiled_entry("openvino/fp32")
    shutil.copytree(run.path / source.dir, folder)
    moved = lambda rel: f"optimize/host-cpu/0123456789ab/{rel.removeprefix(source.dir + '/')}"  # noqa: E731
    files = {moved(f): run.manifest["artifacts"][f] for f in source.files}
    (folder / "candidate.json").write_text(json.dumps({"path": moved(source.path), "files": files}))
    entry = {"runtime": "openvino", "precision": "fp32", "path": moved(source.path), "files": list(files),
             "options": {}, "variant": "fp32 openvino"}
    return folder, entry


@pytest.fixture
def run(optimized_run, tmp_path) -> RunDir:
    shutil.copytree(optimized_run.path, tmp_path / "runs" / "tiny")
    return RunDir.open(tmp_path / "runs" / "tiny")


def test_a_candidate_is_timed_on_the_device(sshd, run, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_ALLOW_UNSIGNED", "1")
    before = run.manifest
    folder, entry = candidate(run)
    timer = RemoteTimer(run, sshd.url(str(tmp_path / "device")), Access(sshd.options, EDGETL), tmp_path / "work",
                        device_name="loop-pi")
    assert 1 <= timer.cores() <= 1024
    latency = timer.time(run, folder, entry, 1, None, final=False)
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] and latency["iterations"] == 50
    assert timer.system["name"] == "loop-pi" and timer.system["threads"] == 1
    # the candidate went to its own folder on the device, as an optimized bundle of host-cpu on OpenVINO
    current = tmp_path / "device" / "tiny-optimize" / "current"
    manifest = json.loads((current / "manifest.json").read_text())
    assert manifest["slot"] == "optimized" and manifest["runtime"]["name"] == "openvino"
    assert manifest["target"]["name"] == "host-cpu" and manifest["target"]["runtime"] == "openvino"
    assert run.manifest == before  # a candidate's bundle is not recorded in the run
    # the same bundle, already the device's current, is not shipped again: shipping now would fail on
    # the planted link at .incoming, and the timing still comes back
    incoming = tmp_path / "device" / "tiny-optimize" / ".incoming"
    shutil.rmtree(incoming)
    incoming.symlink_to(tmp_path)
    again = timer.time(run, folder, entry, 2, 0.2, final=True)
    assert again["p50_ms"] > 0 and timer.system["threads"] == 2


def test_a_tampered_candidate_is_not_bundled(sshd, run, tmp_path):
    folder, entry = candidate(run)
    (run.path / entry["path"]).write_bytes(b"not the model")
    timer = RemoteTimer(run, sshd.url(str(tmp_path / "device")), Access(sshd.options, EDGETL), tmp_path / "work")
    with pytest.raises(Exception, match="no longer matches the sha256 it was built with"):
        timer.time(run, folder, entry, 1, None, final=False)
    assert not (tmp_path / "device").exists()


@pytest.fixture(scope="module")
def honest(optimized_run, tmp_path_factory) -> dict:
    """What a real device prints for `edgetl bench CANDIDATE --json --device loop --threads 1`."""
    from edgetl.bundle.create import candidate_bundle

    work = tmp_path_factory.mktemp("honest")
    shutil.copytree(optimized_run.path, work / "tiny")
    run = RunDir.open(work / "tiny")
    folder, entry = candidate(run)
    made = candidate_bundle(run, {**entry, "target": "host-cpu", "slot": "optimized"}, work / "c.tar.gz",
                            hashes=json.loads((folder / "candidate.json").read_text())["files"], name="tiny-optimize")
    assert inspect_archive(made)["name"] == "tiny-optimize"
    return bench(made, iterations=5, threads=1, device_name="loop")


LIES = {
    "NaN p50": (_set("latency.0.p50_ms", float("nan")), "malformed bench result"),
    "negative p50": (_set("latency.0.p50_ms", -1.0), "cannot be measured ones"),
    "huge p99": (_set("latency.0.p99_ms", 1e300), "cannot be measured ones"),
    "p90 below p50": (_set("latency.0.p90_ms", 0.0001), "cannot be measured ones"),
    "zero runs": (_set("latency.0.iterations", 0), "not a positive count"),
    "other threads": (_set("settings.threads", 64), "timed at 64 threads, not 1"),
    "wrong key": (_set("key", "host-cpu/int8"), "not 'host-cpu/optimized': refusing to store it"),
    "no batch 1": (_set("latency.0.batch", 8), "no batch-1 latency"),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_lying_device_gives_one_line_and_no_timing(sshd, run, tmp_path, honest, lie, monkeypatch):
    monkeypatch.setenv("EDGETL_ALLOW_UNSIGNED", "1")
    change, message = LIES[lie]
    folder, entry = candidate(run)
    edgetl = fake_edgetl(tmp_path, with_changes(honest, change))
    timer = RemoteTimer(run, sshd.url(str(tmp_path / "device")), Access(sshd.options, str(edgetl)), tmp_path / "work")
    with pytest.raises(RemoteError, match=message) as caught:
        timer.time(run, folder, entry, 1, None, final=False)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("answer, message", [
    ("garbage\x1b[2J", "did not print a result document"),
    ("[]", "with schema None"),
    ("", "did not print a result document"),
])
def test_garbage_from_the_device_gives_one_line(sshd, run, tmp_path, answer, message, monkeypatch):
    monkeypatch.setenv("EDGETL_ALLOW_UNSIGNED", "1")
    folder, entry = candidate(run)
    edgetl = fake_edgetl(tmp_path, answer)
    timer = RemoteTimer(run, sshd.url(str(tmp_path / "device")), Access(sshd.options, str(edgetl)), tmp_path / "work")
    with pytest.raises(RemoteError, match=message) as caught:
        timer.time(run, folder, entry, 1, None, final=False)
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)


def test_a_device_core_count_that_is_no_number_is_refused(sshd, run, tmp_path):
    fake = tmp_path / "venv" / "bin"
    fake.mkdir(parents=True)
    (fake / "python").write_text("#!/bin/sh\necho 'many'\n")
    (fake / "python").chmod(0o755)
    timer = RemoteTimer(run, sshd.url(str(tmp_path / "device")), Access(sshd.options, str(fake / "edgetl")))
    with pytest.raises(RemoteError, match="answered 'many' for its core count"):
        timer.cores()


def test_a_device_that_trusts_keys_times_only_signed_candidates(sshd, run, tmp_path, monkeypatch):
    """The device's trusted keys apply to candidates as to any bundle: unsigned is refused there (one
    line, nothing timed), signed with Access.sign is timed."""
    from edgetl.bundle import signing

    monkeypatch.delenv("EDGETL_ALLOW_UNSIGNED", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    private, public = signing.new_key_pair(tmp_path / "keys", "release")
    trusted = tmp_path / "device-trusts"
    trusted.mkdir()
    shutil.copyfile(public, trusted / "release.pub")
    device_edgetl = tmp_path / "device-bin" / "edgetl"  # the device's edgetl, with its own trusted keys
    device_edgetl.parent.mkdir()
    device_edgetl.write_text(f'#!/bin/sh\nEDGETL_TRUSTED_KEYS={trusted} exec {EDGETL} "$@"\n')
    device_edgetl.chmod(0o755)
    folder, entry = candidate(run)
    url = sshd.url(str(tmp_path / "device"))

    unsigned = RemoteTimer(run, url, Access(sshd.options, str(device_edgetl)), tmp_path / "work-unsigned")
    with pytest.raises(RemoteError, match="not signed and this machine trusts signed bundles only") as caught:
        unsigned.time(run, folder, entry, 1, None, final=False)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "device" / "tiny-optimize" / "current").exists()

    signed = RemoteTimer(run, url, Access(sshd.options, str(device_edgetl), sign=str(private)), tmp_path / "work-signed")
    assert signed.time(run, folder, entry, 1, None, final=False)["p50_ms"] > 0


def test_optimize_with_remote_times_every_point_on_the_device_and_promotes_the_pick(sshd, run, tmp_path,
                                                                                   monkeypatch):
    """`edgetl optimize RUN --target host-cpu --remote URL`: the search's timings come from the device."""
    from edgetl.bundle.create import create_bundle
    from edgetl.optimize import optimize

    monkeypatch.setenv("EDGETL_ALLOW_UNSIGNED", "1")
    url = sshd.url(str(tmp_path / "device"))
    result = optimize(run.path, "host-cpu", remote=url, access=Access(sshd.options, EDGETL), runtimes="onnxruntime",
                      threads=1, max_drop_pp=50.0, progress=False)
    record = result.record
    assert record.remote == url and record.device == url and record.pick is not None
    timed = [p for p in record.points if p.latency]
    assert timed and all(p.threads == 1 and p.latency["p50_ms"] > 0 for p in timed)
    # the device holds the candidates in their own folder; the pick is bundled with its runtime and threads
    assert (tmp_path / "device" / "tiny-optimize" / "current" / "manifest.json").is_file()
    made = create_bundle(run.path, "host-cpu", "optimized")
    assert inspect_archive(made)["target"]["threads"] == 1
