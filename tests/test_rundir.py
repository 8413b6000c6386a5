"""Opening a run: a path that is not one says what it is and the command that makes a run from it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Blocks torch: the answer comes before anything heavy loads.
_NO_TORCH = "import sys; sys.modules['torch'] = None\nfrom edgetl.cli import main; main()"


def _compile(run, cwd):
    return subprocess.run([sys.executable, "-c", _NO_TORCH, "compile", str(run), "--target", "host-cpu"],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env={**os.environ, "COLUMNS": "300"})


def _image_folder(root):
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        (root / label / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return root


@pytest.mark.parametrize("layout", ["classes", "split"])
def test_an_image_folder_given_as_run_points_to_train_not_to_writing_a_run_into_it(tmp_path, layout):
    data = tmp_path / "images"
    _image_folder(data / "train" if layout == "split" else data)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    result = _compile(data, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {data} is an image folder, not a run: train on it first with "
        f"`edgetl train --data {data} --out runs/<name>`"]
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


@pytest.mark.parametrize(("name", "kind"), [("tiny-int8.tar.gz", "a bundle"), ("manifest.json", "a file")])
def test_a_file_given_as_run_is_named_as_such(tmp_path, name, kind):
    (tmp_path / name).write_bytes(b"{}")
    result = _compile(tmp_path / name, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / name} is {kind}, not a run directory: give the folder `edgetl train --out` wrote "
        "(runs/<name>)"]


def test_a_missing_or_empty_run_folder_still_says_how_to_create_it(tmp_path):
    (tmp_path / "empty").mkdir()
    missing, empty = _compile(tmp_path / "missing", tmp_path), _compile(tmp_path / "empty", tmp_path)
    assert missing.returncode == empty.returncode == 2
    assert "does not exist: create it with `edgetl train --out" in missing.stderr
    assert f"{tmp_path / 'empty'} is not an edgetl run (no manifest.json)" in empty.stderr
    assert not (tmp_path / "missing").exists() and list((tmp_path / "empty").iterdir()) == []


_WRITER = """
import sys
from edgetl.rundir import RunDir
run = RunDir.open(sys.argv[1])
for i in range(int(sys.argv[3])):
    run.set_item("compiled", f"{sys.argv[2]}/{i}", {"n": i})
"""


def test_concurrent_writers_lose_no_entry_and_leave_no_lock_file(tmp_path):
    """Two processes editing one manifest (one through a symlink to the run) keep every entry; the
    lock is the run folder's own, so nothing but the manifest is left in it."""
    from edgetl.rundir import RunDir

    run = RunDir.create(tmp_path / "runs" / "r")
    (tmp_path / "link").symlink_to(run.path)
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name, "40"])
               for path, name in ((run.path, "a"), (tmp_path / "link", "b"))]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    assert set(run.manifest["compiled"]) == {f"{n}/{i}" for n in "ab" for i in range(40)}
    assert [p.name for p in run.path.iterdir()] == ["manifest.json"]
    assert [p.name for p in run.path.parent.iterdir()] == ["r"]


_VALID = b'{"schema": 1, "name": "r", "artifacts": {}}'


@pytest.mark.parametrize(("content", "message"), [
    (b"[1, 2]", "is not a JSON object but list"),
    (b"\xff\xfe{}", "is corrupt ("),
    (b"[" * 100_000 + b"]" * 100_000, "is corrupt ("),
    (_VALID.replace(b"{}", b"[1]"), "field 'artifacts' must map run-relative paths to sha256s"),
    (_VALID.replace(b'"schema": 1', b'"schema": 99'), "has schema 99, newer than this edgetl reads (1): upgrade edgetl"),
    (_VALID.replace(b'"schema": 1', b'"schema": "1"'), "field 'schema' is '1', not a version number"),
    (_VALID.replace(b"{}", b'{"compiled/m.onnx": 5}'), "field 'artifacts' must map"),
    (_VALID[:-1] + b', "compiled": {"k": {"size_bytes": ' + b"9" * 400 + b"}}}", "does not fit in 64 bits"),
])
@pytest.mark.parametrize("command", [["compile", "{run}", "--target", "onnxruntime"], ["report", "{run}"],
                                     ["bench", "{run}"], ["bundle", "{run}", "--target", "onnxruntime"]])
def test_a_manifest_that_is_not_a_run_manifest_is_one_line(tmp_path, content, message, command):
    """Edited by hand, truncated, from a newer edgetl: one line naming the file, exit 2, nothing written."""
    from click.testing import CliRunner

    from edgetl.cli import cli

    run = tmp_path / "r"
    run.mkdir()
    (run / "manifest.json").write_bytes(content)
    result = CliRunner().invoke(cli, [a.replace("{run}", str(run)) for a in command])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    assert str(run / "manifest.json") in lines[0] and message in lines[0], lines[0]
    assert [p.name for p in run.iterdir()] == ["manifest.json"] and (run / "manifest.json").read_bytes() == content
