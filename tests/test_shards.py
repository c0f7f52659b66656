"""Jobs that write files (worker/shards.py, worker/parts.py) through the real pipeline and model:
Parquet in, Parquet parts and _SUCCESS out, per-row errors, sharding, hostile paths and disks."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import PipelineFactory
from worker.results import decode_vectors


def _catalogue(path: Path, n: int, row_group_size: int = 1000) -> list[dict[str, Any]]:
    rows = [
        {"sku": 10_000 + i, "name": f"Product {i}: {['trail shoes', 'desk lamp', 'tea'][i % 3]}",
         "price": round(3.5 + i * 0.25, 2), "in_stock": i % 4 != 0,
         "added": dt.date(2024, 1, 1) + dt.timedelta(days=i)}
        for i in range(n)
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return rows


async def _handle(pipeline: Any, job: dict[str, Any]) -> dict[str, Any]:
    outcome = await pipeline.handle(orjson.dumps(job))
    return dict(outcome.result)


def _job(job_id: str, source: str, out: str, **extra: Any) -> dict[str, Any]:
    return {"job_id": job_id, "type": "embed", "source": {"path": source},
            "output": {"path": out, "columns": ["sku"]}, **extra}  # fmt: skip


async def test_parquet_in_gives_the_vectors_of_the_same_rows_inline(
    make_pipeline: PipelineFactory, tmp_path: Path
) -> None:
    rows = _catalogue(tmp_path / "cat.parquet", 12)
    pipeline = make_pipeline(output_root=str(tmp_path / "out"))
    result = await _handle(pipeline, _job("p1", "cat.parquet", "emb"))
    assert result["status"] == "ok", result
    assert result["output"] == {"path": "emb", "parts": 1, "rows": 12, "errors": 0, "truncated": 0}
    got = pq.read_table(tmp_path / "out" / "emb")
    assert got.column_names == ["row", "sku", "embedding", "truncated", "error"]
    assert got.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    columns = list(rows[0])
    cells = [[r[c].isoformat() if isinstance(r[c], dt.date) else r[c] for c in columns]
             for r in rows]  # fmt: skip
    inline = {"job_id": "i1", "type": "embed", "table": {"columns": columns, "rows": cells}}
    expected = decode_vectors((await _handle(pipeline, inline))["embeddings"])
    vectors = np.asarray(got.column("embedding").to_pylist(), np.float32)
    assert np.allclose(vectors, expected, atol=1e-5)
    assert got.column("sku").to_pylist() == [r["sku"] for r in rows]


async def test_a_small_parquet_source_answers_in_the_message(
    make_pipeline: PipelineFactory, tmp_path: Path
) -> None:
    """Without output.path a Parquet source is read whole (within the job limits), like CSV."""
    rows = _catalogue(tmp_path / "cat.parquet", 5)
    pipeline = make_pipeline()
    result = await _handle(pipeline, {"job_id": "s", "type": "embed",
                                      "source": {"path": "cat.parquet"}})  # fmt: skip
    assert result["status"] == "ok" and result["rows"] == 5, result
    columns = list(rows[0])
    cells = [[r[c].isoformat() if isinstance(r[c], dt.date) else r[c] for c in columns]
             for r in rows]  # fmt: skip
    inline = {"job_id": "i", "type": "embed", "table": {"columns": columns, "rows": cells}}
    expected = decode_vectors((await _handle(pipeline, inline))["embeddings"])
    assert np.allclose(decode_vectors(result["embeddings"]), expected, atol=1e-5)
    small = make_pipeline(max_rows_per_job=4)
    refused = await _handle(small, {"job_id": "t", "type": "embed",
                                    "source": {"path": "cat.parquet"}})  # fmt: skip
    assert refused["error"]["code"] == "too_many_rows"


async def test_a_sharded_job_writes_every_row_once_and_success_last(
    make_pipeline: PipelineFactory, tmp_path: Path
) -> None:
    rows = _catalogue(tmp_path / "cat.parquet", 230, row_group_size=64)
    pipeline = make_pipeline(output_root=str(tmp_path / "out"), shard_rows=50)
    job = _job("big-1", "cat.parquet", "big", text={"columns": ["name", "price"]})
    result = await _handle(pipeline, job)
    assert result["status"] == "ok", result
    assert result["output"]["parts"] == 5 and result["output"]["rows"] == 230
    out = tmp_path / "out" / "big"
    parts = sorted(out.glob("part-*.parquet"))
    assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(5)]
    table = pq.read_table(out)
    assert sorted(table.column("row").to_pylist()) == list(range(230))
    by_row = dict(
        zip(table.column("row").to_pylist(), table.column("sku").to_pylist(), strict=True)
    )
    assert all(by_row[i] == rows[i]["sku"] for i in range(230))
    success = orjson.loads((out / "_SUCCESS").read_bytes())
    assert success["job_id"] == "big-1" and success["rows"] == 230
    assert success["rows_with_errors"] == 0 and success["dims"] == 384
    assert success["model"]["name"] == "all-MiniLM-L6-v2"
    for entry, part in zip(success["parts"], parts, strict=True):
        assert entry["sha256"] == hashlib.sha256(part.read_bytes()).hexdigest()
    assert (out / "_SUCCESS").stat().st_mtime_ns >= max(p.stat().st_mtime_ns for p in parts)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left"

    mtimes = [p.stat().st_mtime_ns for p in parts]
    again = await _handle(pipeline, job)  # the same job again: the same answer, nothing rewritten
    assert again["status"] == "ok" and again["output"] == result["output"]
    assert [p.stat().st_mtime_ns for p in parts] == mtimes


async def test_bad_rows_get_their_code_and_the_others_go_on(
    make_pipeline: PipelineFactory, tmp_path: Path
) -> None:
    (tmp_path / "t.csv").write_text(
        "id,text\n1,fine\n2," + "x" * 300 + "\n3,also fine\n4\n5,last\n"
    )
    pipeline = make_pipeline(output_root=str(tmp_path), max_cell_chars=200)
    job = {"job_id": "e1", "type": "classify", "labels": ["good", "bad"],
           "source": {"path": "t.csv"}, "output": {"path": "o", "columns": ["id"]}}  # fmt: skip
    result = await _handle(pipeline, job)
    assert result["status"] == "ok" and result["output"]["errors"] == 2, result
    got = pq.read_table(tmp_path / "o").to_pylist()
    assert [r["error"] for r in got] == [None, "cell_too_large", None, "ragged_rows", None]
    assert [r["label"] is not None for r in got] == [True, False, True, False, True]
    assert set(got[0]["scores"]) == {"good", "bad"}
    assert got[3]["id"] is None  # the ragged row has no cells


async def test_rows_longer_than_the_model_takes_are_marked_truncated(
    make_pipeline: PipelineFactory, tmp_path: Path
) -> None:
    long = " ".join(f"word{i}" for i in range(400))  # far over MiniLM's 256 tokens
    (tmp_path / "t.csv").write_text(f"id,text\n1,fine\n2,{long}\n3\n4,{long}\n5,short\n")
    pipeline = make_pipeline(output_root=str(tmp_path), shard_rows=2)
    job = {"job_id": "cut-1", "type": "embed", "source": {"path": "t.csv"},
           "text": {"columns": ["text"]}, "output": {"path": "o", "columns": ["id"]}}  # fmt: skip
    result = await _handle(pipeline, job)
    assert result["status"] == "ok" and result["output"]["truncated"] == 2, result
    got = pq.read_table(tmp_path / "o").sort_by("row").to_pylist()
    assert [r["truncated"] for r in got] == [False, True, None, True, False]
    assert got[2]["error"] == "ragged_rows"
    success = orjson.loads((tmp_path / "o" / "_SUCCESS").read_bytes())
    assert success["rows_truncated"] == 2
    assert [p["truncated"] for p in success["parts"]] == [1, 1, 0]

    inline = await _handle(pipeline, {"job_id": "cut-2", "type": "embed", "table": {
        "columns": ["text"], "rows": [["fine"], [long], ["short"]]}})  # fmt: skip
    assert inline["truncated_rows"] == [1]  # the same rule as a message's result


def test_a_part_of_an_older_worker_without_truncated_counts_none(tmp_path: Path) -> None:
    from worker.parts import OutputDir, part_name

    old = pa.table({"row": [0, 1], "error": [None, "ragged_rows"]})
    new = pa.table({"row": [2, 3], "truncated": [True, None], "error": [None, "cell_too_large"]})
    pq.write_table(old, tmp_path / part_name(0))
    pq.write_table(new, tmp_path / part_name(1))
    doc = OutputDir(tmp_path, "mixed").commit(2, {"type": "embed"})
    assert (doc["rows"], doc["rows_with_errors"], doc["rows_truncated"]) == (4, 2, 1)
    assert [p["truncated"] for p in doc["parts"]] == [0, 1]


@pytest.mark.parametrize(
    ("path", "code"),
    [("../escape", "path_outside_root"), ("/abs", "path_outside_root"),
     ("link/x", "path_outside_root"), ("taken", "output_exists")],
)  # fmt: skip
async def test_output_paths_are_refused_with_a_code(
    make_pipeline: PipelineFactory, tmp_path: Path, path: str, code: str
) -> None:
    _catalogue(tmp_path / "cat.parquet", 3)
    root = tmp_path / "out"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)  # a symlink out of the output root
    (root / "taken").mkdir()
    (root / "taken" / "_SUCCESS").write_bytes(orjson.dumps({"job_id": "someone-else"}))
    pipeline = make_pipeline(output_root=str(root))
    result = await _handle(pipeline, _job("j", "cat.parquet", path))
    assert result["status"] == "error" and result["error"]["code"] == code, result


async def test_a_worker_without_an_output_root_says_so(
    make_pipeline: PipelineFactory, tmp_path: Path
) -> None:
    _catalogue(tmp_path / "cat.parquet", 3)
    result = await _handle(make_pipeline(), _job("j", "cat.parquet", "o"))
    assert result["error"]["code"] == "output_disabled"


async def test_text_using_a_list_column_is_refused(
    make_pipeline: PipelineFactory, tmp_path: Path
) -> None:
    pq.write_table(pa.table({"name": ["a"], "tags": [["x"]]}), tmp_path / "t.parquet")
    pipeline = make_pipeline(output_root=str(tmp_path))
    job = {
        "job_id": "l1",
        "type": "embed",
        "source": {"path": "t.parquet"},
        "output": {"path": "o"},
    }
    refused = await _handle(pipeline, job)
    assert refused["error"]["code"] == "unsupported_column"
    assert not (tmp_path / "o" / "_job.json").exists(), "a refused job must not claim the directory"
    ok = await _handle(pipeline, {**job, "job_id": "l2", "text": {"columns": ["name"]}})
    assert ok["status"] == "ok", ok


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 300 KB file system (tmpfs), so a part write runs out of space for real."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)],
                          capture_output=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


async def test_a_full_disk_leaves_no_half_part_and_is_retryable(
    make_pipeline: PipelineFactory, tmp_path: Path, tiny_disk: Path
) -> None:
    _catalogue(tmp_path / "cat.parquet", 400)
    pipeline = make_pipeline(output_root=str(tiny_disk), shard_rows=100)
    outcome = await pipeline.handle(orjson.dumps(_job("full", "cat.parquet", "o")))
    assert outcome.result["error"]["code"] == "output_full", outcome.result
    assert outcome.retryable
    left = sorted(p.name for p in (tiny_disk / "o").iterdir())
    assert "_SUCCESS" not in left
    assert not [n for n in left if n.startswith(".")], f"half-written files left: {left}"
    for name in left:
        if name.startswith("part-"):
            assert pq.read_metadata(tiny_disk / "o" / name).num_rows == 100  # whole parts only
    os.sync()
