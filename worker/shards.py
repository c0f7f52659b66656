"""Jobs that write files: one large table split into shards, each shard a part file.

A source job with `output.path` is planned by the worker that receives it (`worker.tables.plan`).
With more rows than `TABULAR_SHARD_ROWS`, and a jobs topic to publish to, it becomes shard jobs:
the same job with a `shard` field and the id `<job_id>/shard-NNNNN` (derived, so a redelivered
job republishes the same shards), answered by a result with status `running`. Each shard is an
ordinary job for the batcher: it reads its rows, writes `part-NNNNN.parquet`, and publishes a
shard result with the progress (parts done of total). Whichever worker finds every part present
writes `_SUCCESS` and publishes the job's final result. Without a jobs topic (`tabular-worker
run`) or with one shard, the worker runs the shards itself in turn.

In file outputs one bad row (a cell over the limit, a NaN, a row whose text is too long) gets its
code in the `error` column and the other rows go on; the job fails as a whole only for what makes
every row impossible (unreadable source, bad template, unknown columns, too few labels).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from base import logs
from engine.heads import Prediction
from worker.errors import JobError
from worker.jobs import Job, Limits, ShardSpec, cell_problem
from worker.parts import OutputDir, resolve_output
from worker.results import Outcome, Vectors
from worker.rowtext import Cell, row_text_length
from worker.sources import resolve_source
from worker.tables import Plan, Shard, plan, read_shard, usable_columns

log = logs.get(__name__)


@dataclasses.dataclass(frozen=True)
class Inferred:
    """What the pipeline computes for a shard's good rows."""

    vectors: Vectors
    predictions: list[Prediction] | None  # classify jobs
    truncated: list[int]  # positions of the texts longer than the model takes (cut to fit)


Infer = Callable[[Job, list[str]], Awaitable[Inferred]]


@dataclasses.dataclass(frozen=True)
class TableContext:
    data_root: str
    output_root: str
    limits: Limits
    fan_out: bool  # shard jobs go to the jobs topic (serve) instead of running here (run)


