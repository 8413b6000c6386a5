"""Typed run records: every manifest section is a model, read and written whole; one BenchSettings."""

from __future__ import annotations

import inspect
import json
import shutil

import pytest
from click.testing import CliRunner

from edgetl.adapt.train import TrainRecord
from edgetl.bench.run import BenchDocument, DeviceBench
from edgetl.bench.settings import BenchSettings
from edgetl.bundle.create import BundleRecord
from edgetl.cli import cli
from edgetl.compiler import CompiledEntry
from edgetl.errors import ConfigError
from edgetl.export.onnx import ExportRecord
from edgetl.rundir import RunDir

pytest.importorskip("onnxruntime")

RECORDS = (TrainRecord, ExportRecord)
KEYED = (CompiledEntry, DeviceBench, BundleRecord)


@pytest.fixture(scope="module")
def full_run(tiny_run, tmp_path_factory) -> RunDir:
    """tiny_run compiled (ONNX Runtime fp32), benched on "ci" and bundled: every section written."""
    from edgetl.bench.run import bench
    from edgetl.bundle.create import create_bundle
    from edgetl.compiler import compile as compile_run

    dest = tmp_path_factory.mktemp("records") / "run"
    shutil.copytree(tiny_run.path, dest)
    compile_run(dest, ["onnxruntime"], ["fp32"], progress=False)
    bench(dest, device_name="ci", threads=1, iterations=5, isolate=False)
    create_bundle(dest, "onnxruntime", "fp32")
    return RunDir.open(dest)


def _copy(run: RunDir, tmp_path) -> RunDir:
    shutil.copytree(run.path, tmp_path / "run")
    return RunDir.open(tmp_path / "run")


def test_every_section_of_a_real_manifest_round_trips_through_its_record(full_run):
    manifest = full_run.manifest
    for model in RECORDS:
        record = full_run.section(model)
        assert manifest[model.SECTION]["schema"] == model.VERSION
        assert record.dump() == manifest[model.SECTION], model.SECTION
    for model in KEYED:
        entries = full_run.entries(model)
        assert entries and set(entries) == set(manifest[model.SECTION]), model.SECTION
        for key, record in entries.items():
            assert record.dump() == manifest[model.SECTION][key], (model.SECTION, key)
    assert full_run.compiled_entry("onnxruntime/fp32").accuracy.n == full_run.section(TrainRecord).dataset.val_images
    documents = sorted((full_run.path / "bench").glob("*/*@ci.json"))
    assert len(documents) == 2  # the PyTorch reference and the artifact
    for path in documents:
        assert BenchDocument.read(path).dump() == json.loads(path.read_text())


def test_a_manifest_from_before_record_versions_still_loads(full_run, tmp_path):
    run = _copy(full_run, tmp_path)
    with run.editing() as manifest:  # what this version wrote before sections carried "schema"
        for model in RECORDS:
            manifest[model.SECTION].pop("schema")
        for model in KEYED:
            for entry in manifest[model.SECTION].values():
                entry.pop("schema")
    before = run.manifest
    assert run.section(TrainRecord).fields() == before["train"]
    assert run.entries(CompiledEntry)["onnxruntime/fp32"].fields() == before["compiled"]["onnxruntime/fp32"]
    # The bundle made from the same artifact is still current: nothing is rebuilt or re-shipped.
    from edgetl.bundle.create import up_to_date

    assert up_to_date(run, "onnxruntime", "fp32") == run.path / "bundles" / "onnxruntime-fp32.tar.gz"


