"""A sync killed mid-run, and two syncs at once: readers only ever see complete generations."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson

from base.cache.manifest import LOCK_NAME, TMP_DIR, read_cache, verify
from tests.cache_helpers import PACKAGED, ROOT, build, copy_model, manifest, sync_cli
from tests.hub_double import HubDouble

REPO = "sentence-transformers/all-MiniLM-L6-v2"


def start_sync(cache: Path, *models: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    args = [arg for model in models for arg in ("--model", model)]
    return subprocess.Popen(
        [sys.executable, "-m", "sync", "once", "--cache", str(cache), *args],
        env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_sigkill_mid_run_keeps_previous_generation_and_next_run_completes(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    build(cache, minilm=PACKAGED)
    changed = copy_model(tmp_path / "changed")
    (changed / "README.md").write_text("changed")
    hub = HubDouble().start()
    hub.add(REPO, PACKAGED, "e" * 40)
    hub.stall_file = "model.safetensors"  # the download stops half-way until released
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url}
    models = (f"minilm=file://{changed}", f"hubmodel=hf://{REPO}")
    try:
        proc = start_sync(cache, *models, env=env)
        assert hub.stalled.wait(60), "the sync never reached the download"
        # By now `minilm`'s new tree is published (models sync in order): only the commit is
        # missing. Kill the sync there.
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        state = read_cache(cache)
        assert state.valid and state.generation == 1, state
        assert verify(cache) == []
        assert (cache / LOCK_NAME).exists(), "the dead run's lock is still there"
        leftovers = list((cache / TMP_DIR).iterdir())
        assert leftovers, "the dead run's staging is still there"
        assert len(list((cache / "sbert" / "minilm").iterdir())) == 2, "new tree, uncommitted"

        hub.stall_file = None
        hub.release.set()
        args = [a for m in models for a in ("--model", m)]
        rerun = sync_cli("once", "--cache", str(cache), *args, env=env, timeout=120)
    finally:
        hub.stop()
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    lines = [orjson.loads(line) for line in rerun.stderr.splitlines()]
    (finished,) = [e for e in lines if e["message"] == "Sync finished"]
    by_name = {m["name"]: m for m in finished["models"]}
    assert by_name["minilm"]["files_skipped"] > 0, "the killed run's published files are reused"
    state = read_cache(cache)
    assert state.valid and state.generation == 2
    assert {m.name for m in manifest(cache).models} == {"minilm", "hubmodel"}
    assert verify(cache) == []


def test_two_syncs_at_once_readers_see_only_complete_generations(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    variants = []
    for name in ("a", "b"):
        variant = copy_model(tmp_path / name)
        (variant / "README.md").write_text(f"variant {name}")
        variants.append(variant)
    seen: list[tuple[int, int]] = []  # (generation, problems) of every valid read
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            state = read_cache(cache, retry_delay=0.05)
            if state.valid:
                problems = [p for p in verify(cache) if p.path != "."]
                seen.append((state.generation, len(problems)))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        procs = [start_sync(cache, f"minilm=file://{v}", env={"HF_HUB_OFFLINE": "1"})
                 for v in variants]  # fmt: skip
        codes = [p.wait(120) for p in procs]
    finally:
        stop.set()
        thread.join()
    generations = [g for g, _ in seen]
    assert codes == [0, 0], [p.stderr.read()[-2000:] for p in procs if p.stderr]
    assert seen, "the reader never saw a committed generation"
    assert all(problems == 0 for _, problems in seen), seen
    assert generations == sorted(generations), "generations only move forward"
    state = read_cache(cache)
    assert state.valid and state.generation == 2
    assert verify(cache) == []
    assert not (cache / LOCK_NAME).exists()
