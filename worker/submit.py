"""`tabular-worker submit`: a table (or a jobs file) becomes jobs on the jobs topic; with
`--wait`, results are gathered from a results subscription and written out.

The input is read in batches, never whole: rows become jobs of `--rows-per-job` rows, published
a batch of jobs at a time. A file the workers can read themselves is better sent as one job:
`--source PATH --output-path DIR` submits a single source job whose results the workers write as
Parquet parts (docs/jobs.md, "Tables of any size"); with `--wait` the shard results are followed
as progress until the job's final result (written after `_SUCCESS`) arrives.

Every job that does not come back is reported by job_id: a client can resubmit exactly those.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from base import logs, pubsub
from worker import transport
from worker.results import decode_vectors
from worker.settings import WorkerSettings
from worker.transport import Consumer, Reassembler, Received

log = logs.get(__name__)


@dataclass
class SubmitOptions:
    input: str
    format: str = "auto"  # csv | jsonl | jobs | auto (by suffix; .jsonl tables need --format)
    type: str = "embed"
    rows_per_job: int = 64
    labels: list[str] = field(default_factory=list)
    method: str = "auto"
    template: str | None = None
    job_prefix: str = ""
    wait: bool = False
    results_subscription: str = ""
    output: str = ""
    timeout: float = 600.0
    source: str = ""  # a file under the workers' data root: one source job
    output_path: str = ""  # its output directory under the workers' output root
    columns: list[str] = field(default_factory=list)  # input columns copied to the output


# Jobs published at a time: the input is never held whole.
PUBLISH_BATCH = 500


@dataclass
class _Submitted:
    job_ids: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # rows per job (.npy alignment)
    wanted: set[str] = field(default_factory=set)
    parent: str = ""  # the source job whose shard results are progress
    progress: dict[str, int] = field(default_factory=dict)

    def add(self, job: dict[str, Any]) -> None:
        job_id = str(job.get("job_id", ""))
        self.job_ids.append(job_id)
        self.wanted.add(job_id)
        self.rows[job_id] = len(job.get("table", {}).get("rows", []))


def iter_jobs(opts: SubmitOptions) -> Iterator[dict[str, Any]]:
    """Jobs of at most `rows_per_job` rows each, ids `{prefix}-{n:06d}`, read as they go."""
    if opts.source:
        yield _source_job(opts)
        return
    path = Path(opts.input)
    fmt = opts.format if opts.format != "auto" else path.suffix.lstrip(".").lower()
    if fmt not in ("jobs", "csv", "jsonl"):
        raise ValueError(f"unknown input format {fmt!r}: use --format csv|jsonl|jobs")
    if fmt == "jobs":
        with open(path, "rb") as fh:
            yield from (orjson.loads(line) for line in fh if line.strip())
        return
    prefix = opts.job_prefix or f"submit-{uuid.uuid4().hex[:8]}"
    columns, rows = _table_rows(path, fmt)
    for n, chunk in enumerate(_chunks(rows, opts.rows_per_job)):
        job = {"job_id": f"{prefix}-{n:06d}", "table": {"columns": columns, "rows": chunk}}
        yield _with_options(job, opts)


def _table_rows(path: Path, fmt: str) -> tuple[list[str], Iterator[list[Any]]]:
    """The columns and a stream of rows. JSON Lines takes two passes (its columns are the union
    of every record's keys), neither holding the file."""
    if fmt == "csv":
        text = open(path, encoding="utf-8-sig", newline="")
        reader = csv.reader(text)
        columns = next(reader)
        return columns, _closing(text, (r for r in reader if r))
    with open(path, "rb") as fh:
        columns = list(dict.fromkeys(k for line in fh if line.strip() for k in orjson.loads(line)))
    fh2 = open(path, "rb")
    records = (orjson.loads(line) for line in fh2 if line.strip())
    return columns, _closing(fh2, ([r.get(c) for c in columns] for r in records))


def _closing(fh: Any, rows: Iterator[list[Any]]) -> Iterator[list[Any]]:
    with fh:
        yield from rows


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _source_job(opts: SubmitOptions) -> dict[str, Any]:
    job = {
        "job_id": opts.job_prefix or f"submit-{uuid.uuid4().hex[:8]}",
        "source": {"path": opts.source},
        "output": {"path": opts.output_path, "columns": opts.columns},
    }
    return _with_options(job, opts)


def _with_options(job: dict[str, Any], opts: SubmitOptions) -> dict[str, Any]:
    """The job's type, text template and classification fields from the command line."""
    job["type"] = opts.type
    if opts.template:
        job["text"] = {"template": opts.template}
    if opts.type == "classify":
        job["labels"] = opts.labels
        job["method"] = opts.method
    return job


async def submit(settings: WorkerSettings, opts: SubmitOptions) -> int:
    project = settings.project
    topic = pubsub.full_name("topics", settings.jobs_topic, project)
    publisher = transport.Publisher(pubsub.publisher_api())
    results: dict[str, dict[str, Any]] = {}
    waiter: asyncio.Task[None] | None = None
    stop = asyncio.Event()
    submitted = _Submitted()
    jobs = iter_jobs(opts)
    if opts.source:
        first = next(jobs)
        submitted.parent = str(first["job_id"])
        jobs = itertools.chain([first], jobs)
    if opts.wait:
        # Listen before publishing, so no result can slip past.
        waiter = asyncio.create_task(_gather(settings, opts, submitted, results, stop))
    started = time.monotonic()
    for batch in _chunks(jobs, PUBLISH_BATCH):
        for job in batch:
            submitted.add(job)
        await asyncio.gather(*(
            publisher.publish(topic, orjson.dumps(job),
                              {"job_id": str(job.get("job_id", "")),
                               "type": str(job.get("type", ""))})
            for job in batch
        ))  # fmt: skip
    await publisher.close()
    seconds = round(time.monotonic() - started, 3)
    log.info("Jobs published", extra={"jobs": len(submitted.job_ids), "topic": topic,
                                      "seconds": seconds})  # fmt: skip
    if waiter is None:
        for job_id in submitted.job_ids:
            sys.stdout.write(job_id + "\n")
        return 0
    try:
        await asyncio.wait_for(_until_complete(results, submitted, stop), opts.timeout)
    except TimeoutError:
        pass
    stop.set()
    await waiter
    _write(opts.output, submitted, results)
    missing = [j for j in submitted.job_ids if j not in results]
    errors = sum(1 for r in results.values() if r.get("status") != "ok")
    log.info("Results gathered", extra={"jobs": len(submitted.job_ids), "results": len(results),
                                        "errors": errors, "missing": len(missing)})  # fmt: skip
    if missing:
        log.error("Jobs did not come back", extra={"missing": missing[:1000],
                                                   "count": len(missing)})  # fmt: skip
        return 3
    return 1 if errors and submitted.parent else 0


async def _until_complete(
    results: dict[str, Any], submitted: _Submitted, stop: asyncio.Event
) -> None:
    last = time.monotonic()
    while len(results) < len(submitted.job_ids):
        await asyncio.sleep(0.2)
        if time.monotonic() - last >= 5:
            last = time.monotonic()
            log.info("Progress", extra={"results": len(results), "jobs": len(submitted.job_ids),
                                        **submitted.progress})  # fmt: skip


async def _gather(
    settings: WorkerSettings,
    opts: SubmitOptions,
    submitted: _Submitted,
    results: dict[str, dict[str, Any]],
    stop: asyncio.Event,
) -> None:
    parts = Reassembler()
    shard_prefix = f"{submitted.parent}/shard-" if submitted.parent else None
    name = opts.results_subscription or f"{settings.results_topic}-sub"
    subscription = pubsub.full_name("subscriptions", name, settings.project)

    async def on_result(msg: Received) -> bool:
        job_id = msg.attributes.get("job_id", "")
        shard = shard_prefix is not None and job_id.startswith(shard_prefix)
        if job_id not in submitted.wanted and not shard:
            return False  # someone else's result: leave it for them
        data = parts.add(msg.data, msg.attributes)
        if data is None:
            return True
        result = orjson.loads(data)
        if shard or result.get("status") == "running":
            _progress(submitted, result)  # the job goes on: its final result comes later
        else:
            results[job_id] = result
        return True

    consumer = Consumer(pubsub.subscriber_async_api(), subscription, on_result, max_messages=1000)
    await consumer.run(stop)
    await consumer.close()


def _progress(submitted: _Submitted, result: dict[str, Any]) -> None:
    progress = result.get("progress") or {}
    done = int(progress.get("parts_done", 0))
    if done >= submitted.progress.get("parts_done", -1):
        submitted.progress = {"parts_done": done, "parts": int(progress.get("parts", 0))}
        log.info("Progress", extra={"job_id": submitted.parent, **submitted.progress})


def _write(output: str, submitted: _Submitted, results: dict[str, dict[str, Any]]) -> None:
    ordered = [results[j] for j in submitted.job_ids if j in results]
    if output.endswith(".npy"):
        blocks = []
        for job_id in submitted.job_ids:
            result = results.get(job_id)
            if result and result.get("status") == "ok" and "embeddings" in result:
                blocks.append(decode_vectors(result["embeddings"]))
            else:  # keep row alignment with the input table: missing/error rows are NaN
                dims = next((r["dims"] for r in ordered if "dims" in r), 0)
                blocks.append(np.full((submitted.rows[job_id], dims), np.nan, np.float32))
        np.save(output, np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32))
        return
    out = open(output, "wb") if output else sys.stdout.buffer
    try:
        for result in ordered:
            out.write(orjson.dumps(result) + b"\n")
    finally:
        if output:
            out.close()