@pytest.mark.parametrize(
    ("edit", "argv", "message"),
    [
        (lambda m: m["train"].update(num_classes="many"), ["compile", "{run}", "--target", "onnxruntime"],
         "section train field 'num_classes'"),
        (lambda m: m["export"].update(schema=99), ["compile", "{run}", "--target", "onnxruntime"],
         "section export field 'schema': schema 99 is newer than this edgetl reads (1)"),
        (lambda m: m["compiled"]["onnxruntime/fp32"].pop("files"), ["bench", "{run}", "--device", "ci"],
         "section compiled['onnxruntime/fp32'] field 'files'"),
        (lambda m: m.update(compiled=[1]), ["bench", "{run}"], "section 'compiled' must map keys to entries"),
        (lambda m: m["bundles"]["onnxruntime/fp32"].update(release="soon"), ["report", "{run}"],
         "section bundles['onnxruntime/fp32'] field 'release'"),
        # a key edited to hold a newline and an escape sequence is shown escaped, on the one line
        (lambda m: m["bench"]["ci"]["results"].update({"x\n\x1b[2Jerror: fake": {"p90_ms": "fast"}}), ["report", "{run}"],
         "field 'results.'x\\n\\x1b[2Jerror: fake'.p90_ms'"),
        (lambda m: m["compiled"].update({"k" * 10_000: {}}), ["report", "{run}"], "section compiled['kkkkkkk"),
    ],
)
def test_a_malformed_section_is_one_line_and_nothing_is_written(full_run, tmp_path, edit, argv, message):
    run = _copy(full_run, tmp_path)
    with run.editing() as manifest:
        edit(manifest)
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    result = CliRunner().invoke(cli, [a.replace("{run}", str(run.path)) for a in argv])
    assert result.exit_code == 2, result.output
    assert message in result.output and str(run.path / "manifest.json") in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    after = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    assert after == before


def test_set_record_refuses_a_keyed_section_without_its_key(tmp_path):
    run = RunDir.create(tmp_path / "run")
    with pytest.raises(TypeError):
        run.set_record(BundleRecord(path="b", sha256="s", size_bytes=1, compiled="k", precision="fp32",
                                    runtime="onnxruntime", name="n", release=1, inputs="i"))


# -- BenchSettings ---------------------------------------------------------------------------------
def test_bench_defaults_live_in_bench_settings_only():
    from edgetl.bench.run import bench as bench_run
    from edgetl.bundle import remote
    from edgetl.bundle.runner import bench as bench_bundle
    from edgetl.pipeline import DeployConfig

    defaults = BenchSettings()
    options = {p.name: p for p in cli.commands["bench"].params}
    assert options["batches"].default == ",".join(map(str, defaults.batches))
    assert options["iterations"].default == defaults.iterations
    deploy_options = {p.name: p for p in cli.commands["deploy"].params}
    assert f"default {defaults.iterations}" in deploy_options["iterations"].help
    assert DeployConfig(data="images").bench_settings() == defaults
    assert remote.BenchSettings is BenchSettings
    for function in (bench_run, bench_bundle):  # no literal default repeated: None means BenchSettings'
        parameters = inspect.signature(function).parameters
        for name in ("batches", "threads", "iterations", "duration_s"):
            assert parameters[name].default is None, (function.__module__, name)
    assert defaults.record() == {"batches": [1], "threads": None, "iterations": 200, "duration_s": None,
                                 "warmup_iters": 50, "warmup_s": 0.2, "isolated": True}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batches": (0,)}, "--batch 0: batch sizes must be integers >= 1, e.g. --batch 1,8"),
        ({"batches": (1, -2)}, "--batch 1,-2: batch sizes must be integers >= 1"),
        ({"batches": ()}, "--batch : batch sizes must be integers >= 1"),
        ({"threads": 0}, "--threads 0: must be from 1 to 1024"),
        ({"threads": 10**9}, "--threads 1000000000: must be from 1 to 1024"),
        ({"duration_s": float("inf")}, "--duration inf: Input should be a finite number"),
        ({"duration_s": float("nan")}, "--duration nan: Input should be a finite number"),
        ({"warmup_s": float("inf")}, "--warmup-s inf: Input should be a finite number"),
        ({"iterations": 0}, "--iterations 0: must be from 1 to 10,000,000 (200 or more for a stable p99)"),
        ({"iterations": 10**30}, "--iterations 1000000000000000000000000000000: must be from 1 to 10,000,000"),
        ({"duration_s": 0.0}, "--duration 0.0: must be > 0 seconds"),
        ({"iterations": "many"}, "--iterations many: Input should be a valid integer"),
    ],
)
def test_a_bad_bench_setting_is_one_line_naming_the_option(values, message):
    with pytest.raises(ConfigError) as err:
        BenchSettings.parse(**values)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_bench_settings_parse_layers_values_over_a_base():
    base = BenchSettings.parse(batches=(1, 8, 1), iterations=50)
    assert base.batches == (1, 8)  # a batch named twice is measured once
    assert BenchSettings.parse(base, threads=2, iterations=None) == base.model_copy(update={"threads": 2})
    assert base.argv() == ["--batch", "1,8", "--iterations", "50"]
    assert BenchSettings.parse(duration_s=1.5).argv() == ["--batch", "1", "--duration", "1.5"]


