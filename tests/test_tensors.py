"""Named tensors: the feed check every session runs, and the helpers that cut feeds into batches."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.errors import DataError
from edgetl.tensors import TensorSpec, batch_size, batches, check_feeds, concat, take

TEXT = (TensorSpec("input_ids", "int64", ("batch", "sequence")), TensorSpec("attention_mask", "int64", ("batch", 12)))


def feeds(n: int = 5, dtype=np.int64) -> dict[str, np.ndarray]:
    return {"input_ids": np.arange(n * 12, dtype=dtype).reshape(n, 12), "attention_mask": np.ones((n, 12), np.int64)}


def test_matching_feeds_pass():
    check_feeds(TEXT, feeds(), "m.onnx")


@pytest.mark.parametrize(("bad", "message"), [
    ({"input_ids": feeds()["input_ids"]}, r"m.onnx: inputs \['input_ids'\] do not match the model's "
                                          r"\['input_ids', 'attention_mask'\] \(missing \['attention_mask'\]\)$"),
    ({**feeds(), "x": np.zeros(5)}, r"\(unknown \['x'\]\)$"),
    (feeds(dtype=np.float32), r"^m.onnx: input_ids: dtype float32, expected int64$"),
    ({**feeds(), "attention_mask": np.ones((5, 11), np.int64)}, r"attention_mask: dimension 1 is 11, expected 12"),
    ({**feeds(), "attention_mask": np.ones(5, np.int64)}, r"attention_mask: 1 dimensions \[5\], expected \['batch', 12\]"),
])
def test_each_mismatch_is_one_line_naming_the_tensor(bad, message):
    with pytest.raises(DataError, match=message) as caught:
        check_feeds(TEXT, bad, "m.onnx")
    assert "\n" not in str(caught.value)


def test_spec_from_a_runtime_names_its_unnamed_dynamic_dims():
    spec = TensorSpec.of("x", np.float32, [None, 3, "sequence", -1])
    assert spec == TensorSpec("x", "float32", ("batch", 3, "sequence", "dim3"))
    assert TensorSpec.from_dict(spec.to_dict()) == spec


def test_batches_cut_every_tensor_on_the_same_rows_and_concat_joins_them():
    parts = list(batches(feeds(5), 2))
    assert [batch_size(p) for p in parts] == [2, 2, 1]
    assert all(p["input_ids"].dtype == np.int64 for p in parts)  # never cast
    joined = concat(parts)
    assert all(np.array_equal(joined[k], v) for k, v in feeds(5).items())
    assert np.array_equal(take(feeds(5), np.array([4, 0]))["input_ids"][:, 0], [48, 0])


def test_feeds_that_disagree_on_the_batch_are_a_data_error():
    with pytest.raises(DataError, match="disagree on the batch size"):
        batch_size({"input_ids": np.zeros((2, 12)), "attention_mask": np.zeros((3, 12))})
    with pytest.raises(DataError, match="no inputs were given"):
        batch_size({})
