"""The PyTorch FP32 reference is a Session like the runtimes': named inputs in, named outputs out."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.backends import Session
from edgetl.backends.torch import TorchSession
from edgetl.errors import DataError
from tests.backends.conformance import NAMED_MODELS, synthetic_text


def test_inputs_reach_the_model_by_name_in_spec_order():
    import torch

    factory, _, inputs, outputs = NAMED_MODELS["text"]
    torch.manual_seed(0)
    model = factory()
    x, _ = synthetic_text(6, seed=0)
    with torch.no_grad():
        expected = model(torch.from_numpy(x["input_ids"]), torch.from_numpy(x["attention_mask"])).numpy()
    with TorchSession(model, inputs, outputs) as session:
        assert isinstance(session, Session)
        reversed_feeds = {"attention_mask": x["attention_mask"], "input_ids": x["input_ids"]}
        out = session.run(reversed_feeds)
        assert list(out) == ["logits"]
        np.testing.assert_array_equal(out["logits"], expected)
        with pytest.raises(DataError, match="the PyTorch reference: input_ids: dtype float32, expected int64"):
            session.run({**x, "input_ids": x["input_ids"].astype(np.float32)})
