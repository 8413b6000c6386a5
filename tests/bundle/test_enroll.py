"""Prototype-head bundles (`edgetl bundle --head prototype`) and `edgetl enroll`, on the tiny digits run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.bundle import prototype
from edgetl.bundle.create import create_bundle
from edgetl.bundle.format import MANIFEST, extract_archive, file_entries, inspect_archive
from edgetl.bundle.manifest import npy_size
from edgetl.bundle.runner import open_bundle, predict, verify
from edgetl.cli import cli
from edgetl.errors import BundleError, DataError, EdgetlError
from edgetl.rundir import RunDir
from tests.bundle.test_runner import NOT_ON_DEVICE, device_cli

RELEASE = 100


@pytest.fixture(autouse=True)
def _no_trust_from_the_user(tmp_path, monkeypatch):
    """Trusted keys come from the tests, never from the user's config or shell."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("EDGETL_TRUSTED_KEYS", raising=False)
    monkeypatch.delenv("EDGETL_ALLOW_UNSIGNED", raising=False)


@pytest.fixture(scope="module")
def proto_run(tiny_run, tmp_path_factory) -> RunDir:
    """The tiny run (digits 0-2) with an onnxruntime fp32 prototype-head bundle."""
    dest = tmp_path_factory.mktemp("proto-run") / "tiny"
    shutil.copytree(tiny_run.path, dest)
    create_bundle(dest, "onnxruntime", "fp32", head="prototype", release=RELEASE)
    return RunDir.open(dest)


@pytest.fixture(scope="module")
def proto_source(proto_run) -> Path:
    return proto_run.path / "bundles" / "onnxruntime-prototype.tar.gz"


@pytest.fixture
def proto_bundle(proto_source, tmp_path) -> Path:
    """A private copy of the prototype bundle (enroll writes next to it)."""
    dest = tmp_path / "bundles" / proto_source.name
    dest.parent.mkdir()
    shutil.copyfile(proto_source, dest)
    return dest


@pytest.fixture(scope="module")
def threes(tmp_path_factory) -> Path:
    """Six real scans of the digit 3: a class the run never saw."""
    from edgetl.data.demo import write_digits

    return write_digits(tmp_path_factory.mktemp("digits4") / "d", per_class=6, classes=4) / "3"


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


# -- the head, numpy only -----------------------------------------------------------------------------
def test_head_is_scaled_cosine_to_normalised_class_means():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 8)) + 3, rng.normal(size=(5, 8)) - 3
    rows = prototype.class_prototypes(np.vstack([a, b]), np.array([0] * 4 + [1] * 5), 2)
    assert rows.dtype == np.float32 and prototype.problem(rows, 2, 8) is None
    mean_a = (a / np.linalg.norm(a, axis=1, keepdims=True)).mean(0)
    np.testing.assert_allclose(rows[0], mean_a / np.linalg.norm(mean_a), rtol=1e-6)
    got = prototype.logits(a * 7.0, rows, 16.0)  # the embedding's magnitude does not count
    want = 16.0 * (a / np.linalg.norm(a, axis=1, keepdims=True)) @ rows.T
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got.argmax(1).tolist() == [0] * 4
    assert "not finite" in prototype.problem(np.full((2, 8), np.nan, np.float32), 2, 8)
    assert "L2 norm 2.0000" in prototype.problem(rows * 2, 2, 8)
    assert "(3, 8)" in prototype.problem(rows, 3, 8)


@pytest.mark.parametrize("shape", [(3, 8), (1, 1280), (7, 16), (1000, 2048)])
def test_npy_size_is_what_numpy_writes(tmp_path, shape):
    np.save(tmp_path / "a.npy", np.zeros(shape, np.float32))
    assert (tmp_path / "a.npy").stat().st_size == npy_size(shape)


