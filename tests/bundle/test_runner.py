"""The device side: verify, predict and bench a bundle, and prove none of it needs torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl.backends import get_backend
from edgetl.bench.run import SCHEMA
from edgetl.bundle.create import choose_compiled, create_bundle, up_to_date
from edgetl.bundle.format import MANIFEST, extract_archive, file_entries, inspect_archive
from edgetl.bundle.runner import bench, open_bundle, predict, verify
from edgetl.data.preprocess import PreprocessSpec, load_image
from edgetl.errors import BundleError
from edgetl.rundir import RunDir

# What a device with only `pip install "edgetl[onnxruntime]"` lacks: blocked in a fresh interpreter.
NOT_ON_DEVICE = ["torch", "torchvision", "timm", "onnx", "onnxscript", "safetensors", "openvino", "nncf",
                 "tensorrt", "tensorrt_rtx", "sklearn", "matplotlib"]


@pytest.fixture(autouse=True)
def _no_trust_from_the_user(tmp_path, monkeypatch):
    """Trusted keys come from the tests (test_security.py), never from the user's config or shell."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("EDGETL_TRUSTED_KEYS", raising=False)
    monkeypatch.delenv("EDGETL_ALLOW_UNSIGNED", raising=False)


def device_cli(*args: str, block: list[str] = NOT_ON_DEVICE, env=None) -> subprocess.CompletedProcess:
    """``edgetl ARGS`` in a fresh interpreter where importing any of ``block`` fails."""
    code = (
        "import sys\n"
        f"for m in {block!r}: sys.modules[m] = None  # import m -> ImportError\n"
        "from edgetl.cli import main\n"
        f"sys.argv = ['edgetl', *{list(args)!r}]\n"
        "try:\n    main()\nfinally:\n"
        f"    leaked = [m for m in sys.modules if m.split('.')[0] in {block!r} and sys.modules[m] is not None]\n"
        "    assert not leaked, leaked\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def folder_copy(bundle_file: Path, dest: Path) -> Path:
    extract_archive(bundle_file, dest)
    return dest


def test_bundle_contents(bundle_run, bundle_file):
    manifest = inspect_archive(bundle_file)
    assert manifest["runtime"]["name"] == "onnxruntime" and manifest["precision"] == "int8"
    assert manifest["format"] == "edgetl.bundle/2" and manifest["task"] == "image-classification"
    assert manifest["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert manifest["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 3]}]
    assert manifest["golden"]["inputs"] == {"input": "golden/in.0.npy"}
    assert manifest["golden"]["expected"] == {"logits": "golden/out.0.npy"}
    assert manifest["labels"] == bundle_run.manifest["train"]["classes"]
    assert PreprocessSpec.from_dict(manifest["preprocess"]).input_size == (32, 32)
    assert set(manifest["files"]) == {"model/model.int8.onnx", "golden/in.0.npy", "golden/out.0.npy"}
    assert manifest["golden"]["tolerance"]["source"] == "same"
    assert isinstance(manifest["release"], int) and manifest["release"] > 1_700_000_000  # UTC seconds by default
    _, entry = choose_compiled(bundle_run, "onnxruntime", "int8")
    assert manifest["workstation"]["accuracy"] == entry["accuracy"]
    entry = bundle_run.manifest["bundles"]["onnxruntime/int8"]
    assert entry["precision"] == "int8" and entry["path"] == "bundles/onnxruntime-int8.tar.gz"
    assert entry["signed_by"] is None and entry["release"] == manifest["release"]
    assert up_to_date(bundle_run, "onnxruntime", "int8") == bundle_run.path / entry["path"]


def test_an_unsigned_bundle_is_not_up_to_date_for_a_signing_deploy(bundle_run, tmp_path):
    """deploy --sign remakes a bundle that exists unsigned (or signed by another key), then reuses it."""
    from edgetl.bundle import signing

    run = tmp_path / "run"
    shutil.copytree(bundle_run.path, run)
    run = RunDir.open(run)
    create_bundle(run.path, "onnxruntime", "int8")
    key, _ = signing.new_key_pair(tmp_path / "keys", "release")
    other, _ = signing.new_key_pair(tmp_path / "keys", "other")
    assert up_to_date(run, "onnxruntime", "int8") is not None
    assert up_to_date(run, "onnxruntime", "int8", sign=key) is None
    made = create_bundle(run.path, "onnxruntime", "int8", sign=key)
    assert up_to_date(run, "onnxruntime", "int8", sign=key) == made
    assert up_to_date(run, "onnxruntime", "int8", sign=other) is None


