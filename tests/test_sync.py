"""`tabular-sync once` on file:// sources: generations, skipping, status, staging, the lock."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from base.cache.manifest import DONE_NAME, LOCK_NAME, MANIFEST_NAME, STATUS_NAME, read_cache, verify
from base.cache.status import read_status
from tests.cache_helpers import copy_model, files_under, manifest, sync_cli

DAY = 24 * 3600


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A small sentence-transformers-shaped directory the tests may change."""
    root = tmp_path / "src"
    for rel, text in {"config.json": '{"a": 1}', "1_Pooling/config.json": "{}",
                      "weights.bin": "w" * 100_000}.items():  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def once(cache: Path, *models: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the CLI; return its exit code and its 'Sync finished' log line."""
    args = [arg for model in models for arg in ("--model", model)]
    proc = sync_cli("once", "--cache", str(cache), *args, env=env)
    lines = [orjson.loads(line) for line in proc.stderr.splitlines()]
    finished = [e for e in lines if e["message"] == "Sync finished"]
    assert len(finished) == 1, proc.stderr[-2000:]
    return {"rc": proc.returncode, **finished[0]}


def test_first_sync_then_unchanged_then_changed(tmp_path: Path, source: Path) -> None:
    cache = tmp_path / "cache"
    first = once(cache, f"m=file://{source}")
    assert (first["rc"], first["outcome"], first["generation"]) == (0, "ok", 1)
    assert first["files"] == 3
    done = orjson.loads((cache / DONE_NAME).read_bytes())
    assert done["generation"] == 1 and len(done["manifest_sha256"]) == 64
    gen1 = manifest(cache)
    old_tree = cache / gen1.models[0].location
    old_files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in old_tree.rglob("*.*")}
    manifest_bytes = (cache / MANIFEST_NAME).read_bytes()

    second = once(cache, f"m=file://{source}")
    assert (second["rc"], second["outcome"], second["generation"]) == (0, "unchanged", 1)
    assert second["files"] == 0 and second["models"][0]["files_skipped"] == 3
    assert (cache / MANIFEST_NAME).read_bytes() == manifest_bytes

    (source / "config.json").write_text('{"a": 2}')
    third = once(cache, f"m=file://{source}")
    assert (third["rc"], third["outcome"], third["generation"]) == (0, "ok", 2)
    gen2 = manifest(cache)
    assert gen2.models[0].location != gen1.models[0].location
    # The generation-1 tree is untouched: a worker holding that manifest still reads it whole.
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in old_files} == old_files
    for f in gen1.models[0].files:
        assert (old_tree / f.path).stat().st_size == f.size
    assert verify(cache) == []
    status = read_status(cache)
    assert status["consecutive_failures"] == 0 and status["generation"] == 2
    assert status["last_outcome"] == "ok" and status["last_success_unix"] > time.time() - 60


def test_failures_are_counted_and_the_cache_stays_valid(tmp_path: Path, source: Path) -> None:
    cache = tmp_path / "cache"
    assert once(cache, f"m=file://{source}")["rc"] == 0
    success = read_status(cache)["last_success_unix"]
    for attempt in (1, 2):
        failed = once(cache, f"m=file://{source}", f"n=file://{tmp_path / 'missing'}")
        assert (failed["rc"], failed["outcome"]) == (1, "failed")
        assert failed["error"] == "models failed: n"
        by_name = {m["name"]: m for m in failed["models"]}
        assert by_name["m"]["outcome"] == "unchanged"
        assert "is not a directory" in by_name["n"]["error"]
        status = read_status(cache)
        assert status["consecutive_failures"] == attempt
        assert status["last_success_unix"] == success
        assert status["last_error"] == "models failed: n"
    assert read_cache(cache).valid and manifest(cache).generation == 1
    assert once(cache, f"m=file://{source}")["rc"] == 0
    assert read_status(cache)["consecutive_failures"] == 0


def test_only_refreshes_the_named_models(tmp_path: Path, source: Path) -> None:
    other = copy_model(tmp_path / "other", source)
    cache = tmp_path / "cache"
    models = (f"a=file://{source}", f"b=file://{other}")
    assert once(cache, *models)["rc"] == 0
    before = {m.name: m for m in manifest(cache).models}
    (source / "config.json").write_text('{"a": 3}')
    (other / "config.json").write_text('{"b": 3}')
    args = [arg for model in models for arg in ("--model", model)]
    proc = sync_cli("once", "--cache", str(cache), *args, "--only", "a")
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = {m.name: m for m in manifest(cache).models}
    assert after["a"] != before["a"] and after["b"] == before["b"]


def test_models_from_env_and_bad_specs(tmp_path: Path, source: Path) -> None:
    cache = tmp_path / "cache"
    proc = sync_cli(
        "once", "--cache", str(cache), env={"TABULAR_SYNC_MODELS": f"m=file://{source}"}
    )
    assert proc.returncode == 0
    assert [m.name for m in manifest(cache).models] == ["m"]
    assert sync_cli("once", "--cache", str(cache), "--model", "no-equals-sign").returncode == 2
    assert sync_cli("once", "--cache", str(cache), "--model", "m=ftp://x").returncode == 2
    assert sync_cli("once", "--cache", str(cache), env={"TABULAR_SYNC_MODELS": ""}).returncode == 2


def test_old_staging_is_removed_recent_is_kept(tmp_path: Path, source: Path) -> None:
    cache = tmp_path / "cache"
    for name, age in (("dead-run", 8 * DAY), ("live-run", 3600), ("ollama-store", 30 * DAY)):
        (cache / ".tmp" / name / "x").mkdir(parents=True)
        (cache / ".tmp" / name / "x" / "part").write_bytes(b"p" * 10)
        past = time.time() - age
        os.utime(cache / ".tmp" / name, (past, past))
    assert once(cache, f"m=file://{source}")["rc"] == 0
    # The default store of the sync's Ollama server is in use however old it looks.
    assert sorted(p.name for p in (cache / ".tmp").iterdir()) == ["live-run", "ollama-store"]


def test_lock_of_a_dead_holder_is_taken_over_a_live_one_waited_for(
    tmp_path: Path, source: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    host = socket.gethostname()
    dead = {"holder": "x", "host": host, "pid": 2**22 + 12345, "expires_unix": time.time() + 600}
    (cache / LOCK_NAME).write_bytes(orjson.dumps(dead))
    assert once(cache, f"m=file://{source}")["rc"] == 0
    assert not (cache / LOCK_NAME).exists()

    live = {**dead, "pid": os.getpid()}
    (cache / LOCK_NAME).write_bytes(orjson.dumps(live))
    started = time.monotonic()
    busy = once(cache, f"m=file://{source}", env={"TABULAR_SYNC_LOCK_WAIT_SECONDS": "1"})
    assert (busy["rc"], busy["outcome"]) == (1, "failed") and "LeaseBusy" in busy["error"]
    assert time.monotonic() - started < 30

    expired = {**dead, "host": "another-host", "expires_unix": time.time() - 1}
    (cache / LOCK_NAME).write_bytes(orjson.dumps(expired))
    assert once(cache, f"m=file://{source}")["rc"] == 0
    assert files_under(cache).keys() >= {MANIFEST_NAME, DONE_NAME, STATUS_NAME}
