"""What is computed on top of embeddings: normalisation and the two classification heads.

zero_shot compares rows with label texts; few_shot fits a classifier on a job's labelled example
rows. The worker serves them; the sync's quality gate scores an exported model with the very same
code, so "the labels agree" means what a user would see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine.pooling import normalize

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    scores: dict[str, float]


def _predictions(probs: npt.NDArray[np.float64], names: list[str]) -> list[Prediction]:
    best = probs.argmax(axis=1)
    return [
        Prediction(
            names[int(b)],
            round(float(p[b]), 6),
            {n: round(float(v), 6) for n, v in zip(names, p, strict=True)},
        )
        for b, p in zip(best, probs, strict=True)
    ]


def zero_shot(
    rows: Vectors, labels: Vectors, names: list[str], temperature: float
) -> list[Prediction]:
    """Softmax over cosine similarities divided by `temperature`.

    Cosines of sentence embeddings crowd into a narrow band (~0.1-0.6), so T=1 would give
    near-uniform scores; the default T=0.05 spreads them into usable confidences while
    keeping the ranking identical to raw cosine.
    """
    sims = normalize(rows).astype(np.float64) @ normalize(labels).astype(np.float64).T
    logits = sims / max(temperature, 1e-6)
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return _predictions(exp / exp.sum(axis=1, keepdims=True), names)


def few_shot(
    examples: Vectors, example_labels: list[str], rows: Vectors, names: list[str]
) -> list[Prediction]:
    """LogisticRegression on the job's labelled example rows; scores from predict_proba."""
    from sklearn.linear_model import LogisticRegression

    if len(set(example_labels)) < 2:
        raise ValueError("few_shot needs examples of at least two labels")
    clf = LogisticRegression(max_iter=1000)
    clf.fit(normalize(examples), example_labels)
    fitted = list(clf.classes_)
    probs = np.zeros((len(rows), len(names)))
    proba = clf.predict_proba(normalize(rows))
    for j, name in enumerate(fitted):
        probs[:, names.index(name)] = proba[:, j]
    return _predictions(probs, names)