class TableJob:
    """Runs one job that has `output.path`: a whole job (planning) or one of its shards."""

    def __init__(
        self, job: Job, ctx: TableContext, infer: Infer, model: dict[str, Any], dims: int
    ) -> None:
        self.job = job
        self.ctx = ctx
        self.infer = infer
        self.model = model
        self.dims = dims
        self.owner = job.shard.of if job.shard else job.job_id
        assert job.source_path is not None and job.output_path is not None
        self.output_path = job.output_path
        self.source_path = job.source_path

    async def run(self) -> Outcome:
        out = OutputDir(resolve_output(self.ctx.output_root, self.output_path), self.owner)
        target = resolve_source(self.ctx.data_root, self.source_path)
        if self.job.shard is not None:
            done = await asyncio.to_thread(out.claim)
            return await self._shard_job(out, target, self.job.shard, done)
        done = await asyncio.to_thread(out.success)
        if done is not None and done.get("job_id") == self.owner:
            return self._final(done)  # the same job again: idempotent
        fmt = self.job.source_format or ""
        table = await asyncio.to_thread(
            plan, target, fmt, self.ctx.limits.shard_rows, self.ctx.limits.max_source_rows
        )
        columns = self._columns(table)
        await asyncio.to_thread(out.claim)  # only a job that can run takes the directory
        count = len(table.shards)
        if self.ctx.fan_out and count > 1:
            return self._split(table, columns)
        started = time.monotonic()
        for shard in table.shards:
            await self._run_shard(out, target, columns, shard)
            log.info("Shard done", extra={"job_id": self.owner, "shard": shard.index,
                     "shards": count, "rows_done": shard.stop, "rows": table.rows,
                     "rows_per_second": round(shard.stop / max(time.monotonic() - started, 1e-9),
                                              1)})  # fmt: skip
        return self._final(await asyncio.to_thread(out.commit, count, self._document()))

    # -----------------------------------------------------------------------------------------

    def _columns(self, table: Plan) -> list[str]:
        columns = usable_columns(self.job, table)
        absent = sorted(set(self.job.output_columns) - set(table.columns))
        if absent:
            raise JobError("invalid_field", f"output.columns not in the source: {absent}")
        refused = sorted(set(self.job.output_columns) & set(table.unsupported))
        if refused:
            raise JobError("unsupported_column", f"output.columns {refused} have no text form")
        return columns

    def _split(self, table: Plan, columns: list[str]) -> Outcome:
        count = len(table.shards)
        jobs = [self._shard_message(shard, count, columns) for shard in table.shards]
        body = {
            "job_id": self.owner, "status": "running", "type": self.job.type,
            "rows": table.rows, "output": {"path": self.output_path, "parts": count},
            "progress": {"parts_done": 0, "parts": count},
        }  # fmt: skip
        log.info("Job split into shards", extra={"job_id": self.owner, "shards": count,
                                                 "rows": table.rows})  # fmt: skip
        return Outcome(body, self.owner, self.job.type, jobs=jobs)

    def _shard_message(self, shard: Shard, count: int, columns: list[str]) -> bytes:
        message = {
            **self.job.message,
            "job_id": shard_id(self.owner, shard.index),
            "shard": {"of": self.owner, "index": shard.index, "count": count,
                      "rows": [shard.start, shard.stop], "bytes": [shard.offset, shard.end],
                      "columns": columns},
        }  # fmt: skip
        return orjson.dumps(message)

    async def _shard_job(
        self, out: OutputDir, target: Path, spec: ShardSpec, done: dict[str, Any] | None
    ) -> Outcome:
        shard = Shard(spec.index, spec.start, spec.stop, spec.offset, spec.end)
        rows = errors = truncated = 0
        if done is None:
            rows, errors, truncated = await self._run_shard(out, target, spec.columns, shard)
        missing = await asyncio.to_thread(out.missing, spec.count)
        follow_ups = []
        if done is None and not missing:
            done = await asyncio.to_thread(out.commit, spec.count, self._document())
            follow_ups.append(self._final(done))
        body = {
            "job_id": self.job.job_id, "status": "ok", "type": self.job.type,
            "shard": {"of": self.owner, "index": spec.index, "count": spec.count,
                      "rows": rows, "errors": errors, "truncated": truncated},
            "progress": {"parts_done": spec.count - len(missing), "parts": spec.count},
        }  # fmt: skip
        return Outcome(body, self.job.job_id, self.job.type, rows=rows, follow_ups=follow_ups)

    async def _run_shard(
        self, out: OutputDir, target: Path, columns: list[str], shard: Shard
    ) -> tuple[int, int, int]:
        """Write the shard's part (unless a delivery before this one did); (rows, row errors,
        truncated rows)."""
        if await asyncio.to_thread(out.has_part, shard.index):
            return 0, 0, 0
        fmt = self.job.source_format or ""
        cells, errors = await asyncio.to_thread(read_shard, target, fmt, columns, shard)
        job = dataclasses.replace(self.job, columns=columns, rows=[])
        for i, row in enumerate(cells):
            if i not in errors:
                code = self._row_problem(job, row)
                if code:
                    errors[i] = code
        good = [i for i in range(len(cells)) if i not in errors]
        job.rows = [cells[i] for i in good]
        inferred = await self.infer(job, job.texts()) if good else None
        table = self._arrow(columns, cells, shard, errors, good, inferred)
        await asyncio.to_thread(out.write_part, shard.index, table)
        return len(cells), len(errors), len(inferred.truncated) if inferred else 0

    def _row_problem(self, job: Job, row: list[Cell]) -> str | None:
        problem = cell_problem(row, self.ctx.limits)
        if problem is not None:
            return problem[0]
        length = row_text_length(job.columns, row, job.template, job.text_columns)
        if length > self.ctx.limits.max_row_text_chars:
            return "text_too_large"
        return None

    def _arrow(
        self,
        columns: list[str],
        cells: list[list[Cell]],
        shard: Shard,
        errors: dict[int, str],
        good: list[int],
        inferred: Inferred | None,
    ) -> Any:
        import numpy as np
        import pyarrow as pa

        n = len(cells)
        data: dict[str, Any] = {"row": pa.array(range(shard.start, shard.start + n), pa.int64())}
        for name in self.job.output_columns:
            data[name] = _column([row[columns.index(name)] for row in cells])
        position = {row: k for k, row in enumerate(good)}
        predictions = inferred.predictions if inferred else None
        if self.job.embeddings_format != "none":
            flat = np.zeros((n, self.dims), np.float32)
            if inferred is not None:
                flat[good] = inferred.vectors
            values = pa.array(flat.reshape(-1), pa.float32())
            mask = pa.array([i in errors for i in range(n)])
            data["embedding"] = pa.FixedSizeListArray.from_arrays(values, self.dims, mask=mask)
        if self.job.type == "classify":
            names = [label.name for label in self.job.labels]
            floor = self.job.min_score
            preds = [predictions[position[i]] if predictions and i in position else None
                     for i in range(n)]  # fmt: skip
            data["label"] = pa.array(
                [p.label if p and (floor is None or p.score >= floor) else None for p in preds],
                pa.string(),
            )
            data["score"] = pa.array([p.score if p else None for p in preds], pa.float32())
            struct = pa.struct([pa.field(name, pa.float32()) for name in names])
            data["scores"] = pa.array([p.scores if p else None for p in preds], struct)
        cut = {good[k] for k in inferred.truncated} if inferred else set()
        data["truncated"] = pa.array([None if i in errors else i in cut for i in range(n)],
                                     pa.bool_())  # fmt: skip
        data["error"] = pa.array([errors.get(i) for i in range(n)], pa.string())
        return pa.table(data)

    def _document(self) -> dict[str, Any]:
        return {
            "type": self.job.type,
            "source": self.source_path,
            "model": self.model,
            "dims": self.dims if self.job.embeddings_format != "none" else None,
            "backend": self.model.get("backend"),
            "precision": self.model.get("precision"),
            "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def _final(self, done: dict[str, Any]) -> Outcome:
        body = {
            "job_id": self.owner, "status": "ok", "type": self.job.type,
            "model": done.get("model", self.model), "rows": done.get("rows", 0),
            "output": {"path": self.output_path, "parts": len(done.get("parts", [])),
                       "rows": done.get("rows", 0), "errors": done.get("rows_with_errors", 0),
                       "truncated": done.get("rows_truncated", 0)},
        }  # fmt: skip
        return Outcome(body, self.owner, self.job.type, rows=int(done.get("rows", 0)))


def shard_id(job_id: str, index: int) -> str:
    return f"{job_id}/shard-{index:05d}"


def _column(values: list[Cell]) -> Any:
    """A copied input column: its own type when the cells agree, else text."""
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())
