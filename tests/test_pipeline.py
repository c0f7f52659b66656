"""The pipeline against the real packaged model: embeddings, zero-shot and few-shot."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from engine.heads import choose_regularization
from engine.pooling import normalize
from tests.conftest import PipelineFactory
from worker.model import EmbeddingModel
from worker.results import decode_vectors
from worker.rowtext import Cell, row_text


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1))


COLUMNS = ["product", "category", "review"]
ROWS: list[list[Cell]] = [
    ["Trail shoes", "footwear", "Great grip on muddy paths"],
    ["Office chair", "furniture", "Comfortable for long days"],
    ["Headphones", "electronics", None],
    ["Skillet", "kitchen", "Heavy but heats evenly " * 80],  # long: truncated at 256 tokens
]


@pytest.mark.parametrize("fmt", ["base64", "list"])
async def test_embeddings_equal_raw_encode(
    make_pipeline: PipelineFactory, embedding_model: EmbeddingModel, fmt: str
) -> None:
    payload = {"job_id": "e1", "type": "embed", "table": {"columns": COLUMNS, "rows": ROWS},
               "output": {"embeddings": fmt}}  # fmt: skip
    outcome = await make_pipeline().handle(orjson.dumps(payload))
    result = orjson.loads(outcome.data())
    assert result["status"] == "ok", result
    assert result["dims"] == 384 and result["rows"] == 4
    got = decode_vectors(result["embeddings"])
    texts = [row_text(COLUMNS, row) for row in ROWS]
    raw = normalize(embedding_model.encode(texts)[0])
    assert got.shape == (4, 384)
    assert _cosines(got, raw).min() >= 0.999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    assert result["truncated_rows"] == [3]


async def test_normalize_off_returns_raw_norms(
    make_pipeline: PipelineFactory, embedding_model: EmbeddingModel
) -> None:
    payload = {"job_id": "e2", "type": "embed", "table": {"columns": COLUMNS, "rows": ROWS[:2]},
               "output": {"normalize": False}}  # fmt: skip
    result = (await make_pipeline().handle(orjson.dumps(payload))).result
    got = decode_vectors(result["embeddings"])
    raw = embedding_model.encode([row_text(COLUMNS, r) for r in ROWS[:2]])[0]
    assert result["normalized"] is False
    assert np.allclose(np.linalg.norm(got, axis=1), np.linalg.norm(raw, axis=1), rtol=1e-3)


async def test_few_shot_matches_logistic_regression_on_raw_embeddings(
    make_pipeline: PipelineFactory, embedding_model: EmbeddingModel
) -> None:
    iris = load_iris()
    columns = list(iris.feature_names)
    names = [str(n) for n in iris.target_names]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(iris.data))
    train, test = order[:60], order[60:]
    rows: list[list[Cell]] = [[float(v) for v in iris.data[i]] for i in range(len(iris.data))]
    labels = [names[t] for t in iris.target]
    payload = {
        "job_id": "iris", "type": "classify", "labels": names,
        "examples": [{"row": rows[i], "label": labels[i]} for i in train],
        "table": {"columns": columns, "rows": [rows[i] for i in test]},
    }  # fmt: skip
    result = (await make_pipeline().handle(orjson.dumps(payload))).result
    assert result["status"] == "ok" and result["method"] == "few_shot"
    ours = np.mean([p["label"] == labels[i] for p, i in zip(result["predictions"], test,
                                                             strict=True)])  # fmt: skip
    texts = [row_text(columns, r) for r in rows]
    vectors = normalize(embedding_model.encode(texts)[0])
    train_labels = np.array([labels[i] for i in train])
    chosen = choose_regularization(vectors[train], train_labels)
    direct = LogisticRegression(max_iter=2000, C=chosen).fit(vectors[train], train_labels)
    theirs = np.mean(direct.predict(vectors[test]) == np.array([labels[i] for i in test]))
    assert abs(ours - theirs) <= 0.01, (ours, theirs)
    default = LogisticRegression(max_iter=1000).fit(vectors[train], train_labels)  # C=1, before
    assert ours >= np.mean(default.predict(vectors[test]) == np.array([labels[i] for i in test]))
    assert ours > 1 / 3 + 0.2  # and the embeddings carry the signal at all
    for p in result["predictions"]:
        assert sum(p["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert p["score"] == max(p["scores"].values())


TOPICS = {
    "sports": ["The striker scored twice in the final minutes of the match",
               "She won the marathon with a personal best time",
               "The tennis player served an ace to win the set",
               "Our basketball team lost in overtime"],
    "cooking": ["Simmer the tomato sauce with garlic and basil for an hour",
                "Knead the bread dough and let it rise overnight",
                "Fry the onions until golden before adding the rice",
                "Whisk the eggs with sugar to bake a sponge cake"],
    "finance": ["The central bank raised interest rates by a quarter point",
                "Shares fell after the company missed its earnings forecast",
                "Bond yields climbed as inflation data surprised investors",
                "The startup raised a new funding round from venture capital"],
    "weather": ["Heavy rain and strong winds are expected tomorrow",
                "Temperatures will drop below freezing with snow overnight",
                "A heatwave brings sunny skies and 38 degrees this weekend",
                "Thick fog will clear by noon, then light showers"],
}  # fmt: skip


async def test_zero_shot_beats_chance_twice(make_pipeline: PipelineFactory) -> None:
    rows = [[text] for texts in TOPICS.values() for text in texts]
    truth = [label for label, texts in TOPICS.items() for _ in texts]
    payload = {"job_id": "z", "type": "classify", "labels": list(TOPICS),
               "table": {"columns": ["headline"], "rows": rows}}  # fmt: skip
    result = (await make_pipeline().handle(orjson.dumps(payload))).result
    assert result["method"] == "zero_shot"
    accuracy = np.mean([p["label"] == t for p, t in zip(result["predictions"], truth,
                                                         strict=True)])  # fmt: skip
    assert accuracy >= 2 * (1 / len(TOPICS)), accuracy


async def test_classify_can_return_embeddings_too(make_pipeline: PipelineFactory) -> None:
    payload = {"job_id": "c", "type": "classify", "labels": ["a", "b"],
               "table": {"columns": ["x"], "rows": [["hello"]]},
               "output": {"embeddings": "base64"}}  # fmt: skip
    result = (await make_pipeline().handle(orjson.dumps(payload))).result
    assert decode_vectors(result["embeddings"]).shape == (1, 384)
