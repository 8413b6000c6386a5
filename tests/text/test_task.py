"""The text task's torch-free side: readers, predict's samples, tokenizing, the bundle's bounds,
the int8 schemes and the metrics."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from pydantic import ValidationError

from edgetl.errors import DataError
from edgetl.tasks import get_task
from edgetl.tasks.base import TaskRecord
from edgetl.tasks.text_classification import (
    TextPreprocess,
    bootstrap_interval,
    length_from_data,
    macro_f1,
)

TASK = get_task("text-classification")


def _record(tiny_bert, max_length=16, classes=("neg", "pos")):
    return TaskRecord({"max_length": max_length, "tokenizer": "tokenizer.json", "pad_id": 0}, classes,
                      {"tokenizer.json": tiny_bert / "tokenizer.json"})


def test_csv_quoted_fields_utf8_and_skipped_rows(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('id,Text,Label\n1,"great, truly ""great""\nfilm",pos\n2,   ,neg\n3,dull,\n\n4,"ça va mal",neg\n',
                    encoding="utf-8")
    found = TASK.read_labelled(path)
    assert found.samples == ['great, truly "great"\nfilm', "ça va mal"] and found.labels == ["pos", "neg"]
    assert found.classes == ["neg", "pos"] and not found.files
    # the line a row ends on (the first row spans lines 2-3)
    assert found.skipped == [(f"{path}:4", "empty text"), (f"{path}:5", "empty label")]


def test_folder_of_txt_files(tmp_path):
    for label, texts in {"neg": ["awful", ""], "pos": ["lovely film\n"]}.items():
        (tmp_path / label).mkdir()
        for i, text in enumerate(texts):
            (tmp_path / label / f"{i}.txt").write_text(text, encoding="utf-8")
    (tmp_path / "pos" / "notes.md").write_text("ignored")
    (tmp_path / "neg" / "bad.txt").write_bytes(b"\xff\xfe broken")
    found = TASK.read_labelled(tmp_path)
    assert sorted(zip(found.samples, found.labels, strict=True)) == [("awful", "neg"), ("lovely film", "pos")]
    assert sorted(reason for _, reason in found.skipped) == ["empty text", "not UTF-8 text (invalid start byte at byte 0)"]


@pytest.mark.parametrize("content, message", [
    ("text,category\nhi,a\n", "lacks a 'text' and a 'label' column"),
    ("text,label\n ,a\nhi,\n", "no usable texts (2 skipped)"),
    ("text,label\nhi,a\nho,a\n", "found 1 class ('a')"),
    (b"text,label\n\xff,a\n", "not UTF-8 text"),
])
def test_bad_csv_is_one_line(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=re.escape(message)) as err:
        TASK.read_labelled(path)
    assert "\n" not in str(err.value)


def test_no_class_folders_and_not_a_csv(tmp_path):
    with pytest.raises(DataError, match="has no class folders"):
        TASK.read_labelled(tmp_path)
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(DataError, match="is not a .csv"):
        TASK.read_labelled(tmp_path / "a.json")


def test_predict_samples_text_file_and_stdin(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("first text\n\n  second  \n", encoding="utf-8")
    got = TASK.predict_samples(["the battery died after a week", str(lines), "-"], io.StringIO("from stdin\n"))
    assert got == [("the battery died after a week", "the battery died after a week"),
                   (f"{lines}:1", "first text"), (f"{lines}:3", "second"), ("stdin:1", "from stdin")]
    with pytest.raises(DataError, match="is a folder"):
        TASK.predict_samples([str(tmp_path)], None)
    with pytest.raises(DataError, match="no text to classify"):
        TASK.predict_samples(["   "], None)
    with pytest.raises(DataError, match="notes.txt: no such file; to classify this string itself"):
        TASK.predict_samples([str(tmp_path / "notes.txt")], None)
    assert TASK.predict_samples(["see notes.txt"], None) == [("see notes.txt", "see notes.txt")]  # words: a text


def test_load_pads_to_the_longest_and_cuts_at_max_length_keeping_sep(tiny_bert):
    record = _record(tiny_bert, max_length=5)
    feeds = TASK.preprocess(["good", "the film was very good and great"], record)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == (2, 5)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert ids[0, -2:].tolist() == [0, 0] and ids[1, 0] == 2 and ids[1, -1] == 3  # [PAD], [CLS] ... [SEP]
    assert TASK.preprocess(["good"], record)["input_ids"].shape == (1, 3)  # the batch's longest, not max_length


def test_max_length_from_the_data(tiny_bert):
    texts = ["good"] * 19 + [" ".join(["film"] * 300)]
    got = length_from_data(texts, tiny_bert / "tokenizer.json")
    # the 95th percentile, interpolated between the 19th (3 tokens) and the 20th text (302): 17.95 -> 18
    assert got == {"max_length": 18, "median_tokens": 3, "longest_tokens": 302}
    assert length_from_data([" ".join(["film"] * 300)] * 3, tiny_bert / "tokenizer.json")["max_length"] == 128


@pytest.mark.parametrize("hostile", [{"max_length": 10**9}, {"max_length": "8"}, {"tokenizer": "../x.json"},
                                     {"pad_id": -1}, {"lowercase": True}])
def test_bundle_preprocess_is_bounded(hostile):
    with pytest.raises(ValidationError):
        TextPreprocess.model_validate({"max_length": 16, "tokenizer": "tokenizer.json", "pad_id": 0, **hostile})


def test_specs_assets_dims_and_int8_schemes(tiny_bert):
    record = _record(tiny_bert)
    assert [(s.name, s.dtype, s.shape) for s in TASK.inputs(record)] == [
        ("input_ids", "int64", ("batch", "sequence")), ("attention_mask", "int64", ("batch", "sequence"))]
    assert TASK.outputs(record)[0].shape == ("batch", 2)
    assert TASK.assets(record) == ["tokenizer.json"] and TASK.max_dims(record) == {"sequence": 16}
    assert TASK.quantization(record, "onnxruntime", "int8")["scheme"] == "dynamic"
    assert TASK.quantization(record, "openvino", "int8")["model_type"] == "transformer"
    assert TASK.quantization(record, "tensorrt", "int8")["op_types"] == ["MatMul", "Gemm"]
    assert TASK.quantization(record, "onnxruntime", "fp16") == {}
    dummy = TASK.dummy_inputs(record, 3)
    assert dummy["input_ids"].shape == (3, 16) and dummy["input_ids"].max() < 24


def test_macro_f1_and_evaluate():
    labels = np.array([0, 0, 0, 1])
    pred = np.array([0, 0, 1, 1])
    # class 0: P 1, R 2/3 -> 0.8; class 1: P 1/2, R 1 -> 2/3
    assert macro_f1(pred, labels, 2) == pytest.approx((0.8 + 2 / 3) / 2)
    lo, hi = bootstrap_interval(pred, labels, 2)
    assert 0 <= lo <= hi <= 1
    logits = np.eye(2, dtype=np.float32)[pred]
    got = TASK.evaluate({"logits": logits}, labels, {"logits": np.eye(2, dtype=np.float32)[labels]}, ["neg", "pos"])
    assert got["top1"] == 0.75 and got["drop_pp"] == pytest.approx(25.0) and got["agreement"] == 0.75
    assert got["macro_f1"] == pytest.approx(0.7333333)
    top = TASK.postprocess({"logits": np.array([[0.0, 2.0]])}, TaskRecord({}, ("neg", "pos")), 2)
    assert [p.label for p in top[0]] == ["pos", "neg"]
