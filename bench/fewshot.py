"""Few-shot accuracy and calibration on public labelled tables, before and after issue #16.

    HF_HUB_OFFLINE=1 python bench/fewshot.py [--seeds 20] [--shots 1,2,4,8,16,32]

Tables bundled with scikit-learn (no download): wine, breast cancer, iris. Each row becomes text
exactly as the worker renders it (`worker.rowtext.row_text`, `col: value; ...`) and is embedded
once with the packaged all-MiniLM-L6-v2. For each number of examples per label ("shots") and each
seed, that many rows per label are drawn as the job's examples and every other row is classified:

- before: the head as it was (`LogisticRegression(max_iter=1000)`, C=1, scores from predict_proba);
- after: `engine.heads.few_shot` as the worker runs it now.

Reported per table and shots, as means over seeds: accuracy, Brier score (mean over rows of the
squared error of the whole score vector against the one-hot truth; lower is better) and expected
calibration error (15 equal-width bins of the top score; |accuracy - mean score| weighted by the
bin's share of rows). The figures do not depend on machine speed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from engine.config import packaged_model_dir  # noqa: E402
from engine.heads import Prediction, few_shot  # noqa: E402
from engine.pooling import normalize  # noqa: E402
from worker.model import EmbeddingModel, ModelInfo, Tuning  # noqa: E402
from worker.rowtext import row_text  # noqa: E402

Vectors = npt.NDArray[np.float32]
Head = Callable[[Vectors, list[str], Vectors, list[str]], list[Prediction]]


def tables() -> dict[str, tuple[list[str], list[str]]]:
    """{name: (row texts, labels)} for the bundled tables."""
    from sklearn.datasets import load_breast_cancer, load_iris, load_wine

    out = {}
    for name, loader in (("wine", load_wine), ("breast_cancer", load_breast_cancer),
                         ("iris", load_iris)):  # fmt: skip
        data = loader()
        columns = [str(c).replace(" ", "_") for c in data.feature_names]
        texts = [row_text(columns, [float(v) for v in row]) for row in data.data]
        labels = [str(data.target_names[t]) for t in data.target]
        out[name] = (texts, labels)
    return out


def before(
    examples: Vectors, labels: list[str], rows: Vectors, names: list[str]
) -> list[Prediction]:
    """The few-shot head before this change (engine/heads.py at main)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=1000)
    clf.fit(normalize(examples), labels)
    probs = np.zeros((len(rows), len(names)))
    proba = clf.predict_proba(normalize(rows))
    for j, name in enumerate(clf.classes_):
        probs[:, names.index(name)] = proba[:, j]
    best = probs.argmax(axis=1)
    return [Prediction(names[b], float(p[b]), dict(zip(names, map(float, p), strict=True)))
            for b, p in zip(best, probs, strict=True)]  # fmt: skip


def scores(
    head: Head, vectors: Vectors, labels: list[str], names: list[str], shots: int, seed: int
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for name in names:
        idx = [i for i, label in enumerate(labels) if label == name]
        picked += list(rng.choice(idx, size=min(shots, len(idx) - 1), replace=False))
    test = [i for i in range(len(labels)) if i not in set(picked)]
    preds = head(vectors[picked], [labels[i] for i in picked], vectors[test], names)
    probs = np.array([[p.scores[n] for n in names] for p in preds])
    truth = np.array([[1.0 if labels[i] == n else 0.0 for n in names] for i in test])
    correct = probs.argmax(1) == truth.argmax(1)
    return {"accuracy": float(correct.mean()),
            "brier": float(((probs - truth) ** 2).sum(1).mean()),
            "ece": ece(probs.max(1), correct)}  # fmt: skip


def ece(
    confidence: npt.NDArray[np.float64], correct: npt.NDArray[np.bool_], bins: int = 15
) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--shots", default="1,2,4,8,16,32")
    args = parser.parse_args()
    path = packaged_model_dir()
    info = ModelInfo("all-MiniLM-L6-v2", str(path), "packaged")
    model = EmbeddingModel.load(path, info, None, Tuning())  # torch, as the tests load it
    print("| table | shots/label | accuracy before | after | Brier before | after "
          "| ECE before | after |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    totals: dict[str, list[float]] = {}
    for name, (texts, labels) in tables().items():
        vectors = normalize(model.encode(texts)[0])
        names = sorted(set(labels))
        for shots in (int(s) for s in args.shots.split(",")):
            runs = {head: [scores(fn, vectors, labels, names, shots, seed)
                           for seed in range(args.seeds)]
                    for head, fn in (("before", before), ("after", few_shot))}  # fmt: skip
            mean = {(h, m): float(np.mean([r[m] for r in rs])) for h, rs in runs.items()
                    for m in ("accuracy", "brier", "ece")}  # fmt: skip
            for key, value in mean.items():
                totals.setdefault(f"{key[0]} {key[1]}", []).append(value)
            print(f"| {name} | {shots} | {mean['before', 'accuracy']:.3f} | "
                  f"{mean['after', 'accuracy']:.3f} | {mean['before', 'brier']:.3f} | "
                  f"{mean['after', 'brier']:.3f} | {mean['before', 'ece']:.3f} | "
                  f"{mean['after', 'ece']:.3f} |", flush=True)  # fmt: skip
    print("\nmeans over all rows above: " + ", ".join(
        f"{k} {np.mean(v):.3f}" for k, v in sorted(totals.items())))  # fmt: skip


if __name__ == "__main__":
    main()
