"""A tiny BERT folder (2 layers, width 32, random weights, a word-level tokenizer.json built here
with ``tokenizers``) in Hugging Face's layout, and a small labelled review CSV it can learn."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

POSITIVE = ["good", "great", "lovely", "fine", "superb"]
NEGATIVE = ["bad", "awful", "poor", "dull", "broken"]
FILLER = ["the", "a", "film", "plot", "actor", "was", "very", "quite", "it", "and"]
CONFIG = {"vocab_size": 0, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 64, "max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12}


def build_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def write_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """config.json, model.safetensors (Hugging Face names) and tokenizer.json of a random 2-layer BERT
    (but for one planted sentiment direction)."""
    import torch
    from safetensors.torch import save_file

    from edgetl.text.bert import BertConfig, BertEncoder, hf_names

    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(POSITIVE + NEGATIVE + FILLER)
    tok.save(str(folder / "tokenizer.json"))
    config = {**CONFIG, "vocab_size": tok.get_vocab_size()}
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    torch.manual_seed(seed)
    encoder = BertEncoder(BertConfig(**config))
    state = encoder.state_dict()
    # a planted sentiment direction in the word embeddings, so a head learns the reviews in a few steps
    direction = torch.randn(config["hidden_size"])
    for words, sign in ((POSITIVE, 3.0), (NEGATIVE, -3.0)):
        for word in words:
            state["word.weight"][tok.token_to_id(word)] += sign * direction
    save_file({theirs: state[ours].contiguous() for ours, theirs in hf_names(encoder.config).items()},
              str(folder / "model.safetensors"))
    return folder


def write_reviews(path: Path, per_class: int = 24, seed: int = 0) -> Path:
    """A text,label CSV: two sentiment words of the class among filler words, some fields quoted."""
    rng = random.Random(seed)
    rows = ["text,label"]
    for label, words in (("neg", NEGATIVE), ("pos", POSITIVE)):
        for i in range(per_class):
            text = rng.sample(FILLER, rng.randint(2, 6)) + rng.sample(words, 2)
            rng.shuffle(text)
            text = " ".join(text)
            rows.append(f'"{text}, really",{label}' if i % 3 == 0 else f"{text},{label}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "bert")


@pytest.fixture(scope="session")
def reviews_csv(tmp_path_factory) -> Path:
    return write_reviews(tmp_path_factory.mktemp("reviews") / "reviews.csv")
