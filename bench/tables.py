"""A large Parquet job against the local pipeline, and its memory against a small one.

    python bench/tables.py [--rows 100000] [--small-rows 10000] [--shard-rows 10000]

On bench/pipeline.py's generated order rows and the packaged all-MiniLM-L6-v2 (torch, as there),
in one process, alternating:

* the local pipeline as bench/pipeline.py drives it: 64-row inline `embed` jobs, 64 in flight;
* one `embed` job over the same rows as a Parquet file (`source`), its results written as
  Parquet parts (`output.path`), sharded by `--shard-rows` and run shard by shard, as
  `tabular-worker run` does (docs/jobs.md, "Tables of any size").

Goal: the file job at >= 0.9x the pipeline's rows/s. Then memory: two child processes each run
one file job, of `--small-rows` and of `--rows` rows, and report their peak RSS (VmHWM); goal:
the large job <= 1.2x the small one (a worker holds one shard, not the table).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.pipeline import COLUMNS, drive, embed_job, make_rows, peak_rss_mb  # noqa: E402

TARGET_SPEED = 0.90
TARGET_MEMORY = 1.20


def write_table(path: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_rows(n)
    pq.write_table(
        pa.table({c: [r[i] for r in rows] for i, c in enumerate(COLUMNS)}), path,
        row_group_size=8192,
    )  # fmt: skip


def _pipeline(data: Path, shard_rows: int) -> Any:
    from engine.config import packaged_model_dir
    from worker.model import EmbeddingModel, ModelInfo, Tuning
    from worker.pipeline import Pipeline
    from worker.settings import WorkerSettings

    path = packaged_model_dir()
    model = EmbeddingModel.load(path, ModelInfo("all-MiniLM-L6-v2", str(path), "packaged"),
                                None, Tuning())  # fmt: skip
    model.warm_up()
    settings = WorkerSettings.from_env(
        {}, data_root=str(data), output_root=str(data / "out"), shard_rows=shard_rows,
        shared_model_volume_enabled=False,
    )  # fmt: skip
    return Pipeline(settings, model)


async def _file_job(pipeline: Any, job_id: str, source: str = "table.parquet") -> float:
    import orjson

    job = {"job_id": job_id, "type": "embed", "source": {"path": source},
           "output": {"path": job_id}}  # fmt: skip
    started = time.perf_counter()
    outcome = await pipeline.handle(orjson.dumps(job))
    if outcome.status != "ok":
        raise RuntimeError(outcome.data()[:500])
    return time.perf_counter() - started


async def speed(rows: int, shard_rows: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as tmp:
        data = Path(tmp)
        write_table(data / "table.parquet", rows)
        write_table(data / "warm.parquet", 1280)
        pipeline = _pipeline(data, shard_rows)
        table = make_rows(rows)
        payloads = [embed_job(f"j{i}", table[i : i + 64]) for i in range(0, rows, 64)]
        await drive(pipeline.handle, payloads[:20], 64)  # warm up both paths
        await _file_job(pipeline, "warm", "warm.parquet")
        runs: list[tuple[float, float]] = []
        for n in range(rounds):
            inline = rows / await drive(pipeline.handle, payloads, 64)
            file = rows / await _file_job(pipeline, f"run-{n}")
            runs.append((inline, file))
            print(f"round {n}: pipeline {inline:.1f} rows/s, file job {file:.1f} rows/s",
                  file=sys.stderr)  # fmt: skip
        await pipeline.close()
    ratios = sorted(f / i for i, f in runs)
    return {"rows": rows, "shard_rows": shard_rows, "runs": runs,
            "ratio": ratios[len(ratios) // 2]}  # fmt: skip


def memory_child(rows: int, shard_rows: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as tmp:
        data = Path(tmp)
        write_table(data / "table.parquet", rows)
        pipeline = _pipeline(data, shard_rows)
        before = peak_rss_mb()
        seconds = asyncio.run(_file_job(pipeline, "mem"))
        return {"rows": rows, "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
                "loaded_rss_mb": before}  # fmt: skip


def memory(rows: int, shard_rows: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(rows), "--shard-rows", str(shard_rows)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--small-rows", type=int, default=10_000)
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(memory_child(args.child, args.shard_rows)))
        return 0
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    fast = asyncio.run(speed(args.rows, args.shard_rows, args.rounds))
    small = memory(args.small_rows, args.shard_rows)
    large = memory(args.rows, args.shard_rows)
    mem_ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    inline, file = fast["runs"][-1]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"bench/tables.py, {when}, load average at start {load}, {os.cpu_count()} cores, "
          "all-MiniLM-L6-v2 (torch)")  # fmt: skip
    print("| measure | value | goal | met |")
    print("| --- | ---: | ---: | --- |")
    print(
        f"| {args.rows:,}-row Parquet job, {fast['shard_rows']:,}-row shards: rows/s | "
        f"{file:.1f} | | |"
    )
    print(f"| pipeline, 64-row inline jobs on the same rows: rows/s | {inline:.1f} | | |")
    ok = "yes" if fast["ratio"] >= TARGET_SPEED else "no"
    print(f"| file job / pipeline | {fast['ratio']:.2f}x | >= {TARGET_SPEED:.2f}x | {ok} |")
    print(f"| peak RSS, {args.small_rows:,}-row job | {small['peak_rss_mb']:.0f} MB | | |")
    print(f"| peak RSS, {args.rows:,}-row job | {large['peak_rss_mb']:.0f} MB | | |")
    ok = "yes" if mem_ratio <= TARGET_MEMORY else "no"
    print(f"| large / small peak RSS | {mem_ratio:.2f}x | <= {TARGET_MEMORY:.2f}x | {ok} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
