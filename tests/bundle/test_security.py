"""Hostile bundles: each is refused through the CLI with one line and exit 2, and writes nothing.

The archives are built by hand with ``tarfile`` (traversal, links, sparse members, member floods,
resized members, reordered heads, foreign or stale signatures) around the tiny fake bundle of
``test_format``; the cases that need a model that really runs use the session's tiny bundle.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgetl.bundle import signing
from edgetl.bundle.format import MANIFEST, extract_archive, file_entries, inspect_archive
from edgetl.bundle.runner import open_bundle, verify
from edgetl.cli import cli
from edgetl.errors import BundleError
from tests.bundle.test_format import demo_manifest, make_folder

TOP = "demo-host"


@pytest.fixture(autouse=True)
def _no_trust_from_the_user(tmp_path, monkeypatch):
    """Trusted keys and the opt-out come from each test, never from the user's config or shell."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("EDGETL_TRUSTED_KEYS", raising=False)
    monkeypatch.delenv("EDGETL_ALLOW_UNSIGNED", raising=False)
    monkeypatch.delenv("EDGETL_MAX_UNPACK_BYTES", raising=False)


@pytest.fixture
def key(tmp_path) -> Path:
    """A signing key pair; returns the private key's path (the .pub is next to it)."""
    private, _ = signing.new_key_pair(tmp_path / "keys", "release")
    return private


@pytest.fixture
def trusted(key, tmp_path, monkeypatch) -> Path:
    """This machine trusts ``key``."""
    folder = tmp_path / "trusted"
    folder.mkdir()
    shutil.copyfile(key.with_suffix(".pub"), folder / "release.pub")
    monkeypatch.setenv("EDGETL_TRUSTED_KEYS", str(folder))
    return key


# -- the hostile-bundle factory -----------------------------------------------------------------------
def entry(name: str, data: bytes | None = None, **attrs) -> tuple[tarfile.TarInfo, bytes | None]:
    """One archive member: a folder when ``data`` is None, else a file; ``attrs`` set TarInfo fields."""
    info = tarfile.TarInfo(name)
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    return info, data


def folder_entries(root: Path, top: str = TOP) -> list:
    """A bundle folder as members, the way ``write_archive`` orders them: top, manifest, signature, rest."""
    head = [root / MANIFEST] + ([root / signing.SIGNATURE] if (root / signing.SIGNATURE).exists() else [])
    rest = sorted(p for p in root.rglob("*") if p not in head)
    return [entry(top)] + [entry(f"{top}/{p.relative_to(root).as_posix()}", None if p.is_dir() else p.read_bytes())
                           for p in head + rest]


