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


# Inverse L2 strengths tried by cross-validation: normalised sentence embeddings need far weaker
# regularisation than scikit-learn's C=1, which leaves every score near uniform (bench/fewshot.py).
FEW_SHOT_CS = (1.0, 10.0, 100.0, 1000.0)
# When some label has a single example there is nothing to cross-validate: the C that did best
# on the benchmark tables at one and two examples per label.
FEW_SHOT_DEFAULT_C = 100.0
# Cross-validation runs on at most this many examples (stratified), to bound its cost.
CV_MAX_EXAMPLES = 1_000


def few_shot(
    examples: Vectors,
    example_labels: list[str],
    rows: Vectors,
    names: list[str],
    *,
    regularization: float | None = None,
) -> list[Prediction]:
    """LogisticRegression on the job's labelled example rows; scores from predict_proba.

    The regularisation is chosen per job by stratified k-fold cross-validation on the examples'
    log loss (k = the smallest label's example count, at most 5), so the scores are calibrated
    probabilities as far as the examples can tell; with one example of some label it is
    `FEW_SHOT_DEFAULT_C`. `regularization` fixes C instead (deterministic callers, tests).
    """
    from sklearn.linear_model import LogisticRegression

    if len(set(example_labels)) < 2:
        raise ValueError("few_shot needs examples of at least two labels")
    x, y = normalize(examples), np.asarray(example_labels)
    c = regularization if regularization is not None else choose_regularization(x, y)
    clf = LogisticRegression(max_iter=2000, C=c)
    clf.fit(x, y)
    return _predictions(_label_probs(clf, normalize(rows), names), names)


def choose_regularization(x: Vectors, y: npt.NDArray[np.str_]) -> float:
    """The C of FEW_SHOT_CS with the lowest cross-validated log loss on the examples."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, train_test_split

    _, counts = np.unique(y, return_counts=True)
    folds = int(min(5, counts.min()))
    if folds < 2:
        return FEW_SHOT_DEFAULT_C
    if len(y) > CV_MAX_EXAMPLES:
        x, _, y, _ = train_test_split(x, y, train_size=CV_MAX_EXAMPLES, stratify=y, random_state=0)
    classes = sorted(set(y.tolist()))
    losses = dict.fromkeys(FEW_SHOT_CS, 0.0)
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y):
        for c in FEW_SHOT_CS:
            clf = LogisticRegression(max_iter=2000, C=c).fit(x[train], y[train])
            probs = _label_probs(clf, x[test], classes)
            truth = [classes.index(label) for label in y[test]]
            picked = probs[np.arange(len(truth)), truth]
            losses[c] -= float(np.log(np.clip(picked, 1e-12, 1.0)).sum())
    return min(FEW_SHOT_CS, key=lambda c: (losses[c], c))


def _label_probs(clf: object, rows: Vectors, names: list[str]) -> npt.NDArray[np.float64]:
    """predict_proba in `names` order; a label the classifier never saw scores 0."""
    proba = clf.predict_proba(rows)  # type: ignore[attr-defined]
    probs = np.zeros((len(rows), len(names)))
    for j, name in enumerate(clf.classes_):  # type: ignore[attr-defined]
        probs[:, names.index(str(name))] = proba[:, j]
    return probs
