"""Every cache check ends, in bounded time, with a logged and counted verdict.

Whatever sits in the cache (a FIFO or /dev/zero where a marker should be, a manifest claiming a
size its file does not have, a model too big for local disk, a symlink loop, a file that may not
be read) the worker logs `Model cache checked` with `cache_hit` and a reason and counts it before
it tries a fallback, and `tabular-sync verify` prints problem lines instead of hanging or
printing a traceback.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from base.cache.manifest import DONE_NAME, MANIFEST_NAME, STATUS_NAME
from base.cache.reads import NotRegularFile, Stalled, TooLarge, read_small, run_watched
from tests.cache_helpers import (
    PACKAGED,
    assert_correct_embeddings,
    build,
    files_under,
    manifest,
    model_file,
    recommit,
    sync_cli,
)
from tests.test_cache_start import lookups, serve_one, start, worker_settings
from worker.metrics import WorkerMetrics
from worker.model import EmbeddingModel
from worker.modelstore import ModelStoreError, load_embedding_model

pytestmark = pytest.mark.timeout(300)
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    build(tmp_path / "cache", minilm=PACKAGED)
    return tmp_path / "cache"


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _zero(path: Path) -> None:
    path.unlink()
    os.symlink("/dev/zero", path)


def _loop(path: Path) -> None:
    path.unlink()
    os.symlink(path.name, path)


def claim_weights_size(cache: Path, size: int) -> None:
    """Commit a manifest (matching .done) that says the weights file has `size` bytes."""
    current = manifest(cache)
    files = tuple(dataclasses.replace(f, size=size) if f.path == "model.safetensors" else f
                  for f in current.models[0].files)  # fmt: skip
    model = dataclasses.replace(current.models[0], files=files)
    recommit(cache, dataclasses.replace(current, generation=2, models=(model,)))


def _weights(cache: Path) -> Path:
    return model_file(cache, "model.safetensors")


# ---------------------------------------------------------------------------------------------
# markers that are not files: the worker


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "done_fifo": (lambda c: _fifo(c / DONE_NAME), "no_done"),
    "done_dev_zero": (lambda c: _zero(c / DONE_NAME), "no_done"),
    "manifest_fifo": (lambda c: _fifo(c / MANIFEST_NAME), "manifest_unreadable"),
    "manifest_dev_zero": (lambda c: _zero(c / MANIFEST_NAME), "manifest_unreadable"),
    "weights_fifo": (lambda c: _fifo(_weights(c)), "checksum_mismatch"),
    "weights_dev_zero": (lambda c: _zero(_weights(c)), "file_unreadable"),
    "weights_loop": (lambda c: _loop(_weights(c)), "file_unreadable"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(DAMAGE))
async def test_cache_files_that_are_not_files_are_a_miss_in_bounded_time(
    tmp_path: Path, cache: Path, case: str, caplog: pytest.LogCaptureFixture,
    embedding_model: EmbeddingModel,
) -> None:  # fmt: skip
    damage, reason = DAMAGE[case]
    damage(cache)
    settings = worker_settings(tmp_path, cache)
    started = time.monotonic()
    model, line, metrics = await start(settings, caplog)
    assert time.monotonic() - started < 60
    assert (line["cache_hit"], line["reason"]) == (False, reason), line
    assert lookups(metrics, "miss", reason) == 1
    assert_correct_embeddings(await serve_one(settings, model), embedding_model)


async def test_status_file_that_is_a_fifo_does_not_hang_a_scrape(
    tmp_path: Path, cache: Path
) -> None:
    from worker.modelstore import export_sync_status

    (cache / STATUS_NAME).unlink(missing_ok=True)
    os.mkfifo(cache / STATUS_NAME)
    metrics = WorkerMetrics(CollectorRegistry())
    started = time.monotonic()
    settings = worker_settings(tmp_path, cache)
    thread = threading.Thread(target=export_sync_status, args=(settings, metrics), daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "a scrape hung on a FIFO sync-status.json"
    assert time.monotonic() - started < 30


# ---------------------------------------------------------------------------------------------
# the verdict comes first; the fallback's failure is a line of its own


async def test_corrupt_cache_without_fallback_still_logs_and_counts_the_miss(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No TABULAR_SYNC_MODELS source and no local copy of `minilm`: the start fails (exit 3 in
    `run`), but only after the miss was logged and counted, so the hit-rate alert sees it."""
    weights = _weights(cache)
    weights.write_bytes(b"\xff\xfe" + weights.read_bytes()[2:])
    settings = worker_settings(tmp_path, cache, sync_models="")
    metrics = WorkerMetrics(CollectorRegistry())
    with caplog.at_level(logging.INFO, logger="worker.modelstore"):
        with pytest.raises(ModelStoreError):
            await load_embedding_model(settings, metrics)
    records = [r.__dict__ for r in caplog.records]
    messages = [r["msg"] for r in records]
    checked = records[messages.index("Model cache checked")]
    failed = records[messages.index("Model fallback failed")]
    assert messages.index("Model cache checked") < messages.index("Model fallback failed")
    assert (checked["cache_hit"], checked["reason"]) == (False, "checksum_mismatch")
    assert (failed["reason"], failed["cache_reason"]) == ("local_unavailable", "checksum_mismatch")
    assert lookups(metrics, "miss", "checksum_mismatch") == 1