# -- the bundle -----------------------------------------------------------------------------------------
def test_prototype_bundle_is_an_embedding_model_with_a_head(proto_run, proto_source):
    manifest = inspect_archive(proto_source)
    dim = proto_run.manifest["export_embedding"]["dim"]
    assert manifest["slot"] == "prototype" and manifest["release"] == RELEASE
    assert manifest["outputs"] == [{"name": "embedding", "dtype": "float32", "shape": ["batch", dim]}]
    head = dict(manifest["head"])
    shots = head.pop("shots")
    assert head == {"kind": "prototype", "file": "head/prototypes.npy", "scale": prototype.DEFAULT_SCALE,
                    "output": "embedding", "enrolled": []}   # nothing enrolled yet
    assert sorted(shots) == manifest["labels"] == ["0", "1", "2"] and all(n > 1 for n in shots.values())
    assert "head/prototypes.npy" in manifest["files"]
    compiled = proto_run.manifest["compiled"]["onnxruntime/prototype"]
    assert compiled["slot"] == "prototype" and compiled["path"].startswith("compiled/onnxruntime/prototype/")
    assert 0.0 <= compiled["accuracy"]["top1"] <= 1.0 and compiled["accuracy"]["n"] > 0
    # the classifier's export is the one every other stage reads; the embedding has its own section
    assert proto_run.manifest["export"]["path"] == "export/model.onnx"
    assert proto_run.manifest["export_embedding"]["path"] == "export/embedding.onnx"
    assert set(proto_run.manifest["bundles"]) == {"onnxruntime/prototype"}
    result = verify(proto_source)
    assert result["ok"] and result["top1_agreement"] == 1.0
    bundle = open_bundle(proto_source)
    assert bundle.prototypes.shape == (3, dim)


