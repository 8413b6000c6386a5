"""An independent numpy forward pass of a Hugging Face BERT state dict (its own parameter names),
mean-pooled over the mask: the reference edgetl's torch encoder is checked against."""

from __future__ import annotations

import math

import numpy as np


def _norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def embed(t: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray, heads: int, eps: float = 1e-12) -> np.ndarray:
    """float64 mean-pooled embeddings of ``ids`` (batch, seq) under ``mask``."""
    t = {k: v.astype(np.float64) for k, v in t.items()}

    def lin(x, name):
        return x @ t[f"{name}.weight"].T + t[f"{name}.bias"]

    e = "embeddings."
    x = t[e + "word_embeddings.weight"][ids] + t[e + "position_embeddings.weight"][: ids.shape[1]]
    x = _norm(x + t[e + "token_type_embeddings.weight"][0], t[e + "LayerNorm.weight"], t[e + "LayerNorm.bias"], eps)
    b, n, d = x.shape
    hd = d // heads
    layers = 1 + max(int(k.split(".")[2]) for k in t if k.startswith("encoder.layer."))
    for i in range(layers):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{w}").reshape(b, n, heads, hd).transpose(0, 2, 1, 3)
                   for w in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        ctx = ((w / w.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
        x = _norm(x + lin(ctx, p + "attention.output.dense"), t[p + "attention.output.LayerNorm.weight"],
                  t[p + "attention.output.LayerNorm.bias"], eps)
        h = lin(_gelu(lin(x, p + "intermediate.dense")), p + "output.dense")
        x = _norm(x + h, t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"], eps)
    m = mask[..., None].astype(np.float64)
    return (x * m).sum(1) / m.sum(1)