def _outside(run: RunDir, how: str) -> None:
    """Point the fp32 artifact (or a record's path) at a file beside the run, its sha256 recorded: what
    a hand-edited manifest can do to make a stage read, load or pack a file that is not the run's."""
    import hashlib

    secret = run.path.parent / "secret.onnx"
    secret.write_bytes((run.path / run.compiled_entry("onnxruntime/fp32").path).read_bytes())
    with run.editing() as manifest:
        entry = manifest["compiled"]["onnxruntime/fp32"]
        if how == "symlink":  # a path that looks inside the run but leads out of it
            (run.path / entry["path"]).unlink()
            (run.path / entry["path"]).symlink_to(secret)
            return
        rel = {"dotdot": "../secret.onnx", "absolute": str(secret)}.get(how, entry["path"])
        manifest["artifacts"][rel] = hashlib.sha256(secret.read_bytes()).hexdigest()
        if how == "key":
            manifest["compiled"]["../../escape/fp32"] = manifest["compiled"].pop("onnxruntime/fp32")
        elif how == "bench-file":
            for device in manifest["bench"].values():
                for row in device["results"].values():
                    row["file"] = "../secret.onnx"
        else:
            entry.update(path=rel, files=[rel])


_OUTSIDE = [
    ("dotdot", "field 'path': '../secret.onnx' is not a path inside the run"),
    ("absolute", "is not a path inside the run (absolute or with '..')"),
    ("key", "section 'compiled': key '../../escape/fp32' is not a path inside the run"),
    ("bench-file", "'../secret.onnx' is not a path inside the run"),
    ("symlink", "which lies outside the run"),
]
_READERS = [["bench", "{run}", "--device", "ci", "--iterations", "3"], ["report", "{run}"],
            ["bundle", "{run}", "--target", "onnxruntime", "--precision", "fp32"]]


# The report reads records, not artifacts: a linked artifact is no path for it to refuse.
@pytest.mark.parametrize(("how", "message", "argv"), [
    (how, message, argv) for how, message in _OUTSIDE for argv in _READERS if (how, argv[0]) != ("symlink", "report")])
def test_a_record_naming_a_path_outside_the_run_is_refused(full_run, tmp_path, how, message, argv):
    """Nothing outside the run is read, loaded, packed into a bundle or written (bench/<key>...)."""
    run = _copy(full_run, tmp_path)
    _outside(run, how)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = CliRunner().invoke(cli, [a.replace("{run}", str(run.path)) for a in argv])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line and not line.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert message in lines[0] and str(run.path / "manifest.json") in lines[0], lines[0]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(("edit", "message"), [
    (lambda doc: doc.update(device={}), "field 'device': needs a name (text)"),
    (lambda doc: doc.update(device={"name": 5}), "field 'device': needs a name (text)"),
    (lambda doc: doc.update(reference_latency={"\x1b[2J\nx": 5}), "field 'reference_latency.'\\x1b[2J\\nx''"),
    (lambda doc: doc.update(schema="edgetl.bench/99"), "schema 'edgetl.bench/99', this edgetl reads edgetl.bench/1"),
])
def test_a_hand_edited_result_document_is_skipped_by_the_report_with_a_note(full_run, tmp_path, edit, message):
    """The report lists what it could not read, in one escaped line, and reports the rest."""
    run = _copy(full_run, tmp_path)
    (path,) = [p for p in sorted((run.path / "bench").glob("*/*@ci.json")) if "onnxruntime" in p.parts]
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    result = CliRunner().invoke(cli, ["report", str(run.path)])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    notes = json.loads((run.path / "report.json").read_text())["notes"]
    skipped = [n for n in notes if n.startswith("skipped bench/onnxruntime/fp32@ci.json")]
    assert len(skipped) == 1 and message in skipped[0] and "\x1b" not in skipped[0], notes
