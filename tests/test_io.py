"""Atomic writes keep the user's umask: a run folder can be shared like any file the user writes."""

from __future__ import annotations

import os
import stat

import pytest

from edgetl._io import atomic_dir, write_text


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775),
                                                               (0o077, 0o600, 0o700)])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        write_text(tmp_path / "run" / "manifest.json", "{}")
        with atomic_dir(tmp_path / "run" / "compiled") as tmp:
            (tmp / "model.onnx").write_bytes(b"onnx")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run" / "manifest.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "run" / "compiled").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "run" / "compiled" / "model.onnx").stat().st_mode) == file_mode
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temporary left