def test_predict_val_and_bench_go_through_the_head(proto_source, digits_dir):
    rows = predict(proto_source, digits_dir / "1")
    assert all(r["top"][0]["label"] in ("0", "1", "2") for r in rows)
    assert np.mean([r["top"][0]["label"] == "1" for r in rows]) > 0.5
    result = invoke("val", proto_source, digits_dir, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"]["top1"] > 0.5
    result = invoke("bench", proto_source, "--iterations", "5", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["golden"]["top1_agreement"] == 1.0


def test_cli_bundle_head_prototype_and_the_classifier_stays(copy_run):
    run = copy_run()
    before = dict(run.manifest.get("compiled") or {})
    result = invoke("bundle", run.path, "--target", "onnxruntime", "--precision", "fp32", "--head", "prototype")
    assert result.exit_code == 0, result.output
    assert "prototype head" in result.output and "onnxruntime-prototype.tar.gz" in result.output
    after = RunDir.open(run.path).manifest["compiled"]
    assert {k: v for k, v in after.items() if k != "onnxruntime/prototype"} == before


def test_head_on_a_text_run_is_one_line(copy_run):
    run = copy_run()
    with run.editing() as manifest:
        manifest["train"]["task"] = "text-classification"
    result = invoke("bundle", run.path, "--target", "onnxruntime", "--head", "prototype")
    one_line_error(result, "is for image runs (--task image-classification)")
    assert not (run.path / "bundles").exists()


def test_head_on_a_run_with_task_heads_is_one_line(copy_run):
    run = copy_run()
    with run.editing() as manifest:
        manifest["train"]["heads"] = [{"name": "parity", "output": "logits_parity", "classes": ["even", "odd"]}]
    result = invoke("bundle", run.path, "--target", "onnxruntime", "--head", "prototype")
    one_line_error(result, "has --task-head heads: a prototype head replaces one classifier")
    assert not (run.path / "bundles").exists()


# -- a hostile head: one line each ---------------------------------------------------------------------
def _tampered(proto_source: Path, dest: Path, change) -> Path:
    """The bundle extracted to ``dest``, changed by ``change(folder, manifest)``, its hashes updated."""
    extract_archive(proto_source, dest)
    manifest = json.loads((dest / MANIFEST).read_text())
    change(dest, manifest)
    manifest["files"] = file_entries(dest)
    (dest / MANIFEST).write_text(json.dumps(manifest))
    return dest


def _rows(folder: Path) -> np.ndarray:
    return np.load(folder / "head" / "prototypes.npy")


def _save(folder: Path, rows: np.ndarray) -> None:
    np.save(folder / "head" / "prototypes.npy", rows, allow_pickle=False)


HOSTILE = {
    "wrong shape": (lambda f, m: _save(f, np.vstack([_rows(f), _rows(f)[:1]])),
                    "head/prototypes.npy holds"),
    "NaN": (lambda f, m: _save(f, np.where(np.eye(*_rows(f).shape, dtype=bool), np.nan, _rows(f)).astype(np.float32)),
            "holds values that are not finite"),
    "not normalised": (lambda f, m: _save(f, _rows(f) * 2), "row 0 has L2 norm 2.0000"),
    "missing file": (lambda f, m: (f / "head" / "prototypes.npy").unlink(),
                     "'head/prototypes.npy' is used but not listed in files"),
    "extra file": (lambda f, m: (f / "head" / "more.npy").write_bytes(b"x"), "'head/more.npy' is not the head's file"),
    "non-image task": (lambda f, m: m.update(task="text-classification"),
                       "a prototype head is for image runs (--task image-classification)"),
    "scale out of range": (lambda f, m: m["head"].update(scale=0.5), "field head.scale"),
    "shots of other labels": (lambda f, m: m["head"]["shots"].update({"cat": 3}), "head.shots must name every label"),
    "enrolled label not in labels": (lambda f, m: m["head"].update(enrolled=["cat"]),
                                     "head.enrolled must name labels of the bundle, each once"),
    "head without slot": (lambda f, m: m.pop("slot"), "must have slot 'prototype'"),
    "slot without head": (lambda f, m: m.pop("head"), "without a head"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_head_is_one_line(proto_source, tmp_path, case):
    change, message = HOSTILE[case]
    folder = _tampered(proto_source, tmp_path / "b", change)
    with pytest.raises(BundleError, match="^[^\n]*$") as exc:
        open_bundle(folder)
    assert message in str(exc.value)
    result = invoke("verify", folder)
    one_line_error(result, message)


# -- enroll ---------------------------------------------------------------------------------------------
def test_enroll_adds_a_class_that_verify_predict_and_val_use(proto_bundle, threes, digits_dir):
    before = proto_bundle.read_bytes()
    enrolled = sorted(threes.glob("*.png"))[:5]
    result = invoke("enroll", proto_bundle, "--label", "3", *enrolled)
    assert result.exit_code == 0, result.output
    name = inspect_archive(proto_bundle)["name"]
    new = proto_bundle.parent / f"{name}-r{RELEASE + 1}.tar.gz"
    assert "added '3' from 5 image(s)" in result.output and new.is_file()
    assert proto_bundle.read_bytes() == before  # the input is never changed
    manifest = inspect_archive(new)
    assert manifest["labels"] == ["0", "1", "2", "3"] and manifest["release"] == RELEASE + 1
    assert manifest["head"]["shots"]["3"] == 5
    assert verify(new)["ok"]
    rows = predict(new, [str(p) for p in sorted(threes.glob("*.png"))])
    assert sum(r["top"][0]["label"] == "3" for r in rows) >= 5
    old_rows = open_bundle(proto_bundle).prototypes
    np.testing.assert_array_equal(open_bundle(new).prototypes[:3], old_rows)  # the other classes are kept
    result = invoke("enroll", new, "--label", "3", threes, "--replace", "--json")
    assert result.exit_code == 0, result.output
    done = json.loads(result.output)
    assert done["replaced"] and done["images"] == 6 and done["classes"] == 4 and done["release"] == RELEASE + 2
    assert inspect_archive(done["path"])["head"]["shots"]["3"] == 6


def test_val_gives_no_drop_on_an_enrolled_class(proto_bundle, threes, digits_dir, tmp_path):
    # the workstation's FP32 top-1 was measured on 0-2: a drop of the enrolled 3 against it means nothing
    assert inspect_archive(proto_bundle)["head"]["enrolled"] == []
    new = tmp_path / "with3.tar.gz"
    assert invoke("enroll", proto_bundle, "--label", "3", *sorted(threes.glob("*.png"))[:2], "--out", new).exit_code == 0
    replaced = tmp_path / "with3-again.tar.gz"
    assert invoke("enroll", new, "--label", "3", threes, "--replace", "--out", replaced).exit_code == 0
    assert inspect_archive(replaced)["head"]["enrolled"] == ["3"]
    shown = tmp_path / "labelled"
    shutil.copytree(threes, shown / "3")
    result = invoke("val", replaced, shown)
    assert result.exit_code == 0, result.output
    assert "drop vs FP32" not in result.output and "3 enrolled on a device after" in result.output
    shutil.copytree(digits_dir / "1", tmp_path / "trained" / "1")
    trained = invoke("val", replaced, tmp_path / "trained")   # only a trained class: the drop is still given
    assert trained.exit_code == 0 and "drop vs FP32" in trained.output, trained.output


def test_enroll_without_torch(proto_bundle, threes, tmp_path):
    out = tmp_path / "enrolled.tar.gz"
    done = device_cli("enroll", str(proto_bundle), "--label", "three", str(threes), "--out", str(out))
    assert done.returncode == 0, done.stderr
    done = device_cli("verify", str(out))
    assert done.returncode == 0, done.stderr
    done = device_cli("predict", str(out), str(threes), "--json", block=NOT_ON_DEVICE)
    assert done.returncode == 0, done.stderr
    assert all(r["top"][0]["label"] == "three" for r in json.loads(done.stdout))


def test_enrolled_bundle_ships(proto_bundle, threes, sshd, tmp_path):
    from edgetl.bundle.ship import ship
    from tests.bundle.test_ship import EDGETL

    def ship_to_device(bundle: Path):
        return ship(bundle, sshd.url(str(tmp_path / "device")), remote_edgetl=EDGETL, ssh_options=sshd.options)

    first = ship_to_device(proto_bundle)
    assert first.verified == "golden"
    result = invoke("enroll", proto_bundle, "--label", "3", threes)
    assert result.exit_code == 0, result.output
    new = next(proto_bundle.parent.glob("*-r*.tar.gz"))
    second = ship_to_device(new)
    assert second.verified == "golden" and second.name == first.name
    with pytest.raises(EdgetlError, match="roll back"):  # the device now runs release + 1
        ship_to_device(proto_bundle)


def test_enroll_signed_bundle_needs_a_key(proto_run, threes, tmp_path):
    from edgetl.bundle import signing

    private, _ = signing.new_key_pair(tmp_path / "keys", "release")
    run = tmp_path / "run"
    shutil.copytree(proto_run.path, run)
    signed = tmp_path / "signed.tar.gz"
    shutil.copyfile(create_bundle(run, "onnxruntime", "prototype", sign=private, release=RELEASE), signed)
    result = invoke("enroll", signed, "--label", "3", threes)
    one_line_error(result, "would be unsigned", "--sign KEY")
    assert sorted(p.name for p in tmp_path.glob("*.tar.gz")) == ["signed.tar.gz"]
    result = invoke("enroll", signed, "--label", "3", threes, "--sign", private)
    assert result.exit_code == 0, result.output
    new = tmp_path / f"{inspect_archive(signed)['name']}-r{RELEASE + 1}.tar.gz"
    assert verify(new)["signature"].startswith(("unchecked:", "ed25519:"))
    result = invoke("enroll", signed, "--label", "4", threes, "--allow-unsigned", "--out", tmp_path / "u.tar.gz")
    assert result.exit_code == 0, result.output
    assert verify(tmp_path / "u.tar.gz")["signature"] == "unsigned"


def _folder_state(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("case", ["control character", "existing label", "replace unknown", "non-images",
                                  "corrupt image", "too many images", "out exists", "no head", "swapped prototypes",
                                  "out under a file", "out in a missing folder", "out not an archive name",
                                  "out a folder", "out in a folder that cannot be written"])
def test_enroll_refuses_bad_input_in_one_line(case, proto_bundle, bundle_file, threes, tmp_path):
    from PIL import Image

    args: list = ["--label", "3", threes]
    bundle = proto_bundle
    if case == "control character":
        args, message = ["--label", "new\x1b[31mclass", threes], "without control characters"
    elif case == "existing label":
        args, message = ["--label", "1", threes], "already has a class '1': pass --replace"
    elif case == "replace unknown":
        args, message = ["--label", "7", threes, "--replace"], "no class '7' to replace"
    elif case == "non-images":
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "notes.txt").write_text("hello")
        args, message = ["--label", "3", tmp_path / "docs"], "no images"
    elif case == "corrupt image":
        (tmp_path / "bad").mkdir()
        shutil.copy(next(threes.glob("*.png")), tmp_path / "bad" / "good.png")
        (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
        args, message = ["--label", "3", tmp_path / "bad"], "broken.png"
    elif case == "too many images":
        (tmp_path / "many").mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "many" / "0000.png")
        for i in range(1, 1001):
            (tmp_path / "many" / f"{i:04d}.png").hardlink_to(tmp_path / "many" / "0000.png")
        args, message = ["--label", "3", tmp_path / "many"], "1001 images given: enroll takes 1 to 1000"
    elif case == "out exists":
        (tmp_path / "taken.tar.gz").write_bytes(b"mine")
        args, message = [*args, "--out", tmp_path / "taken.tar.gz"], "already exists: enroll never overwrites"
    elif case == "out under a file":
        (tmp_path / "notes.txt").write_text("mine")
        args, message = [*args, "--out", tmp_path / "notes.txt" / "x.tar.gz"], "is not a folder"
    elif case == "out in a missing folder":  # enroll creates no folder the user did not make
        args, message = [*args, "--out", tmp_path / "typo" / "deep" / "x.tar.gz"], "is not a folder"
    elif case == "out not an archive name":  # predict, verify and ship would not take it for a bundle
        args, message = [*args, "--out", tmp_path / "x.zip"], "must end in .tar.gz"
    elif case == "out a folder":
        args, message = [*args, "--out", f"{tmp_path / 'newdir'}/"], "must end in .tar.gz"
    elif case == "out in a folder that cannot be written":  # /proc: not even root makes files there
        args, message = [*args, "--out", "/proc/x.tar.gz"], "cannot write /proc/x.tar.gz"
    elif case == "no head":
        bundle = tmp_path / "classifier" / "classifier.tar.gz"
        bundle.parent.mkdir()
        shutil.copyfile(bundle_file, bundle)
        message = "has no prototype head"
    else:  # an enrolled bundle whose prototypes were swapped afterwards (same size, other rows)
        assert invoke("enroll", proto_bundle, "--label", "3", threes, "--out", tmp_path / "e.tar.gz").exit_code == 0
        folder = tmp_path / "swapped" / "bundle"
        extract_archive(tmp_path / "e.tar.gz", folder)
        _save(folder, _rows(folder)[::-1].copy())
        bundle, message = folder, "head/prototypes.npy does not match its sha256"
    outside = lambda: [n for n in _folder_state(tmp_path) if n != "edgetl-cache"]  # noqa: E731 (the verify cache)
    state, around = _folder_state(bundle.parent), outside()
    result = invoke("enroll", bundle, *args)
    one_line_error(result, message)
    assert _folder_state(bundle.parent) == state  # nothing written next to the bundle
    assert outside() == around  # nor where --out pointed
    if case == "swapped prototypes":
        one_line_error(invoke("predict", bundle, threes), message)


def test_bench_and_report_of_a_run_with_a_prototype_artifact(proto_run, tmp_path):
    """The run's bench stage leaves the embedding artifact to its bundle's bench (through the head);
    the report's command for it is `--head prototype`, never `--precision prototype`."""
    from edgetl.bench.run import select
    from edgetl.compiler import CompiledEntry
    from edgetl.compiler import compile as compile_run
    from edgetl.report.decide import bundle_flag

    run = tmp_path / "run"
    shutil.copytree(proto_run.path, run)
    assert all(r["status"] != "failed" for r in compile_run(run, ["onnxruntime"], ["fp32"], progress=False))
    entries = RunDir.open(run).entries(CompiledEntry)
    assert set(entries) == {"onnxruntime/fp32", "onnxruntime/prototype"}
    assert select(entries, None) == select(entries, "onnxruntime") == ["onnxruntime/fp32"]
    assert bundle_flag("onnxruntime/prototype") == "--head prototype"
    result = invoke("report", run)
    assert result.exit_code == 0, result.output


def test_enroll_on_a_run_folder_says_how_to_make_a_bundle(proto_run, threes):
    result = invoke("enroll", proto_run.path, "--label", "3", threes)
    one_line_error(result, "is a run folder, not a bundle: edgetl bundle")


def test_int8_prototype_bundle_by_the_targets_default(copy_run, threes, tmp_path):
    """A bare runtime's default precision, int8: calibrated like the classifier, verified, enrolled."""
    run = copy_run()
    made = create_bundle(run.path, "onnxruntime", head="prototype", release=5)
    manifest = inspect_archive(made)
    assert manifest["precision"] == "int8" and manifest["golden"]["tolerance"]["precision"] == "int8"
    entry = RunDir.open(run.path).manifest["compiled"]["onnxruntime/prototype"]
    assert entry["precision"] == "int8" and entry["calibration"]
    assert verify(made)["ok"]
    result = invoke("enroll", made, "--label", "3", threes, "--out", tmp_path / "int8-enrolled.tar.gz")
    assert result.exit_code == 0, result.output
    assert verify(tmp_path / "int8-enrolled.tar.gz")["ok"]


@pytest.mark.parametrize("threads", ["0", "-1", "100000"])
@pytest.mark.parametrize("command", ["enroll", "predict", "verify", "val"])
def test_device_threads_are_bounded_before_the_bundle_is_read(command, threads, tmp_path):
    """ONNX Runtime makes every thread it is asked for (4000: a hang): --threads is 1..MAX_THREADS,
    one line before anything is opened or written."""
    from edgetl.config import MAX_THREADS

    bundle, image = tmp_path / "b.tar.gz", tmp_path / "x.png"
    args = {"enroll": [bundle, image, "--label", "x"], "predict": [bundle, image], "verify": [bundle],
            "val": [bundle, tmp_path]}[command]
    result = invoke(command, *args, "--threads", threads)
    one_line_error(result, f"--threads {threads}: must be from 1 to {MAX_THREADS}")
    assert sorted(tmp_path.iterdir()) == []


def test_enroll_never_overwrites_a_file_that_appears_while_it_runs(proto_bundle, threes, tmp_path, monkeypatch):
    """--out is free when enroll starts; another process writes it while the images are embedded
    (the slow part): enroll must refuse, not replace the other file."""
    from edgetl.bundle import enroll as enroll_module

    out = tmp_path / "new.tar.gz"
    embeddings = enroll_module._embeddings

    def racing(*args, **kwargs):
        out.write_bytes(b"theirs")
        return embeddings(*args, **kwargs)

    monkeypatch.setattr(enroll_module, "_embeddings", racing)
    result = invoke("enroll", proto_bundle, "--label", "3", threes, "--out", out)
    one_line_error(result, "already exists: enroll never overwrites")
    assert out.read_bytes() == b"theirs" and not list(tmp_path.glob(".enroll-*"))


def test_an_image_named_twice_is_enrolled_once(proto_bundle, threes, tmp_path):
    """A folder and a file in it (or one file twice, or through a link) is one image: the class's
    mean weighs it once and ``shots`` counts what was enrolled."""
    first = sorted(threes.glob("*.png"))[0]
    (tmp_path / "link.png").symlink_to(first)
    out = tmp_path / "once.tar.gz"
    result = invoke("enroll", proto_bundle, "--label", "3", threes, first, first, tmp_path / "link.png", "--out", out)
    assert result.exit_code == 0, result.output
    assert "from 6 image(s)" in result.output and inspect_archive(out)["head"]["shots"]["3"] == 6


@pytest.mark.parametrize("embeddings", [np.zeros((3, 8)), np.array([[1.0, 2.0], [-1.0, -2.0]]),
                                        np.array([[np.nan, 1.0]])], ids=["zero", "cancelling", "NaN"])
def test_images_without_a_direction_are_one_line_not_a_bad_row(embeddings):
    """All-zero, cancelling or non-finite embeddings have no mean direction: one DataError line, never
    a zero or NaN row that the written bundle's own check would then refuse on every device."""
    with pytest.raises(DataError, match="^[^\n]*no direction to enrol") as exc:
        prototype.enrol(embeddings)
    assert "\n" not in str(exc.value)