def test_golden_inputs_are_the_preprocessed_val_images(bundle_run, bundle_file):
    """Bundle inputs == numpy preprocessing of the real image files (what predict does on the device)."""
    bundle = open_bundle(bundle_file)
    inputs, _ = bundle.golden()
    split = json.loads((bundle_run.path / "train" / "split.json").read_text())
    files = [p for p, _ in split["val"]]
    from_files = np.stack([load_image(p, PreprocessSpec.from_dict(bundle.manifest["preprocess"])) for p in files])
    # every golden input is one of the validation images, bit for bit
    for x in inputs["input"]:
        assert np.min(np.abs(from_files - x).reshape(len(files), -1).max(1)) == 0.0


def test_verify_passes(bundle_file, tmp_path):
    result = verify(bundle_file)
    assert result["ok"] and result["golden_samples"] == 8 and result["top1_agreement"] == 1.0
    assert verify(folder_copy(bundle_file, tmp_path / "b"))["ok"]  # an extracted folder works too


def test_verify_names_the_golden_sample_that_differs(bundle_file, tmp_path):
    root = folder_copy(bundle_file, tmp_path / "b")
    expected = np.load(root / "golden" / "out.0.npy")
    expected[5, 1] += 3.0
    np.save(root / "golden" / "out.0.npy", expected)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"] = file_entries(root)  # re-signed: the hashes pass, the outputs do not
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"golden sample 5 .*output 'logits' for '.*'.*golden/out.0.npy says"):
        verify(root)


def test_verify_refuses_tampered_model(bundle_file, tmp_path):
    root = folder_copy(bundle_file, tmp_path / "b")
    model = root / "model" / "model.int8.onnx"
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model/model.int8.onnx does not match its sha256"):
        verify(root)


def test_verify_refuses_pickled_golden_arrays(bundle_file, tmp_path):
    root = folder_copy(bundle_file, tmp_path / "b")
    np.save(root / "golden" / "in.0.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"] = file_entries(root)
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not a plain float32 .npy array"):
        verify(root)


def test_runtime_too_old(bundle_file, tmp_path):
    root = folder_copy(bundle_file, tmp_path / "b")
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["runtime"]["min_version"] = {"onnxruntime": "99.0"}
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="needs onnxruntime >= 99.0"):
        verify(root)


