"""edgetl train --from: adding classes to a trained run (edgetl/adapt/continual.py), on real digits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from edgetl.adapt import continual  # noqa: E402
from edgetl.adapt.options import TrainOptions  # noqa: E402
from edgetl.adapt.train import TrainRecord, train  # noqa: E402
from edgetl.cli import cli  # noqa: E402
from edgetl.rundir import RunDir  # noqa: E402

BACKBONE = "timm:test_efficientnet"


def _tiny(**options) -> TrainOptions:
    settings = {"pretrained": False, "image_size": 32, "mode": "finetune", "unfreeze": "all", "augment": False,
                "epochs": 3, "head_epochs": 10, "lr": 1e-2, "seed": 0, "transfer_check": False, **options}
    return TrainOptions(**settings)


def _classes(digits_dir, dest, names):
    dest.mkdir()
    for name in names:
        shutil.copytree(digits_dir / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def parent(digits_dir, tmp_path_factory) -> RunDir:
    """A run trained on digits 0 and 1 with the tiny settings (read-only for tests)."""
    root = tmp_path_factory.mktemp("continual")
    out = root / "parent"
    train(_classes(digits_dir, root / "old", "01"), _tiny(), out=out, backbone=BACKBONE)
    return RunDir.open(out)


@pytest.fixture(scope="module")
def new_data(digits_dir, tmp_path_factory):
    """Digit 2 only: the class the child adds."""
    return _classes(digits_dir, tmp_path_factory.mktemp("new") / "new", "2")


CHILD = {"mode": "finetune", "epochs": 2, "head_epochs": 10, "lr": 1e-2, "seed": 0, "unfreeze": "all",
         "augment": "off", "transfer_check": False}


@pytest.fixture(scope="module")
def child(parent, new_data, tmp_path_factory) -> tuple[RunDir, dict]:
    out = tmp_path_factory.mktemp("child") / "child"
    section = train(new_data, TrainOptions(**CHILD), out=out, from_run=parent.path, memory=5)
    return RunDir.open(out), section


def test_deploy_skips_an_unchanged_continual_training_and_sees_a_changed_one(parent, child, new_data):
    from edgetl.adapt.train import train_inputs_hash

    recorded = child[1]["inputs_hash"]
    assert train_inputs_hash(new_data, TrainOptions(**CHILD), from_run=parent.path, memory=5) == recorded
    assert train_inputs_hash(new_data, TrainOptions(**CHILD), from_run=parent.path, memory=6) != recorded
    assert train_inputs_hash(new_data, TrainOptions(**CHILD), from_run=parent.path, memory=5,
                             distill_weight=0.5) != recorded


def test_the_old_classes_keep_their_order_and_the_new_ones_follow(parent, child):
    run, section = child
    assert section["classes"] == ["0", "1", "2"] and section["num_classes"] == 3
    assert section["backbone"] == BACKBONE and section["preprocess"] == parent.manifest["train"]["preprocess"]
    assert section["weights"] == f"from-run:{parent.manifest['artifacts']['train/model.safetensors']}"
    assert continual.merged_classes(["b", "a"], ["c", "a", "0"]) == ["b", "a", "0", "c"]


def test_the_head_is_widened_with_the_old_rows_and_the_parents_backbone(parent):
    from edgetl.adapt.feature_extraction import build_head
    from edgetl.models import registry
    from edgetl.models.build import classifier_prefix, create_model

    state = continual.load_parent_state(continual.open_parent(
        continual.Request(parent.path), out=parent.path.parent / "x", resume=False, backbone=None, opts=_tiny(),
        weights=None))
    model = create_model(registry.resolve(BACKBONE), 3, pretrained=False)
    prefix = classifier_prefix(model)
    model.set_submodule(prefix, build_head(model.get_classifier().in_features, 3, "linear"))
    fresh = model.get_classifier().weight[2].detach().clone()
    continual.start_from_parent(model, prefix, "linear", state)
    own = model.state_dict()
    assert torch.equal(own[f"{prefix}.weight"][:2], state[f"{prefix}.weight"])
    assert torch.equal(own[f"{prefix}.bias"][:2], state[f"{prefix}.bias"])
    assert torch.equal(own[f"{prefix}.weight"][2], fresh)  # the new class's row as initialised
    backbone = [k for k in state if not k.startswith(prefix)]
    assert backbone and all(torch.equal(own[k], state[k]) for k in backbone)


def test_the_exemplar_memory_is_hashed_balanced_and_seeded(child):
    from edgetl._io import sha256_file

    run, section = child
    path = run.path / continual.EXEMPLARS
    assert run.manifest["artifacts"][continual.EXEMPLARS] == sha256_file(path)
    pixels, labels = continual.read_memory(path, section["classes"], (32, 32, 3))
    assert pixels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [5, 5, 5]  # --memory 5 of every class
    memory = section["lineage"]["memory"]
    assert memory["count"] == 15 and memory["per_class"] == 5
    labels = np.array([0] * 9 + [1] * 3 + [2] * 7)
    drawn = continual.draw_balanced(labels, 4, seed=3)
    assert np.bincount(labels[drawn]).tolist() == [4, 3, 4]
    assert drawn.tolist() == continual.draw_balanced(labels, 4, seed=3).tolist()
    assert drawn.tolist() != continual.draw_balanced(labels, 4, seed=4).tolist()


def test_the_lineage_records_the_parent_and_what_forgetting_cost(parent, child, new_data):
    run, section = child
    record = run.require(TrainRecord)
    lineage = record.lineage
    assert lineage["parent"] == "parent" and lineage["old_classes"] == ["0", "1"] and lineage["new_classes"] == ["2"]
    assert lineage["parent_checkpoint"] == parent.manifest["artifacts"]["train/model.safetensors"]
    assert lineage["parent_inputs_hash"] == parent.manifest["train"]["inputs_hash"]
    assert lineage["distill"] == {"weight": 1.0, "temperature": 2.0}
    assert lineage["rehearsed"] == 10  # 5 of each old class from the parent's training split
    split = json.loads((run.path / "train" / "split.json").read_text())
    parent_val = json.loads((parent.path / "train" / "split.json").read_text())["val"]
    assert all(sample in split["val"] for sample in parent_val)  # the old classes stay judged on the parent's images
    f = lineage["forgetting"]
    assert f["old_before"]["n"] == f["old_after"]["n"] == len(parent_val)
    assert f["new_after"]["n"] + f["old_after"]["n"] == f["all_after"]["n"] == len(split["val"])
    for score in f.values():
        assert 0 <= score["low"] <= score["top1"] <= score["high"] <= 1
    assert parent.manifest["train"]["metrics"]["val_top1"] == pytest.approx(f["old_before"]["top1"])


def test_the_distillation_loss_is_zero_for_the_parents_own_outputs_and_joins_training():
    old = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    same = torch.cat([old, torch.tensor([[9.0], [-4.0]])], dim=1)  # the new column does not count
    assert continual.distillation_loss(same, old, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert continual.distillation_loss(same.flip(1), old, 2.0).item() > 0.1
    # KL(parent || child) on the old columns, at temperature T, scaled by T^2 (Hinton; Li & Hoiem)
    child = torch.tensor([[0.0, 1.0, 5.0], [1.0, -1.0, 0.0]])
    p_old, log_new = torch.softmax(old / 2.0, 1), torch.log_softmax(child[:, :2] / 2.0, 1)
    exact = 4.0 * (p_old * (p_old.log() - log_new)).sum(1).mean()
    assert continual.distillation_loss(child, old, 2.0).item() == pytest.approx(exact.item(), rel=1e-5)

    from edgetl.adapt.device import Execution

    student, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)
    net = continual.distilling(student, teacher, 0.5, 2.0, Execution())
    x = torch.randn(5, 4)
    net.train()
    logits = net(x)
    expected = 0.5 * continual.distillation_loss(logits, teacher(x), 2.0)
    assert net.aux_loss.item() == pytest.approx(expected.item())
    assert {id(p) for p in net.parameters()} == {id(p) for p in student.parameters()}  # the teacher is not trained
    net.eval()
    net(x)
    assert net.aux_loss is None
    assert continual.distilling(student, teacher, 0.0, 2.0, Execution()) is student


def test_a_continual_run_compiles_bundles_and_verifies_with_its_lineage(child, tmp_path):
    from edgetl.bundle.create import create_bundle
    from edgetl.bundle.runner import open_bundle, verify
    from edgetl.compiler import compile as compile_run
    from edgetl.errors import BundleError
    from edgetl.export.onnx import export_run
    from edgetl.report import make_report

    run = RunDir.create(tmp_path / "child")
    shutil.copytree(child[0].path, run.path, dirs_exist_ok=True)
    export_run(run)
    rows = compile_run(run.path, ["onnxruntime"], ["fp32"], progress=False)
    assert all(r["status"] != "failed" for r in rows), rows
    bundle = create_bundle(run.path, "onnxruntime", "fp32")
    assert verify(bundle, allow_unsigned=True)
    manifest = open_bundle(bundle, allow_unsigned=True).manifest
    assert manifest["labels"] == ["0", "1", "2"]
    assert manifest["lineage"] == {"parent": "parent", "added": ["2"],
                                   "parent_checkpoint": child[1]["lineage"]["parent_checkpoint"]}

    from edgetl.bundle.manifest import parse

    for hostile in ({"parent": "../etc"}, {"added": ["7"]}, {"parent_checkpoint": "beef"}, {"extra": 1}):
        raw = json.dumps({**manifest, "lineage": {**manifest["lineage"], **hostile}}).encode()
        with pytest.raises(BundleError) as err:
            parse(raw, "bundle")
        assert "lineage" in str(err.value) and len(str(err.value).splitlines()) == 1

    # the old classes live in the exemplar memory only: int8 calibrates on them too, and a prototype
    # head has a prototype for every class (the training split holds only the new one)
    rows = compile_run(run.path, ["onnxruntime"], ["int8"], progress=False)
    assert all(r["status"] != "failed" for r in rows), rows
    memory = np.load(run.path / continual.EXEMPLARS)
    old_in_memory = int((memory["labels"] < 2).sum())
    proto = open_bundle(create_bundle(run.path, "onnxruntime", "fp32", head="prototype"), allow_unsigned=True).manifest
    assert proto["labels"] == ["0", "1", "2"] and set(proto["head"]["shots"]) == {"0", "1", "2"}
    assert proto["head"]["shots"]["0"] + proto["head"]["shots"]["1"] == old_in_memory > 0

    make_report(run.path)
    text = (run.path / "report.md").read_text()
    assert "## Lineage: classes added" in text and "Trained from run **parent**" in text
    assert "| old | parent |" in text and "| new | this run |" in text


def _refused(args, out) -> str:
    result = CliRunner().invoke(cli, ["train", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()
    return result.output


def test_bad_parents_and_options_are_one_line_exit_2_and_write_nothing(parent, new_data, digits_dir, tmp_path):
    out = tmp_path / "new-run"
    data = ["--data", str(new_data)]
    assert str(tmp_path / "nowhere") in _refused([*data, "--from", str(tmp_path / "nowhere")], out)
    assert "--from" in _refused([*data, "--from", str(parent.path), "--resume"], out)
    deployed = CliRunner().invoke(cli, ["deploy", *data, "--from", str(tmp_path / "nowhere"), "--out", str(out)])
    assert deployed.exit_code == 2 and str(tmp_path / "nowhere") in deployed.output, deployed.output
    assert len(deployed.output.strip().splitlines()) == 1 and not out.exists()
    assert "--backbone" in _refused([*data, "--from", str(parent.path), "--backbone", "mobilenet_v2"], out)
    assert "--image-size 48" in _refused([*data, "--from", str(parent.path), "--image-size", "48"], out)
    assert "--from" in _refused([*data, "--memory", "3"], out)
    assert "is for image runs" in _refused(["--task", "text-classification", "--data", str(new_data), "--from",
                                            str(parent.path)], out)
    old_only = _classes(digits_dir, tmp_path / "old", "1")
    assert "no class the parent run lacks" in _refused(["--data", str(old_only), "--from", str(parent.path)], out)
    copy = tmp_path / "copy"
    shutil.copytree(parent.path, copy)
    before = sorted(p.name for p in copy.rglob("*"))
    result = CliRunner().invoke(cli, ["train", *data, "--from", str(copy), "--out", str(copy)])
    assert result.exit_code == 2 and "is the --out folder" in result.output
    assert sorted(p.name for p in copy.rglob("*")) == before
    for inside in (copy / "v2", copy / "train" / "v2"):  # a new run inside the parent's folder changes it
        result = CliRunner().invoke(cli, ["train", *data, "--from", str(copy), "--out", str(inside)])
        assert result.exit_code == 2 and "is inside the --from run" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
        assert sorted(p.name for p in copy.rglob("*")) == before
    result = CliRunner().invoke(cli, ["train", *data, "--from", str(copy), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "holds the --from run" in result.output, result.output
    assert sorted(p.name for p in copy.rglob("*")) == before and not (tmp_path / "manifest.json").exists()

    checkpoint = copy / "train" / "model.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-4] + b"\0\0\0\0")
    assert "corrupt or was modified" in _refused([*data, "--from", str(copy)], out)
    (copy / "manifest.json").write_text("{not json")
    assert "is corrupt" in _refused([*data, "--from", str(copy)], out)

    text = tmp_path / "text"
    shutil.copytree(parent.path, text)
    manifest = json.loads((text / "manifest.json").read_text())
    manifest["train"]["task"] = "text-classification"
    (text / "manifest.json").write_text(json.dumps(manifest))
    assert "is for image runs" in _refused([*data, "--from", str(text)], out)

    edited = tmp_path / "edited"  # the parent's classes become the child's labels: checked like new ones
    shutil.copytree(parent.path, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    for classes, message in ((["a\x1b[31m\nb", "1"], "without control characters"), (["1", "1"], "repeat '1'")):
        manifest["train"]["classes"] = classes
        (edited / "manifest.json").write_text(json.dumps(manifest))
        assert message in _refused([*data, "--from", str(edited)], out)

    heads = tmp_path / "heads"
    shutil.copytree(parent.path, heads)
    manifest = json.loads((heads / "manifest.json").read_text())
    manifest["train"]["heads"] = [{"name": "parity", "output": "logits_parity", "classes": ["even", "odd"]}]
    (heads / "manifest.json").write_text(json.dumps(manifest))
    assert "--task-head heads cannot be extended yet" in _refused([*data, "--from", str(heads)], out)


@pytest.mark.parametrize(("settings", "flag"), [({"memory": -5}, "--memory"), ({"distill_temperature": 0}, "--distill-temperature"),
                                                ({"distill_weight": float("nan")}, "--distill-weight")])
def test_the_notebook_api_checks_the_continual_settings_as_the_flags(parent, new_data, tmp_path, settings, flag):
    from edgetl.errors import ConfigError

    with pytest.raises(ConfigError, match=f"option {flag}"):
        train(new_data, TrainOptions(**CHILD), out=tmp_path / "run", from_run=parent.path, **settings)
    assert not (tmp_path / "run").exists()


def test_a_continual_run_is_a_parent_too_and_its_memory_is_rehearsed(child, digits_dir, tmp_path):
    from edgetl.data.demo import write_digits

    four = write_digits(tmp_path / "four", per_class=20, classes=4)
    section = train(_classes(four, tmp_path / "three", "3"), _tiny(image_size=None, epochs=1, head_epochs=3),
                    out=tmp_path / "grandchild", from_run=child[0].path, memory=2)
    lineage = section["lineage"]
    assert section["classes"] == ["0", "1", "2", "3"] and lineage["old_classes"] == ["0", "1", "2"]
    assert lineage["rehearsed"] == 6  # 2 of each class, drawn from the child's memory of 5
    assert lineage["parent_checkpoint"] == child[0].manifest["artifacts"]["train/model.safetensors"]


def test_an_older_parent_whose_images_are_gone_is_one_line(digits_dir, new_data, tmp_path):
    old = _classes(digits_dir, tmp_path / "old", "01")
    train(old, _tiny(epochs=1, head_epochs=2), out=tmp_path / "older", backbone=BACKBONE)
    assert not (tmp_path / "older" / continual.EXEMPLARS).exists()  # an ordinary run keeps no memory
    args = ["--data", str(new_data), "--from", str(tmp_path / "older")]
    for path, _ in json.loads((tmp_path / "older" / "train" / "split.json").read_text())["train"]:
        Path(path).unlink()
    assert "keeps no exemplar memory and its training images are gone" in _refused(args, tmp_path / "v2")
    shutil.rmtree(old)
    assert "parent's validation images are gone" in _refused(args, tmp_path / "v2")


def test_a_modified_or_foreign_exemplar_memory_is_one_line(child, digits_dir, tmp_path):
    from edgetl._io import sha256_file
    from edgetl.data.demo import write_digits

    copy = tmp_path / "child"
    shutil.copytree(child[0].path, copy)
    new = _classes(write_digits(tmp_path / "four", per_class=20, classes=4), tmp_path / "three", "3")
    args = ["--data", str(new), "--from", str(copy)]
    memory = copy / continual.EXEMPLARS
    with open(memory, "ab") as fh:
        fh.write(b"\0")
    assert "corrupt or was modified" in _refused(args, tmp_path / "out")
    np.savez(memory, pixels=np.zeros((3, 8, 8, 3), np.uint8), labels=np.arange(3), classes=np.array(["0", "1", "2"]))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["artifacts"][continual.EXEMPLARS] = sha256_file(memory)  # hashed again: edited along with the manifest
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert "does not hold this run's exemplars" in _refused(args, tmp_path / "out")
    _claimed_huge(memory)  # a header asking for 192 TiB, hashed again too: refused before anything is read
    manifest["artifacts"][continual.EXEMPLARS] = sha256_file(memory)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert "at most 10000 images of each of 3 classes" in _refused(args, tmp_path / "out")


def test_without_rehearsal_the_run_still_keeps_a_memory_of_every_class(child, tmp_path):
    from edgetl.data.demo import write_digits

    new = _classes(write_digits(tmp_path / "four", per_class=20, classes=4), tmp_path / "three", "3")
    section = train(new, _tiny(image_size=None, epochs=1, head_epochs=2), out=tmp_path / "naive",
                    from_run=child[0].path, memory=0, distill_weight=0)
    assert section["lineage"]["rehearsed"] == 0 and section["lineage"]["distill"]["weight"] == 0
    _, labels = continual.read_memory(tmp_path / "naive" / continual.EXEMPLARS, section["classes"], (32, 32, 3))
    assert np.bincount(labels).tolist() == [5, 5, 5, 16]  # the child's 5 of each old class, 16 training images of 3


def _npy_member(shape: tuple, descr: str, data: bytes = b"") -> bytes:
    """A .npy member's bytes: a header claiming ``shape`` and ``descr``, then ``data`` (maybe less)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def _claimed_huge(path: Path) -> None:
    """An exemplar memory whose pixels header claims 2**40 images: reading it would allocate 192 TiB."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("pixels.npy", _npy_member((2**40, 8, 8, 3), "|u1"))
        archive.writestr("labels.npy", _npy_member((2,), "<i8", bytes(16)))
        archive.writestr("classes.npy", _npy_member((2,), "<U1", "01".encode("utf-32-le")))


HOSTILE_MEMORIES = {
    "text labels": lambda p: np.savez(p, pixels=np.zeros((2, 8, 8, 3), np.uint8), labels=np.array(["0", "1"]),
                                      classes=np.array(["0", "1"])),
    "float labels": lambda p: np.savez(p, pixels=np.zeros((2, 8, 8, 3), np.uint8), labels=np.array([0.5, np.nan]),
                                       classes=np.array(["0", "1"])),
    "record labels": lambda p: np.savez(p, pixels=np.zeros((2, 8, 8, 3), np.uint8),
                                        labels=np.zeros(2, [("a", "<i8")]), classes=np.array(["0", "1"])),
    "number classes": lambda p: np.savez(p, pixels=np.zeros((2, 8, 8, 3), np.uint8), labels=np.arange(2),
                                         classes=np.arange(2)),
    "pickled classes": lambda p: np.savez(p, pixels=np.zeros((2, 8, 8, 3), np.uint8), labels=np.arange(2),
                                          classes=np.array(["0", "1"], dtype=object)),
    "more images than the memory keeps": lambda p: np.savez(p, pixels=np.zeros((20_001, 1, 1, 3), np.uint8),
                                                            labels=np.zeros(20_001, np.int64),
                                                            classes=np.array(["0", "1"])),
    "a header claiming 192 TiB": _claimed_huge,
    "a lone .npy": lambda p: p.write_bytes(_npy_member((2,), "<i8", bytes(16))),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MEMORIES))
def test_a_hostile_exemplar_memory_is_one_line_before_its_data_is_read(case, tmp_path):
    """The memory's members are checked by their .npy headers (dtype, shape, at most the most a memory
    keeps per class) before a byte of data is read: no traceback, no allocation a header asks for."""
    path = tmp_path / "exemplars.npz"
    HOSTILE_MEMORIES[case](path)
    image = (1, 1, 3) if case.startswith("more images") else (8, 8, 3)
    with pytest.raises(continual.DataError, match="^[^\n]*$") as exc:
        continual.read_memory(path, ["0", "1"], image)
    assert str(path) in str(exc.value) and "Traceback" not in str(exc.value)


def test_the_summary_gives_each_top1_with_its_interval_and_count():
    score = continual.top1_of(np.array([1, 1, 0, 1]), np.array([1, 1, 1, 1]))
    assert continual.score_text(score) == "75.0% [30.1%, 95.4%] of 4"
    assert continual.score_text(continual.top1_of(np.array([]), np.array([]))) == "no images"
