"""A fourth runtime, added the way the design promises: one backend file, one profile and one
conformance subclass (tests/backends/plugin/, tests/backends/test_ortwrap.py), registered through
an entry point of its own distribution. Compile, bench, bundle, verify and predict run on it with
nothing in edgetl edited."""

from __future__ import annotations

import json
import shutil

from click.testing import CliRunner

from edgetl.backends import runtimes
from edgetl.bundle.format import inspect_archive
from edgetl.cli import cli
from edgetl.data.layout import IMAGE_SUFFIXES
from edgetl.rundir import RunDir
from tests.backends.plugin import PROFILE, install, registered


def _ok(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_fourth_runtime_runs_the_whole_flow(copy_run, digits_dir, tmp_path, monkeypatch):
    run = copy_run()
    site = install(tmp_path / "site")
    (tmp_path / "work" / "targets").mkdir(parents=True)
    shutil.copyfile(PROFILE, tmp_path / "work" / "targets" / PROFILE.name)
    monkeypatch.chdir(tmp_path / "work")  # a user's own ./targets/ holds the profile
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no trusted keys: unsigned is fine
    monkeypatch.delenv("EDGETL_TRUSTED_KEYS", raising=False)
    target = PROFILE.stem
    with registered(site):
        assert "ortwrap" in runtimes()
        assert target in _ok("targets")

        _ok("compile", str(run.path), "--target", target)
        entry = RunDir.open(run.path).manifest["compiled"][f"{target}/int8"]
        assert entry["runtime"] == "ortwrap" and entry["versions"].keys() == {"ortwrap"}
        assert entry["options"]["activations"] == "int8"  # the profile's aarch64 CPU, not this one

        _ok("bench", str(run.path), "--target", target, "--iterations", "20", "--threads", "1", "--device", "ci")
        bench = RunDir.open(run.path).manifest["bench"]["ci"]["results"][f"{target}/int8"]
        assert bench["status"] == "ok", bench

        _ok("bundle", str(run.path), "--target", target)
        bundle = run.path / "bundles" / f"{target}-int8.tar.gz"
        runtime = inspect_archive(bundle)["runtime"]
        # the backend's facts, not the runtime's name: its pip extra and its minimum versions
        assert runtime["name"] == "ortwrap" and runtime["extra"] == "onnxruntime"
        assert runtime["min_version"] == {"ortwrap": "1.16"}

        assert json.loads(_ok("verify", str(bundle), "--json"))["ok"]
        image = next(p for p in sorted(digits_dir.rglob("*")) if p.suffix in IMAGE_SUFFIXES)
        assert image.name in _ok("predict", str(bundle), str(image))

    # Uninstalled, the bundle names a runtime edgetl does not know: one line, exit 2.
    result = CliRunner().invoke(cli, ["verify", str(bundle)])
    assert result.exit_code == 2 and "runtime 'ortwrap' is not one of onnxruntime" in result.output
    assert "needs the package that registers it" in result.output
    assert "Traceback" not in result.output
