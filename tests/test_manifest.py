"""The manifest as readers see it: path safety, the .done check, and a full verify."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from base.cache.manifest import (
    DONE_NAME,
    Manifest,
    ModelEntry,
    UnsafePath,
    find_model,
    read_cache,
    safe_path,
    sha256_file,
    verify,
)
from tests.cache_helpers import (
    PACKAGED,
    build,
    manifest,
    model_file,
    rewrite_manifest_raw,
    sync_cli,
)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few small files: verify tests do not need 90 MB of weights to be meaningful."""
    root = tmp_path_factory.mktemp("small")
    for rel, text in {"config.json": "{}", "a/b.txt": "bee", "weights.bin": "w" * 5000}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(
    "rel",
    ["", "/etc/passwd", "../x", "sbert/../../x", "a//b", "./a", "a/.", "a\\b", "a\x00b"],
)
def test_safe_path_refuses_paths_that_could_leave_the_root(tmp_path: Path, rel: str) -> None:
    with pytest.raises(UnsafePath):
        safe_path(tmp_path, rel)


def test_safe_path_refuses_symlink_escape(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path, tmp_path / "cache" / "link")
    with pytest.raises(UnsafePath, match="outside"):
        safe_path(tmp_path / "cache", "link/secret")
    assert safe_path(tmp_path / "cache", "sbert/m/t/config.json") == (
        tmp_path / "cache" / "sbert/m/t/config.json"
    )


def test_manifest_round_trip_and_content(tmp_path: Path, small_model: Path) -> None:
    build(tmp_path, small=small_model)
    current = manifest(tmp_path)
    assert Manifest.from_bytes(current.to_bytes()) == current
    (entry,) = current.models
    assert (entry.name, entry.kind, entry.source) == ("small", "sbert", f"file://{small_model}")
    assert entry.location == f"sbert/small/{entry.tree[:16]}"
    for f in entry.files:
        assert f.size == (small_model / f.path).stat().st_size
        assert f.sha256 == sha256_file(small_model / f.path)
        assert f.sha256 == sha256_file(tmp_path / entry.location / f.path)


def test_verify_lists_every_problem(tmp_path: Path, small_model: Path) -> None:
    build(tmp_path, small=small_model)
    assert verify(tmp_path) == []
    model_file(tmp_path, "config.json", "small").unlink()
    os.truncate(model_file(tmp_path, "weights.bin", "small"), 10)
    model_file(tmp_path, "a/b.txt", "small").write_text("bea")  # same size, other bytes
    problems = {p.path.rsplit("/", 1)[-1]: p.problem for p in verify(tmp_path)}
    assert set(problems) == {"config.json", "weights.bin", "b.txt"}
    assert "missing" in problems["config.json"]
    assert "size 10" in problems["weights.bin"]
    assert "sha256" in problems["b.txt"]

    proc = sync_cli("verify", "--cache", str(tmp_path))
    assert proc.returncode == 1
    printed = proc.stdout.decode().splitlines()
    assert len(printed) == 3 and all(p.startswith("sbert/small/") for p in printed)


def test_verify_reports_the_marker_and_still_checks_files(tmp_path: Path,
                                                          small_model: Path) -> None:  # fmt: skip
    build(tmp_path, small=small_model)
    rewrite_manifest_raw(tmp_path, lambda body: body.update(created="tampered"))
    model_file(tmp_path, "config.json", "small").unlink()
    problems = [str(p) for p in verify(tmp_path)]
    assert problems[0].startswith(".: digest_mismatch")
    assert any("config.json: missing" in p for p in problems)
    assert sync_cli("verify", "--cache", str(tmp_path / "nothing")).returncode == 1


def test_reader_rereads_through_a_commit_in_progress(tmp_path: Path, small_model: Path) -> None:
    """Between a sync's manifest.json and .done writes, a reader's re-read finds the commit."""
    build(tmp_path, small=small_model)
    done = (tmp_path / DONE_NAME).read_bytes()
    build(tmp_path, small=small_model, other=small_model)  # generation 2
    new_done = (tmp_path / DONE_NAME).read_bytes()
    (tmp_path / DONE_NAME).write_bytes(done)  # as if .done were not written yet
    assert read_cache(tmp_path, retry_delay=0).reason == "generation_mismatch"
    writer = threading.Timer(0.05, lambda: (tmp_path / DONE_NAME).write_bytes(new_done))
    writer.start()
    started = time.monotonic()
    state = read_cache(tmp_path, retry_delay=0.3)
    writer.join()
    assert state.valid and state.generation == 2
    assert time.monotonic() - started >= 0.3


def test_find_model_by_name_or_source(tmp_path: Path) -> None:
    def entry(name: str, kind: str, source: str) -> ModelEntry:
        return ModelEntry(name, kind, source, "r", f"{kind}/{name}/t", ())

    m = Manifest(1, "now", (
        entry("bge", "sbert", "hf://BAAI/bge-m3@main"),
        entry("llama", "ollama", "ollama://llama3.2:1b"),
        entry("local", "sbert", f"file://{PACKAGED}"),
    ))  # fmt: skip
    assert find_model(m, "bge") is m.models[0]
    assert find_model(m, "BAAI/bge-m3", "sbert") is m.models[0]
    assert find_model(m, "bge-m3") is m.models[0]
    assert find_model(m, "llama3.2:1b", "ollama") is m.models[1]
    assert find_model(m, "llama3.2:1b", "sbert") is None
    assert find_model(m, "all-MiniLM-L6-v2") is None
