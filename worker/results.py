"""Result messages: what a job's answer looks like, ok or error.

`Outcome` carries the result body and what a transport needs to settle the message (ack, or nack
for a retryable error); vectors travel as base64 of little-endian float32 or as lists.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from worker.errors import JobError

Vectors = npt.NDArray[np.float32]


@dataclass
class Outcome:
    result: dict[str, Any]
    job_id: str | None
    type: str | None
    rows: int = 0
    code: str = ""
    retryable: bool = False
    jobs: list[bytes] = field(default_factory=list)  # shard jobs, published before the result
    follow_ups: list[Outcome] = field(default_factory=list)  # published after it (final result)

    @property
    def status(self) -> str:
        return str(self.result["status"])

    def data(self) -> bytes:
        return orjson.dumps(self.result)


def encode_vectors(vectors: Vectors, fmt: str) -> dict[str, Any]:
    """base64 of little-endian float32 (compact: 4 bytes a value), or plain lists."""
    shape = [int(vectors.shape[0]), int(vectors.shape[1]) if vectors.ndim == 2 else 0]
    if fmt == "list":
        return {"format": "list", "shape": shape, "data": vectors.astype(float).tolist()}
    data = base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode()
    return {"format": "base64", "dtype": "float32", "byteorder": "little", "shape": shape,
            "data": data}  # fmt: skip


def decode_vectors(embeddings: dict[str, Any]) -> Vectors:
    """Inverse of `encode_vectors` (for clients: `submit`, tests, examples)."""
    rows, dims = embeddings["shape"]
    if embeddings["format"] == "list":
        return np.asarray(embeddings["data"], dtype=np.float32).reshape(rows, dims)
    raw = base64.b64decode(embeddings["data"])
    return np.frombuffer(raw, dtype="<f4").reshape(rows, dims).astype(np.float32)


def timings(started: float, decoded: float) -> dict[str, float]:
    now = time.perf_counter()
    return {
        "decode_ms": round((decoded - started) * 1000, 3),
        "total_ms": round((now - started) * 1000, 3),
    }


def error_outcome(
    job_id: str | None, job_type: str | None, code: str, message: str, started: float
) -> Outcome:
    retryable = JobError(code, message).retryable
    body = {
        "job_id": job_id,
        "status": "error",
        "type": job_type,
        "error": {"code": code, "message": message, "retryable": retryable},
        "timings": {"total_ms": round((time.perf_counter() - started) * 1000, 3)},
    }
    return Outcome(body, job_id, job_type, code=code, retryable=retryable)
