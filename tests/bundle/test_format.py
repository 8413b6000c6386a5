"""Bundle archives and folders: what is accepted, and every unsafe or tampered form that is refused."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgetl._io import sha256_file
from edgetl.bundle.format import (
    FORMAT,
    check_folder,
    extract_archive,
    file_entries,
    inspect_archive,
    version_tuple,
    write_archive,
)
from edgetl.errors import BundleError


def demo_manifest(files: dict) -> dict:
    """A complete, valid manifest for ``make_folder``'s files (3 classes, 4x4 RGB input)."""
    return {
        "format": FORMAT, "name": "demo-host", "task": "image-classification", "release": 1, "run": "demo", "target": {"name": "host"},
        "precision": "fp32", "gpu_arch": None,
        "runtime": {"name": "onnxruntime", "extra": "onnxruntime", "min_version": {"onnxruntime": "1.16"},
                    "built_with": "1.32.0"},
        "model": {"path": "model/model.onnx", "files": ["model/model.onnx"], "compiled": "onnxruntime/fp32"},
        "inputs": [{"name": "input", "shape": ["batch", 3, 4, 4], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": ["batch", 3], "dtype": "float32"}],
        "preprocess": {"input_size": [4, 4], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                       "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center"},
        "labels": ["a", "b", "c"],
        "golden": {"inputs": {"input": "golden/in.0.npy"}, "expected": {"logits": "golden/out.0.npy"}, "samples": 2,
                   "expected_from": "test", "tolerance": {"atol": 1e-5, "rtol": 1e-3, "precision": "fp32", "source": "same"}},
        "workstation": {}, "versions": {"onnxruntime": "1.32.0"},
        "files": files,
    }


def make_folder(root: Path) -> Path:
    """A minimal, well-formed bundle folder (no real model: the format does not care)."""
    (root / "model").mkdir(parents=True)
    (root / "golden").mkdir()
    (root / "model" / "model.onnx").write_bytes(b"not really onnx" * 10)
    np.save(root / "golden" / "in.0.npy", np.zeros((2, 3, 4, 4), np.float32))
    np.save(root / "golden" / "out.0.npy", np.zeros((2, 3), np.float32))
    (root / "manifest.json").write_text(json.dumps(demo_manifest(file_entries(root))))
    return root


@pytest.fixture
def archive(tmp_path) -> Path:
    dest = tmp_path / "demo.tar.gz"
    write_archive(make_folder(tmp_path / "src"), dest, "demo-host")
    return dest


def rewrite(src: Path, dest: Path, edit) -> Path:
    """Copy archive ``src`` to ``dest`` member by member, letting ``edit(tar_out, member, data)`` change it."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dest, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None
            edit(tout, m, data)
    return dest


def copy_member(tout, m, data):
    tout.addfile(m, io.BytesIO(data) if data is not None else None)


def add_file(tout, name: str, data: bytes):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tout.addfile(ti, io.BytesIO(data))


def test_roundtrip_is_reproducible_and_checked(archive, tmp_path):
    again = tmp_path / "again.tar.gz"
    write_archive(tmp_path / "src", again, "demo-host")
    assert sha256_file(again) == sha256_file(archive)  # same contents, same sha256 (ship skips re-copies)
    assert tarfile.open(archive).next().name == "demo-host"  # one top folder, the bundle's name
    manifest = inspect_archive(archive)
    assert set(manifest["files"]) == {"model/model.onnx", "golden/in.0.npy", "golden/out.0.npy"}
    out = tmp_path / "out"
    extract_archive(archive, out)
    assert check_folder(out)["name"] == "demo-host"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "golden/in.0.npy", "golden/out.0.npy", "manifest.json", "model/model.onnx"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp folder left behind


@pytest.mark.parametrize(
    "name, what",
    [
        ("/etc/evil", "unsafe path"),
        ("demo-host/../evil", "unsafe path"),
        ("../evil", "unsafe path"),
        ("demo-host/model/../../evil", "unsafe path"),
        ("other-top/evil", "outside the bundle's top folder"),
    ],
)
def test_refuses_paths_outside_the_bundle(archive, tmp_path, name, what):
    bad = rewrite(archive, tmp_path / "bad.tar.gz", lambda t, m, d: (copy_member(t, m, d), m.name.endswith("in.0.npy")
                                                                     and add_file(t, name, b"x")))
    with pytest.raises(BundleError, match=what):
        inspect_archive(bad)
    with pytest.raises(BundleError):
        extract_archive(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_refuses_links_and_devices(archive, tmp_path, kind):
    def edit(tout, m, data):
        copy_member(tout, m, data)
        if m.name.endswith("in.0.npy"):
            ti = tarfile.TarInfo("demo-host/model/escape")
            ti.type, ti.linkname = kind, "/etc/passwd"
            tout.addfile(ti)

    bad = rewrite(archive, tmp_path / "bad.tar.gz", edit)
    with pytest.raises(BundleError, match="link|device"):
        extract_archive(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_a_listed_file_replaced_by_a_symlink(archive, tmp_path):
    def edit(tout, m, data):
        if m.name.endswith("model.onnx"):
            ti = tarfile.TarInfo(m.name)
            ti.type, ti.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
            tout.addfile(ti)
        else:
            copy_member(tout, m, data)

    with pytest.raises(BundleError, match="link"):
        inspect_archive(rewrite(archive, tmp_path / "bad.tar.gz", edit))


def test_refuses_unlisted_file(archive, tmp_path):
    bad = rewrite(archive, tmp_path / "bad.tar.gz",
                  lambda t, m, d: (copy_member(t, m, d), m.name.endswith("in.0.npy") and add_file(t, "demo-host/extra.py", b"x")))
    with pytest.raises(BundleError, match="extra.py is not listed"):
        inspect_archive(bad)


def test_refuses_tampered_file_of_the_same_size(archive, tmp_path):
    def edit(tout, m, data):
        if m.name.endswith("model.onnx"):
            data = data.replace(b"onnx", b"ONNX")
        copy_member(tout, m, data)

    out = tmp_path / "out"
    with pytest.raises(BundleError, match="model/model.onnx does not match its sha256"):
        extract_archive(rewrite(archive, tmp_path / "bad.tar.gz", edit), out)
    assert not out.exists()


def test_refuses_resized_file_and_missing_file(archive, tmp_path):
    def grow(tout, m, data):
        if m.name.endswith("model.onnx"):
            data += b"!"
            m.size = len(data)
        copy_member(tout, m, data)

    with pytest.raises(BundleError, match="bytes, the manifest says"):
        inspect_archive(rewrite(archive, tmp_path / "grown.tar.gz", grow))
    drop = rewrite(archive, tmp_path / "dropped.tar.gz", lambda t, m, d: m.name.endswith("out.0.npy") or copy_member(t, m, d))
    with pytest.raises(BundleError, match="golden/out.0.npy is listed in the manifest but missing"):
        inspect_archive(drop)


def test_refuses_unsafe_names_in_the_manifest(tmp_path):
    root = make_folder(tmp_path / "src")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"]["../outside"] = {"sha256": "0" * 64, "size": 1}
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="unsafe path '../outside'"):
        check_folder(root)


def test_refuses_not_a_bundle(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="not a readable .tar.gz"):
        inspect_archive(tmp_path / "x.tar.gz")
    root = make_folder(tmp_path / "src")
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "format": "edgetl.bundle/99"}))
    with pytest.raises(BundleError, match="upgrade edgetl"):
        check_folder(root)


def test_folder_checks(tmp_path):
    root = make_folder(tmp_path / "b")
    check_folder(root)
    (root / "model" / "extra.txt").write_text("x")
    with pytest.raises(BundleError, match="extra.txt is not listed"):
        check_folder(root)
    (root / "model" / "extra.txt").unlink()
    os.symlink("/etc/passwd", root / "golden" / "link")
    with pytest.raises(BundleError, match="symbolic link"):
        check_folder(root)
    (root / "golden" / "link").unlink()
    (root / "model" / "model.onnx").write_bytes(b"tampered" * 10)
    with pytest.raises(BundleError, match="model/model.onnx does not match"):
        check_folder(root)


def test_version_tuple():
    assert version_tuple("1.32.0") == (1, 32, 0)
    assert version_tuple("2026.4.1-22982") == (2026, 4, 1, 22982)
    assert version_tuple("10.3.0.post1") == (10, 3, 0)
    assert version_tuple("1.16") < version_tuple("1.32.0")
