"""The quality gate: does a variant give the answers the torch fp32 model gives?

Measured at export on a calibration set shipped with the project (engine/data/calibration.jsonl:
table rows and short texts in several languages, some near the model's maximum length, and a
labelled part with tasks for zero-shot and few-shot). Figures, each against torch fp32:

- per-row cosine of the embeddings (mean and minimum);
- Spearman correlation of the two pairwise-similarity matrices (upper triangle): are neighbours
  ranked the same way;
- top-1 agreement of zero-shot labels (every labelled text against its task's label texts) and of
  few-shot labels (a classifier fitted on the `example` texts, predicting the `query` texts),
  computed with the worker's own heads (engine.heads).

Verdict: fp32 passes with a minimum cosine >= 0.9999; int8 with both agreements >= 0.98 and
Spearman >= 0.98. A failed variant is kept for inspection and never served by `auto`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

from engine.encoder import Encoder
from engine.heads import few_shot, zero_shot
from engine.pooling import normalize

CALIBRATION = Path(__file__).with_name("data") / "calibration.jsonl"
FP32_MIN_COSINE = 0.9999
INT8_MIN_AGREEMENT = 0.98
INT8_MIN_SPEARMAN = 0.98
RULE = (
    f"fp32: min cosine >= {FP32_MIN_COSINE}; int8: zero-shot and few-shot top-1 agreement >= "
    f"{INT8_MIN_AGREEMENT} and Spearman >= {INT8_MIN_SPEARMAN} (all against torch fp32)"
)
Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Task:
    name: str
    labels: dict[str, str]  # label -> description
    examples: list[tuple[str, str]] = field(default_factory=list)  # (text, label)
    queries: list[tuple[str, str]] = field(default_factory=list)

    @property
    def label_texts(self) -> list[str]:
        """What zero-shot compares rows with: `name: description`, as for a job's labels."""
        return [f"{name}: {text}" if text else name for name, text in self.labels.items()]


@dataclass(frozen=True)
class Calibration:
    name: str  # file name and sha256, recorded with the figures
    texts: list[str]  # every text, labelled ones included
    tasks: list[Task]


def load_calibration(path: Path = CALIBRATION) -> Calibration:
    data = path.read_bytes()
    texts: list[str] = []
    tasks: dict[str, Task] = {}
    for line in data.splitlines():
        if not line.strip():
            continue
        item = orjson.loads(line)
        if item["kind"] == "task":
            tasks[item["task"]] = Task(item["task"], dict(item["labels"]))
            continue
        texts.append(item["text"])
        if item["kind"] == "labelled":
            task = tasks[item["task"]]
            pairs = task.examples if item.get("split") == "example" else task.queries
            pairs.append((item["text"], item["label"]))
    digest = hashlib.sha256(data).hexdigest()[:16]
    return Calibration(f"{path.name} sha256:{digest}", texts, list(tasks.values()))


@dataclass
class Reference:
    """The torch fp32 answers, computed once and compared with every variant."""

    vectors: Vectors
    zero_shot: list[str]
    few_shot: list[str]
    seconds: float  # encode time of every text, for the speed-up figure


def answers(encoder: Encoder, data: Calibration) -> Reference:
    started = time.perf_counter()
    vectors = normalize(_encode(encoder, data.texts))
    seconds = time.perf_counter() - started
    zs: list[str] = []
    fs: list[str] = []
    for task in data.tasks:
        names = list(task.labels)
        labelled = task.examples + task.queries
        rows = normalize(_encode(encoder, [text for text, _ in labelled]))
        labels = normalize(_encode(encoder, task.label_texts))
        zs += [p.label for p in zero_shot(rows, labels, names, temperature=0.05)]
        if task.examples and task.queries:
            examples, queries = rows[: len(task.examples)], rows[len(task.examples) :]
            fitted = few_shot(examples, [label for _, label in task.examples], queries, names)
            fs += [p.label for p in fitted]
    return Reference(vectors, zs, fs, seconds)


def figures(reference: Reference, candidate: Reference) -> dict[str, float]:
    cosines = (reference.vectors * candidate.vectors).sum(axis=1)
    return {
        "mean_cosine": round(float(cosines.mean()), 7),
        "min_cosine": round(float(cosines.min()), 7),
        "spearman": round(_spearman(reference.vectors, candidate.vectors), 6),
        "zero_shot_agreement": round(_agreement(reference.zero_shot, candidate.zero_shot), 6),
        "few_shot_agreement": round(_agreement(reference.few_shot, candidate.few_shot), 6),
        "speedup": round(reference.seconds / max(candidate.seconds, 1e-9), 3),
        "texts": float(len(reference.vectors)),
    }


def passes(precision: str, gate: dict[str, float]) -> bool:
    if precision == "fp32":
        return gate["min_cosine"] >= FP32_MIN_COSINE
    return (
        gate["zero_shot_agreement"] >= INT8_MIN_AGREEMENT
        and gate["few_shot_agreement"] >= INT8_MIN_AGREEMENT
        and gate["spearman"] >= INT8_MIN_SPEARMAN
    )


def _encode(encoder: Encoder, texts: list[str]) -> Vectors:
    return encoder.encode(texts)[0]


def _agreement(a: Sequence[str], b: Sequence[str]) -> float:
    return float(np.mean([x == y for x, y in zip(a, b, strict=True)])) if a else 1.0


def _spearman(a: Vectors, b: Vectors) -> float:
    """Rank correlation of the two similarity matrices' upper triangles."""
    upper = np.triu_indices(len(a), k=1)
    x, y = (a @ a.T)[upper], (b @ b.T)[upper]
    rx, ry = _ranks(x), _ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    ranks = np.empty(len(values), np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values), dtype=np.float64)
    return ranks
