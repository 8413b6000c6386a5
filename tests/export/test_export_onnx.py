"""export_onnx on models with named, non-image inputs, and the every-output check against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.errors import ExportError
from edgetl.export.onnx import check_outputs, onnx_outputs
from tests.backends.conformance import NAMED_MODELS, named_case


@pytest.mark.parametrize("named", list(NAMED_MODELS))
def test_export_names_every_tensor_and_dimension(tmp_path_factory, named):
    import onnx

    from edgetl.backends._qdq import onnx_inputs

    path, _, x, ref = named_case(named, tmp_path_factory)
    _, _, inputs, outputs = NAMED_MODELS[named]
    model = onnx.load(str(path))
    # ids and mask share one "sequence" axis: one torch.export.Dim per distinct name
    assert onnx_inputs(model) == inputs
    assert [o.name for o in model.graph.output] == [s.name for s in outputs]
    got = onnx_outputs(path, x, batch=7)  # uneven batches: every tensor is cut on axis 0 together
    assert check_outputs(got, ref)["logits"] < 1e-4
    assert got["logits"].dtype == np.float32


def test_check_outputs_names_the_output_and_row_that_disagree(tmp_path_factory):
    _, _, x, ref = named_case("text", tmp_path_factory)
    wrong = {"logits": ref["logits"].copy()}
    wrong["logits"][5, 1] += 1.0
    with pytest.raises(ExportError, match=r"output 'logits': max \|diff\| 1\.00e\+00 .*; worst: row 5$"):
        check_outputs(wrong, ref)
