"""A BERT encoder in plain torch that loads a Hugging Face ``BertModel`` safetensors file (the one
all-MiniLM-L6-v2 ships) and pools like sentence-transformers: the mean of the last hidden states over
the attention mask. Explicit attention (MatMul + Softmax), so the export is plain ONNX ops that every
runtime quantizes; inputs are ``input_ids`` and ``attention_mask`` (int64, batch x sequence).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` this encoder uses."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def read(cls, path: Path) -> BertConfig:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


class Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads = c.num_attention_heads
        self.query, self.key, self.value = (nn.Linear(c.hidden_size, c.hidden_size) for _ in range(3))
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (proj(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias, dim=-1)
        context = (weights @ v).transpose(1, 2).reshape(b, t, d)
        return self.norm(x + self.dense(context))


class Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = nn.Linear(c.hidden_size, c.intermediate_size)
        self.output = nn.Linear(c.intermediate_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, bias)
        return self.norm(x + self.output(F.gelu(self.intermediate(x))))


class BertEncoder(nn.Module):
    """``(input_ids, attention_mask) -> (batch, hidden)`` mean-pooled sentence embeddings."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.config = c
        self.word = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type = nn.Embedding(c.type_vocab_size, c.hidden_size)  # one segment: row 0 only
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))

    @property
    def width(self) -> int:
        return self.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.norm(self.word(input_ids) + self.position(positions) + self.token_type.weight[0])
        mask = attention_mask.to(x.dtype)
        bias = ((1.0 - mask) * torch.finfo(x.dtype).min)[:, None, None, :]  # padded keys get no weight
        for layer in self.layers:
            x = layer(x, bias)
        return (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)


class TextClassifier(nn.Module):
    """The exported model: encoder + head, ``(input_ids, attention_mask) -> logits``."""

    def __init__(self, encoder: BertEncoder, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask))


class Unpacked(nn.Module):
    """A classifier taking ids and mask stacked as one (batch, 2, sequence) tensor: the one input
    per sample that the shared training loop (``edgetl.adapt.loop.fit``) moves and feeds."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x[:, 0], x[:, 1])


def hf_names(config: BertConfig) -> dict[str, str]:
    """This encoder's parameter names -> a Hugging Face ``BertModel``'s (pooler and position_ids unused)."""
    names = {"word": "word_embeddings", "position": "position_embeddings", "token_type": "token_type_embeddings",
             "norm": "LayerNorm"}
    out = {f"{ours}.{p}": f"embeddings.{theirs}.{p}" for ours, theirs in names.items()
           for p in (("weight", "bias") if ours == "norm" else ("weight",))}
    per_layer = {"attention.query": "attention.self.query", "attention.key": "attention.self.key",
                 "attention.value": "attention.self.value", "attention.dense": "attention.output.dense",
                 "attention.norm": "attention.output.LayerNorm", "intermediate": "intermediate.dense",
                 "output": "output.dense", "norm": "output.LayerNorm"}
    for i in range(config.num_hidden_layers):
        for ours, theirs in per_layer.items():
            for p in ("weight", "bias"):
                out[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    return out


def load_encoder(folder: Path) -> BertEncoder:
    """The encoder of a Hugging Face BERT folder (``config.json`` + ``model.safetensors``), fp32, eval."""
    from safetensors.torch import load_file

    from edgetl.errors import ConfigError

    config = BertConfig.read(folder / "config.json")
    encoder = BertEncoder(config)
    tensors = load_file(str(folder / "model.safetensors"))
    missing = [theirs for theirs in hf_names(config).values() if theirs not in tensors]
    if missing:
        raise ConfigError(f"{folder / 'model.safetensors'} is not a BERT of its config.json: {len(missing)} tensors "
                          f"missing, e.g. {missing[0]}")
    encoder.load_state_dict({ours: tensors[theirs].float() for ours, theirs in hf_names(config).items()})
    return encoder.eval()
