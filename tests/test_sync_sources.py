"""hf:// against a loopback hub, ollama:// against the Ollama double: real HTTP, real files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from base.cache.manifest import sha256_file, verify
from sync.sources import ollama_manifest_path
from tests.cache_helpers import PACKAGED, copy_model, manifest, sync_cli
from tests.hub_double import HubDouble
from tests.ollama_double import OllamaDouble

REPO = "sentence-transformers/all-MiniLM-L6-v2"
COMMIT_1, COMMIT_2 = "1" * 40, "2" * 40


@pytest.fixture
def hub() -> Iterator[HubDouble]:
    double = HubDouble().start()
    double.add(REPO, PACKAGED, COMMIT_1)
    yield double
    double.stop()


def once(cache: Path, model: str, env: dict[str, str]) -> dict[str, Any]:
    proc = sync_cli("once", "--cache", str(cache), "--model", model, env=env)
    lines = [orjson.loads(line) for line in proc.stderr.splitlines()]
    finished = next(e for e in lines if e["message"] == "Sync finished")
    return {"rc": proc.returncode, "lines": lines, **finished}


def test_hf_snapshot_unchanged_and_new_commit(tmp_path: Path, hub: HubDouble) -> None:
    cache, env = tmp_path / "cache", {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url}
    first = once(cache, f"minilm=hf://{REPO}", env)
    assert (first["rc"], first["generation"]) == (0, 1), first["error"]
    (entry,) = manifest(cache).models
    assert (entry.kind, entry.revision, entry.source) == ("sbert", COMMIT_1, f"hf://{REPO}")
    packaged = {p.relative_to(PACKAGED).as_posix() for p in PACKAGED.rglob("*") if p.is_file()}
    assert {f.path for f in entry.files} == packaged - {".gitattributes"}
    for f in entry.files:
        assert f.sha256 == sha256_file(PACKAGED / f.path)
    assert verify(cache) == []
    downloads = len(hub.downloads())
    assert downloads == len(entry.files)

    second = once(cache, f"minilm=hf://{REPO}", env)
    assert (second["rc"], second["outcome"], second["generation"]) == (0, "unchanged", 1)
    assert len(hub.downloads()) == downloads, "an unchanged commit downloads nothing"

    changed = copy_model(tmp_path / "v2")
    (changed / "README.md").write_text("a new revision")
    hub.add(REPO, changed, COMMIT_2)
    third = once(cache, f"minilm=hf://{REPO}@main", env)
    assert (third["rc"], third["generation"]) == (0, 2)
    assert manifest(cache).models[0].revision == COMMIT_2
    assert verify(cache) == []


def test_hf_missing_repo_fails_clearly(tmp_path: Path, hub: HubDouble) -> None:
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url}
    failed = once(tmp_path / "cache", "x=hf://nobody/nothing", env)
    assert (failed["rc"], failed["outcome"]) == (1, "failed")
    assert "nobody/nothing" in failed["models"][0]["error"]


@pytest.fixture
def ollama(tmp_path: Path) -> Iterator[OllamaDouble]:
    double = OllamaDouble(models_dir=tmp_path / "ollama-store").start()
    yield double
    double.stop()


def ollama_env(double: OllamaDouble) -> dict[str, str]:
    assert double.models_dir is not None
    return {"TABULAR_SYNC_OLLAMA_HOST": double.url,
            "TABULAR_SYNC_OLLAMA_MODELS": str(double.models_dir)}  # fmt: skip


def test_ollama_pull_into_staging_store_then_cache(tmp_path: Path, ollama: OllamaDouble) -> None:
    cache = tmp_path / "cache"
    first = once(cache, "llama=ollama://llama3.2:1b", ollama_env(ollama))
    assert (first["rc"], first["generation"]) == (0, 1), first["error"]
    assert ("POST", "/api/pull") in ollama.requests
    progress = [e for e in first["lines"] if e["message"] == "Pull progress"]
    assert progress and progress[-1]["status"] == "success"
    (entry,) = manifest(cache).models
    rel_manifest = ollama_manifest_path("llama3.2:1b")
    assert rel_manifest == "manifests/registry.ollama.ai/library/llama3.2/1b"
    layer = json.loads((cache / entry.location / rel_manifest).read_text())["layers"][0]
    blob = "blobs/" + layer["digest"].replace(":", "-")
    assert {f.path for f in entry.files} == {rel_manifest, blob}
    assert entry.kind == "ollama" and entry.revision.startswith("sha256:")
    assert ollama.models_dir is not None
    assert (cache / entry.location / blob).read_bytes() == (ollama.models_dir / blob).read_bytes()
    assert verify(cache) == []

    second = once(cache, "llama=ollama://llama3.2:1b", ollama_env(ollama))
    assert (second["rc"], second["outcome"]) == (0, "unchanged")


def test_ollama_pull_failure(tmp_path: Path, ollama: OllamaDouble) -> None:
    ollama.fail_pull = True
    failed = once(tmp_path / "cache", "llama=ollama://llama3.2:1b", ollama_env(ollama))
    assert (failed["rc"], failed["outcome"]) == (1, "failed")
    assert "file does not exist" in failed["models"][0]["error"]