def pack(dest: Path, entries: list, fmt: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(dest, "w:gz", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return dest


def demo(tmp_path: Path, sign_with: Path | None = None, edit=None) -> Path:
    """The fake demo bundle folder; ``edit(manifest)`` changes it (hashes stay right), then it is signed."""
    root = make_folder(tmp_path / "src")
    if edit is not None:
        manifest = demo_manifest(file_entries(root))
        edit(manifest)
        (root / MANIFEST).write_text(json.dumps(manifest))
    if sign_with is not None:
        sign(root, sign_with)
    return root


def sign(root: Path, key: Path) -> None:
    (root / signing.SIGNATURE).write_bytes(signing.sign(signing.load_private_key(key), (root / MANIFEST).read_bytes()))


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def refused(args: list[str], message: str, watch: Path) -> str:
    """Run ``edgetl ARGS``: exit 2, one line naming ``message``, no traceback, no file added under ``watch``."""
    before = files_under(watch)
    result = CliRunner().invoke(cli, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert message in lines[0], lines[0]
    assert files_under(watch) == before, files_under(watch) - before  # nothing extracted, cached or left over
    return lines[0]


# -- unsafe archives ----------------------------------------------------------------------------------
def _traversal(root):
    return folder_entries(root)[:3] + [entry(f"{TOP}/../evil", b"x")]


def _symlink(root):
    return folder_entries(root) + [entry(f"{TOP}/model/escape", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd", size=0)]


def _hardlink(root):
    return folder_entries(root) + [entry(f"{TOP}/model/escape", b"", type=tarfile.LNKTYPE, linkname="/etc/passwd", size=0)]


def _pax_sparse(root):
    """A PAX 0.1 sparse member: declares 10 GiB, holds nothing (tar writers emit this for sparse files)."""
    big = entry(f"{TOP}/model/model.onnx", b"")
    big[0].pax_headers = {"GNU.sparse.size": str(10 << 30), "GNU.sparse.map": f"{(10 << 30) - 1},1"}
    return folder_entries(root)[:3] + [big]


def _gnu_sparse(root):
    """An old-GNU sparse member (type 'S')."""
    big = entry(f"{TOP}/model/model.onnx", b"", type=tarfile.GNUTYPE_SPARSE)
    return folder_entries(root)[:3] + [big]


def _flood(root):
    """20,000 empty folders: a bundle has a handful of members."""
    return folder_entries(root) + [entry(f"{TOP}/d{i:05d}") for i in range(20_000)]


def _larger_than_listed(root):
    members = folder_entries(root)
    return [m if not m[0].name.endswith("model.onnx") else entry(m[0].name, m[1] + b"!" * 4096) for m in members]


def _manifest_not_first(root):
    members = folder_entries(root)
    head, rest = members[:2], members[2:]
    return [head[0], *rest, head[1]]


def _huge_header(root):
    """A 2 MiB PAX header (it compresses to a few KiB): tarfile would hold it all in memory."""
    members = folder_entries(root)
    members[3][0].pax_headers = {"comment": "x" * (2 << 20)}
    return members


def _listed_as_folder(root):
    """A listed file that arrives as a folder is missing, not silently empty."""
    return [m if not m[0].name.endswith("model.onnx") else entry(m[0].name) for m in folder_entries(root)]


HOSTILE = {
    "traversal": (_traversal, "unsafe path"),
    "symlink": (_symlink, "is a link"),
    "hardlink": (_hardlink, "is a link"),
    "pax-sparse": (_pax_sparse, "is a sparse file"),
    "gnu-sparse": (_gnu_sparse, "is a sparse file"),
    "20000-members": (_flood, "more than 10000 members"),
    "larger-than-listed": (_larger_than_listed, "model/model.onnx has 4246 bytes, the manifest says 150"),
    "manifest-not-first": (_manifest_not_first, "manifest.json must be the archive's first file"),
    "huge-header": (_huge_header, "an archive header of"),
    "listed-file-as-folder": (_listed_as_folder, "model/model.onnx is listed in the manifest but missing"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("command", ["verify", "predict"])
def test_hostile_archives_are_refused_before_anything_is_written(tmp_path, kind, command):
    build, message = HOSTILE[kind]
    archive = pack(tmp_path / "hostile.tar.gz", build(demo(tmp_path)), fmt=tarfile.GNU_FORMAT if "gnu" in kind else
                   tarfile.PAX_FORMAT)
    args = [command, str(archive)] + (["photo.png"] if command == "predict" else [])
    refused(args, message, tmp_path)
    assert not (tmp_path / "evil").exists()


def test_sparse_members_are_read_as_sparse(tmp_path):
    """The sparse cases really are sparse to tarfile (so the test above tests the refusal, not a typo)."""
    for build in (_pax_sparse, _gnu_sparse):
        fmt = tarfile.GNU_FORMAT if build is _gnu_sparse else tarfile.PAX_FORMAT
        with tarfile.open(pack(tmp_path / "s.tar.gz", build(demo(tmp_path / build.__name__)), fmt=fmt)) as tar:
            last = tar.getmembers()[-1]
        assert last.issparse() or last.type == tarfile.GNUTYPE_SPARSE


def test_unpacked_size_is_capped(tmp_path, monkeypatch):
    archive = pack(tmp_path / "b.tar.gz", folder_entries(demo(tmp_path)))
    monkeypatch.setenv("EDGETL_MAX_UNPACK_BYTES", "1000")
    refused(["verify", str(archive)], "more than the 0.0 MB allowed", tmp_path)


def test_not_enough_free_space_is_named_before_writing(tmp_path, monkeypatch):
    free = shutil.disk_usage(tmp_path).free
    if free * 2 > 2**40:
        pytest.skip("this disk has more free space than a manifest may list")
    root = demo(tmp_path, edit=lambda m: m["files"]["model/model.onnx"].update(size=free * 2))
    archive = pack(tmp_path / "b.tar.gz", folder_entries(root))
    monkeypatch.setenv("EDGETL_MAX_UNPACK_BYTES", str(2**41))  # past the cap: the disk is what is checked
    line = refused(["verify", str(archive)], "not enough free space in", tmp_path)
    assert "need" in line and "MB" in line


def test_extraction_never_restores_modes_or_owners(tmp_path):
    members = folder_entries(demo(tmp_path))
    for info, _ in members:
        info.mode, info.uid, info.uname = 0o4777, 4242, "attacker"
    out = tmp_path / "out"
    extract_archive(pack(tmp_path / "b.tar.gz", members), out)
    for path in [out, *out.rglob("*")]:
        assert path.stat().st_mode & 0o7777 == (0o755 if path.is_dir() else 0o644), path
        assert path.stat().st_uid != 4242


# -- malformed manifests ------------------------------------------------------------------------------
def _set(path: str, value):
    """An edit that sets manifest[a][b]... = value (path 'a.b')."""

    def edit(m):
        *parents, last = path.split(".")
        for p in parents:
            m = m[p]
        m[last] = value

    return edit


def _drop(key: str):
    return lambda m: m.pop(key)


def _huge_input(m):
    m["inputs"][0]["shape"] = ["batch", 3, 100_000, 100_000]
    m["preprocess"]["input_size"] = [100_000, 100_000]


def _golden_file(kind: str, name: str, rel: str):
    """Point the golden files of ``kind`` at ``{name: rel}`` instead."""
    return lambda m: m["golden"].update({kind: {name: rel}})


def _file(rel: str, **fields):
    return lambda m: m["files"].setdefault(rel, {}).update(fields)


MALFORMED = {
    "not-an-object": (b"[1, 2, 3]", "not a JSON object"),
    "bad-utf8": (b'{"format": "edgetl.bundle/2", "name": "\xff\xfe"}', "manifest.json is malformed"),
    "not-json": (b'{"format": ', "manifest.json is malformed"),
    "too-deep": (b'{"workstation": ' + b"[" * 5000 + b"]" * 5000 + b"}", "manifest.json is malformed"),
    "missing-labels": (_drop("labels"), "field labels: Field required"),
    "missing-release": (_drop("release"), "field release: Field required"),
    "release-as-text": (_set("release", "1"), "field release: Input should be a valid integer"),
    "negative-size": (_file("model/model.onnx", size=-1), "greater than or equal to 0"),
    "bad-sha256": (_file("model/model.onnx", sha256="abc"), "files['model/model.onnx'].sha256"),
    "too-many-files": (lambda m: m["files"].update({f"f{i}": {"sha256": "0" * 64, "size": 0} for i in range(10_001)}),
                       "field files: Dictionary should have at most 10000 items"),
    "huge-input": (_huge_input, "more than 67108864"),
    "huge-batch": (lambda m: m["inputs"][0].update(shape=[10**6, 3, 4, 4]), "batch 1000000 must be a name"),
    "seven-channels": (lambda m: m["inputs"][0].update(shape=["batch", 7, 4, 4]), "7 channels: 3 expected"),
    "input-size-not-preprocess": (lambda m: m["inputs"][0].update(shape=["batch", 3, 8, 8]),
                                  "preprocess.input_size [4, 4] is not the input's [8, 8]"),
    "too-many-dims": (lambda m: m["inputs"][0].update(shape=["batch", *[1] * 8]), "at most 8 items"),
    "huge-dim": (lambda m: m["outputs"][0].update(shape=["batch", 2**40]), "outputs[0].shape[1]"),
    "odd-dim-name": (lambda m: m["inputs"][0].update(shape=["$(id)", 3, 4, 4]), "must be an identifier"),
    "object-dtype": (lambda m: m["inputs"][0].update(dtype="object"), "inputs[0].dtype"),
    "wrong-input-dtype": (lambda m: m["inputs"][0].update(dtype="int64"),
                          "inputs 'input' is int64 ['batch', 3, 4, 4], the task expects float32"),
    "renamed-input": (lambda m: m["inputs"][0].update(name="pixels"),
                      "golden files name ['input'] but the model's inputs are ['pixels']"),
    "extra-output": (lambda m: m["outputs"].append({"name": "logits", "shape": ["batch", 3], "dtype": "float32"}),
                     "outputs: tensor names must be unique"),
    "tensor-name-with-escape": (lambda m: m["inputs"][0].update(name="in\x1b[2J"), "field inputs[0].name"),
    "old-input-field": (_set("input", {"name": "input", "shape": [-1, 3, 4, 4], "dtype": "float32"}),
                        "field input: Extra inputs are not permitted"),
    "unknown-task": (_set("task", "object-detection"), "task 'object-detection' is not one of audio-classification, image-classification, text-classification"),
    "missing-task": (_drop("task"), "field task: Field required"),
    "golden-path-outside": (_golden_file("inputs", "input", "../in.npy"), "unsafe path '../in.npy'"),
    "golden-unlisted": (_golden_file("expected", "logits", "golden/other.npy"), "'golden/other.npy' is used but not listed"),
    "golden-for-another-tensor": (_golden_file("expected", "scores", "golden/out.0.npy"),
                                  "golden files name ['scores'] but the model's outputs are ['logits']"),
    "short-labels": (_set("labels", ["a", "b"]), "2 labels for a model with 3 output classes"),
    "duplicate-labels": (_set("labels", ["a", "a", "b"]), "labels must be unique"),
    "empty-label": (_set("labels", ["a", "", "c"]), "field labels[1]"),
    "label-not-text": (_set("labels", ["a", 2, "c"]), "field labels[1]"),
    "label-with-terminal-escape": (_set("labels", ["a", "\x1b[2Jb", "c"]), "field labels[1]"),
    "label-with-c1-escape": (_set("labels", ["a", "b\x9b2J", "c"]), "field labels[1]"),
    "bad-slug": (_set("name", "../../etc"), "must be a slug"),
    "dotdot-name": (_set("name", "a..b"), "must be a slug"),
    "unknown-runtime": (_set("runtime.name", "pytorch-nightly"), "runtime 'pytorch-nightly' is not one of"),
    "evil-extra": (_set("runtime.extra", "evil @ https://x"), "is not onnxruntime's pip extra"),
    "unknown-precision": (_set("precision", "int4"), "field precision"),
    "unknown-golden-source": (_set("golden.tolerance.source", "magic"), "golden.tolerance.source"),
    "tiny-crop": (_set("preprocess.crop_pct", 1e-9), "preprocess.crop_pct"),
    "zero-std": (_set("preprocess.std", [0.5, 0.0, 0.5]), "preprocess.std[1]"),
    "nan-mean": (lambda m: m["preprocess"].update(mean=[float("nan"), 0.5, 0.5]), "preprocess.mean[0]"),
    "preprocess-unknown-key": (lambda m: m["preprocess"].update(script="rm -rf /"), "field preprocess.script"),
    "preprocess-size-as-text": (_set("preprocess.input_size", ["4", "4"]), "field preprocess.input_size[0]"),
    "preprocess-key-flood": (lambda m: m["preprocess"].update({f"k{i}": 0 for i in range(100)}),
                             "field preprocess: Dictionary should have at most 64 items"),
    # the image task reads no asset files: none may travel, whatever the manifest says
    "asset-the-task-does-not-read": (lambda m: (m.update(assets=["vocab.txt"]),
                                                m["files"].update({"assets/vocab.txt": {"sha256": "0" * 64, "size": 1}})),
                                     "assets ['vocab.txt'] are not the files the task image-classification reads ([])"),
    "asset-name-traversal": (_set("assets", ["../x"]), "field assets[0]: must be a slug"),
    "stray-asset-file": (_file("assets/evil.so", sha256="0" * 64, size=1), "'assets/evil.so' is not one of the bundle's assets"),
    "unsafe-file-path": (_file("../outside", sha256="0" * 64, size=1), "unsafe path '../outside'"),
    "unlisted-model": (_set("model.path", "model/other.onnx"), "'model/other.onnx' is used but not listed"),
    "unknown-field": (_set("exec", "rm -rf /"), "field exec: Extra inputs are not permitted"),
    "newer-format": (_set("format", "edgetl.bundle/99"), "upgrade edgetl on this machine"),
    "foreign-format": (_set("format", "docker/1"), "not an edgetl bundle"),
    "threads-flood": (_set("target", {"name": "pi", "runtime": "onnxruntime", "threads": 10**6}), "target.threads"),
    # the workstation's accuracy feeds the drop, the gates and the printed tables on the device
    "workstation-accuracy-as-text": (_set("workstation", {"accuracy": "high"}), "field workstation.accuracy"),
    "workstation-number-as-text": (_set("workstation", {"accuracy": {"fp32_top1": "0.9", "n": 12}}),
                                   "field workstation.accuracy.fp32_top1"),
    "workstation-drop-nan": (_set("workstation", {"accuracy": {"top1": 0.9, "drop_pp": float("nan")}}),
                             "field workstation.accuracy.drop_pp"),
    "workstation-images-as-text": (_set("workstation", {"accuracy": {"fp32_top1": 0.9, "n": "12"}}),
                                   "field workstation.accuracy.n"),
}


def _malformed_folder(tmp_path: Path, kind: str) -> Path:
    change, _ = MALFORMED[kind]
    if isinstance(change, bytes):
        root = make_folder(tmp_path / "src")
        (root / MANIFEST).write_bytes(change)
        return root
    return demo(tmp_path, edit=change)


@pytest.mark.parametrize("kind", sorted(MALFORMED))
@pytest.mark.parametrize("command", ["verify", "predict"])
def test_malformed_manifests_are_one_line_and_exit_2(tmp_path, kind, command):
    root = _malformed_folder(tmp_path, kind)
    archive = pack(tmp_path / "bad.tar.gz", folder_entries(root))
    extra = ["photo.png"] if command == "predict" else []
    line = refused([command, str(archive), *extra], MALFORMED[kind][1], tmp_path)
    assert len(line) < 600
    refused([command, str(root), *extra], MALFORMED[kind][1], tmp_path)  # an extracted folder: the same check


def test_golden_arrays_are_checked_before_loading(tmp_path):
    """Header and size against the manifest's shapes before numpy reads any data."""
    cases = {
        "shape": (lambda p: np.save(p, np.zeros((2, 3, 8, 8), np.float32)), "it holds float32 (2, 3, 8, 8)"),
        "dtype": (lambda p: np.save(p, np.zeros((2, 3, 4, 4), np.float64)), "it holds float64"),
        "fortran": (lambda p: np.save(p, np.asfortranarray(np.zeros((2, 3, 4, 4), np.float32))), "Fortran-order"),
        "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-16]), "its size does not match its header"),
        "pickle": (lambda p: np.save(p, np.array([{"x": 1}], dtype=object), allow_pickle=True), "it holds object"),
    }
    for name, (write, message) in cases.items():
        root = make_folder(tmp_path / name)
        write(root / "golden" / "in.0.npy")
        manifest = json.loads((root / MANIFEST).read_text())
        manifest["files"] = file_entries(root)
        (root / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match=re.escape(message)):
            verify(root)


def _npy_v2(header: dict) -> bytes:
    text = repr(header).encode()
    text += b" " * ((64 - (12 + len(text) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x02\x00" + len(text).to_bytes(4, "little") + text


@pytest.mark.parametrize("header, message", [
    ({"descr": "<f4", "fortran_order": False, "shape": (2, 3, 4, 4), "pad": "x" * 200_000}, "is large"),
    ({"descr": "<f4", "fortran_order": False, "shape": (2, 3, 4, 4), "pad": "x" * 9_000 + "\n" * 10}, "golden/in.0.npy"),
])
def test_a_hostile_npy_header_is_one_short_line(tmp_path, header, message):
    """numpy's own complaint about a header spans lines and quotes the header: one bounded line."""
    root = make_folder(tmp_path / "src")
    (root / "golden" / "in.0.npy").write_bytes(_npy_v2(header) + bytes(384))
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"] = file_entries(root)
    (root / MANIFEST).write_text(json.dumps(manifest))
    line = refused(["verify", str(root)], message, tmp_path)
    assert len(line) < 600


# -- signatures -----------------------------------------------------------------------------------------
def test_keys_commands(tmp_path, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(cli, ["keys", "new", "--out", str(tmp_path / "k"), "--name", "ci"])
    assert result.exit_code == 0, result.output
    private, public = tmp_path / "k" / "ci.key", tmp_path / "k" / "ci.pub"
    assert private.stat().st_mode & 0o777 == 0o600
    kid = signing.key_id(signing.load_public_key(public))
    assert kid in result.output and len(kid) == 16
    again = private.read_bytes()
    result = runner.invoke(cli, ["keys", "new", "--out", str(tmp_path / "k"), "--name", "ci"])
    assert result.exit_code == 2 and "already exists" in result.output and private.read_bytes() == again
    result = runner.invoke(cli, ["keys", "list"])
    assert result.exit_code == 0 and "no trusted keys" in result.output
    result = runner.invoke(cli, ["keys", "trust", str(public)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "config" / "edgetl" / "trusted-keys" / f"{kid}.pub").is_file()  # XDG_CONFIG_HOME honoured
    result = runner.invoke(cli, ["keys", "list"])
    assert result.exit_code == 0 and kid in result.output
    refused(["keys", "trust", str(private)], "is not an Ed25519 public key", tmp_path)
    refused(["keys", "new", "--name", "../x"], "--name '../x'", tmp_path)
    (tmp_path / "afile").write_text("")  # a file where the key folder would go: one line, no traceback
    refused(["keys", "new", "--out", str(tmp_path / "afile" / "sub")], "cannot write keys to", tmp_path)
    monkeypatch.setenv("EDGETL_TRUSTED_KEYS", str(tmp_path / "afile" / "trusted"))
    refused(["keys", "trust", str(public)], "cannot write keys to", tmp_path)


def test_raw_keys_and_a_list_of_trusted_places(tmp_path, monkeypatch):
    """Keys as raw 32 bytes work too; $EDGETL_TRUSTED_KEYS may name files and folders."""
    private, public = signing.new_key_pair(tmp_path / "k", "a")
    raw = signing.load_public_key(public).public_bytes(Encoding.Raw, PublicFormat.Raw)
    (tmp_path / "a.raw").write_bytes(raw)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("EDGETL_TRUSTED_KEYS", os.pathsep.join([str(tmp_path / "a.raw"), str(tmp_path / "empty")]))
    assert list(signing.trusted_keys()) == [signing.key_id(signing.load_public_key(public))]
    root = demo(tmp_path, sign_with=private)
    assert inspect_archive(pack(tmp_path / "b.tar.gz", folder_entries(root)))["name"] == TOP
    monkeypatch.setenv("EDGETL_TRUSTED_KEYS", str(tmp_path / "typo"))  # fails closed, not open
    refused(["verify", str(root)], "EDGETL_TRUSTED_KEYS names", tmp_path)


def _trojan(root: Path, rel: str = "model/model.onnx") -> None:
    """Replace the model and recompute every hash in the manifest (what an attacker can always do)."""
    (root / rel).write_bytes(b"trojan" * 25)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"] = file_entries(root)
    (root / MANIFEST).write_text(json.dumps(manifest))


def _swapped_labels(root: Path) -> None:
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["labels"] = manifest["labels"][::-1]
    (root / MANIFEST).write_text(json.dumps(manifest))


def _bad_signature_bytes(root: Path) -> None:
    doc = json.loads((root / signing.SIGNATURE).read_text())
    doc["signature"] = "!!not base64!!"
    (root / signing.SIGNATURE).write_text(json.dumps(doc))


SIGNED_ATTACKS = {
    "tampered-model-recomputed-hashes": (_trojan, "does not match manifest.json"),
    "swapped-labels": (_swapped_labels, "does not match manifest.json"),
    "garbled-signature": (_bad_signature_bytes, "is not an edgetl signature"),
}


@pytest.mark.parametrize("kind", sorted(SIGNED_ATTACKS))
def test_signed_bundle_changed_after_signing_is_refused(tmp_path, trusted, kind):
    root = demo(tmp_path, sign_with=trusted)
    change, message = SIGNED_ATTACKS[kind]
    change(root)
    archive = pack(tmp_path / "b.tar.gz", folder_entries(root))
    refused(["verify", str(archive)], message, tmp_path)
    refused(["verify", str(archive), "--allow-unsigned"], message, tmp_path)  # the opt-out never covers a bad signature
    refused(["predict", str(root), "photo.png"], message, tmp_path)


def test_unknown_key_is_refused(tmp_path, trusted):
    stranger, _ = signing.new_key_pair(tmp_path / "other", "stranger")
    archive = pack(tmp_path / "b.tar.gz", folder_entries(demo(tmp_path, sign_with=stranger)))
    line = refused(["verify", str(archive)], "which this machine does not trust", tmp_path)
    assert "edgetl keys trust" in line


def test_unsigned_is_refused_when_keys_are_trusted(tmp_path, trusted, monkeypatch):
    archive = pack(tmp_path / "b.tar.gz", folder_entries(demo(tmp_path)))
    refused(["verify", str(archive)], "is not signed and this machine trusts signed bundles only", tmp_path)
    refused(["predict", str(archive), "photo.png"], "is not signed", tmp_path)
    refused(["bench", str(archive)], "is not signed", tmp_path)
    refused(["ship", str(archive), "ssh://nobody@127.0.0.1:9/models"], "is not signed", tmp_path)  # before connecting
    assert inspect_archive(archive, allow_unsigned=True)["name"] == TOP
    with signing.allowing_unsigned(True):  # --allow-unsigned: ship passes it on to the device's edgetl
        assert inspect_archive(archive)["name"] == TOP and signing.remote_flags() == ["--allow-unsigned"]
    assert signing.remote_flags() == []
    monkeypatch.setenv("EDGETL_ALLOW_UNSIGNED", "1")
    assert inspect_archive(archive)["name"] == TOP


def test_signature_must_follow_the_manifest(tmp_path, trusted):
    """A signature anywhere but right after manifest.json is an unlisted file (and the bundle unsigned)."""
    members = folder_entries(demo(tmp_path, sign_with=trusted))
    sig = members.pop(2)
    archive = pack(tmp_path / "b.tar.gz", members + [sig])
    refused(["verify", str(archive)], "is not signed", tmp_path)
    with pytest.raises(BundleError, match="manifest.sig appears twice|manifest.sig is not listed"):
        inspect_archive(archive, allow_unsigned=True)


# -- with a model that runs ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signed(bundle_run, tmp_path_factory) -> tuple[Path, Path]:
    """(signed int8 bundle, its private key), made through `edgetl bundle --sign` on a copy of the run."""
    base = tmp_path_factory.mktemp("signed")
    run = base / "run"
    shutil.copytree(bundle_run.path, run)
    private, _ = signing.new_key_pair(base / "keys", "release")
    result = CliRunner().invoke(cli, ["bundle", str(run), "--target", "onnxruntime", "--precision", "int8",
                                      "--sign", str(private), "--release", "7"])
    assert result.exit_code == 0, result.output
    assert "release 7, signed by" in result.output
    return run / "bundles" / "onnxruntime-int8.tar.gz", private


def test_signed_bundle_verifies_and_says_by_whom(signed, tmp_path, monkeypatch):
    archive, private = signed
    manifest = inspect_archive(archive)
    assert manifest["release"] == 7
    with tarfile.open(archive) as tar:
        names = [m.name for m in tar.getmembers()[:3]]
    assert names == [manifest["name"], f"{manifest['name']}/manifest.json", f"{manifest['name']}/manifest.sig"]
    assert "manifest.sig" not in manifest["files"]
    kid = signing.key_id(signing.load_private_key(private).public_key())
    assert verify(archive)["signature"] == f"unchecked:{kid}"  # no trusted keys here: cannot be checked
    (tmp_path / "trusted").mkdir()
    shutil.copyfile(private.with_suffix(".pub"), tmp_path / "trusted" / "r.pub")
    monkeypatch.setenv("EDGETL_TRUSTED_KEYS", str(tmp_path / "trusted"))
    result = CliRunner().invoke(cli, ["verify", str(archive)])
    assert result.exit_code == 0, result.output
    assert f"signature ed25519:{kid}" in result.output
    assert json.loads(CliRunner().invoke(cli, ["verify", str(archive), "--json"]).output)["signature"] == f"ed25519:{kid}"


def test_unsigned_with_the_opt_out_runs(bundle_file, tmp_path, trusted, monkeypatch):
    refused(["verify", str(bundle_file)], "is not signed", tmp_path)
    result = CliRunner().invoke(cli, ["verify", str(bundle_file), "--allow-unsigned"])
    assert result.exit_code == 0 and "(unsigned)" in result.output, result.output
    monkeypatch.setenv("EDGETL_ALLOW_UNSIGNED", "1")
    assert verify(bundle_file)["signature"] == "unsigned"


def test_inflated_tolerance_changes_nothing(bundle_file, tmp_path):
    """Golden tolerances come from edgetl's table: a bundle that widens its own is still held to it."""
    root = tmp_path / "b"
    extract_archive(bundle_file, root)
    expected = np.load(root / "golden" / "out.0.npy")
    expected[3, 0] += 5.0
    np.save(root / "golden" / "out.0.npy", expected)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["golden"]["tolerance"].update(atol=1e9, rtol=1e9)
    manifest["files"] = file_entries(root)
    (root / MANIFEST).write_text(json.dumps(manifest))
    refused(["verify", str(root)], "golden sample 3", tmp_path / "b")


def test_poisoned_cache_is_not_trusted(signed, tmp_path, monkeypatch):
    """A cache entry rewritten with matching hashes (and even a re-signed manifest) is extracted again."""
    archive, private = signed
    (tmp_path / "trusted").mkdir()
    shutil.copyfile(private.with_suffix(".pub"), tmp_path / "trusted" / "r.pub")
    monkeypatch.setenv("EDGETL_TRUSTED_KEYS", str(tmp_path / "trusted"))
    cached = open_bundle(archive).root
    model = cached / "model" / "model.int8.onnx"
    original = model.read_bytes()
    _trojan(cached, "model/model.int8.onnx")
    sign(cached, private)  # even the signer's own key over the poisoned manifest: not the archive's manifest
    assert open_bundle(archive).root == cached
    assert model.read_bytes() == original
    _trojan(cached, "model/model.int8.onnx")
    (cached / signing.SIGNATURE).unlink()
    result = CliRunner().invoke(cli, ["verify", str(archive)])
    assert result.exit_code == 0, result.output
    assert model.read_bytes() == original and (cached / signing.SIGNATURE).is_file()
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left



def test_bundle_refuses_a_bad_key_or_release_before_writing(signed, tmp_path):
    run = signed[0].parent.parent
    (tmp_path / "public-only.pem").write_bytes(signed[1].with_suffix(".pub").read_bytes())
    base = ["bundle", str(run), "--target", "onnxruntime", "--precision", "int8"]
    refused([*base, "--sign", str(tmp_path / "missing.key")], "missing.key does not exist", run)
    refused([*base, "--sign", str(tmp_path / "public-only.pem")], "is not an unencrypted Ed25519 private key", run)
    refused([*base, "--release", "-1"], "--release -1: expected an integer", run)


@pytest.mark.parametrize("setting", ["only-private", "empty", "separators"])
def test_trusted_keys_named_but_none_found_fails_closed(tmp_path, key, monkeypatch, setting):
    """$EDGETL_TRUSTED_KEYS set to places holding no public key (a private key copied by mistake, an
    empty folder, only separators) must not switch signature checks off: unsigned is not accepted."""
    folder = tmp_path / "trusted"
    folder.mkdir()
    if setting == "only-private":
        shutil.copyfile(key, folder / "release.key")
    monkeypatch.setenv("EDGETL_TRUSTED_KEYS", os.pathsep if setting == "separators" else str(folder))
    root = demo(tmp_path)
    refused(["verify", str(root)], "EDGETL_TRUSTED_KEYS names no public key", tmp_path)
    archive = pack(tmp_path / "unsigned.tar.gz", folder_entries(root))
    refused(["predict", str(archive), "photo.png"], "EDGETL_TRUSTED_KEYS names no public key", tmp_path)


@pytest.mark.parametrize("command", ["verify", "predict", "bench"])
def test_a_fifo_manifest_in_a_folder_does_not_hang(tmp_path, command):
    """Opening a FIFO named manifest.json waits for a writer forever: it is refused unopened."""
    import subprocess
    import sys

    root = make_folder(tmp_path / "src")
    (root / MANIFEST).unlink()
    os.mkfifo(root / MANIFEST)
    extra = ["photo.png"] if command == "predict" else []
    edgetl = Path(sys.executable).with_name("edgetl")
    done = subprocess.run([str(edgetl), command, str(root), *extra], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "EDGETL_CACHE": str(tmp_path / "cache")})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "manifest.json is not a plain file" in lines[0], done.stderr


@pytest.mark.parametrize("cache", ["under-a-file", "dangling-link"])
def test_an_unusable_cache_folder_is_one_line(tmp_path, monkeypatch, cache):
    """$EDGETL_CACHE below a file, or a link to nowhere: one line naming the cache, nothing written."""
    root = demo(tmp_path)
    archive = pack(tmp_path / "b.tar.gz", folder_entries(root))
    (tmp_path / "file").write_text("x")
    if cache == "under-a-file":
        folder = tmp_path / "file" / "cache"
    else:
        folder = tmp_path / "cache"
        folder.symlink_to(tmp_path / "nowhere" / "cache")
    monkeypatch.setenv("EDGETL_CACHE", str(folder))
    refused(["verify", str(archive)], "cannot use the bundle cache", tmp_path)


@pytest.mark.parametrize("value", ["lots", [0.5, 1.0], {"x": 1}, True])
def test_a_task_metric_the_bundle_brings_for_the_workstation_is_a_number(bundle_file, tmp_path, value):
    """The workstation's accuracy keeps fields the bundle format does not name; one named after a task
    metric (``agreement``) is what a device without labelled images prints for that metric's goal."""
    root = tmp_path / "b"
    extract_archive(bundle_file, root)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["target"] = {"name": "pi", "runtime": "onnxruntime", "budgets": {"goals": {"agreement": {"min": 0.9}}}}
    manifest["workstation"] = {"accuracy": {"top1": 0.9, "n": 12, "agreement": value}}
    (root / MANIFEST).write_text(json.dumps(manifest))
    for command in (["bench", str(root), "--iterations", "3"], ["verify", str(root)]):
        refused(command, "field workstation.accuracy: agreement must be a finite number", tmp_path)


@pytest.mark.parametrize("command", ["verify", "predict", "bench"])
def test_a_model_whose_inputs_are_not_the_manifest_s_is_one_line(bundle_file, tmp_path, command):
    """The manifest says `input`; the (re-hashed) model file takes `pixels`: the session refuses the feeds."""
    import onnx

    root = tmp_path / "b"
    extract_archive(bundle_file, root)
    manifest = json.loads((root / MANIFEST).read_text())
    model_path = root / manifest["model"]["path"]
    model = onnx.load(model_path)
    for tensor in model.graph.input:
        tensor.name = tensor.name.replace("input", "pixels")
    for node in model.graph.node:
        node.input[:] = [n.replace("input", "pixels") if n == "input" else n for n in node.input]
    onnx.save(model, model_path)
    manifest["files"] = file_entries(root)
    (root / MANIFEST).write_text(json.dumps(manifest))
    image = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    args = {"verify": [], "predict": [str(image)], "bench": ["--iterations", "3"]}[command]
    refused([command, str(root), *args], "['pixels']", tmp_path / "b")
