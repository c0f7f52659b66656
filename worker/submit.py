"""`tabular-worker submit`: a table (or a jobs file) becomes jobs on the jobs topic; with
`--wait`, results are gathered from a results subscription and written out.

Every job that does not come back is reported by job_id: a client can resubmit exactly those.
"""

from __future__ import annotations

import asyncio
import csv
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from google.cloud import pubsub_v1

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


@dataclass
class _Submitted:
    job_ids: list[str]
    rows: dict[str, int]  # rows per job (for .npy alignment), 0 when unknown


def build_jobs(opts: SubmitOptions) -> list[dict[str, Any]]:
    """Jobs of at most `rows_per_job` rows each, ids `{prefix}-{n:06d}`."""
    path = Path(opts.input)
    fmt = opts.format if opts.format != "auto" else path.suffix.lstrip(".").lower()
    text = path.read_text(encoding="utf-8-sig")
    if fmt == "jobs":
        return [orjson.loads(line) for line in text.splitlines() if line.strip()]
    if fmt == "csv":
        reader = csv.reader(text.splitlines())
        columns = next(reader)
        rows: list[list[Any]] = [r for r in reader if r]
    elif fmt == "jsonl":
        records = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        columns = list(dict.fromkeys(k for r in records for k in r))
        rows = [[r.get(c) for c in columns] for r in records]
    else:
        raise ValueError(f"unknown input format {fmt!r}: use --format csv|jsonl|jobs")
    prefix = opts.job_prefix or f"submit-{uuid.uuid4().hex[:8]}"
    jobs = []
    for n, start in enumerate(range(0, len(rows), opts.rows_per_job)):
        job: dict[str, Any] = {
            "job_id": f"{prefix}-{n:06d}",
            "type": opts.type,
            "table": {"columns": columns, "rows": rows[start : start + opts.rows_per_job]},
        }
        if opts.template:
            job["text"] = {"template": opts.template}
        if opts.type == "classify":
            job["labels"] = opts.labels
            job["method"] = opts.method
        jobs.append(job)
    return jobs


async def submit(settings: WorkerSettings, opts: SubmitOptions) -> int:
    project = settings.project
    topic = pubsub.full_name("topics", settings.jobs_topic, project)
    jobs = build_jobs(opts)
    publisher = pubsub.publisher_client()
    results: dict[str, dict[str, Any]] = {}
    waiter: asyncio.Task[None] | None = None
    stop = asyncio.Event()
    submitted = _Submitted([str(j.get("job_id", "")) for j in jobs],
                           {str(j.get("job_id")): len(j.get("table", {}).get("rows", []))
                            for j in jobs})  # fmt: skip
    if opts.wait:
        # Listen before publishing, so no result can slip past.
        waiter = asyncio.create_task(_gather(settings, opts, submitted, results, stop))
    started = time.monotonic()
    await asyncio.gather(*(
        transport.publish(publisher, topic, orjson.dumps(job),
                          {"job_id": str(job.get("job_id", "")), "type": str(job.get("type", ""))})
        for job in jobs
    ))  # fmt: skip
    await asyncio.to_thread(publisher.stop)
    seconds = round(time.monotonic() - started, 3)
    log.info("Jobs published", extra={"jobs": len(jobs), "topic": topic, "seconds": seconds})
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
    log.info("Results gathered", extra={"jobs": len(jobs), "results": len(results),
                                        "errors": errors, "missing": len(missing)})  # fmt: skip
    if missing:
        log.error("Jobs did not come back", extra={"missing": missing[:1000],
                                                   "count": len(missing)})  # fmt: skip
        return 3
    return 0


async def _until_complete(
    results: dict[str, Any], submitted: _Submitted, stop: asyncio.Event
) -> None:
    last = time.monotonic()
    while len(results) < len(submitted.job_ids):
        await asyncio.sleep(0.2)
        if time.monotonic() - last >= 5:
            last = time.monotonic()
            log.info("Progress", extra={"results": len(results),
                                        "jobs": len(submitted.job_ids)})  # fmt: skip


async def _gather(
    settings: WorkerSettings,
    opts: SubmitOptions,
    submitted: _Submitted,
    results: dict[str, dict[str, Any]],
    stop: asyncio.Event,
) -> None:
    wanted = set(submitted.job_ids)
    parts = Reassembler()
    name = opts.results_subscription or f"{settings.results_topic}-sub"
    subscription = pubsub.full_name("subscriptions", name, settings.project)

    async def on_result(msg: Received) -> bool:
        job_id = msg.attributes.get("job_id", "")
        if job_id not in wanted:
            return False  # someone else's result: leave it for them
        data = parts.add(msg.data, msg.attributes)
        if data is not None:
            results[job_id] = orjson.loads(data)
        return True

    flow = pubsub_v1.types.FlowControl(max_messages=1000)
    consumer = Consumer(pubsub.subscriber_client(), subscription, on_result, flow)
    await consumer.run(stop)
    await consumer.stop_pulling()


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
