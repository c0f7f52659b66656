"""Garbage collection after a sync: old trees go, what a reader may still need stays.

Syncs of a changing file:// model leave one content-addressed tree per generation. After each
run the sync deletes the trees neither the committed generation nor its predecessor names, once
the grace period allows it, and counts what it freed; a worker copying the previous generation
out of the cache while a sync collects keeps reading whole, verified files.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from base.cache.copy import copy_verified
from base.cache.manifest import PREVIOUS_NAME, read_cache, read_previous, verify
from base.cache.specs import ModelSpec
from sync.metrics import SyncMetrics
from sync.run import SyncResult, sync_once
from sync.settings import SyncSettings
from tests.cache_helpers import manifest

HOUR = 3600.0


def write_model(root: Path, version: int, size: int = 300_000) -> Path:
    """A model-shaped directory whose content (so whose tree) depends on `version`."""
    for rel, data in {"config.json": f'{{"v": {version}}}'.encode(),
                      "1_Pooling/config.json": b"{}",
                      "weights.bin": bytes([version % 256]) * size}.items():  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def sync(cache: Path, source: Path, grace_hours: float) -> SyncResult:
    settings = SyncSettings.from_env({}, model_cache_path=str(cache),
                                     sync_gc_grace_hours=grace_hours)  # fmt: skip
    result = sync_once(cache, [ModelSpec("m", f"file://{source}")], settings)
    assert result.ok, result
    return result


def trees(cache: Path) -> set[str]:
    base = cache / "sbert" / "m"
    return {p.relative_to(cache).as_posix() for p in base.iterdir()} if base.is_dir() else set()


def generations(cache: Path, source: Path, n: int, grace_hours: float) -> list[str]:
    """Sync n versions of the model; the tree location of each, in order."""
    locations = []
    for version in range(1, n + 1):
        write_model(source, version)
        sync(cache, source, grace_hours)
        locations.append(manifest(cache).models[0].location)
    return locations


def age(path: Path, seconds: float) -> None:
    """Make a tree (and everything under it) look written `seconds` ago."""
    when = dt.datetime.now().timestamp() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (when, when), follow_symlinks=False)


def backdate_previous(cache: Path, seconds: float) -> None:
    """Pretend the predecessor was committed `seconds` ago."""
    body = orjson.loads((cache / PREVIOUS_NAME).read_bytes())
    created = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    body["created"] = created.isoformat(timespec="seconds")
    (cache / PREVIOUS_NAME).write_bytes(orjson.dumps(body))


def test_keeps_current_and_previous_deletes_the_rest_and_counts_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache, source = tmp_path / "cache", tmp_path / "src"
    with caplog.at_level(logging.INFO, logger="sync.gc"):
        gen1, gen2 = generations(cache, source, 2, grace_hours=0)
        assert trees(cache) == {gen1, gen2}, "the previous generation is kept even at grace 0"
        write_model(source, 3)
        result = sync(cache, source, grace_hours=0)
    gen3 = manifest(cache).models[0].location
    assert trees(cache) == {gen2, gen3}
    assert (result.gc_trees, result.gc_bytes) == (1, 300_000 + len('{"v": 1}') + 2)
    previous = read_previous(cache)
    assert previous is not None and previous.generation == 2
    assert previous.models[0].location == gen2
    assert verify(cache) == []
    collected = [r.__dict__ for r in caplog.records if r.getMessage() == "Old trees collected"]
    assert collected[-1]["trees"] == 1 and collected[-1]["bytes"] == result.gc_bytes
    metrics = SyncMetrics(CollectorRegistry())
    metrics.count_run(result)
    assert metrics.registry.get_sample_value("tabular_sync_gc_trees_total") == 1
    assert metrics.registry.get_sample_value("tabular_sync_gc_bytes_total") == result.gc_bytes


def test_grace_period_protects_recently_retired_and_recently_written_trees(
    tmp_path: Path,
) -> None:
    cache, source = tmp_path / "cache", tmp_path / "src"
    gen1, gen2, gen3 = generations(cache, source, 3, grace_hours=24)
    assert trees(cache) == {gen1, gen2, gen3}, "gen2 was committed just now: gen1 may be in use"
    # A day later: gen1 was retired long ago; an orphan tree written just now (a sync that has
    # published but not committed yet) must stay, an old orphan goes.
    backdate_previous(cache, 25 * HOUR)
    age(cache / gen1, 48 * HOUR)
    fresh, stale = cache / "sbert" / "m" / "fresh000000000000", cache / "sbert" / "m" / "stale0"
    for tree in (fresh, stale):
        write_model(tree, 9, size=10)
    age(stale, 48 * HOUR)
    result = sync(cache, source, grace_hours=24)  # unchanged run: collects all the same
    assert result.outcome == "unchanged"
    assert trees(cache) == {gen2, gen3, fresh.relative_to(cache).as_posix()}
    assert result.gc_trees == 2


def test_negative_grace_never_collects(tmp_path: Path) -> None:
    cache, source = tmp_path / "cache", tmp_path / "src"
    locations = generations(cache, source, 3, grace_hours=-1)
    assert trees(cache) == set(locations)


def test_cache_without_previous_manifest_is_collected_safely(tmp_path: Path) -> None:
    """A cache written before manifest.previous.json existed: the next commit records it."""
    cache, source = tmp_path / "cache", tmp_path / "src"
    gen1, gen2 = generations(cache, source, 2, grace_hours=-1)
    (cache / PREVIOUS_NAME).unlink()
    state = read_cache(cache, retry_delay=0)
    assert state.valid, "old caches stay readable"
    write_model(source, 3)
    sync(cache, source, grace_hours=0)
    assert trees(cache) == {gen2, manifest(cache).models[0].location}
    assert gen1 not in trees(cache)


def test_worker_reading_previous_generation_while_a_sync_collects(tmp_path: Path) -> None:
    """The worker's verified copy of generation 2 runs in a loop while the sync commits 3 (so 2
    becomes the previous generation) and collects generation 1 with no grace at all: every copy
    verifies, and generation 2 is untouched."""
    cache, source = tmp_path / "cache", tmp_path / "src"
    for version in (1, 2):
        write_model(source, version, size=3_000_000)
        sync(cache, source, grace_hours=-1)
    gen1 = read_previous(cache)
    assert gen1 is not None
    reading = manifest(cache).models[0]  # generation 2
    errors: list[BaseException] = []
    copies = [0]
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set() or copies[0] < 3:
            dest = tmp_path / f"copy-{copies[0]}"
            try:
                copy_verified(cache, reading, dest, readers=4, chunk_bytes=4096)
            except BaseException as exc:
                errors.append(exc)
                return
            copies[0] += 1

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        write_model(source, 3, size=3_000_000)
        result = sync(cache, source, grace_hours=0)
    finally:
        stop.set()
        thread.join(120)
    assert errors == [] and copies[0] >= 3
    assert result.gc_trees == 1
    assert trees(cache) == {reading.location, manifest(cache).models[0].location}
    assert gen1.models[0].location not in trees(cache)
