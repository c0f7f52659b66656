"""From token embeddings to one vector per text, as the model's Pooling module does it."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


def pool(hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64], mode: str) -> Vectors:
    """`hidden` [rows, tokens, dims] and the attention mask -> [rows, dims] (float32)."""
    pooled: Vectors
    if mode == "cls_token":
        pooled = np.ascontiguousarray(hidden[:, 0], dtype=np.float32)
        return pooled
    weights = mask[..., None].astype(np.float32)
    if mode == "max_tokens":
        pooled = np.where(weights > 0, hidden, np.float32(-1e9)).max(axis=1).astype(np.float32)
        return pooled
    summed = (hidden * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    if mode == "mean_sqrt_len_tokens":
        counts = np.sqrt(counts)
    pooled = (summed / counts).astype(np.float32)
    return pooled


def normalize(vectors: Vectors) -> Vectors:
    """Unit length (L2); zero vectors stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: Vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return out