async def test_manifest_claiming_more_than_the_file_holds_is_a_miss(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture,
    embedding_model: EmbeddingModel,
) -> None:  # fmt: skip
    """A size far over the free space, where the file is not that size: the size already
    disagrees, so it is a checksum miss and the fallback serves (not a refusal for space)."""
    claim_weights_size(cache, 10**16)
    settings = worker_settings(tmp_path, cache)
    model, line, metrics = await start(settings, caplog)
    assert (line["cache_hit"], line["reason"]) == (False, "checksum_mismatch"), line
    assert lookups(metrics, "miss", "checksum_mismatch") == 1
    assert_correct_embeddings(await serve_one(settings, model), embedding_model)
    assert files_under(tmp_path / "local") == {}


async def test_model_too_big_for_local_disk_is_a_miss_and_fallback_serves(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture,
    embedding_model: EmbeddingModel,
) -> None:  # fmt: skip
    """The cache really holds a 2 TB file (sparse) that the manifest names at its size."""
    size = 2 * 10**12
    if shutil.disk_usage(tmp_path).free > size // 2:
        pytest.skip("this disk could hold the file")
    os.truncate(_weights(cache), size)
    claim_weights_size(cache, size)
    settings = worker_settings(tmp_path, cache)
    model, line, metrics = await start(settings, caplog)
    assert (line["cache_hit"], line["reason"]) == (False, "insufficient_space"), line
    assert lookups(metrics, "miss", "insufficient_space") == 1
    assert model.info.source == "local"
    assert_correct_embeddings(await serve_one(settings, model), embedding_model)


# ---------------------------------------------------------------------------------------------
# tabular-sync verify


def _loop_in_tree(cache: Path) -> None:
    tree = _weights(cache).parent
    os.symlink("loop-b", tree / "loop-a")
    os.symlink("loop-a", tree / "loop-b")
    edited = manifest(cache)
    entry = edited.models[0]
    extra = dataclasses.replace(entry.files[0], path="loop-a")
    recommit(
        cache,
        dataclasses.replace(
            edited, generation=2, models=(dataclasses.replace(entry, files=(*entry.files, extra)),)
        ),
    )


def _unreadable(cache: Path) -> None:
    _weights(cache).chmod(0)


VERIFY: dict[str, tuple[Callable[[Path], Any], str]] = {
    "done_fifo": (lambda c: _fifo(c / DONE_NAME), "no_done"),
    "done_dev_zero": (lambda c: _zero(c / DONE_NAME), "no_done"),
    "manifest_fifo": (lambda c: _fifo(c / MANIFEST_NAME), "manifest_unreadable"),
    "manifest_dev_zero": (lambda c: _zero(c / MANIFEST_NAME), "manifest_unreadable"),
    "symlink_loop": (_loop_in_tree, "loop-a"),
    "unreadable_file": (_unreadable, "model.safetensors: unreadable"),
    "weights_fifo": (lambda c: _fifo(_weights(c)), "model.safetensors: size 0"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(VERIFY))
def test_verify_prints_a_problem_line_never_hangs_or_tracebacks(cache: Path, case: str) -> None:
    damage, expected = VERIFY[case]
    damage(cache)
    prefix = NO_DAC if case == "unreadable_file" else []  # root would read a mode-000 file
    if prefix and shutil.which("setpriv") is None:
        pytest.skip("util-linux setpriv is missing")
    proc = sync_cli("verify", "--cache", str(cache), timeout=120, prefix=prefix)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert b"Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert expected.encode() in proc.stdout, proc.stdout
    events = [orjson.loads(line) for line in proc.stderr.splitlines() if line.startswith(b"{")]
    assert any(e["message"] == "Cache verified" for e in events)


# ---------------------------------------------------------------------------------------------
# the deadline itself, on a read that really blocks


@pytest.fixture
def blocking_fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO nobody writes to: a plain open() for reading blocks in the kernel until a writer
    comes, as a read on a hung FUSE mount does. Released at the end so the thread can finish."""
    path = tmp_path / "hung"
    os.mkfifo(path)
    yield path
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader left


def test_a_read_that_blocks_ends_in_stalled(blocking_fifo: Path) -> None:
    started = time.monotonic()
    with pytest.raises(Stalled):
        run_watched([lambda watch: open(blocking_fifo, "rb").close()], 2, 0.5, "reading")
    assert time.monotonic() - started < 5


def test_small_reads_refuse_what_is_not_a_small_file(tmp_path: Path, blocking_fifo: Path) -> None:
    with pytest.raises(NotRegularFile):
        read_small(blocking_fifo, 1000)
    zero = tmp_path / "zero"
    os.symlink("/dev/zero", zero)
    with pytest.raises(NotRegularFile):
        read_small(zero, 1000)
    (tmp_path / "big").write_bytes(b"x" * 2000)
    with pytest.raises(TooLarge):
        read_small(tmp_path / "big", 1000)
    assert read_small(tmp_path / "big", 2000) == b"x" * 2000
