"""ONNX variants from the sync to the worker: exported and gated by `tabular-sync`, recorded in
the manifest, copied by a worker that serves the best one, with or without torch installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from base.cache.variants import read_variants
from engine.heads import zero_shot
from engine.pooling import normalize
from engine.session import cpu_quota
from harness.pubsub import PubSubEnv
from harness.worker_proc import ROOT, WorkerProcess
from sync import variants as sync_variants
from tests.cache_helpers import build, files_under, manifest, sync_cli
from worker.model import EmbeddingModel
from worker.results import decode_vectors
from worker.rowtext import Cell, row_text

ROWS: list[list[Cell]] = [
    ["Trail running shoes", "great grip on wet rock"], ["Office chair", "sturdy, comfy"],
    ["Rain jacket", "leaks at the seams"], ["Espresso machine", "makes bad coffee"],
]  # fmt: skip
COLUMNS = ["product", "review"]


def jobs() -> bytes:
    table = {"columns": COLUMNS, "rows": ROWS}
    labels = [{"name": "positive", "description": "a happy customer"},
              {"name": "negative", "description": "an unhappy customer"}]  # fmt: skip
    examples = [{"row": ["Boots", "love them"], "label": "positive"},
                {"row": ["Socks", "great"], "label": "positive"},
                {"row": ["Tent", "broke on day one"], "label": "negative"},
                {"row": ["Mug", "cracked, awful"], "label": "negative"}]  # fmt: skip
    return b"\n".join(orjson.dumps(j) for j in [
        {"job_id": "embed", "type": "embed", "table": table},
        {"job_id": "zero", "type": "classify", "table": table, "labels": labels},
        {"job_id": "few", "type": "classify", "table": table, "examples": examples},
    ])  # fmt: skip


def run_worker(env: dict[str, str]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "TABULAR_LLM_ENABLED": "false", **env}
    proc = subprocess.run([sys.executable, "-m", "worker", "run", "--input", "-"], input=jobs(),
                          capture_output=True, env=full, cwd=ROOT, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    results = {r["job_id"]: r for r in map(orjson.loads, proc.stdout.splitlines())}
    return results, [orjson.loads(line) for line in proc.stderr.splitlines()]


def check_answers(results: dict[str, dict[str, Any]], reference: EmbeddingModel) -> None:
    assert {r["status"] for r in results.values()} == {"ok"}, results
    want = normalize(reference.encode([row_text(COLUMNS, r) for r in ROWS])[0])
    got = decode_vectors(results["embed"]["embeddings"])
    assert (got * want).sum(axis=1).min() > 0.99  # int8 is close, not equal
    label_texts = ["positive: a happy customer", "negative: an unhappy customer"]
    labels = normalize(reference.encode(label_texts)[0])
    torch_labels = [p.label for p in zero_shot(want, labels, ["positive", "negative"], 0.05)]
    assert [p["label"] for p in results["zero"]["predictions"]] == torch_labels
    assert len(results["few"]["predictions"]) == len(ROWS)


def served_variant(model_dir: Path) -> str:
    record = read_variants(model_dir)
    assert record is not None
    passed = [v for v in record.variants if v.passed]
    return max(passed, key=lambda v: v.gate["speedup"]).name


def test_once_exports_and_gates_into_the_manifest(tmp_path: Path, xlmr_small: Path) -> None:
    cache = tmp_path / "cache"
    args = ("once", "--cache", str(cache), "--model", f"xlmr=file://{xlmr_small}")
    proc = sync_cli(*args, env={"TABULAR_SYNC_EXPORT": "true"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = manifest(cache).models[0]
    assert entry.variants is not None
    listed = {f.path for f in entry.files}
    assert {"onnx/model.onnx", "onnx/variants.json", "onnx/tokenizer.json"} <= listed
    for variant in entry.variants.variants:
        assert set(variant.files) <= listed
        assert {"min_cosine", "spearman", "zero_shot_agreement"} <= set(variant.gate)
    assert entry.variants.variants[0].passed  # fp32
    assert read_variants(cache / entry.location) == entry.variants
    assert sync_cli("verify", "--cache", str(cache)).returncode == 0
    again = sync_cli(*args, env={"TABULAR_SYNC_EXPORT": "true"}, timeout=600)
    assert again.returncode == 0 and b"ONNX variants built" not in again.stderr
    assert manifest(cache).generation == 1, "an unchanged model is not exported again"


def test_a_newer_exporter_exports_again(
    tmp_path: Path, xlmr_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    build(cache, export=True, xlmr=xlmr_small)
    first = manifest(cache).models[0]
    monkeypatch.setattr(sync_variants, "EXPORT_VERSION", 2)
    monkeypatch.setattr("engine.build.EXPORT_VERSION", 2)
    build(cache, export=True, xlmr=xlmr_small)
    second = manifest(cache)
    assert second.generation == 2
    assert second.models[0].variants is not None and second.models[0].variants.export_version == 2
    assert first.variants is not None and first.variants.export_version == 1


def test_a_model_that_ships_variants_keeps_them(tmp_path: Path, minilm_exported: Path) -> None:
    cache = tmp_path / "cache"
    build(cache, export=True, minilm=minilm_exported)  # export on, but nothing to do
    assert manifest(cache).models[0].variants == read_variants(minilm_exported)


def test_worker_serves_the_best_variant_from_the_cache(
    tmp_path: Path, minilm_exported: Path, embedding_model: EmbeddingModel
) -> None:
    cache, local = tmp_path / "cache", tmp_path / "local"
    build(cache, minilm=minilm_exported)
    results, logs = run_worker({"MODEL_CACHE_PATH": str(cache), "TABULAR_EMBEDDING_MODEL": "minilm",
                                "TABULAR_LOCAL_MODEL_DIR": str(local)})  # fmt: skip
    check_answers(results, embedding_model)
    best = served_variant(minilm_exported)
    record = read_variants(minilm_exported)
    assert record is not None
    precision = next(v.precision for v in record.variants if v.name == best)
    assert {(r["model"]["backend"], r["model"]["precision"]) for r in results.values()} == {
        ("onnx", precision)}  # fmt: skip
    (checked,) = [e for e in logs if e["message"] == "Model cache checked"]
    assert checked["cache_hit"] is True
    assert (checked["backend"], checked["precision"]) == ("onnx", precision)
    (copy,) = (local / "cache" / "sbert").iterdir()
    copied = files_under(copy)
    assert "model.safetensors" not in copied, "an ONNX worker copies no torch weights"
    others = [f for v in record.variants if v.name != best for f in v.files]
    assert not set(others) & set(copied), "nor the variants it does not serve"


def test_torch_free_worker_answers_embed_and_classify(
    tmp_path: Path, minilm_exported: Path, embedding_model: EmbeddingModel
) -> None:
    """torch and sentence-transformers made unimportable: the ONNX path still answers."""
    fake = tmp_path / "no-torch"
    for name in ("torch", "sentence_transformers", "transformers"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed')\n")
    results, logs = run_worker({"PYTHONPATH": str(fake), "SHARED_MODEL_VOLUME_ENABLED": "false",
                                "TABULAR_EMBEDDING_MODEL": str(minilm_exported)})  # fmt: skip
    check_answers(results, embedding_model)
    assert {r["model"]["backend"] for r in results.values()} == {"onnx"}
    (loaded,) = [e for e in logs if e["message"] == "Embedding model loaded"]
    assert loaded["variant"] == served_variant(minilm_exported)


def test_torch_when_asked(tmp_path: Path, minilm_exported: Path) -> None:
    results, _ = run_worker({"SHARED_MODEL_VOLUME_ENABLED": "false",
                             "TABULAR_EMBEDDING_MODEL": str(minilm_exported),
                             "TABULAR_INFERENCE_BACKEND": "torch"})  # fmt: skip
    assert {(r["model"]["backend"], r["model"]["precision"]) for r in results.values()} == {
        ("torch", "fp32")}  # fmt: skip


def test_metrics_name_the_backend(pubsub: PubSubEnv, tmp_path: Path, minilm_exported: Path) -> None:
    worker = WorkerProcess({**pubsub.env(), "TABULAR_EMBEDDING_MODEL": str(minilm_exported)},
                           tmp_path / "worker.log").start()  # fmt: skip
    try:
        status, body = worker.get("/metrics")
    finally:
        worker.stop()
    assert status == 200
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(body.decode())
               for s in family.samples}  # fmt: skip
    (info,) = [dict(labels) for name, labels in samples if name == "tabular_model_info"]
    assert info["backend"] == "onnx" and info["variant"] == served_variant(minilm_exported)
    # By default one single-threaded stream per CPU this process may use.
    assert (info["streams"], info["threads"]) == (str(cpu_quota()), "1")
    (load,) = [dict(labels) for name, labels in samples if name == "tabular_model_load_seconds"]
    assert load == {"backend": "onnx", "precision": info["precision"]}
    assert np.isfinite([v for (n, _), v in samples.items() if n == "tabular_model_load_seconds"])
