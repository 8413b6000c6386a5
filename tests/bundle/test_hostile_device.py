"""`bench --remote` against a hostile device: the workstation decides where an answer is stored.

The "device" is the loopback sshd (see sshd.py) with a fake ``--remote-edgetl``: it says yes to
``verify`` and prints crafted text for ``bench``. Whatever it prints, nothing outside the run's
bench/ folder may change, and a refused answer leaves the run exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.bundle.runner import bench
from edgetl.cli import cli


@pytest.fixture(scope="module")
def honest_answer(bundle_file) -> dict:
    """What a real device prints for `edgetl bench BUNDLE --json --device loop`."""
    return bench(bundle_file, iterations=5, device_name="loop")


@pytest.fixture
def run(bundle_run, tmp_path) -> Path:
    dest = tmp_path / "runs" / "tiny"
    shutil.copytree(bundle_run.path, dest)
    return dest


def fake_edgetl(folder: Path, answer: str | bytes) -> Path:
    """An edgetl for the device that verifies anything and answers `bench` with ``answer``."""
    payload = folder / "answer"
    payload.write_bytes(answer.encode() if isinstance(answer, str) else answer)
    script = folder / "edgetl"
    script.write_text(f"#!{sys.executable}\nimport sys\n"
                      f"if sys.argv[1:2] == ['bench']:\n    sys.stdout.buffer.write(open({str(payload)!r}, 'rb').read())\n")
    script.chmod(0o755)
    return script


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def remote_bench_cli(sshd, run: Path, device: Path, edgetl: Path):
    args = ["bench", str(run), "--remote", sshd.url(str(device)), "--target", "onnxruntime/int8", "--device", "loop",
            "--iterations", "5", "--remote-edgetl", str(edgetl)]
    for opt in sshd.options:
        args += ["-o", opt]
    return CliRunner().invoke(cli, args)


def with_changes(doc: dict, change) -> str:
    doc = json.loads(json.dumps(doc))
    change(doc)
    return json.dumps(doc)


def _set(path: str, value):
    def change(doc):
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value

    return change


HOSTILE = {
    "key with ../": (_set("key", "../../../../escape/int8"), "answered with a result for '../../../../escape/int8'"),
    "absolute key": (_set("key", "/tmp/escape/int8"), "answered with a result for '/tmp/escape/int8'"),
    "key for another artifact": (_set("key", "onnxruntime/fp32"), "not 'onnxruntime/int8': refusing to store it"),
    "device name of the wrong type": (_set("device.name", 5), "malformed bench result (field 'device.name'"),
    "latency as text": (_set("latency.0.p50_ms", "fast"), "malformed bench result (field 'latency.0.p50_ms'"),
    "latency as a number in text": (_set("latency.0.p90_ms", "1.5"), "malformed bench result (field 'latency.0.p90_ms'"),
    "latency NaN": (_set("latency.0.p90_ms", float("nan")), "malformed bench result (field 'latency.0.p90_ms'"),
    "a huge name": (_set("device.cpu.model", "x" * 100_000), "malformed bench result (field 'device.cpu.model'"),
    "no gates": (lambda doc: doc.pop("gates"), "malformed bench result (field 'gates'"),
    "another schema": (_set("schema", "evil/1"), "bench result with schema 'evil/1'"),
    # what the manifest's summary and the report read besides: typed like the rest, never trusted as is
    "accuracy as text": (_set("accuracy", "perfect"), "malformed bench result (field 'accuracy'"),
    "top-1 as text": (_set("accuracy", {"source": "d", "n": 1, "top1": "99%"}), "malformed bench result (field 'accuracy.top1'"),
    "drop NaN": (_set("accuracy", {"source": "d", "n": 1, "top1": 0.9, "drop_pp": float("nan")}), "malformed bench result (field 'accuracy.drop_pp'"),
    "changed class without index": (_set("accuracy", {"source": "d", "n": 1, "per_class_changed": [{"top1": 1}]}),
                                    "malformed bench result (field 'accuracy.per_class_changed.0.index'"),
    "speed-up as text": (_set("latency.0.speedup_vs_reference", "10x"),
                         "malformed bench result (field 'latency.0.speedup_vs_reference'"),
    "terminal escape in a name": (_set("device.cpu.model", "\x1b[2J\x1b]0;pwned"), "malformed bench result (field 'device.cpu.model'"),
    "terminal escape in a reason": (_set("gates.checks", [{"status": "PASS", "reason": "ok\x9b2J"}]),
                                    "malformed bench result (field 'gates.checks.0.reason'"),
    "samples as text": (_set("latency.0.samples_ms", ["1", "2"]), "malformed bench result (field 'latency.0.samples_ms.0'"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_crafted_answer_is_refused_and_nothing_is_written(sshd, honest_answer, run, tmp_path, case):
    change, message = HOSTILE[case]
    edgetl = fake_edgetl(tmp_path, with_changes(honest_answer, change))
    before, around = snapshot(run), snapshot(tmp_path / "runs")
    result = remote_bench_cli(sshd, run, tmp_path / "device", edgetl)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output
    assert snapshot(run) == before and snapshot(tmp_path / "runs") == around  # manifest.json included
    assert not list(tmp_path.rglob("escape*")) and not Path("/tmp/escape").exists()


@pytest.mark.parametrize("answer, message", [
    ("Traceback (most recent call last):\n  oops", "did not print a result document"),
    (b"\xff\xfe not json", "did not print a result document"),
    ("[" * 100_000, "did not print a result document"),  # deeper than any parser should follow
    (b" " * (17 << 20), "answered more than 16 MiB"),
])
def test_garbage_and_huge_answers_are_refused(sshd, run, tmp_path, answer, message):
    before = snapshot(run)
    result = remote_bench_cli(sshd, run, tmp_path / "device", fake_edgetl(tmp_path, answer))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert snapshot(run) == before


@pytest.mark.parametrize("name", ["../../../../escape", "/tmp/escape", "..", "a/b\nc"])
def test_the_workstation_names_the_result_file(sshd, honest_answer, run, tmp_path, name):
    """A device naming itself with a path is stored under the name the workstation asked for."""
    edgetl = fake_edgetl(tmp_path, with_changes(honest_answer, _set("device.name", name)))
    before = snapshot(run)
    result = remote_bench_cli(sshd, run, tmp_path / "device", edgetl)
    assert result.exit_code == 0, result.output
    after = snapshot(run)
    changed = {rel for rel in after if after[rel] != before.get(rel)}
    assert changed == {"bench/onnxruntime/int8@loop.json", "manifest.json"}
    saved = json.loads((run / "bench" / "onnxruntime" / "int8@loop.json").read_text())
    assert saved["device"]["name"] == "loop"
    assert not list(tmp_path.rglob("escape*")) and not Path("/tmp/escape").exists()


def test_the_device_cannot_write_to_the_terminal(sshd, bundle_file, tmp_path):
    """What a failing device prints on stderr reaches the error line without its control characters:
    no escape sequence (clear screen, window title, a fake prompt) from the device reaches the terminal."""
    from tests.bundle.test_ship import cli_ship

    script = tmp_path / "edgetl"
    script.write_text("#!/bin/sh\nprintf 'error: \\033[2J\\033]0;pwned\\007 broken\\233\\n' >&2\nexit 1\n")
    script.chmod(0o755)
    result = cli_ship(sshd, bundle_file, tmp_path / "device", "--remote-edgetl", str(script))
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert "broken" in errors[0] and not any(c in result.output for c in "\x1b\x07\x9b"), repr(result.output)


@pytest.mark.parametrize("change", [
    _set("device.runtimes", {"\x1b]0;pwned\x07\nerror: all good \x9b2J": 1}),
    _set("settings", {"k" * 100_000: 1, "\x1b[2J": 2}),
])
def test_the_device_s_own_keys_reach_the_error_line_escaped(sshd, honest_answer, run, tmp_path, change):
    """A malformed key of the device's answer is named in the error, escaped and cut: one short line,
    no escape sequence or fake second line on the workstation's terminal."""
    edgetl = fake_edgetl(tmp_path, with_changes(honest_answer, change))
    before = snapshot(run)
    result = remote_bench_cli(sshd, run, tmp_path / "device", edgetl)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "malformed bench result (field '" in errors[0], result.output
    assert len(errors[0]) < 600 and not any(c in result.output for c in "\x1b\x07\x9b"), repr(result.output)
    assert "all good" not in result.output.replace(errors[0], "")  # no line of the device's own
    assert snapshot(run) == before
