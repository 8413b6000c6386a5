"""The task registry, image classification's contract and the data view of a run's split."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.cli import cli
from edgetl.config import CalibrationRecipe
from edgetl.data.arrays import DataView
from edgetl.data.preprocess import PreprocessSpec, load_image
from edgetl.errors import DataError, UnknownNameError
from edgetl.tasks import DEFAULT_TASK, get_task, tasks
from edgetl.tasks.base import Task, TaskRecord
from edgetl.tensors import TensorSpec, check_feeds

RECORD = TaskRecord(PreprocessSpec(input_size=(32, 32)).to_dict(), ("zero", "one", "two"))


def test_the_registry_holds_image_classification_as_a_complete_task():
    assert DEFAULT_TASK in tasks()
    task = get_task(DEFAULT_TASK)
    assert isinstance(task, Task) and task.name == DEFAULT_TASK
    assert {"top1", "accuracy_drop_pp", "agreement"} <= {m.name for m in task.metrics}


def test_an_unknown_task_is_one_line_naming_the_known_ones():
    with pytest.raises(UnknownNameError, match="image-classification"):
        get_task("image-clasification")


def test_specs_follow_the_record():
    task = get_task(DEFAULT_TASK)
    (x,), (y,) = task.inputs(RECORD), task.outputs(RECORD)
    assert (x.name, x.dtype, x.shape) == ("input", "float32", ("batch", 3, 32, 32))
    assert (y.name, y.dtype, y.shape) == ("logits", "float32", ("batch", 3))
    feeds = task.dummy_inputs(RECORD, batch=4)
    check_feeds(task.inputs(RECORD), feeds, "dummy")
    assert feeds["input"].shape == (4, 3, 32, 32)


def test_preprocess_is_the_validation_transform(digits_dir):
    task = get_task(DEFAULT_TASK)
    files = sorted(digits_dir.rglob("*.png"))[:3]
    feeds = task.preprocess(files, RECORD)
    check_feeds(task.inputs(RECORD), feeds, "preprocess")
    spec = PreprocessSpec.from_dict(RECORD.preprocess)
    np.testing.assert_array_equal(feeds["input"], np.stack([load_image(f, spec) for f in files]))


def test_a_corrupt_file_is_a_data_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        get_task(DEFAULT_TASK).preprocess([bad], RECORD)


def test_postprocess_gives_top_k_labels_with_softmax_scores():
    logits = np.array([[0.0, 2.0, 1.0], [5.0, 5.0, -1.0]], np.float32)
    answers = get_task(DEFAULT_TASK).postprocess({"logits": logits}, RECORD, top=2)
    assert [[p.label for p in a] for a in answers] == [["one", "two"], ["zero", "one"]]  # a tie: the lower index
    assert answers[0][0].score == pytest.approx(np.exp(2) / (1 + np.exp(2) + np.exp(1)))
    assert answers[1][0].score == pytest.approx(answers[1][1].score)


def test_evaluate_reports_top1_drop_and_agreement_with_intervals():
    labels = np.array([0, 1, 2, 0])
    reference = np.eye(3, dtype=np.float32)[labels]  # all right
    outputs = reference.copy()
    outputs[3] = [0, 1, 0]  # one wrong
    result = get_task(DEFAULT_TASK).evaluate({"logits": outputs}, labels, {"logits": reference})
    assert result["top1"] == 0.75 and result["fp32_top1"] == 1.0 and result["agreement"] == 0.75
    assert result["drop_pp"] == pytest.approx(25.0)
    lo, hi = result["top1_ci"]
    assert lo < 0.75 < hi
    assert result["drop_ci_pp"][0] < 25.0 < result["drop_ci_pp"][1]
    alone = get_task(DEFAULT_TASK).evaluate({"logits": outputs}, labels, None, list(RECORD.classes))
    assert alone["top1"] == 0.75 and "drop_pp" not in alone


def test_the_task_module_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None\nimport edgetl.tasks.image_classification, edgetl.data.arrays\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_tasks_command_table_and_json():
    runner = CliRunner()
    table = runner.invoke(cli, ["tasks"], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert "image-classification" in table.output and "accuracy_drop_pp" in table.output
    listed = runner.invoke(cli, ["tasks", "--json"])
    assert listed.exit_code == 0
    (row,) = [r for r in json.loads(listed.output) if r["name"] == DEFAULT_TASK]
    assert row["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}]
    assert row["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", "classes"]}]
    assert {"top1", "p90_latency_ms", "memory_mb"} <= {m["name"] for m in row["metrics"]}


# -- the data view --------------------------------------------------------------------------------
def test_a_trained_run_records_its_task(tiny_run):
    assert tiny_run.manifest["train"]["task"] == DEFAULT_TASK


def test_the_view_hands_named_feeds_labels_and_reference(tiny_run):
    view = DataView(tiny_run)
    feeds, labels = view.val_feeds(), view.val_labels()
    check_feeds(view.inputs, feeds, "val")
    assert len(labels) == tiny_run.manifest["train"]["dataset"]["val_images"] == len(feeds["input"])
    reference = view.reference()
    assert list(reference) == ["logits"] and reference["logits"].shape == (len(labels), 3)
    assert view.val_feeds() is feeds and view.reference() is reference  # read once per view
    golden = view.task.golden_inputs(view, 4)
    assert golden["input"].shape == (4, 3, 32, 32)


def test_the_view_of_a_run_from_before_tasks_is_image_classification(copy_run):
    run = copy_run()
    with run.editing() as manifest:
        del manifest["train"]["task"]
    assert DataView(run).task.name == DEFAULT_TASK


def test_calibration_feeds_come_from_the_training_split(tiny_run):
    view = DataView(tiny_run)
    recipe = CalibrationRecipe(name="t", samples=6, sampling="class-balanced", seed=1)
    feeds = view.task.calibration(view, recipe)
    check_feeds(view.inputs, feeds, "calibration")
    assert len(feeds["input"]) == 6
    np.testing.assert_array_equal(feeds["input"], view.task.calibration(DataView(tiny_run), recipe)["input"])


@pytest.mark.parametrize("change, message", [
    (lambda i, o: (i, o), None),
    (lambda i, o: ([TensorSpec("input", "float32", (4, 3, 32, 32))], o), None),  # a static batch is fine
    (lambda i, o: ([TensorSpec("input", "float32", ("batch", 1, 32, 32))], o), "1 channels: 3 expected"),
    (lambda i, o: ([TensorSpec("input", "float32", ("batch", 3, 16, 32))], o),
     "preprocess.input_size [32, 32] is not the input's [16, 32]"),
    (lambda i, o: (i, [TensorSpec("logits", "float32", ("batch", 5))]), "3 labels for a model with 5 output classes"),
    (lambda i, o: ([TensorSpec("pixels", "float32", ("batch", 3, 32, 32))], o), "inputs are ['pixels']"),
    (lambda i, o: (i, [TensorSpec("logits", "float16", ("batch", 3))]), "the task expects float32"),
    (lambda i, o: ([*i, TensorSpec("mask", "int64", ("batch", 7))], o), "inputs are ['input', 'mask']"),
])
def test_check_bundle_says_why_tensors_are_not_the_tasks(change, message):
    task = get_task(DEFAULT_TASK)
    inputs, outputs = change(task.inputs(RECORD), task.outputs(RECORD))
    why = task.check_bundle(inputs, outputs, RECORD)
    assert why == message if message is None else message in why


def test_image_read_labelled_is_the_image_set_with_its_hash(digits_dir, tmp_path):
    """The task's torch-free reader: the classes sorted, every image with its class, bad files skipped
    with the reason, and the content hash the image set has always had (caches stay valid)."""
    from edgetl.data.datasets import load_image_set

    data = tmp_path / "digits"
    import shutil

    shutil.copytree(digits_dir, data)
    (data / "0" / "bad.png").write_bytes(b"not a png")
    got = get_task(DEFAULT_TASK).read_labelled(data)
    images = load_image_set(data)
    assert got.classes == images.classes == sorted(got.classes)
    assert got.indexed() == images.samples and len(got.samples) == 60
    assert [s for s, _ in got.skipped] == [str(data / "0" / "bad.png")]
    assert got.content_hash() == images.content_hash()


def test_image_predict_samples_expand_folders(digits_dir):
    pairs = get_task(DEFAULT_TASK).predict_samples([str(digits_dir / "1")], None)
    assert len(pairs) == 20 and all(name == sample and sample.endswith(".png") for name, sample in pairs)
    with pytest.raises(DataError, match="does not exist"):
        get_task(DEFAULT_TASK).predict_samples(["nowhere.png"], None)


def test_a_run_record_resolves_its_assets_inside_the_run(tmp_path):
    from edgetl.errors import ArtifactError
    from edgetl.rundir import RunDir

    run = RunDir.create(tmp_path / "run")
    train = {"preprocess": {}, "classes": ["a", "b"], "assets": {"vocab.txt": "train/assets/vocab.txt"}}
    assert TaskRecord.of_train(train, run).assets == {"vocab.txt": run.path / "train/assets/vocab.txt"}
    with pytest.raises(ArtifactError, match="outside the run"):
        TaskRecord.of_train({**train, "assets": {"x": "../x"}}, run)
    bundle = TaskRecord.of_bundle({"preprocess": {}, "labels": ["a"], "assets": ["vocab.txt"]}, tmp_path)
    assert bundle.assets == {"vocab.txt": tmp_path / "assets" / "vocab.txt"}


@pytest.mark.parametrize("label", ["a\x1b[31mb", "line\u2028break", "right\u202eto-left", "iso\u2066late"])
def test_a_label_that_would_trick_a_terminal_is_refused_at_training_and_in_a_bundle(label):
    from pydantic import TypeAdapter, ValidationError

    from edgetl.bundle.manifest import Label
    from edgetl.errors import DataError
    from edgetl.tasks.base import check_label

    with pytest.raises(DataError, match="without control characters"):
        check_label(label, "labels.csv")
    with pytest.raises(ValidationError):
        TypeAdapter(Label).validate_python(label)


def test_emoji_sequences_stay_valid_labels():
    from edgetl.tasks.base import check_label

    assert check_label("cat \U0001f469\u200d\U0001f4bb", "x") == "cat \U0001f469\u200d\U0001f4bb"