@pytest.mark.parametrize("minimums", [None, {}, {"tensorrt": "10.0"}])
def test_a_bundle_without_a_minimum_for_this_runtime_runs(bundle_file, tmp_path, minimums):
    """No minimum version for the runtime found here (absent, empty, only another flavour's): none is
    enforced, the golden outputs still decide, and no KeyError escapes."""
    from click.testing import CliRunner

    from edgetl.cli import cli

    root = folder_copy(bundle_file, tmp_path / "b")
    manifest = json.loads((root / MANIFEST).read_text())
    if minimums is None:
        del manifest["runtime"]["min_version"]
    else:
        manifest["runtime"]["min_version"] = minimums
    (root / MANIFEST).write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["verify", str(root), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["ok"]


@pytest.mark.parametrize("field", ["runtime", "task"])
def test_a_plugin_that_is_not_installed_is_named_once_and_not_blamed_on_the_bundle(bundle_file, tmp_path, field):
    """A bundle of a plugin's runtime or task on a machine without the plugin: install it, not rebuild."""
    from click.testing import CliRunner

    from edgetl.cli import cli

    root = folder_copy(bundle_file, tmp_path / "b")
    manifest = json.loads((root / MANIFEST).read_text())
    if field == "runtime":  # as the plugin's bundle has it: the runtime, and the profile naming it
        manifest["runtime"]["name"] = manifest["target"]["runtime"] = "ortplug"
    else:
        manifest["task"] = "text-plug"
    (root / MANIFEST).write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["verify", str(root)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "needs the package that registers it installed here" in result.output
    assert "rebuild" not in result.output and "more)" not in result.output, result.output


_FLAVOURLESS = """from tests.backends.plugin.ortwrap_backend import OrtWrapBackend


class Flavourless(OrtWrapBackend):
    name = "ortbare"
    extra = "ortbare-extra"
    min_versions = {}  # a plugin that states no minimum for its runtime
"""


def test_a_plugin_without_minimum_versions_bundles_with_its_own_extra(copy_run, tmp_path):
    """Bundle ``runtime.extra`` is the backend's pip extra (not its name, not onnxruntime's), and a
    backend whose ``min_versions`` lacks its flavour bundles and verifies: no KeyError anywhere."""
    from click.testing import CliRunner

    from edgetl.cli import cli
    from tests.backends.plugin import registered

    site = tmp_path / "site"
    (site / "ortbare_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "ortbare_backend.py").write_text(_FLAVOURLESS)
    (site / "ortbare_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: ortbare-plugin\n"
                                                                     "Version: 0.1\n")
    (site / "ortbare_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[edgetl.backends]\nortbare = ortbare_backend:Flavourless\n")
    run = copy_run()
    with registered(site):
        for args in (["compile", str(run.path), "--target", "ortbare", "--precision", "fp32"],
                     ["bundle", str(run.path), "--target", "ortbare"]):
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0, result.output
        bundle = run.path / "bundles" / "ortbare-fp32.tar.gz"
        assert inspect_archive(bundle)["runtime"] == {
            "name": "ortbare", "extra": "ortbare-extra", "min_version": {},
            "built_with": RunDir.open(run.path).manifest["compiled"]["ortbare/fp32"]["versions"]["ortbare"]}
        result = CliRunner().invoke(cli, ["verify", str(bundle), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["ok"]


def test_predict_matches_the_workstation(bundle_run, bundle_file, tmp_path):
    """Same labels and scores as ONNX Runtime running the run's artifact on the same images."""
    split = json.loads((bundle_run.path / "train" / "split.json").read_text())
    folder = tmp_path / "photos"
    for i, (path, _) in enumerate(split["val"]):
        (folder / f"sub{i % 2}").mkdir(parents=True, exist_ok=True)  # a folder is searched recursively
        shutil.copyfile(path, folder / f"sub{i % 2}" / f"{i}{Path(path).suffix}")
    results = predict(bundle_file, folder, top=2)
    assert len(results) == len(split["val"])
    spec = PreprocessSpec.from_dict(bundle_run.manifest["train"]["preprocess"])
    classes = bundle_run.manifest["train"]["classes"]
    _, entry = choose_compiled(bundle_run, "onnxruntime", "int8")
    with get_backend("onnxruntime").load(bundle_run.path / entry["path"], threads=1) as session:
        for r in results:
            logits = session.run({"input": load_image(r["image"], spec)[None]})["logits"][0]
            assert r["top"][0]["label"] == classes[int(logits.argmax())]
            assert len(r["top"]) == 2 and r["top"][0]["score"] >= r["top"][1]["score"]
    one = predict(bundle_file, results[0]["image"], top=5)
    assert len(one) == 1 and len(one[0]["top"]) == 3  # capped at the number of classes
    assert abs(sum(t["score"] for t in one[0]["top"]) - 1) < 1e-5


def test_predict_takes_several_images_and_folders(bundle_run, bundle_file, tmp_path):
    """`edgetl predict BUNDLE *.jpg`: every image (and folder) named, one row each, in the order given."""
    from click.testing import CliRunner

    from edgetl.cli import cli

    split = json.loads((bundle_run.path / "train" / "split.json").read_text())
    sources = [path for path, _ in split["val"][:3]]
    first, second, third = (tmp_path / f"{name}{Path(src).suffix}" for name, src in zip("bac", sources, strict=True))
    for dest, src in zip((first, second, third), sources, strict=True):
        shutil.copyfile(src, dest)
    folder = tmp_path / "more"
    folder.mkdir()
    third.rename(folder / third.name)
    rows = predict(bundle_file, [first, folder, second], top=1)
    assert [Path(r["image"]).name for r in rows] == [first.name, third.name, second.name]
    assert all(len(r["top"]) == 1 and "error" not in r for r in rows)

    result = CliRunner().invoke(cli, ["predict", str(bundle_file), str(first), str(second), "--json"])
    assert result.exit_code == 0, result.output
    assert [Path(r["image"]).name for r in json.loads(result.output)] == [first.name, second.name]
    missing = CliRunner().invoke(cli, ["predict", str(bundle_file), str(first), str(tmp_path / "nope.jpg")])
    assert missing.exit_code == 2 and missing.output.count("\n") == 1 and "nope.jpg does not exist" in missing.output


def test_bench_uses_the_bench_schema(bundle_file):
    doc = bench(bundle_file, batches=[1, 2], iterations=20)
    assert doc["schema"] == SCHEMA
    assert [row["batch"] for row in doc["latency"]] == [1, 2]
    assert doc["latency"][0]["p90_ms"] >= doc["latency"][0]["p50_ms"] > 0
    assert doc["artifact"]["runtime"] == "onnxruntime" and doc["artifact"]["precision"] == "int8"
    assert doc["golden"]["top1_agreement"] == 1.0
    assert doc["device"]["cpu"] and doc["load"]["load_ms"] > 0


def test_a_bad_batch_from_python_is_the_clis_one_line_error(bundle_file):
    from edgetl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--batch 8: Input should be a valid tuple"):  # not a TypeError
        bench(bundle_file, batches=8)


def test_archive_cache_is_reused_and_repaired(bundle_file):
    first = open_bundle(bundle_file)
    assert open_bundle(bundle_file).root == first.root
    (first.root / "golden" / "in.0.npy").write_bytes(b"damaged")
    assert verify(bundle_file)["ok"]  # the damaged cache entry is extracted again


def test_archives_are_extracted_under_the_cache_root(bundle_file, tmp_path, monkeypatch):
    """XDG_CACHE_HOME moves the cache when EDGETL_CACHE is not set; EDGETL_CACHE wins when it is."""
    monkeypatch.delenv("EDGETL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert open_bundle(bundle_file).root.parent == tmp_path / "xdg" / "edgetl" / "bundles"
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "mine"))
    assert open_bundle(bundle_file).root.parent == tmp_path / "mine" / "bundles"


def test_choosing_the_artifact(bundle_run):
    assert choose_compiled(bundle_run, "onnxruntime")[0] == "onnxruntime/int8"  # a bare runtime: int8, as compile
    with pytest.raises(BundleError, match="no fp16 artifact"):
        choose_compiled(bundle_run, "onnxruntime", "fp16")
    with pytest.raises(BundleError, match="no artifact compiled for target 'jetson'.*edgetl compile"):
        create_bundle(bundle_run.path, "jetson")


def test_a_typo_of_a_compiled_target_is_answered_with_the_compiled_one(bundle_run):
    from click.testing import CliRunner

    from edgetl.cli import cli

    bundles = sorted((bundle_run.path / "bundles").glob("*")) if (bundle_run.path / "bundles").exists() else []
    result = CliRunner().invoke(cli, ["bundle", str(bundle_run.path), "--target", "onnxruntimee"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: {bundle_run.path} has no artifact compiled for target 'onnxruntimee' (compiled: onnxruntime): "
        "did you mean 'onnxruntime'?"]
    now = sorted((bundle_run.path / "bundles").glob("*")) if (bundle_run.path / "bundles").exists() else []
    assert now == bundles


def test_device_without_torch_verifies_predicts_and_benches(bundle_file, tmp_path):
    """A fresh interpreter that cannot import torch, timm, onnx, openvino...: the base install + onnxruntime."""
    image = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(np.full((40, 50, 3), (200, 30, 30), np.uint8)).save(image)
    out = device_cli("verify", str(bundle_file))
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and "(unsigned)" in out.stdout
    out = device_cli("predict", str(bundle_file), str(image), "--top", "2", "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)[0]["top"]) == 2
    out = device_cli("bench", str(bundle_file), "--iterations", "10", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["schema"] == SCHEMA


def test_missing_runtime_names_the_extra(bundle_file):
    out = device_cli("verify", str(bundle_file), block=[*NOT_ON_DEVICE, "onnxruntime"])
    assert out.returncode == 2
    assert 'pip install "edgetl[onnxruntime]"' in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_bundle_and_verify(bundle_run, tmp_path):
    from click.testing import CliRunner

    from edgetl.cli import cli

    run = tmp_path / "run"
    shutil.copytree(bundle_run.path, run)
    result = CliRunner().invoke(cli, ["bundle", str(run), "--target", "onnxruntime", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    bundle = run / "bundles" / "onnxruntime-fp32.tar.gz"
    assert inspect_archive(bundle)["precision"] == "fp32"
    result = CliRunner().invoke(cli, ["verify", str(bundle), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["ok"]
    result = CliRunner().invoke(cli, ["bundle", str(run), "--target", "onnxruntime"])
    assert result.exit_code == 0 and "onnxruntime-int8.tar.gz" in result.output
    assert inspect_archive(bundle)["precision"] == "fp32"  # two precisions, two files
    assert set(RunDir.open(run).manifest["bundles"]) >= {"onnxruntime/fp32", "onnxruntime/int8"}
    result = CliRunner().invoke(cli, ["build", str(bundle)])
    assert result.exit_code == 2 and "no engine to build" in result.output


# -- bad images, bad arguments, bad settings ----------------------------------------------------------
def photos_with_bad_ones(folder: Path) -> dict[str, str]:
    """A folder of two good images and every kind of bad one; name -> what predict must say about it."""
    from PIL import Image

    folder.mkdir()
    for name, colour in (("a-good.png", (200, 30, 30)), ("z-good.jpg", (30, 200, 30))):
        Image.fromarray(np.full((40, 50, 3), colour, np.uint8)).save(folder / name)
    whole = (folder / "a-good.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    (folder / "not-an-image.bmp").write_text("hello, I am text\n")
    os.mkfifo(folder / "fifo.png")  # opening it would block forever: it must never be opened
    return {"truncated.png": "cannot read image", "corrupt.jpg": "cannot read image",
            "not-an-image.bmp": "cannot read image", "fifo.png": "a FIFO, not a regular file"}


def test_predict_reports_bad_images_in_their_rows_and_goes_on(bundle_file, tmp_path):
    folder = tmp_path / "photos"
    bad = photos_with_bad_ones(folder)
    # a fresh process with a timeout: if the FIFO were opened, this would hang instead of failing
    out = device_cli("predict", str(bundle_file), str(folder), "--json")
    assert out.returncode == 2, out.stderr
    rows = {Path(r["image"]).name: r for r in json.loads(out.stdout)}
    assert sorted(rows) == sorted([*bad, "a-good.png", "z-good.jpg"])
    for name, said in bad.items():
        assert rows[name]["top"] == [] and said in rows[name]["error"], rows[name]
    assert all(rows[n]["top"] and "error" not in rows[n] for n in ("a-good.png", "z-good.jpg"))
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {len(bad)} of {len(rows)} image(s) could not be read")

    out = device_cli("predict", str(bundle_file), str(folder), env={**os.environ, "COLUMNS": "500"})  # an error column
    assert out.returncode == 2 and "a FIFO, not a regular file" in out.stdout and "Traceback" not in out.stderr
    out = device_cli("predict", str(bundle_file), str(folder / "fifo.png"), "--json")  # the FIFO alone
    assert out.returncode == 2 and "error: 1 of 1 image(s) could not be read" in out.stderr


def test_predict_with_swapped_arguments_says_the_bundle_comes_first(bundle_file, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from edgetl.cli import cli

    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    result = CliRunner().invoke(cli, ["predict", str(photo), str(bundle_file)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{photo} is an image and {bundle_file} a bundle: the bundle comes first" in result.output
    assert "copy it again" not in result.output
    result = CliRunner().invoke(cli, ["predict", str(photo), str(tmp_path)])  # an image, then a folder
    assert result.exit_code == 2 and f"{photo} is an image, not a bundle: the bundle comes first" in result.output
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "--batch 0: batch sizes must be integers >= 1"),
    (["--batch", "1,-2"], "--batch 1,-2: batch sizes must be integers >= 1"),
    (["--iterations", "0"], "--iterations 0: must be from 1 to 10,000,000"),
    (["--duration", "0"], "--duration 0.0: must be > 0 seconds"),
    (["--duration", "-1"], "--duration -1.0: must be > 0 seconds"),
    (["--threads", "0"], "--threads 0: must be from 1 to 1024"),
    (["--threads", "100000"], "--threads 100000: must be from 1 to 1024"),
    (["--duration", "inf"], "--duration inf: Input should be a finite number"),
    (["--duration", "nan"], "--duration nan: Input should be a finite number"),
])
def test_bench_bundle_settings_are_checked(bundle_file, args, message):
    from click.testing import CliRunner

    from edgetl.cli import cli

    for where in ([], ["--remote", "ssh://127.0.0.1:1/x"]):  # on a bundle here and on a device: before any work
        result = CliRunner().invoke(cli, ["bench", str(bundle_file), *where, *args])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: {message}"), result.output


def test_bench_bundle_with_the_shortest_duration(bundle_file):
    """Time alone ends the run: however short, at least a few runs are timed and the document is whole."""
    doc = bench(bundle_file, duration_s=1e-9)
    assert doc["latency"][0]["iterations"] >= 1 and doc["latency"][0]["p50_ms"] > 0


def test_names_too_long_for_the_file_system_are_one_line(bundle_file):
    from click.testing import CliRunner

    from edgetl.cli import cli

    long = "b" * 3000
    for args, message in ((["predict", long, "x.jpg"], f"bundle {long} does not exist"),
                          (["predict", str(bundle_file), long + ".jpg"], f"image {long}.jpg does not exist")):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
